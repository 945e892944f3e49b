"""Data for the demo trainer: scikit-learn's digits written once as an ImageFolder, and its DataModule."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from trainer_side.options import check_nonneg_int, check_positive_int
from trainer_side.sample_ids import IndexedDataset
from trainer_side.sampler import TrackingWeightedRandomSampler

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Share of each class's training images that is kept. Dropping a growing share of the last classes
# makes the training split imbalanced on purpose, so the weighted sampler has something to balance.
TRAIN_KEEP_FRACTION = (1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.45, 0.3, 0.3)
VAL_PER_CLASS = 35  # about 20% of the smallest class (174 images); the same for every class
SPLIT_SEED = 0
IMAGE_SIZE = 32
IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
MANIFEST_NAME = "digits_manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass(frozen=True)
class DigitsSplit:
    """Indices into `load_digits()` for each split, sorted, with the targets they index."""

    train: np.ndarray
    val: np.ndarray
    targets: np.ndarray

    def class_counts(self, split: str) -> list[int]:
        """Images per class (by digit) in `split` ("train" or "val")."""
        indices = {"train": self.train, "val": self.val}[split]
        return np.bincount(self.targets[indices], minlength=len(CLASS_NAMES)).tolist()


def split_digits(targets: np.ndarray, seed: int = SPLIT_SEED) -> DigitsSplit:
    """Deterministic split: VAL_PER_CLASS images of each class to val, then TRAIN_KEEP_FRACTION of the rest."""
    targets = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for digit, keep in enumerate(TRAIN_KEEP_FRACTION):
        shuffled = rng.permutation(np.flatnonzero(targets == digit))
        if len(shuffled) <= VAL_PER_CLASS:
            raise ValueError(f"class {digit} has {len(shuffled)} images, needs more than {VAL_PER_CLASS}")
        val.append(shuffled[:VAL_PER_CLASS])
        rest = shuffled[VAL_PER_CLASS:]
        train.append(rest[: max(1, round(len(rest) * keep))])
    return DigitsSplit(np.sort(np.concatenate(train)), np.sort(np.concatenate(val)), targets)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/lightning-sidecar-monitor`, else `~/.cache/lightning-sidecar-monitor`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning-sidecar-monitor"


def ensure_digits_imagefolder(root: str | os.PathLike) -> Path:
    """Write the digits ImageFolder at `root` unless a complete one is already there; return `root`.

    Layout: `root/{train,val}/{zero..nine}/NNNN.png` (NNNN = index in `load_digits()`), 32x32 RGB,
    plus `root/digits_manifest.json`, written last, which marks the folder complete.
    """
    root = Path(root)
    if _is_complete(root):
        return root
    if root.exists():
        raise ValueError(f"{root} exists but is not a complete digits ImageFolder; "
                         "remove it or choose another --data-cache")
    root.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its final place and renamed, so a crash never leaves a half-written root.
    # Not tempfile.mkdtemp: its 0700 mode would survive the rename; mkdir honours the umask.
    staging = root.parent / f".{root.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        _write_digits(staging)
        os.rename(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if _is_complete(root):  # another process (another rank) finished first
            return root
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _write_digits(folder: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    split = split_digits(digits.target)
    for split_name, indices in (("train", split.train), ("val", split.val)):
        for name in CLASS_NAMES:
            (folder / split_name / name).mkdir(parents=True)
        for index in indices:
            grey = np.rint(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(grey, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / split_name / CLASS_NAMES[digits.target[index]] / f"{index:04d}.png")
    manifest = {
        "format_version": FORMAT_VERSION,
        "classes": list(CLASS_NAMES),
        "counts": {name: split.class_counts(name) for name in SPLITS},
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format_version") == FORMAT_VERSION else None


def _is_complete(root: Path) -> bool:
    manifest = _read_manifest(root)
    if manifest is None:
        return False
    try:
        return all(
            len(list((root / split / name).glob("*.png"))) == count
            for split in SPLITS
            for name, count in zip(manifest["classes"], manifest["counts"][split], strict=True)
        )
    except (KeyError, TypeError, ValueError):
        return False


def imagefolder_classes(root: str | os.PathLike) -> list[str]:
    """Class names, by index, of an ImageFolder root with train/ and val/; ValueError naming what is missing.

    The order is the manifest's for a digits folder, else ImageFolder's own (sorted folder names).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--data {root}: no such directory")
    per_split = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f"--data {root}: missing {split}/ "
                             f"(expected {root}/train/<class>/ and {root}/val/<class>/)")
        classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        if not classes:
            raise ValueError(f"--data {root}: {split}/ has no class folders")
        empty = [name for name in classes if not _has_image(folder / name)]
        if empty:
            raise ValueError(f"--data {root}: {split}/ class folders without images "
                             f"({', '.join(IMG_EXTENSIONS)}): {empty}")
        per_split[split] = classes
    if per_split["train"] != per_split["val"]:
        only_train = sorted(set(per_split["train"]) - set(per_split["val"]))
        only_val = sorted(set(per_split["val"]) - set(per_split["train"]))
        raise ValueError(f"--data {root}: train/ and val/ need the same class folders; "
                         f"only in train/: {only_train}, only in val/: {only_val}")
    manifest = _read_manifest(root)
    if manifest is not None and sorted(manifest.get("classes", [])) == per_split["train"]:
        return list(manifest["classes"])
    return per_split["train"]


