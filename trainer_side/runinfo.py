"""What the trainer knows once, at the start of a run: class names, normalization, model summary."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from trainer_side.options import check_normalization

IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def class_names_from_mapping(class_to_idx: Mapping[str, int]) -> list[str]:
    """Names ordered by index; the indices must be exactly 0..C-1."""
    by_index = sorted((int(i), str(name)) for name, i in class_to_idx.items())
    if [i for i, _ in by_index] != list(range(len(by_index))):
        raise ValueError(f"class_to_idx must map onto 0..{len(by_index) - 1}, got indices {[i for i, _ in by_index]}")
    return [name for _, name in by_index]


def unwrap_dataset(dataset: Any, max_depth: int = 4) -> Any:
    """Follows Subset-like wrappers (`.dataset`) to the dataset that knows its classes and targets."""
    for _ in range(max_depth):
        if hasattr(dataset, "targets") or hasattr(dataset, "class_to_idx") or not hasattr(dataset, "dataset"):
            return dataset
        dataset = dataset.dataset
    return dataset


def discover_class_names(explicit: Sequence[str] | None, sources: Sequence[Any]) -> list[str] | None:
    """Explicit names, else the first source (datamodule, datasets) with `class_to_idx` or `classes`."""
    if explicit is not None:
        return [str(name) for name in explicit]
    for source in sources:
        if source is None:
            continue
        mapping = getattr(source, "class_to_idx", None)
        if isinstance(mapping, Mapping) and mapping:
            return class_names_from_mapping(mapping)
        classes = getattr(source, "classes", None)
        if isinstance(classes, (list, tuple)) and classes:
            return [str(name) for name in classes]
    return None


def discover_normalization(explicit: Mapping[str, Sequence[float]] | None, sources: Sequence[Any],
                           val_dataset: Any = None) -> tuple[dict, str | None]:
    """The mean/std that de-normalize the thumbnails, and a line for the user when it is a guess.

    Explicit mean/std (already checked), else a source's checked `normalization` attribute
    ({mean, std}), else the `Normalize` in the validation dataset's transform (`normalize_in`), else
    ImageNet's with a line that says so and how to pass the right values.
    """
    if explicit is not None:
        return dict(explicit), None
    for source in sources:
        found = getattr(source, "normalization", None) if source is not None else None
        if isinstance(found, Mapping) and "mean" in found and "std" in found:
            return check_normalization(found), None
    found = normalize_in(val_dataset)
    if found is not None:
        return found, None
    imagenet = {key: list(value) for key, value in IMAGENET_NORMALIZATION.items()}
    return imagenet, (f"no normalization found (no normalization= argument, datamodule.normalization or "
                      f"Normalize in the validation dataset's transform): thumbnails are de-normalized with "
                      f"ImageNet's mean {imagenet['mean']} and std {imagenet['std']}; pass "
                      "EmitterCallback(normalization={'mean': [...], 'std': [...]}) if your inputs differ")


def normalize_in(dataset: Any, max_depth: int = 4) -> dict[str, list[float]] | None:
    """The mean/std of the first `Normalize` in a dataset's `transform` (torchvision's, v1 or v2),
    looked for through `Compose`-like `.transforms` lists and through wrappers that hold the dataset
    as `.dataset` (`Subset`, `random_split`); None when there is none or it is not usable."""
    for _ in range(max_depth):
        if dataset is None:
            return None
        for attribute in ("transform", "transforms"):
            found = _normalize_of(getattr(dataset, attribute, None), max_depth)
            if found is not None:
                return found
        dataset = getattr(dataset, "dataset", None)
    return None


def _normalize_of(transform: Any, depth: int) -> dict[str, list[float]] | None:
    if transform is None or depth < 0:
        return None
    if type(transform).__name__ == "Normalize" and hasattr(transform, "mean") and hasattr(transform, "std"):
        try:
            return check_normalization({"mean": list(transform.mean), "std": list(transform.std)})
        except (TypeError, ValueError):
            return None
    inner = getattr(transform, "transforms", None)  # Compose, v2.Compose, RandomApply
    if isinstance(transform, torch.nn.Sequential):
        inner = list(transform)
    if isinstance(inner, (list, tuple)):
        for step in inner:
            found = _normalize_of(step, depth - 1)
            if found is not None:
                return found
    return _normalize_of(getattr(transform, "transform", None), depth - 1)  # StandardTransform


def num_classes_from_model(module: torch.nn.Module) -> int | None:
    hparams = getattr(module, "hparams", None)
    if isinstance(hparams, Mapping) and isinstance(hparams.get("num_classes"), int):
        return hparams["num_classes"]
    last_linear = None
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            last_linear = layer
    return None if last_linear is None else last_linear.out_features


def model_summary(module: torch.nn.Module) -> dict[str, Any]:
    """Class, parameter counts and size in MB (10^6 bytes) of parameters plus buffers."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    size = sum(p.numel() * p.element_size() for p in params) + sum(b.numel() * b.element_size()
                                                                  for b in module.buffers())
    return {"class": type(module).__name__, "total_params": total, "trainable_params": trainable,
            "size_mb": size / 1e6}


def plain_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as wire-safe scalars (anything else becomes its repr)."""
    plain: dict[str, Any] = {}
    for key, value in dict(hparams).items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            plain[str(key)] = value
        else:
            plain[str(key)] = repr(value)[:200]
    return plain
