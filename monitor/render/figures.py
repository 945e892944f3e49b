"""Build the monitor's figures (confusion matrix, history curves, sample grid) from state."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.gridspec import GridSpec
from matplotlib.patches import PathPatch
from matplotlib.path import Path
from matplotlib.textpath import TextPath, text_to_path
from matplotlib.ticker import MaxNLocator

from monitor.render.text import clean

# Up to this many classes every cell shows its count and both axes show class names; the canvas
# grows with C (about 17 inches at 50 classes). Above it, names and counts would be unreadable, so
# the matrix is a plain heatmap on a fixed canvas with thinned class-index ticks. Render + save on
# the 2-core project machine, other jobs running (best of 3): 10 classes 0.27 s, 43 classes
# 0.65-0.8 s, 200 classes 0.23 s, 1000 classes 0.6 s.
CELL_TEXT_MAX_CLASSES = 50
CONFUSION_CMAP = "Blues"
FIGURE_LABEL_MAX_CHARS = 20
SAMPLE_NAME_MAX_CHARS = 18
SAMPLE_COLUMNS = 4
CORRECT_COLOR = "#2ca02c"
WRONG_COLOR = "#d62728"
BORDER_WIDTH = 4.0
NO_DATA_NOTE = "no data yet"

# Inches per matrix cell: large enough for a 4-digit count at 6 pt, bounded so small matrices do
# not balloon and large ones keep a fixed canvas.
_CELL_INCHES_MAX = 0.8
_CELL_INCHES_MIN = 0.28
_MATRIX_INCHES = 8.0
_LARGE_MATRIX_INCHES = 9.0
_CELL_FONT = FontProperties(family="DejaVu Sans")
_CELL_FONT_MAX_POINTS = 11.0
# Sample grid geometry in inches: thumbnail box, gap between columns, room above each thumbnail
# for a title of up to two lines, outer margin.
_SAMPLE_INCHES = 2.8
_SAMPLE_GAP = 0.2
_SAMPLE_TITLE_ROOM = 0.45
_SAMPLE_MARGIN = 0.1
_SAMPLE_TITLE_POINTS = 8.5
_SAMPLE_TITLE_MAX_POINTS = (_SAMPLE_INCHES + _SAMPLE_GAP) * 72 - 8
# Blues goes from near white to dark navy; below this luminance black text would vanish.
_DARK_LUMINANCE = 0.45

_LOSS_SERIES = (("train", ("train/loss", "train/loss_epoch")), ("val", ("val/loss",)))
_ACCURACY_SERIES = (
    ("val top-1", ("val/acc_top1",)),
    ("val top-5", ("val/acc_top5",)),
    ("train top-1", ("train/acc_top1", "train/acc_top1_epoch")),
)


def display_label(name: str, max_chars: int = FIGURE_LABEL_MAX_CHARS) -> str:
    """Make an untrusted class name safe and short enough to draw: no control chars, ellipsized."""
    return clean(name, max_chars)


# ---------------------------------------------------------------------------- confusion matrix


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Heatmap of a C×C confusion matrix: rows are true classes, columns predicted classes."""
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"counts must be a C×C matrix with C >= 1, got shape {counts.shape}")
    if counts.min() < 0:
        raise ValueError("counts must be non-negative")
    n_classes = counts.shape[0]
    if len(class_names) != n_classes:
        raise ValueError(f"expected {n_classes} class names for a {n_classes}-class matrix, "
                         f"got {len(class_names)}")
    with_cells = n_classes <= CELL_TEXT_MAX_CLASSES
    cell = _cell_inches(n_classes) if with_cells else _LARGE_MATRIX_INCHES / max(n_classes, 1)
    fig = Figure(figsize=_confusion_figsize(n_classes, with_cells, cell), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap=CONFUSION_CMAP, norm=_confusion_norm(counts), aspect="equal",
                      interpolation="nearest" if with_cells else "antialiased")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Count")
    ax.set_title(display_label(title, 120), parse_math=False)
    if with_cells:
        _name_ticks(ax, class_names, cell)
        _draw_cell_labels(ax, cell_labels(counts), cell)
    else:
        _index_ticks(ax)
    return fig


def _cell_inches(n_classes: int) -> float:
    return min(_CELL_INCHES_MAX, max(_CELL_INCHES_MIN, _MATRIX_INCHES / max(n_classes, 1)))


def _confusion_figsize(n_classes: int, with_cells: bool, cell: float) -> tuple[float, float]:
    grid = n_classes * cell if with_cells else _LARGE_MATRIX_INCHES
    # Room for rotated names below and names on the left, plus the colour bar on the right.
    label_room = 1.9 if with_cells else 0.9
    return (max(5.0, grid + label_room + 1.4), max(4.5, grid + label_room + 0.6))


