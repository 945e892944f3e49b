"""Confusion counts on the CPU with torchmetrics, and the few numbers derived from them."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

# A C×C int64 matrix costs 8·C² bytes; past this many classes the monitor keeps no matrix (a warning says so).
MAX_CONFUSION_CLASSES = 4096


_kept = threading.local()


def confusion_counts(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = true class, columns = predicted class."""
    metric = _metric(num_classes)
    metric.update(torch.from_numpy(preds.astype(np.int64)), torch.from_numpy(labels.astype(np.int64)))
    return metric.compute().numpy().astype(np.int64)


def _metric(num_classes: int) -> MulticlassConfusionMatrix:
    """This thread's metric for this class count, reset: building a new one allocates its C×C state
    with the GIL held (about 5 ms at 1,000 classes, a pause for the receive thread); a reset does
    not hold it (bench/gil_pauses.py). One metric per thread, for the last class count asked for."""
    metric = getattr(_kept, "metric", None)
    if metric is None or metric.num_classes != num_classes:
        metric = _kept.metric = MulticlassConfusionMatrix(num_classes=num_classes, validate_args=False)
    else:
        metric.reset()
    return metric


def accuracy(counts: np.ndarray) -> float | None:
    total = int(counts.sum())
    return None if total == 0 else float(np.trace(counts)) / total
