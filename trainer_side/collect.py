"""Device-side collection of one validation epoch: argmax predictions, labels and thumbnails.

Everything stays on the model's device as small integer tensors; nothing here synchronizes with the
host per batch. The host copy happens in `take_chunk`/`finish`, once per epoch or per `chunk_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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


class ValidationCollector:
    """Accumulates one rank's validation epoch on the device."""

    def __init__(self, num_classes: int, *, num_thumbnails: int, thumbnail_size: int, chunk_size: int,
                 normalization: dict) -> None:
        self.num_classes = num_classes
        self.host_dtype = smallest_label_dtype(num_classes)
        # uint8 on the device when it fits; torch's uint16 support is partial, so int32 above that.
        self.device_dtype = torch.uint8 if self.host_dtype == np.uint8 else torch.int32
        self.num_thumbnails = num_thumbnails
        self.thumbnail_size = thumbnail_size
        self.chunk_size = chunk_size
        self._mean = torch.tensor(normalization["mean"], dtype=torch.float32)
        self._std = torch.tensor(normalization["std"], dtype=torch.float32)
        self.reset()

    def reset(self) -> None:
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._pending = 0
        self._thumbs: list[torch.Tensor] = []
        self._thumb_labels: list[torch.Tensor] = []
        self._thumb_preds: list[torch.Tensor] = []
        self._thumb_count = 0
        self.thumbnails_failed = False

    @property
    def wants_thumbnails(self) -> bool:
        return self._thumb_count < self.num_thumbnails and not self.thumbnails_failed

    def add(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None = None) -> None:
        preds = logits.detach().argmax(dim=1)
        labels = labels.detach().reshape(-1)
        self._preds.append(preds.to(self.device_dtype))
        self._labels.append(labels.to(self.device_dtype))
        self._pending += labels.shape[0]
        if images is not None and self.wants_thumbnails:
            self._add_thumbnails(images, labels, preds)

    def _add_thumbnails(self, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, len(self._mean)):
            self.thumbnails_failed = True  # not N×C×H×W images this callback can show
            return
        need = self.num_thumbnails - self._thumb_count
        if self._mean.device != images.device:
            self._mean, self._std = self._mean.to(images.device), self._std.to(images.device)
        mean, std = (self._mean[:1], self._std[:1]) if images.shape[1] == 1 else (self._mean, self._std)
        self._thumbs.append(make_thumbnails(images[:need], mean, std, self.thumbnail_size))
        self._thumb_labels.append(labels[:need].to(self.device_dtype))
        self._thumb_preds.append(preds[:need].to(self.device_dtype))
        self._thumb_count += min(need, images.shape[0])

    @property
    def chunk_ready(self) -> bool:
        return self._pending >= self.chunk_size

    def take_chunk(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The predictions and labels gathered so far, copied to the host in one transfer each."""
        if not self._preds:
            return None
        preds = torch.cat(self._preds).cpu().numpy().astype(self.host_dtype, copy=False)
        labels = torch.cat(self._labels).cpu().numpy().astype(self.host_dtype, copy=False)
        self._preds, self._labels, self._pending = [], [], 0
        return preds, labels

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
