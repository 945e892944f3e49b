"""`monitor serve`: the receiver thread feeds the pipeline; figures and tables are drawn in worker processes."""

from __future__ import annotations

import gc
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from monitor.confusion import confusion_counts
from monitor.console import MonitorConsole
from monitor.dashboard import Dashboard, dashboard_caption, dashboard_rows
from monitor.endpoint import CurveServerKeys, check_bind
from monitor.logbook import REJECTED_LOG
from monitor.pipeline import STATS_FILE, Pipeline, write_stats
from monitor.receiver import Receiver
from monitor.rejections import RateLimitedLines
from monitor.renderer import ProcessRenderer, lower_monitor_share
from monitor.signals import stop_on_signals

TICK_S = 0.25


def serve(bind: str, out: Path, *, allow_remote: bool, max_message_bytes: int, epoch_timeout: float,
          curve: CurveServerKeys | None, ready_file: Path | None, console: Console,
          stop: threading.Event | None = None, render_priority: str = "idle") -> int:
    endpoint = check_bind(bind, allow_remote)
    out.mkdir(parents=True, exist_ok=True)
    stop = stop or stop_on_signals()
    receiver = Receiver(endpoint, out, max_message_bytes=max_message_bytes, curve=curve)
    dashboard = Dashboard(console)
    pipeline: Pipeline | None = None

    def artifact_written(path: str) -> None:
        if pipeline is not None:
            pipeline.record_artifact(Path(path))

    renderer = ProcessRenderer(on_done=artifact_written, priority=render_priority)
    records = MonitorConsole(console, fresh=False, offload=renderer.table)
    records.printer = dashboard.print
    pipeline = Pipeline(out, renderer, records, epoch_timeout=epoch_timeout)
    pipeline.logbook, reporter = receiver.logbook, RateLimitedLines()
    receiver.logbook.rejected_path = out / REJECTED_LOG  # refused frames, for `monitor inspect`
    receiver.intake.reporter = pipeline.reporter = reporter  # rejections and logging failures explained
    torch.set_num_threads(1)  # confusion counts are small; the trainer on this machine needs the cores
    # The first confusion count in a process costs 6.5 ms, the next 0.75 ms (43 classes, measured
    # apart): torch and torchmetrics set up on first use. Done now, it stays out of the first epoch.
    confusion_counts(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 1)
    receiver.start()
    # Everything loaded so far lives as long as the process: freezing it keeps the garbage collector's
    # full passes (~190 ms holding the GIL, bench/gil_pauses.py) from pausing the receive thread.
    gc.collect()
    gc.freeze()
    # The pipeline thread's pure-Python work (tables) hands the GIL over every switch interval when
    # the receive thread asks; 1 ms instead of 5 ms shortens its waits (bench/gil_pauses.py).
    sys.setswitchinterval(0.001)
    # Only now: lowered before start-up, serve took 41.9 to 81.0 s to listen beside a trainer that keeps
    # both cores busy, against 10.3 to 11.4 s lowered here (bench/monitor_startup.py, BENCHMARKS §3).
    lower_monitor_share(render_priority)
    console.print(f"monitor: listening on {receiver.endpoint}, writing to {out}/ (Ctrl-C or SIGTERM to stop)",
                  highlight=False)
    if ready_file is not None:
        ready_file.write_text(receiver.endpoint + "\n")

    def refresh(now: bool = False) -> None:
        if not dashboard.active:
            return
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
        # Graceful stop: the receiver drains the socket, then every queued message and render completes.
        receiver.stop()
        while receiver.is_alive() or not receiver.messages.empty():
            _process(receiver, pipeline, until=time.monotonic() + TICK_S, stop=None)
        receiver.join()
        pipeline.finish()
        renderer.close()
        for line in reporter.take(final=True):
            records.note(line)
        refresh(now=True)
    rejected = receiver.intake.rejected + pipeline.rejected
    not_logged = receiver.intake.not_logged
    try:
        write_stats(out, frames=receiver.intake.frames, frame_bytes=receiver.intake.bytes, rejected=rejected,
                    pipeline=pipeline)
    except OSError as exc:
        console.print(f"monitor: error: cannot write {out / STATS_FILE}: {exc.strerror or exc}", highlight=False)
    console.print(f"monitor: stopped; {receiver.intake.frames} frames received, {sum(rejected.values())} rejected, "
                  f"{len(pipeline.runs)} run(s) written to {out}/"
                  + (f"; {not_logged} frame(s) NOT logged ({receiver.logbook.last_error})" if not_logged else ""),
                  highlight=False, soft_wrap=True)
    return 1 if not_logged else 0


def _process(receiver: Receiver, pipeline: Pipeline, until: float, stop: threading.Event | None) -> None:
    while time.monotonic() < until and (stop is None or not stop.is_set()):
        try:
            message, size, resumed = receiver.messages.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return
        pipeline.handle(message, size, resumed=resumed)
