"""Build the monitor's figures (confusion matrices, history curves, sample grid) from state."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm, to_rgba
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.ft2font import LoadFlags
from matplotlib.patches import PathPatch
from matplotlib.path import Path
from matplotlib.textpath import TextPath, text_to_path
from matplotlib.ticker import MaxNLocator

from monitor.outputs.render.text import clean

# Up to this many rows every cell shows its count (or percent) and both axes show class names; the
# canvas grows with the rows (about 17 inches at 50). Above it, names and counts would be
# unreadable, so the matrix is a plain heatmap on a fixed canvas with thinned class-index ticks.
CELL_TEXT_MAX_CLASSES = 50
CONFUSION_CMAP = "Blues"
FIGURE_LABEL_MAX_CHARS = 20
SAMPLE_NAME_MAX_CHARS = 18
SAMPLE_COLUMNS = 4
CORRECT_COLOR = "#2ca02c"
WRONG_COLOR = "#d62728"
NO_DATA_NOTE = "no data yet"
# Every figure is drawn, and saved, at this resolution; the sample grid is laid out in its pixels.
FIGURE_DPI = 100

# Inches per matrix cell: large enough for a 4-digit count at 6 pt, bounded so small matrices do
# not balloon and large ones keep a fixed canvas.
_CELL_INCHES_MAX = 0.8
_CELL_INCHES_MIN = 0.28
_MATRIX_INCHES = 8.0
_LARGE_MATRIX_INCHES = 9.0
# Fixed parts of the confusion layout, in inches: room for an axis label and the tick pad beside
# the tick labels, the title above, the colour bar beside the matrix, one digit at 10 pt.
_AXIS_LABEL_ROOM = 0.5
_CONFUSION_TOP = 0.45
_COLORBAR_GAP = 0.2
_COLORBAR_WIDTH = 0.25
_DIGIT_INCHES = 0.09
_BLOCK_GAMMA = 0.5
_CELL_FONT = FontProperties(family="DejaVu Sans")
_CELL_FONT_MAX_POINTS = 11.0
# Sample grid geometry in pixels (at FIGURE_DPI): the square slot each thumbnail is scaled into,
# the gap between columns, the room above each slot for a title of up to two lines, the outer
# margin, and the frame's width (centred on the thumbnail's edge).
_SAMPLE_SLOT_PX = 280
_SAMPLE_GAP_PX = 20
_SAMPLE_TITLE_ROOM_PX = 45
_SAMPLE_MARGIN_PX = 10
_SAMPLE_TITLE_PAD_PX = 8
_BORDER_PX = 6
_SAMPLE_TITLE_POINTS = 8.5
_SAMPLE_TITLE_MAX_POINTS = (_SAMPLE_SLOT_PX + _SAMPLE_GAP_PX) / FIGURE_DPI * 72 - 8
# Blues goes from near white to dark navy; below this luminance black text would vanish.
_DARK_LUMINANCE = 0.45

# History figures have fixed margins (inches: left, bottom, right, top) rather than a layout
# engine, which would measure every tick label in an extra pass. The left margin holds tick labels of up to 8 characters, such as "0.000125".
_HISTORY_INCHES = (8.0, 5.0)
_HISTORY_MARGINS = (0.95, 0.5, 0.15, 0.35)

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


@dataclass(frozen=True, eq=False)
class MatrixView:
    """What one confusion-matrix figure shows (`monitor/outputs/render/matrix_views.py` builds them).

    Args:
        values: R×R, rows = true, columns = predicted: counts, or percent of the row's true samples.
        names: the R names along both axes, with each cell's count or percent written in it; empty
            for a plain heatmap with class-index ticks (R above CELL_TEXT_MAX_CLASSES).
        title: drawn above the matrix.
        percent: colour scale 0 to 100 and percent text (zero cells left blank); else counts.
        block: classes summed in each row and column (a pixel of the PNG); 1: one class each.
        classes: the classes the axes span (R·block, less what the last block lacks); default R.

    Raises:
        ValueError: values that are not a non-negative R×R matrix (R >= 1), or names of another length.
    """

    values: np.ndarray
    names: tuple[str, ...]
    title: str
    percent: bool = False
    block: int = 1
    classes: int = 0

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] == 0:
            raise ValueError(f"counts must be a C×C matrix with C >= 1, got shape {values.shape}")
        if values.min() < 0:
            raise ValueError("counts must be non-negative")
        if self.names and len(self.names) != values.shape[0]:
            raise ValueError(f"expected {values.shape[0]} class names for a {values.shape[0]}-class matrix, "
                             f"got {len(self.names)}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", tuple(self.names))
        if not self.classes:
            object.__setattr__(self, "classes", values.shape[0] * self.block)


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Heatmap of a whole C×C matrix of counts: rows are true classes, columns predicted classes."""
    return ConfusionPlot(counts_matrix_view(counts, class_names, title)).figure


