"""Figures of the sample-level analysis: label_suspects.png (thumbnails of the top suspects, or a
ranked chart when the run kept none of their images) and data_map.png (Dataset Cartography).

Builders take plain arrays and return a Figure (no I/O); the jobs below save them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from monitor.outputs.render.drawing import NO_DATA_NOTE, display_label, note

SUSPECT_THUMBNAILS = 16
SUSPECT_BARS = 25
THUMBNAIL_COLUMNS = 4
# Above this many training samples the data map is a 2-D histogram: a scatter of a million points
# is slow to draw and shows only ink.
DATA_MAP_SCATTER_MAX = 20_000
DATA_MAP_BINS = 60
_EASY_COLOR, _AMBIGUOUS_COLOR, _HARD_COLOR = "#2ca02c", "#ff7f0e", "#d62728"


@dataclass(frozen=True)
class Suspect:
    """One row of label_suspects.csv as the figure shows it."""

    name: str
    label: str
    suspected: str
    score: float
    mean_label_confidence: float  # NaN without label confidences


def label_suspects_figure(suspects: Sequence[Suspect], thumbnails: Sequence[np.ndarray | None],
                          title: str) -> Figure:
    """The top suspects' thumbnails (given vs suspected label, score) when at least half of the
    first SUSPECT_THUMBNAILS have an image; otherwise a ranked bar chart of their scores."""
    shown = thumbnails[:SUSPECT_THUMBNAILS]
    if shown and 2 * sum(t is not None for t in shown) >= len(shown):
        return _suspect_thumbnails(suspects[:SUSPECT_THUMBNAILS], thumbnails[:SUSPECT_THUMBNAILS], title)
    return _suspect_bars(suspects[:SUSPECT_BARS], title)


def _suspect_thumbnails(suspects: Sequence[Suspect], thumbnails: Sequence[np.ndarray | None], title: str) -> Figure:
    count = len(suspects)
    rows = -(-count // THUMBNAIL_COLUMNS)
    height = 3.3 * rows + 0.9
    fig = Figure(figsize=(3.0 * THUMBNAIL_COLUMNS, height))
    fig.suptitle(title, fontsize=12, y=1 - 0.15 / height, va="top")
    grid = fig.add_gridspec(rows, THUMBNAIL_COLUMNS, left=0.02, right=0.98, bottom=0.1 / height, top=1 - 1.2 / height,
                            hspace=0.45, wspace=0.1)
    for i, (suspect, image) in enumerate(zip(suspects, thumbnails)):
        ax = fig.add_subplot(grid[i // THUMBNAIL_COLUMNS, i % THUMBNAIL_COLUMNS])
        ax.set_xticks([])
        ax.set_yticks([])
        if image is None:
            note(ax, "no thumbnail kept")
        else:
            ax.imshow(np.asarray(image, dtype=np.uint8), interpolation="nearest")
        for side in ax.spines.values():
            side.set_color(_HARD_COLOR)
            side.set_linewidth(3)
        ax.set_title(f"{display_label(suspect.name, 24)}\ngiven: {display_label(suspect.label, 16)} · "
                     f"model: {display_label(suspect.suspected, 16)}\nscore {suspect.score:.2f}",
                     fontsize=8.5, parse_math=False)
    return fig


def _suspect_bars(suspects: Sequence[Suspect], title: str) -> Figure:
    count = max(len(suspects), 1)
    height = 1.3 + 0.32 * count
    fig = Figure(figsize=(9.0, height))
    ax = fig.add_axes((0.36, 0.7 / height, 0.6, 1 - 1.1 / height))
    ax.set_title(title, fontsize=11)
    if not suspects:
        note(ax, NO_DATA_NOTE)
        return fig
    y = np.arange(len(suspects))
    ax.barh(y, [s.score for s in suspects], color=_HARD_COLOR, alpha=0.8)
    ax.set_yticks(y, [f"{display_label(s.name, 20)}: {display_label(s.label, 14)} → "
                      f"{display_label(s.suspected, 14)}" for s in suspects], fontsize=8)
    for label in ax.get_yticklabels():
        label.set_parse_math(False)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score: share of epochs wrong × (1 − mean probability of the given label)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def data_map_figure(mean: np.ndarray, variability: np.ndarray, correctness: np.ndarray, title: str) -> Figure:
    """Dataset Cartography: the given label's mean probability (y) against its spread over epochs
    (x), coloured by the share of epochs predicted right; a 2-D histogram above DATA_MAP_SCATTER_MAX
    samples."""
    fig = Figure(figsize=(8.0, 6.5))
    ax = fig.add_axes((0.1, 0.1, 0.72, 0.8))
    ax.set_title(f"{title}\n{len(mean):,} training samples", fontsize=11)
    ax.set_xlabel("variability (std of the given label's probability over epochs)")
    ax.set_ylabel("confidence (mean probability of the given label)")
    ax.set_xlim(0, 0.5)
    ax.set_ylim(0, 1)
    if not len(mean):
        note(ax, NO_DATA_NOTE)
        return fig
    bar_ax = fig.add_axes((0.85, 0.1, 0.03, 0.8))
    if len(mean) <= DATA_MAP_SCATTER_MAX:
        points = ax.scatter(variability, mean, c=correctness, cmap="RdYlGn", vmin=0, vmax=1, s=8, linewidths=0,
                            alpha=0.8)
        fig.colorbar(points, cax=bar_ax, label="correctness (share of epochs right)")
    else:
        counts, x_edges, y_edges = np.histogram2d(variability, mean, bins=DATA_MAP_BINS, range=[[0, 0.5], [0, 1]])
        image = ax.imshow(np.log1p(counts.T), origin="lower", extent=(0, 0.5, 0, 1), aspect="auto", cmap="viridis",
                          interpolation="nearest")
        fig.colorbar(image, cax=bar_ax, label="log(1 + samples)")
    style = {"fontsize": 10, "fontweight": "bold",
             "bbox": {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 2}}
    ax.text(0.02, 0.95, "easy to learn", color=_EASY_COLOR, va="top", **style)
    ax.text(0.02, 0.04, "hard to learn", color=_HARD_COLOR, va="bottom", **style)
    ax.text(0.35, 0.5, "ambiguous", color=_AMBIGUOUS_COLOR, ha="center", **style)
    ax.grid(True, alpha=0.3)
    return fig


@dataclass(frozen=True)
class LabelSuspectsJob:
    png: Path
    suspects: tuple[Suspect, ...]
    thumbnails: tuple[np.ndarray | None, ...]
    title: str

    def run(self) -> None:
        from monitor.outputs.render.save import save_figure

        save_figure(label_suspects_figure(self.suspects, self.thumbnails, self.title), self.png)


@dataclass(frozen=True)
class DataMapJob:
    png: Path
    mean: np.ndarray
    variability: np.ndarray
    correctness: np.ndarray
    title: str

    def run(self) -> None:
        from monitor.outputs.render.save import save_figure

        save_figure(data_map_figure(self.mean, self.variability, self.correctness, self.title), self.png)
