"""The first step for every frame, live or replayed: decode it, count it if rejected, log it by run."""

from __future__ import annotations

import logging
from collections import Counter

from monitor.logbook import LogBook
from trainer_side import protocol
from trainer_side.protocol import Message

log = logging.getLogger("monitor")


class Intake:
    def __init__(self, logbook: LogBook | None) -> None:
        self.logbook = logbook
        self.rejected: Counter[str] = Counter()  # reason -> frames
        self.last_rejection: str | None = None
        self.frames = 0
        self.bytes = 0

    def accept(self, frame: bytes) -> Message | None:
        """The decoded message, after appending the frame to its run's log; None (counted) if rejected."""
        self.frames += 1
        self.bytes += len(frame)
        try:
            message = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            self.rejected[exc.reason] += 1
            self.last_rejection = str(exc)[:200]
            log.debug("rejected frame: %s", exc)
            return None
        if self.logbook is not None:
            self.logbook.append(message.run, frame)
        return message
