"""CPU cost of each figure the monitor renders: built new, or redrawn for the next epoch; PNG encoding.

The monitor's render workers do almost all of its work during a fit (the pipeline thread takes
about a tenth), and on a machine whose cores the trainer keeps busy that work is what slows the
trainer down. This program times each figure of an epoch in this process, one after another: the
confusion matrix at 10, 43 and 1,000 classes, the 16-thumbnail sample grid, and the loss and
accuracy curves. Each figure is timed two ways, on a new epoch's data each time:

- new: built from nothing and saved (what an in-process callback does, and what the monitor did
  before it kept its figures);
- redrawn: the figure kept from the previous epoch, updated and saved, as a render worker does now
  (monitor.render.reuse).

A second table times the PNG encoding alone, Pillow (compress_level 1, a filter chosen per row)
against the monitor's `encode_png` (the Up filter on every row), on each figure's pixels. It also
prints one demo epoch's total, as the monitor renders it for the 10-class demo.

The tables give medians and the fastest, so a neighbour's burst of CPU on the shared machine shows
up as a gap between them.

    python -m bench.render_costs [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from bench.common import add_common_args, median, print_table, write_json
from monitor.render import figures
from monitor.render.reuse import plot_of
from monitor.render.save import PNG_COMPRESS_LEVEL, PNG_DPI, encode_png, save_figure

DEMO_FIGURES = ("confusion, 10 classes", "sample grid, 16, a run's", "loss curves, 3 epochs",
                "accuracy curves, 3 epochs")


def cases(rng: np.random.Generator) -> dict[str, tuple[type, Callable[[], tuple]]]:
    """Each figure's plot class, and a function giving the next epoch's arguments: data shaped like a
    real run's (counts mostly on the diagonal), new every call, with the same layout."""
    def confusion(n: int) -> Callable[[], tuple]:
        names = [f"class_{i:04d}" for i in range(n)]
        return lambda: (rng.integers(0, 3, (n, n)) + np.diag(rng.integers(20, 60, n)), names,
                        "Confusion matrix — epoch 2")

    digit_names = [str(i) for i in range(10)]

    def grid() -> tuple:
        labels = [int(x) for x in rng.integers(0, 10, 16)]
        preds = [label if i % 5 else (label + 1) % 10 for i, label in enumerate(labels)]
        return rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), labels, preds, digit_names

    # A run shows the same validation samples every epoch (the callback's first ones); from one
    # epoch to the next a few predictions change.
    run_images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    run_labels = [int(x) for x in rng.integers(0, 10, 16)]

    def run_grid() -> tuple:
        preds = list(run_labels)
        for index in rng.choice(16, 3, replace=False):
            preds[index] = (preds[index] + int(rng.integers(1, 10))) % 10
        return run_images, run_labels, preds, digit_names

    def history(epochs: int, kind: str) -> Callable[[], tuple]:
        def args() -> tuple:
            noise = rng.uniform(0.9, 1.1)
            return {e: {"train/loss": 2.0 * noise / (e + 1), "val/loss": 2.2 / (e + 1),
                        "val/acc_top1": 1 - 0.5 * noise / (e + 1), "val/acc_top5": 1 - 0.1 / (e + 1),
                        "train/acc_top1": 1 - 0.6 / (e + 1)} for e in range(epochs)}, kind
        return args

    return {
        "confusion, 10 classes": (figures.ConfusionPlot, confusion(10)),
        "confusion, 43 classes": (figures.ConfusionPlot, confusion(43)),
        "confusion, 1,000 classes": (figures.ConfusionPlot, confusion(1000)),
        "sample grid, 16, a run's": (figures.SampleGridPlot, run_grid),
        "sample grid, 16, all new": (figures.SampleGridPlot, grid),
        "loss curves, 3 epochs": (figures.HistoryPlot, history(3, "loss")),
        "accuracy curves, 3 epochs": (figures.HistoryPlot, history(3, "accuracy")),
        "loss curves, 100 epochs": (figures.HistoryPlot, history(100, "loss")),
    }


