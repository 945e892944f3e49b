"""`monitor watch DIR`: follows emitter spool logs as they appear and grow, rendering live.

For clusters whose nodes share a filesystem but not a network port. watchdog says which files
changed; a slow periodic rescan also runs, because change events are unreliable on network
filesystems (NFS, Lustre).
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

from rich.console import Console
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from monitor.console import MonitorConsole
from monitor.intake import Intake
from monitor.logbook import LogBook
from monitor.pipeline import Pipeline, write_stats
from monitor.quotas import Limits, Quotas
from monitor.rejections import RateLimitedLines
from monitor.render.pool import ProcessRenderer
from monitor.signals import PROCESS_S, STOP_S, stop_on_signals, stop_requested_at
from trainer_side.msglog import CorruptLogError, LogFollower, TruncatedLogWarning

RESCAN_S = 2.0
TICK_S = 0.25


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


class SpoolWatcher:
    """Owns one LogFollower per spool file under a folder and feeds new frames to the pipeline."""

    def __init__(self, folder: Path, out: Path, pipeline: Pipeline, console: Console, *, skip_corrupt: bool) -> None:
        self.folder = folder.resolve()
        self.out = out.resolve()
        self.pipeline = pipeline
        self.console = console
        self.skip_corrupt = skip_corrupt
        self.intake = Intake(LogBook(out, flush_every=1 << 30, fresh=True))
        self.followers: dict[Path, LogFollower] = {}
        self.failed: set[Path] = set()

    def _is_spool(self, path: Path) -> bool:
        # The run logs this watcher writes under --out are outputs, never inputs.
        return path.suffix == ".mlog" and not (path.name == "messages.mlog" and self.out in path.resolve().parents)

    def rescan(self) -> set[Path]:
        return {p for p in self.folder.rglob("*.mlog") if self._is_spool(p)}

    def poll(self, paths: set[Path], until: float | None = None) -> int:
        """Reads what is new in each of `paths` and feeds it to the pipeline; stops between files at
        the monotonic `until` (what is left stays in the spools). Returns the number of frames read."""
        frames = 0
        for path in sorted(paths):
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
                    self.pipeline.handle(message, len(frame))
            frames += len(new)
        self.intake.logbook.flush()
        return frames

    def close(self) -> None:
        self.intake.logbook.close()


def watch(folder: Path, out: Path, *, epoch_timeout: float, skip_corrupt: bool, polling: bool,
          stale_after: float | None = None,
          console: Console, stop: threading.Event | None = None, render_priority: str = "idle",
          limits: Limits | None = None) -> int:
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder to watch: {folder}")
    out.mkdir(parents=True, exist_ok=True)
    stop = stop or stop_on_signals()
    renderer = ProcessRenderer(priority=render_priority)
    records = MonitorConsole(console, fresh=False, offload=renderer.table)
    pipeline = Pipeline(out, renderer, records, epoch_timeout=epoch_timeout, stale_after=stale_after)
    watcher = SpoolWatcher(folder, out, pipeline, console, skip_corrupt=skip_corrupt)
    watcher.intake.quotas = Quotas(limits)
    pipeline.logbook, reporter = watcher.intake.logbook, RateLimitedLines()
    watcher.intake.reporter = pipeline.reporter = reporter  # rejections and logging failures explained
    changed = _Changed()
    observer = PollingObserver(timeout=1) if polling else Observer()
    observer.schedule(changed, str(folder), recursive=True)
    observer.start()
    console.print(f"monitor: watching {folder}/ for spool logs, writing to {out}/ (Ctrl-C or SIGTERM to stop)",
                  highlight=False)
    stopping = None
    try:
        next_rescan = 0.0
        while not stop.is_set():
            paths = changed.take()
            if time.monotonic() >= next_rescan:
                paths |= watcher.rescan()
                next_rescan = time.monotonic() + RESCAN_S
            watcher.poll(paths)
            pipeline.tick()
            for line in reporter.take():
                pipeline.console.note(line)
            stop.wait(TICK_S)
        stopping = stop_requested_at(stop)
        watcher.poll(watcher.rescan(), until=stopping + PROCESS_S)  # what was written before the stop, in time
    finally:
        stopping = stopping or time.monotonic()
        observer.stop()
        observer.join(5)
        renderer.stop_by(stopping + STOP_S)
        records.stop_by(stopping + STOP_S)
        pipeline.finish()
        abandoned = renderer.close() + records.abandoned
        watcher.close()
        for line in reporter.take(final=True):
            pipeline.console.note(line)
        write_stats(out, frames=watcher.intake.frames, frame_bytes=watcher.intake.bytes,
                    rejected=watcher.intake.rejected + pipeline.rejected, pipeline=pipeline)
    if abandoned:
        console.print(f"monitor: stopped before drawing {abandoned} figure(s) or table(s); `monitor replay` of the "
                      f"run logs under {out}/ redraws them", highlight=False)
    console.print(f"monitor: stopped; {watcher.intake.frames} frames read from {len(watcher.followers)} spool log(s), "
                  f"{len(pipeline.runs)} run(s) written to {out}/", highlight=False)
    return 0
