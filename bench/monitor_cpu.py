"""Where a live monitor's CPU goes during a demo fit: its own process (receive, aggregate, write, and
whatever it draws itself) against its render workers.

The monitor's own process runs at normal priority, so its CPU is what competes with the trainer as
an equal; the workers run at idle priority. With `--compare DIR` (another checkout of the project,
e.g. `git worktree add /tmp/old <commit>`), the monitor of DIR and this checkout's serve the same
demo fits in turn, so the two are compared in one run. The trainer is always this checkout's demo.
Before the fits, each monitor's own CPU is also counted while it sits idle (`--idle-s`).

By default the monitors write to a file, as under honcho or in CI, and draw no dashboard. With
`--terminal` each runs on a pseudo-terminal, as `monitor serve` in a second terminal does, and draws
its live dashboard there.

    python -m bench.monitor_cpu [--quick] [--fits N] [--compare DIR] [--terminal] [--idle-s S] [--json FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, ROOT, Monitor, add_common_args, median, print_table, write_json


def demo_fit(endpoint: str, run: str, epochs: int) -> float:
    started = time.perf_counter()
    subprocess.run([PYTHON, "-m", "trainer_side.demo", "--epochs", str(epochs), "--run", run, "--endpoint", endpoint],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--fits", type=int, default=None, help="demo fits per monitor (default 4; --quick 1)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per demo fit (default 3)")
    parser.add_argument("--terminal", action="store_true",
                        help="run each monitor on a pseudo-terminal, as in a second terminal, so its live dashboard "
                             "is drawn (default: output to a file, as under honcho or CI)")
    parser.add_argument("--idle-s", type=float, default=None,
                        help="first measure each monitor's own CPU while idle for this long (default 10; --quick 2)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="another checkout whose monitor serves the same fits, alternately with this one's")
    args = parser.parse_args(argv)
    fits = args.fits or (1 if args.quick else 4)
    idle_s = args.idle_s if args.idle_s is not None else (2.0 if args.quick else 10.0)
    trees = {"this checkout": ROOT}
    if args.compare is not None:
        if not (args.compare / "monitor" / "__main__.py").is_file():
            parser.error(f"--compare {args.compare}: no monitor package there (expected a checkout of this project)")
        trees[str(args.compare)] = args.compare.resolve()
    results: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-monitor-cpu-") as tmp:
        monitors = {name: Monitor(Path(tmp) / f"m{i}", cwd=tree, terminal=args.terminal)
                    for i, (name, tree) in enumerate(trees.items())}
        try:
            for monitor in monitors.values():
                monitor.wait_idle()
            idle_start = {name: monitor.own_cpu_seconds() for name, monitor in monitors.items()}
            time.sleep(idle_s)
            idle = {name: monitor.own_cpu_seconds() - idle_start[name] for name, monitor in monitors.items()}
            for fit in range(fits):
                for name, monitor in monitors.items():
                    own, total = monitor.own_cpu_seconds(), monitor.cpu_seconds()
                    fit_s = demo_fit(monitor.endpoint, f"cpu-{fit}-{len(results[name])}", args.epochs)
                    monitor.wait_idle()
                    results[name].append({"fit_s": fit_s, "own_cpu_s": monitor.own_cpu_seconds() - own,
                                          "total_cpu_s": monitor.cpu_seconds() - total})
                    print(f"  fit {fit + 1}/{fits}, monitor of {name}: fit {fit_s:.1f} s, monitor own "
                          f"{results[name][-1]['own_cpu_s']:.2f} CPU-s, with workers {results[name][-1]['total_cpu_s']:.2f}",
                          flush=True)
        finally:
            codes = {name: monitor.close() for name, monitor in monitors.items()}
    print_table(f"Monitor CPU per {args.epochs}-epoch demo fit, median of {fits} (clock ticks of 10 ms; "
                "own = `monitor serve` itself, at normal priority; output to "
                + ("a pseudo-terminal, dashboard drawn)" if args.terminal else "a file, no dashboard)"),
                ["monitor", "own CPU s", "render workers CPU s", "own per epoch ms", "fit s",
                 f"own CPU s while idle {idle_s:g} s"],
                [[name, median([r["own_cpu_s"] for r in runs]),
                  median([r["total_cpu_s"] - r["own_cpu_s"] for r in runs]),
                  1e3 * median([r["own_cpu_s"] for r in runs]) / args.epochs, median([r["fit_s"] for r in runs]),
                  idle[name]]
                 for name, runs in results.items()])
    print(f"monitor exit codes: {codes}")
    write_json(args.json, {"args": vars(args) | {"json": str(args.json), "compare": str(args.compare)},
                           "results": results, "idle_own_cpu_s": idle, "monitor_exit_codes": codes})
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