def _name_ticks(ax: Axes, class_names: Sequence[str], cell: float) -> None:
    labels = [display_label(name) for name in class_names]
    size = min(10.0, max(6.0, cell * 72 * 0.45))
    positions = range(len(labels))
    ax.set_xticks(positions)
    ax.set_yticks(positions)
    # Class names are untrusted: "$" must not switch on mathtext (malformed math raises on draw).
    rotation = 45 if len(labels) <= 20 else 90
    ax.set_xticklabels(labels, fontsize=size, rotation=rotation, ha="right",
                       rotation_mode="anchor", parse_math=False)
    ax.set_yticklabels(labels, fontsize=size, parse_math=False)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.tick_params(length=2)


def _index_ticks(ax: Axes) -> None:
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.set_xlabel("Predicted (class index)")
    ax.set_ylabel("True (class index)")


@dataclass(frozen=True)
class CellLabel:
    """The count written in one confusion cell; ``dark`` cells get white text."""

    row: int
    col: int
    text: str
    dark: bool


def cell_labels(counts: np.ndarray) -> list[CellLabel]:
    """The count text of every cell, row-major, and whether its cell is too dark for black."""
    norm = _confusion_norm(counts)
    rgba = colormaps[CONFUSION_CMAP](norm(counts))
    luminance = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    return [CellLabel(row, col, str(int(value)), bool(luminance[row, col] < _DARK_LUMINANCE))
            for (row, col), value in np.ndenumerate(counts)]


def _confusion_norm(counts: np.ndarray) -> Normalize:
    return Normalize(vmin=0, vmax=max(1, int(counts.max(initial=0))))


def _draw_cell_labels(ax: Axes, labels: Sequence[CellLabel], cell_inches: float) -> None:
    """Draw all counts as two filled glyph paths (one per text colour).

    One Text artist per cell cost about 0.6 ms to draw on the 2-core project machine, and
    constrained layout draws everything twice: 2 s for 43 classes. Digit outlines placed in data
    units draw as one path per colour in milliseconds, and scale with the cell, so a count always
    fits in its cell.
    """
    outlines = {text: _count_outline(text) for text in {label.text for label in labels}}
    widest = max(width for _, _, width in outlines.values())
    # Font size as a fraction of the cell: capped in points, by cell height, by the widest count.
    scale = min(_CELL_FONT_MAX_POINTS / (cell_inches * 72), 0.34, 0.8 / widest)
    for dark, color in ((False, "black"), (True, "white")):
        chosen = [label for label in labels if label.dark == dark]
        if not chosen:
            continue
        vertices = np.concatenate([outlines[label.text][0] * scale + (label.col, label.row)
                                   for label in chosen])
        codes = np.concatenate([outlines[label.text][1] for label in chosen])
        patch = PathPatch(Path(vertices, codes), facecolor=color, edgecolor="none",
                          linewidth=0, gid=f"cell-counts-{color}")
        patch.set_in_layout(False)
        # add_artist, not add_patch: the latter walks every glyph curve to update data limits.
        ax.add_artist(patch)


def _count_outline(text: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Outline of a digit string at 1 em, centred on the origin, y flipped for imshow's rows."""
    digits, advance, height = _digit_outlines()
    vertices = np.concatenate([digits[char][0] + (index * advance, 0.0)
                               for index, char in enumerate(text)])
    codes = np.concatenate([digits[char][1] for char in text])
    width = len(text) * advance
    vertices = vertices - (width / 2, height / 2)
    vertices[:, 1] *= -1
    return vertices, codes, width


@functools.cache
def _digit_outlines() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float, float]:
    """Outlines of 0-9 at 1 em, the digit advance and the digit height (digits are tabular)."""
    digits = {}
    for char in "0123456789":
        path = TextPath((0, 0), char, size=1, prop=_CELL_FONT)
        digits[char] = (path.vertices, path.codes)
    zero, double_zero = (TextPath((0, 0), text, size=1, prop=_CELL_FONT) for text in ("0", "00"))
    advance = float(double_zero.vertices[:, 0].max() - zero.vertices[:, 0].max())
    height = float(zero.vertices[:, 1].max())
    return digits, advance, height


# ---------------------------------------------------------------------------- history curves


def history_figures(history: Mapping[int, Mapping[str, float]]) -> tuple[Figure, Figure]:
    """Loss and accuracy curves against epoch; missing or non-finite values are gaps."""
    epochs = sorted(history)
    loss_fig = _history_figure(history, epochs, _LOSS_SERIES, "Loss", "Loss")
    accuracy_fig = _history_figure(history, epochs, _ACCURACY_SERIES, "Accuracy", "Accuracy")
    return loss_fig, accuracy_fig


