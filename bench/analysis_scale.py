"""The monitor at scale: epoch artifacts' latency, the monitor's memory, the report pages' cost.

artifacts: for each class count (43 / 1,000 / 20,000), a live `monitor serve` (bench/harness.py) gets a synthetic run through the real
`Emitter` (bench/synthetic.py): run_start, a pause, then each epoch's validation predictions with
confidences in chunks, its hardest mistakes, its metrics and epoch_end. The clock starts as `epoch_end` (the
epoch's last message) is sent and stops when every artifact of the epoch is on disk: the confusion
PNGs (counts, row-normalized, and the most confused classes above 50 classes), the confusion CSV
(whole matrix, or its nonzero cells above 1,000 classes), per_class_metrics.csv, top_confusions.csv,
reliability_diagram.png, misclassified.png, the epoch's report data, the history curves, history.csv
holding the epoch's val/ece and val/mce, and the run's report page listing the epoch's files (it
lists only files that exist; the curves it shows by a fixed name). Peak memory is each process's
VmHWM (the monitor, its render workers).

memory: the `monitor serve` process's RSS over a long run and under a flood, and the delay a
sender's claims add to another run's artifacts.
- long run: 60 epochs at 1,000 classes, each epoch a preds frame of 10,000 validation samples
  (70 % right), a 16-image thumbnail grid, metrics and its epoch end; the next epoch is sent once
  the previous one's confusion matrix is on disk. RSS when it listens, once loaded and idle (the
  start of the growth), at the end and its peak (VmHWM).
- flood: one sender pushes 1,200 frames of 2 MB (preds of 1,000,000 samples) as fast as ZeroMQ
  takes them (waiting up to 30 s a frame, so every buffer on the way stays full). Prints the peak
  RSS beside the ceiling the monitor states (loaded RSS + hand-off queue + one receive batch +
  RCVHWM frames per sender, monitor/ingest/handoff.py).
- world claim: a sender claims a world of 2**20 ranks and sends 50 epochs from rank 0 alone; then
  a normal run's three epochs, timed from each epoch end to its confusion matrix on disk.
The figures are the monitor process's own (its render workers are separate processes). With
`--checkout DIR` the monitor of another checkout is measured.

pages: the HTML report's page and data-file sizes, and the time to rewrite a run's page after an
epoch (`Reports.write_run`: page, epoch data, index), for 43 / 1,000 / 20,000 classes and 10 / 100
epochs, on run folders made up directly with the files the pipeline writes.

samples: the per-sample layer alone (protocol 1.3), in this process, as the pipeline runs it when an
epoch with ids is drawn: `SampleHistory.add_epoch` and the sample-level files (predictions.npy,
changes.json|csv, per_sample.csv, label_suspects.csv), 50,000 samples x 100 epochs x 1,000 classes;
the seconds per epoch (median and largest), label_suspects.png's render apart (the monitor draws it
in a worker), and this process's RSS growth from the second epoch (the first with changes: every code
path loaded) to the last; scipy.stats is imported first, as `monitor serve` does at its start.
Then a training map of 1,281,167 ids (ImageNet's training set, track_train) over 3 epochs: the RSS
it adds and data_map.csv's seconds.

    python -m bench.analysis_scale [--quick] [--parts artifacts memory pages samples] [--classes 43 1000 20000]
        [--samples N] [--epochs N] [--priority idle|normal] [--memory-epochs N] [--memory-classes N]
        [--flood-frames N] [--checkout DIR] [--skip-flood] [--skip-world] [--page-rounds N] [--json FILE]
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

import numpy as np
import zmq

from bench.harness import (PYTHON, ROOT, MonitorProcess, add_common_args, median, print_table, process_tree,
                           wait_for, write_json)
from bench.synthetic import send_epoch, start_run
from monitor.aggregates.confusion import WHOLE_MATRIX_MAX_CLASSES
from monitor.outputs.summary import SUMMARY_EVERY_S
from monitor.outputs.render.confusion_figures import CELL_TEXT_MAX_CLASSES
from monitor.outputs.render.save import write_csv
from monitor.outputs.render.save import write_json as save_json
from monitor.outputs.report.folder import EPOCH_DATA
from monitor.outputs.report.writer import PAGE, Reports
from trainer_side import protocol
from trainer_side.emitter import Emitter
from trainer_side.protocol import make_message

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


# --------------------------------------------------------------------------------------- memory

MB = 1 << 20
FLOOD_SAMPLES = 1_000_000
MODEL = {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0}


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _frame(kind: str, run: str, seq: int, body: dict) -> bytes:
    return protocol.encode(make_message(kind, run, 0, 1, seq, body, time=0.0))


def _start_body(classes: int) -> dict:
    return {"class_names": [f"class {i}" for i in range(classes)], "normalization": {"mean": [0.5], "std": [0.25]},
            "model": MODEL}


def _start(run: str, classes: int) -> bytes:
    return _frame("run_start", run, 0, _start_body(classes))


def long_run(tree: Path, out: Path, epochs: int, classes: int, samples: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    dtype = protocol.smallest_label_dtype(classes)
    with MonitorProcess(out, cwd=tree) as monitor:
        listening, _ = rss_mb(monitor.proc.pid)
        monitor.wait_idle()  # its imports, pipeline and render workers are up
        start, _ = rss_mb(monitor.proc.pid)
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(monitor.endpoint)
        push.send(_start("long", classes))
        seq = 1
        images = rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8)
        began = time.monotonic()
        for epoch in range(epochs):
            labels = rng.integers(0, classes, samples).astype(dtype)
            preds = np.where(rng.random(samples) < 0.7, labels, rng.integers(0, classes, samples)).astype(dtype)
            for kind, body in (
                ("preds", {"epoch": epoch, "step": epoch, "preds": preds, "labels": labels}),
                ("samples", {"epoch": epoch, "images": images, "labels": labels[:16], "preds": preds[:16]}),
                ("metrics", {"epoch": epoch, "stage": "val", "values": {"val/loss": 1.0 / (epoch + 1)},
                             "step": epoch}),
                ("epoch_end", {"epoch": epoch, "sent": seq + 1, "dropped": 0}),
            ):
                push.send(_frame(kind, "long", seq, body))
                seq += 1
            csv = out / "long" / f"epoch_{epoch:03d}" / "confusion_matrix.csv"
            deadline = time.monotonic() + 600
            while not csv.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        end, peak = rss_mb(monitor.proc.pid)
        elapsed = time.monotonic() - began
        push.close()
        context.term()
    return {"listening_mb": listening, "start_mb": start, "end_mb": end, "peak_mb": peak, "growth_mb": end - start,
            "seconds": elapsed}


def flood(tree: Path, out: Path, frames: int, samples: int) -> dict[str, float]:
    with MonitorProcess(out, cwd=tree) as monitor:
        monitor.wait_idle()  # loaded: the ceiling counts from here
        start, _ = rss_mb(monitor.proc.pid)
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 16)
        push.setsockopt(zmq.SNDTIMEO, 30_000)  # waits while the monitor's buffers are full: the worst case
        push.connect(monitor.endpoint)
        push.send(_start("flood", 2))
        values = np.zeros(samples, dtype=np.uint8)
        sent = dropped = 0
        peak_seen = start
        for seq in range(1, frames + 1):
            frame = _frame("preds", "flood", seq, {"epoch": seq, "step": seq, "preds": values, "labels": values})
            try:
                push.send(frame)
                sent += 1
            except zmq.Again:
                dropped += 1
            if seq % 50 == 0:
                peak_seen = max(peak_seen, rss_mb(monitor.proc.pid)[0])
        frame_mb = len(frame) / MB
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            peak_seen = max(peak_seen, rss_mb(monitor.proc.pid)[0])
            time.sleep(0.1)
        _, peak = rss_mb(monitor.proc.pid)
        push.close()
        context.term()
    return {"start_mb": start, "peak_mb": peak, "frame_mb": frame_mb, "sent": sent, "dropped": dropped}


def world_claim(tree: Path, out: Path, epochs: int) -> list[float]:
    labels = np.array([0, 1, 1], np.uint8)
    world = 1 << 20

    def frame(kind: str, run: str, size: int, seq: int, body: dict) -> bytes:
        return protocol.encode(make_message(kind, run, 0, size, seq, body, time=0.0))

    delays = []
    with MonitorProcess(out, cwd=tree) as monitor:
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(monitor.endpoint)
        push.send(frame("run_start", "huge", world, 0, _start_body(2)))
        for epoch in range(epochs):
            push.send(frame("preds", "huge", world, 1 + 2 * epoch,
                            {"epoch": epoch, "step": epoch, "preds": labels, "labels": labels}))
            push.send(frame("epoch_end", "huge", world, 2 + 2 * epoch, {"epoch": epoch, "sent": 0, "dropped": 0}))
        time.sleep(2)
        push.send(frame("run_start", "normal", 1, 0, _start_body(2)))
        for epoch in range(3):
            push.send(frame("preds", "normal", 1, 1 + 2 * epoch,
                            {"epoch": epoch, "step": epoch, "preds": labels, "labels": labels}))
            began = time.monotonic()
            push.send(frame("epoch_end", "normal", 1, 2 + 2 * epoch, {"epoch": epoch, "sent": 0, "dropped": 0}))
            csv = out / "normal" / f"epoch_{epoch:03d}" / "confusion_matrix.csv"
            while not csv.exists() and time.monotonic() - began < 600:
                time.sleep(0.01)
            delays.append(time.monotonic() - began)
        push.close()
        context.term()
        monitor.close(timeout=10)
    return delays


def ceiling_mb(start: float, frame_mb: float, samples: int, senders: int = 1) -> float | None:
    """The ceiling this checkout states (docs/design-notes.md): RSS at start + the hand-off queue's
    capacity + one receive batch + RCVHWM frames per sender + the working memory of the preds message
    being counted (WORKING_BYTES_PER_SAMPLE a sample)."""
    try:
        from monitor.aggregates.confusion import WORKING_BYTES_PER_SAMPLE
        from monitor.ingest.handoff import DEFAULT_CAPACITY, RCVHWM
        from monitor.ingest.receiver import BATCH_BYTES
    except ImportError:
        return None
    return (start + DEFAULT_CAPACITY / MB + BATCH_BYTES / MB + frame_mb + RCVHWM * frame_mb * senders
            + WORKING_BYTES_PER_SAMPLE * samples / MB)


# --------------------------------------------------------------------------------------- pages

PAGE_FIGURES = ("confusion_matrix.png", "sample_predictions.png", "confusion_matrix_normalized.png", "misclassified.png")


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
        for name in PAGE_FIGURES:
            (path / name).write_bytes(b"")


def measure_pages(classes: int, epochs: int, rounds: int) -> dict[str, float]:
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


def artifacts_part(args: argparse.Namespace, epochs: int) -> list[dict]:
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
    return results


def memory_part(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    epochs, frames = (5, 200) if args.quick else (args.memory_epochs, args.flood_frames)
    os.environ["PYTHONPATH"] = str(args.checkout)  # the monitor imports that checkout's code, not ours
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        results["long run"] = long_run(args.checkout, Path(tmp) / "long", epochs, args.memory_classes, 10_000)
        if not args.skip_flood:
            results["flood"] = flood(args.checkout, Path(tmp) / "flood", frames, FLOOD_SAMPLES)
        if not args.skip_world:
            delays = world_claim(args.checkout, Path(tmp) / "world", 50)
            results["world claim"] = {f"epoch {i} s": d for i, d in enumerate(delays)}
    long = results["long run"]
    print_table(f"monitor RSS (MiB), {epochs} epochs x {args.memory_classes:,} classes, {args.checkout}",
                ["listening", "loaded (start)", "end", "peak", "growth from start", "seconds"],
                [[round(long["listening_mb"]), round(long["start_mb"]), round(long["end_mb"]), round(long["peak_mb"]),
                  round(long["growth_mb"]), round(long["seconds"])]])
    if "flood" in results:
        f = results["flood"]
        ceiling = ceiling_mb(f["start_mb"], f["frame_mb"], FLOOD_SAMPLES) if args.checkout == ROOT else None
        print_table(f"monitor RSS (MiB) under a flood of {frames:,} frames of {f['frame_mb']:.1f} MiB",
                    ["loaded (start)", "peak", "stated ceiling", "sent", "dropped by the sender"],
                    [[round(f["start_mb"]), round(f["peak_mb"]), "-" if ceiling is None else round(ceiling),
                      int(f["sent"]), int(f["dropped"])]])
        f["ceiling_mb"] = ceiling
    if "world claim" in results:
        print_table("a normal run's artifacts beside a sender claiming a world of 2**20 (seconds from epoch end)",
                    list(results["world claim"]), [[round(d, 2) for d in results["world claim"].values()]])
    return results


def pages_part(args: argparse.Namespace) -> list[dict[str, float]]:
    cases = [(43, 10), (1000, 10)] if args.quick else [(43, 10), (43, 100), (1000, 10), (1000, 100), (20000, 10)]
    results = [measure_pages(classes, epochs, 2 if args.quick else args.page_rounds) for classes, epochs in cases]
    print_table("report pages: sizes, and one page rewrite after an epoch (page + that epoch's data + index)",
                ["classes", "epochs", "page kB", "epoch data kB", "index kB", "write ms (median)", "max ms"],
                [[r["classes"], r["epochs"], r["page_kb"], r["epoch_data_kb"], r["index_kb"], r["write_ms"],
                  r["write_ms_max"]] for r in results])
    return results


SAMPLE_COUNT, SAMPLE_EPOCHS, SAMPLE_CLASSES, TRAIN_IDS, TRAIN_EPOCHS = 50_000, 100, 1000, 1_281_167, 3


def sample_history(out: Path, samples: int, epochs: int, classes: int, train_ids: int) -> dict[str, float]:
    """The per-sample layer's seconds per epoch and memory (see the module docstring)."""
    import io
    import statistics
    from types import SimpleNamespace

    from rich.console import Console

    from monitor.aggregates.samples import EpochSamples, SampleHistory, TrainingMap
    from monitor.outputs.console import MonitorConsole
    from monitor.outputs.sample_files import id_names
    from monitor.outputs.sample_writer import SampleOutputs

    class HeldJobs:  # the figures, drawn apart so that their time is not the pipeline's
        def __init__(self) -> None:
            self.jobs: list = []

        def submit(self, job) -> None:
            self.jobs.append(job)

    import scipy.stats  # noqa: F401 - as `monitor serve` does at its start (monitor/driver.py)

    rng = np.random.default_rng(0)
    names = SimpleNamespace(names=lambda split, ids: id_names(np.asarray(ids)))
    run = SimpleNamespace(run="bench", class_names=[f"class {i}" for i in range(classes)], samples=SampleHistory(classes),
                          training_map=None, sample_names=names, sample_ids_missing=None, thumbnails_by_id={})
    renderer = HeldJobs()
    outputs = SampleOutputs(renderer, MonitorConsole(Console(file=io.StringIO()), fresh=True))
    labels = rng.integers(0, classes, samples)
    ids = np.arange(samples)
    seconds, render_s, start_mb = [], [], 0.0
    for epoch in range(epochs):
        right = rng.random(samples) < min(0.95, 0.3 + 0.01 * epoch)
        preds = np.where(right, labels, rng.integers(0, classes, samples))
        confidence = rng.random(samples).astype(np.float32)
        label_confidence = np.where(right, confidence, rng.random(samples) * 0.2).astype(np.float32)
        began = time.perf_counter()
        run.samples.add_epoch(EpochSamples(epoch, ids, labels, preds, confidence, label_confidence))
        outputs.epoch(run, epoch, out, out / f"epoch_{epoch:03d}")
        seconds.append(time.perf_counter() - began)
        began = time.perf_counter()
        for job in renderer.jobs:
            job.run()
        render_s.append(time.perf_counter() - began)
        renderer.jobs.clear()
        if epoch == 1:  # the first epoch with changes: every code path (and scipy) is loaded
            start_mb = rss_mb(os.getpid())[0]
    end_mb = rss_mb(os.getpid())[0]
    before_train = rss_mb(os.getpid())[0]
    training = TrainingMap(classes)
    run.training_map = training
    train_labels = rng.integers(0, classes, train_ids)
    for epoch in range(TRAIN_EPOCHS):
        right = rng.random(train_ids) < 0.5
        training.add_epoch(epoch, np.arange(train_ids), train_labels,
                           np.where(right, train_labels, (train_labels + 1) % classes),
                           rng.random(train_ids).astype(np.float16))
    after_train = rss_mb(os.getpid())[0]
    began = time.perf_counter()
    outputs.run_end(run, out)  # a map this large is written at the run's end
    data_map_s = time.perf_counter() - began
    return {"samples": samples, "epochs": epochs, "classes": classes,
            "epoch_median_s": statistics.median(seconds), "epoch_max_s": max(seconds),
            "epoch_max_at": seconds.index(max(seconds)),
            "suspects_png_median_s": statistics.median(render_s), "growth_mb": end_mb - start_mb,
            "start_mb": start_mb, "end_mb": end_mb, "history_mb": run.samples.nbytes / MB,
            "train_ids": train_ids, "training_map_rss_mb": after_train - before_train,
            "training_map_mb": training.nbytes / MB, "data_map_csv_s": data_map_s}


