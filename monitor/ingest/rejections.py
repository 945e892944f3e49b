"""Rejected frames and other repeated problems, explained on the console without flooding it.

`RateLimitedLines` decides which lines to print (the first of each key at once, then at most one
per key every few seconds, saying how many were not shown); it is pure apart from its injected clock.
`rejection_line` words a rejection: its reason code, the codec's message and what to do about it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

INTERVAL_S = 5.0
DETAIL_CHARS = 200

# What each rejection reason usually means for the user; a reason not listed here (a newer one, a
# quota) is printed with its message alone.
REASON_HINTS = {
    "malformed": "not a protocol message: is something other than a trainer_side Emitter sending to this port?",
    "version": "the emitter speaks another protocol major version: install the same version on both sides",
    "unknown_kind": "a message kind this monitor does not know: upgrade the monitor to the emitter's version",
    "field": "a missing or invalid field: check that the emitter and the monitor are the same version",
    "array": "an array that does not match its dtype or shape: a damaged frame or a foreign sender",
    "content": "the message contradicts its run (e.g. a class index out of range for its run_start)",
    "internal": "a monitor bug: please report it with the run's messages.mlog",
}


def rejection_line(reason: str, detail: str) -> str:
    """One console line for a rejected frame: reason code, the codec's message, and the hint."""
    hint = REASON_HINTS.get(reason)
    text = f"monitor: rejected a frame ({reason}): {detail[:DETAIL_CHARS]}"
    return f"{text} ({hint})" if hint else text


@dataclass
class _Key:
    next_at: float  # the clock time from which this key may print again
    hidden: int = 0  # lines not shown since the last one printed
    last: str = ""  # the latest of them


class RateLimitedLines:
    """Collects lines by key and hands out those to print: the first line of a key at once, then at
    most one per key every `interval_s`, carrying the number of lines of that key not shown since.
    `add` may be called from any thread; `take` is called by whoever prints."""

    def __init__(self, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._keys: dict[str, _Key] = {}
        self._ready: list[str] = []
        self._lock = threading.Lock()

    def add(self, key: str, line: str) -> None:
        with self._lock:
            now = self.clock()
            state = self._keys.get(key)
            if state is None or now >= state.next_at:
                hidden = 0 if state is None else state.hidden
                self._ready.append(_with_count(line, hidden))
                self._keys[key] = _Key(now + self.interval_s)
            else:
                state.hidden += 1
                state.last = line

    def take(self, *, final: bool = False) -> list[str]:
        """The lines to print now, oldest first: those added at once, then, for each key whose
        interval has passed (every key when `final`), its latest hidden line with the count of the others."""
        with self._lock:
            now = self.clock()
            lines, self._ready = self._ready, []
            for state in self._keys.values():
                if state.hidden and (final or now >= state.next_at):
                    lines.append(_with_count(state.last, state.hidden - 1))
                    state.hidden, state.next_at = 0, now + self.interval_s
            return lines


def _with_count(line: str, hidden: int) -> str:
    return line if not hidden else f"{line} [and {hidden} more like it not shown]"
