"""The first step for every frame, live or replayed: decode it, count it if rejected, log it by run."""

from __future__ import annotations

import logging
from collections import Counter

from monitor.ingest.logbook import LogBook
from monitor.ingest.quotas import Quotas
from monitor.ingest.rejections import RateLimitedLines, rejection_line
from trainer_side import protocol
from trainer_side.protocol import Message

log = logging.getLogger("monitor")


class AcceptedFrames(list):
    """`Intake.accept_many`'s result: a list of (message, frame size) for every decoded frame, in order,
    and `logged`, a list of the same length saying whether each frame is in its run's log."""

    def __init__(self, items: list[tuple[Message, int]], logged: list[bool]) -> None:
        super().__init__(items)
        self.logged = logged

    @property
    def not_logged(self) -> int:
        return self.logged.count(False)


class Intake:
    """Decodes frames, counts the refused ones by reason (`rejected`) and appends the others to their
    run's log in `logbook` (None: not logged), within `quotas`."""

    def __init__(self, logbook: LogBook | None, quotas: Quotas | None = None) -> None:
        self.logbook = logbook
        self.quotas = quotas or Quotas()  # a frame over a quota is counted under its reason, never logged
        self.rejected: Counter[str] = Counter()  # reason -> frames
        self.last_rejection: str | None = None
        self.frames = 0
        self.bytes = 0
        # Where rejections and logging failures are explained (rate-limited); the process prints its lines.
        self.reporter: RateLimitedLines | None = None
        if logbook is not None:
            logbook.on_failed = self._not_logged

    @property
    def not_logged(self) -> int:
        """Frames decoded but not written to their run's log (a full disk, say)."""
        return 0 if self.logbook is None else sum(self.logbook.not_logged.values())

    def accept(self, frame: bytes) -> Message | None:
        """The decoded message, after adding the frame to its run's log; None (counted) if rejected.
        A frame that cannot be logged is still returned, and counted in `not_logged`."""
        self.frames += 1
        self.bytes += len(frame)
        try:
            message = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            self._reject(exc, frame)
            return None
        if (refused := self.quotas.admit(message, len(frame))) is not None:
            self.rejected[refused] += 1
            return None
        if self.logbook is not None:
            self.logbook.append(message.run, frame)
        return message

    def accept_many(self, frames: list[bytes]) -> AcceptedFrames:
        """`accept` for a batch of frames: (message, frame size) for each decoded frame, in order.

        Each run's frames are written to its log with one write, in arrival order, before anything
        is returned. The result's `logged` says, frame by frame, which of them are in the log: a frame
        that cannot be logged (a full disk) is still returned, for the pipeline to draw, and counted in
        `not_logged`. A frame that cannot be decoded for any other reason than a ProtocolError is
        counted as "internal" and not returned: the caller keeps receiving. A frame over a quota
        (monitor/ingest/quotas.py) is counted under its reason and neither logged nor returned.
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
                self._reject(exc, frame)
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
        failed = set()
        if self.logbook is not None:
            for run, run_frames in by_run.items():
                if not self.logbook.append_many(run, run_frames):
                    failed.add(run)
        return AcceptedFrames(accepted, [message.run not in failed for message, _ in accepted])

    def _reject(self, exc: protocol.ProtocolError, frame: bytes) -> None:
        self.rejected[exc.reason] += 1
        self.last_rejection = str(exc)[:200]
        log.debug("rejected frame: %s", exc)
        if self.logbook is not None:
            self.logbook.keep_rejected(frame)  # for `monitor inspect <out>/.monitor/rejected.mlog`
        if self.reporter is not None:
            self.reporter.add(exc.reason, rejection_line(exc.reason, str(exc)))

    def _internal_error(self, what: str, exc: Exception, frames: int) -> None:
        self.rejected["internal"] += frames
        text = f"{what} ({type(exc).__name__}: {exc})"
        if self.reporter is None:
            log.error("%s", text)
        else:
            self.reporter.add("internal", rejection_line("internal", text))

    def _not_logged(self) -> None:
        if self.reporter is not None and self.logbook is not None:
            self.reporter.add("not_logged", not_logged_line(self.logbook))


def not_logged_line(logbook: LogBook) -> str:
    """The console line for frames that could not be logged: what happened and what to do."""
    return (f"monitor: error: {logbook.last_error}; {sum(logbook.not_logged.values())} frame(s) not logged "
            "so far. Free space there: logging resumes with the next frames (the missing ones show as "
            "sequence gaps)")
