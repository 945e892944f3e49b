"""Build the sample grid: thumbnails framed green (right) or red (wrong), titled true vs predicted."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path

from monitor.outputs.render.drawing import FIGURE_DPI, CORRECT_COLOR, WRONG_COLOR, display_label, note, pixel_bytes

SAMPLE_NAME_MAX_CHARS = 18
SAMPLE_COLUMNS = 4
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
            note(ax, "no samples yet")
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
        return (self._mosaic.nbytes if self._titles else 0) + pixel_bytes(self.figure)

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
