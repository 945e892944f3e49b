"""One append-only message log per run, at <out>/<run>/messages.mlog, opened on the run's first frame."""

from __future__ import annotations

from pathlib import Path

from trainer_side.msglog import LogWriter
from trainer_side.names import safe_component


def run_dir(out: Path, run: str) -> Path:
    """The run's folder: always a direct child of `out`, whatever the run id holds."""
    return out / safe_component(run)


class LogBook:
    def __init__(self, out: Path, *, flush_every: int = 1) -> None:
        self.out = out
        self.flush_every = flush_every
        self._writers: dict[str, LogWriter] = {}

    def path(self, run: str) -> Path:
        return run_dir(self.out, run) / "messages.mlog"

    def append(self, run: str, frame: bytes) -> None:
        writer = self._writers.get(run)
        if writer is None:
            writer = self._writers[run] = LogWriter(self.path(run), flush_every=self.flush_every)
        writer.append(frame)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
