"""Runs every benchmark in turn, prints their tables, and keeps each one's raw numbers and output.

    python -m bench.run_all [--quick] [--out outputs/bench] [--only NAME ...]

Writes <out>/<name>.json and <out>/<name>.txt for each program, and <out>/machine.json (outputs/ is
not tracked by git: the figures that matter go to BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import PYTHON, ROOT, machine_info

PROGRAMS = ("monitor_startup", "emitter_costs", "monitor_ingest", "monitor_render", "analysis_scale", "fit_overhead",
            "gpu_check")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every program")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="folder for JSON and text output")
    parser.add_argument("--only", nargs="*", choices=PROGRAMS, help="run only these programs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "machine.json").write_text(json.dumps(machine_info(), indent=1) + "\n")
    failed = []
    for name in args.only or PROGRAMS:
        command = [PYTHON, "-m", f"bench.{name}", "--json", str(args.out / f"{name}.json")]
        if args.quick:
            command.append("--quick")
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        with open(args.out / f"{name}.txt", "w") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
            code = process.wait()
        print(f"=== {name}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    print(f"\nresults in {args.out}/" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
