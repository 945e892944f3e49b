"""The HTML report's cost: page and data-file sizes, and the time to rewrite a run's page after an
epoch, for runs of 43 / 1,000 / 20,000 classes and 10 / 100 epochs.

Each run folder is made up directly (the files the pipeline writes: summary.json, history.csv,
dataset_statistics.json, per epoch per_class_metrics.csv, top_confusions.csv,
sampler_distribution.json and four placeholder PNGs), then `Reports.write_run` rewrites the page
and one epoch's data file, as the monitor does after an epoch, `--rounds` times.

    python -m bench.report_pages [--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import add_common_args, median, print_table, write_json
from monitor.outputs.render.save import write_csv, write_json as save_json
from monitor.outputs.report.folder import EPOCH_DATA
from monitor.outputs.report.writer import Reports

FIGURES = ("confusion_matrix.png", "sample_predictions.png", "confusion_matrix_normalized.png", "misclassified.png")


def make_run(folder: Path, classes: int, epochs: int) -> None:
    names = [f"class_{i:05d}" for i in range(classes)]
    save_json(folder / "summary.json", {"run": folder.name, "status": "running", "world": 1,
                                        "epochs": list(range(epochs)), "ranks": {}, "errors": [],
                                        "refused_senders": [], "last_message_time": 1.7e9})
    write_csv(folder / "history.csv", ["epoch", "train/loss", "val/acc_top1", "val/loss"],
              ([e, 1.0 / (e + 1), e / epochs, 1.0 - e / epochs] for e in range(epochs)))
    save_json(folder / "dataset_statistics.json", {"total": classes * 10, "classes": [
        {"name": n, "index": i, "count": 10, "percentage": 100 / classes} for i, n in enumerate(names)]})
    for epoch in range(epochs):
        path = folder / f"epoch_{epoch:03d}"
        write_csv(path / "per_class_metrics.csv", ["class", "index", "precision", "recall", "f1", "support"],
                  ([n, i, f"{(i % 97) / 97:.6f}", f"{(i % 89) / 89:.6f}", f"{(i % 83) / 83:.6f}", 10]
                   for i, n in enumerate(names)))
        write_csv(path / "top_confusions.csv", ["true", "pred", "count", "share_of_true"],
                  ([names[i], names[(i + 1) % classes], 3, "0.300000"] for i in range(min(classes, 10_000))))
        save_json(path / "sampler_distribution.json", {"epoch": epoch, "draws": classes * 10, "classes": [
            {"name": n, "index": i, "sampled": 10, "expected": 10.0, "ratio": 1.0} for i, n in enumerate(names)]})
        for name in FIGURES:
            (path / name).write_bytes(b"")


def measure(classes: int, epochs: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        folder = out / f"run-{classes}"
        make_run(folder, classes, epochs)
        reports = Reports(out, every_s=0.0)
        times = []
        for _ in range(rounds):
            reports.drawn(folder, epochs - 1)
            started = time.perf_counter()
            reports.write_run(folder)
            times.append(time.perf_counter() - started)
        return {"classes": classes, "epochs": epochs, "page_kb": (folder / "index.html").stat().st_size / 1024,
                "epoch_data_kb": (folder / f"epoch_{epochs - 1:03d}" / EPOCH_DATA).stat().st_size / 1024,
                "index_kb": (out / "index.html").stat().st_size / 1024, "write_ms": median(times) * 1000,
                "write_ms_max": max(times) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=7, help="page rewrites timed per case (default 7)")
    args = parser.parse_args(argv)
    cases = [(43, 10), (1000, 10)] if args.quick else [(43, 10), (43, 100), (1000, 10), (1000, 100), (20000, 10)]
    results = [measure(classes, epochs, 2 if args.quick else args.rounds) for classes, epochs in cases]
    print_table("report pages: sizes, and one page rewrite after an epoch (page + that epoch's data + index)",
                ["classes", "epochs", "page kB", "epoch data kB", "index kB", "write ms (median)", "max ms"],
                [[r["classes"], r["epochs"], r["page_kb"], r["epoch_data_kb"], r["index_kb"], r["write_ms"],
                  r["write_ms_max"]] for r in results])
    write_json(args.json, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
