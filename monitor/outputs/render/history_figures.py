"""Build the history figures (loss, accuracy, calibration error against epoch) from a run's metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from monitor.outputs.render.drawing import NO_DATA_NOTE, note, pixel_bytes

# History figures have fixed margins (inches: left, bottom, right, top) rather than a layout
# engine, which would measure every tick label in an extra pass. The left margin holds tick labels
# of up to 8 characters, such as "0.000125".
_HISTORY_INCHES = (8.0, 5.0)
_HISTORY_MARGINS = (0.95, 0.5, 0.15, 0.35)

_LOSS_SERIES = (("train", ("train/loss", "train/loss_epoch")), ("val", ("val/loss",)))
_ACCURACY_SERIES = (
    ("val top-1", ("val/acc_top1",)),
    ("val top-5", ("val/acc_top5",)),
    ("train top-1", ("train/acc_top1", "train/acc_top1_epoch")),
)

# Each history figure: its series, title and y label; the kind names its file (<kind>_history.png).
_CALIBRATION_SERIES = (("ECE", ("val/ece",)), ("MCE", ("val/mce",)))
_HISTORY = {"loss": (_LOSS_SERIES, "Loss", "Loss"), "accuracy": (_ACCURACY_SERIES, "Accuracy", "Accuracy"),
            "calibration": (_CALIBRATION_SERIES, "Calibration error (validation)", "|accuracy − confidence|")}
HISTORY_KINDS = tuple(_HISTORY)
# Drawn only once the history holds one of their series (a trainer before protocol 1.2 sends no
# confidences, so its runs have no calibration errors).
OPTIONAL_HISTORY_KINDS = frozenset({"calibration"})


def history_figures(history: Mapping[int, Mapping[str, float]]) -> tuple[Figure, Figure]:
    """Loss and accuracy curves against epoch; missing or non-finite values are gaps."""
    return HistoryPlot(history, "loss").figure, HistoryPlot(history, "accuracy").figure


class HistoryPlot:
    """One history figure ("loss", "accuracy" or "calibration"), and its curves.

    `update` gives the curves a longer history; a figure whose `layout` (which series it has) stays
    the same then draws exactly as a freshly built one, ticks and limits included, for a fraction of
    the cost of building it again.
    """

    def __init__(self, history: Mapping[int, Mapping[str, float]], kind: str) -> None:
        self.layout = self.layout_of(history, kind)
        series, title, ylabel = _HISTORY[kind]
        width, height = _HISTORY_INCHES
        left, bottom, right, top = _HISTORY_MARGINS
        self.figure = fig = Figure(figsize=_HISTORY_INCHES)
        self._axes = ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width,
                                        1 - (bottom + top) / height))
        ax.set_title(title, y=1.0)  # a fixed place, as in ConfusionPlot
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for label, _ in self.layout[2]:
            # Markers keep an isolated value visible when NaN gaps surround it.
            ax.plot([], [], marker="o", markersize=3.5, linewidth=1.8, label=label)
        if self.layout[2]:
            ax.legend()
        else:
            note(ax, NO_DATA_NOTE)
        self.update(history, kind)

    @staticmethod
    def layout_of(history: Mapping[int, Mapping[str, float]], kind: str) -> tuple:
        """The series this figure plots, as (label, metric key) pairs, in drawing order."""
        series, _, _ = _HISTORY[kind]
        plotted = ((label, _first_present(history, keys)) for label, keys in series)
        return "history", kind, tuple((label, key) for label, key in plotted if key is not None)

    @property
    def nbytes(self) -> int:
        """About what the plot holds in memory: its pixels (the curves are a few numbers per epoch)."""
        return pixel_bytes(self.figure)

    def update(self, history: Mapping[int, Mapping[str, float]], kind: str) -> None:
        """The curves of a new history that has this plot's series."""
        if self.layout_of(history, kind) != self.layout:
            raise ValueError("this history needs a figure of another layout; build a new HistoryPlot")
        epochs = sorted(history)
        ax = self._axes
        for line, (_, key) in zip(ax.get_lines(), self.layout[2]):
            line.set_data(epochs, _series(history, epochs, key))
        # Limits from these curves alone: back to a new Axes' (0, 1) first, since autoscaling keeps
        # limits set earlier when no curve has a finite point.
        ax.set_xlim(0, 1, auto=None)
        ax.set_ylim(0, 1, auto=None)
        if self.layout[2]:
            ax.relim()
            ax.autoscale_view()

    def draw(self, canvas: FigureCanvasAgg) -> None:
        """Draw the figure on ``canvas`` (all of it: the ticks and limits follow the curves)."""
        canvas.draw()


def _series(history: Mapping[int, Mapping[str, float]], epochs: list[int], key: str) -> list[float]:
    return [_finite_or_nan(history[epoch].get(key)) for epoch in epochs]


def _first_present(history: Mapping[int, Mapping[str, float]], keys: Sequence[str]) -> str | None:
    for key in keys:
        if any(key in metrics for metrics in history.values()):
            return key
    return None


def _finite_or_nan(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan
