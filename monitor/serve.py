"""`monitor serve`: the receiver thread feeds the pipeline; figures and tables are drawn in worker processes.

Start-up: the socket is bound and the receiver thread (which logs every frame to its run's
messages.mlog and queues it) started before torch, matplotlib or the pipeline are imported, so the
monitor listens at once; what arrives meanwhile is processed once they are loaded.

Stop (Ctrl-C, SIGTERM): bounded in time whatever the senders do. The receiver drains the socket
(`receiver.DRAIN_MAX_S` at most) and closes the logs; queued messages are processed for
`signals.PROCESS_S`; pending renders and tables get what is left of `signals.STOP_S`, then are abandoned and the
workers killed; summary.json and stats are written. Whatever was not processed or drawn is in the
logs, and `monitor replay` redoes it; the closing line gives the numbers.
"""

from __future__ import annotations

import gc
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.endpoint import CurveServerKeys, check_bind
from monitor.logbook import REJECTED_LOG
from monitor.quotas import Limits
from monitor.receiver import Receiver
from monitor.rejections import RateLimitedLines
from monitor.signals import PROCESS_S, STOP_S, stop_on_signals, stop_requested_at

if TYPE_CHECKING:
    from rich.console import Console

    from monitor.pipeline import Pipeline

TICK_S = 0.25


def serve(bind: str, out: Path, *, allow_remote: bool, max_message_bytes: int, epoch_timeout: float,
          stale_after: float | None = None,
          curve: CurveServerKeys | None, ready_file: Path | None, console: Console,
          stop: threading.Event | None = None, render_priority: str = "idle", limits: Limits | None = None) -> int:
    """Serves until `stop` (or SIGINT/SIGTERM); returns the exit status: 1 when frames could not be
    logged (a full disk), else 0.

    Raises:
        BindError: the address cannot be bound.
    """
    endpoint = check_bind(bind, allow_remote)
    out.mkdir(parents=True, exist_ok=True)
    stop = stop or stop_on_signals()
    receiver = Receiver(endpoint, out, max_message_bytes=max_message_bytes, curve=curve, limits=limits)
    reporter = RateLimitedLines()
    receiver.logbook.rejected_path = out / REJECTED_LOG  # refused frames, for `monitor inspect`
    receiver.intake.reporter = reporter  # rejections and logging failures explained
    receiver.start()
    # The receiver stops taking frames as soon as a stop is asked, even while the start-up below goes on.
    threading.Thread(target=lambda: stop.wait() and receiver.stop(), name="monitor-stop", daemon=True).start()
    console.print(f"monitor: listening on {receiver.endpoint}, writing to {out}/ (Ctrl-C or SIGTERM to stop)",
                  highlight=False)
    if ready_file is not None:
        ready_file.write_text(receiver.endpoint + "\n")
    pipeline, renderer, records, dashboard = _start_pipeline(out, console, epoch_timeout, stale_after, render_priority)
    pipeline.logbook, pipeline.reporter = receiver.logbook, reporter

    def refresh(now: bool = False) -> None:
        if not dashboard.active:
            return
        from monitor.dashboard import dashboard_caption, dashboard_rows

        caption = dashboard_caption(frames=receiver.intake.frames, rejected=receiver.intake.rejected + pipeline.rejected,
                                    render_queue=renderer.pending)
        dashboard.show(dashboard_rows(pipeline.runs.values()), caption, endpoint=receiver.endpoint, now=now)

    with dashboard:
        while not stop.is_set():
            _process(receiver, pipeline, until=time.monotonic() + TICK_S, stop=stop)
            pipeline.tick()
            for line in reporter.take():
                records.note(line)
            refresh()
        stopping = stop_requested_at(stop)
        # The hand-off queue may hold very many messages (a flood): a full collection would walk them all
        # with the GIL held. The stop makes few objects, and reference counting frees them.
        gc.disable()
        receiver.stop()
        while (receiver.is_alive() or not receiver.messages.empty()) and time.monotonic() < stopping + PROCESS_S:
            _process(receiver, pipeline, until=min(time.monotonic() + TICK_S, stopping + PROCESS_S), stop=None)
        receiver.messages.close()  # a receiver waiting for room in the queue gives up, so its logs get closed
        receiver.join(max(0.0, stopping + STOP_S - time.monotonic()))
        unprocessed = _discard(receiver)
        renderer.stop_by(stopping + STOP_S)
        records.stop_by(stopping + STOP_S)
        pipeline.finish()
        abandoned = renderer.close() + records.abandoned
        for line in reporter.take(final=True):
            records.note(line)
        refresh(now=True)
    from monitor.pipeline import STATS_FILE, write_stats

    rejected = receiver.intake.rejected + pipeline.rejected
    not_logged = receiver.intake.not_logged
    try:
        write_stats(out, frames=receiver.intake.frames, frame_bytes=receiver.intake.bytes, rejected=rejected,
                    pipeline=pipeline, curve_refused=receiver.curve_refusals)
    except OSError as exc:
        console.print(f"monitor: error: cannot write {out / STATS_FILE}: {exc.strerror or exc}", highlight=False)
    if unprocessed or abandoned:
        console.print(f"monitor: stopped before processing {unprocessed} logged message(s) and drawing {abandoned} "
                      f"figure(s) or table(s); `monitor replay {out}/<run>/messages.mlog` redoes them",
                      highlight=False)
    console.print(f"monitor: stopped; {receiver.intake.frames} frames received, {sum(rejected.values())} rejected, "
                  f"{len(pipeline.runs)} run(s) written to {out}/"
                  + (f"; {receiver.curve_refusals} CURVE handshake(s) refused" if receiver.curve_refusals else "")
                  + (f"; {not_logged} frame(s) NOT logged ({receiver.logbook.last_error})" if not_logged else ""),
                  highlight=False, soft_wrap=True)
    return 1 if not_logged else 0


