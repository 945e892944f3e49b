"""Device-side collection of one training epoch for Dataset Cartography (`track_train=True`): per
sample, its id, label, argmax prediction and the given label's probability.

The logits come from what `training_step` returns (a dict with `logits`); the ids from the batch
or the loader's order (`trainer_side.sample_ids`). Per batch: one argmax, one logsumexp and one
gather on the device, and four small tensors kept; nothing is read back until a chunk is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer_side.batches import UnreadableBatch, read_batch
from trainer_side.collect import top1_and_label
from trainer_side.protocol import IdRange, smallest_label_dtype
from trainer_side.sample_ids import EpochIds, LoaderOrder, batch_ids

LOGITS_FIX = 'end training_step with `return {"loss": loss, "logits": logits}`'


@dataclass(frozen=True)
class TrainChunk:
    """What one `train_preds` message carries."""

    ids: np.ndarray | IdRange
    labels: np.ndarray
    preds: np.ndarray
    label_confidence: np.ndarray  # float16


class TrainingCollector:
    """Accumulates one rank's training epoch on the device; `problem` says why it keeps nothing."""

    def __init__(self, num_classes: int, *, chunk_size: int, batch_keys: tuple[int | str, int | str] | None,
                 id_key: int | str | None) -> None:
        self.host_dtype = smallest_label_dtype(num_classes)
        self.device_dtype = torch.uint8 if self.host_dtype == np.uint8 else torch.int32
        self.chunk_size = chunk_size
        self.batch_keys = batch_keys
        self.id_key = id_key
        self.problem: str | None = None
        self.reset()

    def reset(self, order: LoaderOrder | None = None) -> None:
        self.ids = EpochIds(order)
        self._labels: list[torch.Tensor] = []
        self._preds: list[torch.Tensor] = []
        self._label_confidence: list[torch.Tensor] = []
        self._pending = 0

    def add(self, outputs: Any, batch: Any) -> None:
        """One training batch and what `training_step` returned for it."""
        if self.problem is not None:
            return
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        try:
            labels = read_batch(batch, self.batch_keys).labels
        except UnreadableBatch as exc:
            self.problem = f"the training batch cannot be read ({exc})"
            return
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
            self.problem = f"training_step returned no logits for its batch; {LOGITS_FIX}"
            return
        preds, _, label_confidence = top1_and_label(logits.detach(), labels)
        self.ids.add(batch_ids(batch, self.id_key, self.ids.order.in_batch), labels.shape[0])
        self._labels.append(labels.to(self.device_dtype))
        self._preds.append(preds.to(self.device_dtype))
        self._label_confidence.append(label_confidence)
        self._pending += labels.shape[0]

    @property
    def chunk_ready(self) -> bool:
        return self._pending >= self.chunk_size

    def take_chunk(self) -> TrainChunk | None:
        """The samples gathered since the last chunk, copied to the host; None without any, or
        without ids (then `ids.missing` says why)."""
        if not self._labels:
            return None
        labels = torch.cat(self._labels).cpu().numpy().astype(self.host_dtype, copy=False)
        preds = torch.cat(self._preds).cpu().numpy().astype(self.host_dtype, copy=False)
        label_confidence = torch.cat(self._label_confidence).cpu().numpy()
        self._labels, self._preds, self._label_confidence, self._pending = [], [], [], 0
        ids = self.ids.take()
        return None if ids is None else TrainChunk(ids, labels, preds, label_confidence)
