"""Monitor ingest rate: messages/s and samples/s that `monitor serve` decodes, logs and aggregates.

A separate sender process (bench/sender.py) pushes pre-encoded frames as fast as it can to a real
`monitor serve`; the clock runs from the first frame sent to the moment the run's closing line
("run ... completed", written by the pipeline after it handled the run_end) is in console.txt.
Two streams: small `metrics` messages, and `preds` messages of 1,000 samples (43 classes).

    python -m bench.monitor_ingest [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import PYTHON, ROOT, MonitorProcess, add_common_args, print_table, write_json
from trainer_side import protocol

CLASSES = 43


def frames_for(run: str, kind: str, count: int, samples: int) -> list[tuple[float, bytes, str]]:
    rng = np.random.default_rng(0)
    names = [f"class_{i:02d}" for i in range(CLASSES)]
    start = {"class_names": names, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
             "model": {"class": "Bench", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
             "train_targets": None, "class_counts": None, "sampler": None, "hparams": {}}
    bodies = [("run_start", start)]
    if kind == "metrics":
        values = {"train/loss": 0.5, "train/acc_top1": 0.8, "val/loss": 0.6, "val/acc_top1": 0.7, "val/acc_top5": 0.9}
        bodies += [("metrics", {"epoch": 0, "stage": "train", "step": i, "values": values}) for i in range(count)]
    else:
        preds = rng.integers(0, CLASSES, samples, dtype=np.uint8)
        labels = rng.integers(0, CLASSES, samples, dtype=np.uint8)
        bodies += [("preds", {"epoch": 0, "step": 0, "preds": preds, "labels": labels})] * count
    bodies.append(("run_end", {"status": "completed", "error": None, "sent": count + 2, "dropped": 0}))
    return [(0.0, protocol.encode(protocol.make_message(k, run, 0, 1, seq, body)), "")
            for seq, (k, body) in enumerate(bodies)]


def ingest(monitor: MonitorProcess, work: Path, run: str, kind: str, count: int, samples: int) -> dict:
    schedule = frames_for(run, kind, count, samples)
    plan = work / f"{run}.pickle"
    plan.write_bytes(pickle.dumps(schedule))
    console = monitor.out / run / "console.txt"
    monitor.wait_idle()
    sender = subprocess.Popen([PYTHON, "-m", "bench.sender", "--endpoint", monitor.endpoint, "--frames", str(plan)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    done = None
    while time.monotonic() < deadline:
        if console.exists() and f"run {run} completed" in console.read_text():
            done = time.time()
            break
        time.sleep(0.002)
    report = json.loads(sender.communicate(timeout=60)[0])
    if done is None:  # the log lives in a temporary folder that is gone by the time anyone reads it
        tail = "\n".join(monitor.log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"monitor did not finish run {run}; the end of its log:\n{tail}")
    elapsed = done - report["first"]
    messages = len(schedule)
    return {"messages": messages, "bytes": sum(len(f) for _, f, _ in schedule), "seconds": elapsed,
            "messages_per_s": messages / elapsed, "samples_per_s": count * samples / elapsed if samples else None,
            "sender_seconds": report["last"] - report["first"], "frame_bytes": len(schedule[1][1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    small, preds = (20_000, 300) if args.quick else (200_000, 3_000)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        with MonitorProcess(Path(tmp) / "out") as monitor:
            results["metrics"] = ingest(monitor, Path(tmp), "ingest-metrics", "metrics", small, 0)
            results["preds"] = ingest(monitor, Path(tmp), "ingest-preds", "preds", preds, 1_000)
            code = monitor.close()
    print_table("Monitor ingest from a separate sender process (decoded, logged, aggregated; first frame sent -> "
                "run_end handled)",
                ["stream", "frame bytes", "messages", "seconds", "messages/s", "samples/s", "sender busy s"],
                [["metrics (5 values)", r["frame_bytes"], r["messages"], r["seconds"], r["messages_per_s"], "-",
                  r["sender_seconds"]] if name == "metrics" else
                 [f"preds (1,000 samples, {CLASSES} classes)", r["frame_bytes"], r["messages"], r["seconds"],
                  r["messages_per_s"], r["samples_per_s"], r["sender_seconds"]] for name, r in results.items()])
    print(f"target: >= 50,000 small messages/s; monitor exit code {code}")
    write_json(args.json, {"ingest": results, "monitor_exit_code": code})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
