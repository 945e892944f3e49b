"""Untrusted text (class names, run ids) made safe to draw or print; no matplotlib, no rich."""

from __future__ import annotations

import unicodedata


def printable(char: str) -> str:
    """One character as shown: whitespace as a space, and any character of Unicode category C
    (control, format such as bidi overrides, surrogate, private use, unassigned) as U+FFFD, since
    any of them could rewrite what a terminal or a figure shows."""
    if char.isspace():
        return " "
    return "\ufffd" if unicodedata.category(char).startswith("C") else char


def clean(text: object, max_chars: int | None = None) -> str:
    """`text` character by character through `printable`, ellipsized to `max_chars`."""
    cleaned = "".join(printable(char) for char in str(text))
    if max_chars is not None and len(cleaned) > max_chars:
        return cleaned[: max_chars - 1] + "…"
    return cleaned
