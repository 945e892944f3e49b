"""How long `monitor serve` takes to listen, on a quiet machine and beside a busy trainer.

A user may start the monitor after the trainer, which then keeps every core busy. The monitor sets
its session to the lowest CPU share (monitor/renderer.py: lower_monitor_share), so when it does
that matters: start-up work done after it gets almost no CPU. The busy trainer is stood in for by
one spinning process per core in a session of its own, at normal priority. Each round starts the
monitor as from a shell (it then moves its work to a session of its own, monitor/session.py) and
times it from the command to its ready file; quiet and busy alternate. With `--compare DIR`
(another checkout of the project) that checkout's monitor is timed in the same rounds.

    python -m bench.monitor_startup [--quick] [--rounds N] [--compare DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, ROOT, Monitor, add_common_args, median, print_table, write_json
from bench.cpu_interference import SPINNER


def _start_spinners() -> list[subprocess.Popen]:
    """One process per core spinning all the time, in a session of its own (as a trainer in another
    terminal); each exits when this program does, even when it is interrupted."""
    return [subprocess.Popen([PYTHON, "-c", SPINNER, "1.0", "normal session"], cwd=ROOT, stdout=subprocess.DEVNULL)
            for _ in range(os.cpu_count() or 1)]


def _time_to_ready(out: Path, tree: Path) -> float:
    started = time.monotonic()
    monitor = Monitor(out, cwd=tree, own_session=False)
    elapsed = time.monotonic() - started
    monitor.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=3, help="starts per checkout and load (default 3)")
    parser.add_argument("--compare", type=Path, default=None, help="another checkout of the project to time too")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    trees = {"this checkout": ROOT}
    if args.compare is not None:
        if not (args.compare / "monitor" / "__main__.py").is_file():
            parser.error(f"--compare {args.compare}: no monitor package there (expected a checkout of this project)")
        trees[str(args.compare)] = args.compare.resolve()
    times: dict[tuple[str, str], list[float]] = {(name, load): [] for name in trees for load in ("quiet", "busy")}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for load in ("quiet", "busy"):
                spinners = _start_spinners() if load == "busy" else []
                try:
                    time.sleep(0.5 if spinners else 0)
                    for name, tree in trees.items():
                        seconds = _time_to_ready(Path(tmp) / f"{round_index}-{load}-{len(times)}", tree)
                        times[(name, load)].append(seconds)
                        print(f"  round {round_index + 1}/{rounds} {load}, {name}: ready after {seconds:.2f} s",
                              flush=True)
                        time.sleep(1.0)  # its workers leave
                finally:
                    for spinner in spinners:
                        spinner.kill()
                        spinner.wait()
    print_table(f"`monitor serve` started from a shell: seconds from the command to listening, median of {rounds}",
                ["checkout", "quiet machine", f"beside {os.cpu_count()} spinning processes", "busy ÷ quiet"],
                [[name, median(times[(name, "quiet")]), median(times[(name, "busy")]),
                  median(times[(name, "busy")]) / median(times[(name, "quiet")])] for name in trees])
    write_json(args.json, {"args": vars(args) | {"json": str(args.json), "compare": str(args.compare)},
                           "seconds": {f"{name} / {load}": values for (name, load), values in times.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
