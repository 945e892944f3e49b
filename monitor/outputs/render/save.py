"""Write figures, JSON, text and CSV atomically, with bytes that depend only on their content."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monitor.outputs.render.drawing import FIGURE_DPI

PNG_DPI = FIGURE_DPI
# zlib level for the PNGs: figures are mostly flat colour, which level 1 already packs well.
PNG_COMPRESS_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_UP = 2
# An RGBA pixel seen as one record whose field "rgb" is its first three bytes.
_RGB_OF_RGBA = np.dtype({"names": ["rgb"], "formats": ["V3"], "offsets": [0], "itemsize": 4})
# Lone surrogates in untrusted class names must not crash a writer; they become visible escapes.
_TEXT_ERRORS = "backslashreplace"


def save_figure(fig: Figure, path: pathlib.Path,
                draw: Callable[[FigureCanvasAgg], None] = FigureCanvasAgg.draw) -> None:
    """Render ``fig`` with Agg once and write it to ``path`` as an RGB PNG, atomically.

    ``draw`` renders the figure on its canvas: a whole draw unless a plot knows a cheaper way to
    the same pixels (`ConfusionPlot.draw`).

    ``print_figure`` would draw a figure with a layout engine twice (once to lay it out, once to
    save); one ``draw`` lays out and renders in the same pass. The PNG has no text chunks
    (`encode_png`), so its bytes depend only on the pixels: saves by two installations, or a
    replay after an upgrade, match byte for byte. The figure background is opaque, so the alpha
    channel is dropped.
    """
    fig.set_dpi(PNG_DPI)
    # Attaching our own canvas keeps this independent of whatever backend pyplot might select. A
    # figure saved again (monitor.outputs.render.reuse) keeps its canvas, and the canvas its pixel buffer.
    canvas = fig.canvas if type(fig.canvas) is FigureCanvasAgg else FigureCanvasAgg(fig)
    # No bbox_inches="tight": the builders lay figures out with a fixed size, so every save of
    # the same content has the same pixel size.
    draw(canvas)
    _write_bytes_atomic(pathlib.Path(path), encode_png(np.asarray(canvas.buffer_rgba()), PNG_DPI))


def encode_png(rgba: np.ndarray, dpi: int) -> bytes:
    """An 8-bit RGB PNG of an H×W×4 array (alpha dropped), written without trying filters.

    Every row has the "Up" filter (each byte minus the byte above it), which turns flat colour into
    runs of zeros, and is compressed at PNG_COMPRESS_LEVEL. The chunks are IHDR, pHYs (``dpi``),
    IDAT and IEND only: no text chunk, so the bytes depend only on the pixels.
    """
    height, width = rgba.shape[:2]
    # Drop alpha by copying each pixel's first three bytes as one 3-byte item, faster than numpy's
    # byte-by-byte copy of ``rgba[..., :3]``.
    rgb = np.ascontiguousarray(np.ascontiguousarray(rgba, dtype=np.uint8).view(_RGB_OF_RGBA)["rgb"])
    rgb = rgb.view(np.uint8).reshape(height, width * 3)
    rows = np.empty((height, 1 + width * 3), dtype=np.uint8)
    rows[:, 0] = _PNG_FILTER_UP
    rows[:1, 1:] = rgb[:1]  # the row above the first is zeros
    np.subtract(rgb[1:], rgb[:-1], out=rows[1:, 1:])  # modulo 256, as the filter is defined
    pixels_per_metre = round(dpi / 0.0254)
    return b"".join((
        _PNG_SIGNATURE,
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
        _png_chunk(b"pHYs", struct.pack(">IIB", pixels_per_metre, pixels_per_metre, 1)),
        _png_chunk(b"IDAT", zlib.compress(rows, PNG_COMPRESS_LEVEL)),
        _png_chunk(b"IEND", b""),
    ))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_json(path: pathlib.Path, obj: object) -> None:
    """Write ``obj`` as strict JSON (sorted keys, indent 2, trailing newline), atomically.

    NaN and infinities are not JSON (jq and JavaScript refuse a file that holds them), so a
    non-finite float, a hyperparameter say, is written as the string "nan", "inf" or "-inf", as
    history.csv writes it.
    """
    text = json.dumps(_finite_json(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"
    write_text(path, text)


def _finite_json(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(item) for item in value]
    return value


def write_text(path: pathlib.Path, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    _write_bytes_atomic(pathlib.Path(path), text.encode("utf-8", errors=_TEXT_ERRORS))


def write_csv(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a header and rows as CSV with ``\\n`` line endings, atomically.

    Text cells come from the trainer (class and metric names), so each one that a spreadsheet would
    read as a formula is neutralised (`csv_cell`); numbers, and text that is a plain number such as
    "-0.5", are written as they are.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([csv_cell(cell) for cell in header])
    writer.writerows([csv_cell(cell) for cell in row] for row in rows)
    write_text(path, out.getvalue())


# OWASP's CSV injection guidance: a cell starting with one of these may run as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|nan)")


def csv_cell(cell: object) -> object:
    """`cell` as a CSV writer should get it: a text cell starting with ``= + - @``, a tab or a carriage
    return gets a leading single quote (OWASP), so that a spreadsheet shows it as text; anything else,
    numbers and plain-number text included, is returned unchanged."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _write_bytes_atomic(path: pathlib.Path, payload: bytes) -> None:
    """Write to a temporary sibling, then rename it over ``path``.

    A reader (``monitor watch``, an image viewer) sees either the old file or the new one, never a
    half-written one. The rename is atomic only within one filesystem, hence the same directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread id keep concurrent writers of the same path from sharing a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # os.open with 0o666 honours the umask, unlike tempfile's private 0o600 files.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
