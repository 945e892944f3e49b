"""A synthetic classification run sent through the real `Emitter`, for the benchmarks and the tests.

`send_run` plays what a training would send for a C-class problem (protocol 1.2): `run_start`,
then per epoch the validation predictions with their confidences (in chunks, as `EmitterCallback`
does on a GPU), the epoch's hardest mistakes, the val and train metrics and `epoch_end`, then
`run_end`. Predictions are right with probability `accuracy`, and otherwise confuse each class with
a few neighbouring ones, so the confusion matrices have structure; confidences are higher when the
prediction is right. Returns the labels and predictions of every epoch, for independent checks.
"""

from __future__ import annotations

import numpy as np

from trainer_side.emitter import Emitter

CHUNK = 10_000  # predictions per `preds` message
MISTAKES = 16  # the hardest mistakes an epoch sends, as `EmitterCallback(num_mistakes=16)`
THUMBNAIL = 32  # their thumbnails' side in pixels


def class_names(classes: int) -> list[str]:
    width = len(str(classes - 1))
    return [f"class_{i:0{width}d}" for i in range(classes)]


def predictions(classes: int, samples: int, seed: int, accuracy: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(labels, preds): labels uniform over the classes; a wrong prediction is a neighbouring class
    (up to 3 away, wrapping) half the time, any class otherwise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    near = (labels + rng.integers(1, 4, samples)) % classes
    wrong = np.where(rng.random(samples) < 0.5, near, rng.integers(0, classes, samples))
    return labels, np.where(rng.random(samples) < accuracy, labels, wrong)


def confidences(right: np.ndarray, seed: int) -> np.ndarray:
    """Each prediction's top-1 confidence, float16 in [0, 1]: Beta(6, 2) (mean 0.75) where `right`,
    Beta(2, 2) (mean 0.5) where not."""
    rng = np.random.default_rng((seed, 1))  # a stream apart from the predictions' one
    return np.where(right, rng.beta(6, 2, right.size), rng.beta(2, 2, right.size)).astype(np.float16)


def hardest_mistakes(labels: np.ndarray, preds: np.ndarray, confidence: np.ndarray,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(thumbnails, labels, preds, confidence) of the MISTAKES most confident wrong predictions,
    most confident first (equal ones in sample order), as an emitter sends them; the thumbnails are
    seeded noise."""
    wrong = np.flatnonzero(labels != preds)
    chosen = wrong[np.argsort(-confidence[wrong].astype(np.float32), kind="stable")[:MISTAKES]]
    images = np.random.default_rng((seed, 2)).integers(0, 256, (chosen.size, THUMBNAIL, THUMBNAIL, 3), dtype=np.uint8)
    return images, labels[chosen], preds[chosen], confidence[chosen]


def send_run(emitter: Emitter, classes: int, samples: int, epochs: int = 1, seed: int = 0,
             end: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sends a whole run (without `run_end` if not `end`); returns (labels, preds) per epoch."""
    start_run(emitter, classes)
    sent = [send_epoch(emitter, classes, samples, epoch, seed + epoch) for epoch in range(epochs)]
    if end:
        emitter.run_end("completed")
    return sent


def start_run(emitter: Emitter, classes: int) -> None:
    emitter.run_start(class_names(classes), model={"class": "Synthetic", "total_params": 1, "trainable_params": 1,
                                                   "size_mb": 0.0})


def send_epoch(emitter: Emitter, classes: int, samples: int, epoch: int, seed: int,
               end: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's predictions with confidences (in chunks), hardest mistakes, metrics and
    epoch_end (unless not `end`); returns (labels, preds)."""
    labels, preds = predictions(classes, samples, seed)
    confidence = confidences(labels == preds, seed)
    for start in range(0, samples, CHUNK):
        chunk = slice(start, start + CHUNK)
        emitter.preds(epoch, preds[chunk], labels[chunk], step=epoch, confidence=confidence[chunk])
    emitter.mistakes(epoch, *hardest_mistakes(labels, preds, confidence, seed), top_k=MISTAKES)
    emitter.metrics(epoch, "val", {"val/loss": 1.0 / (epoch + 1), "val/acc_top1": float(np.mean(labels == preds))})
    emitter.metrics(epoch, "train", {"train/loss": 1.2 / (epoch + 1)})
    if end:
        emitter.epoch_end(epoch)
    return labels, preds