def counts_matrix_view(counts: np.ndarray, class_names: Sequence[str], title: str) -> MatrixView:
    """The view of a whole C×C matrix of counts, named cell by cell up to CELL_TEXT_MAX_CLASSES."""
    counts = np.asarray(counts)
    if counts.ndim == 2 and len(class_names) != counts.shape[0]:
        raise ValueError(f"expected {counts.shape[0]} class names for a {counts.shape[0]}-class matrix, "
                         f"got {len(class_names)}")
    names = tuple(class_names) if len(class_names) <= CELL_TEXT_MAX_CLASSES else ()
    return MatrixView(counts, names, title)


class ConfusionPlot:
    """The confusion-matrix figure, and the artists that change from one epoch to the next.

    `update` puts a new view (counts and title) into a figure built for the same `layout`, which then
    draws exactly as a freshly built one (tests/test_reuse.py compares the bytes), so a render
    worker redraws rather than rebuilds.

    `draw` keeps the pixels of what does not change with the counts (class names, axis labels,
    ticks) from its first draw, and draws only the matrix, its counts, the frame, the title and the
    colour bar over them: the same pixels as a whole draw.
    """

    def __init__(self, view: MatrixView) -> None:
        self.layout = self.layout_of(view)
        counts = view.values
        n_classes = counts.shape[0]
        with_cells = bool(view.names)
        # A block view draws one pixel per block; a plain heatmap fills a fixed square.
        large = n_classes / FIGURE_DPI if view.block > 1 else _LARGE_MATRIX_INCHES
        cell = _cell_inches(n_classes) if with_cells else large / max(n_classes, 1)
        grid = n_classes * cell if with_cells else large
        names = [display_label(name) for name in view.names]
        name_points = min(10.0, max(6.0, cell * 72 * 0.45))
        rotation = 45 if n_classes <= 20 else 90
        left, bottom = _confusion_margins(names, name_points, rotation)
        norm = _confusion_norm(view)
        # Right of the matrix: gap, colour bar, its tick labels (the largest count) and its label.
        right = _COLORBAR_GAP + _COLORBAR_WIDTH + 0.2 + len(str(int(norm.vmax))) * _DIGIT_INCHES + 0.45
        # A small matrix sits in the middle of a minimum canvas that leaves its title room.
        width = max(5.0, left + grid + right)
        height = max(4.5, bottom + grid + _CONFUSION_TOP)
        left += (width - (left + grid + right)) / 2
        bottom += (height - (bottom + grid + _CONFUSION_TOP)) / 2
        # Fixed positions rather than a layout engine: the margins come from the measured extents of
        # the names, so nothing is clipped, and drawing happens in one pass.
        self.figure = fig = Figure(figsize=(width, height))
        self._axes = ax = fig.add_axes((left / width, bottom / height, grid / width, grid / height))
        colorbar_axes = fig.add_axes(((left + grid + _COLORBAR_GAP) / width,
                                      (bottom + 0.1 * grid) / height,
                                      _COLORBAR_WIDTH / width, 0.8 * grid / height))
        # A block view's axes count classes: each pixel spans `block` of them, and the last block
        # is cut where the classes end.
        span = n_classes * view.block - 0.5
        self._image = ax.imshow(counts, cmap=CONFUSION_CMAP, norm=norm, aspect="equal",
                                interpolation="nearest" if with_cells or view.block > 1 else "antialiased",
                                extent=(-0.5, span, span, -0.5) if view.block > 1 else None)
        if view.block > 1:
            ax.set_xlim(-0.5, view.classes - 0.5)
            ax.set_ylim(view.classes - 0.5, -0.5)
        self._colorbar = fig.colorbar(self._image, cax=colorbar_axes, label=_colorbar_label(view))
        self._count_ticks(view)
        # y=1.0, where matplotlib would put it anyway: without it, every draw measures all the tick
        # labels to check whether any sit above the Axes.
        ax.set_title(display_label(view.title, 120), parse_math=False, y=1.0)
        self._colorbar_axes = colorbar_axes
        self._background: tuple[tuple, object] | None = None  # (canvas size and dpi, pixels)
        self._cell = cell if with_cells else None
        self._counts: list[PathPatch] = []
        if with_cells:
            _name_ticks(ax, names, name_points, rotation)
            self._counts = _draw_cell_labels(ax, cell_labels(counts, view.percent), cell)
        else:
            _index_ticks(ax, view.block)

    @staticmethod
    def layout_of(view: MatrixView) -> tuple:
        """What the figure's geometry depends on: the rows, classes per row, the names drawn, the
        scale, and the digits of the largest count (the colour bar's labels)."""
        return ("confusion", view.values.shape[0], view.block, view.classes, view.names, view.percent,
                len(str(int(_confusion_norm(view).vmax))))

    @property
    def nbytes(self) -> int:
        """About what the plot holds in memory: its counts, its pixels and the kept background."""
        return np.asarray(self._image.get_array()).nbytes + 2 * _pixel_bytes(self.figure)

    def _count_ticks(self, view: MatrixView) -> None:
        """Whole-number ticks on a count scale (a new norm resets the colour bar's locator)."""
        if not view.percent:
            self._colorbar.locator = MaxNLocator(integer=True)

    def update(self, view: MatrixView) -> None:
        """A new view (counts and title) of this plot's layout."""
        if self.layout_of(view) != self.layout:
            raise ValueError("these counts need a figure of another layout; build a new ConfusionPlot")
        self._image.set_data(view.values)
        self._image.set_norm(_confusion_norm(view))  # the colour bar follows its mappable
        self._count_ticks(view)
        self._axes.set_title(display_label(view.title, 120), parse_math=False, y=1.0)
        for patch in self._counts:
            patch.remove()
        self._counts = []
        if self._cell is not None:
            self._counts = _draw_cell_labels(self._axes, cell_labels(view.values, view.percent), self._cell)

    def draw(self, canvas: FigureCanvasAgg) -> None:
        """Draw the figure on ``canvas``: the fixed parts from the pixels kept at the first draw,
        the rest over them, in the order a whole draw would use."""
        ax = self._axes
        # What changes from epoch to epoch, in the order Axes.draw takes it (by zorder), then the
        # colour bar, whose ticks follow the largest count.
        changing = [*sorted([self._image, *self._counts, *ax.spines.values(), ax.title],
                            key=lambda artist: artist.get_zorder()), self._colorbar_axes]
        key = (canvas.get_width_height(), self.figure.dpi)
        if self._background is None or self._background[0] != key:
            for artist in changing:
                artist.set_visible(False)
            try:
                canvas.draw()
            finally:
                for artist in changing:
                    artist.set_visible(True)
            self._background = (key, canvas.copy_from_bbox(self.figure.bbox))
        else:
            canvas.restore_region(self._background[1])
        renderer = canvas.get_renderer()
        for artist in changing:
            artist.draw(renderer)