def _start_pipeline(out: Path, console: Console, epoch_timeout: float, stale_after: float | None,
                    render_priority: str):
    """The heavy part, imported and started once the receiver listens: torch, the pipeline, the
    render workers, the dashboard."""
    import numpy as np
    import torch

    from monitor.confusion import confusion_counts
    from monitor.console import MonitorConsole
    from monitor.dashboard import Dashboard
    from monitor.pipeline import Pipeline
    from monitor.render.pool import ProcessRenderer

    dashboard = Dashboard(console)
    pipeline: Pipeline | None = None

    def artifact_written(path: str) -> None:
        if pipeline is not None:
            pipeline.record_artifact(Path(path))

    renderer = ProcessRenderer(on_done=artifact_written, priority=render_priority)
    records = MonitorConsole(console, fresh=False, offload=renderer.table)
    records.printer = dashboard.print
    pipeline = Pipeline(out, renderer, records, epoch_timeout=epoch_timeout, stale_after=stale_after)
    torch.set_num_threads(1)  # confusion counts are small; the trainer on this machine needs the cores
    # The first confusion count in a process costs several times the next (numpy sets up on first
    # use). Done now, it stays out of the first epoch.
    confusion_counts(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 1)
    # Everything loaded so far lives as long as the process: freezing it keeps the garbage collector's
    # full passes (~190 ms holding the GIL, bench/gil_pauses.py) from pausing the receive thread. No
    # collection first: it would also walk every message queued meanwhile, which a flood makes millions.
    gc.freeze()
    # The pipeline thread's pure-Python work (tables) hands the GIL over every switch interval when
    # the receive thread asks; 1 ms instead of 5 ms shortens its waits (bench/gil_pauses.py).
    sys.setswitchinterval(0.001)
    return pipeline, renderer, records, dashboard


def _process(receiver: Receiver, pipeline: Pipeline, until: float, stop: threading.Event | None) -> None:
    while time.monotonic() < until and (stop is None or not stop.is_set()):
        try:
            message, size, resumed = receiver.messages.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return
        pipeline.handle(message, size, resumed=resumed)


def _discard(receiver: Receiver) -> int:
    """Empties the hand-off queue; returns how many messages it held (logged, never processed)."""
    count = 0
    while True:
        try:
            receiver.messages.get(block=False)
        except queue.Empty:
            return count
        count += 1
