"""protocol.decode keeps its recorded behaviour on ~2,000 valid and invalid frames.

Every field of every kind, and the envelope, is set in turn to each of a list of values (or left
out), and a few whole-frame cases are added. `tests/data/decode_outcomes.txt` holds what decode did
with each frame when it was recorded: the error class and text of a refused frame, or a digest of
the accepted message (every value with its type, dicts in their order, arrays with their dtype,
shape and bytes). A faster decoder must reproduce every line.

After an intended change of behaviour, re-record (and review the diff):

    .venv/bin/python tests/test_decode_outcomes.py --record
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import msgpack
import numpy as np
import pytest

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_side import protocol

OUTCOMES = Path(__file__).parent / "data" / "decode_outcomes.txt"
NAN, INF = float("nan"), float("inf")


def array(dtype: str, shape: list, data: bytes | None = None) -> dict:
    count = math.prod(shape) if all(isinstance(s, int) for s in shape) else 0
    return {"dtype": dtype, "shape": shape, "data": bytes(count * int(dtype[-1])) if data is None else data}


U1 = array("|u1", [3], bytes([0, 1, 2]))
ENVELOPE = {"v": [1, 0], "kind": "metrics", "run": "r", "rank": 0, "world": 1, "seq": 0, "time": 1.5}
BODIES: dict[str, dict[str, Any]] = {
    "run_start": {"class_names": ["a", "b", "c"], "normalization": {"mean": [0.5], "std": [0.25]},
                  "model": {"class": "Net", "total_params": 3, "trainable_params": 2, "size_mb": 0.1},
                  "train_targets": U1, "class_counts": array("<i8", [3]),
                  "sampler": {"type": "W", "num_samples": 4, "weights_per_class": array("<f8", [3])},
                  "hparams": {"lr": 0.1, "name": "x", "n": 3, "flag": True, "none": None}, "num_samples": 4},
    "preds": {"epoch": 0, "step": 1, "preds": U1, "labels": array("|u1", [3], bytes([2, 1, 0])),
              "confidence": array("<f2", [3], bytes([0, 0x38, 0, 0x3c, 0x66, 0x36]))},
    "samples": {"epoch": 0, "images": array("|u1", [2, 2, 2, 3]), "labels": array("|u1", [2]),
                "preds": array("|u1", [2])},
    "mistakes": {"epoch": 0, "top_k": 2, "images": array("|u1", [2, 2, 2, 3]), "labels": array("|u1", [2]),
                 "preds": array("|u1", [2], bytes([1, 0])), "confidence": array("<f2", [2])},
    "sampled": {"epoch": 0, "indices": array("<u4", [2])},
    "metrics": {"epoch": 0, "stage": "val", "step": 0, "values": {"val/loss": 0.5, "acc": NAN, "n": 1}},
    "epoch_end": {"epoch": 0, "sent": 1, "dropped": 0},
    "run_end": {"status": "completed", "error": None, "sent": 1, "dropped": 0},
    # protocol 1.3
    "sample_names": {"split": "val", "first": 0, "names": ["a/0.png", "b/1.png"]},
    "train_preds": {"epoch": 0, "ids": {"first": 4, "count": 3}, "labels": U1, "preds": U1,
                    "label_confidence": array("<f2", [3])},
}
# preds and mistakes of protocol 1.3: every field of the 1.2 ones, then ids and label confidences
BODIES["preds"] = {**BODIES["preds"], "ids": array("<u4", [3]), "label_confidence": array("<f2", [3])}
BODIES["mistakes"] = {**BODIES["mistakes"], "ids": {"first": 0, "count": 2}}
ABSENT = object()

# Every field gets each of these; they cover msgpack's types, limits and the usual near misses.
SCALARS = [ABSENT, None, True, False, 0, 1, -1, 7, 2**20, 2**20 + 1, 2**63 - 1, -(2**63), 2**64 - 1,
           0.0, -0.0, 1.5, -2.5, NAN, INF, -INF, "", "x", "metrics", "completed", "a" * 200, "a" * 201,
           b"", b"x", msgpack.ExtType(1, b"x"), msgpack.Timestamp(1, 0)]
CONTAINERS = [[], [1, 0], [1, 7], [2, 0], [0, 0], [1], [1, 0, 0], [True, 0], [1.0, 0], ["1", "0"],
              ["a", "b"], ["a", 1], [0.5, 0.25], {}, {"a": 1.0}, {"a": 1}, {"a": True}, {"a": "x"},
              {"a": None}, {b"a": 1.0}, {"a": [1.0]}, {"a": 1.0, b"b": 2.0}, {"a": 1.0, "b": "x"}]
# Array fields and the other map fields also get near misses of their own shape.
ARRAYS = [array("|u1", [0]), array("|u1", [2, 2]), array("<u2", [3]), array("<u8", [3]), array("|i1", [3]),
          array("<f4", [3]), array(">u2", [3]), array("object", [3], b"xxx"), {**U1, "dtype": 5},
          {**U1, "dtype": ["|u1"]}, {**U1, "shape": 3}, {**U1, "shape": [-3]}, {**U1, "shape": [True, 3]},
          {**U1, "shape": [3.0]}, {**U1, "shape": [1] * 9}, {**U1, "data": bytes(4)}, {**U1, "data": "abc"},
          {**U1, "shape": [2**64 - 1, 0], "data": b""}, {"dtype": "|u1", "shape": [3]},
          array("|u1", [2, 2, 2, 3]), array("|u1", [2, 2, 2, 4]), array("<u2", [2, 2, 2, 3]),
          array("|u1", [0, 2, 2, 3]), array("|u1", [2]), array("|u1", [4]), array("<i4", [2]), array("<f8", [2])]
MAPS = [{"mean": [0.5, 0.5], "std": [0.25]}, {"mean": [], "std": []}, {"mean": [1], "std": [0]},
        {"mean": [1], "std": [INF]}, {"mean": [True], "std": [1.0]}, {"mean": [1], "std": [1], "x": 1},
        {"class": "N", "total_params": -1, "trainable_params": 0, "size_mb": 0},
        {"class": "N", "total_params": 1, "trainable_params": 1, "size_mb": 1},
        {"type": "W", "num_samples": 1, "weights_per_class": array("|u1", [1])},
        {"type": "W", "num_samples": 1, "weights_per_class": array("|u1", [1, 1])},
        {"lr": [0.1]}, {"lr": {"a": 1}}, {"lr": b"x"}, {"a": INF, "b": -0.0, "c": 2**64 - 1}]


# Float16 arrays (confidences, protocol 1.2), after the older cases so that their numbers stay.
HALF_ARRAYS = [array("<f2", [3]), array("<f2", [2]), array("<f2", [2, 1])]
# Id ranges (protocol 1.3), after those.
ID_RANGES = [{"first": 0, "count": 3}, {"first": 0, "count": 2}, {"first": -1, "count": 3}, {"first": 0},
             {"first": 0, "count": 3, "x": 1}, {"first": 2**64 - 1, "count": 3}, {"first": 1.0, "count": 3}]


def values_for(valid: Any) -> list:
    return SCALARS + CONTAINERS + (ARRAYS + MAPS + HALF_ARRAYS + ID_RANGES if isinstance(valid, dict) else [])


def mutations() -> Iterator[tuple[str, dict]]:
    """(case id, frame map): each envelope key (of one kind) and each field of each kind set to
    every value or left out, and an unknown key added."""
    for kind, body in BODIES.items():
        base = {**ENVELOPE, "kind": kind, **body}
        yield f"{kind} valid", base
        keys = [*ENVELOPE, *body] if kind == "metrics" else [*body]
        for key in keys:
            for i, value in enumerate(values_for(base[key])):
                yield f"{kind}.{key} {i}", ({k: v for k, v in base.items() if k != key} if value is ABSENT
                                            else {**base, key: value})
        for i, value in enumerate([None, 1, {"a": b"x"}]):
            yield f"{kind}.extra {i}", {**base, "extra": value}


def cases() -> Iterator[tuple[str, bytes]]:
    for case, frame in mutations():
        yield case, msgpack.packb(frame, use_bin_type=True)
    valid = msgpack.packb({**ENVELOPE, **BODIES["metrics"]}, use_bin_type=True)
    yield "truncated", valid[:-1]
    yield "trailing byte", valid + b"\x00"
    yield "empty", b""
    yield "reserved byte", b"\xc1"
    yield "int key", msgpack.packb({**ENVELOPE, **BODIES["metrics"], 1: 2}, use_bin_type=True)
    yield "nested too deep", b"\x91" * 5000 + b"\xc0"
    for i, value in enumerate(values_for({})[1:]):
        yield f"top level {i}", msgpack.packb(value, use_bin_type=True)
    for kind, body in BODIES.items():  # the fields in another order
        yield f"{kind} reversed", msgpack.packb(dict(reversed({**ENVELOPE, "kind": kind, **body}.items())),
                                                use_bin_type=True)


def describe(value: Any) -> Any:
    """A value with the types that == would ignore (1 vs 1.0 vs True, dict order, array dtype)."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.flags.writeable, value.tobytes().hex())
    if isinstance(value, dict):
        return ("dict", [(describe(k), describe(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [describe(v) for v in value])
    return (type(value).__name__, repr(value))


def outcome(frame: bytes) -> str:
    try:
        message = protocol.decode(frame)
    except protocol.ProtocolError as exc:
        return f"{type(exc).__name__}: {exc}"
    fields = [(name, describe(getattr(message, name)))
              for name in ("kind", "run", "rank", "world", "seq", "time", "body", "version")]
    return "accepted " + hashlib.sha256(repr((type(message).__name__, fields)).encode()).hexdigest()[:20]


def recorded() -> dict[str, str]:
    lines = OUTCOMES.read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines)


def test_the_cases_are_the_recorded_ones():
    ids = [case for case, _ in cases()]
    assert len(ids) == len(set(ids))
    assert ids == list(recorded())


def test_every_frame_decodes_or_fails_as_recorded():
    expected = recorded()
    results = ((case, expected.get(case), outcome(frame)) for case, frame in cases())
    differ = [result for result in results if result[1] != result[2]]
    assert not differ, f"{len(differ)} frames differ, e.g. " + "\n".join(map(str, differ[:10]))


def test_the_recording_covers_every_outcome():
    # Guards the guard: a list of cases that no longer reaches some rule would pass vacuously.
    results = list(recorded().values())
    accepted = sum(r.startswith("accepted ") for r in results)
    by_class = {name: sum(r.startswith(name + ":") for r in results)
                for name in ("MalformedFrameError", "UnsupportedVersionError", "UnknownKindError",
                             "InvalidFieldError", "InvalidArrayError")}
    assert accepted >= 150 and min(by_class.values()) >= 5, (accepted, by_class)


def test_the_digest_tells_apart_what_equality_would_not():
    assert describe({"a": 1}) != describe({"a": 1.0}) != describe({"a": True})
    assert describe({"a": 1.0, "b": 2.0}) != describe({"b": 2.0, "a": 1.0})
    assert describe(np.zeros(2, np.uint8)) != describe(np.zeros(2, np.uint16))
    assert describe(np.zeros(2, np.uint8)) != describe(np.zeros(2, np.uint8).reshape(1, 2))
    assert describe([1, 0]) != describe((1, 0))


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    OUTCOMES.write_text("".join(f"{case}\t{outcome(frame)}\n" for case, frame in cases()), encoding="utf-8")
    print(f"recorded {sum(1 for _ in cases())} outcomes in {OUTCOMES}")