def _pixel_bytes(fig: Figure) -> int:
    """The RGBA canvas a figure of this size draws into, at FIGURE_DPI."""
    width, height = fig.get_size_inches() * FIGURE_DPI
    return 4 * round(width) * round(height)


def _cell_inches(n_classes: int) -> float:
    return min(_CELL_INCHES_MAX, max(_CELL_INCHES_MIN, _MATRIX_INCHES / max(n_classes, 1)))


def _confusion_margins(names: Sequence[str], points: float, rotation: int) -> tuple[float, float]:
    """Left and bottom margins in inches: axis label, tick labels as measured, tick pads."""
    if not names:  # class-index ticks: at most 4 digits
        return 0.95, 0.75
    font = FontProperties(size=points)  # the tick labels' font: the default family
    extents = [text_to_path.get_text_width_height_descent(name, font, ismath=False) for name in names]
    widest = max(w for w, _, _ in extents) / 72
    tallest = max(h for _, h, _ in extents) / 72
    angle = math.radians(rotation)
    below = widest * math.sin(angle) + tallest * math.cos(angle)
    return _AXIS_LABEL_ROOM + widest, _AXIS_LABEL_ROOM + below


def _name_ticks(ax: Axes, labels: Sequence[str], points: float, rotation: int) -> None:
    positions = range(len(labels))
    ax.set_xticks(positions)
    ax.set_yticks(positions)
    # Class names are untrusted: "$" must not switch on mathtext (malformed math raises on draw).
    ax.set_xticklabels(labels, fontsize=points, rotation=rotation, ha="right",
                       rotation_mode="anchor", parse_math=False)
    ax.set_yticklabels(labels, fontsize=points, parse_math=False)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.tick_params(length=2)