def samples_part(args: argparse.Namespace) -> dict[str, float]:
    count, epochs, train = (5_000, 10, 100_000) if args.quick else (SAMPLE_COUNT, SAMPLE_EPOCHS, TRAIN_IDS)
    with tempfile.TemporaryDirectory(prefix="bench-samples-") as tmp:
        r = sample_history(Path(tmp), count, epochs, SAMPLE_CLASSES, train)
    print_table(f"per-sample layer, {count:,} samples x {epochs} epochs x {SAMPLE_CLASSES:,} classes (seconds, MiB)",
                ["epoch median", "epoch max", "at epoch", "suspects PNG", "RSS growth", "history arrays"],
                [[round(r["epoch_median_s"], 3), round(r["epoch_max_s"], 3), r["epoch_max_at"],
                  round(r["suspects_png_median_s"], 3),
                  round(r["growth_mb"], 1), round(r["history_mb"], 1)]])
    print_table(f"training map of {train:,} ids over {TRAIN_EPOCHS} epochs (MiB, seconds)",
                ["RSS added", "arrays", "data_map.csv at run end"],
                [[round(r["training_map_rss_mb"], 1), round(r["training_map_mb"], 1), round(r["data_map_csv_s"], 2)]])
    return r


PARTS = ("artifacts", "memory", "pages", "samples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS),
                        help="which measurements to run (default all: artifacts memory pages samples)")
    parser.add_argument("--classes", type=int, nargs="*", default=[43, 1000, 20_000],
                        help="artifacts: class counts (default 43 1000 20000)")
    parser.add_argument("--samples", type=int,
                        help="artifacts: validation samples an epoch (default 50 a class, at most 50,000)")
    parser.add_argument("--epochs", type=int, help="artifacts: epochs a run (default 3; 2 with --quick)")
    parser.add_argument("--priority", choices=("idle", "normal"), default="idle",
                        help="artifacts: the monitor's --render-priority (default idle, as `monitor serve` runs)")
    parser.add_argument("--memory-epochs", type=int, default=60, help="memory: epochs of the long run (default 60)")
    parser.add_argument("--memory-classes", type=int, default=1000, help="memory: classes of the long run (default 1000)")
    parser.add_argument("--flood-frames", type=int, default=1200, help="memory: frames of the flood (default 1200)")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="memory: the project checkout whose monitor runs")
    parser.add_argument("--skip-flood", action="store_true", help="memory: without the flood")
    parser.add_argument("--skip-world", action="store_true", help="memory: without the world claim")
    parser.add_argument("--page-rounds", type=int, default=7, help="pages: page rewrites timed per case (default 7)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 3)
    if epochs < 1 or any(c < 2 for c in args.classes) or (args.samples is not None and args.samples < 1):
        parser.error("--epochs, --samples and every --classes must be positive (classes at least 2)")
    payload: dict = {"command": [PYTHON, "-m", "bench.analysis_scale", *(argv or sys.argv[1:])]}
    if "artifacts" in args.parts:
        payload["analysis_scale"] = artifacts_part(args, epochs)
    if "pages" in args.parts:
        payload["report_pages"] = pages_part(args)
    if "samples" in args.parts:
        payload["sample_history"] = samples_part(args)
    if "memory" in args.parts:  # last: it points PYTHONPATH at --checkout
        payload["monitor_memory"] = memory_part(args)
    write_json(args.json, payload)
    return 0 if all(r["exit_code"] == 0 for r in payload.get("analysis_scale", [])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
