"""Wire codec, protocol v1 (1.2): a `Message` to one msgpack frame and back (pure: no sockets, no files).

The field list of every kind lives in docs/protocol.md; the `SCHEMA` below is its executable form.
The monitor imports this module too, so both ends validate with the same rules.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import msgpack
import numpy as np

PROTOCOL_VERSION = (1, 2)

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
class Message:
    """One protocol message in memory: the envelope plus the kind's fields (`body`)."""

    kind: str
    run: str
    rank: int
    world: int
    seq: int
    time: float
    body: Mapping[str, Any] = field(default_factory=dict)
    version: tuple[int, int] = PROTOCOL_VERSION
    sender: str = ""

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


def _checked_message(kind: str, run: str, rank: int, world: int, seq: int, time: float, body: dict[str, Any],
                     version: tuple[int, int], sender: str) -> Message:
    """`Message(...)` for values that decode has checked, built in one step instead of through the
    frozen dataclass's `__init__`, which sets each field with its own `object.__setattr__` call."""
    message = object.__new__(Message)
    object.__setattr__(message, "__dict__", {"kind": kind, "run": run, "rank": rank, "world": world, "seq": seq,
                                             "time": time, "body": body, "version": version,
                                             "sender": sender})
    return message


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
    },
    "preds": {
        "epoch": _nonneg_int,
        "step": _nonneg_int,
        "preds": _label_array,
        "labels": _label_array,
        "confidence": _optional(_confidence_array),
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
    },
    "sampled": {
        "epoch": _nonneg_int,
        "indices": lambda v, n: _array(v, n, ndim=1, kind="iu"),
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
    if kind == "preds" and len(body["preds"]) != len(body["labels"]):
        raise InvalidFieldError(f"preds: {len(body['preds'])} predictions but {len(body['labels'])} labels")
    if kind == "preds" and body["confidence"] is not None and len(body["confidence"]) != len(body["preds"]):
        raise InvalidFieldError(f"preds: {len(body['preds'])} predictions but {len(body['confidence'])} confidences")
    if kind == "mistakes":
        n = body["images"].shape[0]
        if len(body["labels"]) != n or len(body["preds"]) != n or len(body["confidence"]) != n:
            raise InvalidFieldError(f"mistakes: {n} images need {n} labels, predictions and confidences")
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


# ---------------------------------------------------------------------------------------------
# Encoding


def _pack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} on the wire")


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """The wire form of an array: {dtype, shape, data} in little-endian, C order."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype.str not in ARRAY_DTYPES:
        raise TypeError(f"dtype {array.dtype} is not allowed on the wire; use one of {sorted(ARRAY_DTYPES)}")
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return {"dtype": dtype.str, "shape": list(array.shape), "data": data}


def encode(message: Message) -> bytes:
    """Turns a message into one frame (a msgpack map: the envelope keys plus the kind's fields)."""
    frame: dict[str, Any] = {
        "v": list(message.version),
        "kind": message.kind,
        "run": message.run,
        "rank": message.rank,
        "world": message.world,
        "seq": message.seq,
        "time": message.time,
    }
    if message.sender:
        frame["sender"] = message.sender
    for key, value in message.body.items():
        if key in frame:
            raise ValueError(f"body field {key!r} collides with an envelope key")
        frame[key] = value
    return msgpack.packb(frame, use_bin_type=True, default=_pack_default)


def make_message(kind: str, run: str, rank: int, world: int, seq: int, body: Mapping[str, Any],
                 time: float | None = None, sender: str = "") -> Message:
    """Builds a message, stamping wall time unless given."""
    return Message(kind, run, rank, world, seq, _time.time() if time is None else time, dict(body), sender=sender)


# ---------------------------------------------------------------------------------------------
# Decoding


def _unpack(frame: bytes) -> Any:
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError, TypeError) as exc:
        raise MalformedFrameError(f"frame is not a msgpack value: {exc}") from None


