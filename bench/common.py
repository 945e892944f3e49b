"""Shared benchmark helpers: statistics, tables, JSON, machine facts, a bare receiver.

Every program under bench/ prints plain-text tables and can write its raw numbers with `--json FILE`.
The `monitor serve` process and the process helpers live in bench/harness.py (tests use them too).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from bench.harness import PYTHON


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
