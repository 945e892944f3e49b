"""How long each step of an epoch's confusion matrix keeps another thread of the monitor waiting.

The monitor's pipeline thread counts each epoch's confusion matrix and hands it to a render worker
(pickled); the receive thread needs the GIL meanwhile. For 1,000 and 4,096 classes (50 validation
samples per class, 60 % right) this program runs each step in the main thread while a second
thread sleeps 0.5 ms at a time and notes how late it wakes: the latest wake-up is about the longest
stretch for which the step held the GIL. Torch runs on one thread, as in `monitor serve`.

Steps, each on the same predictions:

- count, functional: `monitor.confusion.confusion_counts` (torchmetrics' functional form);
- count, metric object: a new `MulticlassConfusionMatrix`, updated and computed (what the monitor
  did before f3adc8a);
- pickle, packed: a `ConfusionJob` as the renderer pickles it (its counts packed, monitor/jobs.py);
- pickle, whole int64 matrix: the matrix alone, as jobs pickled it before 6929511.

    python -m bench.confusion_handoff [--quick] [--classes 1000 4096] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from bench.common import Ticker, add_common_args, median, print_table, write_json
from monitor.confusion import confusion_counts
from monitor.render.jobs import ConfusionJob

WAKE_S = 0.0005


def metric_object_counts(preds: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    metric = MulticlassConfusionMatrix(num_classes=classes, validate_args=False)
    metric.update(torch.from_numpy(preds.astype(np.int64)), torch.from_numpy(labels.astype(np.int64)))
    return metric.compute().numpy().astype(np.int64)


def measure(classes: int, repeat: int, wakes: Ticker) -> list[dict[str, Any]]:
    rng = np.random.default_rng(classes)
    samples = 50 * classes
    label_type = np.uint16 if classes <= 65536 else np.uint32
    labels = rng.integers(0, classes, samples).astype(label_type)
    preds = np.where(rng.random(samples) < 0.6, labels, rng.integers(0, classes, samples)).astype(label_type)
    counts = confusion_counts(preds, labels, classes)
    assert np.array_equal(counts, metric_object_counts(preds, labels, classes))
    job = ConfusionJob(Path("confusion_matrix.png"), Path("confusion_matrix.csv"), counts,
                       [f"class_{i:04d}" for i in range(classes)], "Confusion matrix — epoch 0")
    steps: dict[str, Callable[[], Any]] = {
        "count, functional": lambda: confusion_counts(preds, labels, classes),
        "count, metric object": lambda: metric_object_counts(preds, labels, classes),
        "pickle, packed job": lambda: ForkingPickler.dumps(job),
        "pickle, whole int64 matrix": lambda: ForkingPickler.dumps(counts),
    }
    rows = []
    for name, step in steps.items():
        took, waited, size = [], [], None
        for _ in range(repeat):
            time.sleep(0.05)
            wakes.reset()
            begun = time.perf_counter()
            result = step()
            took.append(time.perf_counter() - begun)
            time.sleep(0.002)  # the sleeper's last wake-up of the step
            waited.append(wakes.longest - WAKE_S)
            if name.startswith("pickle"):
                size = len(result)
        rows.append({"classes": classes, "step": name, "ms": [1e3 * t for t in took],
                     "longest_wait_ms": [1e3 * w for w in waited], "bytes": size})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--classes", type=int, nargs="*", default=[1000, 4096], help="class counts (default 1000 4096)")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each step (default 7; --quick 3)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 7)
    if repeat < 1:
        parser.error(f"--repeat must be at least 1, got {repeat}")
    torch.set_num_threads(1)  # as monitor serve does
    sys.setswitchinterval(0.001)  # as monitor serve does
    wakes = Ticker(WAKE_S)
    wakes.start()
    rows = []
    try:
        for classes in args.classes:
            rows += measure(classes, repeat, wakes)
    finally:
        wakes.stopped = True
    print_table(f"An epoch's confusion matrix in the monitor's process, {repeat} runs each (another thread sleeps "
                f"{WAKE_S * 1e3:g} ms at a time; 'waits' is how late it woke at most: the GIL held that long)",
                ["classes", "step", "median ms", "longest wait ms (median)", "longest wait ms (max)", "pickled bytes"],
                [[r["classes"], r["step"], median(r["ms"]), median(r["longest_wait_ms"]), max(r["longest_wait_ms"]),
                  "-" if r["bytes"] is None else f"{r['bytes']:,}"] for r in rows])
    write_json(args.json, {"rows": rows, "repeat": repeat})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
