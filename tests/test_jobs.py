"""What the monitor's own process does for each epoch's confusion matrix, kept short: counted by
torchmetrics' functional form, and handed to the render worker packed."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.aggregates.confusion import SparseCounts, confusion_counts
from monitor.outputs.render.jobs import ConfusionJob, pack_cells, pack_counts, unpack_counts


def _reference(preds: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, preds), 1)
    return counts


def _mostly_right(classes: int, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    preds = np.where(rng.random(samples) < 0.6, labels, rng.integers(0, classes, samples))
    return preds, labels


def test_counts_equal_an_independent_count_call_after_call_whatever_the_class_count():
    for classes, seed in ((10, 1), (10, 2), (1000, 3), (1000, 4), (10, 5)):
        preds, labels = _mostly_right(classes, 5000, seed)
        first = confusion_counts(preds, labels, classes)
        second = confusion_counts(preds[:100], labels[:100], classes)
        assert np.array_equal(first, _reference(preds, labels, classes))
        assert np.array_equal(second, _reference(preds[:100], labels[:100], classes))
        assert first.dtype == np.int64 and first.shape == (classes, classes)


def test_a_many_class_matrix_travels_as_its_nonzero_cells():
    counts = confusion_counts(*_mostly_right(1000, 50_000), 1000)
    job = ConfusionJob(Path("c.png"), Path("c.csv"), counts, [f"class_{i}" for i in range(1000)], "epoch 0")
    data = pickle.dumps(job)
    back = pickle.loads(data)
    assert len(data) < counts.nbytes / 20  # 8 MB as int64; its ~20,000 nonzero cells are ~100 kB
    assert np.array_equal(back.counts, counts) and back.counts.dtype == np.int64
    assert (back.png, back.csv, list(back.class_names), back.title) == (job.png, job.csv, list(job.class_names),
                                                                     job.title)


def test_counts_kept_as_cells_travel_and_come_back_as_cells_whatever_the_class_count():
    preds, labels = _mostly_right(20_000, 50_000)
    counts = SparseCounts.of(preds, labels, 20_000)
    job = ConfusionJob(Path("c.png"), None, counts, [f"c{i}" for i in range(20_000)], "epoch 0", "normalized")
    back = pickle.loads(pickle.dumps(job))
    assert isinstance(back.counts, SparseCounts) and back.counts.classes == 20_000
    assert np.array_equal(back.counts.cells, counts.cells) and np.array_equal(back.counts.values, counts.values)
    assert back.counts.cells.dtype == np.int64 and (back.view, back.csv) == ("normalized", None)
    # 16 bytes a cell in memory, 5 on the way: a uint32 index (20,000² < 2**32) and a uint8 count.
    _, classes, cells, values = pack_cells(counts)
    assert (classes, cells.dtype, values.dtype) == (20_000, np.uint32, np.uint8)


def test_dense_matrices_and_large_counts_come_back_exactly():
    full = np.arange(100, dtype=np.int64).reshape(10, 10) * 1000  # every cell set, counts past 65,535
    for counts in (full, np.zeros((3, 3), dtype=np.int64), np.zeros((0, 0), dtype=np.int64),
                   np.diag(np.array([2**40, 1, 0], dtype=np.int64))):
        packed = pack_counts(counts)
        back = unpack_counts(packed)
        assert np.array_equal(back, counts) and back.dtype == np.int64 and back.shape == counts.shape
    assert pack_counts(full)[0] == "dense" and pack_counts(full)[1].dtype == np.uint32
    assert pack_counts(np.eye(50, dtype=np.int64))[0] == "sparse"


def test_what_is_not_a_matrix_of_counts_travels_as_it_is():
    for odd in (np.array([[0.5, 1.25], [0.0, 2.0]]), np.array([[-1, 2], [3, 0]], dtype=np.int32)):
        back = unpack_counts(pack_counts(odd))
        assert np.array_equal(back, odd) and back.dtype == odd.dtype


@dataclass(frozen=True)
class _NamedConfusionJob(ConfusionJob):
    pass


def test_a_subclass_unpickles_as_itself():
    job = _NamedConfusionJob(Path("c.png"), Path("c.csv"), np.eye(4, dtype=np.int64), list("abcd"), "t")
    back = pickle.loads(pickle.dumps(job))
    assert type(back) is _NamedConfusionJob and np.array_equal(back.counts, job.counts)
