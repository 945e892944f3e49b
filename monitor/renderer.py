"""Renderers run jobs: inline (replay, tests) or in a worker process, so a slow figure never
holds the GIL that the receive loop needs."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable

from monitor.jobs import HistoryJob, run_job

log = logging.getLogger("monitor")


class InlineRenderer:
    """Runs jobs in the caller's thread. History figures are redrawn every epoch but only the last
    drawing survives, so a replay holds them back and draws each once, in `drain` (same bytes)."""

    def __init__(self, on_done: Callable[[str], None] | None = None) -> None:
        self.on_done = on_done
        self.failures = 0
        self._held: dict[object, HistoryJob] = {}

    def submit(self, job: object) -> None:
        if isinstance(job, HistoryJob):
            self._held[job.folder] = job
            return
        self._run(job)

    def _run(self, job: object) -> None:
        try:
            written = run_job(job)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - one bad artifact must not stop the others
            self.failures += 1
            log.error("rendering %s failed: %s: %s", type(job).__name__, type(exc).__name__, exc)
            return
        if self.on_done is not None:
            self.on_done(written)

    def drain(self) -> None:
        held, self._held = self._held, {}
        for job in held.values():
            self._run(job)

    def close(self) -> None:
        self.drain()


class ProcessRenderer:
    """One worker process; jobs run in submission order, so the last job for a file wins."""

    def __init__(self, on_done: Callable[[str], None] | None = None) -> None:
        # spawn, not fork: the parent has ZeroMQ threads, which must never be forked.
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker)
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self.on_done = on_done
        self.failures = 0
        self._pool.submit(_warm_up)  # import matplotlib now, not when the first epoch is due

    def submit(self, job: object) -> None:
        future = self._pool.submit(run_job, job)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
        exc = future.exception()
        if exc is not None:
            self.failures += 1
            log.error("rendering failed: %s: %s", type(exc).__name__, exc)
        elif self.on_done is not None:
            self.on_done(future.result())

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def drain(self) -> None:
        with self._lock:
            futures = list(self._pending)
        for future in futures:
            future.exception()  # waits; errors were already logged by _done

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)


def _warm_up() -> None:
    import monitor.render.figures  # noqa: F401
    import monitor.render.save  # noqa: F401


def _init_worker() -> None:
    """Render-worker start-up: stop signals are the parent's business, and the worker yields the CPU.

    Ctrl-C and a process manager's SIGTERM reach the whole process group; the parent decides when
    the worker stops (after the pending renders), so the worker must not die first.
    """
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # On a CPU-only machine the trainer needs the cores more than a figure does (bench/: a niced
    # monitor cut the fit overhead on 2 cores from x1.31 to x1.14).
    os.nice(10)
