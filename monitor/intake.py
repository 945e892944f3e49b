"""The first step for every frame, live or replayed: decode it, count it if rejected, log it by run."""

from __future__ import annotations

import logging
from collections import Counter

from monitor.logbook import LogBook
from monitor.quotas import Quotas
from trainer_side import protocol
from trainer_side.protocol import Message

log = logging.getLogger("monitor")


class Intake:
    def __init__(self, logbook: LogBook | None, quotas: Quotas | None = None) -> None:
        self.logbook = logbook
        self.quotas = quotas or Quotas()  # a frame over a quota is counted under its reason, never logged
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
            self._reject(exc)
            return None
        if (refused := self.quotas.admit(message, len(frame))) is not None:
            self.rejected[refused] += 1
            return None
        if self.logbook is not None:
            self.logbook.append(message.run, frame)
        return message

    def accept_many(self, frames: list[bytes]) -> list[tuple[Message, int]]:
        """`accept` for a batch of frames: (message, frame size) for each frame logged, in order.

        Each run's frames go to its log with one write, in arrival order, before anything is
        returned. A frame that cannot be decoded for any other reason than a ProtocolError, or that
        cannot be logged (a full disk), is counted as "internal" and not returned: the caller keeps
        receiving. A frame over a quota (monitor/quotas.py) is counted under its reason and neither
        logged nor returned.
        """
        self.frames += len(frames)
        accepted: list[tuple[Message, int]] = []
        by_run: dict[str, list[bytes]] = {}
        decode, total = protocol.decode, 0
        for frame in frames:
            size = len(frame)
            total += size
            try:
                message = decode(frame)
            except protocol.ProtocolError as exc:
                self._reject(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the receive loop
                self._internal_error("could not decode a frame", exc, 1)
                continue
            if (refused := self.quotas.admit(message, size)) is not None:
                self.rejected[refused] += 1
                continue
            accepted.append((message, size))
            run_frames = by_run.get(message.run)
            if run_frames is None:
                by_run[message.run] = [frame]
            else:
                run_frames.append(frame)
        self.bytes += total
        if self.logbook is not None:
            failed = set()
            for run, run_frames in by_run.items():
                try:
                    self.logbook.append_many(run, run_frames)
                except Exception as exc:  # noqa: BLE001 - e.g. a full disk: count it, keep receiving
                    self._internal_error("could not log a frame", exc, len(run_frames))
                    failed.add(run)
            if failed:
                accepted = [item for item in accepted if item[0].run not in failed]
        return accepted

    def _reject(self, exc: protocol.ProtocolError) -> None:
        self.rejected[exc.reason] += 1
        self.last_rejection = str(exc)[:200]
        log.debug("rejected frame: %s", exc)

    def _internal_error(self, what: str, exc: Exception, frames: int) -> None:
        self.rejected["internal"] += frames
        log.error("%s (%s: %s)", what, type(exc).__name__, exc)
