"""The confusion-matrix views of an epoch (`MatrixView`s for `ConfusionPlot`), built from its sparse counts.

- `counts_view`: the whole matrix of counts (confusion_matrix.png);
- `normalized_view`: each row as percent of its true class's samples (confusion_matrix_normalized.png);
- `top_view`: the TOP_MATRIX_CLASSES classes most involved in confusions, named on both axes
  (confusion_matrix_top.png, for runs too large to name every class).

Above MAX_BINS classes the first two are block sums (`SparseCounts.blocks`), so no view ever holds
more than MAX_BINS² values, whatever the class count.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitor.aggregates.analysis import TOP_MATRIX_CLASSES, confusion_among, most_confused_classes, support_of
from monitor.aggregates.confusion import SparseCounts, block_size, row_percent
from monitor.outputs.render.confusion_figures import CELL_TEXT_MAX_CLASSES, MatrixView


def counts_view(counts: SparseCounts, class_names: Sequence[str], title: str) -> MatrixView:
    """Counts per cell, or per block of `block_size(C)` × `block_size(C)` classes."""
    block = block_size(counts.classes)
    return MatrixView(counts.blocks(block), _names(counts, class_names, block), title, block=block,
                      classes=counts.classes)


def normalized_view(counts: SparseCounts, class_names: Sequence[str], title: str) -> MatrixView:
    """Each row as percent of its samples (a block row: of its classes' samples together); a true
    class without samples is an empty row."""
    block = block_size(counts.classes)
    return MatrixView(row_percent(counts.blocks(block)), _names(counts, class_names, block), title, percent=True,
                      block=block, classes=counts.classes)


def top_view(counts: SparseCounts, class_names: Sequence[str], title: str,
             limit: int = TOP_MATRIX_CLASSES) -> MatrixView:
    """The `limit` classes most involved in confusions (`most_confused_classes`), most first, each
    cell as percent of all its true class's samples: a row adds up to less than 100 when that class
    was also predicted as classes left out."""
    chosen = most_confused_classes(counts, limit)
    percent = row_percent(confusion_among(counts, chosen), support_of(counts)[chosen])
    return MatrixView(percent, tuple(str(class_names[i]) for i in chosen), title, percent=True)


VIEWS = {"counts": counts_view, "normalized": normalized_view, "top": top_view}


def _names(counts: SparseCounts, class_names: Sequence[str], block: int) -> tuple[str, ...]:
    """The names to draw along the axes: every class's, when each has a row of its own and they fit."""
    if len(class_names) != counts.classes:
        raise ValueError(f"expected {counts.classes} class names, got {len(class_names)}")
    return tuple(class_names) if block == 1 and counts.classes <= CELL_TEXT_MAX_CLASSES else ()
