"""Figures kept between jobs in one render process, so each epoch redraws a figure rather than
building it again.

A run's figures keep their layout from epoch to epoch (the same classes, series and thumbnail
size); only their data change, so building the Axes, ticks and text artists again would be wasted
CPU, taken from the trainer. A plot class here has a `layout_of(*args)`, a constructor, an
`update(*args)`, a `draw(canvas)` (which may keep pixels that do not change from draw to draw) and
an `nbytes` (what it holds in memory), and an updated plot draws the same bytes as a new one
(tests/test_reuse.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

# A few runs' worth of figures (each run has up to eight layouts: three confusion views, the sample
# and mistakes grids, and three history curves), and at most this much memory in them (a confusion view holds at most
# MAX_BINS² = 10⁶ values, 8 MB); the least recently used go first.
MAX_KEPT = 16
MAX_KEPT_BYTES = 256 * 2**20


class Plot(Protocol):
    figure: Any

    @staticmethod
    def layout_of(*args: Any) -> tuple: ...

    def update(self, *args: Any) -> None: ...

    def draw(self, canvas: Any) -> None: ...

    @property
    def nbytes(self) -> int: ...


P = TypeVar("P", bound=Plot)

_kept: OrderedDict[tuple, Any] = OrderedDict()
_lock = threading.Lock()


@contextmanager
def plot_of(kind: type[P], *args: Any) -> Iterator[P]:
    """A `kind` plot of `args`: the one kept for their layout, updated, or a new one.

    The plot is this caller's until the block ends (save it there); it is kept for the next caller
    only if the block ends without an exception, so a failed draw never leaves a half-updated
    figure behind.
    """
    key = (kind.__qualname__, kind.layout_of(*args))
    with _lock:
        plot = _kept.pop(key, None)
        if plot is None:
            plot = kind(*args)
        else:
            plot.update(*args)
        yield plot
        if plot.nbytes <= MAX_KEPT_BYTES:
            _kept[key] = plot
        while len(_kept) > MAX_KEPT or sum(kept.nbytes for kept in _kept.values()) > MAX_KEPT_BYTES:
            _kept.popitem(last=False)


def forget_all() -> None:
    """Drop every kept figure (tests)."""
    with _lock:
        _kept.clear()
