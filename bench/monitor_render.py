"""Monitor while an epoch renders: the receive loop's longest pause, and epoch end -> artifacts on disk.

For 43 and 1,000 classes, a sender process (bench/sender.py) plays a run whose epochs arrive as the
EmitterCallback sends them (preds, samples, val metrics, sampled, train metrics, epoch_end), several
seconds apart, while it also sends a small probe message every 2 ms. The monitor is `monitor serve`
with a timestamp on every accepted frame (`probed_serve` below, which this program starts as
`python -m bench.monitor_render --probed-serve RECORD serve ...`). A probe accepted L ms after it was
sent means the receive loop was away for about L ms. Artifact times are the files' modification times.

    python -m bench.monitor_render [--quick] [--classes N ...] [--rounds N] [--tensorboard] [--render-defer S] [--json FILE]

With --tensorboard the monitor also writes TensorBoard events (`serve --tensorboard`), and the
program first times what that costs the monitor per epoch figure, on real confusion-matrix PNGs: the
record checksum (TensorBoard's own pure-Python CRC-32C against google-crc32c's, which the monitor
uses) and the writer thread's whole work for one figure (read the PNG, encode the event, checksum,
append).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.analysis_scale import epoch_files
from bench.harness import PYTHON, ROOT, MonitorProcess, add_common_args, median, print_table, quantile, write_json
from monitor.folders import run_dir
from monitor.outputs.render.jobs import ConfusionJob
from monitor.outputs.tensorboard import TensorBoardOptions, TensorBoardWriter, masked_crc32c
from trainer_side import protocol

PROBE_MS = 2.0
OTHER_EPOCH_FILES = ("sample_predictions.png", "sampler_distribution.json")
RUN_FILES = ("training_history/loss_history.png", "training_history/accuracy_history.png", "history.csv")


def epoch_schedule(run: str, classes: int, epochs: int, spacing: float) -> list[tuple[float, bytes, str]]:
    """The frames of a run, as the EmitterCallback would send them, with their send offsets."""
    rng = np.random.default_rng(classes)
    label_dtype = protocol.smallest_label_dtype(classes)
    val, train = 50 * classes, 100 * classes
    targets = np.repeat(np.arange(classes), 100).astype(label_dtype)
    start = {"class_names": [f"class_{i:04d}" for i in range(classes)],
             "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
             "model": {"class": "Bench", "total_params": 11_000_000, "trainable_params": 11_000_000, "size_mb": 44.0},
             "train_targets": targets, "class_counts": None,
             "sampler": {"type": "TrackingWeightedRandomSampler", "num_samples": train,
                         "weights_per_class": np.full(classes, 100 / train)}, "hparams": {"lr": 0.001}}
    plan = [(0.3, "run_start", start, "")]
    for epoch in range(epochs):
        at = 1.0 + epoch * spacing
        labels = rng.integers(0, classes, val).astype(label_dtype)
        preds = np.where(rng.random(val) < 0.6, labels, rng.integers(0, classes, val)).astype(label_dtype)
        metrics = {"val/loss": 1.0 / (epoch + 1), "val/acc_top1": 0.6, "val/acc_top5": 0.8}
        plan += [
            (at, "preds", {"epoch": epoch, "step": 100 * epoch, "preds": preds, "labels": labels}, f"first-{epoch}"),
            (at, "samples", {"epoch": epoch, "images": rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8),
                             "labels": labels[:16], "preds": preds[:16]}, ""),
            (at, "metrics", {"epoch": epoch, "stage": "val", "step": 100 * epoch, "values": metrics}, ""),
            (at, "sampled", {"epoch": epoch, "indices": rng.integers(0, train, train).astype(np.uint32)}, ""),
            (at, "metrics", {"epoch": epoch, "stage": "train", "step": 100 * epoch,
                             "values": {"train/loss": 1.2 / (epoch + 1), "train/acc_top1": 0.5}}, ""),
            (at, "epoch_end", {"epoch": epoch, "sent": 0, "dropped": 0}, f"epoch_end-{epoch}"),
        ]
    return [(at, protocol.encode(protocol.make_message(kind, run, 0, 1, seq, body)), label)
            for seq, (at, kind, body, label) in enumerate(plan)]


def watch_mtimes(paths: list[Path], until: subprocess.Popen) -> dict[str, list[float]]:
    """Every distinct modification time each path had while the sender ran (files get rewritten)."""
    seen: dict[str, list[float]] = {str(p): [] for p in paths}
    while True:
        running = until.poll() is None
        for path in paths:
            try:
                mtime = os.stat(path).st_mtime
            except FileNotFoundError:
                continue
            if not seen[str(path)] or seen[str(path)][-1] != mtime:
                seen[str(path)].append(mtime)
        if not running:
            return seen
        time.sleep(0.01)


def probed_serve(record_path: Path, argv: list[str]) -> int:
    """Runs the monitor command line (`argv`), noting for every accepted frame (received wall time,
    sent wall time, run, kind, seq); writes them to `record_path` as JSON when it exits. Hooks
    `Intake.accept_many` and `Intake.accept`, which the receiver calls right after taking frames from
    the socket."""
    from monitor import cli
    from monitor.ingest.intake import Intake

    arrivals: list[tuple[float, float, str, str, int]] = []
    accept, accept_many = Intake.accept, Intake.accept_many

    def timed_accept(self: Intake, frame: bytes):
        received = time.time()
        message = accept(self, frame)
        if message is not None:
            arrivals.append((received, message.time, message.run, message.kind, message.seq))
        return message

    def timed_accept_many(self: Intake, frames: list[bytes]):
        received = time.time()  # a batch is taken from the socket at once, then handed over
        accepted = accept_many(self, frames)
        arrivals.extend((received, message.time, message.run, message.kind, message.seq) for message, _ in accepted)
        return accepted

    Intake.accept = timed_accept  # type: ignore[method-assign]
    Intake.accept_many = timed_accept_many  # type: ignore[method-assign]
    try:
        return cli.main(argv)
    finally:
        record_path.write_text(json.dumps(arrivals))


def measure(classes: int, epochs: int, spacing: float, work: Path, tensorboard: bool = False,
            render_defer: float | None = None) -> dict:
    """One run of `classes` classes served by a probed `monitor serve` (with `--tensorboard`, if asked)."""
    run = f"render-{classes}"
    schedule = epoch_schedule(run, classes, epochs, spacing)
    plan = work / f"{run}.pickle"
    plan.write_bytes(pickle.dumps(schedule))
    record = work / f"{run}-arrivals.json"
    out = work / f"out-{classes}"
    folder = run_dir(out, run)
    names = [*epoch_files(classes), *OTHER_EPOCH_FILES]
    paths = [folder / f"epoch_{e:03d}" / name for e in range(epochs) for name in names]
    paths += [folder / name for name in RUN_FILES]
    extra = ["--tensorboard", str(work / "tensorboard")] if tensorboard else []
    if render_defer is not None:
        extra += ["--render-defer", f"{render_defer:g}"]
    with MonitorProcess(out, *extra, command=[PYTHON, "-m", "bench.monitor_render", "--probed-serve", str(record),
                                              "serve"]) as monitor:
        monitor.wait_idle()
        sender = subprocess.Popen([PYTHON, "-m", "bench.sender", "--endpoint", monitor.endpoint, "--frames", str(plan),
                                   "--probe-period-ms", str(PROBE_MS), "--duration", str(1.0 + epochs * spacing)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        mtimes = watch_mtimes(paths, sender)
        report = json.loads(sender.communicate(timeout=60)[0])
        code = monitor.close()
    sent = dict(report["labelled"])
    arrivals = json.loads(record.read_text())
    probes = [(received, sent_at) for received, sent_at, r, _, _ in arrivals if r == "probe"]
    result = {"classes": classes, "monitor_exit_code": code, "probes_sent": report["probes"],
              "probes_received": len(probes), "epochs": [],
              "tensorboard_bytes": sum(f.stat().st_size for f in (work / "tensorboard").rglob("*tfevents*"))}
    quiet_until = sent["first-0"]
    quiet = [1e3 * (rec - snd) for rec, snd in probes if snd < quiet_until]
    result["quiet_latency_ms"] = {"median": median(quiet), "max": max(quiet, default=float("nan"))}
    for epoch in range(epochs):
        end_sent = sent[f"epoch_end-{epoch}"]
        ready = {}
        for path in [folder / f"epoch_{epoch:03d}" / name for name in names] + [folder / n for n in RUN_FILES]:
            after = [m for m in mtimes[str(path)] if m >= end_sent - 0.001]
            if after:
                ready[str(path.relative_to(folder))] = after[0] - end_sent
        window_end = end_sent + max(ready.values(), default=spacing)
        latencies = [1e3 * (rec - snd) for rec, snd in probes if sent[f"first-{epoch}"] <= snd <= window_end]
        received = sorted(rec for rec, snd in probes if sent[f"first-{epoch}"] <= snd <= window_end)
        gaps = [1e3 * (b - a) for a, b in zip(received, received[1:])]
        result["epochs"].append({
            "epoch": epoch, "artifacts_ready_s": max(ready.values(), default=float("nan")),
            "artifacts_found": len(ready), "ready_by_file_s": ready,
            "probe_latency_ms": {"median": median(latencies), "p99": quantile(latencies, 0.99),
                                 "max": max(latencies, default=float("nan"))},
            "max_gap_ms": max(gaps, default=float("nan")), "probes_in_window": len(latencies),
        })
    return result


# ---------------------------------------------------------------- one figure as a TensorBoard event


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


def measure_tensorboard_figure(classes: int, repeats: int, work: Path) -> dict:
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


def tensorboard_figures(classes: list[int], quick: bool) -> list[dict]:
    repeats = 3 if quick else 9
    with tempfile.TemporaryDirectory(prefix="bench-tensorboard-") as tmp:
        results = []
        for count in classes:
            work = Path(tmp) / str(count)
            work.mkdir()
            results.append(measure_tensorboard_figure(count, repeats, work))
    print_table(f"One confusion-matrix figure as a TensorBoard image event (median of {repeats})",
                ["classes", "PNG KiB", "TensorBoard's CRC-32C ms", "monitor's CRC-32C ms",
                 "writer thread, whole figure ms"],
                [[r["classes"], r["png_bytes"] / 1024, r["tensorboard_crc_s"] * 1e3, r["monitor_crc_s"] * 1e3,
                  r["writer_s"] * 1e3] for r in results])
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probed-serve"]:
        return probed_serve(Path(argv[1]), argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--classes", type=int, nargs="*", default=[43, 1000], help="class counts (default 43 1000)")
    parser.add_argument("--rounds", type=int, default=1, help="serve every class count this many times (default 1)")
    parser.add_argument("--tensorboard", action="store_true", help="serve with --tensorboard (TensorBoard events too)")
    parser.add_argument("--render-defer", type=float, default=None, metavar="SECONDS",
                        help="serve with this --render-defer (default: serve's own). The sender and its probes keep "
                             "a core busy, so by default figures wait for a quiet second; 0 times the drawing alone")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    epochs = 2 if args.quick else 3
    figures_as_events = tensorboard_figures(args.classes, args.quick) if args.tensorboard else None
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        for round_ in range(args.rounds):
            for classes in args.classes:
                spacing = 4.0 if classes <= 100 else 8.0
                print(f"  round {round_ + 1}/{args.rounds}, {classes} classes: {epochs} epochs, "
                      f"{spacing:.0f} s apart, probe every {PROBE_MS:g} ms", flush=True)
                work = Path(tmp) / f"{len(results)}"
                work.mkdir()
                results.append({**measure(classes, epochs, spacing, work, args.tensorboard, args.render_defer), "round": round_ + 1})
    grouped = args.rounds > 1  # then each row says which round it is of
    first = ["round"] if grouped else []

    def label(result: dict) -> list:
        return [result["round"]] if grouped else []

    print_table(f"Receive loop while epochs render (probe every {PROBE_MS:g} ms; window: epoch's first message -> "
                "its last artifact)",
                [*first, "classes", "epoch", "probe latency median ms", "p99 ms", "max ms (longest pause)",
                 "max gap between probes ms", "quiet max ms"],
                [[*label(r), r["classes"], e["epoch"], e["probe_latency_ms"]["median"], e["probe_latency_ms"]["p99"],
                  e["probe_latency_ms"]["max"], e["max_gap_ms"], r["quiet_latency_ms"]["max"]]
                 for r in results for e in r["epochs"]])
    print_table("Epoch's last message (epoch_end sent) -> all its artifacts on disk",
                [*first, "classes", "epoch", "ready s", "artifacts", "slowest file", "target s"],
                [[*label(r), r["classes"], e["epoch"], e["artifacts_ready_s"], e["artifacts_found"],
                  max(e["ready_by_file_s"], key=e["ready_by_file_s"].get) if e["ready_by_file_s"] else "-",
                  1.5 if r["classes"] <= 100 else 5.0] for r in results for e in r["epochs"]])
    if grouped:
        print_table("Longest pause of each run (its worst epoch), ms, by class count (target: 20 ms)",
                    ["classes", "each round", "median", "worst"],
                    [[classes, ", ".join(f"{w:.1f}" for w in worst), median(worst), max(worst)]
                     for classes in args.classes
                     for worst in [[max(e["probe_latency_ms"]["max"] for e in r["epochs"]) for r in results
                                    if r["classes"] == classes]]])
    print(f"probes received/sent: {[(r['probes_received'], r['probes_sent']) for r in results]}; "
          f"monitor exit codes: {[r['monitor_exit_code'] for r in results]}"
          + (f"; TensorBoard event bytes: {[r['tensorboard_bytes'] for r in results]}" if args.tensorboard else ""))
    write_json(args.json, {"render": results, "tensorboard_events": figures_as_events})
    lost = [r["classes"] for r in results if r["probes_received"] < r["probes_sent"]]
    if lost:
        print(f"FAILED: the monitor recorded fewer probes than were sent ({lost} classes); "
              "probed_serve may no longer hook the receive path", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
