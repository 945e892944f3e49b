"""The `monitor serve` process's memory (RSS) over a long run and under a flood, and the delay a
sender's claims add to another run's artifacts.

- long run: one trainer's run of 60 epochs at 1,000 classes, each epoch a preds frame of 10,000
  validation samples (70 % right, the rest spread over every class), a 16-image thumbnail grid,
  metrics and its epoch end; the next epoch is sent once the previous one's confusion matrix is on
  disk, as a trainer slower than the monitor would. RSS is read from /proc when it listens, once it
  has loaded everything and is idle (nothing received: the start of the growth), at the end (last
  matrix written) and its peak (VmHWM).
- flood: one sender pushes 1,200 frames of 2 MB (preds of 1,000,000 samples) as fast as ZeroMQ
  takes them (waiting up to 30 s a frame, so every buffer on the way stays full), while the
  monitor's pipeline falls behind. Prints the peak RSS beside the ceiling the monitor states: its
  RSS once loaded, plus the hand-off queue's capacity, one receive batch and RCVHWM frames per
  sender (monitor/ingest/handoff.py).
- world claim: a sender claims a world of 2**20 ranks and sends 50 epochs from rank 0 alone (the
  other ranks never end them); then a normal run sends three epochs, and the seconds from each of
  its epoch ends to its confusion matrix on disk are printed.

The figures are the monitor process's own; its render workers are separate processes.
`monitor serve` listens before it imports torch and matplotlib, so its RSS when listening is far
below its RSS once loaded; growth and ceiling count from the latter.
With `--checkout DIR` the monitor of another checkout is measured instead.

    python -m bench.monitor_memory [--quick] [--epochs N] [--classes N] [--checkout DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from bench.common import add_common_args, print_table, write_json
from bench.harness import PYTHON, ROOT, MonitorProcess
from trainer_side import protocol
from trainer_side.protocol import make_message

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--flood-frames", type=int, default=1200)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the project checkout whose monitor runs")
    parser.add_argument("--skip-flood", action="store_true")
    parser.add_argument("--skip-world", action="store_true")
    args = parser.parse_args(argv)
    epochs, frames = (5, 200) if args.quick else (args.epochs, args.flood_frames)
    os.environ["PYTHONPATH"] = str(args.checkout)  # the monitor imports that checkout's code, not ours
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        results["long run"] = long_run(args.checkout, Path(tmp) / "long", epochs, args.classes, 10_000)
        if not args.skip_flood:
            results["flood"] = flood(args.checkout, Path(tmp) / "flood", frames, FLOOD_SAMPLES)
        if not args.skip_world:
            delays = world_claim(args.checkout, Path(tmp) / "world", 50)
            results["world claim"] = {f"epoch {i} s": d for i, d in enumerate(delays)}
    long = results["long run"]
    print_table(f"monitor RSS (MiB), {epochs} epochs x {args.classes:,} classes, {args.checkout}",
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
    write_json(args.json, {"command": [PYTHON, "-m", "bench.monitor_memory", *(argv or [])], "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
