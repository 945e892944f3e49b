"""The message schema of protocol v1 (1.3): every kind's fields and the checks a frame's values pass.

docs/protocol.md is the prose form of `SCHEMA`; `trainer_side.protocol` (the codec) decodes a frame
and hands each field to the checker named here, so both ends validate with the same rules. Pure: no
sockets, no files, no msgpack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

PROTOCOL_VERSION = (1, 3)

# Little-endian integer and float types only: no object, string or big-endian dtypes ever decode.
ARRAY_DTYPES = frozenset({"|u1", "<u2", "<u4", "<u8", "|i1", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8"})
MAX_ARRAY_DIMS = 8
ENVELOPE_KEYS = ("v", "kind", "run", "rank", "world", "seq", "time", "sender")
MAX_RUN_ID_LENGTH = 200
# The emitter instance's identity (protocol 1.1): optional, so 1.0 senders decode with sender "".
MAX_SENDER_LENGTH = 64
# run_start.targets_missing (protocol 1.2): one line for the monitor's console.
MAX_REASON_LENGTH = 500
# A world this large is garbage, and the monitor keeps per-rank bookkeeping sized by it.
MAX_WORLD_SIZE = 1 << 20
MAX_DATA_PORT = 65534  # a monitor's receipts socket is the port after its data port
# sample_names (protocol 1.3): a chunk holds at most this many names, each at most this long.
MAX_NAMES_PER_CHUNK = 1000
MAX_NAME_LENGTH = 200
SPLITS = ("val", "train")


class ProtocolError(ValueError):
    """A frame that is not a valid protocol message. `reason` is a short code used for counting."""

    reason = "invalid"


class MalformedFrameError(ProtocolError):
    reason = "malformed"


class UnsupportedVersionError(ProtocolError):
    reason = "version"


class UnknownKindError(ProtocolError):
    reason = "unknown_kind"


class InvalidFieldError(ProtocolError):
    reason = "field"


class InvalidArrayError(ProtocolError):
    reason = "array"


@dataclass(frozen=True)
class IdRange:
    """Sample ids `first, first + 1, ..., first + count - 1` (protocol 1.3): a sequential loader's ids
    at no cost per sample. On the wire, the map `{"first": int, "count": int}`."""

    first: int
    count: int

    def __len__(self) -> int:
        return self.count

    def array(self) -> np.ndarray:
        return np.arange(self.first, self.first + self.count, dtype=np.int64)

    def max(self) -> int:
        """The largest id (-1 for an empty range)."""
        return self.first + self.count - 1


# ---------------------------------------------------------------------------------------------
# Field checkers: each takes the decoded msgpack value and returns the value to keep (or raises).
# The scalar ones accept the exact type first: it is what nearly every frame holds, and the test is
# cheaper than the general one below it, which still decides every other value.


def _int(value: Any, name: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFieldError(f"{name} must be an integer, got {type(value).__name__}")
    return value


def _nonneg_int(value: Any, name: str) -> int:
    if type(value) is int and value >= 0:
        return value
    value = _int(value, name)
    if value < 0:
        raise InvalidFieldError(f"{name} must be >= 0, got {value}")
    return value


def _float(value: Any, name: str) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidFieldError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _str(value: Any, name: str) -> str:
    if type(value) is str:
        return value
    if not isinstance(value, str):
        raise InvalidFieldError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _reason(value: Any, name: str) -> str:
    value = _str(value, name)
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidFieldError(f"{name} must have at most {MAX_REASON_LENGTH} characters")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidFieldError(f"{name} must be a boolean, got {type(value).__name__}")
    return value


def _map(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidFieldError(f"{name} must be a map, got {type(value).__name__}")
    return value


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidFieldError(f"{name} must be a list of strings")
    return list(value)


def _float_list(value: Any, name: str) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise InvalidFieldError(f"{name} must be a list of numbers")
    return [_float(v, name) for v in value]


def _metric_map(value: Any, name: str) -> dict[str, float]:
    # Non-finite values are legal (a diverging loss is real information); the monitor shows gaps.
    # One pass; the error labels are only formatted for a value that fails.
    value = _map(value, name)
    checked = {}
    for key, item in value.items():
        if type(key) is not str:
            _str(key, f"{name} key")
        checked[key] = item if type(item) is float else _float(item, f"{name}[{key}]")
    return checked


def _hparams(value: Any, name: str) -> dict[str, Any]:
    # Scalars only, as docs/protocol.md says: bytes or nested values would break model_info.json.
    value = _map(value, name)
    for key, item in value.items():
        _str(key, f"{name} key")
        if item is not None and not isinstance(item, (bool, int, float, str)):
            raise InvalidFieldError(f"{name}[{key}] must be a scalar, got {type(item).__name__}")
    return value


def _normalization(value: Any, name: str) -> dict[str, list[float]]:
    value = _map(value, name)
    mean = _float_list(value.get("mean"), f"{name}.mean")
    std = _float_list(value.get("std"), f"{name}.std")
    if len(mean) != len(std) or not mean:
        raise InvalidFieldError(f"{name}: mean and std must be non-empty and of equal length")
    if any(s <= 0 or not math.isfinite(s) for s in std):
        raise InvalidFieldError(f"{name}.std must be finite and positive")
    return {"mean": mean, "std": std}


def _model(value: Any, name: str) -> dict[str, Any]:
    value = _map(value, name)
    return {
        "class": _str(value.get("class"), f"{name}.class"),
        "total_params": _nonneg_int(value.get("total_params"), f"{name}.total_params"),
        "trainable_params": _nonneg_int(value.get("trainable_params"), f"{name}.trainable_params"),
        "size_mb": _float(value.get("size_mb"), f"{name}.size_mb"),
    }


def _sampler(value: Any, name: str) -> dict[str, Any]:
    value = _map(value, name)
    return {
        "type": _str(value.get("type"), f"{name}.type"),
        "num_samples": _nonneg_int(value.get("num_samples"), f"{name}.num_samples"),
        "weights_per_class": _array(value.get("weights_per_class"), f"{name}.weights_per_class", ndim=1),
    }


def _array(value: Any, name: str, ndim: int | None = None, kind: str | None = None) -> np.ndarray:
    """Builds a read-only numpy view on the frame's bytes after checking dtype, shape and length."""
    if not isinstance(value, dict):
        raise InvalidArrayError(f"{name} must be an array map, got {type(value).__name__}")
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    # The isinstance check first: a list or map dtype is unhashable and would raise TypeError.
    if not isinstance(dtype, str) or dtype not in ARRAY_DTYPES:
        raise InvalidArrayError(f"{name}: dtype {dtype!r} is not one of {sorted(ARRAY_DTYPES)}")
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_ARRAY_DIMS:
        raise InvalidArrayError(f"{name}: shape must be a list of at most {MAX_ARRAY_DIMS} sizes")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise InvalidArrayError(f"{name}: shape entries must be non-negative integers, got {shape!r}")
    if not isinstance(data, bytes):
        raise InvalidArrayError(f"{name}: data must be bytes, got {type(data).__name__}")
    np_dtype = np.dtype(dtype)
    count = math.prod(shape)
    if count * np_dtype.itemsize != len(data):
        raise InvalidArrayError(
            f"{name}: shape {list(shape)} of {dtype} needs {count * np_dtype.itemsize} bytes, got {len(data)}"
        )
    if ndim is not None and len(shape) != ndim:
        raise InvalidArrayError(f"{name}: expected {ndim} dimensions, got {len(shape)}")
    if kind is not None and np_dtype.kind not in kind:
        raise InvalidArrayError(f"{name}: expected dtype kind in {kind!r}, got {dtype}")
    try:
        return np.frombuffer(data, dtype=np_dtype, count=count).reshape(shape)
    except (ValueError, OverflowError) as exc:  # numpy's limits, e.g. an empty array with a 2**64 dimension
        raise InvalidArrayError(f"{name}: shape {list(shape)} is not a valid array: {exc}") from None


