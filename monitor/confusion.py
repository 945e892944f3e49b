"""Confusion counts: kept as their nonzero cells (`SparseCounts`), made whole only to be drawn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A C×C int64 matrix costs 8·C² bytes when it is drawn; past this many classes the monitor draws no
# matrix (the run's preds are refused with a reason).
MAX_CONFUSION_CLASSES = 4096
# Counting a batch takes about this much memory a sample while it runs (flat int64 cell indices, their
# sorted copy, the unique mask); part of the ceiling stated in docs/design-notes.md.
WORKING_BYTES_PER_SAMPLE = 32


@dataclass(frozen=True)
class SparseCounts:
    """A C×C count matrix (rows = true class, columns = predicted class) as its nonzero cells: `cells`
    holds each cell's flat index `true * C + pred`, sorted and unique, `values` its count (> 0). The
    counts of N samples take at most N cells, whatever C is."""

    classes: int
    cells: np.ndarray  # int64
    values: np.ndarray  # int64

    @classmethod
    def of(cls, preds: np.ndarray, labels: np.ndarray, classes: int) -> SparseCounts:
        """The counts of one batch of predictions against their labels (class indices below `classes`)."""
        flat = labels.astype(np.int64) * classes + preds.astype(np.int64)
        cells, values = np.unique(flat, return_counts=True)
        return cls(classes, cells, values.astype(np.int64))

    @classmethod
    def total(cls, parts: Sequence[SparseCounts]) -> SparseCounts:
        """The cell-by-cell sum of counts over the same classes (at least one part)."""
        if len(parts) == 1:
            return parts[0]
        cells = np.concatenate([part.cells for part in parts])
        values = np.concatenate([part.values for part in parts])
        if not len(cells):
            return cls(parts[0].classes, cells, values)
        order = np.argsort(cells, kind="stable")
        cells, values = cells[order], values[order]
        starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
        return cls(parts[0].classes, cells[starts], np.add.reduceat(values, starts))

    @property
    def nbytes(self) -> int:
        return self.cells.nbytes + self.values.nbytes

    def dense(self) -> np.ndarray:
        """The whole C×C int64 matrix."""
        counts = np.zeros(self.classes * self.classes, dtype=np.int64)
        counts[self.cells] = self.values
        return counts.reshape(self.classes, self.classes)

    def accuracy(self) -> float | None:
        """The share of samples on the diagonal; None without samples."""
        total = int(self.values.sum())
        if total == 0:
            return None
        diagonal = self.cells // self.classes == self.cells % self.classes
        return float(self.values[diagonal].sum()) / total


def confusion_counts(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = true class, columns = predicted class, as one dense int64 matrix."""
    return SparseCounts.of(preds, labels, num_classes).dense()


def accuracy(counts: np.ndarray) -> float | None:
    total = int(counts.sum())
    return None if total == 0 else float(np.trace(counts)) / total
