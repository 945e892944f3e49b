"""Calibration of an epoch's top-1 confidences (15 equal-width bins, ECE, MCE) and its hardest
mistakes merged over ranks.

Bins are bounded state: per bin a count, a sum of confidences and a count of right predictions, the
same few numbers whatever the number of samples; ranks and chunks add up bin by bin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from trainer_side.protocol import Message

NUM_BINS = 15
# Bin b holds confidences in [EDGES[b], EDGES[b+1]); the last bin also holds 1.0.
EDGES = np.linspace(0.0, 1.0, NUM_BINS + 1)
# The most thumbnails misclassified.png shows, whatever the trainers' top_k.
MAX_MISTAKES_SHOWN = 64


@dataclass(frozen=True)
class CalibrationBins:
    """Per bin: how many predictions, the sum of their confidences, how many were right. NaN
    confidences (logits holding NaN) fall in no bin and are counted in `unscored`."""

    counts: np.ndarray  # int64, NUM_BINS
    confidence_sums: np.ndarray  # float64, NUM_BINS
    correct: np.ndarray  # int64, NUM_BINS
    unscored: int = 0

    @classmethod
    def of(cls, confidence: np.ndarray, preds: np.ndarray, labels: np.ndarray) -> CalibrationBins:
        """The bins of one batch; confidences must lie in [0, 1] or be NaN."""
        confidence = np.asarray(confidence, dtype=np.float64)
        scored = ~np.isnan(confidence)
        values = confidence[scored]
        index = np.minimum(np.searchsorted(EDGES, values, side="right") - 1, NUM_BINS - 1)
        right = (np.asarray(preds) == np.asarray(labels))[scored]
        return cls(np.bincount(index, minlength=NUM_BINS).astype(np.int64),
                   np.bincount(index, weights=values, minlength=NUM_BINS),
                   np.bincount(index[right], minlength=NUM_BINS).astype(np.int64),
                   int(len(confidence) - len(values)))

    def __add__(self, other: CalibrationBins) -> CalibrationBins:
        return CalibrationBins(self.counts + other.counts, self.confidence_sums + other.confidence_sums,
                               self.correct + other.correct, self.unscored + other.unscored)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def accuracy(self) -> np.ndarray:
        """Accuracy per bin (NaN for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.correct / np.maximum(self.counts, 1), np.nan)

    def mean_confidence(self) -> np.ndarray:
        """Mean confidence per bin (NaN for an empty bin)."""
        return np.where(self.counts > 0, self.confidence_sums / np.maximum(self.counts, 1), np.nan)

    def gaps(self) -> np.ndarray:
        """|accuracy - mean confidence| of the non-empty bins."""
        filled = self.counts > 0
        return np.abs(self.accuracy()[filled] - self.mean_confidence()[filled])

    def ece(self) -> float:
        """Expected calibration error: sum over bins of (n_b / N) |acc_b - conf_b|; NaN without samples."""
        total = self.total
        if total == 0:
            return float("nan")
        return float(np.sum(self.counts[self.counts > 0] / total * self.gaps()))

    def mce(self) -> float:
        """Maximum calibration error: the largest |acc_b - conf_b| of a non-empty bin; NaN without samples."""
        gaps = self.gaps()
        return float(gaps.max()) if len(gaps) else float("nan")


def check_confidence(confidence: np.ndarray) -> str | None:
    """Why these confidences cannot be binned (a value outside [0, 1]), or None when they can."""
    finite = confidence[~np.isnan(confidence)]
    if len(finite) and (float(finite.min()) < 0 or float(finite.max()) > 1):
        return f"confidences must lie in [0, 1], got {float(finite.min())} to {float(finite.max())}"
    return None


@dataclass(frozen=True)
class MergedMistakes:
    """The most confident mistakes of an epoch over every rank, most confident first."""

    images: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray  # float16
    ranks: np.ndarray


def merge_mistakes(by_rank: Mapping[int, Message]) -> MergedMistakes | None:
    """The top mistakes of every rank's `mistakes` message, merged: ordered by confidence
    (descending), then rank, then place in the rank's message; as many as the largest `top_k` any
    rank used, at most MAX_MISTAKES_SHOWN. None when no rank sent a mistake."""
    messages = [by_rank[rank] for rank in sorted(by_rank) if len(by_rank[rank]["labels"])]
    if not messages:
        return None
    confidence = np.concatenate([m["confidence"] for m in messages])
    ranks = np.concatenate([np.full(len(m["labels"]), m.rank) for m in messages])
    places = np.concatenate([np.arange(len(m["labels"])) for m in messages])
    limit = min(max(m["top_k"] for m in messages), MAX_MISTAKES_SHOWN)
    # NaN confidences never come from the emitter; if sent, they go last.
    key = np.nan_to_num(confidence.astype(np.float64), nan=-1.0)
    order = np.lexsort((places, ranks, -key))[:limit]
    # Only the shown thumbnails are copied, however many ranks sent theirs.
    starts = np.cumsum([0] + [len(m["labels"]) for m in messages])
    which = np.searchsorted(starts, order, side="right") - 1
    images = np.stack([messages[w]["images"][i - starts[w]] for w, i in zip(which, order)])
    return MergedMistakes(images=images,
                          labels=np.concatenate([m["labels"].astype(np.int64) for m in messages])[order],
                          preds=np.concatenate([m["preds"].astype(np.int64) for m in messages])[order],
                          confidence=confidence[order], ranks=ranks[order])