def _label_array(value: Any, name: str) -> np.ndarray:
    return _array(value, name, ndim=1, kind="u")


def _confidence_array(value: Any, name: str) -> np.ndarray:
    """Top-1 confidences (protocol 1.2): float16 only, so that a sample costs 2 bytes on the wire."""
    confidence = _array(value, name, ndim=1)
    if confidence.dtype != np.float16:
        raise InvalidArrayError(f"{name}: expected float16 ('<f2') confidences, got {confidence.dtype.str}")
    return confidence


def _sample_ids(value: Any, name: str) -> np.ndarray | IdRange:
    """Sample ids (protocol 1.3): an unsigned 1-D array, or a range map {first, count}."""
    if isinstance(value, dict) and "dtype" not in value:
        if set(value) != {"first", "count"}:
            raise InvalidFieldError(f"{name} must be an unsigned id array or a map {{first, count}}, "
                                    f"got keys {sorted(map(str, value))}")
        return IdRange(_nonneg_int(value["first"], f"{name}.first"), _nonneg_int(value["count"], f"{name}.count"))
    return _array(value, name, ndim=1, kind="u")


def _split(value: Any, name: str) -> str:
    value = _str(value, name)
    if value not in SPLITS:
        raise InvalidFieldError(f"{name} must be one of {list(SPLITS)}, got {value[:40]!r}")
    return value


def _names(value: Any, name: str) -> list[str]:
    names = _str_list(value, name)
    if len(names) > MAX_NAMES_PER_CHUNK:
        raise InvalidFieldError(f"{name}: {len(names)} names in one chunk, at most {MAX_NAMES_PER_CHUNK}")
    return names  # a name longer than MAX_NAME_LENGTH is the monitor's to refuse (counted), not the frame


def _optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def checker(value: Any, name: str) -> Any:
        return None if value is None else check(value, name)

    checker.optional = True  # type: ignore[attr-defined]
    return checker


