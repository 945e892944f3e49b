"""What in the monitor's pipeline thread can keep the receive thread waiting, per message, and why.

Feeds one run's frames (bench/monitor_render.py's schedule, 1,000 classes by default) through a
Pipeline whose renderer only pickles the jobs (what ProcessRenderer.submit costs the monitor), while
a second thread wakes every 1 ms and notes its longest gap; the receiver thread would wait as long.
Garbage collections longer than 5 ms are recorded with gc.callbacks. Run twice, with and without
--gc-freeze, to see the effect of the proposed fix.

    python -m bench.gil_pauses [--classes 1000] [--gc-freeze] [--switch-interval-ms 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import io
import pickle
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bench.common import Ticker, add_common_args, print_table, write_json
from bench.monitor_render import epoch_schedule
from monitor.console import MonitorConsole
from monitor.pipeline import Pipeline
from trainer_side import protocol


class _PickleRenderer:
    def submit(self, job: object) -> None:
        pickle.dumps(job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--classes", type=int, default=1000, help="class count (default 1000)")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after the imports (the proposed fix)")
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="sys.setswitchinterval, in ms (Python's default is 5; monitor serve uses 1)")
    args = parser.parse_args(argv)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    epochs = 2 if args.quick else 3
    messages = [protocol.decode(frame) for _, frame, _ in epoch_schedule("pauses", args.classes, epochs, 1.0)]
    collections: list[float] = []
    started: list[float] = []
    gc.callbacks.append(lambda phase, info: started.append(time.perf_counter()) if phase == "start"
                        else collections.append(time.perf_counter() - started[-1]))
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pauses-") as tmp:
        terminal = Console(file=io.StringIO(), width=100)
        console = MonitorConsole(terminal, fresh=False)
        console.printer = terminal.print  # what serve's dashboard does in plain mode
        pipeline = Pipeline(Path(tmp), _PickleRenderer(), console)
        ticker = Ticker(0.001)
        ticker.start()
        for message in messages:
            time.sleep(0.02)
            ticker.reset()
            collections[:] = []
            begun = time.perf_counter()
            pipeline.handle(message, 0)
            took = time.perf_counter() - begun
            time.sleep(0.005)
            rows.append([f"{message.kind} (epoch {message.get('epoch', '-')})", 1e3 * took, 1e3 * ticker.longest,
                         1e3 * max((c for c in collections), default=0.0), sum(c > 0.005 for c in collections)])
        ticker.stopped = True
    print_table(f"Pipeline thread per message, {args.classes} classes" + (" (gc.freeze)" if args.gc_freeze else "")
                + f", GIL switch interval {sys.getswitchinterval() * 1000:g} ms",
                ["message", "handle ms", "other thread's longest gap ms", "longest GC ms", "GCs > 5 ms"], rows)
    write_json(args.json, {"rows": rows, "classes": args.classes, "gc_freeze": args.gc_freeze,
                           "switch_interval_s": sys.getswitchinterval()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
