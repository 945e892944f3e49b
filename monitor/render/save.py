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

PNG_DPI = 100
# Without this matplotlib writes its version into a tEXt chunk, and PNGs saved by two
# installations (or a replay after an upgrade) would differ byte for byte.
PNG_METADATA: dict[str, str | None] = {"Software": None}
# Lone surrogates in untrusted class names must not crash a writer; they become visible escapes.
_TEXT_ERRORS = "backslashreplace"


def save_figure(fig: Figure, path: pathlib.Path) -> None:
    """Render ``fig`` with Agg and write it to ``path`` as a PNG, atomically."""
    # Attaching our own canvas keeps this independent of whatever backend pyplot might select.
    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No bbox_inches="tight": the builders lay figures out with a fixed size, so every save of
    # the same content has the same pixel size.
    canvas.print_figure(buffer, format="png", dpi=PNG_DPI, metadata=PNG_METADATA)
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