def _has_image(folder: Path) -> bool:
    return any(entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS) for entry in os.scandir(folder))


class OrderedImageFolder(ImageFolder):
    """ImageFolder whose class indices follow `class_names` rather than alphabetical folder order.

    With `interleave=True` the samples are reordered round-robin over classes (zero, one, ..., nine,
    zero, ...), so the first N samples, which the monitor shows as thumbnails, cover every class.
    """

    def __init__(self, root: str | os.PathLike, class_names: list[str], interleave: bool = False, **kwargs) -> None:
        self._class_names = list(class_names)
        super().__init__(root, **kwargs)
        if interleave:
            by_class: list[list[tuple[str, int]]] = [[] for _ in self._class_names]
            for sample in self.samples:
                by_class[sample[1]].append(sample)
            longest = max(len(samples) for samples in by_class)
            self.samples = [group[i] for i in range(longest) for group in by_class if i < len(group)]
            self.imgs = self.samples
            self.targets = [target for _, target in self.samples]

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        folders = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
        if folders != sorted(self._class_names):
            raise ValueError(f"{directory}: class folders {folders} differ from the expected "
                             f"{sorted(self._class_names)}")
        return list(self._class_names), {name: index for index, name in enumerate(self._class_names)}


def image_transforms(train: bool, normalization: dict = IMAGENET_NORMALIZATION) -> v2.Compose:
    """PIL image -> normalized float tensor 3x32x32; a light random affine for training only."""
    steps = [v2.ToImage(), v2.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True)]
    if train:
        steps.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(normalization["mean"], normalization["std"])]
    return v2.Compose(steps)


class DigitsDataModule(L.LightningDataModule):
    """Digits (or any ImageFolder with train/ and val/) with a class-balancing tracking sampler.

    Attributes read by the monitor callback: `class_to_idx`, `normalization`; after `setup`,
    `train_set`, `val_set` and `train_targets` (int64 class index per training image).
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0, indexed_train: bool = False) -> None:
        super().__init__()
        self.indexed_train = indexed_train  # training items (image, label, index): ids for track_train
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.num_workers = check_nonneg_int(num_workers, "num_workers")
        self.seed = seed
        if data_dir is None:
            self.root = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "digits_imagefolder"
            self.is_digits = True
            class_names = list(CLASS_NAMES)
        else:
            self.root = Path(data_dir)
            self.is_digits = False
            class_names = imagefolder_classes(self.root)
        self.class_to_idx: dict[str, int] = {name: index for index, name in enumerate(class_names)}
        self.normalization = {key: list(values) for key, values in IMAGENET_NORMALIZATION.items()}
        self.train_set: ImageFolder | None = None
        self.val_set: ImageFolder | None = None
        self.train_targets: np.ndarray | None = None

    def prepare_data(self) -> None:
        if self.is_digits:
            ensure_digits_imagefolder(self.root)

    def setup(self, stage: str | None = None) -> None:
        # Also here: setup runs on every rank, and a caller may skip prepare_data.
        self.prepare_data()
        names = list(self.class_to_idx)
        self.train_set = OrderedImageFolder(self.root / "train", names,
                                            transform=image_transforms(True, self.normalization))
        self.val_set = OrderedImageFolder(self.root / "val", names, interleave=True,
                                          transform=image_transforms(False, self.normalization))
        self.train_targets = np.asarray(self.train_set.targets, dtype=np.int64)
        if self.indexed_train:
            self.train_set = IndexedDataset(self.train_set)

    def train_dataloader(self) -> DataLoader:
        counts = np.bincount(self.train_targets, minlength=len(self.class_to_idx))
        # 1/count(class) gives every class the same total weight, so draws come out balanced.
        weights = 1.0 / counts[self.train_targets]
        sampler = TrackingWeightedRandomSampler(weights, num_samples=len(self.train_targets),
                                                generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
