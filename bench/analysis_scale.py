"""Epoch analysis at 43 / 1,000 / 20,000 classes: last message -> every epoch artifact on disk, and peak memory.

For each class count, a live `monitor serve` (bench/harness.py) gets a synthetic run through the real
`Emitter` (bench/synthetic.py): run_start, a pause, then each epoch's validation predictions with
confidences in chunks, its hardest mistakes, its metrics and epoch_end. The clock starts as `epoch_end` (the
epoch's last message) is sent and stops when every artifact of the epoch is on disk: the confusion
PNGs (counts, row-normalized, and the most confused classes above 50 classes), the confusion CSV
(whole matrix, or its nonzero cells above 1,000 classes), per_class_metrics.csv, top_confusions.csv,
reliability_diagram.png, misclassified.png, the epoch's report data, the history curves, history.csv
holding the epoch's val/ece and val/mce, and the run's report page listing the epoch's files (it
lists only files that exist; the curves it shows by a fixed name). Peak memory is each process's
VmHWM (the monitor, its render workers).

    python -m bench.analysis_scale [--quick] [--classes 43 1000 20000] [--samples N] [--epochs N]
                                   [--priority idle|normal] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from bench.common import add_common_args, print_table, write_json
from bench.harness import MonitorProcess, process_tree, wait_for
from bench.monitor_memory import rss_mb
from bench.synthetic import send_epoch, start_run
from monitor.aggregates.confusion import WHOLE_MATRIX_MAX_CLASSES
from monitor.outputs.summary import SUMMARY_EVERY_S
from monitor.outputs.render.confusion_figures import CELL_TEXT_MAX_CLASSES
from monitor.outputs.report.folder import EPOCH_DATA
from monitor.outputs.report.writer import PAGE
from trainer_side.emitter import Emitter

RUN = "scale"
# An epoch's files from its confidences and hardest mistakes (protocol 1.2).
CALIBRATION_FILES = ("reliability_diagram.png", "misclassified.png")
HISTORY_CURVES = tuple(f"training_history/{kind}_history.png" for kind in ("loss", "accuracy", "calibration"))
TARGET_S = {43: 1.5, 1000: 5.0, 20_000: 10.0}
# File times come from the kernel's coarse clock, which may lag the wall clock by a tick.
MTIME_SLACK_S = 0.01


def epoch_files(classes: int) -> list[str]:
    """The files of an epoch folder from its predictions (with or without confidences)."""
    names = ["confusion_matrix.png", "confusion_matrix_normalized.png", "per_class_metrics.csv", "top_confusions.csv",
             "confusion_matrix.csv" if classes <= WHOLE_MATRIX_MAX_CLASSES else "confusion_matrix_cells.csv"]
    if classes > CELL_TEXT_MAX_CLASSES:
        names.append("confusion_matrix_top.png")
    return names


def has_calibration(epoch: int) -> Callable[[Path], bool]:
    """Whether a history.csv holds epoch `epoch`'s val/ece and val/mce."""
    def holds(path: Path) -> bool:
        with open(path, newline="", encoding="utf-8") as f:
            return any(row.get("epoch") == str(epoch) and row.get("val/ece") and row.get("val/mce")
                       for row in csv.DictReader(f))
    return holds


def lists(relative_paths: list[str]) -> Callable[[Path], bool]:
    """Whether a report page names every one of these paths."""
    def holds(path: Path) -> bool:
        page = path.read_text(encoding="utf-8")
        return all(name in page for name in relative_paths)
    return holds


def always(path: Path) -> bool:
    return True


def samples_for(classes: int, override: int | None) -> int:
    """50 validation samples a class, at most 50,000 (ImageNet-21k's scale: 2.5 a class at 20,000)."""
    return override or min(50 * classes, 50_000)


def target_s(classes: int) -> float:
    """DESIGN.md's target for the nearest class count at or above `classes` (NaN above 20,000)."""
    for bound, target in sorted(TARGET_S.items()):
        if classes <= bound:
            return target
    return float("nan")


