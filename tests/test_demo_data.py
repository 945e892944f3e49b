"""Tests for the demo's digits ImageFolder, its DataModule and the demo's command-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from trainer_side import demo_data
from trainer_side.demo import DemoClassifier, main, topk_accuracy
from trainer_side.demo_data import (
    CLASS_NAMES,
    DigitsDataModule,
    ensure_digits_imagefolder,
    imagefolder_classes,
    split_digits,
)
from trainer_side.sampler import TrackingWeightedRandomSampler

# load_digits has [178, 182, 177, 183, 181, 182, 181, 179, 174, 180] images per digit; 35 of each
# go to val, then five..nine keep 80%, 60%, 45%, 30%, 30% of the rest (rounded).
EXPECTED_TRAIN = [143, 147, 142, 148, 146, 118, 88, 65, 42, 44]
EXPECTED_VAL = [35] * 10
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_digits_imagefolder(tmp_path_factory.mktemp("cache") / "digits_imagefolder")


def _png_counts(root: Path, split: str) -> list[int]:
    return [len(list((root / split / name).glob("*.png"))) for name in CLASS_NAMES]


def test_split_is_deterministic_disjoint_and_imbalanced_as_designed() -> None:
    targets = load_digits().target
    split, again = split_digits(targets), split_digits(targets)
    np.testing.assert_array_equal(split.train, again.train)
    np.testing.assert_array_equal(split.val, again.val)
    assert not set(split.train.tolist()) & set(split.val.tolist())
    assert split.class_counts("train") == EXPECTED_TRAIN
    assert split.class_counts("val") == EXPECTED_VAL
    assert split_digits(targets, seed=1).train.tolist() != split.train.tolist()


@pytest.mark.slow
def test_written_folder_matches_the_split(digits_root: Path) -> None:
    split = split_digits(load_digits().target)
    assert _png_counts(digits_root, "train") == split.class_counts("train") == EXPECTED_TRAIN
    assert _png_counts(digits_root, "val") == EXPECTED_VAL
    assert sorted(p.name for p in digits_root.iterdir()) == ["digits_manifest.json", "train", "val"]
    manifest = json.loads((digits_root / "digits_manifest.json").read_text())
    assert manifest["classes"] == list(CLASS_NAMES)
    assert manifest["counts"] == {"train": EXPECTED_TRAIN, "val": EXPECTED_VAL}
    # File names are indices into load_digits(), so every val image is traceable to its digit.
    names = sorted(int(p.stem) for p in (digits_root / "val").glob("*/*.png"))
    assert names == split.val.tolist()


def test_images_are_32px_rgb_scaled_to_full_range(digits_root: Path) -> None:
    digits = load_digits()
    index = int(sorted((digits_root / "val" / "zero").glob("*.png"))[0].stem)
    image = Image.open(digits_root / "val" / "zero" / f"{index:04d}.png")
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    # 0..16 scaled to 0..255, then upsampled 4x bilinearly.
    grey = Image.fromarray(np.rint(digits.images[index] * 255 / 16).astype(np.uint8), mode="L")
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(grey.resize((32, 32), Image.Resampling.BILINEAR)))
    assert pixels.max() > 200 and pixels[0, 0, 0] == 0  # full range, black border


def test_second_call_reuses_the_folder(digits_root: Path) -> None:
    files = [digits_root / "digits_manifest.json", *sorted((digits_root / "train" / "nine").glob("*.png"))[:3]]
    before = [f.stat().st_mtime_ns for f in files]
    assert ensure_digits_imagefolder(digits_root) == digits_root
    assert [f.stat().st_mtime_ns for f in files] == before
    assert [p.name for p in digits_root.parent.iterdir()] == ["digits_imagefolder"]  # no staging left


def test_incomplete_folder_is_refused_not_reused(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    (root / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a complete digits ImageFolder"):
        ensure_digits_imagefolder(root)


def test_crash_while_writing_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(folder: Path) -> None:
        (folder / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, "_write_digits", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_digits_imagefolder(tmp_path / "digits")
    assert list(tmp_path.iterdir()) == []


def test_datamodule_attributes_and_balancing_sampler(digits_root: Path) -> None:
    datamodule = DigitsDataModule(cache_dir=digits_root.parent, batch_size=16)
    # Known before setup, so a callback can read them at any hook.
    assert datamodule.class_to_idx == {name: index for index, name in enumerate(CLASS_NAMES)}
    assert datamodule.normalization == IMAGENET
    datamodule.setup("fit")
    assert datamodule.train_set.class_to_idx == datamodule.class_to_idx
    assert datamodule.val_set.class_to_idx == datamodule.class_to_idx
    assert np.bincount(datamodule.train_targets).tolist() == EXPECTED_TRAIN

    loader = datamodule.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, TrackingWeightedRandomSampler) and sampler.num_samples == sum(EXPECTED_TRAIN)
    np.testing.assert_allclose(sampler.weights_per_class(datamodule.train_targets, 10), np.ones(10))
    list(sampler)
    counts = sampler.class_counts_of_draw(datamodule.train_targets, 10)
    assert counts.min() > 60  # nine has 44 images but is drawn about 108 times


def test_transforms_normalize_and_val_is_deterministic(digits_root: Path) -> None:
    datamodule = DigitsDataModule(data_dir=digits_root)
    datamodule.setup("fit")
    image, label = datamodule.val_set[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == datamodule.class_to_idx[Path(datamodule.val_set.samples[0][0]).parent.name]
    black = (torch.zeros(3) - torch.tensor(IMAGENET["mean"])) / torch.tensor(IMAGENET["std"])
    torch.testing.assert_close(image[:, 0, 0], black)
    torch.testing.assert_close(datamodule.val_set[0][0], image)


def test_val_samples_interleave_classes_so_thumbnails_cover_all(digits_root: Path) -> None:
    datamodule = DigitsDataModule(data_dir=digits_root)
    datamodule.setup("fit")
    val_targets = datamodule.val_set.targets
    # ImageFolder alone lists all of "eight" first (alphabetical folders); the monitor shows the first N.
    assert val_targets[:20] == list(range(10)) * 2
    assert sorted(val_targets) == sorted(np.repeat(np.arange(10), 35).tolist())
    assert [target for _, target in datamodule.val_set.samples] == val_targets
    assert datamodule.val_set.imgs == datamodule.val_set.samples


def test_imagefolder_classes_order(digits_root: Path, tmp_path: Path) -> None:
    assert imagefolder_classes(digits_root) == list(CLASS_NAMES)  # manifest order, not alphabetical
    for split in ("train", "val"):
        for name in ("dog", "cat", "ant"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "a.png")
    assert imagefolder_classes(tmp_path) == ["ant", "cat", "dog"]
    assert DigitsDataModule(data_dir=tmp_path).class_to_idx == {"ant": 0, "cat": 1, "dog": 2}


def _make_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    for split, classes in layout.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(root / split / name / "a.png")
    return root


@pytest.mark.parametrize(
    "layout,message",
    [
        ({"train": ["a", "b"]}, "missing val/"),
        ({"val": ["a", "b"]}, "missing train/"),
        ({"train": ["a", "b"], "val": ["a"]}, "only in train/: ['b']"),
    ],
)
def test_bad_data_folder_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, layout: dict, message: str
) -> None:
    root = _make_folder(tmp_path / "data", layout)
    assert main(["--data", str(root), "--no-monitor"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


def test_missing_data_dir_and_bad_numbers_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--data", str(tmp_path / "nope"), "--no-monitor"]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "cache" / "digits_imagefolder").mkdir(parents=True)  # present but not ours
    assert main(["--data-cache", str(tmp_path / "cache"), "--no-monitor"]) == 2
    assert "not a complete digits ImageFolder" in capsys.readouterr().err
    assert main(["--epochs", "0", "--no-monitor"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs" in err


def test_topk_accuracy_exact() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = torch.tensor([1, 2, 1, 1])
    assert topk_accuracy(logits, labels, 1).item() == pytest.approx(0.25)
    assert topk_accuracy(logits, labels, 2).item() == pytest.approx(0.75)
    assert topk_accuracy(logits, labels, 5).item() == pytest.approx(1.0)  # k capped at 3 classes


def test_validation_step_returns_the_logits() -> None:
    model = DemoClassifier(num_classes=10).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), pytest.warns(UserWarning):  # self.log without a Trainer only warns
        returned = model.validation_step((images, torch.tensor([0, 1, 2, 3])), 0)
        torch.testing.assert_close(returned, model(images))
    assert returned.shape == (4, 10)
    assert model.hparams.num_classes == 10
    with pytest.raises(ValueError, match="num_classes"):
        DemoClassifier(num_classes=1)