def _history_figure(history: Mapping[int, Mapping[str, float]], epochs: list[int],
                    series: Sequence[tuple[str, Sequence[str]]], title: str,
                    ylabel: str) -> Figure:
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    plotted = 0
    for label, keys in series:
        key = _first_present(history, keys)
        if key is None:
            continue
        values = [_finite_or_nan(history[epoch].get(key)) for epoch in epochs]
        # Markers keep an isolated value visible when NaN gaps surround it.
        ax.plot(epochs, values, marker="o", markersize=3.5, linewidth=1.8, label=label)
        plotted += 1
    if plotted:
        ax.legend()
    else:
        _note(ax, NO_DATA_NOTE)
    return fig


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


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=12, color="0.45")


# ---------------------------------------------------------------------------- sample grid


def sample_grid_figure(images: np.ndarray, labels: Sequence[int], preds: Sequence[int],
                       class_names: Sequence[str]) -> Figure:
    """Thumbnails with true and predicted names, framed green when right and red when wrong."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be N×H×W×3, got shape {images.shape}")
    count = images.shape[0]
    if len(labels) != count or len(preds) != count:
        raise ValueError(f"expected {count} labels and predictions, "
                         f"got {len(labels)} and {len(preds)}")
    if count == 0:
        fig = Figure(figsize=(6.0, 2.0), layout="constrained")
        ax = fig.add_subplot()
        ax.set_axis_off()
        _note(ax, "no samples yet")
        return fig
    columns = min(SAMPLE_COLUMNS, count)
    rows = math.ceil(count / SAMPLE_COLUMNS)
    grid = _sample_grid(Figure(figsize=_sample_figsize(rows, columns)), rows, columns)
    for index in range(count):
        ax = grid.figure.add_subplot(grid[divmod(index, columns)])
        _sample_axes(ax, images[index], int(labels[index]), int(preds[index]), class_names)
    return grid.figure


def _sample_figsize(rows: int, columns: int) -> tuple[float, float]:
    width = columns * _SAMPLE_INCHES + (columns - 1) * _SAMPLE_GAP + 2 * _SAMPLE_MARGIN
    return width, rows * (_SAMPLE_INCHES + _SAMPLE_TITLE_ROOM) + _SAMPLE_MARGIN


def _sample_grid(fig: Figure, rows: int, columns: int) -> GridSpec:
    # Fixed spacing rather than a layout engine: titles never exceed two lines, and constrained
    # layout draws every thumbnail one extra time to measure it (about a third of render time).
    width, height = fig.get_size_inches()
    return fig.add_gridspec(rows, columns, left=_SAMPLE_MARGIN / width,
                            right=1 - _SAMPLE_MARGIN / width, bottom=_SAMPLE_MARGIN / height,
                            top=1 - _SAMPLE_TITLE_ROOM / height,
                            wspace=_SAMPLE_GAP / _SAMPLE_INCHES,
                            hspace=_SAMPLE_TITLE_ROOM / _SAMPLE_INCHES)


def _sample_axes(ax: Axes, image: np.ndarray, label: int, pred: int,
                 class_names: Sequence[str]) -> None:
    color = CORRECT_COLOR if label == pred else WRONG_COLOR
    if image.size:  # a 0-pixel thumbnail (legal on the wire) would make imshow raise: draw just the frame
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(color)
        spine.set_linewidth(BORDER_WIDTH)
    title = _sample_title(_class_name(class_names, label), _class_name(class_names, pred))
    ax.set_title(title, color=color, fontsize=_SAMPLE_TITLE_POINTS, parse_math=False)


def _sample_title(true_name: str, pred_name: str) -> str:
    one_line = f"True: {true_name} / Pred: {pred_name}"
    width, _, _ = text_to_path.get_text_width_height_descent(
        one_line, FontProperties(size=_SAMPLE_TITLE_POINTS), ismath=False)
    # Titles do not shrink their axes; a wider one would run over its neighbours' titles.
    if width <= _SAMPLE_TITLE_MAX_POINTS:
        return one_line
    return f"True: {true_name}\nPred: {pred_name}"


def _class_name(class_names: Sequence[str], index: int) -> str:
    # A prediction outside the name list is a trainer bug worth showing, not a reason to crash.
    if 0 <= index < len(class_names):
        return display_label(class_names[index], SAMPLE_NAME_MAX_CHARS)
    return f"#{index}"
