"""CPU cost of each figure the monitor renders: build, draw + encode, bytes.

The monitor's render workers do almost all of its work during a fit (the pipeline thread takes
about a tenth), and on a machine whose cores the trainer keeps busy that work is what slows the
trainer down. This program times each figure of an epoch in this process, one after another: the
confusion matrix at 10, 43 and 1,000 classes, the 16-thumbnail sample grid, and the loss and
accuracy curves. It also prints one demo epoch's total, as the monitor renders it for the
10-class demo.

Each figure is built and saved ``--repeat`` times. The table gives the median and the fastest, so a
neighbour's burst of CPU on the shared machine shows up as a gap between them.

    python -m bench.render_costs [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.common import add_common_args, median, print_table, write_json
from monitor.render import figures
from monitor.render.save import save_figure

DEMO_FIGURES = ("confusion, 10 classes", "sample grid, 16", "loss curves, 3 epochs", "accuracy curves, 3 epochs")


def cases(rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    """Figure builders fed with data shaped like a real run's (counts on the diagonal mostly)."""
    def confusion(n: int) -> Callable[[], object]:
        counts = rng.integers(0, 3, (n, n)) + np.diag(rng.integers(20, 60, n))
        names = [f"class_{i:04d}" for i in range(n)]
        return lambda: figures.confusion_figure(counts, names, "Confusion matrix — epoch 2")

    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, 16)]
    preds = [label if i % 5 else (label + 1) % 10 for i, label in enumerate(labels)]
    digit_names = [str(i) for i in range(10)]

    def history(epochs: int, which: int) -> Callable[[], object]:
        hist = {e: {"train/loss": 2.0 / (e + 1), "val/loss": 2.2 / (e + 1), "val/acc_top1": 1 - 0.5 / (e + 1),
                    "val/acc_top5": 1 - 0.1 / (e + 1), "train/acc_top1": 1 - 0.6 / (e + 1)} for e in range(epochs)}
        return lambda: figures.history_figures(hist)[which]

    return {
        "confusion, 10 classes": confusion(10),
        "confusion, 43 classes": confusion(43),
        "confusion, 1,000 classes": confusion(1000),
        "sample grid, 16": lambda: figures.sample_grid_figure(images, labels, preds, digit_names),
        "loss curves, 3 epochs": history(3, 0),
        "accuracy curves, 3 epochs": history(3, 1),
        "loss curves, 100 epochs": history(100, 0),
    }


def measure(build: Callable[[], object], folder: Path, repeat: int) -> dict[str, object]:
    builds, saves, cpu = [], [], []
    path = folder / "figure.png"
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fig = build()
        t1 = time.perf_counter()
        save_figure(fig, path)
        t2, c1 = time.perf_counter(), time.process_time()
        builds.append(t1 - t0)
        saves.append(t2 - t1)
        cpu.append(c1 - c0)
    return {"build_s": builds, "save_s": saves, "cpu_s": cpu, "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--repeat", type=int, default=None, help="builds and saves per figure (default 7; --quick 2)")
    args = parser.parse_args()
    repeat = args.repeat or (2 if args.quick else 7)

    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        # One unmeasured save first: font cache and glyph tables load once per process.
        save_figure(figures.confusion_figure(np.eye(2, dtype=np.int64), ["a", "b"], "warm-up"), Path(tmp) / "w.png")
        for name, build in cases(np.random.default_rng(0)).items():
            results[name] = measure(build, Path(tmp), repeat)

    rows = []
    for name, r in results.items():
        total = [b + s for b, s in zip(r["build_s"], r["save_s"])]  # type: ignore[arg-type]
        rows.append([name, 1e3 * median(r["build_s"]), 1e3 * median(r["save_s"]), 1e3 * median(total),
                     1e3 * min(total), 1e3 * median(r["cpu_s"]), f"{r['bytes']:,}"])
    print_table(f"Figure cost in one process (median of {repeat}; save = draw + PNG encode + atomic write)",
                ["figure", "build ms", "save ms", "total ms", "fastest ms", "CPU ms", "PNG bytes"], rows)
    demo = sum(median(results[n]["cpu_s"]) for n in DEMO_FIGURES)  # type: ignore[arg-type]
    print(f"\none demo epoch's figures (10-class confusion, grid, two curves): {1e3 * demo:.0f} ms of CPU (medians summed)")
    write_json(args.json, {"repeat": repeat, "results": results, "demo_epoch_cpu_s": demo})


if __name__ == "__main__":
    main()
