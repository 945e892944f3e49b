"""One append-only message log per run, at <out>/<run>/messages.mlog, opened on the run's first frame."""

from __future__ import annotations

import warnings
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Callable

from monitor.folders import run_dir
from trainer_side.msglog import HEADER_SIZE, LogWriteError, LogWriter, TruncatedLogWarning, iter_frames

# Senders choose run ids, so the number of runs is theirs to inflate: keep only this many logs open
# (least recently used closes first) rather than one file descriptor per run until EMFILE.
MAX_OPEN_LOGS = 128


# Frames refused by the codec belong to no run: up to this many bytes of them are kept here, for
# `monitor inspect` to show what they were (run folders never start with a dot, so none collides).
REJECTED_LOG = Path(".monitor") / "rejected.mlog"
MAX_REJECTED_LOG_BYTES = 64 << 20


class LogBook:
    """The runs' logs. A write that fails (a full disk, a folder that cannot be created) never raises:
    the frames are counted in `not_logged`, the log keeps its whole records only, and the next frames
    are written again, so logging resumes by itself once space is freed."""

    def __init__(self, out: Path, *, flush_every: int = 1, fresh: bool = False,
                 on_resume: Callable[[str, list[bytes]], None] | None = None) -> None:
        self.out = out
        self.fresh = fresh  # replay and watch re-read their sources whole, so they rewrite each run's log
        self.flush_every = flush_every
        # Called with a run's earlier frames when its log already exists (a restarted monitor), so
        # the run continues from what was recorded instead of starting blank.
        self.on_resume = on_resume
        self._writers: OrderedDict[str, LogWriter] = OrderedDict()
        self._opened: set[str] = set()  # runs already opened once: a reopen must not resume or truncate
        self.not_logged: Counter[str] = Counter()  # run -> frames that could not be written
        self.errors: dict[str, str] = {}  # run -> the latest write error, one line
        self.last_error: str | None = None
        self.on_failed: Callable[[], None] | None = None  # called after each failed write, once counted
        # Where `keep_rejected` keeps refused frames (serve sets `out / REJECTED_LOG`); None: nowhere.
        self.rejected_path: Path | None = None
        self._rejected: LogWriter | None = None
        self.rejected_not_kept = 0  # rejected frames beyond MAX_REJECTED_LOG_BYTES, or not writable

    def path(self, run: str) -> Path:
        return run_dir(self.out, run) / "messages.mlog"

    def append(self, run: str, frame: bytes) -> bool:
        """Adds a frame to its run's log (written as `flush_every` says); False if a write failed."""
        try:
            self._writer(run).append(frame)
        except OSError as exc:
            self._failed(run, exc, 1)
            return False
        return True

    def append_many(self, run: str, frames: list[bytes]) -> bool:
        """Writes frames of one run to its log, in order, with one write, whatever `flush_every` says:
        True once they are in the file; False (counted in `not_logged`) if none of them could be."""
        try:
            writer = self._writer(run)
            writer.append_many(frames)
            writer.flush()
        except OSError as exc:
            self._failed(run, exc, len(frames))
            return False
        return True

    def keep_rejected(self, frame: bytes) -> None:
        """Appends a frame the codec refused to `rejected_path`, if set, up to MAX_REJECTED_LOG_BYTES."""
        if self.rejected_path is None:
            return
        try:
            if self._rejected is None:
                self._rejected = LogWriter(self.rejected_path, flush_every=self.flush_every)
            if not frame or self._rejected.bytes + len(frame) + 8 > MAX_REJECTED_LOG_BYTES:
                self.rejected_not_kept += 1
                return
            self._rejected.append(frame)
        except OSError as exc:
            self.rejected_not_kept += getattr(exc, "frames", 1)

    def status(self, run: str) -> dict | None:
        """For the run's summary: the frames that could not be logged and why; None if there were none."""
        if not self.not_logged.get(run):
            return None
        return {"frames_not_logged": self.not_logged[run], "error": self.errors[run]}

    def stats(self) -> dict:
        """For the process's stats.json: frames not logged by run, the last error, rejected frames not kept."""
        stats: dict = {}
        if self.not_logged:
            stats.update(not_logged=dict(sorted(self.not_logged.items())), log_error=self.last_error)
        if self.rejected_not_kept:
            stats["rejected_not_kept"] = self.rejected_not_kept  # beyond the rejected-frames log's cap
        return stats

    def _failed(self, run: str, exc: OSError, frames: int) -> None:
        if isinstance(exc, LogWriteError):
            frames = exc.frames  # records that were still pending are gone too
            text = exc.reason
        else:
            text = f"cannot write {self.path(run)}: {exc.strerror or exc}"
        self.not_logged[run] += frames
        self.errors[run] = self.last_error = text
        if self.on_failed is not None:
            self.on_failed()

    def _writer(self, run: str) -> LogWriter:
        """The run's open writer; opening it first resumes the run from an existing log."""
        writer = self._writers.get(run)
        if writer is None:
            path = self.path(run)
            first = run not in self._opened
            if first and self.on_resume is not None and path.exists() and path.stat().st_size > HEADER_SIZE:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TruncatedLogWarning)
                    self.on_resume(run, list(iter_frames(path, skip_corrupt=True)))
            if len(self._writers) >= MAX_OPEN_LOGS:
                self._close(*self._writers.popitem(last=False))
            self._opened.add(run)  # before opening: a run whose log cannot be opened yet is not resumed twice
            writer = self._writers[run] = LogWriter(path, flush_every=self.flush_every, truncate=self.fresh and first)
        else:
            self._writers.move_to_end(run)
        return writer

    def flush(self) -> None:
        for run, writer in self._writers.items():
            try:
                writer.flush()
            except LogWriteError as exc:
                self._failed(run, exc, exc.frames)
        if self._rejected is not None:
            try:
                self._rejected.flush()
            except LogWriteError as exc:
                self.rejected_not_kept += exc.frames

    def close(self) -> None:
        for run, writer in self._writers.items():
            self._close(run, writer)
        self._writers.clear()
        if self._rejected is not None:
            try:
                self._rejected.close()
            except LogWriteError as exc:
                self.rejected_not_kept += exc.frames

    def _close(self, run: str, writer: LogWriter) -> None:
        try:
            writer.close()
        except OSError as exc:
            self._failed(run, exc, 0)
