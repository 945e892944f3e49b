"""`monitor replay`: the same intake → pipeline → render path as serve, fed from message logs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from monitor.console import MonitorConsole
from monitor.intake import Intake
from monitor.logbook import LogBook
from monitor.pipeline import Pipeline, write_stats
from monitor.quotas import Limits, Quotas
from monitor.render.pool import InlineRenderer
from trainer_side.msglog import ReadReport, TruncatedLogWarning, iter_records

PROGRESS_MIN_BYTES = 8 << 20  # smaller logs replay too fast for a bar to help


class ReplayError(ValueError):
    """A replay that cannot start (e.g. it would write into one of the logs it reads)."""


def replay(logs: Sequence[Path], out: Path, *, skip_corrupt: bool, console: Console, show_tables: bool = True,
           progress: bool | None = None, limits: Limits | None = None) -> tuple[Pipeline, Intake, list[ReadReport]]:
    for path in logs:
        if not path.is_file():
            raise ReplayError(f"no such log file: {path}")
        if path.name == "messages.mlog" and path.resolve().parent.parent == out.resolve():
            raise ReplayError(f"replay would write into its own input {path}; choose another --out folder")
    logbook = LogBook(out, flush_every=1 << 30, fresh=True)
    intake = Intake(logbook, Quotas(limits))
    pipeline = Pipeline(out, InlineRenderer(), MonitorConsole(console if show_tables else None, fresh=True))
    pipeline.logbook = logbook  # frames it could not log go into the summaries
    total = sum(path.stat().st_size for path in logs)
    show_bar = progress if progress is not None else (console.is_terminal and total >= PROGRESS_MIN_BYTES)
    reports = []
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=console, disable=not show_bar, transient=True) as bar:
        task = bar.add_task("replaying", total=total)
        done = 0
        for path in logs:
            report = ReadReport()
            reports.append(report)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TruncatedLogWarning)
                for offset, frame in iter_records(path, skip_corrupt=skip_corrupt, report=report):
                    message = intake.accept(frame)
                    if message is not None:
                        pipeline.handle(message, len(frame))
                    bar.update(task, completed=done + offset)
            for warning in caught:
                console.print(f"monitor: warning: {warning.message}", highlight=False)
            for start, end, reason in report.skipped:
                console.print(f"monitor: {path}: skipped bytes {start}..{end} ({reason})", highlight=False)
            done += path.stat().st_size
    pipeline.finish()
    logbook.close()
    write_stats(out, frames=intake.frames, frame_bytes=intake.bytes, rejected=intake.rejected + pipeline.rejected,
                pipeline=pipeline)
    return pipeline, intake, reports
