"""Build the reliability diagram of an epoch from its calibration bins (`monitor.aggregates.calibration`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from monitor.aggregates.calibration import EDGES, NUM_BINS, CalibrationBins
from monitor.outputs.render.drawing import NO_DATA_NOTE, note

ACCURACY_COLOR = "#1f77b4"
GAP_COLOR = "#d62728"
_INCHES = (7.0, 7.5)
# Axes boxes as (left, bottom, width, height), fractions of the figure: the diagram over the counts.
_DIAGRAM_BOX = (0.12, 0.34, 0.83, 0.58)
_COUNTS_BOX = (0.12, 0.07, 0.83, 0.19)
_COUNT_POINTS = 7.5


def reliability_figure(bins: CalibrationBins, title: str) -> Figure:
    """Accuracy against mean confidence in each of the 15 equal-width bins, beside the diagonal of
    perfect calibration, with the gap to it shaded; below, the number of predictions per bin. The
    title gives ECE, MCE and the number of predictions."""
    fig = Figure(figsize=_INCHES)
    diagram = fig.add_axes(_DIAGRAM_BOX)
    counts_ax = fig.add_axes(_COUNTS_BOX, sharex=diagram)
    width = 1.0 / NUM_BINS
    left = EDGES[:-1]
    filled = bins.counts > 0
    accuracy = np.nan_to_num(bins.accuracy())
    confidence = bins.mean_confidence()
    diagram.plot([0, 1], [0, 1], linestyle="--", color="0.4", linewidth=1.2, label="perfect calibration")
    diagram.bar(left[filled], accuracy[filled], width=width, align="edge", color=ACCURACY_COLOR, alpha=0.85,
                edgecolor="white", linewidth=0.8, label="accuracy")
    gap_bottom = np.minimum(accuracy, confidence)[filled]
    # Hatched, unfilled: the gap reads the same over a bar (over-confidence is below the bar's top,
    # under-confidence above it).
    diagram.bar(left[filled], np.abs(confidence - accuracy)[filled], bottom=gap_bottom, width=width, align="edge",
                fill=False, hatch="///", edgecolor=GAP_COLOR, linewidth=0.8, label="gap to mean confidence")
    diagram.plot(confidence[filled], accuracy[filled], linestyle="none", marker="o", markersize=4, color="black",
                 label="(mean confidence, accuracy)")
    diagram.set_xlim(0, 1)
    diagram.set_ylim(0, 1)
    diagram.set_ylabel("Accuracy")
    diagram.grid(True, alpha=0.3)
    diagram.tick_params(labelbottom=False)
    diagram.legend(loc="upper left", fontsize=9, framealpha=0.95)
    total = bins.total
    if total:
        diagram.set_title(f"{title}\nECE {bins.ece():.4f} · MCE {bins.mce():.4f} · {total:,} predictions",
                          fontsize=11)
    else:
        diagram.set_title(title, fontsize=11)
        note(diagram, NO_DATA_NOTE)

    counts_ax.bar(left, bins.counts, width=width, align="edge", color="0.55", edgecolor="white", linewidth=0.8)
    top = max(int(bins.counts.max()), 1)
    counts_ax.set_ylim(0, top * 1.35)  # room for the numbers above the tallest bar
    for x, count in zip(left + width / 2, bins.counts):
        if count:
            counts_ax.text(x, count + top * 0.04, _compact(int(count)), ha="center", va="bottom",
                           fontsize=_COUNT_POINTS, parse_math=False)
    counts_ax.set_xticks(np.round(np.linspace(0, 1, 6), 1))
    counts_ax.set_xlabel("Confidence (top-1 softmax probability)")
    counts_ax.set_ylabel("Predictions")
    counts_ax.locator_params(axis="y", nbins=3)
    counts_ax.grid(True, axis="y", alpha=0.3)
    return fig


def _compact(count: int) -> str:
    """A count short enough to sit over a bin: 987, 9,876, 98.8k, 1.2M."""
    if count < 10_000:
        return f"{count:,}"
    if count < 1_000_000:
        return f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.1f}M"
