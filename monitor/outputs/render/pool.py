"""Renderers run jobs: inline (replay, tests) or in worker processes, so a slow figure never
holds the GIL that the receive loop needs."""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, TimeoutError
from typing import Callable

from monitor.outputs.render.jobs import ConfusionJob, HistoryJob, TableJob, run_job

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

    def stop_by(self, deadline: float) -> None:
        """Nothing to bound: every job is drawn in the caller's thread."""

    def close(self) -> int:
        """Draws what `submit` held back; returns 0 (nothing is ever abandoned inline)."""
        self.drain()
        return 0


# Which lane runs a job: the confusion matrix of counts is the slowest figure, so it gets a worker of
# its own and the other figures (the grid, the history curves, the other confusion views) do not
# queue behind it. A file always goes to the same lane, so jobs for one file still run in submission
# order and the last one wins.
CONFUSION_LANE, FIGURE_LANE = 0, 1
LANES = 2
PRIORITIES = ("idle", "normal")
IDLE_CORES_TO_DRAW = 1.0  # a figure is drawn at once when at least this much CPU was idle lately
BUSY_EVERY_S = 0.25  # how often the deferral looks at the CPUs again
# "Lately": every reading of the last second. A trainer's single-threaded moments (an epoch's end,
# where the figures come from) leave a core idle for a fraction of that, and must not open the gate.
QUIET_READINGS = 4


