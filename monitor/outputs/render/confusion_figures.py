"""Build confusion-matrix figures (counts, percentages, block views) from a `MatrixView`."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.ft2font import LoadFlags
from matplotlib.patches import PathPatch
from matplotlib.path import Path
from matplotlib.textpath import TextPath, text_to_path
from matplotlib.ticker import MaxNLocator

from monitor.outputs.render.drawing import FIGURE_DPI, display_label, pixel_bytes

# Up to this many rows every cell shows its count (or percent) and both axes show class names; the
# canvas grows with the rows (about 17 inches at 50). Above it, names and counts would be
# unreadable, so the matrix is a plain heatmap on a fixed canvas with thinned class-index ticks.
CELL_TEXT_MAX_CLASSES = 50
CONFUSION_CMAP = "Blues"

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
# Blues goes from near white to dark navy; below this luminance black text would vanish.
_DARK_LUMINANCE = 0.45


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
        return np.asarray(self._image.get_array()).nbytes + 2 * pixel_bytes(self.figure)

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