def _images(value: Any, name: str) -> np.ndarray:
    images = _array(value, name, ndim=4, kind="u")
    if images.dtype != np.uint8 or images.shape[3] != 3:
        raise InvalidArrayError(f"{name}: expected uint8 N×H×W×3, got {images.dtype} {images.shape}")
    return images


# kind -> {field: checker}. A field whose checker is `_optional(...)` may be absent or nil.
SCHEMA: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "run_start": {
        "class_names": _str_list,
        "normalization": _normalization,
        "model": _model,
        "train_targets": _optional(_label_array),
        "class_counts": _optional(lambda v, n: _array(v, n, ndim=1, kind="iu")),
        "sampler": _optional(_sampler),
        "hparams": _optional(_hparams),
        "num_samples": _optional(_nonneg_int),
        "targets_missing": _optional(_reason),
        "val_size": _optional(_nonneg_int),
        "train_size": _optional(_nonneg_int),
    },
    "preds": {
        "epoch": _nonneg_int,
        "step": _nonneg_int,
        "preds": _label_array,
        "labels": _label_array,
        "confidence": _optional(_confidence_array),
        "ids": _optional(_sample_ids),
        "label_confidence": _optional(_confidence_array),
    },
    "samples": {
        "epoch": _nonneg_int,
        "images": _images,
        "labels": _label_array,
        "preds": _label_array,
    },
    "mistakes": {
        "epoch": _nonneg_int,
        "top_k": _nonneg_int,
        "images": _images,
        "labels": _label_array,
        "preds": _label_array,
        "confidence": _confidence_array,
        "ids": _optional(_sample_ids),
    },
    "sampled": {
        "epoch": _nonneg_int,
        "indices": lambda v, n: _array(v, n, ndim=1, kind="iu"),
    },
    "sample_names": {
        "split": _split,
        "first": _nonneg_int,
        "names": _names,
    },
    "train_preds": {
        "epoch": _nonneg_int,
        "ids": _sample_ids,
        "labels": _label_array,
        "preds": _label_array,
        "label_confidence": _confidence_array,
    },
    "metrics": {
        "epoch": _nonneg_int,
        "stage": _str,
        "step": _nonneg_int,
        "values": _metric_map,
    },
    "epoch_end": {
        "epoch": _nonneg_int,
        "sent": _nonneg_int,
        "dropped": _nonneg_int,
    },
    "run_end": {
        "status": _str,
        "error": _optional(_str),
        "sent": _nonneg_int,
        "dropped": _nonneg_int,
    },
}

# kind -> ((field, "kind.field" as errors name it, checker, optional), ...): SCHEMA, ready for decode.
_FIELDS: dict[str, tuple[tuple[str, str, Callable[[Any, str], Any], bool], ...]] = {
    kind: tuple((name, f"{kind}.{name}", check, getattr(check, "optional", False)) for name, check in fields.items())
    for kind, fields in SCHEMA.items()
}

RUN_END_STATUSES = frozenset({"completed", "failed", "interrupted"})


def _check_relations(kind: str, body: dict[str, Any]) -> None:
    """Cross-field rules that a single field's checker cannot see."""
    if kind in ("preds", "train_preds"):
        n = len(body["preds"])
        for key, what in (("labels", "labels"), ("confidence", "confidences"),
                          ("label_confidence", "label confidences"), ("ids", "ids")):
            if body.get(key) is not None and len(body[key]) != n:
                raise InvalidFieldError(f"{kind}: {n} predictions but {len(body[key])} {what}")
    if kind == "mistakes":
        n = body["images"].shape[0]
        if len(body["labels"]) != n or len(body["preds"]) != n or len(body["confidence"]) != n \
                or (body["ids"] is not None and len(body["ids"]) != n):
            raise InvalidFieldError(f"mistakes: {n} images need {n} labels, predictions, confidences (and ids)")
        if n > body["top_k"]:
            raise InvalidFieldError(f"mistakes: {n} images but top_k is {body['top_k']}")
    if kind == "samples":
        n = body["images"].shape[0]
        if len(body["labels"]) != n or len(body["preds"]) != n:
            raise InvalidFieldError(f"samples: {n} images need {n} labels and {n} predictions")
    if kind == "run_end" and body["status"] not in RUN_END_STATUSES:
        raise InvalidFieldError(f"run_end.status must be one of {sorted(RUN_END_STATUSES)}, got {body['status']!r}")
    if kind == "run_start" and not body["class_names"]:
        raise InvalidFieldError("run_start.class_names must not be empty")
    if kind == "run_start" and body["class_counts"] is not None and body["class_counts"].size \
            and body["class_counts"].min() < 0:
        raise InvalidFieldError("run_start.class_counts must not hold negative counts")


def smallest_label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned dtype that holds every class index of `num_classes` classes."""
    if num_classes <= 1 << 8:
        return np.dtype(np.uint8)
    if num_classes <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


