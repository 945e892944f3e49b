"""Ctrl-C and SIGTERM as an Event, for the long-running commands (serve, watch).

The signals are blocked in every thread and taken synchronously by one thread with a timed wait.
With Python handlers alone (or a blocking sigwait), a SIGTERM sent right after a SIGCONT can be left
pending with no thread woken for it, leaving a monitor that a process manager cannot stop gracefully.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing import resource_tracker

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# A stop is bounded in time whatever the senders do (serve, watch), counted from when it is seen:
PROCESS_S = 4.0  # taking in and processing what is already queued or written
STOP_S = 8.0  # everything but the final writes and the workers' exit (pending renders get what is left)


class Stop(threading.Event):
    """An Event that keeps when it was first set (`time.monotonic()`, in `at`): a stop's time limits
    count from the request, not from when a busy loop noticed it."""

    at: float | None = None

    def set(self) -> None:
        if self.at is None:
            self.at = time.monotonic()
        super().set()


def stop_requested_at(stop: threading.Event) -> float:
    """When `stop` was set (a `Stop`), else now."""
    return getattr(stop, "at", None) or time.monotonic()


def stop_on_signals() -> Stop:
    """Call first, before imports start threads: threads inherit the blocked mask.
    The first signal sets the event; a second one ends the process at once (exit status 130)."""
    stop = Stop()

    def on_signal(*_: object) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    # A thread started before the mask (a BLAS pool started by an earlier numpy import) can still be
    # handed a signal; a handler makes that harmless. Each signal reaches exactly one of the two paths.
    for number in STOP_SIGNALS:
        signal.signal(number, on_signal)
    # multiprocessing's resource tracker, when it starts (with the render worker), blocks and then
    # unblocks SIGINT/SIGTERM in the calling thread, undoing our mask; started now, it never runs that again.
    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def wait_for_signals() -> None:
        while True:
            # Timed, not sigwait: a signal that arrives while the threads are still resuming from
            # SIGCONT can stay pending without waking anyone; each new wait looks at the pending set.
            info = signal.sigtimedwait(STOP_SIGNALS, 0.5)
            # After a SIGSTOP/SIGCONT the wait can return an empty record (si_signo 0): not a signal.
            if info is not None and info.si_signo in STOP_SIGNALS:
                on_signal()

    threading.Thread(target=wait_for_signals, name="monitor-signals", daemon=True).start()
    return stop