def decode(frame: bytes) -> Message:
    """Checks a frame against the schema and returns the message; raises a ProtocolError subclass.

    The common frame, whose envelope holds exactly the types the emitter writes, takes a fast path
    with the checks written out inline. A frame that fails any of them is decided by `_decode_slow`,
    the general path, which gives every refusal its error; the fast path accepts nothing that the
    general one refuses, and builds the same message (tests/test_decode_outcomes.py).
    """
    obj = _unpack(frame)
    if type(obj) is not dict:
        return _decode_slow(obj)
    get = obj.get
    version, kind, run, rank, world, seq, wall, sender = (get("v"), get("kind"), get("run"), get("rank"),
                                                          get("world"), get("seq"), get("time"), get("sender", ""))
    # `type(x) is int` excludes bool, the only int subclass msgpack makes.
    if not (type(version) is list and len(version) == 2 and type(version[0]) is int and type(version[1]) is int
            and version[0] == PROTOCOL_VERSION[0]
            and type(kind) is str and type(run) is str and 0 < len(run) <= MAX_RUN_ID_LENGTH
            and type(rank) is int and type(world) is int and 0 <= rank < world <= MAX_WORLD_SIZE
            and type(seq) is int and seq >= 0 and type(wall) is float
            and type(sender) is str and len(sender) <= MAX_SENDER_LENGTH):
        return _decode_slow(obj)
    if kind == "metrics":
        # The small message of every epoch end: its fields checked inline, as `SCHEMA["metrics"]` does.
        epoch, stage, step, values = get("epoch"), get("stage"), get("step"), get("values")
        if not (type(epoch) is int and epoch >= 0 and type(stage) is str and type(step) is int and step >= 0
                and type(values) is dict):
            return _decode_slow(obj)
        for key, item in values.items():
            if type(key) is not str or type(item) is not float:
                values = _metric_map(values, "metrics.values")  # converts integers, refuses the rest
                break
        # A map of str -> float as unpacked is already what `_metric_map` would build: it is kept as is.
        body = {"epoch": epoch, "stage": stage, "step": step, "values": values}
    else:
        fields = _FIELDS.get(kind)
        if fields is None:
            raise UnknownKindError(f"unknown message kind {kind!r}")
        body = _checked_body(kind, fields, get)
    return _checked_message(kind, run, rank, world, seq, wall, body, (version[0], version[1]), sender)


def _checked_body(kind: str, fields: tuple[tuple[str, str, Callable[[Any, str], Any], bool], ...],
                  get: Callable[[str], Any]) -> dict[str, Any]:
    """The kind's fields, each checked by its schema checker, then the cross-field rules."""
    body: dict[str, Any] = {}
    for name, label, check, optional in fields:
        value = get(name)
        if value is None and not optional:
            raise InvalidFieldError(f"{label} is required")
        body[name] = check(value, label)
    _check_relations(kind, body)
    # Unknown optional fields are ignored on purpose: a newer minor version may add some.
    return body


