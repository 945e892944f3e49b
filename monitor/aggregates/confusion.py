"""Confusion counts, kept as their nonzero cells (`SparseCounts`) whatever the class count.

A run's counts are made whole (C×C) only up to WHOLE_MATRIX_MAX_CLASSES classes; above it the
monitor works on the nonzero cells alone, and the full-matrix figures draw block sums (`blocks`) of
at most MAX_BINS rows and columns. Flat cell indices (`true * C + pred`) fit int64 up to 3·10⁹
classes, far above what `--max-classes` admits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Up to this many classes the epoch's matrix is made whole (8 MB of int64 at 1,000 classes): the
# figures draw every cell and confusion_matrix.csv is the whole matrix. Above it a whole matrix grows
# with C² (3.2 GB at 20,000 classes), so nothing is made whole: confusion_matrix_cells.csv lists the
# nonzero cells and the figures draw block sums.
WHOLE_MATRIX_MAX_CLASSES = 1000
# The full-matrix figures have at most this many rows and columns; above it each one sums a block
# of `block_size(C)` consecutive classes.
MAX_BINS = 1000
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

    @classmethod
    def of_matrix(cls, matrix: np.ndarray) -> SparseCounts:
        """The nonzero cells of a whole C×C matrix of counts."""
        matrix = np.asarray(matrix)
        cells = np.flatnonzero(matrix)
        return cls(matrix.shape[0], cells.astype(np.int64), matrix.reshape(-1)[cells].astype(np.int64))

    def dense(self) -> np.ndarray:
        """The whole C×C int64 matrix (8·C² bytes: see WHOLE_MATRIX_MAX_CLASSES)."""
        return self.blocks(1)

    def blocks(self, block: int) -> np.ndarray:
        """Block sums: an R×R int64 matrix, R = ceil(C / block), whose cell (i, j) sums the counts of
        true classes i·block … i·block + block − 1 predicted as classes j·block … j·block + block − 1
        (the last block holds the classes left over). `blocks(1)` is the whole matrix."""
        if block < 1:
            raise ValueError(f"block must be at least 1, got {block}")
        bins = -(-self.classes // block)
        true, pred = np.divmod(self.cells, self.classes)
        flat = (true // block) * bins + pred // block
        # float64 weights add counts exactly up to 2**53.
        summed = np.bincount(flat, weights=self.values, minlength=bins * bins)
        return summed.astype(np.int64).reshape(bins, bins)

    def accuracy(self) -> float | None:
        """The share of samples on the diagonal; None without samples."""
        total = int(self.values.sum())
        if total == 0:
            return None
        diagonal = self.cells // self.classes == self.cells % self.classes
        return float(self.values[diagonal].sum()) / total


def block_size(classes: int) -> int:
    """Classes per row and column of a full-matrix figure: 1 up to MAX_BINS classes, else the
    fewest that leave at most MAX_BINS blocks."""
    return max(1, -(-classes // MAX_BINS))


def row_percent(counts: np.ndarray, totals: np.ndarray | None = None) -> np.ndarray:
    """Each row of a matrix of counts as percent of its total (float64): the row's sum, or
    `totals[row]`; a row whose total is 0 is all 0, never NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1) if totals is None else np.asarray(totals, dtype=np.float64)
    totals = totals[:, None]
    out = np.zeros_like(counts)
    np.divide(counts * 100.0, totals, out=out, where=totals > 0)
    return out


def confusion_counts(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = true class, columns = predicted class, as one dense int64 matrix."""
    return SparseCounts.of(preds, labels, num_classes).dense()


def accuracy(counts: np.ndarray) -> float | None:
    total = int(counts.sum())
    return None if total == 0 else float(np.trace(counts)) / total
