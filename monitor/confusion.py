"""Confusion counts on the CPU with torchmetrics, and the few numbers derived from them."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

# A C×C int64 matrix costs 8·C² bytes; past this many classes the monitor keeps no matrix (a warning says so).
MAX_CONFUSION_CLASSES = 4096


def confusion_counts(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = true class, columns = predicted class."""
    metric = MulticlassConfusionMatrix(num_classes=num_classes, validate_args=False)
    metric.update(torch.from_numpy(preds.astype(np.int64)), torch.from_numpy(labels.astype(np.int64)))
    return metric.compute().numpy().astype(np.int64)


def accuracy(counts: np.ndarray) -> float | None:
    total = int(counts.sum())
    return None if total == 0 else float(np.trace(counts)) / total
