"""Per-sample state of a run: one validation epoch's samples merged over ranks, their history, and the
training set's cartography.

A minimal stand-in with the interface of issue 29 (EpochSamples, SampleHistory.add_epoch,
TrainingMap.add_epoch): the per-sample analysis replaces the bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochSamples:
    """One validation epoch, all ranks merged, each id once, sorted by id."""

    epoch: int
    ids: np.ndarray  # int64, unique, ascending
    labels: np.ndarray  # int64
    preds: np.ndarray  # int64
    confidence: np.ndarray | None  # float32 top-1 confidence; None from a sender before 1.2
    label_confidence: np.ndarray | None  # float32; None from a sender without it


class SampleHistory:
    """Per-sample history of one run's validation set."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.epochs: list[int] = []
        self.last: EpochSamples | None = None

    def add_epoch(self, samples: EpochSamples) -> None:
        """One epoch's samples; epochs arrive in increasing order."""
        self.epochs.append(samples.epoch)
        self.last = samples


class TrainingMap:
    """Training-set cartography state (track_train)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.epochs: list[int] = []

    def add_epoch(self, epoch: int, ids: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                  label_confidence: np.ndarray) -> None:
        self.epochs.append(epoch)
