"""Render jobs: plain, picklable descriptions of one artifact each, run by a renderer (in or out of process).

A job holds everything its artifact depends on and nothing else, which is what makes replay reproduce
serve's files byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from monitor.aggregates import confusion
from monitor.aggregates.calibration import CalibrationBins
from monitor.aggregates.confusion import SparseCounts

if TYPE_CHECKING:
    from rich.table import Table

    from monitor.outputs.render.tables import TerminalView


@dataclass(frozen=True)
class ConfusionJob:
    """One confusion-matrix PNG (`view`: a key of `matrix_views.VIEWS`), and the CSV of the counts
    when `csv` is set (`write_confusion_csv`). `counts` is the whole matrix or its nonzero cells; a
    queued job holds only the cells, and the views never make a matrix whole above
    WHOLE_MATRIX_MAX_CLASSES."""

    png: Path
    csv: Path | None
    counts: np.ndarray | SparseCounts
    class_names: Sequence[str]
    title: str
    view: str = "counts"

    def __reduce__(self):
        # Pickled for the render worker with the GIL held, which the receive loop then waits for: the
        # counts travel packed (`pack_counts`), a many-class matrix being mostly zeros.
        state = {field.name: getattr(self, field.name) for field in fields(self)}
        counts = self.counts
        state["counts"] = pack_cells(counts) if isinstance(counts, SparseCounts) else pack_counts(counts)
        return _unpacked_confusion_job, (type(self), state)

    def run(self) -> None:
        from monitor.outputs.render.confusion_figures import ConfusionPlot
        from monitor.outputs.render.matrix_views import VIEWS
        from monitor.outputs.render.reuse import plot_of
        from monitor.outputs.render.save import save_figure

        counts = self.counts if isinstance(self.counts, SparseCounts) else SparseCounts.of_matrix(self.counts)
        if self.csv is not None:
            write_confusion_csv(self.csv, counts, self.class_names)
        with plot_of(ConfusionPlot, VIEWS[self.view](counts, self.class_names, self.title)) as plot:
            save_figure(plot.figure, self.png, plot.draw)


def confusion_jobs(epoch_dir: Path, counts: SparseCounts, class_names: Sequence[str],
                   epoch: int) -> list[ConfusionJob]:
    """An epoch's confusion artifacts: the counts (PNG and CSV), the row-normalized matrix, and, above
    CELL_TEXT_MAX_CLASSES classes, the most confused classes named on both axes."""
    from monitor.aggregates.analysis import TOP_MATRIX_CLASSES
    from monitor.outputs.render.confusion_figures import CELL_TEXT_MAX_CLASSES

    classes = counts.classes
    csv = "confusion_matrix.csv" if classes <= confusion.WHOLE_MATRIX_MAX_CLASSES else "confusion_matrix_cells.csv"
    jobs = [ConfusionJob(epoch_dir / "confusion_matrix.png", epoch_dir / csv, counts, class_names,
                         f"Confusion matrix — epoch {epoch}"),
            ConfusionJob(epoch_dir / "confusion_matrix_normalized.png", None, counts, class_names,
                         f"Confusion matrix, % of each true class — epoch {epoch}", "normalized")]
    if classes > CELL_TEXT_MAX_CLASSES:
        jobs.append(ConfusionJob(epoch_dir / "confusion_matrix_top.png", None, counts, class_names,
                                 f"Most confused {min(TOP_MATRIX_CLASSES, classes)} of {classes:,} classes, "
                                 f"% of each true class — epoch {epoch}", "top"))
    return jobs


def write_confusion_csv(path: Path, counts: SparseCounts, class_names: Sequence[str]) -> None:
    """Up to WHOLE_MATRIX_MAX_CLASSES classes, the whole matrix (a header row of predicted names,
    then one row per true class); above, its nonzero cells, one per row, by true then predicted
    index: `true_index,pred_index,true,pred,count`."""
    from monitor.outputs.render.save import write_csv

    if counts.classes <= confusion.WHOLE_MATRIX_MAX_CLASSES:
        rows = ([name, *row.tolist()] for name, row in zip(class_names, counts.dense()))
        write_csv(path, ["true\\pred", *class_names], rows)
        return
    true, pred = np.divmod(counts.cells, counts.classes)
    write_csv(path, ["true_index", "pred_index", "true", "pred", "count"],
              ([t, p, class_names[t], class_names[p], c]
               for t, p, c in zip(true.tolist(), pred.tolist(), counts.values.tolist())))


def pack_counts(counts: np.ndarray) -> tuple:
    """A matrix of non-negative counts in few bytes: its nonzero cells (flat index, count) where
    they are fewer bytes than the whole matrix (a many-class confusion matrix is mostly zeros), else
    the whole matrix; either in the smallest unsigned integer types that hold them, and
    `unpack_counts` gives back the same matrix as int64. Anything else (floats, negative values, no
    cells) travels as it is."""
    counts = np.asarray(counts)
    if counts.size == 0 or counts.dtype.kind not in "iu" or counts.min() < 0:
        return ("as is", counts)
    value_type = np.min_scalar_type(int(counts.max()))
    index_type = np.min_scalar_type(counts.size - 1)
    flat = np.flatnonzero(counts)
    if flat.size * (index_type.itemsize + value_type.itemsize) < counts.size * value_type.itemsize:
        return ("sparse", counts.shape, flat.astype(index_type), counts.reshape(-1)[flat].astype(value_type))
    return ("dense", counts.astype(value_type))


def pack_cells(counts: SparseCounts) -> tuple:
    """Counts kept as their nonzero cells, in the smallest unsigned types that hold them, without
    making them whole; `unpack_counts` gives back the same `SparseCounts`."""
    classes = counts.classes
    value_type = np.min_scalar_type(int(counts.values.max()) if len(counts.values) else 0)
    index_type = np.min_scalar_type(max(classes * classes - 1, 0))
    return ("cells", classes, counts.cells.astype(index_type), counts.values.astype(value_type))


def unpack_counts(packed: tuple) -> np.ndarray | SparseCounts:
    """What `pack_counts` or `pack_cells` packed: a matrix as int64 (or as it was, for what
    travelled as is), cells as `SparseCounts`."""
    if packed[0] == "cells":
        _, classes, cells, values = packed
        return SparseCounts(classes, cells.astype(np.int64), values.astype(np.int64))
    if packed[0] == "as is":
        return packed[1]
    if packed[0] == "sparse":
        _, shape, flat, values = packed
        counts = np.zeros(int(np.prod(shape)), dtype=np.int64)
        counts[flat] = values
        return counts.reshape(shape)
    return packed[1].astype(np.int64)


def _unpacked_confusion_job(cls: type, state: dict) -> ConfusionJob:
    return cls(**{**state, "counts": unpack_counts(state["counts"])})


@dataclass(frozen=True)
class HistoryJob:
    """The loss, accuracy and calibration-error curves of a run, `<folder>/<kind>_history.png` (no
    calibration_history.png before the run has calibration errors)."""

    folder: Path
    history: Mapping[int, Mapping[str, float]]

    def run(self) -> None:
        from monitor.outputs.render.history_figures import HISTORY_KINDS, OPTIONAL_HISTORY_KINDS, HistoryPlot
        from monitor.outputs.render.reuse import plot_of
        from monitor.outputs.render.save import save_figure

        for kind in HISTORY_KINDS:
            if kind in OPTIONAL_HISTORY_KINDS and not HistoryPlot.layout_of(self.history, kind)[2]:
                continue
            with plot_of(HistoryPlot, self.history, kind) as plot:
                save_figure(plot.figure, self.folder / f"{kind}_history.png", plot.draw)


@dataclass(frozen=True)
class SampleGridJob:
    """An epoch's sample grid: thumbnails with their true and predicted class names, and with
    `confidences` each prediction's confidence (the hardest mistakes)."""

    png: Path
    images: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    class_names: Sequence[str]
    confidences: np.ndarray | None = None

    def run(self) -> None:
        from monitor.outputs.render.sample_grid import SampleGridPlot
        from monitor.outputs.render.reuse import plot_of
        from monitor.outputs.render.save import save_figure

        confidences = None if self.confidences is None else [float(c) for c in self.confidences]
        with plot_of(SampleGridPlot, np.asarray(self.images), [int(x) for x in self.labels],
                     [int(x) for x in self.preds], self.class_names, confidences) as plot:
            save_figure(plot.figure, self.png, plot.draw)


