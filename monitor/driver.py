"""One driver for serve, watch and replay: a source of frames → intake → pipeline → renderer.

The commands differ only in their `Source`: the socket (monitor/serve.py), spool logs followed as
they grow (monitor/watch.py) or log files read once (monitor/replay.py). A live source runs until a
stop is asked and draws in worker processes; a finite one runs until it is read through and draws
inline. The wiring, the stop, the stats and the closing lines are written here once.

A stop (Ctrl-C, SIGTERM) is bounded in time whatever the senders do: the source hands over what it
already took until `signals.PROCESS_S` after the request; pending figures and tables get until
`signals.STOP_S`, then are abandoned and the workers killed; summary.json and stats are written.
Whatever was not processed or drawn is in the run logs, and `monitor replay` redoes it.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from monitor.ingest.intake import Intake
from monitor.signals import STOP_S, stop_requested_at

if TYPE_CHECKING:
    from rich.console import Console

    from monitor.pipeline import Pipeline
    from monitor.outputs.tensorboard import TensorBoardOptions

TICK_S = 0.25


class Source:
    """Where frames come from. A subclass reads frames, passes each through `intake` (decode, count,
    log) and hands the messages to the pipeline.

    Attributes:
        intake: decodes, counts and logs what the source reads; its `reporter` (if any) explains
            rejections and logging failures on the terminal, rate-limited.
        live: True for a source that runs until stopped (serve, watch); False for one that ends
            when read through (replay).
        where: where frames come from, for the dashboard's title.
    """

    live = True
    where = ""
    curve_refusals = 0  # CURVE handshakes refused (the socket's authenticator)

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    def feed(self, pipeline: Pipeline, until: float, stop: threading.Event) -> bool:
        """Hands the pipeline what has arrived, until the monotonic `until` or `stop` at most.

        Returns:
            False once there is nothing more to read (a finite source), else True.
        """
        raise NotImplementedError

    def stop(self, pipeline: Pipeline | None, requested_at: float) -> int:
        """Stops taking frames and hands over what was already taken, until `signals.PROCESS_S`
        after the monotonic `requested_at`; returns within `signals.STOP_S` of it. With no pipeline
        (a stop during start-up) nothing is handed over.

        Returns:
            The number of messages logged but not processed.
        """
        return 0

    def close(self) -> None:
        """Releases what the source holds, its run logs included; called once the pipeline is finished."""
        self.intake.logbook.close()

    def taken(self) -> str:
        """How the closing line says where the frames were taken ("received", "read from 3 logs")."""
        return "received"


@dataclass(frozen=True)
class Settings:
    """How the pipeline renders: see `monitor serve --help` for each."""

    epoch_timeout: float | None = None
    stale_after: float | None = None
    render_priority: str = "idle"
    render_defer: float = 0.0
    show_tables: bool = True
    tensorboard: TensorBoardOptions | None = None


@dataclass(frozen=True)
class Outcome:
    """What a drive did, for the command's exit status and closing line."""

    pipeline: Pipeline | None  # None when the stop came during start-up: nothing was processed
    rejected: Counter[str]  # frames and messages refused, by reason
    unprocessed: int  # messages logged but never processed (a stop's time ran out)
    abandoned: int  # figures and tables not drawn (a stop's time ran out)
    not_logged: int  # frames that could not be written to their run's log (a full disk)


def drive(source: Source, out: Path, console: Console, *, settings: Settings = Settings(),
          stop: threading.Event | None = None, on_started: Callable[[], None] | None = None) -> Outcome:
    """Runs `source` through the pipeline until it is read through or `stop` is set, then finishes
    every run, writes stats.json and (for a live source) prints the closing lines.

    Heavy modules (torch, matplotlib) are imported here, so a source may listen before calling this.
    A stop asked while they load ends the start-up after the import under way: nothing is processed
    (the run logs keep it all for `monitor replay`). `on_started` is called once the pipeline is up.
    """
    stop = stop or threading.Event()
    intake, reporter = source.intake, source.intake.reporter
    started = _start_live(console, settings, stop) if source.live else _start_inline(console, settings)
    if started is None:
        return _stopped_during_start_up(source, out, console, stop)
    renderer, run_console, dashboard = started
    from monitor.pipeline import Pipeline

    pipeline = Pipeline(out, renderer, run_console, epoch_timeout=settings.epoch_timeout,
                        stale_after=settings.stale_after)
    pipeline.logbook, pipeline.reporter = intake.logbook, reporter
    renderer.on_done = pipeline.record_artifact  # for the dashboard's last artifact per run, and TensorBoard
    renderer.live = pipeline.live  # ready epochs wait while a run is under way and the CPUs are busy
    if settings.tensorboard is not None:
        from monitor.outputs.tensorboard import TensorBoardWriter

        # A replay has no sender to keep up with: it waits for the event writer rather than drop.
        pipeline.tensorboard = TensorBoardWriter(settings.tensorboard, out, wait=not source.live)
    if on_started is not None:
        on_started()

    def report(final: bool = False) -> None:
        for line in reporter.take(final=final) if reporter is not None else ():
            run_console.note(line)

    def refresh(now: bool = False) -> None:
        if dashboard is None or not dashboard.active:
            return
        from monitor.outputs.dashboard import dashboard_caption, dashboard_rows

        caption = dashboard_caption(frames=intake.frames, rejected=intake.rejected + pipeline.rejected,
                                    render_queue=renderer.pending)
        dashboard.show(dashboard_rows(pipeline.runs.values(), pipeline.samples.changes), caption,
                       endpoint=source.where, now=now)

    unprocessed, collecting, deadline = 0, gc.isenabled(), None
    with dashboard if dashboard is not None else contextlib.nullcontext():
        try:
            while not stop.is_set() and source.feed(pipeline, time.monotonic() + TICK_S, stop):
                pipeline.tick()
                report()
                refresh()
        finally:
            if stop.is_set():
                stopping = stop_requested_at(stop)
                # The hand-off queue may hold very many messages (a flood), which a full collection
                # would walk with the GIL held; the stop makes few objects, reference counting frees them.
                gc.disable()
                unprocessed = source.stop(pipeline, stopping)
                deadline = stopping + STOP_S
                renderer.stop_by(deadline)
                run_console.stop_by(deadline)
            pipeline.finish()
            abandoned = renderer.close() + run_console.abandoned
            if pipeline.tensorboard is not None:
                pipeline.tensorboard.close(deadline)
            source.close()
            report(final=True)
            refresh(now=True)
            if collecting:
                gc.enable()
    outcome = Outcome(pipeline, intake.rejected + pipeline.rejected, unprocessed, abandoned, intake.not_logged)
    _write_stats(out, source, outcome, console)
    if source.live:
        _closing_lines(out, source, outcome, console)
    return outcome


