"""A WeightedRandomSampler that remembers the indices it drew for the current epoch."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from trainer_side.options import check_nonneg_int, check_positive_int

__all__ = ["TrackingWeightedRandomSampler", "find_tracking_sampler"]

# Attributes that lead from a DataLoader (or a wrapper around one) to its sampler:
#   DataLoader.sampler / .batch_sampler, BatchSampler.sampler,
#   lightning's DistributedSamplerWrapper.dataset -> _DatasetSamplerWrapper._sampler,
#   lightning's _IndexBatchSamplerWrapper._batch_sampler, CombinedLoader.iterables.
_SAMPLER_LINKS = ("sampler", "batch_sampler", "dataset", "_sampler", "_batch_sampler", "iterables")


class TrackingWeightedRandomSampler(WeightedRandomSampler):
    """Drop-in ``WeightedRandomSampler`` that keeps each epoch's draw as an int64 numpy array.

    The draw uses the same single ``torch.multinomial`` call as the parent, so for the same
    generator state it yields exactly the same indices.

    Attributes:
        last_draw: indices drawn for the current (latest) epoch, or ``None`` before the first.
        draw_count: number of draws made so far (one per epoch started).
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        num_samples: int,
        replacement: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        weights_array = _checked_weights(weights)
        num_samples = check_positive_int(num_samples, "num_samples")
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement must be True or False, got {replacement!r}")
        nonzero = int(np.count_nonzero(weights_array))
        if not replacement and num_samples > nonzero:
            raise ValueError(
                f"num_samples must be at most the number of non-zero weights ({nonzero}) "
                f"when replacement=False, got {num_samples}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        super().__init__(weights_array, num_samples, replacement=replacement, generator=generator)
        self.last_draw: np.ndarray | None = None
        self.draw_count: int = 0

    def __iter__(self) -> Iterator[int]:
        # Same call as the parent: identical RNG consumption, identical indices.
        drawn = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=self.generator)
        self.last_draw = drawn.numpy().astype(np.int64, copy=False)
        self.draw_count += 1
        yield from drawn.tolist()

    def weights_per_class(self, targets: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
        """Sum of sample weights per class (float64, length ``num_classes``)."""
        targets_array = _checked_targets(targets, num_classes, len(self.weights))
        return np.bincount(targets_array, weights=self.weights.numpy(), minlength=num_classes).astype(np.float64)

    def class_counts_of_draw(self, targets: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
        """How many times each class was drawn in ``last_draw`` (int64, length ``num_classes``)."""
        targets_array = _checked_targets(targets, num_classes, len(self.weights))
        if self.last_draw is None:
            raise RuntimeError("class_counts_of_draw needs a draw: iterate the sampler (start an epoch) first")
        return np.bincount(targets_array[self.last_draw], minlength=num_classes).astype(np.int64)


def find_tracking_sampler(obj: Any, max_depth: int = 5) -> TrackingWeightedRandomSampler | None:
    """Find a ``TrackingWeightedRandomSampler`` inside a DataLoader, sampler, batch sampler or wrapper.

    Walks the attributes that Lightning and PyTorch use to nest samplers (breadth first, at most
    ``max_depth`` links deep, each object visited once). Returns ``None`` if there is none.
    """
    check_nonneg_int(max_depth, "max_depth")
    frontier = [obj]
    seen: set[int] = set()
    for _ in range(max_depth + 1):
        next_frontier = []
        for node in frontier:
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, TrackingWeightedRandomSampler):
                return node
            next_frontier.extend(_children(node))
        frontier = next_frontier
    return None


def _children(node: Any) -> list[Any]:
    if isinstance(node, (str, bytes, np.ndarray, torch.Tensor)):
        return []
    if isinstance(node, Mapping):
        return list(node.values())
    if isinstance(node, (list, tuple)):
        return list(node)
    children = []
    for name in _SAMPLER_LINKS:
        # getattr on a live DataLoader attribute can raise for some iterables; skip those links.
        try:
            child = getattr(node, name, None)
        except Exception:
            continue
        if child is not None:
            children.append(child)
    return children


def _checked_weights(weights: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"weights must be a 1-D sequence of numbers, got {type(weights).__name__}") from error
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("weights must all be finite (no NaN or inf)")
    if np.any(array < 0):
        raise ValueError(f"weights must be non-negative, got minimum {array.min()}")
    if not np.any(array > 0):
        raise ValueError("weights must not all be zero")
    return array


def _checked_targets(targets: Sequence[int] | np.ndarray, num_classes: int, num_weights: int) -> np.ndarray:
    check_positive_int(num_classes, "num_classes")
    array = np.asarray(targets)
    if array.ndim != 1 or len(array) != num_weights:
        raise ValueError(f"targets must be 1-D with one entry per weight ({num_weights}), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got range [{array.min()}, {array.max()}]")
    return array