class IdleCores:
    """The machine's idle CPU capacity, in cores, between two readings of /proc/stat (idle and
    iowait time; time the hypervisor stole counts as busy). None where there is no /proc/stat."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._last = self._read()

    def _read(self) -> tuple[int, int, int] | None:
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            return None
        fields = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
        cpus = sum(1 for line in lines[1:] if line.startswith(b"cpu"))
        return sum(fields), fields[3] + fields[4], max(1, cpus)

    def take(self) -> float | None:
        """Idle cores since the last call (or since construction)."""
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return now[2] * (now[1] - last[1]) / (now[0] - last[0])


class ProcessRenderer:
    """Worker processes (two figure lanes and one for tables, one worker each) that run jobs in
    submission order per file.

    `priority="idle"` (the default) runs each worker under SCHED_IDLE, or nice 19 where the OS has
    no SCHED_IDLE (`yield_cpu`, set by each worker on itself): they get only CPU time that nothing
    else wants, so a CPU-bound trainer on the same machine gets the cores first (its figures wait
    until the CPU has time).
    `priority="normal"` renders as soon as a job arrives.

    With `defer_s` > 0, `busy` says whether a trainer keeps the machine busy: a run is under way
    (`live()`) and one of the last QUIET_READINGS readings (BUSY_EVERY_S apart) found less than
    IDLE_CORES_TO_DRAW cores idle. The pipeline holds a run's ready epochs on it, at most `defer_s`
    seconds (`Pipeline._yield_to_trainer`), so that their files and figures come when a core is
    free: an idle-priority worker that takes a busy trainer's short gaps still costs it (run-queue
    waits, cold caches, a core the host shares); a figure drawn later does not. The renderer
    itself draws whatever it is given.
    """

    def __init__(self, on_done: Callable[[str], None] | None = None, *, priority: str = "idle",
                 defer_s: float = 0.0, live: Callable[[], bool] = lambda: False) -> None:
        if priority not in PRIORITIES:
            raise ValueError(f"render priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        if not defer_s >= 0:
            raise ValueError(f"render deferral must be a non-negative number of seconds, got {defer_s!r}")
        # spawn, not fork: the parent has ZeroMQ threads, which must never be forked.
        context = multiprocessing.get_context("spawn")
        self._lanes = [ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_init_worker,
                                           initargs=(priority,)) for _ in range(LANES)]
        self._pending: set[Future] = set()
        # A history drawing not yet started is superseded by the next one for the same folder (only
        # the last drawing survives anyway), so a busy machine does not pile up redraws.
        self._queued_history: dict[object, Future] = {}
        self._lock = threading.Lock()
        self.on_done = on_done
        self.failures = 0
        self.superseded = 0
        self.abandoned = 0
        self._deadline: float | None = None
        self._abandoning = False  # set by `close` when it kills the workers: their jobs' errors are expected
        for lane in self._lanes:
            lane.submit(_warm_up)  # import matplotlib now, not when the first epoch is due
        # Tables are pure-Python work too: a third worker draws them at
        # the same priority, so the monitor's own process does next to nothing when an epoch ends.
        self._tables = ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_init_worker,
                                           initargs=(priority,))
        self._tables.submit(_warm_up_tables)
        self.defer_s, self.live = defer_s, live
        self.busy = False  # whether a trainer keeps the machine busy now (updated every BUSY_EVERY_S)
        self._closing = threading.Event()
        if defer_s > 0:
            threading.Thread(target=self._watch_busy, args=(IdleCores(),), name="render-deferral",
                             daemon=True).start()

    def _watch_busy(self, idle: IdleCores) -> None:
        recent: collections.deque[bool] = collections.deque(maxlen=QUIET_READINGS)  # busy, per reading
        while not self._closing.wait(BUSY_EVERY_S):
            try:
                cores = idle.take()
                recent.append(cores is not None and cores < IDLE_CORES_TO_DRAW)
                self.busy = any(recent) and self.live()
            except Exception as exc:  # noqa: BLE001 - a broken reading must not hold epochs for ever
                log.error("render deferral stopped (%s: %s); epochs are drawn at once from now on",
                          type(exc).__name__, exc)
                self.busy, self.defer_s = False, 0.0
                return

    def submit(self, job: object) -> None:
        counts = isinstance(job, ConfusionJob) and job.view == "counts"
        lane = self._lanes[CONFUSION_LANE if counts else FIGURE_LANE]
        future = lane.submit(run_job, job)
        previous = None
        with self._lock:
            self._pending.add(future)
            if isinstance(job, HistoryJob):
                previous = self._queued_history.pop(job.folder, None)
                self._queued_history[job.folder] = future
        # Outside the lock: cancel() runs the done callback, which takes it. Submitted first, so the
        # newer drawing is already queued behind the one being withdrawn.
        if previous is not None and previous.cancel():
            self.superseded += 1
        future.add_done_callback(self._done)

    def table(self, job: TableJob) -> Future:
        """Draws a table in the table worker; the future holds `TableJob.run`'s texts."""
        future = self._tables.submit(job.run)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._table_done)
        return future

    def _table_done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
            for folder, queued in list(self._queued_history.items()):
                if queued is future:
                    del self._queued_history[folder]
        if future.cancelled() or self._abandoning:
            return
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

    def stop_by(self, deadline: float) -> None:
        """From now on `drain` waits until the monotonic `deadline` at most, and `close` abandons
        whatever is still pending then (a stop must not wait for renders without bound)."""
        self._deadline = deadline

    def drain(self) -> None:
        """Waits for every pending job (until the `stop_by` deadline, if one is set)."""
        with self._lock:
            futures = list(self._pending)
        for future in futures:
            timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            try:
                future.exception(timeout)  # waits; errors were already logged by _done
            except (CancelledError, TimeoutError):
                pass

    def close(self) -> int:
        """Drains, then abandons what is still pending (after a `stop_by` deadline): the workers are
        killed, and their jobs end with BrokenProcessPool. Returns the number of jobs abandoned."""
        self._closing.set()
        self.drain()
        with self._lock:
            left = [future for future in self._pending if not future.done()]
        pools = (*self._lanes, self._tables)
        if left:
            self._abandoning = True
            for pool in pools:
                # The workers ignore SIGTERM (see `_init_worker`), so they are killed. The executor has no
                # public way to stop a running job before Python 3.14 (`terminate_workers`).
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.kill()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self.abandoned = len(left)
        return self.abandoned


def _warm_up_tables() -> None:
    import monitor.outputs.render.tables  # noqa: F401


def _warm_up() -> None:
    import monitor.outputs.render.confusion_figures  # noqa: F401
    import monitor.outputs.render.history_figures  # noqa: F401
    import monitor.outputs.render.sample_grid  # noqa: F401
    import monitor.outputs.render.save  # noqa: F401


def _init_worker(priority: str = "idle") -> None:
    """Render-worker start-up: stop signals are the parent's business, and the worker yields the CPU.

    Ctrl-C and a process manager's SIGTERM reach the whole process group; the parent decides when
    the worker stops, so the worker must not die first.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if priority == "idle":
        yield_cpu()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """A monitor killed with SIGKILL cannot stop its workers, and a worker blocked on the job queue
    never notices (it holds that pipe's write end itself): it would live on, orphaned, for ever."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


def yield_cpu() -> None:
    """Give the calling process only CPU time that nothing else wants: SCHED_IDLE where the OS has
    it, else nice 19. Changes this process alone (no session, no cgroup); needs no privilege."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19 - os.nice(0))
