"""Device-side collection of one validation epoch: argmax predictions with their top-1 confidence
and the given label's probability, labels, sample ids, thumbnails of the first samples, and the
hardest mistakes (`trainer_side.mistakes`).

Everything stays on the model's device as small tensors (integers, float16 confidences); nothing
here synchronizes with the host per batch. The host copy happens in `take_chunk`/`take_thumbnails`/
`take_mistakes`, once per epoch or per `chunk_size`. Ids come from the batch (a device tensor, kept
like the predictions) or from the loader's order (`trainer_side.sample_ids`: known on the host).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from trainer_side.mistakes import HardestMistakes, Mistakes
from trainer_side.protocol import IdRange, smallest_label_dtype
from trainer_side.sample_ids import EpochIds, LoaderOrder


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
    preds, confidence, _ = top1_and_label(logits, None)
    return preds, confidence


def top1_and_label(logits: torch.Tensor, labels: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`top1` plus each given label's softmax probability, exp(logit[label] - logsumexp), as float16
    (NaN for a label outside 0..C-1); None without labels. One logsumexp serves both."""
    values, preds = logits.max(dim=1)
    logits32 = logits.float()
    norm = torch.logsumexp(logits32, dim=1)
    confidence = torch.exp(values.float() - norm).to(torch.float16)
    if labels is None:
        return preds, confidence, None
    classes = logits.shape[1]
    labels = labels.to(torch.int64)
    inside = (labels >= 0) & (labels < classes)
    # Clamped so that an out-of-range label never indexes outside the row (a device-side assert on CUDA).
    given = logits32.gather(1, labels.clamp(0, classes - 1).unsqueeze(1)).squeeze(1)
    label_confidence = torch.where(inside, torch.exp(given - norm), torch.nan).to(torch.float16)
    return preds, confidence, label_confidence


@dataclass(frozen=True)
class ValidationChunk:
    """Predictions gathered on the device, copied to the host: what one `preds` message carries."""

    preds: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray | None  # float16, None with `confidence=False`
    label_confidence: np.ndarray | None  # float16, the same
    ids: np.ndarray | IdRange | None  # None: this chunk's ids are not known


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

    def reset(self, order: LoaderOrder | None = None) -> None:
        """A new validation epoch; `order` says what the loader tells of its samples' ids."""
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._confidence: list[torch.Tensor] = []
        self._label_confidence: list[torch.Tensor] = []
        self.ids = EpochIds(order)
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

    def add(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None = None,
            ids: torch.Tensor | None = None) -> None:
        """One batch: N×C logits, N labels, optionally the inputs (for thumbnails and mistakes) and
        the N sample ids the batch carries (else they come from the loader's order)."""
        logits = logits.detach()
        labels = labels.detach().reshape(-1)
        count = labels.shape[0]
        if self.with_confidence:
            preds, confidence, label_confidence = top1_and_label(logits, labels)
            self._confidence.append(confidence)
            self._label_confidence.append(label_confidence)
        else:
            preds = logits.argmax(dim=1)
        start = self.ids.position
        ids = self.ids.add(ids, count)
        preds, labels = preds.to(self.device_dtype), labels.to(self.device_dtype)
        self._preds.append(preds)
        self._labels.append(labels)
        self._pending += count
        if images is None:
            return
        if self.wants_thumbnails:
            self._add_thumbnails(images, labels, preds)
        if self.mistakes.wanted:
            if ids is None:  # positions in the epoch, turned into ids on the host by `take_mistakes`
                ids = torch.arange(start, start + count, device=labels.device)
            self.mistakes.add(images, labels, preds, confidence, ids)

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

    def take_chunk(self) -> ValidationChunk | None:
        """What was gathered since the last chunk, copied to the host in one transfer per field."""
        if not self._preds:
            return None
        preds = torch.cat(self._preds).cpu().numpy().astype(self.host_dtype, copy=False)
        labels = torch.cat(self._labels).cpu().numpy().astype(self.host_dtype, copy=False)
        confidence = torch.cat(self._confidence).cpu().numpy() if self._confidence else None
        label_confidence = torch.cat(self._label_confidence).cpu().numpy() if self._label_confidence else None
        self._preds, self._labels, self._confidence, self._label_confidence, self._pending = [], [], [], [], 0
        return ValidationChunk(preds, labels, confidence, label_confidence, self.ids.take())

    def take_mistakes(self) -> Mistakes | None:
        """The epoch's kept mistakes with their sample ids (-1 where unknown)."""
        mistakes = self.mistakes.take(self.host_dtype)
        if mistakes is None:
            return None
        ids = self.ids.resolve(mistakes.ids)
        return replace(mistakes, ids=np.full(len(mistakes.ids), -1, np.int64) if ids is None else ids)

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
