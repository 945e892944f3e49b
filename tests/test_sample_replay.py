"""Protocol 1.3 logs through replay: the sample-level files appear, match an independent count,
and a second replay writes every one of them byte for byte; a 1.2 log gets the one-line note."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from monitor.folders import run_dir
from monitor.replay import replay
from trainer_side.msglog import LogWriter
from trainer_side.protocol import IdRange, encode, make_message

pytestmark = pytest.mark.slow  # replays or draws whole runs

CLASSES = ["cat", "dog", "bird", "fish"]
SAMPLE_FILES = ("per_sample.csv", "label_suspects.csv", "label_suspects.png", "summary.json",
                "epoch_000/predictions.npy", "epoch_001/predictions.npy", "epoch_001/changes.json",
                "epoch_001/changes.csv", "epoch_002/changes.json", "epoch_002/changes.csv", "report_samples.js",
                "index.html")


def write_log(path: Path, run: str, *, with_ids: bool, epochs: int = 3, n: int = 90, seed: int = 0):
    """A two-rank run; rank r validates ids r*n/2 .. (r+1)*n/2 - 1 as a range. Returns (labels, preds per epoch)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    writer = LogWriter(path)
    seq = {0: 0, 1: 0}

    def send(kind, rank, body):
        writer.append(encode(make_message(kind, run, rank, 2, seq[rank], body, time=1000.0 + seq[rank],
                                          sender=f"s{rank}")))
        seq[rank] += 1

    start = {"class_names": CLASSES, "normalization": {"mean": [0.5], "std": [0.5]},
             "model": {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
             "train_targets": None, "class_counts": None, "sampler": None, "hparams": None}
    for rank in (0, 1):
        send("run_start", rank, {**start, **({"val_size": n} if with_ids else {})})
    if with_ids:
        send("sample_names", 0, {"split": "val", "first": 0, "names": [f"img/{i:03d}.png" for i in range(n)]})
    history = []
    for epoch in range(epochs):
        preds = np.where(rng.random(n) < 0.5 + 0.15 * epoch, labels, rng.integers(0, len(CLASSES), n))
        history.append(preds)
        half = n // 2
        for rank in (0, 1):
            part = slice(rank * half, (rank + 1) * half)
            body = {"epoch": epoch, "step": 10 * epoch, "preds": preds[part].astype(np.uint8),
                    "labels": labels[part].astype(np.uint8),
                    "confidence": rng.uniform(0.3, 1, half).astype(np.float16)}
            if with_ids:
                body["ids"] = IdRange(rank * half, half)
                body["label_confidence"] = rng.uniform(0, 1, half).astype(np.float16)
            send("preds", rank, body)
            send("metrics", rank, {"epoch": epoch, "stage": "val", "step": 10 * epoch,
                                   "values": {"val/acc_top1": float((preds == labels).mean())}})
            send("epoch_end", rank, {"epoch": epoch, "sent": seq[rank], "dropped": 0})
    for rank in (0, 1):
        send("run_end", rank, {"status": "completed", "error": None, "sent": seq[rank], "dropped": 0})
    writer.close()
    return labels, history


def replay_quietly(out: Path, logs) -> None:
    with open("/dev/null", "w") as sink:
        replay(list(logs), out, skip_corrupt=False, console=Console(file=sink), show_tables=False)


def test_replay_writes_the_sample_files_twice_byte_for_byte(tmp_path):
    log = tmp_path / "run.mlog"
    labels, history = write_log(log, "ids-run", with_ids=True)
    replay_quietly(tmp_path / "a", [log])
    replay_quietly(tmp_path / "b", [log])
    a, b = run_dir(tmp_path / "a", "ids-run"), run_dir(tmp_path / "b", "ids-run")
    for name in SAMPLE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    changes = json.loads((a / "epoch_002" / "changes.json").read_text())
    before, now = history[1] == labels, history[2] == labels
    assert changes["n_paired"] == len(labels)
    assert changes["newly_correct"] == int((~before & now).sum())
    assert changes["newly_wrong"] == int((before & ~now).sum())
    assert "img/000.png" in (a / "per_sample.csv").read_text()
    summary = json.loads((a / "summary.json").read_text())
    assert summary["samples"]["tracked"] == len(labels) and "sample_ids_missing" not in summary
    page = (a / "index.html").read_text()
    assert "Changes between epochs" in page and changes["verdict"] in page and "report_samples.js" in page
    assert (a / "report_samples.js").read_text().startswith("reportSamples(")


def test_a_log_without_ids_says_why_once_and_writes_no_sample_files(tmp_path):
    log = tmp_path / "old.mlog"
    write_log(log, "old-run", with_ids=False)
    replay_quietly(tmp_path / "out", [log])
    folder = run_dir(tmp_path / "out", "old-run")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["sample_ids_missing"].startswith("the trainer sent no sample ids")
    assert not (folder / "per_sample.csv").exists() and not (folder / "epoch_001" / "changes.json").exists()
    notes = [line for line in (folder / "console.txt").read_text().splitlines() if "no sample-level files" in line]
    assert len(notes) == 1
    assert "No sample-level analysis: the trainer sent no sample ids" in (folder / "index.html").read_text()


def test_the_recorded_1_2_fixture_still_replays_with_the_note(tmp_path):
    replay_quietly(tmp_path / "out", [Path(__file__).parent / "data" / "tiny_run.mlog"])
    summary = json.loads((run_dir(tmp_path / "out", "tiny-fixture") / "summary.json").read_text())
    assert summary["sample_ids_missing"] == "the trainer sent no sample ids (protocol before 1.3)"


def test_changes_scalars_in_tensorboard_equal_changes_json(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from monitor.outputs.tensorboard import TensorBoardOptions

    log = tmp_path / "run.mlog"
    write_log(log, "tb-run", with_ids=True)
    with open("/dev/null", "w") as sink:
        replay([log], tmp_path / "out", skip_corrupt=False, console=Console(file=sink), show_tables=False,
               tensorboard=TensorBoardOptions(tmp_path / "tb", 100))
    events = EventAccumulator(str(tmp_path / "tb" / "tb-run"), size_guidance={"scalars": 0})
    events.Reload()
    for key in ("newly_correct", "newly_wrong", "accuracy_diff", "mcnemar_p"):
        logged = {e.step: e.value for e in events.Scalars(f"changes/{key}")}
        assert sorted(logged) == [1, 2]
        for epoch, value in logged.items():
            expected = json.loads((run_dir(tmp_path / "out", "tb-run") / f"epoch_{epoch:03d}" / "changes.json")
                                  .read_text())[key]
            assert value == pytest.approx(expected, rel=1e-6, abs=1e-9)