def _index_ticks(ax: Axes, block: int) -> None:
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    per_pixel = f"; each pixel sums {block} × {block} classes" if block > 1 else ""
    ax.set_xlabel(f"Predicted (class index{per_pixel})")
    ax.set_ylabel("True (class index)")


def _colorbar_label(view: MatrixView) -> str:
    if view.percent:
        return "% of the block's true samples" if view.block > 1 else "% of the true class's samples"
    return "Count in the block" if view.block > 1 else "Count"


@dataclass(frozen=True)
class CellLabel:
    """The count written in one confusion cell; ``dark`` cells get white text."""

    row: int
    col: int
    text: str
    dark: bool


def cell_labels(values: np.ndarray, percent: bool = False) -> list[CellLabel]:
    """The text of every cell, row-major, and whether its cell is too dark for black: its count, or
    its percent (`percent_text`; cells at 0 % get none)."""
    values = np.asarray(values)
    norm = _value_norm(values, percent)
    rgba = colormaps[CONFUSION_CMAP](norm(values))
    luminance = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    text = percent_text if percent else (lambda value: str(int(value)))
    return [CellLabel(row, col, text(value), bool(luminance[row, col] < _DARK_LUMINANCE))
            for (row, col), value in np.ndenumerate(values) if value or not percent]


def percent_text(value: float) -> str:
    """A cell's percent: whole from 9.95 up ("57", "100"), one decimal below ("3.2"), "<0.1" for
    what would round to 0, and "" for 0 itself."""
    if value == 0:
        return ""
    if value >= 9.95:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 0.05 else "<0.1"


def _confusion_norm(view: MatrixView) -> Normalize:
    """A block view's scale is a square root: most of its blocks hold a mistake or two beside a
    diagonal of hundreds, and on a linear scale they would be as pale as empty ones."""
    if view.block > 1:
        linear = _value_norm(view.values, view.percent)
        return PowerNorm(_BLOCK_GAMMA, vmin=linear.vmin, vmax=linear.vmax)
    return _value_norm(view.values, view.percent)


