"""Device-side collection of one validation epoch: argmax predictions with their top-1 confidence,
labels, thumbnails of the first samples, and the hardest mistakes (`trainer_side.mistakes`).

Everything stays on the model's device as small tensors (integers, float16 confidences); nothing
here synchronizes with the host per batch. The host copy happens in `take_chunk`/`take_thumbnails`/
`take_mistakes`, once per epoch or per `chunk_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer_side.mistakes import HardestMistakes, Mistakes
from trainer_side.protocol import smallest_label_dtype


@dataclass(frozen=True)
class Thumbnails:
    images: np.ndarray  # N×H×W×3 uint8
    labels: np.ndarray
    preds: np.ndarray


def make_thumbnails(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, max_size: int) -> torch.Tensor:
    """Denormalizes N×C×H×W images, shrinks them to at most `max_size` px, returns N×H×W×3 uint8 (on device)."""
    images = images.detach().float() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    height, width = images.shape[-2:]
    scale = max_size / max(height, width)
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def top1(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, softmax maximum as float16) of N×C logits, on their device.

    The maximum is exp(max - logsumexp) in float32: no N×C softmax is made, and it neither overflows
    nor divides by zero for any finite logits (a row holding NaN gives NaN).
    """
    values, preds = logits.max(dim=1)
    logits32 = logits.float()
    confidence = torch.exp(values.float() - torch.logsumexp(logits32, dim=1))
    return preds, confidence.to(torch.float16)


class ValidationCollector:
    """Accumulates one rank's validation epoch on the device.

    `num_mistakes` bounds the hardest mistakes kept (0: none); `confidence=False` ships no
    confidences (the wire of protocol 1.1, for comparisons).
    """

    def __init__(self, num_classes: int, *, num_thumbnails: int, thumbnail_size: int, chunk_size: int,
                 normalization: dict, num_mistakes: int = 0, confidence: bool = True) -> None:
        self.num_classes = num_classes
        self.host_dtype = smallest_label_dtype(num_classes)
        # uint8 on the device when it fits; torch's uint16 support is partial, so int32 above that.
        self.device_dtype = torch.uint8 if self.host_dtype == np.uint8 else torch.int32
        self.num_thumbnails = num_thumbnails
        self.thumbnail_size = thumbnail_size
        self.chunk_size = chunk_size
        self._mean = torch.tensor(normalization["mean"], dtype=torch.float32)
        self._std = torch.tensor(normalization["std"], dtype=torch.float32)
        self.with_confidence = confidence
        self.mistakes = HardestMistakes(num_mistakes if confidence else 0, self._thumbnails_of)
        self.reset()

    def reset(self) -> None:
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._confidence: list[torch.Tensor] = []
        self.mistakes.reset()
        self._pending = 0
        self._thumbs: list[torch.Tensor] = []
        self._thumb_labels: list[torch.Tensor] = []
        self._thumb_preds: list[torch.Tensor] = []
        self._thumb_count = 0
        self.thumbnails_failed = False

    @property
    def wants_thumbnails(self) -> bool:
        return self._thumb_count < self.num_thumbnails and not self.thumbnails_failed

    @property
    def wants_images(self) -> bool:
        """Whether `add` has a use for the batch's input images."""
        return self.wants_thumbnails or self.mistakes.wanted

    def add(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None = None) -> None:
        logits = logits.detach()
        labels = labels.detach().reshape(-1)
        if self.with_confidence:
            preds, confidence = top1(logits)
            self._confidence.append(confidence)
        else:
            preds = logits.argmax(dim=1)
        preds, labels = preds.to(self.device_dtype), labels.to(self.device_dtype)
        self._preds.append(preds)
        self._labels.append(labels)
        self._pending += labels.shape[0]
        if images is None:
            return
        if self.wants_thumbnails:
            self._add_thumbnails(images, labels, preds)
        if self.mistakes.wanted:
            self.mistakes.add(images, labels, preds, confidence)

    def _thumbnails_of(self, images: torch.Tensor) -> torch.Tensor | None:
        """Thumbnails of N×C×H×W images (N×H×W×3 uint8, on their device), or None for other inputs."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, len(self._mean)):
            return None
        if self._mean.device != images.device:
            self._mean, self._std = self._mean.to(images.device), self._std.to(images.device)
        mean, std = (self._mean[:1], self._std[:1]) if images.shape[1] == 1 else (self._mean, self._std)
        return make_thumbnails(images, mean, std, self.thumbnail_size)

    def _add_thumbnails(self, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor) -> None:
        need = self.num_thumbnails - self._thumb_count
        thumbs = self._thumbnails_of(images[:need])
        if thumbs is None:
            self.thumbnails_failed = True  # not N×C×H×W images this callback can show
            return
        self._thumbs.append(thumbs)
        self._thumb_labels.append(labels[:need])
        self._thumb_preds.append(preds[:need])
        self._thumb_count += min(need, images.shape[0])

    @property
    def chunk_ready(self) -> bool:
        return self._pending >= self.chunk_size

    def take_chunk(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """The predictions, labels and confidences (None without) gathered so far, copied to the host
        in one transfer each."""
        if not self._preds:
            return None
        preds = torch.cat(self._preds).cpu().numpy().astype(self.host_dtype, copy=False)
        labels = torch.cat(self._labels).cpu().numpy().astype(self.host_dtype, copy=False)
        confidence = torch.cat(self._confidence).cpu().numpy() if self._confidence else None
        self._preds, self._labels, self._confidence, self._pending = [], [], [], 0
        return preds, labels, confidence

    def take_mistakes(self) -> Mistakes | None:
        return self.mistakes.take(self.host_dtype)

    def take_thumbnails(self) -> Thumbnails | None:
        if not self._thumbs:
            return None
        thumbs = Thumbnails(
            images=np.ascontiguousarray(torch.cat(self._thumbs).cpu().numpy()),
            labels=torch.cat(self._thumb_labels).cpu().numpy().astype(self.host_dtype, copy=False),
            preds=torch.cat(self._thumb_preds).cpu().numpy().astype(self.host_dtype, copy=False),
        )
        self._thumbs, self._thumb_labels, self._thumb_preds = [], [], []
        return thumbs