def measure(classes: int, samples: int, epochs: int, priority: str, work: Path) -> dict:
    out = work / f"out-{classes}"
    folder = out / RUN
    result = {"classes": classes, "samples": samples, "priority": priority, "epochs": []}
    with MonitorProcess(out, "--render-priority", priority) as monitor:
        monitor.wait_idle()
        emitter = Emitter(monitor.endpoint, run=RUN, spool=False, queue_size=10_000)
        start_run(emitter, classes)
        # A trainer's first epoch ends seconds after run_start; one ending within SUMMARY_EVERY_S of it
        # would get its report data only with the next, throttled, summary.json.
        time.sleep(SUMMARY_EVERY_S)
        monitor.wait_idle()
        for epoch in range(epochs):
            send_epoch(emitter, classes, samples, epoch, seed=epoch, end=False)
            sent = time.time()
            emitter.epoch_end(epoch)
            names = [f"epoch_{epoch:03d}/{name}" for name in [*epoch_files(classes), *CALIBRATION_FILES, EPOCH_DATA]]
            artifacts = {folder / name: always for name in [*names, *HISTORY_CURVES]}
            artifacts[folder / "history.csv"] = has_calibration(epoch)
            artifacts[folder / PAGE] = lists(names)
            try:
                written = wait_ready(artifacts, sent)
            except TimeoutError:
                print(monitor.output(), file=sys.stderr)
                raise
            ready = {str(path.relative_to(folder)): max(0.0, mtime - sent) for path, mtime in written.items()}
            order = sorted(ready, key=ready.get, reverse=True)
            result["epochs"].append({"epoch": epoch, "ready_s": ready[order[0]], "last": order[0],
                                     "before_last": f"{order[1]} {ready[order[1]]:.2f}", "files": len(ready),
                                     "artifacts_s": ready, "load_1min": os.getloadavg()[0]})
            monitor.wait_idle()
        emitter.run_end("completed")
        emitter.close()
        peaks = {pid: rss_mb(pid)[1] for pid in process_tree(monitor.proc.pid)}
        result["monitor_peak_mib"] = peaks.pop(monitor.proc.pid)
        result["worker_peaks_mib"] = sorted(peaks.values(), reverse=True)
        result["exit_code"] = monitor.close()
    return result


def wait_ready(artifacts: Mapping[Path, Callable[[Path], bool]], since: float,
               timeout: float = 300.0) -> dict[Path, float]:
    """Each path's modification time, once it was modified at or after `since` and its check holds
    (a file is written whole: the monitor renames it into place)."""
    written: dict[Path, float] = {}

    def all_there() -> bool:
        for path, holds in artifacts.items():
            if path in written:
                continue
            try:
                # The check first: a file replaced in between gives a later time, never an earlier one.
                if holds(path) and (mtime := os.stat(path).st_mtime) >= since - MTIME_SLACK_S:
                    written[path] = mtime
            except FileNotFoundError:
                continue
        return len(written) == len(artifacts)

    wait_for(all_there, f"{len(artifacts)} artifacts", timeout)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--classes", type=int, nargs="*", default=[43, 1000, 20_000],
                        help="class counts (default 43 1000 20000)")
    parser.add_argument("--samples", type=int, help="validation samples an epoch (default 50 a class, at most 50,000)")
    parser.add_argument("--epochs", type=int, help="epochs a run (default 3; 2 with --quick)")
    parser.add_argument("--priority", choices=("idle", "normal"), default="idle",
                        help="the monitor's --render-priority (default idle, as `monitor serve` runs)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 3)
    if epochs < 1 or any(c < 2 for c in args.classes) or (args.samples is not None and args.samples < 1):
        parser.error("--epochs, --samples and every --classes must be positive (classes at least 2)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for classes in args.classes:
            samples = samples_for(classes, args.samples)
            print(f"  {classes:,} classes, {samples:,} validation samples, {epochs} epochs "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
            work = Path(tmp) / str(classes)
            work.mkdir()
            results.append(measure(classes, samples, epochs, args.priority, work))
    print_table(f"Epoch's last message (epoch_end sent) -> every artifact of the epoch on disk "
                f"(render priority {args.priority})",
                ["classes", "samples", "epoch", "ready s", "files", "last artifact", "the one before (s)", "target s",
                 "load 1 min"],
                [[r["classes"], r["samples"], e["epoch"], e["ready_s"], e["files"], e["last"], e["before_last"],
                  target_s(r["classes"]), e["load_1min"]] for r in results for e in r["epochs"]])
    print_table("Peak memory (VmHWM), MiB",
                ["classes", "monitor process", "its children (render workers, resource tracker)"],
                [[r["classes"], r["monitor_peak_mib"], ", ".join(f"{p:.0f}" for p in r["worker_peaks_mib"])]
                 for r in results])
    print(f"monitor exit codes: {[r['exit_code'] for r in results]}")
    write_json(args.json, {"analysis_scale": results})
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
