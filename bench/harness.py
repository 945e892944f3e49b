"""The shared benchmark harness: a `monitor serve` process for tests and benchmarks alike, the process
helpers around it, and the statistics, tables, JSON and machine facts every program under bench/ uses.

Every program under bench/ prints plain-text tables and can write its raw numbers with `--json FILE`.
`MonitorProcess` starts `monitor serve` on a free loopback port, waits until it listens, and owns
it: `stop` sends a signal and waits, `close` always ends it (SIGCONT first if it was stopped, then
SIGTERM, then SIGKILL to it and its render workers). Its output goes to `monitor-PORT.log` beside
the output folder, so the output folder holds only what the monitor wrote. Imports nothing of the
project, so tests and bench/ can both use it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Polls `condition` every 50 ms; raises TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system clock ticks) of every live process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields[1] is ppid (field 4 of proc(5))
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def process_tree(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """`root` and all its live descendants (the monitor and its render workers)."""
    table = _process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a live process and its live descendants."""
    table = _process_table()
    return sum(table[pid][1] for pid in process_tree(root, table)) / CLK_TCK


class MonitorProcess:
    """`monitor serve --out OUT` on a free loopback port (or `port`), listening when the constructor returns.

    Args:
        out: the monitor's output folder.
        *extra: more `monitor serve` arguments.
        port: the port to bind (a restarted monitor takes its predecessor's); default a free one.
        host: the address to bind (another needs `--allow-remote` in `extra`); default loopback.
        own_session: start it in a session of its own, as honcho and systemd do; False: in the
            caller's session, as from a terminal.
        command: the command before `--bind` (default `python -m monitor serve`).
        cwd: where it runs (another checkout of the project runs that checkout's monitor).
        started: wait until the pipeline and the render workers are up (the second line of
            `--ready-file`), so that a stop soon after processes what was sent; False: only until it
            listens (a stop during start-up only keeps the logs).

    Raises:
        RuntimeError: it exited or did not listen within 120 s (the message holds its output).
    """

    def __init__(self, out: Path, *extra: str, port: int | None = None, own_session: bool = True,
                 command: Sequence[str] | None = None, cwd: Path = ROOT, started: bool = True,
                 host: str = "127.0.0.1") -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.endpoint = f"tcp://{host}:{self.port}"
        self.log_path = self.out.parent / f"monitor-{self.port}.log"
        ready = self.out.parent / f"ready-{self.port}"
        ready.unlink(missing_ok=True)
        self.log = open(self.log_path, "ab")
        self.stopped = False
        argv = list(command or [PYTHON, "-m", "monitor", "serve"])
        self.proc = subprocess.Popen([*argv, "--bind", self.endpoint, "--out", str(self.out),
                                      "--ready-file", str(ready), *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     start_new_session=own_session)
        deadline = time.monotonic() + 120
        while not ready.exists() or not (ready.read_text().endswith("started\n") if started
                                         else ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"monitor did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        """Everything the monitor printed so far."""
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        """Sends `sig` (unless it already exited) and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        """SIGKILL to the monitor process alone."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def close(self, timeout: float = 60.0) -> int | None:
        """Ends it whatever its state: SIGCONT, SIGTERM (it drains and exits 0), then SIGKILL to its tree."""
        try:
            if self.proc.poll() is None:
                self._signal_tree(signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_tree(signal.SIGKILL)
                    self.proc.wait(10)
            return self.proc.returncode
        finally:
            self.stopped = False
            self.log.close()

    def _signal_tree(self, sig: int) -> None:
        for pid in process_tree(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def sigstop(self) -> None:
        """Stops the monitor and every process under it (its render workers included)."""
        self._signal_tree(signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        if self.stopped and self.proc.poll() is None:
            self._signal_tree(signal.SIGCONT)
        self.stopped = False

    def cpu_seconds(self) -> float:
        """CPU seconds of the monitor and its render workers."""
        return tree_cpu_seconds(self.proc.pid)

    def cpu_seconds_split(self) -> tuple[float, float]:
        """CPU seconds of the monitor's own process, and of its live descendants (the render workers)."""
        table = _process_table()
        own = table.get(self.proc.pid, (0, 0))[1] / CLK_TCK
        return own, sum(table[pid][1] for pid in process_tree(self.proc.pid, table)) / CLK_TCK - own

    def wait_idle(self, quiet_s: float = 0.6, max_cpu_share: float = 0.1, timeout: float = 60.0) -> float:
        """Waits until the monitor and its workers used under `max_cpu_share` of a core for `quiet_s`,
        so its startup or a pending render does not overlap the next measurement; returns the wait."""
        started = time.monotonic()
        last = self.cpu_seconds()
        while time.monotonic() - started < timeout:
            time.sleep(quiet_s)
            now = self.cpu_seconds()
            if now - last < max_cpu_share * quiet_s:
                break
            last = now
        return time.monotonic() - started

    def __enter__(self) -> "MonitorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in [0, 1]); the 99th percentile of 100 values is the 99th smallest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------- output


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain-text table: left-aligned first column, right-aligned others."""
    rows = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def machine_info() -> dict[str, Any]:
    import importlib.metadata as metadata

    versions = {}
    for name in ("torch", "lightning", "pyzmq", "msgpack", "numpy", "torchmetrics", "matplotlib", "rich"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "versions": versions, "argv": sys.argv}


def runqueue_wait_s() -> float:
    """Seconds this process's threads have spent runnable but waiting for a CPU (the second field of
    each thread's /proc schedstat): the time other work on the machine took from the trainer. Far less
    noisy than wall time, which the host's own neighbours also move. NaN where the kernel keeps no
    schedstat."""
    total = 0
    try:
        for stat in Path("/proc/self/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass  # a thread that ended meanwhile
    except OSError:
        return float("nan")
    return total / 1e9


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short smoke run (fewer repetitions)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw numbers to FILE")


def _json_value(value: Any) -> Any:
    """Paths (a --compare DIR among the arguments) as text; numpy and torch scalars as floats."""
    return str(value) if isinstance(value, Path) else float(value)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_info(), **payload}, indent=1, default=_json_value) + "\n")
    print(f"\nraw numbers written to {path}")


_SINK_CODE = """
import signal, sys, zmq
ctx = zmq.Context(); sock = ctx.socket(zmq.PULL); sock.setsockopt(zmq.RCVHWM, 100000)
sock.bind('tcp://127.0.0.1:0'); print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
stop = []; signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
frames = size = 0
while not stop:
    if sock.poll(100):
        while True:
            try:
                size += len(sock.recv(zmq.NOBLOCK)); frames += 1
            except zmq.Again:
                break
print(frames, size, flush=True)
"""


class PullSink:
    """A bare ZeroMQ PULL socket in another process that drains and counts: a receiver that costs nothing."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PYTHON, "-c", _SINK_CODE], stdout=subprocess.PIPE, text=True)
        self.endpoint = self.proc.stdout.readline().strip()

    def close(self) -> tuple[int, int]:
        """Stops the sink; returns (frames, bytes) it received."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        frames, size = out.split()
        return int(frames), int(size)