@dataclass(frozen=True)
class ReliabilityJob:
    """An epoch's reliability diagram (accuracy against confidence per bin, with the counts)."""

    png: Path
    bins: CalibrationBins
    title: str

    def run(self) -> None:
        from monitor.outputs.render.calibration_figures import reliability_figure
        from monitor.outputs.render.save import save_figure

        save_figure(reliability_figure(self.bins, self.title), self.png)


@dataclass(frozen=True)
class TableJob:
    """One table for the record (console.txt) and the terminal. `record` and `terminal` build the rich
    Tables: module-level builders from `monitor.outputs.render.tables` bound to their rows with
    `functools.partial`, so the job pickles. `terminal` is a shorter version for the screen (None:
    the same table); `view` is the terminal to draw it for (None: nothing goes to a terminal)."""

    record: Callable[[], "Table"]
    terminal: Callable[[], "Table"] | None
    view: "TerminalView | None"

    def run(self) -> tuple[str, str | None]:
        """The console.txt text and the terminal's ANSI text."""
        from monitor.outputs.render.tables import table_text, terminal_text

        record = self.record()
        if self.view is None:
            return table_text(record), None
        return table_text(record), terminal_text(record if self.terminal is None else self.terminal(), self.view)


def run_job(job: ConfusionJob | HistoryJob | SampleGridJob | ReliabilityJob) -> str:
    """Entry point in a worker process; returns what it wrote, for the dashboard."""
    job.run()
    return str(getattr(job, "png", None) or getattr(job, "folder"))
