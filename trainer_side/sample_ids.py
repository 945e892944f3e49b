"""Where each sample's id (its dataset index, protocol 1.3) comes from, and the samples' names.

In order of precedence: an id tensor in the batch (a dict's `index`/`idx`/`id` key, the key or tuple
position the user names, or `IndexedDataset`'s third item), else the loader's order, read on the host
once per epoch: a sequential sampler's running position (a range: no bytes per sample), a
DistributedSampler without shuffling (its index list for this rank), each mapped through a
`Subset`'s `.indices`. A shuffled sampler without ids in the batch gives none, and says the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import (BatchSampler, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler,
                              Subset)

from trainer_side.protocol import IdRange, compact_ids

ID_KEYS = ("index", "idx", "id")
MAX_SENT_NAMES = 1 << 21  # a dataset with more samples sends no names (they would take too long to ship)
FIX = ("put each sample's dataset index in the batch (a dict key 'index', or wrap the dataset in "
       "trainer_side.IndexedDataset; EmitterCallback(id_key=...) names another key or position)")


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose items are `(input, target, index)`: the sample ids for a shuffled
    loader (training with `track_train=True`, or a shuffled validation loader).

    Example::

        loader = DataLoader(IndexedDataset(train_set), batch_size=64, shuffle=True)
        # in training_step: inputs, targets, _ = batch
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        inputs, target = self.dataset[index][:2]
        return inputs, target, index

    def __getattr__(self, name: str) -> Any:
        # classes, class_to_idx, samples: what the callback reads from the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def base_dataset(dataset: Any) -> tuple[Any, np.ndarray | None]:
    """The dataset under any Subsets and IndexedDatasets, and the indices into it of the outer
    dataset's samples (None: the identity)."""
    indices = None
    while True:
        if isinstance(dataset, Subset):
            inner = np.asarray(dataset.indices, dtype=np.int64)
            indices = inner if indices is None else inner[indices]
            dataset = dataset.dataset
        elif isinstance(dataset, IndexedDataset):
            dataset = dataset.dataset
        else:
            return dataset, indices


@dataclass(frozen=True)
class LoaderOrder:
    """The ids of the samples a loader yields on this rank, in order, as far as the loader tells.

    `order` maps a position in the epoch to the outer dataset's index (None: the position itself);
    `indices` maps that to the base dataset's index (a Subset; None: the same). `missing` says why
    the loader gives no ids; `size` is the base dataset's length (ids are below it), if known.
    """

    order: np.ndarray | None = None
    indices: np.ndarray | None = None
    missing: str | None = None
    size: int | None = None
    in_batch: bool = False  # the loader's dataset is an IndexedDataset: ids at tuple position 2

    def ids(self, start: int, count: int) -> np.ndarray | IdRange | None:
        """The ids of positions start .. start + count - 1 of the epoch, as the wire carries them;
        None where unknown."""
        if self.missing is None and self.order is None and self.indices is None:
            return IdRange(start, count)
        ids = self.ids_at(np.arange(start, start + count, dtype=np.int64))
        return None if ids is None else compact_ids(ids)

    def ids_at(self, positions: np.ndarray) -> np.ndarray | None:
        """The ids (int64) of these positions in the epoch; None where unknown."""
        if self.missing is not None:
            return None
        ids = positions.astype(np.int64)
        for table in (self.order, self.indices):
            if table is None:
                continue
            if len(ids) and int(ids.max()) >= len(table):
                return None  # the loader yielded more samples than its sampler lists
            ids = table[ids]
        return ids


