"""Render jobs: plain, picklable descriptions of one artifact each, run by a renderer (in or out of process).

A job holds everything its artifact depends on and nothing else, which is what makes replay reproduce
serve's files byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from monitor.calibration import CalibrationBins
from monitor.confusion import SparseCounts

if TYPE_CHECKING:
    from rich.table import Table

    from monitor.render.tables import TerminalView


@dataclass(frozen=True)
class ConfusionJob:
    """The confusion matrix PNG and CSV. `counts` is the whole matrix or its nonzero cells; a queued
    job holds only the cells, and the matrix is made whole where it is drawn."""

    png: Path
    csv: Path
    counts: np.ndarray | SparseCounts
    class_names: Sequence[str]
    title: str

    def __reduce__(self):
        # Pickled for the render worker with the GIL held, which the receive loop then waits for: the
        # counts travel packed (`pack_counts`), a many-class matrix being mostly zeros.
        state = {field.name: getattr(self, field.name) for field in fields(self)}
        counts = self.counts
        state["counts"] = pack_sparse(counts) if isinstance(counts, SparseCounts) else pack_counts(counts)
        return _unpacked_confusion_job, (type(self), state)

    def run(self) -> None:
        from monitor.render.figures import ConfusionPlot
        from monitor.render.reuse import plot_of
        from monitor.render.save import save_figure, write_csv

        counts = self.counts.dense() if isinstance(self.counts, SparseCounts) else self.counts
        header = ["true\\pred", *self.class_names]
        rows = ([name, *(int(c) for c in row)] for name, row in zip(self.class_names, counts))
        write_csv(self.csv, header, rows)
        with plot_of(ConfusionPlot, counts, self.class_names, self.title) as plot:
            save_figure(plot.figure, self.png, plot.draw)


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


def pack_sparse(counts: SparseCounts) -> tuple:
    """`pack_counts`'s sparse form of counts kept as their nonzero cells, without making them whole."""
    classes = counts.classes
    value_type = np.min_scalar_type(int(counts.values.max()) if len(counts.values) else 0)
    index_type = np.min_scalar_type(max(classes * classes - 1, 0))
    return ("sparse", (classes, classes), counts.cells.astype(index_type), counts.values.astype(value_type))


def unpack_counts(packed: tuple) -> np.ndarray:
    """The matrix `pack_counts` packed, as int64 (or as it was, for what travelled as is)."""
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
        from monitor.render.figures import HISTORY_KINDS, OPTIONAL_HISTORY_KINDS, HistoryPlot
        from monitor.render.reuse import plot_of
        from monitor.render.save import save_figure

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
        from monitor.render.figures import SampleGridPlot
        from monitor.render.reuse import plot_of
        from monitor.render.save import save_figure

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
        from monitor.render.calibration_figures import reliability_figure
        from monitor.render.save import save_figure

        save_figure(reliability_figure(self.bins, self.title), self.png)


@dataclass(frozen=True)
class TableJob:
    """One table for the record (console.txt) and the terminal. `record` and `terminal` build the rich
    Tables: module-level builders from `monitor.render.tables` bound to their rows with
    `functools.partial`, so the job pickles. `terminal` is a shorter version for the screen (None:
    the same table); `view` is the terminal to draw it for (None: nothing goes to a terminal)."""

    record: Callable[[], "Table"]
    terminal: Callable[[], "Table"] | None
    view: "TerminalView | None"

    def run(self) -> tuple[str, str | None]:
        """The console.txt text and the terminal's ANSI text."""
        from monitor.render.tables import table_text, terminal_text

        record = self.record()
        if self.view is None:
            return table_text(record), None
        return table_text(record), terminal_text(record if self.terminal is None else self.terminal(), self.view)


def run_job(job: ConfusionJob | HistoryJob | SampleGridJob | ReliabilityJob) -> str:
    """Entry point in a worker process; returns what it wrote, for the dashboard."""
    job.run()
    return str(getattr(job, "png", None) or getattr(job, "folder"))
