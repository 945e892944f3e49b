"""`monitor replay`: frames from message logs, read once, through the one driver (monitor/driver.py)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from monitor.driver import Settings, Source, drive
from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.ingest.quotas import Limits, Quotas
from trainer_side.msglog import ReadReport, TruncatedLogWarning, iter_records

if TYPE_CHECKING:
    from monitor.pipeline import Pipeline
    from monitor.outputs.tensorboard import TensorBoardOptions

PROGRESS_MIN_BYTES = 8 << 20  # smaller logs replay too fast for a bar to help


class ReplayError(ValueError):
    """A replay that cannot start (e.g. it would write into one of the logs it reads)."""


class LogFileSource(Source):
    """Frames from message logs, in order, each read through once (with a progress bar for big ones).
    `reports` holds one ReadReport per log read: what was skipped or truncated."""

    live = False

    def __init__(self, logs: Sequence[Path], out: Path, console: Console, *, skip_corrupt: bool,
                 progress: bool | None = None, limits: Limits | None = None) -> None:
        super().__init__(Intake(LogBook(out, flush_every=1 << 30, fresh=True), Quotas(limits)))
        self.logs = list(logs)
        self.console = console
        self.skip_corrupt = skip_corrupt
        total = sum(path.stat().st_size for path in self.logs)
        self.total_bytes = total
        self.show_bar = progress if progress is not None else (console.is_terminal and total >= PROGRESS_MIN_BYTES)
        self.reports: list[ReadReport] = []

    def feed(self, pipeline: Pipeline, until: float, stop: threading.Event) -> bool:
        """Reads every log through, whatever `until` says; returns False (nothing left)."""
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                      console=self.console, disable=not self.show_bar, transient=True) as bar:
            task = bar.add_task("replaying", total=self.total_bytes)
            done = 0
            for path in self.logs:
                self._read(path, pipeline, lambda offset: bar.update(task, completed=done + offset))
                done += path.stat().st_size
        return False

    def _read(self, path: Path, pipeline: Pipeline, progress) -> None:  # type: ignore[no-untyped-def]
        report = ReadReport()
        self.reports.append(report)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedLogWarning)
            for offset, frame in iter_records(path, skip_corrupt=self.skip_corrupt, report=report):
                message = self.intake.accept(frame)
                if message is not None:
                    pipeline.handle(message, len(frame))
                progress(offset)
        for warning in caught:
            self.console.print(f"monitor: warning: {warning.message}", highlight=False)
        for start, end, reason in report.skipped:
            self.console.print(f"monitor: {path}: skipped bytes {start}..{end} ({reason})", highlight=False)


def expand_folders(logs: Sequence[Path], out: Path) -> list[Path]:
    """`logs` with each folder replaced by the logs under it (in watch's order)."""
    expanded: list[Path] = []
    for path in logs:
        if not path.is_dir():
            expanded.append(path)
            continue
        from monitor.watch import find_spool_logs

        found = find_spool_logs(path, out)
        if not found:
            raise ReplayError(f"no *.mlog files under the folder {path}; give the spool folder of a run "
                              "(<spool>/<run>/) or the log files themselves")
        expanded.extend(found)
    return expanded


def replay(logs: Sequence[Path], out: Path, *, skip_corrupt: bool, console: Console, show_tables: bool = True,
           progress: bool | None = None, limits: Limits | None = None,
           tensorboard: TensorBoardOptions | None = None) -> tuple[Pipeline, Intake, list[ReadReport]]:
    """Replays `logs` in order into `out`.

    Returns:
        The pipeline (its runs), the intake (frames and rejects counted) and one ReadReport per log.

    A folder in `logs` stands for every log under it, as `monitor watch` finds them (`find_spool_logs`).

    Raises:
        ReplayError: a log is missing, a folder holds none, or `out` holds a log as a run log (replay
            would overwrite its input).
    """
    logs = expand_folders(logs, out)
    for path in logs:
        if not path.is_file():
            raise ReplayError(f"no such log file: {path}")
        if path.name == "messages.mlog" and path.resolve().parent.parent == out.resolve():
            raise ReplayError(f"replay would write into its own input {path}; choose another --out folder")
    source = LogFileSource(logs, out, console, skip_corrupt=skip_corrupt, progress=progress, limits=limits)
    outcome = drive(source, out, console, settings=Settings(show_tables=show_tables, tensorboard=tensorboard))
    return outcome.pipeline, source.intake, source.reports
