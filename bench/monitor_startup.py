"""Start-up costs: `import trainer_side` on top of Lightning, and `monitor serve` to listening.

Import cost: each sample is a fresh interpreter that imports lightning (timed), then `import
trainer_side` and `from trainer_side import EmitterCallback, Emitter, TrackingWeightedRandomSampler`
(timed, since the package loads its public names lazily), and lists the top-level modules that
appeared. A second probe imports only the framework-agnostic `Emitter`, without lightning, to show
what it pulls in by itself.

Serve start: each round starts `python -m monitor serve --bind tcp://127.0.0.1:0 --ready-file F` and times:
- listening: from the command to F existing (serve binds and logs before its heavy imports);
- first message processed: a `run_start` is sent as soon as F exists; from the command to its
  labels_mapping.json (written once torch, the pipeline and the render workers are up).
With `--compare DIR` (another checkout of the project) that checkout's monitor is timed in the same
rounds. Medians of `--rounds` starts.

    python -m bench.monitor_startup [--quick] [--rounds N] [--compare DIR] [--skip-imports] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from bench.harness import PYTHON, ROOT, MonitorProcess, add_common_args, median, print_table, write_json
from trainer_side import protocol
from trainer_side.protocol import make_message

RUN = "startup"
HEAVY = ("matplotlib", "rich", "torchmetrics", "watchdog", "torchvision", "PIL", "sklearn", "scipy", "pandas", "monitor")

_PROBE = """
import json, sys, time
def tops(): return {name.split('.')[0] for name in sys.modules}
started = time.perf_counter()
if WITH_LIGHTNING:
    import lightning
after_lightning = time.perf_counter(); before = tops()
import trainer_side
after_package = time.perf_counter()
IMPORT_NAMES
done = time.perf_counter()
print(json.dumps({"lightning_s": after_lightning - started, "package_s": after_package - after_lightning,
                  "public_names_s": done - after_lightning, "before": sorted(before),
                  "added": sorted(tops() - before)}))
"""


def probe(with_lightning: bool, names: str = "EmitterCallback, Emitter, TrackingWeightedRandomSampler") -> dict:
    code = _PROBE.replace("WITH_LIGHTNING", str(with_lightning)).replace("IMPORT_NAMES", f"from trainer_side import {names}")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _third_party(modules: list[str]) -> list[str]:
    return [m for m in modules if m not in sys.stdlib_module_names and not m.startswith("_") and m != "cython_runtime"]


def _ms(values) -> list[float]:
    values = [1e3 * v for v in values]
    return [median(values), min(values), max(values)]


def import_costs(quick: bool) -> dict:
    """Times the imports in fresh interpreters (median of 7, 3 with `quick`) and prints the tables."""
    repeats = 3 if quick else 7
    samples = [probe(True) for _ in range(repeats)]
    alone = probe(False, "Emitter")
    lightning_loads = [m for m in HEAVY if m in samples[0]["before"]]
    added = samples[0]["added"]
    print_table(f"Import cost, fresh interpreter each time, median of {repeats}",
                ["step", "median ms", "min ms", "max ms", "target"],
                [["import lightning", *_ms(s["lightning_s"] for s in samples), ""],
                 ["+ import trainer_side (lazy package)", *_ms(s["package_s"] for s in samples), ""],
                 ["+ from trainer_side import EmitterCallback, ...", *_ms(s["public_names_s"] for s in samples),
                  "<= 50 ms"]])
    print_table("Heavy modules", ["module", "loaded by lightning", "added by trainer_side",
                                  "loaded by `from trainer_side import Emitter` alone"],
                [[m, m in lightning_loads, m in added, m in alone["added"]] for m in HEAVY])
    print(f"\ntop-level modules trainer_side adds on top of lightning: {', '.join(added)}")
    heavy = [m for m in HEAVY if m in alone["added"]] or "none"
    print(f"the framework-agnostic Emitter alone (no lightning) takes {1e3 * alone['public_names_s']:.0f} ms and loads "
          f"{', '.join(_third_party(alone['added']))} (plus the standard library); heavy: {heavy}")
    return {"samples": samples, "alone": alone, "heavy": HEAVY}


def _first_message() -> bytes:
    return protocol.encode(make_message("run_start", RUN, 0, 1, 0, {
        "class_names": ["a", "b"], "normalization": {"mean": [0.0], "std": [1.0]},
        "model": {"class": "Net", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
        "hparams": {}, "class_counts": np.array([1, 1], dtype=np.int64), "sampler": None}))


def _time_start(out: Path, tree: Path, timeout: float = 120.0) -> tuple[float, float]:
    """Seconds from the command to listening, and to the first message's labels_mapping.json."""
    started = time.monotonic()
    monitor = MonitorProcess(out, cwd=tree, started=False)  # returns once it listens, not once its pipeline is up
    listening = time.monotonic() - started
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    try:
        push.connect(monitor.endpoint)
        push.send(_first_message())
        written = out / RUN / "labels_mapping.json"
        while not written.exists():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the first message was not processed within {timeout:.0f} s")
            time.sleep(0.01)
        processed = time.monotonic() - started
    finally:
        push.close(linger=0)
        context.term()
        monitor.close()
    return listening, processed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=5, help="starts per checkout (default 5)")
    parser.add_argument("--compare", type=Path, default=None, help="another checkout of the project to time too")
    parser.add_argument("--skip-imports", action="store_true", help="time `monitor serve` only, not the imports")
    args = parser.parse_args(argv)
    imports = None if args.skip_imports else import_costs(args.quick)
    rounds = 1 if args.quick else args.rounds
    trees = {"this checkout": ROOT}
    if args.compare is not None:
        if not (args.compare / "monitor" / "__main__.py").is_file():
            parser.error(f"--compare {args.compare}: no monitor package there (expected a checkout of this project)")
        trees[str(args.compare)] = args.compare.resolve()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for name, tree in trees.items():
                listening, processed = _time_start(Path(tmp) / f"{round_index}-{len(times[name])}-{hash(name)}", tree)
                times[name].append((listening, processed))
                print(f"  round {round_index + 1}/{rounds}, {name}: listening after {listening:.2f} s, "
                      f"first message processed after {processed:.2f} s", flush=True)
                time.sleep(1.0)  # its workers leave
    print_table(f"`monitor serve`: seconds from the command, median of {rounds}",
                ["checkout", "listening", "first message processed"],
                [[name, median([t[0] for t in values]), median([t[1] for t in values])]
                 for name, values in times.items()])
    write_json(args.json, {"args": vars(args) | {"json": str(args.json), "compare": str(args.compare)},
                           "imports": imports,
                           "seconds": {name: [{"listening": t[0], "processed": t[1]} for t in values]
                                       for name, values in times.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
