"""How long `monitor serve` takes to listen, and to process a message sent the moment it listens.

Each round starts `python -m monitor serve --bind tcp://127.0.0.1:0 --ready-file F` and times:
- listening: from the command to F existing (serve binds and logs before its heavy imports);
- first message processed: a `run_start` is sent as soon as F exists; from the command to its
  labels_mapping.json (written once torch, the pipeline and the render workers are up).
With `--compare DIR` (another checkout of the project) that checkout's monitor is timed in the same
rounds. Medians of `--rounds` starts.

    python -m bench.monitor_startup [--quick] [--rounds N] [--compare DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from bench.common import add_common_args, median, print_table, write_json
from bench.harness import ROOT, MonitorProcess
from trainer_side import protocol
from trainer_side.protocol import make_message

RUN = "startup"


def _first_message() -> bytes:
    return protocol.encode(make_message("run_start", RUN, 0, 1, 0, {
        "class_names": ["a", "b"], "normalization": {"mean": [0.0], "std": [1.0]},
        "model": {"class": "Net", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
        "hparams": {}, "class_counts": np.array([1, 1], dtype=np.int64), "sampler": None}))


def _time_start(out: Path, tree: Path, timeout: float = 120.0) -> tuple[float, float]:
    """Seconds from the command to listening, and to the first message's labels_mapping.json."""
    started = time.monotonic()
    monitor = MonitorProcess(out, cwd=tree)
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
    args = parser.parse_args(argv)
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
                           "seconds": {name: [{"listening": t[0], "processed": t[1]} for t in values]
                                       for name, values in times.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