def _value_norm(values: np.ndarray, percent: bool) -> Normalize:
    """0 to 100 for percent, else 0 to the largest count (at least 1)."""
    return Normalize(vmin=0, vmax=100 if percent else max(1, int(values.max(initial=0))))


def _draw_cell_labels(ax: Axes, labels: Sequence[CellLabel], cell_inches: float) -> list[PathPatch]:
    """Draw all counts as two filled glyph paths (one per text colour) instead of a Text artist
    per cell: digit outlines placed in data units, which scale with the cell, so a count always
    fits in its cell. Returns the patches added to ``ax``."""
    if not labels:
        return []
    outlines = {text: _count_outline(text) for text in {label.text for label in labels}}
    widest = max(width for _, _, width in outlines.values())
    # Font size as a fraction of the cell: capped in points, by cell height, by the widest count.
    scale = min(_CELL_FONT_MAX_POINTS / (cell_inches * 72), 0.34, 0.8 / widest)
    patches = []
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
        patches.append(patch)
    return patches


def _count_outline(text: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Outline of a count or percent at 1 em, centred on the origin, y flipped for imshow's rows."""
    glyphs, height = _cell_glyphs()
    starts = np.cumsum([0.0, *(glyphs[char][2] for char in text)])
    vertices = np.concatenate([glyphs[char][0] + (start, 0.0) for char, start in zip(text, starts)])
    codes = np.concatenate([glyphs[char][1] for char in text])
    width = float(starts[-1])
    vertices = vertices - (width / 2, height / 2)
    vertices[:, 1] *= -1
    return vertices, codes, width


@functools.cache
def _cell_glyphs() -> tuple[dict[str, tuple[np.ndarray, np.ndarray, float]], float]:
    """Outlines of the characters cells use, at 1 em, with their advances, and the digit height."""
    font = get_font(findfont(_CELL_FONT))
    font.set_size(text_to_path.FONT_SCALE, text_to_path.DPI)
    glyphs = {}
    for char in "0123456789.<":
        path = TextPath((0, 0), char, size=1, prop=_CELL_FONT)
        advance = font.load_char(ord(char), flags=LoadFlags.NO_HINTING).linearHoriAdvance / 65536
        glyphs[char] = (path.vertices, path.codes, advance / text_to_path.FONT_SCALE)
    height = float(glyphs["0"][0][:, 1].max())
    return glyphs, height


# ---------------------------------------------------------------------------- history curves


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
            _note(ax, NO_DATA_NOTE)
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
        return _pixel_bytes(self.figure)

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


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=12, color="0.45")


# ---------------------------------------------------------------------------- sample grid


@dataclass(frozen=True)
class SampleCell:
    """Where one thumbnail is drawn, in pixels from the PNG's top-left corner.

    The box is the scaled image itself (thumbnails keep their aspect ratio inside a square slot);
    the coloured frame is centred on the box's edge.
    """

    left: int
    top: int
    width: int
    height: int


def sample_grid_figure(images: np.ndarray, labels: Sequence[int], preds: Sequence[int],
                       class_names: Sequence[str], confidences: Sequence[float] | None = None) -> Figure:
    """Thumbnails with true and predicted names (and the prediction's confidence, when given),
    framed green when right and red when wrong."""
    return SampleGridPlot(images, labels, preds, class_names, confidences).figure