def _size(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def loader_order(loader: Any) -> LoaderOrder:
    """What `loader`'s sampler says about the order of this epoch on this rank (call once per epoch)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset):
        return LoaderOrder(missing=f"the loader's dataset ({type(dataset).__name__}) has no sample order; {FIX}")
    base, indices = base_dataset(dataset)
    size = _size(base)
    in_batch = isinstance(dataset, IndexedDataset) or (isinstance(dataset, Subset) and isinstance(
        getattr(dataset, "dataset", None), IndexedDataset))
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None and not isinstance(batch_sampler, BatchSampler):
        return LoaderOrder(missing=f"its batch sampler {type(batch_sampler).__name__} does not tell the order of "
                                   f"the samples; {FIX}", size=size, in_batch=in_batch)
    sampler = batch_sampler.sampler if batch_sampler is not None else getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return LoaderOrder(indices=indices, size=size, in_batch=in_batch)
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        inner = getattr(sampler.dataset, "_sampler", None)  # Lightning's DistributedSamplerWrapper
        if inner is None or isinstance(inner, SequentialSampler):
            order = np.fromiter(iter(sampler), dtype=np.int64)
            return LoaderOrder(order=order, indices=indices, size=size, in_batch=in_batch)
    shuffled = isinstance(sampler, RandomSampler) or getattr(sampler, "shuffle", False)
    what = "shuffles" if shuffled else f"draws with a {type(sampler).__name__}, whose order it does not tell"
    return LoaderOrder(missing=f"the loader {what} (pass shuffle=False to its DataLoader, or {FIX})", size=size,
                       in_batch=in_batch)


def batch_ids(batch: Any, id_key: int | str | None, in_batch: bool) -> torch.Tensor | None:
    """The id tensor a batch carries (on its device, no copy), or None."""
    if isinstance(batch, Mapping):
        keys = [id_key] if id_key is not None else [key for key in ID_KEYS if key in batch]
        value = batch.get(keys[0]) if len(keys) == 1 else None
    elif isinstance(batch, (tuple, list)):
        position = id_key if isinstance(id_key, int) else (2 if in_batch else None)
        value = batch[position] if position is not None and -len(batch) <= position < len(batch) else None
    else:
        value = None
    if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool:
        return value.reshape(-1)
    return None


def dataset_names(dataset: Any) -> list[str] | None:
    """Each base sample's name, by id: ImageFolder-style `.samples` paths relative to `.root`, or the
    dataset's own `sample_names`; None when it has neither (or more than MAX_SENT_NAMES samples)."""
    base, _ = base_dataset(dataset)
    names = getattr(base, "sample_names", None)
    if names is None:
        samples = getattr(base, "samples", None) or getattr(base, "imgs", None)
        if not isinstance(samples, (list, tuple)) or not samples or not isinstance(samples[0], (list, tuple)):
            return None
        root = str(getattr(base, "root", "") or "")
        names = [_relative(str(item[0]), root) for item in samples]
    if not isinstance(names, (list, tuple)) or len(names) > MAX_SENT_NAMES:
        return None
    return [str(name) for name in names]


def _relative(path: str, root: str) -> str:
    if root and path.startswith(root):
        return path[len(root):].lstrip(os.sep + "/")
    return path


class EpochIds:
    """One rank's sample ids over one epoch, batch by batch: the tensors the batches carry (kept on
    their device, copied with the predictions) or, without them, positions in the loader's order."""

    MIXED = "some batches carried ids and others did not"
    NEGATIVE = "the batches' ids hold negative values"

    def __init__(self, order: LoaderOrder | None = None) -> None:
        self.order = order or LoaderOrder(missing="the callback was not told the loader")
        self._ids: list[torch.Tensor] = []
        self._in_batches: bool | None = None  # decided by the epoch's first batch
        self.problem: str | None = None  # why this epoch's ids are lost, once they are
        self.position = 0  # samples added this epoch
        self._chunk_start = 0

    def add(self, ids: torch.Tensor | None, count: int) -> torch.Tensor | None:
        """A batch of `count` samples and the ids it carries (or None); returns them as int64 on
        their device, or None. Every batch of an epoch must carry ids, or none."""
        if ids is not None and ids.shape[0] != count:
            ids = None
        carried = ids is not None
        if self._in_batches is None:
            self._in_batches = carried
        elif self._in_batches != carried and self.problem is None:
            self.problem = self.MIXED
        self.position += count
        if not carried:
            return None
        ids = ids.detach().to(torch.int64)
        self._ids.append(ids)
        return ids

    def take(self) -> np.ndarray | IdRange | None:
        """The ids of the samples added since the last call, as the wire carries them; None if unknown."""
        count, self._chunk_start = self.position - self._chunk_start, self.position
        carried, self._ids = self._ids, []
        if self.problem is not None:
            return None
        if not self._in_batches:
            return self.order.ids(self.position - count, count)
        ids = torch.cat(carried).cpu().numpy() if carried else np.zeros(0, np.int64)
        if len(ids) and int(ids.min()) < 0:
            self.problem = self.NEGATIVE
            return None
        return compact_ids(ids)

    def resolve(self, kept: np.ndarray) -> np.ndarray | None:
        """Ids (int64) for values `add` handed out or, without batch ids, positions; None if unknown."""
        if self.problem is not None:
            return None
        return kept if self._in_batches else self.order.ids_at(kept)

    @property
    def missing(self) -> str | None:
        """Why this epoch's samples have no ids (None when they have)."""
        if self.problem is not None:
            return self.problem
        return None if self._in_batches else self.order.missing
