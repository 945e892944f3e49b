"""Small runs for the report tests, written as emitter spools (no monitor) and replayed: real message
logs, real figures. `HOSTILE_CLASS` and `HOSTILE_RUN` hold markup, quotes and ampersands."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console

from monitor.replay import replay
from trainer_side.emitter import Emitter

HOSTILE_CLASS = "<script>alert('c')</script> & \"q\""
HOSTILE_RUN = "<script>alert(\"r\")</script>&'x'"
CLASSES = ["cat", "dog", HOSTILE_CLASS, "bird & fish"]


def write_spool(spool: Path, run: str, *, classes: Sequence[str] = CLASSES, epochs: int = 3, seed: int = 0,
                skill: float = 0.5, endpoint: str | None = None) -> list[Path]:
    """One run's spool (and sent to `endpoint`, if given): per epoch, predictions right with
    probability rising from `skill`, metrics, 16 thumbnails and the sampler's draws. Returns the
    spool's logs."""
    rng = np.random.default_rng(seed)
    k, n, train = len(classes), 120, 200
    targets = rng.integers(0, k, train).astype(np.uint8 if k <= 256 else np.uint16)
    emitter = Emitter(endpoint, run=run, spool=str(spool))
    weights = np.ones(train)
    emitter.run_start(classes, model={"class": "TinyNet", "total_params": 740, "trainable_params": 740,
                                      "size_mb": 0.003}, train_targets=targets,
                      sampler={"type": "TrackingWeightedRandomSampler", "num_samples": train,
                               "weights_per_class": np.bincount(targets, weights, minlength=k)},
                      hparams={"lr": 0.001 * (seed + 1)})
    for epoch in range(epochs):
        labels = rng.integers(0, k, n)
        right = rng.random(n) < min(0.95, skill + 0.15 * epoch)
        preds = np.where(right, labels, rng.integers(0, k, n))
        accuracy = float((preds == labels).mean())
        emitter.preds(epoch, preds=preds, labels=labels)
        emitter.samples(epoch, images=rng.integers(0, 255, (16, 16, 16, 3), dtype=np.uint8), labels=labels[:16],
                        preds=preds[:16])
        emitter.sampled(epoch, rng.integers(0, train, train))
        emitter.metrics(epoch, "train", {"train/loss": 1.5 - 0.2 * epoch - 0.1 * seed})
        emitter.metrics(epoch, "val", {"val/loss": 1.6 - accuracy, "val/acc_top1": accuracy})
        emitter.epoch_end(epoch)
    emitter.run_end("completed")
    emitter.close()
    return sorted(spool.rglob("*.mlog"))


def replay_into(out: Path, logs: Sequence[Path]) -> None:
    with open("/dev/null", "w") as sink:
        replay(list(logs), out, skip_corrupt=False, console=Console(file=sink))