class SampleGridPlot:
    """The sample grid: thumbnails with true and predicted names, framed green or red; with
    `confidences`, each prediction's confidence follows its name (the hardest-mistakes grid).

    The thumbnails and frames are composed into one RGBA array, placed pixel for pixel with
    one artist instead of an Axes per thumbnail; only the titles are text artists. Its pixels are
    exactly the thumbnails', scaled by nearest neighbour as ``imshow`` would. `update` swaps in the next epoch's samples (same count and
    thumbnail size: the same `layout`), which then draw exactly as a freshly built grid.

    A run shows the same validation samples every epoch, so most cells come out as they were:
    `update` repaints only the cells whose thumbnail or frame colour changed, and `draw` redraws
    only the cells that changed since its last draw on the same canvas, each inside its own
    rectangle of the canvas. A title that would not fit its rectangle makes it draw everything.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], preds: Sequence[int],
                 class_names: Sequence[str], confidences: Sequence[float] | None = None) -> None:
        self.layout = self.layout_of(images, labels, preds, class_names, confidences)
        _, count, image_hw = self.layout
        self._titles: list[Artist] = []
        if count == 0:
            self.figure = fig = Figure(figsize=(6.0, 2.0), layout="constrained")
            ax = fig.add_subplot()
            ax.set_axis_off()
            _note(ax, "no samples yet")
            return
        self._cells, (width, height) = sample_grid_cells(count, image_hw)
        self._regions = _cell_regions(self._cells, (width, height))
        self.figure = fig = Figure(figsize=(width / FIGURE_DPI, height / FIGURE_DPI), dpi=FIGURE_DPI)
        for index, cell in enumerate(self._cells):
            self._titles.append(fig.text(
                (cell.left + cell.width / 2) / width, 1 - (cell.top - _SAMPLE_TITLE_PAD_PX) / height, "",
                fontsize=_SAMPLE_TITLE_POINTS, ha="center", va="bottom", parse_math=False,
                gid=f"sample-title-{index}"))
        self._mosaic = np.full((height, width, 4), 255, dtype=np.uint8)
        self._pixels = fig.add_artist(_Pixels(self._mosaic))
        # What each cell of the mosaic shows (thumbnail, frame colour), and which cells changed
        # since `draw` last drew on `_drawn_on` (a renderer, whose buffer still holds that draw).
        self._shown: list[tuple[np.ndarray, str] | None] = [None] * count
        self._changed = set(range(count))
        self._drawn_on: object | None = None
        self.update(images, labels, preds, class_names, confidences)

    @staticmethod
    def layout_of(images: np.ndarray, labels: Sequence[int], preds: Sequence[int],
                  class_names: Sequence[str], confidences: Sequence[float] | None = None) -> tuple:
        """The thumbnail count and size. Raises ValueError for inputs that do not match."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be N×H×W×3, got shape {images.shape}")
        count = images.shape[0]
        if len(labels) != count or len(preds) != count:
            raise ValueError(f"expected {count} labels and predictions, "
                             f"got {len(labels)} and {len(preds)}")
        if confidences is not None and len(confidences) != count:
            raise ValueError(f"expected {count} confidences, got {len(confidences)}")
        return "samples", count, tuple(images.shape[1:3])

    @property
    def nbytes(self) -> int:
        """About what the plot holds in memory: the composed grid and the canvas's pixels."""
        return (self._mosaic.nbytes if self._titles else 0) + _pixel_bytes(self.figure)

    def update(self, images: np.ndarray, labels: Sequence[int], preds: Sequence[int],
               class_names: Sequence[str], confidences: Sequence[float] | None = None) -> None:
        """Draw these samples instead, for a grid of this plot's layout."""
        if self.layout_of(images, labels, preds, class_names, confidences) != self.layout:
            raise ValueError("these samples need a grid of another layout; build a new SampleGridPlot")
        if not self._titles:
            return
        images = np.asarray(images)
        for index, (cell, title) in enumerate(zip(self._cells, self._titles)):
            label, pred = int(labels[index]), int(preds[index])
            color = CORRECT_COLOR if label == pred else WRONG_COLOR
            thumbnail = _as_uint8(images[index])
            shown = self._shown[index]
            if shown is None or shown[1] != color or not np.array_equal(shown[0], thumbnail):
                _paste_scaled(self._mosaic, cell, thumbnail)
                _paint_frame(self._mosaic, cell, color)
                self._shown[index] = (thumbnail.copy(), color)
                self._changed.add(index)
            text = _sample_title(_class_name(class_names, label), _class_name(class_names, pred),
                                 "" if confidences is None else _confidence_text(confidences[index]))
            if text != title.get_text() or color != title.get_color():
                title.set_text(text)
                title.set_color(color)
                self._changed.add(index)
        self._pixels.stale = True

    def draw(self, canvas: FigureCanvasAgg) -> None:
        """Draw the grid on ``canvas``: only the cells that changed, when the canvas still holds
        this plot's last draw; else all of it."""
        if not self._titles:
            canvas.draw()
            return
        renderer = canvas.get_renderer()
        if renderer is not self._drawn_on or not self._redraw_changed_cells(renderer):
            canvas.draw()
            self._drawn_on = canvas.get_renderer()
        self._changed.clear()

    def _redraw_changed_cells(self, renderer) -> bool:  # type: ignore[no-untyped-def]
        """Repaint each changed cell's rectangle from the mosaic and draw its title over it, as
        a whole draw would; False, drawing nothing, when a title would leave its rectangle."""
        height = self._mosaic.shape[0]
        for index in self._changed:
            top, bottom, left, right = self._regions[index]
            extent = self._titles[index].get_window_extent(renderer)  # y counts from the bottom
            if not (left < extent.x0 and extent.x1 < right and top < height - extent.y1
                    and height - extent.y0 < bottom):
                return False
        pixels = np.asarray(renderer.buffer_rgba())
        for index in sorted(self._changed):
            top, bottom, left, right = self._regions[index]
            pixels[top:bottom, left:right] = self._mosaic[top:bottom, left:right]
            self._titles[index].draw(renderer)
        return True