def _stopped_during_start_up(source: Source, out: Path, console: Console, stop: threading.Event) -> Outcome:
    unprocessed = source.stop(None, stop_requested_at(stop))
    source.close()
    intake = source.intake
    outcome = Outcome(None, Counter(intake.rejected), unprocessed, 0, intake.not_logged)
    _write_stats(out, source, outcome, console)
    _closing_lines(out, source, outcome, console)
    return outcome


def _start_live(console: Console, settings: Settings, stop: threading.Event):  # type: ignore[no-untyped-def]
    """The heavy part of serve and watch: torch, the render workers, the console, the dashboard.
    None, with nothing started, when `stop` is set on the way."""
    import numpy as np
    import torch

    if stop.is_set():
        return None
    from monitor.aggregates.confusion import confusion_counts
    from monitor.outputs.console import MonitorConsole
    from monitor.outputs.dashboard import Dashboard
    from monitor.outputs.render.pool import ProcessRenderer

    if stop.is_set():
        return None

    dashboard = Dashboard(console)
    renderer = ProcessRenderer(priority=settings.render_priority, defer_s=settings.render_defer)
    run_console = MonitorConsole(console, fresh=False, offload=renderer.table)
    run_console.printer = dashboard.print
    torch.set_num_threads(1)  # confusion counts are small; the trainer on this machine needs the cores
    # The first confusion count in a process costs several times the next (numpy sets up on first
    # use): done now, it stays out of the first epoch.
    confusion_counts(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 1)
    # The paired statistics of the sample-level files need scipy.stats, a long import: done now, it
    # stays out of the first epoch whose changes are computed.
    import scipy.stats  # noqa: F401
    # Everything loaded so far lives as long as the process: frozen, the garbage collector's full
    # passes never walk it while holding the GIL the receive thread needs. No collection first: it
    # would also walk every message queued meanwhile.
    gc.freeze()
    # The pipeline thread's pure-Python work hands the GIL to the receive thread sooner.
    sys.setswitchinterval(0.001)
    return renderer, run_console, dashboard


def _start_inline(console: Console, settings: Settings):  # type: ignore[no-untyped-def]
    """Replay's renderer and console: everything drawn in this thread, console.txt written anew."""
    from monitor.outputs.console import MonitorConsole
    from monitor.outputs.render.pool import InlineRenderer

    return InlineRenderer(), MonitorConsole(console if settings.show_tables else None, fresh=True), None


def _write_stats(out: Path, source: Source, outcome: Outcome, console: Console) -> None:
    from monitor.outputs.summary import STATS_FILE, write_stats

    pipeline = outcome.pipeline
    logbook = source.intake.logbook if source.intake.logbook is not None or pipeline is None else pipeline.logbook
    try:
        write_stats(out, frames=source.intake.frames, frame_bytes=source.intake.bytes, rejected=outcome.rejected,
                    runs={} if pipeline is None else {run.run: run.status for run in pipeline.runs.values()},
                    log_stats=None if logbook is None else logbook.stats(), curve_refused=source.curve_refusals)
    except OSError as exc:
        console.print(f"monitor: error: cannot write {out / STATS_FILE}: {exc.strerror or exc}", highlight=False)


def _closing_lines(out: Path, source: Source, outcome: Outcome, console: Console) -> None:
    early = outcome.pipeline is None
    if early and outcome.unprocessed:
        console.print(f"monitor: stopped before processing {outcome.unprocessed} logged message(s) (the stop came "
                      f"during start-up); `monitor replay {out}/<run>/messages.mlog` processes them", highlight=False)
    elif outcome.unprocessed or outcome.abandoned:
        console.print(f"monitor: stopped before processing {outcome.unprocessed} logged message(s) and drawing "
                      f"{outcome.abandoned} figure(s) or table(s); `monitor replay {out}/<run>/messages.mlog` "
                      "redoes them", highlight=False)
    not_logged, logbook = outcome.not_logged, source.intake.logbook
    runs = 0 if early else len(outcome.pipeline.runs)
    console.print(f"monitor: stopped; {source.intake.frames} frames {source.taken()}, "
                  f"{sum(outcome.rejected.values())} rejected, {runs} run(s) written to {out}/"
                  + (" (the stop came during start-up)" if early else "")
                  + (f"; {source.curve_refusals} CURVE handshake(s) refused" if source.curve_refusals else "")
                  + (f"; {not_logged} frame(s) NOT logged ({logbook.last_error})" if logbook and not_logged else ""),
                  highlight=False, soft_wrap=True)
