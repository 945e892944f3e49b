"""What `--tensorboard` costs the monitor process per epoch figure: the record checksum (TensorBoard's
own pure-Python CRC-32C against google-crc32c's, which the monitor uses) and the writer thread's whole work for one
figure (read the PNG, encode the event, checksum, append), on real confusion-matrix PNGs.

    python -m bench.tensorboard_events [--quick] [--classes N ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_common_args, median, print_table, write_json
from monitor.outputs.render.jobs import ConfusionJob
from monitor.outputs.tensorboard import TensorBoardOptions, TensorBoardWriter, masked_crc32c


def confusion_png(classes: int, folder: Path) -> Path:
    """A drawn confusion matrix of `classes` classes, 20 samples per class, 70 % right."""
    rng = np.random.default_rng(classes)
    labels = np.repeat(np.arange(classes), 20)
    preds = np.where(rng.random(labels.size) < 0.7, labels, rng.integers(0, classes, labels.size))
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, preds), 1)
    png = folder / "confusion_matrix.png"
    ConfusionJob(png, folder / "confusion_matrix.csv", counts, [f"class {i}" for i in range(classes)], "bench").run()
    return png


def timed(call, repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return median(times)


def measure(classes: int, repeats: int, work: Path) -> dict:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_crc

    epoch = work / "out" / "run" / "epoch_000"
    epoch.mkdir(parents=True)
    png = confusion_png(classes, epoch)
    data = png.read_bytes()
    assert masked_crc32c(data) == tensorboard_crc(data)
    writes = []
    for i in range(repeats):
        writer = TensorBoardWriter(TensorBoardOptions(work / f"tb{i}"), work / "out", wait=True)
        start = time.perf_counter()
        writer.figure(png)
        writer.close()
        writes.append(time.perf_counter() - start)
    return {"classes": classes, "png_bytes": len(data),
            "tensorboard_crc_s": timed(lambda: tensorboard_crc(data), max(1, repeats // 3)),
            "monitor_crc_s": timed(lambda: masked_crc32c(data), repeats),
            "writer_s": median(writes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--classes", type=int, nargs="*", default=[43, 1000], help="class counts (default 43 1000)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    with tempfile.TemporaryDirectory(prefix="bench-tensorboard-") as tmp:
        results = []
        for classes in args.classes:
            work = Path(tmp) / str(classes)
            work.mkdir()
            results.append(measure(classes, repeats, work))
    print_table(f"One confusion-matrix figure as a TensorBoard image event (median of {repeats})",
                ["classes", "PNG KiB", "TensorBoard's CRC-32C ms", "monitor's CRC-32C ms",
                 "writer thread, whole figure ms"],
                [[r["classes"], r["png_bytes"] / 1024, r["tensorboard_crc_s"] * 1e3, r["monitor_crc_s"] * 1e3,
                  r["writer_s"] * 1e3] for r in results])
    write_json(args.json, {"tensorboard_events": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
