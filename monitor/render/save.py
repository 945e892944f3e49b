"""Write figures, JSON, text and CSV atomically, with bytes that depend only on their content."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import threading
from collections.abc import Iterable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from monitor.render.figures import FIGURE_DPI

PNG_DPI = FIGURE_DPI
# zlib level for the PNGs. Figures are mostly flat colour, so level 1 packs them well: on the
# project machine it encoded the demo's sample grid in 30 ms against 50 ms at level 6, for a file
# 1.7 times larger (47 against 28 kB).
PNG_COMPRESS_LEVEL = 1
# Lone surrogates in untrusted class names must not crash a writer; they become visible escapes.
_TEXT_ERRORS = "backslashreplace"


def save_figure(fig: Figure, path: pathlib.Path) -> None:
    """Render ``fig`` with Agg once and write it to ``path`` as an RGB PNG, atomically.

    ``print_figure`` would draw a figure with a layout engine twice (once to lay it out, once to
    save); one ``draw`` lays out and renders in the same pass. The PNG is written by Pillow
    without text chunks, so its bytes depend only on the pixels: saves by two installations, or a
    replay after an upgrade, match byte for byte. The figure background is opaque, so the alpha
    channel is dropped.
    """
    fig.set_dpi(PNG_DPI)
    # Attaching our own canvas keeps this independent of whatever backend pyplot might select.
    canvas = FigureCanvasAgg(fig)
    # No bbox_inches="tight": the builders lay figures out with a fixed size, so every save of
    # the same content has the same pixel size.
    canvas.draw()
    width, height = canvas.get_width_height(physical=True)
    rgb = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL, dpi=(PNG_DPI, PNG_DPI))
    _write_bytes_atomic(pathlib.Path(path), buffer.getvalue())


def write_json(path: pathlib.Path, obj: object) -> None:
    """Write ``obj`` as JSON (sorted keys, indent 2, trailing newline), atomically."""
    text = json.dumps(obj, sort_keys=True, indent=2) + "\n"
    write_text(path, text)


def write_text(path: pathlib.Path, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    _write_bytes_atomic(pathlib.Path(path), text.encode("utf-8", errors=_TEXT_ERRORS))


def write_csv(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a header and rows as CSV with ``\\n`` line endings, atomically."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, out.getvalue())


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
