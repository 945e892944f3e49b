"""Shared benchmark helpers: a `monitor serve` process we own, process CPU, statistics, tables, JSON.

Every program under bench/ prints plain-text tables and can write its raw numbers with `--json FILE`.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import pty
import signal
import socket
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# --------------------------------------------------------------------------------------- processes


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
    """``root`` and all its live descendants (the monitor and its render workers)."""
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
    """User + system CPU seconds of a live process and its live descendants (the monitor and its workers)."""
    table = _process_table()
    return sum(table[pid][1] for pid in process_tree(root, table)) / CLK_TCK


class Ticker(threading.Thread):
    """Sleeps `period_s` at a time and keeps the longest gap between two wake-ups since `reset`: a
    thread that needs the GIL or a core waits about `longest - period_s` when another holds it."""

    def __init__(self, period_s: float) -> None:
        super().__init__(daemon=True)
        self.period_s = period_s
        self.longest = 0.0
        self.stopped = False

    def reset(self) -> None:
        self.longest = 0.0

    def run(self) -> None:
        last = time.perf_counter()
        while not self.stopped:
            time.sleep(self.period_s)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now


class Monitor:
    """A `monitor serve` process on a free loopback port, in its own session (as honcho or systemd
    start it). SIGSTOP and SIGCONT go to it and every process under it. Always call `close()` (it continues a stopped group first)."""

    def __init__(self, out: Path, *extra: str, command: Sequence[str] | None = None, cwd: Path = ROOT,
                 terminal: bool = False, own_session: bool = True) -> None:
        """`terminal`: its output goes to a pseudo-terminal (120×40), as in a real second terminal, so it
        shows its live dashboard; what it writes there is copied to monitor.log. `own_session=False`:
        started in the bench's session, as from a shell."""
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        ready = out / "ready.txt"
        ready.unlink(missing_ok=True)
        self.log_path = out / "monitor.log"
        self._log = open(self.log_path, "ab")
        argv = list(command or [PYTHON, "-m", "monitor", "serve"])
        output, env, self._pty = self._log, None, None
        if terminal:
            self._pty, output = pty.openpty()
            fcntl.ioctl(output, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            env = {**os.environ, "TERM": "xterm-256color"}
            threading.Thread(target=self._copy_terminal, daemon=True).start()
        self.proc = subprocess.Popen([*argv, "--bind", "tcp://127.0.0.1:0", "--out", str(out),
                                      "--ready-file", str(ready), *extra], env=env,
                                     stdout=output, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=own_session)
        if terminal:
            os.close(output)  # the monitor holds the terminal's other end now
        self.stopped = False
        deadline = time.monotonic() + 120
        while not ready.exists() or not ready.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"monitor did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        self.endpoint = ready.read_text().splitlines()[0]

    def _copy_terminal(self) -> None:
        """Drains the pseudo-terminal (a full one would block the monitor) into monitor.log."""
        while True:
            try:
                data = os.read(self._pty, 65536)
            except OSError:  # the monitor exited and the terminal closed
                return
            if not data:
                return
            try:
                self._log.write(data)
            except ValueError:  # closed by close()
                return

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def own_cpu_seconds(self) -> float:
        """The `monitor serve` process alone, its render workers left out."""
        return _process_table()[self.proc.pid][1] / CLK_TCK

    def wait_idle(self, quiet_s: float = 0.6, max_cpu_share: float = 0.1, timeout: float = 60.0) -> float:
        """Waits until the monitor (and its render worker) used under `max_cpu_share` of a core for
        `quiet_s`, so its startup or a pending render does not overlap the next measurement."""
        started = time.monotonic()
        last = self.cpu_seconds()
        while time.monotonic() - started < timeout:
            time.sleep(quiet_s)
            now = self.cpu_seconds()
            if now - last < max_cpu_share * quiet_s:
                break
            last = now
        return time.monotonic() - started

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

    def close(self, timeout: float = 60.0) -> int | None:
        """SIGCONT if stopped, SIGTERM (it drains and exits 0), SIGKILL to it and its workers if that times out."""
        try:
            if self.proc.poll() is None:
                self.sigcont()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_tree(signal.SIGKILL)
                    self.proc.wait(10)
            return self.proc.returncode
        finally:
            if self._pty is not None:
                os.close(self._pty)
                self._pty = None
            self._log.close()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
