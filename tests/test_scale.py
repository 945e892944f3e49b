"""Confusion matrices at any class count: the row-normalized and block-summed views against numpy
references on whole matrices, the sparse CSV above the whole-matrix size, a 20,000-class run
through the pipeline that never makes its matrix whole, and a served many-class run that replay
reproduces byte for byte."""

from __future__ import annotations

import csv
import io
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from bench.synthetic import class_names, confidences, predictions, send_run
from conftest import MonitorProcess, tree_bytes, wait_for
from monitor.aggregates import confusion
from monitor.aggregates.confusion import SparseCounts
from monitor.outputs.render.jobs import confusion_jobs
from monitor.outputs.render.matrix_views import counts_view, normalized_view, top_view
from monitor.replay import replay
from test_analysis import _assert_matches_sklearn
from test_calibration import reference_ece_mce
from trainer_side.emitter import Emitter

CONFUSION_FILES = ("confusion_matrix.png", "confusion_matrix_normalized.png", "confusion_matrix_top.png")


def whole(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """The C×C counts, counted one sample at a time."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, preds), 1)
    return counts


def percent_of_rows(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """counts[i, j] / totals[i] · 100, row by row, and 0 for a row whose total is 0."""
    out = np.zeros(counts.shape)
    for row in range(counts.shape[0]):
        if totals[row]:
            out[row] = counts[row] * 100.0 / totals[row]
    return out


def with_absent_classes(classes: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions in which every third class never occurs as a label (an empty row)."""
    labels, preds = predictions(classes, samples, seed)
    present = np.arange(classes)[np.arange(classes) % 3 != 1] if classes > 1 else np.arange(1)
    return present[labels % len(present)], preds


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("classes", [1, 5, 43, 300])
def test_the_normalized_view_is_each_row_as_percent_of_its_samples(classes):
    labels, preds = with_absent_classes(classes, 40 * classes, seed=classes)
    counts = whole(labels, preds, classes)
    view = normalized_view(SparseCounts.of(preds, labels, classes), class_names(classes), "t")
    expected = percent_of_rows(counts, counts.sum(axis=1))
    np.testing.assert_allclose(view.values, expected, rtol=1e-12, atol=0)
    assert view.percent and view.block == 1 and view.classes == classes
    assert np.isfinite(view.values).all()
    if classes > 1:
        empty = counts.sum(axis=1) == 0
        assert empty.any() and (view.values[empty] == 0).all()
    assert view.names == (tuple(class_names(classes)) if classes <= 50 else ())


@pytest.mark.parametrize("classes, max_bins", [(23, 7), (20, 5), (10, 3), (7, 7), (1, 1)])
def test_block_sums_match_numpy_on_a_whole_matrix(monkeypatch, classes, max_bins):
    monkeypatch.setattr(confusion, "MAX_BINS", max_bins)
    labels, preds = with_absent_classes(classes, 30 * classes, seed=max_bins)
    counts = whole(labels, preds, classes)
    block = -(-classes // max_bins)
    bins = -(-classes // block)
    padded = np.zeros((bins * block, bins * block), dtype=np.int64)
    padded[:classes, :classes] = counts
    expected = padded.reshape(bins, block, bins, block).sum(axis=(1, 3))
    sparse = SparseCounts.of(preds, labels, classes)
    np.testing.assert_array_equal(sparse.blocks(block), expected)
    shown = counts_view(sparse, class_names(classes), "t")
    assert (shown.block, shown.classes, shown.values.shape) == (block, classes, (bins, bins))
    np.testing.assert_array_equal(shown.values, expected)
    normalized = normalized_view(sparse, class_names(classes), "t")
    np.testing.assert_allclose(normalized.values, percent_of_rows(expected, expected.sum(axis=1)), rtol=1e-12)


def test_the_top_view_shows_the_chosen_classes_as_percent_of_all_their_samples():
    classes = 120
    labels, preds = with_absent_classes(classes, 6000, seed=4)
    counts = whole(labels, preds, classes)
    view = top_view(SparseCounts.of(preds, labels, classes), class_names(classes), "t", limit=12)
    off = counts - np.diag(np.diag(counts))
    involvement = off.sum(axis=0) + off.sum(axis=1)
    chosen = sorted(range(classes), key=lambda c: (-involvement[c], c))[:12]
    assert view.names == tuple(class_names(classes)[c] for c in chosen)
    expected = percent_of_rows(counts[np.ix_(chosen, chosen)], counts.sum(axis=1)[chosen])
    np.testing.assert_allclose(view.values, expected, rtol=1e-12)
    assert (view.values.sum(axis=1) < 100 - 1e-9).any()  # rows lose what went to classes left out


def test_above_the_whole_matrix_size_the_csv_lists_the_nonzero_cells_and_the_pngs_draw_blocks(monkeypatch, tmp_path):
    monkeypatch.setattr(confusion, "WHOLE_MATRIX_MAX_CLASSES", 60)
    monkeypatch.setattr(confusion, "MAX_BINS", 40)
    monkeypatch.setattr(SparseCounts, "dense", _no_whole_matrix)
    classes = 100
    labels, preds = predictions(classes, 3000, seed=9)
    names = class_names(classes)
    names[7] = "=cmd"  # untrusted names are neutralised here too
    jobs = confusion_jobs(tmp_path, SparseCounts.of(preds, labels, classes), names, epoch=2)
    for job in jobs:
        job.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.png", "confusion_matrix_cells.csv",
                                                         "confusion_matrix_normalized.png", "confusion_matrix_top.png"]
    rows = read_csv(tmp_path / "confusion_matrix_cells.csv")
    assert rows[0] == ["true_index", "pred_index", "true", "pred", "count"]
    pairs = sorted(Counter(zip(labels.tolist(), preds.tolist())).items())
    assert [[int(t), int(p), int(n)] for t, p, _, _, n in rows[1:]] == [[t, p, n] for (t, p), n in pairs]
    shown = {int(i): t for i, _, t, _, _ in rows[1:]} | {int(j): p for _, j, _, p, _ in rows[1:]}
    assert shown[7] == "'=cmd" and all(shown[i] == names[i] for i in shown if i != 7)


def _no_whole_matrix(self: SparseCounts) -> np.ndarray:
    if self.classes > confusion.WHOLE_MATRIX_MAX_CLASSES:
        raise AssertionError(f"a whole {self.classes}-class matrix was made")
    return self.blocks(1)


@pytest.mark.slow
def test_up_to_the_whole_matrix_size_the_csv_is_the_whole_matrix(tmp_path):
    classes = 60
    labels, preds = predictions(classes, 2000, seed=2)
    for job in confusion_jobs(tmp_path, SparseCounts.of(preds, labels, classes), class_names(classes), epoch=0):
        job.run()
    rows = read_csv(tmp_path / "confusion_matrix.csv")
    assert rows[0] == ["true\\pred", *class_names(classes)]
    assert [row[0] for row in rows[1:]] == class_names(classes)
    np.testing.assert_array_equal(np.array([[int(x) for x in row[1:]] for row in rows[1:]]),
                                  whole(labels, preds, classes))
    assert not (tmp_path / "confusion_matrix_cells.csv").exists()


def test_a_small_run_gets_no_top_view(tmp_path):
    labels, preds = predictions(50, 500, seed=1)
    jobs = confusion_jobs(tmp_path, SparseCounts.of(preds, labels, 50), class_names(50), epoch=0)
    assert [job.png.name for job in jobs] == ["confusion_matrix.png", "confusion_matrix_normalized.png"]


@pytest.mark.slow
def test_a_20000_class_run_gets_every_artifact_in_bounded_memory_without_a_whole_matrix(monkeypatch, tmp_path):
    classes, samples = 20_000, 20_000
    monkeypatch.setattr(SparseCounts, "dense", _no_whole_matrix)
    emitter = Emitter(None, run="wide", spool=tmp_path / "spool")
    [(labels, preds)] = send_run(emitter, classes, samples)
    emitter.close()
    tracemalloc.start()
    try:
        pipeline, intake, _ = replay([tmp_path / "spool" / "wide" / "rank0.mlog"], tmp_path / "out",
                                     skip_corrupt=False, console=Console(file=io.StringIO(), width=200))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(intake.rejected.values()) == 0 and sum(pipeline.rejected.values()) == 0
    # A whole 20,000² int64 matrix alone would be 3.2 GB; one view holds at most 1,000² values.
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    epoch = tmp_path / "out" / "wide" / "epoch_000"
    assert sorted(p.name for p in epoch.iterdir()) == sorted([
        *CONFUSION_FILES, "confusion_matrix_cells.csv", "per_class_metrics.csv", "top_confusions.csv",
        "reliability_diagram.png", "misclassified.png", "report_data.js"])
    cells = read_csv(epoch / "confusion_matrix_cells.csv")[1:]
    assert Counter({(int(t), int(p)): int(n) for t, p, _, _, n in cells}) == Counter(zip(labels.tolist(),
                                                                                       preds.tolist()))
    _assert_matches_sklearn(read_csv(epoch / "per_class_metrics.csv"), labels, preds, class_names(classes))
    width, height = Image.open(epoch / "confusion_matrix.png").size
    assert 1000 <= width < 1400 and 1000 <= height < 1300  # 1,000 blocks of 20 classes, one pixel each
    header, row = read_csv(tmp_path / "out" / "wide" / "history.csv")
    history = dict(zip(header, row))
    ece, mce = reference_ece_mce(confidences(labels == preds, seed=0), labels == preds)
    assert float(history["val/ece"]) == pytest.approx(ece, abs=1e-12)
    assert float(history["val/mce"]) == pytest.approx(mce, abs=1e-12)


def test_replay_of_a_served_many_class_run_reproduces_every_artifact_byte_for_byte(tmp_path):
    # 1,200 classes: above the whole-matrix size (the cells CSV, block views of 2 classes) and above
    # the named-cells size (the top view).
    classes = 1200
    served = tmp_path / "served"
    with MonitorProcess(served) as monitor:
        emitter = Emitter(monitor.endpoint, run="many", spool=False)
        send_run(emitter, classes, 12_000, epochs=2)
        emitter.close()
        folders = [served / "many" / f"epoch_{e:03d}" for e in range(2)]
        wait_for(lambda: all((f / name).exists() for f in folders for name in CONFUSION_FILES), "confusion PNGs")
        assert monitor.close() == 0
    replay([served / "many" / "messages.mlog"], tmp_path / "replayed", skip_corrupt=False,
           console=Console(file=io.StringIO(), width=200))
    original, replayed = tree_bytes(served / "many"), tree_bytes(tmp_path / "replayed" / "many")
    assert {f"epoch_001/{name}" for name in [*CONFUSION_FILES, "confusion_matrix_cells.csv"]} <= set(original)
    assert sorted(original) == sorted(replayed)
    assert [name for name in original if original[name] != replayed[name]] == []