def _decode_slow(obj: Any) -> Message:
    """The general path of `decode`, for an unpacked frame: every check in order, each with its error."""
    if not isinstance(obj, dict):
        raise MalformedFrameError(f"frame must be a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if not (isinstance(version, list) and len(version) == 2 and type(version[0]) is int and type(version[1]) is int):
        raise UnsupportedVersionError(f"frame has no valid protocol version [major, minor]: {version!r}")
    if version[0] != PROTOCOL_VERSION[0]:
        raise UnsupportedVersionError(
            f"protocol major version {version[0]} is not supported (this monitor speaks {PROTOCOL_VERSION[0]}.x)"
        )
    kind = _str(obj.get("kind"), "kind")
    run = _str(obj.get("run"), "run")
    if not run or len(run) > MAX_RUN_ID_LENGTH:
        raise InvalidFieldError(f"run id must have 1 to {MAX_RUN_ID_LENGTH} characters")
    rank = _nonneg_int(obj.get("rank"), "rank")
    world = _int(obj.get("world"), "world")
    if world < 1 or world > MAX_WORLD_SIZE or rank >= world:
        raise InvalidFieldError(f"rank {rank} is not inside world size {world} (at most {MAX_WORLD_SIZE})")
    seq = _nonneg_int(obj.get("seq"), "seq")
    wall = _float(obj.get("time"), "time")
    sender = obj.get("sender")
    sender = "" if sender is None else _str(sender, "sender")
    if len(sender) > MAX_SENDER_LENGTH:
        raise InvalidFieldError(f"sender must have at most {MAX_SENDER_LENGTH} characters")
    fields = _FIELDS.get(kind)
    if fields is None:
        raise UnknownKindError(f"unknown message kind {kind!r}")
    body = _checked_body(kind, fields, obj.get)
    return _checked_message(kind, run, rank, world, seq, wall, body, (version[0], version[1]), sender)


def smallest_label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned dtype that holds every class index of `num_classes` classes."""
    if num_classes <= 1 << 8:
        return np.dtype(np.uint8)
    if num_classes <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


# ---------------------------------------------------------------------------------------------
# Delivery receipts (protocol 1.1): a sender asks the monitor's receipts socket how many of its
# frames are in the monitor's log. Receipts travel on their own socket and are never logged.

RECEIPT_QUERY = "receipt_query"
RECEIPT = "receipt"


@dataclass(frozen=True)
class Receipt:
    """How many frames of one sender (run, rank, sender id) the monitor has written to its log."""

    run: str
    rank: int
    sender: str
    logged: int


def encode_receipt_query(run: str, rank: int, sender: str) -> bytes:
    return msgpack.packb({"v": list(PROTOCOL_VERSION), "kind": RECEIPT_QUERY, "run": run, "rank": rank,
                          "sender": sender}, use_bin_type=True)


def encode_receipt(receipt: Receipt) -> bytes:
    return msgpack.packb({"v": list(PROTOCOL_VERSION), "kind": RECEIPT, "run": receipt.run, "rank": receipt.rank,
                          "sender": receipt.sender, "logged": receipt.logged}, use_bin_type=True)


def decode_receipt_query(frame: bytes) -> tuple[str, int, str]:
    """(run, rank, sender) of a receipt query; raises a ProtocolError subclass."""
    obj = _receipt_map(frame, RECEIPT_QUERY)
    return obj["run"], obj["rank"], obj["sender"]


def decode_receipt(frame: bytes) -> Receipt:
    obj = _receipt_map(frame, RECEIPT)
    return Receipt(obj["run"], obj["rank"], obj["sender"], _nonneg_int(obj.get("logged"), "receipt.logged"))


def _receipt_map(frame: bytes, kind: str) -> dict[str, Any]:
    obj = _unpack(frame)
    if not isinstance(obj, dict):
        raise MalformedFrameError(f"a {kind} must be a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if not (isinstance(version, list) and len(version) == 2 and version[0] == PROTOCOL_VERSION[0]):
        raise UnsupportedVersionError(f"{kind}: unsupported protocol version {version!r}")
    if obj.get("kind") != kind:
        raise UnknownKindError(f"expected a {kind}, got kind {obj.get('kind')!r}")
    run, sender = _str(obj.get("run"), f"{kind}.run"), _str(obj.get("sender"), f"{kind}.sender")
    if not run or len(run) > MAX_RUN_ID_LENGTH or len(sender) > MAX_SENDER_LENGTH:
        raise InvalidFieldError(f"{kind}: run id or sender id of the wrong length")
    return {**obj, "run": run, "sender": sender, "rank": _nonneg_int(obj.get("rank"), f"{kind}.rank")}


def receipts_endpoint(endpoint: str) -> str | None:
    """Where the monitor bound at `endpoint` answers receipt queries: the next TCP port, or the same
    ipc/inproc name with `.receipts` appended. None where there is no next port."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return endpoint + ".receipts"
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if host and port.isdigit() and 0 < int(port) <= MAX_DATA_PORT:
            return f"tcp://{host}:{int(port) + 1}"
    return None
