"""One append-only message log per run, at <out>/<run>/messages.mlog, opened on the run's first frame."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from trainer_side.msglog import HEADER_SIZE, LogWriter, TruncatedLogWarning, iter_frames
from trainer_side.names import safe_component

# Senders choose run ids, so the number of runs is theirs to inflate: keep only this many logs open
# (least recently used closes first) rather than one file descriptor per run until EMFILE.
MAX_OPEN_LOGS = 128


def run_dir(out: Path, run: str) -> Path:
    """The run's folder: always a direct child of `out`, whatever the run id holds."""
    return out / safe_component(run)


class LogBook:
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

    def path(self, run: str) -> Path:
        return run_dir(self.out, run) / "messages.mlog"

    def append(self, run: str, frame: bytes) -> None:
        self._writer(run).append(frame)

    def append_many(self, run: str, frames: list[bytes]) -> None:
        """Appends frames of one run, in order: the same records as `append` for each, one write."""
        self._writer(run).append_many(frames)

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
                self._writers.popitem(last=False)[1].close()
            writer = self._writers[run] = LogWriter(path, flush_every=self.flush_every,
                                                    truncate=self.fresh and first)
            self._opened.add(run)
        else:
            self._writers.move_to_end(run)
        return writer

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
