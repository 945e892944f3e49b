"""Per-class metrics, top confusions and the most confused classes of one epoch, computed from its
sparse confusion counts.

Pure functions: rows in, rows out, no I/O. They read only the nonzero cells of `SparseCounts`, so
their cost follows the number of samples and classes, never classes squared.

Conventions (also in docs/design-notes.md): a class never predicted has precision 0, a class with no
support has recall 0, and F1 is 0 where precision and recall are both 0 (scikit-learn's
``zero_division=0``), so no figure is ever NaN. The macro average is the plain mean over every class
of the run, the weighted average the mean weighted by support (0 without samples); both rows carry
the total support.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.aggregates.confusion import SparseCounts

# top_confusions.csv lists at most this many cells; a 20,000-class run can have millions of nonzero
# off-diagonal cells, and past the first thousands they are single mistakes.
TOP_CONFUSIONS_MAX_ROWS = 10_000
# The most-confused view (confusion_matrix_top.png, runs above CELL_TEXT_MAX_CLASSES classes) names
# this many classes on both axes.
TOP_MATRIX_CLASSES = 30
MACRO_AVG = "macro avg"
WEIGHTED_AVG = "weighted avg"


@dataclass(frozen=True)
class ClassMetricsRow:
    """Precision, recall and F1 of one class (`index` set) or an average over classes (`index` None)."""

    name: str
    index: int | None
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ConfusionRow:
    """One off-diagonal cell: `count` samples of class `true` predicted as `pred`, and their share
    of the true class's support."""

    true: str
    pred: str
    true_index: int
    pred_index: int
    count: int
    share_of_true: float


@dataclass(frozen=True)
class TopConfusions:
    """The largest off-diagonal cells (at most the cap) and how many nonzero ones there are in all."""

    rows: list[ConfusionRow]
    total_cells: int


def per_class_metrics(counts: SparseCounts, names: Sequence[str]) -> list[ClassMetricsRow]:
    """One row per class, by index, then the macro and the weighted average rows."""
    classes = counts.classes
    if len(names) != classes:
        raise ValueError(f"names must have one entry per class ({classes}), got {len(names)}")
    true, pred = np.divmod(counts.cells, classes)
    support = _sum_by(true, counts.values, classes)
    predicted = _sum_by(pred, counts.values, classes)
    diagonal = true == pred
    hits = _sum_by(true[diagonal], counts.values[diagonal], classes)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support)
    f1 = _ratio(2 * hits, predicted + support)  # = 2PR/(P+R), and 0 where both are 0
    rows = [ClassMetricsRow(str(names[i]), i, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i in range(classes)]
    total = int(support.sum())
    weights = support / total if total else np.zeros(classes)
    rows.append(ClassMetricsRow(MACRO_AVG, None, float(precision.mean()), float(recall.mean()), float(f1.mean()),
                                total))
    rows.append(ClassMetricsRow(WEIGHTED_AVG, None, float(precision @ weights), float(recall @ weights),
                                float(f1 @ weights), total))
    return rows


def worst_by_f1(rows: Sequence[ClassMetricsRow], limit: int = 10) -> list[ClassMetricsRow]:
    """The `limit` classes with the lowest F1 (average rows left out); among equal F1, the class
    with more support first, then by index."""
    classes = [row for row in rows if row.index is not None]
    return sorted(classes, key=lambda row: (row.f1, -row.support, row.index))[:limit]


def top_confusions(counts: SparseCounts, names: Sequence[str],
                   limit: int = TOP_CONFUSIONS_MAX_ROWS) -> TopConfusions:
    """The nonzero off-diagonal cells, largest count first, ties by true index then predicted index,
    at most `limit` of them."""
    classes = counts.classes
    true, pred = np.divmod(counts.cells, classes)
    support = support_of(counts)
    off = true != pred
    true, pred, values = true[off], pred[off], counts.values[off]
    # Cells are sorted by flat index (true, then pred), so a stable sort by count keeps that order in ties.
    order = np.argsort(-values, kind="stable")[:limit]
    rows = [ConfusionRow(str(names[t]), str(names[p]), int(t), int(p), int(v), int(v) / int(support[t]))
            for t, p, v in zip(true[order], pred[order], values[order])]
    return TopConfusions(rows, int(off.sum()))


def most_confused_classes(counts: SparseCounts, limit: int = TOP_MATRIX_CLASSES) -> np.ndarray:
    """The `limit` classes (all of them if fewer) most involved in confusions, most first: by their
    off-diagonal samples as true class plus as predicted class, ties (zero included) by index."""
    classes = counts.classes
    true, pred = np.divmod(counts.cells, classes)
    off = true != pred
    involvement = _sum_by(true[off], counts.values[off], classes) + _sum_by(pred[off], counts.values[off], classes)
    return np.argsort(-involvement, kind="stable")[:limit]


def confusion_among(counts: SparseCounts, chosen: np.ndarray) -> np.ndarray:
    """The counts among the `chosen` classes only, as a len(chosen)² int64 matrix in their order
    (rows = true, columns = predicted), read from the nonzero cells."""
    classes = counts.classes
    position = np.full(classes, -1, dtype=np.int64)
    position[chosen] = np.arange(len(chosen))
    true, pred = np.divmod(counts.cells, classes)
    rows, cols = position[true], position[pred]
    kept = (rows >= 0) & (cols >= 0)
    among = np.zeros((len(chosen), len(chosen)), dtype=np.int64)
    among[rows[kept], cols[kept]] = counts.values[kept]
    return among


def support_of(counts: SparseCounts) -> np.ndarray:
    """Samples per true class (the matrix's row sums), int64."""
    return _sum_by(counts.cells // counts.classes, counts.values, counts.classes)


def format_fraction(value: float) -> str:
    """A CSV figure in [0, 1]: six decimals, the same text on every machine."""
    return f"{value:.6f}"


def _sum_by(index: np.ndarray, values: np.ndarray, classes: int) -> np.ndarray:
    # float64 weights add counts exactly up to 2**53.
    return np.bincount(index, weights=values, minlength=classes).astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
