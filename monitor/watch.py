"""`monitor watch DIR`: frames from emitter spool logs as they appear and grow, through the one
driver (monitor/driver.py).

For clusters whose nodes share a filesystem but not a network port. watchdog says which files
changed; a slow periodic rescan also runs, because change events are unreliable on network
filesystems (NFS, Lustre).
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from monitor.driver import Settings, Source, drive
from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.ingest.quotas import Limits, Quotas
from monitor.ingest.rejections import RateLimitedLines
from monitor.signals import PROCESS_S, stop_on_signals
from trainer_side.msglog import CorruptLogError, LogFollower, TruncatedLogWarning

if TYPE_CHECKING:
    from monitor.pipeline import Pipeline
    from monitor.outputs.tensorboard import TensorBoardOptions

RESCAN_S = 2.0


def is_spool_log(path: Path, out: Path) -> bool:
    """Whether `path` is a log to read: any *.mlog, except the run logs a monitor writes under `out`."""
    return path.suffix == ".mlog" and not (path.name == "messages.mlog" and out.resolve() in path.resolve().parents)


def find_spool_logs(folder: Path, out: Path) -> list[Path]:
    """Every log to read under `folder` (searched recursively), resolved, in the order watch reads them:
    by path, so a spool's `<run>/rank<N>.mlog` files come per run and rank."""
    return sorted({path.resolve() for path in folder.rglob("*.mlog") if is_spool_log(path, out)})


class _Changed(FileSystemEventHandler):
    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = Path(str(getattr(event, "dest_path", "") or event.src_path))
        if path.suffix == ".mlog":
            with self.lock:
                self.paths.add(path)

    def take(self) -> set[Path]:
        with self.lock:
            paths, self.paths = self.paths, set()
        return paths


class SpoolSource(Source):
    """Frames from the spool logs under a folder: one LogFollower per file, found by change events
    and a slow rescan. The run logs this source writes under `out` are outputs, never inputs."""

    def __init__(self, folder: Path, out: Path, console: Console, *, skip_corrupt: bool, polling: bool,
                 limits: Limits | None = None) -> None:
        intake = Intake(LogBook(out, flush_every=1 << 30, fresh=True), Quotas(limits))
        intake.reporter = RateLimitedLines()
        super().__init__(intake)
        self.folder = folder.resolve()
        self.out = out.resolve()
        self.where = str(folder)
        self.console = console
        self.skip_corrupt = skip_corrupt
        self.followers: dict[Path, LogFollower] = {}
        self.failed: set[Path] = set()
        self._changed = _Changed()
        self._observer = PollingObserver(timeout=1) if polling else Observer()
        self._observer.schedule(self._changed, str(folder), recursive=True)
        self._next_rescan = 0.0

    def start(self) -> None:
        self._observer.start()

    def _is_spool(self, path: Path) -> bool:
        return is_spool_log(path, self.out)

    def rescan(self) -> set[Path]:
        return set(find_spool_logs(self.folder, self.out))

    def feed(self, pipeline: Pipeline, until: float, stop: threading.Event) -> bool:
        paths = self._changed.take()
        if time.monotonic() >= self._next_rescan:
            paths |= self.rescan()
            self._next_rescan = time.monotonic() + RESCAN_S
        self.poll(pipeline, paths)
        stop.wait(max(0.0, until - time.monotonic()))
        return True

    def stop(self, pipeline: Pipeline | None, requested_at: float) -> int:
        """Reads what was written before the stop, in time; what is left stays in the spools."""
        if pipeline is not None:
            self.poll(pipeline, self.rescan(), until=requested_at + PROCESS_S)
        return 0

    def poll(self, pipeline: Pipeline, paths: set[Path], until: float | None = None) -> int:
        """Reads what is new in each of `paths` and feeds it to the pipeline; stops between files at
        the monotonic `until`. Returns the number of frames read."""
        frames = 0
        # Change events name paths as the folder was given, the rescan as resolved: one key per file.
        for path in sorted({path.resolve() for path in paths}):
            if until is not None and time.monotonic() >= until:
                break
            if not self._is_spool(path) or path in self.failed:
                continue
            follower = self.followers.get(path)
            if follower is None:
                follower = self.followers[path] = LogFollower(path, skip_corrupt=self.skip_corrupt)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TruncatedLogWarning)
                    new = follower.poll()
            except (CorruptLogError, ValueError) as exc:
                self.failed.add(path)
                self.console.print(f"monitor watch: stopped following {path}: {exc}", highlight=False)
                continue
            for frame in new:
                message = self.intake.accept(frame)
                if message is not None:
                    pipeline.handle(message, len(frame))
            frames += len(new)
        self.intake.logbook.flush()
        return frames

    def close(self) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(5)
        super().close()

    def taken(self) -> str:
        return f"read from {len(self.followers)} spool log(s)"


def watch(folder: Path, out: Path, *, epoch_timeout: float, skip_corrupt: bool, polling: bool,
          stale_after: float | None = None,
          console: Console, stop: threading.Event | None = None, render_priority: str = "idle",
          render_defer: float = 0.0, limits: Limits | None = None,
          tensorboard: TensorBoardOptions | None = None) -> int:
    """Follows the spool logs under `folder` until `stop` (or SIGINT/SIGTERM).

    Returns:
        The exit status: 1 when frames could not be logged (a full disk), else 0.

    Raises:
        FileNotFoundError: `folder` is not a folder.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder to watch: {folder}")
    out.mkdir(parents=True, exist_ok=True)
    stop = stop or stop_on_signals()
    source = SpoolSource(folder, out, console, skip_corrupt=skip_corrupt, polling=polling, limits=limits)
    source.start()
    console.print(f"monitor: watching {folder}/ for spool logs, writing to {out}/ (Ctrl-C or SIGTERM to stop)",
                  highlight=False)
    settings = Settings(epoch_timeout=epoch_timeout, stale_after=stale_after, render_priority=render_priority,
                        render_defer=render_defer, tensorboard=tensorboard)
    outcome = drive(source, out, console, settings=settings, stop=stop)
    return 1 if outcome.not_logged else 0
