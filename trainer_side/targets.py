"""The class of every training sample, found on the dataset without loading a sample, or why it cannot be.

Looked for in order: `targets` (torchvision datasets), `samples` as ImageFolder's (path, class index)
pairs, the second tensor of a TensorDataset; through wrappers that hold the dataset as `.dataset`
(`Subset`'s `.indices` select from the parent's targets). When none is there, the reason is a line
that names the dataset and the fix, for the monitor to print instead of the class distribution.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

MAX_DEPTH = 4
FIX = "give it a `targets` attribute (the class index of every sample) for the class distribution and sampler tables"


class TrainTargets(NamedTuple):
    labels: np.ndarray | None  # the class index of every sample, by dataset index
    missing: str | None  # why `labels` is None


def _as_labels(values: Any) -> np.ndarray | None:
    """`values` as a 1-D integer array, or None when it is not one class index per sample."""
    try:
        array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 1 and array.dtype.kind in "iu" else None


def _from_samples(samples: Any) -> np.ndarray | None:
    """The class indices of ImageFolder-style `samples`: a sequence of (path, class index) pairs."""
    try:
        return _as_labels([pair[1] for pair in samples]) if len(samples) else None
    except (TypeError, IndexError, KeyError):
        return None


def _own_labels(dataset: Any) -> tuple[np.ndarray | None, str]:
    """(labels, where they came from) from the dataset's own attributes; labels None when absent or unusable."""
    name = type(dataset).__name__
    if getattr(dataset, "targets", None) is not None:
        return _as_labels(dataset.targets), f"{name}.targets"
    if getattr(dataset, "samples", None) is not None:
        return _from_samples(dataset.samples), f"{name}.samples"
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2:
        return _as_labels(tensors[1]), f"{name}.tensors[1]"
    return None, ""


def find_train_targets(dataset: Any) -> TrainTargets:
    """The class index of every sample of `dataset` (the train dataloader's), or the reason there is none."""
    if dataset is None:
        return TrainTargets(None, "the train dataloader has no dataset to read targets from")
    outer, chain = dataset, []
    for _ in range(MAX_DEPTH):
        labels, source = _own_labels(dataset)
        if source:
            break
        parent = getattr(dataset, "dataset", None)
        if parent is None:
            break
        chain.append(getattr(dataset, "indices", None))
        dataset = parent
    else:
        source = ""
    name = type(dataset).__name__
    if not source:
        return TrainTargets(None, f"the train dataset ({name}) has no `targets` or `samples`; {FIX}")
    if labels is None:
        return TrainTargets(None, f"{source} is not one integer class index per sample; {FIX}")
    try:
        for indices in reversed(chain):  # from the innermost wrapper out
            if indices is not None:
                labels = labels[np.asarray(indices, dtype=np.int64)]
    except (IndexError, TypeError, ValueError):
        return TrainTargets(None, f"the indices of a {type(outer).__name__} do not fit {source}")
    size = len(outer) if hasattr(outer, "__len__") else len(labels)
    if len(labels) != size:
        return TrainTargets(None, f"{source} holds {len(labels)} class indices for {size} samples; {FIX}")
    return TrainTargets(labels, None)


def within(found: TrainTargets, num_classes: int) -> TrainTargets:
    """`found`, or the reason its labels do not fit `num_classes` classes (the monitor refuses such targets)."""
    labels = found.labels
    if labels is None or not len(labels) or (int(labels.min()) >= 0 and int(labels.max()) < num_classes):
        return found
    return TrainTargets(None, f"the train targets run from {int(labels.min())} to {int(labels.max())}, outside the "
                              f"{num_classes} class names")
