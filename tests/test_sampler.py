"""Tests for TrackingWeightedRandomSampler and find_tracking_sampler."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
# Lightning 2.6 defines the wrapper in fabric; the trainer's data connector imports it from there.
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
from torch.utils.data import BatchSampler, DataLoader, TensorDataset, WeightedRandomSampler

from trainer_side.sampler import TrackingWeightedRandomSampler, find_tracking_sampler

WEIGHTS = [0.1, 0.9, 0.4, 0.7, 3.0, 0.6, 0.0, 2.0]
TARGETS = np.array([0, 1, 1, 2, 2, 2, 0, 1])


def _pair(seed: int, num_samples: int = 50, replacement: bool = True):
    ours = TrackingWeightedRandomSampler(
        WEIGHTS, num_samples, replacement, generator=torch.Generator().manual_seed(seed)
    )
    theirs = WeightedRandomSampler(WEIGHTS, num_samples, replacement, generator=torch.Generator().manual_seed(seed))
    return ours, theirs


@pytest.mark.parametrize("replacement,num_samples", [(True, 50), (False, 7)])
def test_same_indices_as_weighted_random_sampler_over_epochs(replacement: bool, num_samples: int) -> None:
    ours, theirs = _pair(seed=1234, num_samples=num_samples, replacement=replacement)
    for _ in range(3):
        assert list(ours) == list(theirs)
    # Same RNG consumption: the generators end in the same state.
    assert torch.equal(ours.generator.get_state(), theirs.generator.get_state())


def test_last_draw_is_int64_array_equal_to_yielded_indices() -> None:
    sampler, _ = _pair(seed=7)
    assert sampler.last_draw is None
    yielded = list(sampler)
    assert isinstance(sampler.last_draw, np.ndarray)
    assert sampler.last_draw.dtype == np.int64
    assert sampler.last_draw.tolist() == yielded
    assert 6 not in yielded  # zero weight is never drawn


def test_last_draw_is_set_before_the_first_index_is_consumed() -> None:
    sampler, _ = _pair(seed=7)
    iterator = iter(sampler)
    first = next(iterator)
    assert sampler.last_draw is not None and sampler.last_draw[0] == first
    assert len(sampler.last_draw) == 50


def test_draw_count_increments_per_epoch_and_draws_differ() -> None:
    sampler, _ = _pair(seed=0)
    assert sampler.draw_count == 0
    first = list(sampler)
    assert sampler.draw_count == 1
    second = list(sampler)
    assert sampler.draw_count == 2
    assert first != second
    assert sampler.last_draw.tolist() == second


def test_weights_per_class_exact() -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 10)
    per_class = sampler.weights_per_class(TARGETS, num_classes=4)
    assert per_class.dtype == np.float64
    np.testing.assert_allclose(per_class, [0.1 + 0.0, 0.9 + 0.4 + 2.0, 0.7 + 3.0 + 0.6, 0.0])


def test_class_counts_of_draw_exact() -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 200, generator=torch.Generator().manual_seed(5))
    drawn = list(sampler)
    counts = sampler.class_counts_of_draw(TARGETS.tolist(), num_classes=4)
    expected = [sum(TARGETS[i] == c for i in drawn) for c in range(4)]
    assert counts.dtype == np.int64
    assert counts.tolist() == expected
    assert counts.sum() == 200 and counts[3] == 0


def test_class_counts_before_any_draw_raises() -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 5)
    with pytest.raises(RuntimeError, match="draw"):
        sampler.class_counts_of_draw(TARGETS, 3)


@pytest.mark.parametrize(
    "weights,num_samples,replacement,match",
    [
        ([[1.0, 2.0]], 3, True, "1-D"),
        ([], 3, True, "non-empty"),
        ([1.0, -0.5], 3, True, "non-negative"),
        ([1.0, float("nan")], 3, True, "finite"),
        ([1.0, float("inf")], 3, True, "finite"),
        ([0.0, 0.0], 3, True, "all be zero"),
        ([1.0, 2.0], 0, True, "num_samples must be a positive int"),
        ([1.0, 2.0], 2.5, True, "num_samples must be a positive int"),
        ([1.0, 2.0], True, True, "num_samples must be a positive int"),
        ([1.0, 2.0], 3, "yes", "replacement"),
        ([1.0, 0.0, 2.0], 3, False, "at most the number of non-zero weights"),
    ],
)
def test_constructor_rejects_bad_arguments(weights, num_samples, replacement, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrackingWeightedRandomSampler(weights, num_samples, replacement)


@pytest.mark.parametrize(
    "targets,num_classes,match",
    [
        ([0, 1], 3, "one entry per weight"),
        ([0, 1, 1, 2, 2, 2, 0, 3], 3, r"\[0, 3\)"),
        ([0.0] * 8, 3, "integers"),
        (TARGETS, 0, "num_classes"),
    ],
)
def test_per_class_helpers_reject_bad_targets(targets, num_classes: int, match: str) -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 5)
    with pytest.raises(ValueError, match=match):
        sampler.weights_per_class(targets, num_classes)


def test_find_through_distributed_sampler_wrapper_and_dataloader() -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 16, generator=torch.Generator().manual_seed(3))
    wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=0)
    assert find_tracking_sampler(wrapper) is sampler

    dataset = TensorDataset(torch.arange(len(WEIGHTS)))
    loader = DataLoader(dataset, batch_size=4, sampler=wrapper)
    assert find_tracking_sampler(loader) is sampler
    # One epoch through the wrapper fills last_draw with the full draw (every rank's share);
    # rank 0 then sees the positions DistributedSampler's seeded permutation gives it.
    seen = torch.cat([batch[0] for batch in loader]).tolist()
    assert sampler.draw_count == 1
    positions = torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist()[0::2]
    assert seen == sampler.last_draw[positions].tolist()


def test_find_through_unrepeated_wrapper() -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 16)
    wrapper = UnrepeatedDistributedSamplerWrapper(sampler, num_replicas=2, rank=1)
    assert find_tracking_sampler(DataLoader(range(8), sampler=wrapper)) is sampler


def test_find_through_batch_sampler_and_plain_loader() -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 16)
    batch_sampler = BatchSampler(sampler, batch_size=4, drop_last=False)
    assert find_tracking_sampler(batch_sampler) is sampler
    assert find_tracking_sampler(DataLoader(TensorDataset(torch.arange(8)), batch_sampler=batch_sampler)) is sampler
    assert find_tracking_sampler([None, {"train": DataLoader(range(8), sampler=sampler)}]) is sampler


def test_find_returns_none_for_shuffled_loader_and_respects_depth() -> None:
    assert find_tracking_sampler(DataLoader(TensorDataset(torch.arange(8)), shuffle=True)) is None
    wrapper = DistributedSamplerWrapper(TrackingWeightedRandomSampler(WEIGHTS, 16), num_replicas=2, rank=0)
    loader = DataLoader(TensorDataset(torch.arange(8)), sampler=wrapper)
    # loader -> wrapper -> _DatasetSamplerWrapper -> sampler is three links deep.
    assert find_tracking_sampler(loader, max_depth=2) is None
    assert find_tracking_sampler(loader, max_depth=3) is not None


def test_find_survives_cycles() -> None:
    class Node:
        pass

    a, b = Node(), Node()
    a.sampler, b.sampler = b, a
    assert find_tracking_sampler(a, max_depth=50) is None
    with pytest.raises(ValueError, match="max_depth"):
        find_tracking_sampler(a, max_depth=-1)


@pytest.mark.parametrize("clone", [lambda s: pickle.loads(pickle.dumps(s)), copy.deepcopy])
def test_pickle_and_deepcopy_round_trip(clone) -> None:
    sampler = TrackingWeightedRandomSampler(WEIGHTS, 20, generator=torch.Generator().manual_seed(11))
    list(sampler)
    restored = clone(sampler)
    assert isinstance(restored, TrackingWeightedRandomSampler)
    assert restored.draw_count == 1
    np.testing.assert_array_equal(restored.last_draw, sampler.last_draw)
    # The generator state travels too, so the next epochs match.
    assert list(restored) == list(sampler)
