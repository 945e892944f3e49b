"""Sequence gaps: which of a rank's numbered messages never arrived. One rule for every reader
(`monitor inspect`, and the runs that serve, replay and watch build), so they always agree.

The rule, for one rank's messages in the order they were read:
- a message numbers within its emitter session, from 0. A message from a sender (emitter instance,
  protocol 1.1) other than the current session's opens a new session, and one from a sender of an
  earlier session counts for nothing. Without sender ids (protocol 1.0), a `run_start` numbered 0
  stamped later than the current session's opens a new session (a resumed run), and a message
  stamped before the current session's `run_start` belongs to an earlier session (a repeated tail)
  and counts for nothing;
- a gap is a number below the highest one seen in the session that has not been seen (yet);
- a message seen again (a log whose tail was appended twice) changes nothing; one that arrives late
  fills its gap.
"""

from __future__ import annotations

import bisect

# Gaps remembered (per session, and of earlier sessions) to be filled or listed; past this many, the
# oldest are only counted.
MAX_RANGES = 4096


class SequenceGaps:
    """Tracks one rank's sequence numbers; `missing` is the number of gaps over all its sessions."""

    def __init__(self) -> None:
        self.missing = 0
        self.closed: list[tuple[int, int]] = []  # gaps of earlier sessions, [first, last]
        self._next = 0  # one past the highest number seen in this session
        self._open: list[tuple[int, int]] = []  # this session's gaps, sorted, [first, last]
        self._session_time: float | None = None
        self._sender = ""  # the current session's sender; "" for protocol 1.0 emitters
        self._earlier: dict[str, None] = {}  # senders of earlier sessions, oldest first

    def see(self, seq: int, *, run_start: bool = False, time: float | None = None, sender: str = "") -> int:
        """Accounts one message; returns how many numbers it skipped (> 0), filled (< 0), or 0."""
        if sender and sender != self._sender:
            if sender in self._earlier:
                return 0
            if self._sender:
                self._earlier[self._sender] = None
                if len(self._earlier) > MAX_RANGES:
                    del self._earlier[next(iter(self._earlier))]
            self._sender = sender
            self._new_session(time if run_start else None)
        elif time is not None and self._session_time is not None and time < self._session_time:
            return 0
        elif run_start and seq == 0 and (self._session_time is None or time != self._session_time):
            self._new_session(time)
        if seq >= self._next:
            skipped = seq - self._next
            if skipped:
                self._open.append((self._next, seq - 1))
                if len(self._open) > MAX_RANGES:
                    del self._open[0]  # still counted in `missing`, no longer fillable nor listed
            self._next = seq + 1
            self.missing += skipped
            return skipped
        return -self._fill(seq)

    def _new_session(self, time: float | None) -> None:
        if self._session_time is not None or self._next:
            self.closed.extend(self._open)
            del self.closed[:-MAX_RANGES]
            self._open, self._next = [], 0
        self._session_time = time

    def _fill(self, seq: int) -> int:
        i = bisect.bisect_right(self._open, (seq, float("inf"))) - 1
        if i < 0 or not self._open[i][0] <= seq <= self._open[i][1]:
            return 0  # seen before: a repeat
        first, last = self._open.pop(i)
        self._open[i:i] = [r for r in ((first, seq - 1), (seq + 1, last)) if r[0] <= r[1]]
        self.missing -= 1
        return 1

    def ranges(self) -> list[tuple[int, int]]:
        """The gaps as [first, last], earlier sessions first (beyond MAX_RANGES, only the latest)."""
        return self.closed + self._open
