"""Wire codec: every kind and dtype round-trips; bad frames are refused with named errors."""

import dataclasses
import math

import msgpack
import numpy as np
import pytest

from trainer_side import protocol
from trainer_side.protocol import (InvalidArrayError, InvalidFieldError, MalformedFrameError, UnknownKindError,
                                   UnsupportedVersionError, decode, encode, make_message)

U8 = np.array([0, 1, 2, 9], dtype=np.uint8)

EXAMPLES = {
    "run_start": {
        "class_names": ["cat", "dog", "émeu"], "normalization": {"mean": [0.5], "std": [0.25]},
        "model": {"class": "Net", "total_params": 10, "trainable_params": 8, "size_mb": 0.5},
        "train_targets": np.array([0, 1, 2, 2], dtype=np.uint8), "class_counts": None,
        "sampler": {"type": "TrackingWeightedRandomSampler", "num_samples": 4,
                    "weights_per_class": np.array([1.0, 0.5, 0.25])},
        "hparams": {"lr": 0.01, "name": "x"},
    },
    "preds": {"epoch": 2, "step": 40, "preds": U8, "labels": U8[::-1].copy(),
              "confidence": np.array([0.25, 1.0, 0.5, 0.9], dtype=np.float16)},
    "mistakes": {"epoch": 1, "top_k": 16, "images": np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3),
                 "labels": np.array([0, 2], dtype=np.uint8), "preds": np.array([1, 1], dtype=np.uint8),
                 "confidence": np.array([0.75, 0.5], dtype=np.float16)},
    "samples": {"epoch": 0, "images": np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3),
                "labels": np.array([1, 2], dtype=np.uint8), "preds": np.array([1, 0], dtype=np.uint8)},
    "sampled": {"epoch": 1, "indices": np.array([5, 3, 3, 0], dtype=np.uint32)},
    "metrics": {"epoch": 1, "stage": "val", "step": 7, "values": {"val/loss": 0.25, "val/acc_top1": float("nan")}},
    "epoch_end": {"epoch": 1, "sent": 12, "dropped": 3},
    "run_end": {"status": "failed", "error": "RuntimeError: boom", "sent": 20, "dropped": 0},
}


def _frame(**fields):
    base = {"v": [1, 0], "kind": "epoch_end", "run": "r", "rank": 0, "world": 1, "seq": 0, "time": 1.0,
            "epoch": 0, "sent": 0, "dropped": 0}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...}, use_bin_type=True)


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_kind_round_trips(kind):
    message = make_message(kind, "run-1", 1, 2, 17, EXAMPLES[kind], time=123.5)
    decoded = decode(encode(message))
    assert (decoded.kind, decoded.run, decoded.rank, decoded.world, decoded.seq, decoded.time) == (
        kind, "run-1", 1, 2, 17, 123.5)
    for name, value in EXAMPLES[kind].items():
        assert _same(value, decoded.body[name]), name


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8"])
def test_every_dtype_round_trips(dtype):
    array = (np.arange(12).reshape(3, 4) - 3).astype(dtype)
    decoded = protocol._array(protocol.encode_array(array), "x")
    assert decoded.dtype == array.dtype and decoded.shape == (3, 4) and np.array_equal(decoded, array)


def test_big_endian_input_is_sent_little_endian():
    array = np.array([1, 256, 65535], dtype=">u2")
    wire = protocol.encode_array(array)
    assert wire["dtype"] == "<u2" and wire["data"] == np.array([1, 256, 65535], dtype="<u2").tobytes()


def test_preds_cost_one_byte_per_value_under_256_classes():
    n = 10_000
    labels = np.zeros(n, dtype=protocol.smallest_label_dtype(43))
    frame = encode(make_message("preds", "r", 0, 1, 0, {"epoch": 0, "step": 0, "preds": labels, "labels": labels}))
    assert 2 * n <= len(frame) <= 2 * n + 200


