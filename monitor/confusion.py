"""Confusion counts on the CPU with torchmetrics, and the few numbers derived from them."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

# A C×C int64 matrix costs 8·C² bytes; past this many classes the monitor keeps no matrix (a warning says so).
MAX_CONFUSION_CLASSES = 4096


def confusion_counts(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = true class, columns = predicted class.

    The functional form, not the `MulticlassConfusionMatrix` class: building the class allocates and
    copies its C×C state with the GIL held (about 5 ms at 1,000 classes, 73 ms at 4,096), which the
    receive thread waits out; the function holds the GIL for none of its work and takes a fifth of
    the time (bench/confusion_handoff.py, BENCHMARKS.md §6 item 4).
    """
    counts = multiclass_confusion_matrix(torch.from_numpy(preds.astype(np.int64)),
                                         torch.from_numpy(labels.astype(np.int64)), num_classes,
                                         validate_args=False)
    return counts.numpy().astype(np.int64)


def accuracy(counts: np.ndarray) -> float | None:
    total = int(counts.sum())
    return None if total == 0 else float(np.trace(counts)) / total
