"""Class counts of the training set: found on the dataset (trainer_side.targets), or missing with a
reason that the monitor prints instead of the class distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from conftest import console_of_spool
from trainer_side import Emitter
from trainer_side.protocol import MAX_REASON_LENGTH, InvalidFieldError, decode, encode, make_message
from trainer_side.targets import find_train_targets, within

LABELS = [2, 0, 1, 1, 2, 2]


class Folder(Dataset):
    """ImageFolder's layout without its `targets`: (path, class index) pairs in `samples`."""

    def __init__(self) -> None:
        self.samples = [(f"img{i}.png", c) for i, c in enumerate(LABELS)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return torch.zeros(3, 4, 4), self.samples[index][1]


class WithTargets(Folder):
    def __init__(self, targets) -> None:
        super().__init__()
        self.targets = targets


class Plain(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        return torch.zeros(3, 4, 4), 0


@pytest.mark.parametrize("dataset", [
    WithTargets(LABELS), WithTargets(torch.tensor(LABELS)), WithTargets(np.array(LABELS, dtype=np.uint8)),
    Folder(), TensorDataset(torch.zeros(6, 2), torch.tensor(LABELS)),
])
def test_targets_come_from_targets_else_imagefolder_samples_else_tensors(dataset):
    found = find_train_targets(dataset)
    assert found.missing is None
    assert found.labels.tolist() == LABELS


def test_targets_wins_over_samples():
    assert find_train_targets(WithTargets([0] * 6)).labels.tolist() == [0] * 6


def test_a_subset_selects_its_indices_from_the_parents_targets_even_nested():
    assert find_train_targets(Subset(Folder(), [5, 0, 2])).labels.tolist() == [2, 2, 1]
    nested = Subset(Subset(WithTargets(LABELS), [1, 2, 3, 4]), [3, 0])  # parent positions 4, 1
    assert find_train_targets(nested).labels.tolist() == [2, 0]


@pytest.mark.parametrize("dataset, reason", [
    (Plain(), "the train dataset (Plain) has no `targets` or `samples`; give it a `targets` attribute "
              "(the class index of every sample) for the class distribution and sampler tables"),
    (Subset(Plain(), [0, 1]), "the train dataset (Plain) has no `targets` or `samples`"),
    (WithTargets([0.5] * 6), "WithTargets.targets is not one integer class index per sample"),
    (WithTargets([[0, 1]] * 6), "WithTargets.targets is not one integer class index per sample"),
    (WithTargets([0, 1]), "WithTargets.targets holds 2 class indices for 6 samples"),
    (None, "the train dataloader has no dataset"),
])
def test_missing_or_unusable_targets_come_with_the_reason_and_the_fix(dataset, reason):
    found = find_train_targets(dataset)
    assert found.labels is None
    assert reason in found.missing and "\n" not in found.missing


def test_targets_beyond_the_class_names_are_dropped_with_the_reason():
    found = within(find_train_targets(Folder()), 2)
    assert found.labels is None and found.missing == "the train targets run from 0 to 2, outside the 2 class names"
    assert within(find_train_targets(Folder()), 3).labels.tolist() == LABELS


MODEL = {"class": "Net", "total_params": 1, "trainable_params": 1, "size_mb": 0.0}


def _console_after_run_start(tmp_path: Path, **fields) -> str:
    """The monitor's console.txt after one run_start from the real emitter, through its spool and the pipeline."""
    emitter = Emitter(None, run="counts", spool=tmp_path / "spool")
    emitter.run_start(["a", "b", "c"], model=MODEL, **fields)
    emitter.close()
    return console_of_spool(tmp_path / "spool", "counts", tmp_path / "out")


def test_the_monitor_prints_the_trainers_reason_instead_of_blaming_the_sampler(tmp_path):
    reason = find_train_targets(Plain()).missing
    text = _console_after_run_start(tmp_path, targets_missing=reason)
    assert f"run counts: no dataset class distribution: {reason}" in text
    assert "run counts: no sampler distribution tables: they need the train targets" in text
    assert "TrackingWeightedRandomSampler" not in text


def test_a_sender_without_a_reason_gets_the_generic_line_and_targets_without_a_sampler_name_the_sampler(tmp_path):
    text = _console_after_run_start(tmp_path / "old")
    assert "run counts: no dataset class distribution: the trainer sent no train targets or class counts" in text
    text = _console_after_run_start(tmp_path / "targets", train_targets=np.array([0, 1, 2, 2], dtype=np.uint8))
    assert "no dataset class distribution" not in text and "Class Distribution" in text
    assert "run counts: no TrackingWeightedRandomSampler in use; no sampler distribution tables" in text


def test_the_reason_is_an_optional_run_start_field_of_at_most_500_characters():
    body = {"class_names": ["a"], "normalization": {"mean": [0.5], "std": [0.25]}, "model": MODEL}
    assert decode(encode(make_message("run_start", "r", 0, 1, 0, body))).get("targets_missing") is None
    reason = "x" * MAX_REASON_LENGTH
    assert decode(encode(make_message("run_start", "r", 0, 1, 0, {**body, "targets_missing": reason})))[
        "targets_missing"] == reason
    with pytest.raises(InvalidFieldError, match="run_start.targets_missing must have at most 500 characters"):
        decode(encode(make_message("run_start", "r", 0, 1, 0, {**body, "targets_missing": reason + "x"})))


# ------------------------------------------------------------------------------ normalization


def write_image_folder(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int = 4) -> None:
    """An ImageFolder on disk: `root/<class>/<n>.png`, each image an 8×8 square of its class's colour."""
    from PIL import Image

    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            Image.new("RGB", (8, 8), colour).save(root / name / f"{n}.png")


def test_normalize_is_read_through_compose_random_split_and_subset(tmp_path):
    transforms = pytest.importorskip("torchvision.transforms")
    from torch.utils.data import random_split
    from torchvision.datasets import ImageFolder

    from trainer_side.runinfo import discover_class_names, discover_normalization, unwrap_dataset

    write_image_folder(tmp_path / "images", {"bird": (200, 30, 30), "cat": (30, 200, 30), "dog": (30, 30, 200)})
    dataset = ImageFolder(str(tmp_path / "images"), transform=transforms.Compose([
        transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)]))
    train, val = random_split(dataset, [8, 4], generator=torch.Generator().manual_seed(0))
    found, guessed = discover_normalization(None, [None, unwrap_dataset(train), unwrap_dataset(val)], Subset(val, [0]))
    assert found == {"mean": [0.5] * 3, "std": [0.25] * 3} and guessed is None
    assert discover_class_names(None, [unwrap_dataset(val)]) == ["bird", "cat", "dog"]
    assert find_train_targets(train).labels.tolist() == [dataset.targets[i] for i in train.indices]
    # The user's own values win over the transform's.
    mine = {"mean": [0.1] * 3, "std": [0.2] * 3}
    assert discover_normalization(mine, [], val) == (mine, None)


def test_without_normalize_imagenets_values_are_used_and_said_once_with_the_fix():
    from trainer_side.runinfo import IMAGENET_NORMALIZATION, discover_normalization

    found, guessed = discover_normalization(None, [None, Plain()], TensorDataset(torch.zeros(2, 3, 4, 4)))
    assert found == {key: list(value) for key, value in IMAGENET_NORMALIZATION.items()}
    assert "ImageNet's mean [0.485, 0.456, 0.406] and std [0.229, 0.224, 0.225]" in guessed
    assert "EmitterCallback(normalization={'mean': [...], 'std': [...]})" in guessed and "\n" not in guessed


def test_a_normalize_in_a_nested_sequential_or_v2_compose_is_found():
    v2 = pytest.importorskip("torchvision.transforms.v2")
    from trainer_side.runinfo import normalize_in

    class Holder(Dataset):
        def __init__(self, transform) -> None:
            self.transform = transform

    nested = v2.Compose([v2.ToDtype(torch.float32), torch.nn.Sequential(v2.Normalize([0.2], [0.4]))])
    assert normalize_in(Subset(Holder(nested), [0])) == {"mean": [0.2], "std": [0.4]}
    assert normalize_in(Holder(v2.Compose([v2.ToDtype(torch.float32)]))) is None