@pytest.mark.parametrize("classes,dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                           (65537, np.uint32)])
def test_smallest_label_dtype(classes, dtype):
    assert protocol.smallest_label_dtype(classes) == dtype


def _array_frame(array_map):
    return _frame(kind="sampled", epoch=0, indices=array_map, sent=..., dropped=...)


@pytest.mark.parametrize("array_map, message", [
    ({"dtype": "|O", "shape": [1], "data": b"x"}, "dtype"),
    ({"dtype": ">u4", "shape": [1], "data": b"abcd"}, "dtype"),
    ({"dtype": "<U1", "shape": [1], "data": b"abcd"}, "dtype"),
    ({"dtype": "<u4", "shape": [2], "data": b"abcd"}, "needs 8 bytes, got 4"),
    ({"dtype": "<u4", "shape": [-1], "data": b""}, "non-negative"),
    ({"dtype": "<u4", "shape": "1", "data": b"abcd"}, "shape"),
    ({"dtype": "<u4", "shape": [1], "data": "abcd"}, "must be bytes"),
    ({"dtype": "<f4", "shape": [1], "data": b"abcd"}, "dtype kind"),
    ({"dtype": "<u4", "shape": [1, 1], "data": b"abcd"}, "dimensions"),
    ([1, 2, 3], "array map"),
])
def test_bad_arrays_are_refused_by_name(array_map, message):
    with pytest.raises(InvalidArrayError, match=message):
        decode(_array_frame(array_map))


def test_unknown_major_version_is_refused_with_a_clear_message():
    with pytest.raises(UnsupportedVersionError, match="major version 2 is not supported"):
        decode(_frame(v=[2, 0]))


def test_newer_minor_version_and_unknown_fields_are_accepted():
    message = decode(_frame(v=[1, 7], future_field={"x": 1}))
    assert message.version == (1, 7) and "future_field" not in message.body


@pytest.mark.parametrize("frame", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb("x"),
                                   msgpack.packb({1: 2}), msgpack.packb({"v": [1, 0]}) + b"junk"])
def test_non_map_and_garbage_frames_are_malformed(frame):
    with pytest.raises(MalformedFrameError):
        decode(frame)


def test_unknown_kind_is_its_own_error():
    with pytest.raises(UnknownKindError, match="teleport"):
        decode(_frame(kind="teleport"))


@pytest.mark.parametrize("fields, match", [
    ({"rank": 2, "world": 2}, "not inside world size"),
    ({"rank": -1}, ">= 0"),
    ({"seq": "0"}, "integer"),
    ({"epoch": True}, "integer"),
    ({"run": ""}, "run id"),
    ({"run": "x" * 201}, "run id"),
    ({"sent": ...}, "required"),
    ({"time": "now"}, "number"),
])
def test_bad_envelope_and_fields_are_refused(fields, match):
    with pytest.raises(InvalidFieldError, match=match):
        decode(_frame(**fields))


def test_cross_field_rules():
    bad = make_message("preds", "r", 0, 1, 0, {"epoch": 0, "step": 0, "preds": U8, "labels": U8[:3]})
    with pytest.raises(InvalidFieldError, match="4 predictions but 3 labels"):
        decode(encode(bad))
    status = make_message("run_end", "r", 0, 1, 0, {"status": "exploded", "error": None, "sent": 0, "dropped": 0})
    with pytest.raises(InvalidFieldError, match="status"):
        decode(encode(status))


def test_decoded_arrays_do_not_copy_the_frame():
    frame = encode(make_message("sampled", "r", 0, 1, 0, {"epoch": 0, "indices": np.arange(1000, dtype=np.uint32)}))
    indices = decode(frame)["indices"]
    assert not indices.flags.writeable and not indices.flags.owndata


def test_decode_builds_the_same_message_as_the_dataclass():
    args = ("metrics", "r", 1, 2, 3, 4.5, {"values": {"loss": 0.5}}, (1, 1), "a1b2")
    built, constructed = protocol._checked_message(*args), protocol.Message(*args)
    # Equal, and field for field: a field added to Message but not to the shortcut fails here.
    assert type(built) is protocol.Message and built == constructed and vars(built) == vars(constructed)
    assert repr(built) == repr(constructed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.seq = 4  # type: ignore[misc]
