"""What every figure shares: its resolution, the right/wrong colours, the no-data note, safe labels."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from monitor.outputs.render.text import clean

FIGURE_LABEL_MAX_CHARS = 20
CORRECT_COLOR = "#2ca02c"
WRONG_COLOR = "#d62728"
NO_DATA_NOTE = "no data yet"
# Every figure is drawn, and saved, at this resolution; the sample grid is laid out in its pixels.
FIGURE_DPI = 100


def display_label(name: str, max_chars: int = FIGURE_LABEL_MAX_CHARS) -> str:
    """Make an untrusted class name safe and short enough to draw: no control chars, ellipsized."""
    return clean(name, max_chars)


def pixel_bytes(fig: Figure) -> int:
    """The RGBA canvas a figure of this size draws into, at FIGURE_DPI."""
    width, height = fig.get_size_inches() * FIGURE_DPI
    return 4 * round(width) * round(height)


def note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=12, color="0.45")
