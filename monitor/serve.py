"""`monitor serve`: frames from the socket, through the one driver (monitor/driver.py).

The socket is bound and the receiver thread (which logs every frame to its run's messages.mlog and
queues it) started before torch, matplotlib or the pipeline are imported, so the monitor listens at
once; what arrives meanwhile is processed once they are loaded.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.driver import TICK_S, Settings, Source, drive
from monitor.ingest.endpoint import CurveServerKeys, check_bind
from monitor.ingest.logbook import REJECTED_LOG
from monitor.ingest.quotas import Limits
from monitor.ingest.receiver import Receiver
from monitor.outputs.report.http import ReportServer
from monitor.ingest.rejections import RateLimitedLines
from monitor.ingest.handoff import Handoff
from monitor.signals import PROCESS_S, STOP_S, stop_on_signals

if TYPE_CHECKING:
    from rich.console import Console

    from monitor.pipeline import Pipeline
    from monitor.outputs.tensorboard import TensorBoardOptions


class SocketSource(Source):
    """Frames from the receiver thread's hand-off queue; the thread receives and logs them."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__(receiver.intake)
        self.receiver = receiver
        self.where = receiver.endpoint

    @property
    def curve_refusals(self) -> int:  # type: ignore[override]
        return self.receiver.curve_refusals

    def feed(self, pipeline: Pipeline, until: float, stop: threading.Event | None) -> bool:
        messages = self.receiver.messages
        while time.monotonic() < until and (stop is None or not stop.is_set()):
            try:
                message, size, resumed = messages.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            pipeline.handle(message, size, resumed=resumed)
        return True

    def stop(self, pipeline: Pipeline | None, requested_at: float) -> int:
        """Stops the receiver (it drains the socket and closes the logs), processes what it queued,
        and discards what is left then (logged, so replay redoes it)."""
        receiver, until = self.receiver, requested_at + PROCESS_S
        receiver.stop()
        while pipeline is not None and (receiver.is_alive() or not receiver.messages.empty()) \
                and time.monotonic() < until:
            self.feed(pipeline, min(time.monotonic() + TICK_S, until), None)
        receiver.messages.close()  # a receiver waiting for room in the queue gives up, so its logs get closed
        receiver.join(max(0.0, requested_at + STOP_S - time.monotonic()))
        return _discard(receiver.messages)

    def close(self) -> None:
        """Nothing: the receiver thread closes the run logs when it ends."""


def serve(bind: str, out: Path, *, allow_remote: bool, max_message_bytes: int, epoch_timeout: float,
          stale_after: float | None = None,
          curve: CurveServerKeys | None, ready_file: Path | None, console: Console,
          stop: threading.Event | None = None, render_priority: str = "idle", render_defer: float = 0.0,
          limits: Limits | None = None,
          tensorboard: TensorBoardOptions | None = None, http: tuple[str, int] | None = None) -> int:
    """Serves until `stop` (or SIGINT/SIGTERM); with `http` (host, port), the report pages under `out`
    over HTTP too (checked by `endpoint.check_http`).

    Returns:
        The exit status: 1 when frames could not be logged (a full disk), else 0.

    Raises:
        BindError: the address cannot be bound.
    """
    endpoint = check_bind(bind, allow_remote)
    out.mkdir(parents=True, exist_ok=True)
    stop = stop or stop_on_signals()
    receiver = Receiver(endpoint, out, max_message_bytes=max_message_bytes, curve=curve, limits=limits)
    receiver.logbook.rejected_path = out / REJECTED_LOG  # refused frames, for `monitor inspect`
    receiver.intake.reporter = RateLimitedLines()
    pages = None if http is None else ReportServer(http[0], http[1], out)  # binds now: a busy port fails early
    receiver.start()
    # The receiver stops taking frames as soon as a stop is asked, even while the start-up goes on.
    threading.Thread(target=lambda: stop.wait() and receiver.stop(), name="monitor-stop", daemon=True).start()
    console.print(f"monitor: listening on {receiver.endpoint}, writing to {out}/ (Ctrl-C or SIGTERM to stop)",
                  highlight=False)
    if pages is not None:
        console.print(f"monitor: report pages at {pages.start().url}", highlight=False)
    if ready_file is not None:
        ready_file.write_text(receiver.endpoint + "\n" + ("" if pages is None else f"http {pages.url}\n"))
    settings = Settings(epoch_timeout=epoch_timeout, stale_after=stale_after, render_priority=render_priority,
                        render_defer=render_defer, tensorboard=tensorboard)
    try:
        outcome = drive(SocketSource(receiver), out, console, settings=settings, stop=stop,
                        on_started=None if ready_file is None else lambda: _append_line(ready_file, "started"))
    finally:
        if pages is not None:
            pages.close()
    return 1 if outcome.not_logged else 0


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as file:
        file.write(line + "\n")


def _discard(messages: Handoff) -> int:
    """Empties the hand-off queue; returns how many messages it held (logged, never processed)."""
    count = 0
    while True:
        try:
            messages.get(block=False)
        except queue.Empty:
            return count
        count += 1
