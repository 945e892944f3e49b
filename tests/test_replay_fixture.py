"""Replays the recorded run in tests/data/ and checks every artifact against facts recorded independently.

tests/data/regenerate.py made the log with a real `monitor serve` and, inside the trainer, recorded the
validation predictions, the labels of every training batch and the logged metrics.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from monitor.outputs.render.drawing import CORRECT_COLOR, WRONG_COLOR
from monitor.outputs.render.sample_grid import sample_grid_cells
from monitor.replay import replay
from tiny_training import CLASS_NAMES, NORMALIZATION

DATA = Path(__file__).parent / "data"
EPOCHS = (0, 1, 2)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixture") / "out"
    pipeline, intake, _ = replay([DATA / "tiny_run.mlog"], out, skip_corrupt=False,
                                 console=Console(file=open("/dev/null", "w")))
    assert sum(intake.rejected.values()) == 0 and sum(pipeline.rejected.values()) == 0
    return out / "tiny-fixture", dict(np.load(DATA / "tiny_run_expected.npz"))


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])


@pytest.mark.slow
def test_confusion_matrices_match_the_recorded_predictions(replayed):
    run, expected = replayed
    for epoch in EPOCHS:
        with open(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv", newline="") as f:
            rows = list(csv.reader(f))
        counts = np.array([[int(x) for x in row[1:]] for row in rows[1:]])
        truth = np.zeros((4, 4), dtype=int)
        np.add.at(truth, (expected[f"labels_{epoch}"], expected[f"preds_{epoch}"]), 1)
        np.testing.assert_array_equal(counts, truth)
    assert truth.trace() < truth.sum()  # the fixture has mistakes, so rows and columns are really checked


def test_dataset_statistics_count_the_training_targets(replayed):
    run, expected = replayed
    counts = np.bincount(expected["train_targets"], minlength=4)
    stats = json.loads((run / "dataset_statistics.json").read_text())
    assert stats["total"] == int(counts.sum())
    assert [(c["name"], c["index"], c["count"]) for c in stats["classes"]] == [
        (name, i, int(counts[i])) for i, name in enumerate(CLASS_NAMES)]
    console = (run / "console.txt").read_text()
    for i, name in enumerate(CLASS_NAMES):
        percentage = f"{100 * counts[i] / counts.sum():.1f}%"
        assert re.search(rf"│ {name} +│ +{i} │ +{counts[i]} │ +{re.escape(percentage)} │", console), name
    assert re.search(rf"│ Total +│ +│ +{counts.sum()} │ +100\.0% │", console)


def test_sampler_tables_use_the_draws_and_the_samplers_weights(replayed):
    run, expected = replayed
    targets, weights = expected["train_targets"], expected["sample_weights"]
    per_class_weight = np.bincount(targets, weights=weights, minlength=4)
    console = (run / "console.txt").read_text()
    for epoch in EPOCHS:
        sampled = np.bincount(expected[f"train_labels_{epoch}"], minlength=4)  # what training actually saw
        draws = int(sampled.sum())
        expected_counts = per_class_weight / per_class_weight.sum() * draws
        table = json.loads((run / f"epoch_{epoch:03d}" / "sampler_distribution.json").read_text())
        assert table["draws"] == draws
        for i, row in enumerate(table["classes"]):
            assert (row["name"], row["sampled"]) == (CLASS_NAMES[i], int(sampled[i]))
            assert row["expected"] == pytest.approx(expected_counts[i])
            assert row["ratio"] == pytest.approx(sampled[i] / expected_counts[i])
        block = console.split(f"Sampler Distribution — epoch {epoch}")[1]
        first = re.search(r"│ (\w+) +│ +(\d+) │ +([\d.]+) │ +([\d.]+) │", block)
        assert first.groups() == (CLASS_NAMES[0], str(sampled[0]), f"{expected_counts[0]:.1f}",
                                  f"{sampled[0] / expected_counts[0]:.2f}")


def test_labels_mapping_and_model_info(replayed):
    run, _ = replayed
    assert json.loads((run / "labels_mapping.json").read_text()) == {
        "num_classes": 4, "class_to_idx": {n: i for i, n in enumerate(CLASS_NAMES)},
        "idx_to_class": {str(i): n for i, n in enumerate(CLASS_NAMES)}, "normalization": NORMALIZATION}
    info = json.loads((run / "model_info.json").read_text())
    # TinyNet: conv 3->8 (3x3) + bias, linear 128->4 + bias
    params = 3 * 8 * 9 + 8 + 128 * 4 + 4
    assert (info["class"], info["total_params"], info["trainable_params"]) == ("TinyNet", params, params)
    assert info["size_mb"] == pytest.approx(params * 4 / 1e6)
    assert "Model Information" in (run / "console.txt").read_text()


def test_history_csv_holds_every_logged_metric(replayed):
    run, expected = replayed
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(EPOCHS)
    names = {"train/loss", "train/acc_top1", "val/loss", "val/acc_top1", "val/acc_top5"}
    assert set(rows[0]) == {"epoch"} | names
    for row in rows:
        for name in names:
            recorded = float(expected[f"metric_{row['epoch']}_{name.replace('/', '|')}"])
            assert float(row[name]) == pytest.approx(recorded, rel=1e-7)
    for png in ("loss_history.png", "accuracy_history.png"):
        assert Image.open(run / "training_history" / png).size[0] > 300


def test_sample_grid_borders_are_green_when_right_and_red_when_wrong(replayed):
    run, expected = replayed
    epoch = 0
    labels, preds = expected[f"labels_{epoch}"][:16], expected[f"preds_{epoch}"][:16]
    assert (labels == preds).any() and (labels != preds).any(), "fixture needs both outcomes"
    image = np.array(Image.open(run / f"epoch_{epoch:03d}" / "sample_predictions.png").convert("RGB")).astype(int)
    # Where each thumbnail sits comes from the layout; the colours come from the replayed PNG.
    cells, (width, height) = sample_grid_cells(16, (12, 12))  # tiny_training's 12×12 images
    assert image.shape[:2] == (height, width)
    for i, cell in enumerate(cells):
        y, x = cell.top + cell.height // 2, cell.left  # on the left frame line
        colour = _rgb(CORRECT_COLOR if labels[i] == preds[i] else WRONG_COLOR)
        assert np.abs(image[y, x] - colour).max() <= 40, (i, image[y, x], colour)


def test_a_log_from_before_confidences_replays_without_calibration_artifacts(replayed):
    from trainer_side.msglog import iter_frames
    from trainer_side.protocol import decode

    run, _ = replayed
    versions = {decode(frame).version for frame in iter_frames(DATA / "tiny_run.mlog")}
    assert max(versions) < (1, 2)  # the fixture stays a log from before confidences and mistakes
    for epoch in EPOCHS:
        folder = run / f"epoch_{epoch:03d}"
        assert (folder / "confusion_matrix.png").exists()
        assert not (folder / "reliability_diagram.png").exists() and not (folder / "misclassified.png").exists()
    assert not (run / "training_history" / "calibration_history.png").exists()
    console = (run / "console.txt").read_text()
    assert console.count("its trainer sends no confidences (protocol before 1.2)") == 1


def test_a_replay_whose_stdout_reader_has_gone_still_writes_every_artifact(tmp_path, replayed):
    import subprocess
    import sys

    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "monitor", "replay", str(DATA / "tiny_run.mlog"), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
    child.stdout.close()  # `monitor replay LOG | head -0`: the first table printed meets a closed pipe
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    assert err == b""
    run, _ = replayed
    for epoch in EPOCHS:
        for name in ("confusion_matrix.png", "confusion_matrix.csv", "sample_predictions.png"):
            assert (out / run.name / f"epoch_{epoch:03d}" / name).read_bytes() == \
                (run / f"epoch_{epoch:03d}" / name).read_bytes()
