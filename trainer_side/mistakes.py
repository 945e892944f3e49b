"""The most confident wrong predictions of one validation epoch, kept on the device and bounded.

Per batch: the batch's best candidates (wrong predictions by confidence; right ones rank last) get
thumbnails, then merge with the kept ones by a stable sort, so that among equal confidences the
earlier sample stays first. On an accelerator that is the batch's `top_k` best, chosen without
reading anything back (no synchronization); on the CPU, where reading a number costs nothing, only
those that beat the kept ones. `take` copies to the host once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

NOT_A_MISTAKE = -1.0  # the score of a right (or unscored) prediction: below every confidence


@dataclass(frozen=True)
class Mistakes:
    images: np.ndarray  # N×H×W×3 uint8, most confident first
    labels: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray  # float16
    ids: np.ndarray  # int64: what the collector passed as each sample's id (-1: none)


class HardestMistakes:
    """Keeps the `top_k` most confident wrong predictions of an epoch with their thumbnails.

    Args:
        top_k: how many to keep (0: none).
        thumbnails: makes N×H×W×3 uint8 thumbnails of N input images on their device, or returns
            None for inputs it cannot show (then this epoch keeps no mistakes).
        read_back: whether candidates that cannot enter are dropped by reading the scores (None:
            on CPU tensors only); the kept mistakes are the same either way.
    """

    def __init__(self, top_k: int, thumbnails: Callable[[torch.Tensor], torch.Tensor | None],
                 read_back: bool | None = None) -> None:
        self.top_k = top_k
        self._thumbnails = thumbnails
        self._read_back = read_back
        self.reset()

    def reset(self) -> None:
        # (score float32, thumbnails, labels, preds, confidence float16, ids int64), by score, descending
        self._kept: tuple[torch.Tensor, ...] | None = None
        self.failed = False

    @property
    def wanted(self) -> bool:
        return self.top_k > 0 and not self.failed

    def add(self, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, confidence: torch.Tensor,
            ids: torch.Tensor | None = None) -> None:
        """One batch: `labels`, `preds` (integer), `confidence` (float16) and optionally `ids` (integer)
        of its N samples, on the device of `images` (N×C×H×W)."""
        count = min(self.top_k, labels.shape[0])
        if not self.wanted or count == 0:
            return
        if images.ndim == 0 or images.shape[0] != labels.shape[0]:
            self.failed = True  # not one input per label: nothing to show
            return
        wrong = (preds != labels) & ~torch.isnan(confidence)
        scores = torch.where(wrong, confidence.float(), NOT_A_MISTAKE)
        order = torch.sort(scores, descending=True, stable=True).indices[:count]
        read_back = scores.device.type == "cpu" if self._read_back is None else self._read_back
        if read_back:
            order = order[:int((scores[order] > self._lowest_kept()).sum())]
            if len(order) == 0:
                return
        thumbs = self._thumbnails(images[order])
        if thumbs is None or (self._kept is not None and thumbs.shape[1:] != self._kept[1].shape[1:]):
            self.failed = True  # no images to show, or thumbnails of another size than the kept ones
            self._kept = None
            return
        ids = torch.full_like(scores, -1, dtype=torch.int64) if ids is None else ids.to(torch.int64)
        candidates = (scores[order], thumbs, labels[order], preds[order], confidence[order], ids[order])
        if self._kept is not None:
            candidates = tuple(torch.cat([kept, new]) for kept, new in zip(self._kept, candidates))
        top = torch.sort(candidates[0], descending=True, stable=True).indices[:self.top_k]
        self._kept = tuple(part[top] for part in candidates)

    def _lowest_kept(self) -> float:
        """The score a candidate must beat to enter (a later sample loses a tie)."""
        if self._kept is None or len(self._kept[0]) < self.top_k:
            return NOT_A_MISTAKE
        return float(self._kept[0][-1])

    def take(self, label_dtype: np.dtype) -> Mistakes | None:
        """The epoch's kept mistakes, copied to the host (the one synchronization), and a fresh start."""
        kept, self._kept = self._kept, None
        if kept is None:
            return None
        scores, thumbs, labels, preds, confidence, ids = (part.cpu().numpy() for part in kept)
        mistaken = scores > NOT_A_MISTAKE
        return Mistakes(images=np.ascontiguousarray(thumbs[mistaken]),
                        labels=labels[mistaken].astype(label_dtype, copy=False),
                        preds=preds[mistaken].astype(label_dtype, copy=False),
                        confidence=confidence[mistaken].astype(np.float16, copy=False), ids=ids[mistaken])