def measure(kind: type, next_args: Callable[[], tuple], folder: Path, repeat: int) -> dict[str, Any]:
    """New figures first (build and save timed apart), then redrawn ones, each on new data."""
    builds, saves, new_cpu, redrawn_cpu = [], [], [], []
    path = folder / "figure.png"
    for _ in range(repeat):
        args = next_args()
        c0, t0 = time.process_time(), time.perf_counter()
        fig = kind(*args).figure
        t1 = time.perf_counter()
        save_figure(fig, path)
        t2, c1 = time.perf_counter(), time.process_time()
        builds.append(t1 - t0)
        saves.append(t2 - t1)
        new_cpu.append(c1 - c0)
    with plot_of(kind, *next_args()) as plot:  # the figure a worker keeps after its first epoch
        _save_plot(plot, path)
    for _ in range(repeat):
        args = next_args()
        c0 = time.process_time()
        with plot_of(kind, *args) as plot:
            _save_plot(plot, path)
        redrawn_cpu.append(time.process_time() - c0)
    canvas = FigureCanvasAgg(plot.figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    pillow, ours = [], []
    for _ in range(repeat):
        c0 = time.process_time()
        pillow_png = _pillow_png(rgba)
        c1 = time.process_time()
        our_png = encode_png(rgba, PNG_DPI)
        c2 = time.process_time()
        pillow.append(c1 - c0)
        ours.append(c2 - c1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(our_png)).convert("RGB")), rgba[..., :3])
    return {"build_s": builds, "save_s": saves, "cpu_s": new_cpu, "redrawn_cpu_s": redrawn_cpu,
            "bytes": path.stat().st_size, "pixels": list(rgba.shape[:2]),
            "pillow_encode_cpu_s": pillow, "encode_cpu_s": ours,
            "pillow_bytes": len(pillow_png), "encode_bytes": len(our_png)}


def _save_plot(plot: Any, path: Path) -> None:
    """Save as the render workers do: with the plot's own `draw`. (Before 2026-11-27 plots had
    none and were drawn whole; copied into a worktree of such a commit, this program times it.)"""
    draw = getattr(plot, "draw", None)
    save_figure(plot.figure, path, draw) if draw else save_figure(plot.figure, path)


def _pillow_png(rgba: np.ndarray) -> bytes:
    """How save_figure encoded before encode_png: Pillow, RGB, compress_level 1, no text chunks."""
    height, width = rgba.shape[:2]
    rgb = Image.frombuffer("RGBA", (width, height), rgba.tobytes(), "raw", "RGBA", 0, 1).convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL, dpi=(PNG_DPI, PNG_DPI))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--repeat", type=int, default=None, help="builds and saves per figure (default 7; --quick 2)")
    args = parser.parse_args()
    repeat = args.repeat or (2 if args.quick else 7)

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        # One unmeasured save first: font cache and glyph tables load once per process.
        save_figure(figures.confusion_figure(np.eye(2, dtype=np.int64), ["a", "b"], "warm-up"), Path(tmp) / "w.png")
        for name, (kind, next_args) in cases(np.random.default_rng(0)).items():
            results[name] = measure(kind, next_args, Path(tmp), repeat)

    rows = []
    for name, r in results.items():
        rows.append([name, 1e3 * median(r["build_s"]), 1e3 * median(r["save_s"]), 1e3 * median(r["cpu_s"]),
                     1e3 * min(r["cpu_s"]), 1e3 * median(r["redrawn_cpu_s"]), 1e3 * min(r["redrawn_cpu_s"]),
                     median(r["redrawn_cpu_s"]) / median(r["cpu_s"]), f"{r['bytes']:,}"])
    print_table(f"Figure CPU cost in one process, median of {repeat} (save = draw + PNG encode + atomic write; "
                "redrawn = updated for a new epoch and saved, as the render workers do)",
                ["figure", "new: build ms", "save ms", "CPU ms", "fastest", "redrawn: CPU ms", "fastest",
                 "redrawn / new", "PNG bytes"], rows)
    print_table(f"PNG encoding of each figure's pixels, CPU ms, median of {repeat}",
                ["figure", "pixels", "Pillow ms", "encode_png ms", "ratio", "Pillow bytes", "encode_png bytes"],
                [[name, "{}x{}".format(*reversed(r["pixels"])), 1e3 * median(r["pillow_encode_cpu_s"]),
                  1e3 * median(r["encode_cpu_s"]), median(r["encode_cpu_s"]) / median(r["pillow_encode_cpu_s"]),
                  f"{r['pillow_bytes']:,}", f"{r['encode_bytes']:,}"] for name, r in results.items()])
    new = sum(median(results[n]["cpu_s"]) for n in DEMO_FIGURES)
    redrawn = sum(median(results[n]["redrawn_cpu_s"]) for n in DEMO_FIGURES)
    print(f"\none demo epoch's figures (10-class confusion, grid, two curves), medians summed: {1e3 * new:.0f} ms "
          f"of CPU built new, {1e3 * redrawn:.0f} ms redrawn (x {redrawn / new:.2f})")
    write_json(args.json, {"repeat": repeat, "results": results, "demo_epoch_cpu_s": new,
                           "demo_epoch_redrawn_cpu_s": redrawn})


if __name__ == "__main__":
    main()
