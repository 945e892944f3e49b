"""Sample ids from a real Lightning fit: a sequential validation loader sends ranges that the monitor
turns into each epoch's samples; track_train sends the training records; a shuffled loader warns."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from conftest import run_tiny
from monitor.outputs.console import MonitorConsole
from monitor.pipeline import Pipeline
from monitor.outputs.render.pool import InlineRenderer
from trainer_side import protocol
from trainer_side.msglog import iter_frames


def replayed(log, out):
    """The run's state after an in-process replay of one spool log."""
    pipeline = Pipeline(out, InlineRenderer(), MonitorConsole(Console(file=open("/dev/null", "w")), fresh=True))
    messages = []
    for frame in iter_frames(log):
        message = protocol.decode(frame)
        messages.append(message)
        pipeline.handle(message, len(frame))
    pipeline.finish()
    assert not pipeline.rejected, pipeline.rejected
    return pipeline.runs[messages[0].run], messages


def test_a_fit_sends_ranged_ids_label_confidences_and_training_records(tmp_path):
    result = run_tiny("--spool", str(tmp_path / "spool"), "--run", "ids", "--epochs", "2", "--track-train",
                      "--record", str(tmp_path / "rec.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "carry no sample ids" not in result.stderr and "sends no training records" not in result.stderr
    run, messages = replayed(tmp_path / "spool" / "ids" / "rank0.mlog", tmp_path / "out")
    record = np.load(tmp_path / "rec.rank0.npz")
    start = next(m for m in messages if m.kind == "run_start")
    assert start["val_size"] == 40 and start["train_size"] == 114
    for epoch in (0, 1):
        preds = [m for m in messages if m.kind == "preds" and m["epoch"] == epoch]
        assert [m["ids"] for m in preds] == [protocol.IdRange(0, 40)]  # one chunk, no bytes per sample
        assert run.samples is not None
    assert run.samples.epochs == [0, 1]
    last = run.samples.latest
    assert last.ids.tolist() == list(range(40)) and last.labels.tolist() == [i // 10 for i in range(40)]
    assert last.preds.tolist() == record["preds_1"].tolist()
    np.testing.assert_array_equal(last.confidence, record["confidence_1"].astype(np.float32))
    train = [m for m in messages if m.kind == "train_preds"]
    assert [m["epoch"] for m in train] == [0, 1]
    targets = np.array(__import__("tiny_training").TinyData().train_set.targets)
    for m in train:
        ids = m["ids"].astype(np.int64)
        assert len(ids) == 114 and (m["labels"] == targets[ids]).all()
        assert np.isfinite(m["label_confidence"]).all() and m["label_confidence"].max() <= 1
    assert run.training_map.epoch == 1
    chunks = [(m["split"], m["first"], len(m["names"])) for m in messages if m.kind == "sample_names"]
    assert chunks == [("val", 0, 40), ("train", 0, 114)]
    assert run.sample_names.names("val", [0, 39]) == ["val/circle/000.png", "val/star/039.png"]
    assert run.sample_names.names("train", [113]) == ["train/star/113.png"]
    assert not run.sample_problems


def test_a_shuffled_validation_loader_warns_once_with_the_fix(tmp_path):
    script = tmp_path / "shuffled.py"
    script.write_text(
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "import tiny_training\n"
        "from torch.utils.data import DataLoader\n"
        "tiny_training.TinyData.val_dataloader = lambda self: DataLoader(self.val_set, batch_size=16, shuffle=True)\n"
        "raise SystemExit(tiny_training.main(sys.argv[1:]))\n")
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, str(script), "--spool", str(tmp_path / "spool"), "--run", "shuf",
                             "--epochs", "2"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "carry no sample ids" in line]
    assert len(warnings) == 1 and "pass shuffle=False to its DataLoader" in warnings[0]
    run, _ = replayed(tmp_path / "spool" / "shuf" / "rank0.mlog", tmp_path / "out")
    assert run.samples is None
    assert run.sample_ids_missing.startswith("the trainer sent no sample ids")