def _cell_regions(cells: Sequence[SampleCell], size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Each cell's rectangle of the canvas, as (top, bottom, left, right) pixels, derived from the
    cells that `sample_grid_cells` placed: the canvas cut half-way between neighbouring columns'
    centres, and just below each row's frames (above the next row's titles). The rectangles hold
    their frame and title (`SampleGridPlot.draw` checks each title), and do not overlap."""
    width, height = size
    columns = min(SAMPLE_COLUMNS, len(cells))
    rows = [cells[start:start + columns] for start in range(0, len(cells), columns)]
    centres = [cell.left + cell.width // 2 for cell in rows[0]]
    column_cuts = [0, *((left + right) // 2 for left, right in zip(centres, centres[1:])), width]
    row_cuts = [0, *(max(cell.top + cell.height for cell in row) + _BORDER_PX for row in rows[:-1]), height]
    return [(row_cuts[index // columns], row_cuts[index // columns + 1],
             column_cuts[index % columns], column_cuts[index % columns + 1]) for index in range(len(cells))]


def sample_grid_cells(count: int, image_hw: tuple[int, int]) -> tuple[list[SampleCell], tuple[int, int]]:
    """Each thumbnail's box, and the grid's (width, height), in pixels: at most 4 per row."""
    columns = min(SAMPLE_COLUMNS, count)
    rows = math.ceil(count / SAMPLE_COLUMNS)
    width = columns * _SAMPLE_SLOT_PX + (columns - 1) * _SAMPLE_GAP_PX + 2 * _SAMPLE_MARGIN_PX
    height = rows * (_SAMPLE_SLOT_PX + _SAMPLE_TITLE_ROOM_PX) + _SAMPLE_MARGIN_PX
    image_h, image_w = image_hw
    if image_h and image_w:
        scale = min(_SAMPLE_SLOT_PX / image_h, _SAMPLE_SLOT_PX / image_w)
        box_h, box_w = max(1, round(image_h * scale)), max(1, round(image_w * scale))
    else:  # a 0-pixel thumbnail (legal on the wire): just the frame around the slot
        box_h = box_w = _SAMPLE_SLOT_PX
    cells = []
    for index in range(count):
        row, column = divmod(index, columns)
        slot_left = _SAMPLE_MARGIN_PX + column * (_SAMPLE_SLOT_PX + _SAMPLE_GAP_PX)
        slot_top = _SAMPLE_TITLE_ROOM_PX + row * (_SAMPLE_SLOT_PX + _SAMPLE_TITLE_ROOM_PX)
        cells.append(SampleCell(slot_left + (_SAMPLE_SLOT_PX - box_w) // 2,
                                slot_top + (_SAMPLE_SLOT_PX - box_h) // 2, box_w, box_h))
    return cells, (width, height)


class _Pixels(Artist):
    """An RGBA array drawn pixel for pixel from the figure's top-left corner, under the texts.

    ``figimage`` would resample it and build a masked copy first; the renderer can blit it as it is. Meant for figures drawn at FIGURE_DPI.
    """

    zorder = 0

    def __init__(self, rgba: np.ndarray) -> None:
        super().__init__()
        self.set_rgba(rgba)

    def set_rgba(self, rgba: np.ndarray) -> None:
        """Draw this array, top row first; it is read at each draw, so changes in place show."""
        self._rgba = rgba
        self.stale = True

    def draw(self, renderer) -> None:  # type: ignore[no-untyped-def]
        if not self.get_visible():
            return
        gc = renderer.new_gc()
        try:
            # Agg puts the array's first row at the bottom of the canvas.
            renderer.draw_image(gc, 0, renderer.height - self._rgba.shape[0],
                                np.ascontiguousarray(self._rgba[::-1]))
        finally:
            gc.restore()


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):  # imshow's convention: floats are 0..1
        return np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _paste_scaled(mosaic: np.ndarray, cell: SampleCell, image: np.ndarray) -> None:
    """Nearest-neighbour scale ``image`` into ``cell``: each output pixel takes the source pixel
    its centre falls in."""
    if not image.size:
        return
    image_h, image_w = image.shape[:2]
    rows = ((np.arange(cell.height) + 0.5) * image_h / cell.height).astype(np.intp)
    cols = ((np.arange(cell.width) + 0.5) * image_w / cell.width).astype(np.intp)
    mosaic[cell.top:cell.top + cell.height, cell.left:cell.left + cell.width, :3] = \
        image.take(rows, axis=0).take(cols, axis=1)


def _paint_frame(mosaic: np.ndarray, cell: SampleCell, color: str) -> None:
    rgb = np.round(np.array(to_rgba(color)) * 255).astype(np.uint8)
    half = _BORDER_PX // 2
    top, left = cell.top - half, cell.left - half
    bottom, right = cell.top + cell.height + half, cell.left + cell.width + half
    mosaic[top:top + _BORDER_PX, left:right] = rgb
    mosaic[bottom - _BORDER_PX:bottom, left:right] = rgb
    mosaic[top:bottom, left:left + _BORDER_PX] = rgb
    mosaic[top:bottom, right - _BORDER_PX:right] = rgb


@functools.lru_cache(maxsize=4096)  # measuring a title's text is slow, and names recur every epoch
def _sample_title(true_name: str, pred_name: str, confidence: str = "") -> str:
    pred = f"{pred_name} ({confidence})" if confidence else pred_name
    one_line = f"True: {true_name} / Pred: {pred}"
    width, _, _ = text_to_path.get_text_width_height_descent(
        one_line, FontProperties(size=_SAMPLE_TITLE_POINTS), ismath=False)
    # A wider title would run over its neighbours' titles.
    if width <= _SAMPLE_TITLE_MAX_POINTS:
        return one_line
    return f"True: {true_name}\nPred: {pred}"


def _confidence_text(confidence: float) -> str:
    confidence = float(confidence)
    return f"{confidence:.1%}" if math.isfinite(confidence) else "n/a"


def _class_name(class_names: Sequence[str], index: int) -> str:
    # A prediction outside the name list is a trainer bug worth showing, not a reason to crash.
    if 0 <= index < len(class_names):
        return display_label(class_names[index], SAMPLE_NAME_MAX_CHARS)
    return f"#{index}"
