"""A real Lightning fit with EmitterCallback feeding a real `monitor serve` process, then replay."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_tiny, tree_bytes
from tiny_training import CLASS_NAMES, NORMALIZATION

HEAVY = ("matplotlib", "rich", "torchmetrics", "watchdog")


def read_confusion_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "true\\pred"
    assert [r[0] for r in rows[1:]] == rows[0][1:]
    return rows[0][1:], np.array([[int(x) for x in r[1:]] for r in rows[1:]])


def independent_confusion(preds: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    counts = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(labels, preds):
        counts[t, p] += 1
    return counts




@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """Two epochs watched by `monitor serve`, stopped with SIGTERM afterwards (shared by the tests below)."""
    import conftest

    tmp = tmp_path_factory.mktemp("served")
    monitor = conftest.MonitorProcess(tmp / "outputs")
    try:
        result = run_tiny("--endpoint", monitor.endpoint, "--run", "e2e", "--epochs", "2", "--record",
                          str(tmp / "record.npz"))
        assert result.returncode == 0, result.stderr
        code = monitor.stop()
        assert code == 0, monitor.output()
    finally:
        monitor.kill()
    return tmp, np.load(tmp / "record.rank0.npz")


def test_confusion_counts_equal_an_independent_count_of_the_predictions(served_run):
    tmp, record = served_run
    run = tmp / "outputs" / "e2e"
    for epoch in (0, 1):
        names, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        assert names == CLASS_NAMES
        expected = independent_confusion(record[f"preds_{epoch}"], record[f"labels_{epoch}"], len(CLASS_NAMES))
        assert counts.sum() == 40
        np.testing.assert_array_equal(counts, expected)
        assert (run / f"epoch_{epoch:03d}" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "epoch_002").exists()


def test_replay_of_the_served_log_reproduces_every_file_byte_for_byte(served_run):
    tmp, _ = served_run
    served = tmp / "outputs" / "e2e"
    result = subprocess.run([sys.executable, "-m", "monitor", "replay", str(served / "messages.mlog"), "--out",
                             str(tmp / "replayed"), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    original, replayed = tree_bytes(served), tree_bytes(tmp / "replayed" / "e2e")
    assert sorted(original) == sorted(replayed)
    assert len(original) >= 15
    assert {"epoch_001/reliability_diagram.png", "epoch_001/misclassified.png",
            "training_history/calibration_history.png"} <= set(original)
    different = [name for name in original if original[name] != replayed[name]]
    assert different == []


def test_run_start_artifacts_describe_the_run(served_run):
    tmp, record = served_run
    run = tmp / "outputs" / "e2e"
    mapping = json.loads((run / "labels_mapping.json").read_text())
    assert mapping == {"num_classes": 4, "class_to_idx": {n: i for i, n in enumerate(CLASS_NAMES)},
                       "idx_to_class": {str(i): n for i, n in enumerate(CLASS_NAMES)},
                       "normalization": NORMALIZATION}
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for row in rows:
        epoch = int(row["epoch"])
        for name in ("train/loss", "train/acc_top1", "val/loss", "val/acc_top1", "val/acc_top5"):
            assert float(row[name]) == pytest.approx(float(record[f"metric_{epoch}_{name.replace('/', '|')}"]),
                                                     rel=1e-6)


def test_inspect_reports_kinds_counts_and_no_gaps(served_run):
    tmp, _ = served_run
    result = subprocess.run([sys.executable, "-m", "monitor", "inspect", str(tmp / "outputs" / "e2e" / "messages.mlog")],
                            capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": ""})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # One run_start, two epochs of (preds, samples, sampled, 2 metrics, epoch_end), one run_end.
    for kind, count in (("run_start", 1), ("preds", 2), ("samples", 2), ("sampled", 2), ("metrics", 4),
                        ("epoch_end", 2), ("run_end", 1)):
        line = next(line for line in text.splitlines() if f" {kind} " in line)
        assert f" {count} " in line, line
    assert "none" in text and "missing" not in text


def _loaded_heavy(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_import_trainer_side_loads_no_monitor_library():
    assert _loaded_heavy("import trainer_side, trainer_side.protocol, trainer_side.msglog") == []


def test_public_names_add_no_monitor_library_beyond_what_lightning_loads():
    # Lightning 2.x itself imports torchmetrics, rich and matplotlib when they are installed, so
    # the check is on what trainer_side adds on top of it.
    code = ("import sys, lightning.pytorch\nbefore = set(sys.modules)\n"
            "from trainer_side import Emitter, EmitterCallback, TrackingWeightedRandomSampler\n"
            f"print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_no_trainer_side_module_imports_a_monitor_library():
    import ast

    for path in (ROOT / "trainer_side").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in HEAVY for n in names), (path.name, names)


def test_the_import_probe_can_see_a_heavy_import():
    # Guards the probes above: the same check does notice a monitor-side module when one is loaded.
    assert "matplotlib" in _loaded_heavy("import monitor.outputs.render.confusion_figures")


def test_calibration_and_hardest_mistakes_match_the_recorded_logits(served_run):
    from PIL import Image

    from monitor.outputs.render.drawing import WRONG_COLOR
    from monitor.outputs.render.sample_grid import sample_grid_cells
    from test_calibration import reference_ece_mce

    tmp, record = served_run
    run = tmp / "outputs" / "e2e"
    with open(run / "history.csv", newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    red = np.array([int(WRONG_COLOR[i:i + 2], 16) for i in (1, 3, 5)])
    assert "sends no confidences" not in (run / "console.txt").read_text()
    for epoch in (0, 1):
        preds, labels, confidence = (record[f"{k}_{epoch}"] for k in ("preds", "labels", "confidence"))
        ece, mce = reference_ece_mce(confidence, preds == labels)
        assert float(rows[epoch]["val/ece"]) == pytest.approx(ece, abs=1e-12)
        assert float(rows[epoch]["val/mce"]) == pytest.approx(mce, abs=1e-12)
        folder = run / f"epoch_{epoch:03d}"
        assert Image.open(folder / "reliability_diagram.png").size == (700, 750)
        shown = min(16, int((preds != labels).sum()))
        assert shown > 0
        image = np.array(Image.open(folder / "misclassified.png").convert("RGB")).astype(int)
        cells, (width, height) = sample_grid_cells(shown, (12, 12))
        assert image.shape[:2] == (height, width)
        for cell in cells:
            assert np.abs(image[cell.top + cell.height // 2, cell.left] - red).max() <= 40
