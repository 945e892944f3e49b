"""Emitter micro-costs: µs per EmitterCallback hook and per Emitter.send, bytes on the wire, memory bound.

1. Hooks: a real demo fit (batch 16, so 22 validation batches per epoch; 2 training batches per epoch)
   with every EmitterCallback hook timed, sending to a bare PULL socket in another process.
2. Emitter.send per message kind (encode + non-blocking send), many repetitions.
3. Bytes per validation sample (preds + labels + confidence, through ValidationCollector and the wire
   codec) for 10, 43, 1,000 and 70,000 classes, and bytes per thumbnail batch (16 thumbnails).
4. The trainer's time per validation batch in ValidationCollector.add (what on_validation_batch_end
   does on the device) with confidence and hardest mistakes off, confidence only, and both on.
5. Memory bound: trainer RSS while thumbnail messages pile up for an absent or a SIGSTOPped monitor.

    python -m bench.emitter_costs [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import atexit
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.harness import (MonitorProcess, PullSink, add_common_args, free_port,
                           median, print_table, quantile, write_json)
from trainer_side import protocol
from trainer_side.collect import ValidationCollector
from trainer_side.train_collect import TrainingCollector
from trainer_side.emitter import Emitter

HOOKS = ("setup", "on_train_start", "on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end",
         "on_validation_end", "on_train_epoch_end", "on_fit_end", "teardown")
NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def rss_mb() -> float:
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def hook_costs(epochs: int, spool: Path, **callback_kwargs: Any) -> dict[str, list[float]]:
    import lightning as L

    from trainer_side import EmitterCallback
    from trainer_side.demo import DemoClassifier, DigitsDataModule

    timings: dict[str, list[float]] = {name: [] for name in HOOKS}
    sink = PullSink()
    try:
        callback = EmitterCallback(endpoint=sink.endpoint, run="hook-costs", spool=str(spool), **callback_kwargs)
        for name in HOOKS:
            original = getattr(callback, name)

            def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    timings[_name].append(time.perf_counter() - started)

            setattr(callback, name, timed)
        datamodule = DigitsDataModule(batch_size=16, seed=0)
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_train_batches=2, num_sanity_val_steps=0)
        trainer.fit(DemoClassifier(num_classes=10), datamodule=datamodule)
        sent, dropped = callback.emitter.sent, callback.emitter.dropped
    finally:
        frames, size = sink.close()
    print(f"  hook fit: {epochs} epochs, emitter sent {sent}, dropped {dropped}; sink received {frames} frames, "
          f"{size:,} bytes")
    return timings


def send_costs(repeats: int, spool: Path) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    bodies = {
        "preds (350 samples, u1)": ("preds", {"epoch": 1, "step": 10, "preds": rng.integers(0, 10, 350, dtype=np.uint8),
                                              "labels": rng.integers(0, 10, 350, dtype=np.uint8)}),
        "samples (16 x 32x32)": ("samples", {"epoch": 1, "images": rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8),
                                             "labels": np.zeros(16, np.uint8), "preds": np.zeros(16, np.uint8)}),
        "samples (16 x 64x64)": ("samples", {"epoch": 1, "images": rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8),
                                             "labels": np.zeros(16, np.uint8), "preds": np.zeros(16, np.uint8)}),
        "sampled (1,100 indices)": ("sampled", {"epoch": 1, "indices": rng.integers(0, 1100, 1100).astype(np.uint32)}),
        "metrics (5 values)": ("metrics", {"epoch": 1, "stage": "val", "step": 10,
                                           "values": {f"val/m{i}": 0.5 for i in range(5)}}),
        "epoch_end": ("epoch_end", {"epoch": 1, "sent": 10, "dropped": 0}),
    }
    timings: dict[str, list[float]] = {}
    sink = PullSink()
    emitter = Emitter(sink.endpoint, run="send-costs", queue_size=100_000, spool=str(spool))
    try:
        emitter.send("metrics", bodies["metrics (5 values)"][1])  # opens the socket
        for label, (kind, body) in bodies.items():
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                emitter.send(kind, body)
                times.append(time.perf_counter() - started)
            timings[label] = times
            time.sleep(0.2)  # let the sink drain between kinds
        print(f"  send costs: sent {emitter.sent}, dropped {emitter.dropped}")
    finally:
        emitter.close()
        sink.close()
    return timings


def preds_frame_bytes(num_classes: int, samples: int, batch: int = 100) -> int:
    collector = ValidationCollector(num_classes, num_thumbnails=0, thumbnail_size=64, chunk_size=10**9,
                                    normalization=NORMALIZATION)
    generator = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(batch, num_classes, generator=generator)
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        collector.add(logits[:n], torch.randint(0, num_classes, (n,), generator=generator))
    chunk = collector.take_chunk()
    message = protocol.make_message("preds", "run-20240101-120000-abcd", 0, 1, 123,
                                    {"epoch": 12, "step": 12345, "preds": chunk.preds, "labels": chunk.labels,
                                     "confidence": chunk.confidence})
    return len(protocol.encode(message))


def sample_field_bytes(samples: int = 10_000) -> dict[str, float]:
    """Bytes per validation sample that each protocol 1.3 field adds to a preds message of 43 classes:
    ids as a range, explicit ids (every other sample, as a DistributedSampler's rank holds them),
    and the label's probability."""
    rng = np.random.default_rng(0)
    base = {"epoch": 12, "step": 12345, "preds": rng.integers(0, 43, samples).astype(np.uint8),
            "labels": rng.integers(0, 43, samples).astype(np.uint8),
            "confidence": rng.random(samples).astype(np.float16)}
    extra = {"ids as a range": {"ids": protocol.IdRange(0, samples)},
             "explicit ids": {"ids": protocol.compact_ids(np.arange(0, 2 * samples, 2))},
             "label_confidence": {"label_confidence": rng.random(samples).astype(np.float16)}}

    def size(body: dict) -> int:
        return len(protocol.encode(protocol.make_message("preds", "run-20240101-120000-abcd", 0, 1, 123, body)))

    return {name: (size({**base, **fields}) - size(base)) / samples for name, fields in extra.items()}


COLLECTOR_SETTINGS = {"confidence off, mistakes off (1.1)": {"confidence": False, "num_mistakes": 0},
                      "confidence on, mistakes off": {"confidence": True, "num_mistakes": 0},
                      "confidence on, mistakes 16": {"confidence": True, "num_mistakes": 16}}


def collector_costs(batches: int, batch: int, classes: int, image_side: int) -> dict[str, list[float]]:
    """Seconds per ValidationCollector.add of one batch (logits, labels, N×3×S×S images), per setting;
    the settings take turns batch by batch, so that the machine's load falls on each alike."""
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(batch, classes, generator=generator) * 3
    labels = torch.randint(0, classes, (batch,), generator=generator)
    images = torch.randn(batch, 3, image_side, image_side, generator=generator)
    collectors = {name: ValidationCollector(classes, num_thumbnails=0, thumbnail_size=64, chunk_size=10**9,
                                            normalization=NORMALIZATION, **kwargs)
                  for name, kwargs in COLLECTOR_SETTINGS.items()}
    times: dict[str, list[float]] = {name: [] for name in collectors}
    for index in range(batches + 20):
        for name, collector in collectors.items():
            if index % 50 == 0:
                collector.reset()  # a new epoch: bounded state
            started = time.perf_counter()
            collector.add(logits, labels, images)
            if index >= 20:  # warm-up batches are not counted
                times[name].append(time.perf_counter() - started)
    return times


def train_collector_costs(batches: int, batch: int, classes: int) -> list[float]:
    """Seconds per TrainingCollector.add of one training batch (track_train=True: argmax, the label's
    probability, ids from the batch), the trainer's added cost per training batch on this device."""
    generator = torch.Generator().manual_seed(classes)
    outputs = {"loss": torch.tensor(1.0), "logits": torch.randn(batch, classes, generator=generator) * 3}
    batch_items = (torch.zeros(batch, 1), torch.randint(0, classes, (batch,), generator=generator),
                   torch.randperm(1_281_167, generator=generator)[:batch])
    collector = TrainingCollector(classes, chunk_size=10**9, batch_keys=None, id_key=2)
    times = []
    for index in range(batches + 20):
        if index % 50 == 0:
            collector.take_chunk()  # an epoch's end: bounded state
            collector.reset()
        started = time.perf_counter()
        collector.add(outputs, batch_items)
        if index >= 20:
            times.append(time.perf_counter() - started)
    return times


def thumbnail_frame_bytes(side: int, count: int = 16) -> int:
    collector = ValidationCollector(10, num_thumbnails=count, thumbnail_size=64, chunk_size=10**9,
                                    normalization=NORMALIZATION)
    images = torch.randn(count, 3, side, side)
    collector.add(torch.randn(count, 10), torch.randint(0, 10, (count,)), images)
    thumbs = collector.take_thumbnails()
    message = protocol.make_message("samples", "run-20240101-120000-abcd", 0, 1, 123,
                                    {"epoch": 12, "images": thumbs.images, "labels": thumbs.labels,
                                     "preds": thumbs.preds})
    return len(protocol.encode(message))


def memory_bound(endpoint: str, messages: int, checkpoints: list[int], spool: Path) -> dict[str, Any]:
    """RSS growth while 64-px thumbnail messages pile up with nobody draining them."""
    images = np.random.default_rng(0).integers(0, 255, (16, 64, 64, 3), dtype=np.uint8)
    body = {"epoch": 0, "images": images, "labels": np.zeros(16, np.uint8), "preds": np.zeros(16, np.uint8)}
    emitter = Emitter(endpoint, run="memory-bound", linger_ms=2000, spool=str(spool))
    before = rss_mb()
    growth = {}
    send_times = []
    for i in range(1, messages + 1):
        started = time.perf_counter()
        emitter.send("samples", body)
        send_times.append(time.perf_counter() - started)
        if i in checkpoints:
            growth[i] = rss_mb() - before
    started = time.perf_counter()
    emitter.close()
    return {"rss_growth_mb": growth, "sent": emitter.sent, "dropped": emitter.dropped,
            "close_s": time.perf_counter() - started, "send_us_p99": 1e6 * quantile(send_times, 0.99),
            "after_close_mb": rss_mb() - before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("trainer_side").setLevel(logging.ERROR)  # the drop warnings are expected in section 4
    epochs, repeats, pile, batches = (3, 300, 1500, 200) if args.quick else (12, 2000, 3000, 1000)

    work = Path(tempfile.mkdtemp(prefix="bench-emitter-"))  # the emitters' spools (on, as users run them)
    atexit.register(shutil.rmtree, work, True)
    hooks = hook_costs(epochs, work / "hooks")
    print_table("EmitterCallback hooks in a demo fit (µs; sink: bare PULL socket in another process)",
                ["hook", "calls", "median µs", "p99 µs", "max µs"],
                [[name, len(t), 1e6 * median(t), 1e6 * quantile(t, 0.99), 1e6 * max(t)] for name, t in hooks.items() if t])

    sends = send_costs(repeats, work / "sends")
    print_table("Emitter.send per message (encode + non-blocking send), µs",
                ["message", "calls", "median µs", "p99 µs"],
                [[label, len(t), 1e6 * median(t), 1e6 * quantile(t, 0.99)] for label, t in sends.items()])

    sizes = {}
    for classes in (10, 43, 1000, 70000):
        small, large = preds_frame_bytes(classes, 350), preds_frame_bytes(classes, 10_000)
        sizes[classes] = {"frame_350": small, "frame_10000": large, "per_sample_10000": large / 10_000,
                          "per_sample_marginal": (large - small) / (10_000 - 350)}
    targets = {10: "<= 4.1", 43: "<= 4.1", 1000: "(none; > 256 classes)", 70000: "(none; > 65,536 classes)"}
    print_table("Bytes on the wire per validation sample (one preds message: predictions + labels + "
                "float16 confidence)",
                ["classes", "frame, 350 samples", "frame, 10,000", "per sample @10,000", "marginal per sample", "target"],
                [[c, s["frame_350"], s["frame_10000"], s["per_sample_10000"], s["per_sample_marginal"], targets[c]]
                 for c, s in sizes.items()])
    fields = sample_field_bytes()
    print_table("Bytes per validation sample that protocol 1.3's fields add (preds of 10,000 samples)",
                ["field", "bytes per sample", "bound"],
                [[name, value, {"ids as a range": "0", "explicit ids": "<= 4"}.get(name, "2")]
                 for name, value in fields.items()])
    thumbs = {"demo 32x32 input (kept 32 px)": thumbnail_frame_bytes(32),
              "224x224 input (resized to 64 px)": thumbnail_frame_bytes(224)}
    print_table("Bytes per thumbnail batch (one samples message, 16 thumbnails, uint8 HxWx3)",
                ["input", "frame bytes", "bytes per thumbnail"], [[k, v, v / 16] for k, v in thumbs.items()])

    collector_times = {}
    for label, shape in (("batch 64, 10 classes, 3x32x32", (64, 10, 32)),
                         ("batch 64, 1,000 classes, 3x224x224", (64, 1000, 224))):
        collector_times[label] = collector_costs(batches, *shape)
    print_table("Trainer time per validation batch in ValidationCollector.add (CPU; µs)",
                ["batch", "setting", "batches", "median µs", "p99 µs"],
                [[label, name, len(t), 1e6 * median(t), 1e6 * quantile(t, 0.99)]
                 for label, by_setting in collector_times.items() for name, t in by_setting.items()])
    train_times = {label: train_collector_costs(batches, batch, classes)
                   for label, (batch, classes) in (("batch 64, 10 classes", (64, 10)),
                                                   ("batch 256, 1,000 classes", (256, 1000)))}
    print_table("Trainer time per training batch with track_train=True (TrainingCollector.add, CPU; µs)",
                ["batch", "batches", "median µs", "p99 µs"],
                [[label, len(t), 1e6 * median(t), 1e6 * quantile(t, 0.99)] for label, t in train_times.items()])
    hooks_off = hook_costs(epochs, work / "hooks-off", num_mistakes=0)
    batch_hooks = {"num_mistakes=16 (default)": hooks["on_validation_batch_end"],
                   "num_mistakes=0": hooks_off["on_validation_batch_end"]}
    print_table("on_validation_batch_end in the demo fit, hardest mistakes on vs off (µs; confidence on in both)",
                ["setting", "calls", "median µs", "p99 µs"],
                [[name, len(t), 1e6 * median(t), 1e6 * quantile(t, 0.99)] for name, t in batch_hooks.items()])

    checkpoints = [500, 1000, pile]
    memory = {}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        memory["absent"] = memory_bound(f"tcp://127.0.0.1:{free_port()}", pile, checkpoints, work / "absent")
        with MonitorProcess(Path(tmp) / "stopped") as monitor:
            monitor.sigstop()
            memory["sigstopped"] = memory_bound(monitor.endpoint, pile, checkpoints, work / "sigstopped")
    print_table(f"Trainer memory while {pile:,} thumbnail messages (196,608-byte images each) find no reader "
                "(queue_size=1000, linger_ms=2000)",
                ["monitor", *(f"RSS +MB after {n:,}" for n in checkpoints), "sent", "dropped", "send p99 µs",
                 "close s", "RSS +MB after close"],
                [[name, *(m["rss_growth_mb"][n] for n in checkpoints), m["sent"], m["dropped"], m["send_us_p99"],
                  m["close_s"], m["after_close_mb"]] for name, m in memory.items()])
    write_json(args.json, {"hooks_s": hooks, "send_s": sends, "preds_bytes": sizes, "sample_field_bytes": fields,
                           "thumbnail_bytes": thumbs,
                           "collector_add_s": collector_times, "train_collector_add_s": train_times, "batch_hook_s": batch_hooks, "memory": memory})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
