"""Wire codec, protocol v1 (1.3): a `Message` to one msgpack frame and back (pure: no sockets, no files).

The field list of every kind lives in docs/protocol.md; its executable form, `SCHEMA`, and the
checkers are in `trainer_side.schema`, re-exported here. The monitor imports this module too, so both
ends validate with the same rules.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import msgpack
import numpy as np

from trainer_side.schema import (  # noqa: F401 - re-exported: the codec's public names
    _FIELDS, ARRAY_DTYPES, ENVELOPE_KEYS, MAX_ARRAY_DIMS, MAX_NAME_LENGTH, MAX_NAMES_PER_CHUNK, MAX_REASON_LENGTH,
    MAX_RUN_ID_LENGTH, MAX_SENDER_LENGTH, MAX_WORLD_SIZE, MAX_DATA_PORT, PROTOCOL_VERSION, SCHEMA, SPLITS, IdRange,
    InvalidArrayError, InvalidFieldError, MalformedFrameError, ProtocolError, UnknownKindError,
    UnsupportedVersionError, _array, _check_relations, _metric_map, _nonneg_int, _int, _float, _str,
    smallest_label_dtype,
)


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
# Encoding


def _pack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, IdRange):
        return {"first": value.first, "count": value.count}
    raise TypeError(f"cannot encode {type(value).__name__} on the wire")


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """The wire form of an array: {dtype, shape, data} in little-endian, C order."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype.str not in ARRAY_DTYPES:
        raise TypeError(f"dtype {array.dtype} is not allowed on the wire; use one of {sorted(ARRAY_DTYPES)}")
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return {"dtype": dtype.str, "shape": list(array.shape), "data": data}


def compact_ids(ids: np.ndarray) -> np.ndarray | IdRange:
    """Sample ids as the wire carries them: a range when consecutive (no bytes per sample), else
    `<u4`, or `<u8` when an id needs it. Raises ValueError for a negative id."""
    ids = np.asarray(ids)
    if len(ids) and int(ids.min()) < 0:
        raise ValueError(f"sample ids must be non-negative, got {int(ids.min())}")
    if len(ids) and int(ids[-1]) - int(ids[0]) == len(ids) - 1 and bool((np.diff(ids) == 1).all()):
        return IdRange(int(ids[0]), len(ids))
    dtype = np.uint32 if not len(ids) or int(ids.max()) < 1 << 32 else np.uint64
    return ids.astype(dtype)


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
