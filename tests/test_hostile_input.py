"""Hostile and broken input: thousands of random and mutated frames beside a valid run never kill the
monitor, each rejected frame is counted with its reason, and the valid run's artifacts come out byte for
byte as a clean replay of its log makes them.

The garbage is built here with plain msgpack from docs/protocol.md (a "foreign sender"), never with the
project's codec, and sent on a raw pyzmq PUSH socket. Every garbage frame that could decode as a valid
message uses a run id of its own, so it cannot touch the artifacts of "tiny-fixture"; a valid message for
"tiny-fixture" whose content is refused (a class index out of range) is tested on its own below: it is
logged (the receiver logs before the pipeline checks content) but changes no aggregate.

The served monitor's counts, reason by reason (`<out>/.monitor/stats.json`, written when it stops) and in
its last line, are checked against the same frames fed to an in-process mirror (Intake + Pipeline).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Mapping

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rich.console import Console

from conftest import tree_bytes, wait_for
from monitor.outputs.console import MonitorConsole
from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.pipeline import Pipeline
from monitor.ingest.quotas import Limits, Quotas
from monitor.outputs.render.pool import InlineRenderer
from monitor.replay import replay
from trainer_side import protocol
from trainer_side.msglog import iter_frames

DATA = Path(__file__).parent / "data"
FIXTURE_LOG = DATA / "tiny_run.mlog"
FIXTURE_RUN = "tiny-fixture"
TINY_FRAMES = list(iter_frames(FIXTURE_LOG))
KINDS = ("run_start", "preds", "samples", "sampled", "metrics", "epoch_end", "run_end")
MAP_MARKERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}  # the first byte of any msgpack map
STOP_LINE = re.compile(r"(\d+) frames received, (\d+) rejected, (\d+) run\(s\)")
COMMON = dict(deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# One garbage item: run id -> the frames to send, each with the reason the monitor must count it under
# (None: accepted). A builder takes the run id so that every item gets a run of its own.
Frames = list[tuple[bytes, "str | None"]]
Builder = Callable[[str], Frames]


# ------------------------------------------------------------------------------------ foreign frames


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def u1(values: list[int]) -> dict:
    return {"dtype": "|u1", "shape": [len(values)], "data": bytes(values)}


def envelope(kind: str, run: str, seq: int = 0, **body: object) -> dict:
    return {"v": [1, 0], "kind": kind, "run": run, "rank": 0, "world": 1, "seq": seq, "time": 0.0, **body}


CLASSES = ["a", "b", "c"]


def bodies() -> dict[str, dict]:
    """A valid body of every kind, for a 3-class run with 4 training samples (docs/protocol.md)."""
    return {
        "run_start": {"class_names": list(CLASSES), "normalization": {"mean": [0.5], "std": [0.25]},
                      "model": {"class": "Net", "total_params": 3, "trainable_params": 3, "size_mb": 0.1}},
        "preds": {"epoch": 0, "step": 0, "preds": u1([0, 1, 2]), "labels": u1([2, 1, 0])},
        "samples": {"epoch": 0, "images": {"dtype": "|u1", "shape": [2, 2, 2, 3], "data": bytes(24)},
                    "labels": u1([0, 1]), "preds": u1([1, 1])},
        "sampled": {"epoch": 0, "indices": {"dtype": "<u4", "shape": [2], "data": bytes(8)}},
        "metrics": {"epoch": 0, "stage": "val", "step": 0, "values": {"val/loss": 0.5}},
        "epoch_end": {"epoch": 0, "sent": 1, "dropped": 0},
        "run_end": {"status": "completed", "error": None, "sent": 1, "dropped": 0},
    }


REQUIRED = {"run_start": ("class_names", "normalization", "model"), "preds": ("epoch", "step", "preds", "labels"),
            "samples": ("epoch", "images", "labels", "preds"), "sampled": ("epoch", "indices"),
            "metrics": ("epoch", "stage", "step", "values"), "epoch_end": ("epoch", "sent", "dropped"),
            "run_end": ("status", "sent", "dropped")}
ARRAY_FIELDS = {"preds": ("preds", "labels"), "samples": ("images", "labels", "preds"), "sampled": ("indices",)}
RUN_START = {**bodies()["run_start"], "train_targets": u1([0, 1, 2, 2])}


def message(kind: str, run: str, seq: int = 0, **overrides: object) -> dict:
    return envelope(kind, run, seq, **{**bodies()[kind], **overrides})


def one(obj: object, reason: str | None) -> Builder:
    """A builder for one frame made from a map template whose run id is filled in later."""
    def build(run: str) -> Frames:
        frame = dict(obj) if isinstance(obj, dict) else obj
        if isinstance(frame, dict) and frame.get("run") == "?":
            frame["run"] = run
        return [(pack(frame), reason)]
    return build


kinds = st.sampled_from(KINDS)

# version: checked before anything else, so the rest of the map may be perfectly valid.
version_garbage = st.builds(
    lambda kind, v: one({k: x for k, x in {**message(kind, "?"), "v": v}.items() if x is not ...}, "version"),
    kinds, st.sampled_from([..., [2, 0], [0, 9], [99, 1], "1.0", [1], [1, 0, 0], [True, 0], [1.0, 0], None, {}, 1]))

unknown_kind_garbage = st.builds(
    lambda kind: one({**message("metrics", "?"), "kind": kind}, "unknown_kind"),
    st.text(max_size=20).filter(lambda k: k not in KINDS))


def _without(kind: str, name: str) -> dict:
    frame = message(kind, "?")
    del frame[name]
    return frame


FIELD_CASES: list[Callable[[str], dict]] = [
    lambda k: {**message(k, "?"), "run": ""},
    lambda k: {**message(k, "?"), "run": "r" * (protocol.MAX_RUN_ID_LENGTH + 1)},  # the 200-character cap
    lambda k: {**message(k, "?"), "run": 7},
    lambda k: {**message(k, "?"), "kind": 7},
    lambda k: {**message(k, "?"), "rank": -1},
    lambda k: {**message(k, "?"), "rank": 1},  # == world
    lambda k: {**message(k, "?"), "world": 0},
    lambda k: {**message(k, "?"), "world": 2 ** 62},  # absurd world size
    lambda k: {**message(k, "?"), "world": "1"},
    lambda k: {**message(k, "?"), "seq": -1},
    lambda k: {**message(k, "?"), "seq": 1.5},
    lambda k: {**message(k, "?"), "time": "now"},
    lambda k: {**message(k, "?"), "time": None},
    lambda k: _without(k, REQUIRED[k][0]),
    lambda k: _without(k, REQUIRED[k][-1]),
]
FIELD_CASES_BY_KIND: list[dict] = [
    message("preds", "?", epoch=-1), message("preds", "?", epoch="0"), message("preds", "?", step=True),
    message("metrics", "?", values={"val/loss": "high"}), message("metrics", "?", values=[0.5]),
    message("metrics", "?", values={b"loss": 0.5}), message("metrics", "?", stage=None),
    message("run_start", "?", class_names=[]), message("run_start", "?", class_names=["a", 3]),
    message("run_start", "?", normalization={"mean": [0.5], "std": [0.0]}),
    message("run_start", "?", model={"class": "Net"}), message("run_start", "?", hparams={"blob": b"\x00"}),
    message("run_start", "?", hparams={"nested": [1, 2]}), message("run_start", "?", hparams=[1]),
    message("run_end", "?", status="exploded"), message("run_end", "?", error=5),
    message("preds", "?", preds=u1([0, 1])),  # 2 predictions for 3 labels
    message("samples", "?", labels=u1([0])),  # 2 images, 1 label
    message("epoch_end", "?", sent=-3),
]
field_garbage = st.one_of(
    st.builds(lambda case, kind: one(case(kind), "field"), st.sampled_from(FIELD_CASES), kinds),
    st.sampled_from(FIELD_CASES_BY_KIND).map(lambda frame: one(frame, "field")),
)


def _array_case(kind: str, name: str, value: object) -> Builder:
    return one(message(kind, "?", **{name: value}), "array")


BAD_ARRAYS = [
    {"dtype": ">u2", "shape": [3], "data": bytes(6)}, {"dtype": "<U1", "shape": [3], "data": bytes(12)},
    {"dtype": "O", "shape": [3], "data": bytes(24)}, {"dtype": "|b1", "shape": [3], "data": bytes(3)},
    {"dtype": "float32", "shape": [3], "data": bytes(12)}, {"dtype": 5, "shape": [3], "data": bytes(3)},
    {"dtype": ["|u1"], "shape": [3], "data": bytes(3)}, {"dtype": {"a": 1}, "shape": [3], "data": bytes(3)},
    {"dtype": "|u1", "shape": [4], "data": bytes(3)}, {"dtype": "|u1", "shape": [1] * 9, "data": bytes(1)},
    {"dtype": "|u1", "shape": [-3], "data": b""}, {"dtype": "|u1", "shape": "3", "data": bytes(3)},
    {"dtype": "|u1", "shape": [True], "data": bytes(1)}, {"dtype": "|u1", "shape": [3], "data": "abc"},
    {"dtype": "|u1", "shape": [3], "data": None}, {"dtype": "|u1", "shape": [2 ** 64 - 1], "data": b""},
    {"dtype": "|u1", "shape": [0, 2 ** 63], "data": b""}, [0, 1, 2], "012",
]
array_garbage = st.one_of(
    st.builds(lambda kind_name, value: _array_case(kind_name[0], kind_name[1], value),
              st.sampled_from([(k, n) for k, names in ARRAY_FIELDS.items() for n in names]),
              st.sampled_from(BAD_ARRAYS)),
    # shapes that lie about their bytes, from absurdly large to one element off
    st.builds(lambda n, extra: _array_case("preds", "labels", {"dtype": "<u2", "shape": [n + extra],
                                                               "data": bytes(2 * n)}),
              st.integers(0, 64), st.one_of(st.integers(1, 3), st.just(2 ** 62))),
    st.sampled_from([
        _array_case("preds", "preds", {"dtype": "|u1", "shape": [3, 1], "data": bytes(3)}),  # labels are 1-D
        _array_case("preds", "preds", {"dtype": "<f4", "shape": [3], "data": bytes(12)}),  # ... and unsigned
        _array_case("preds", "preds", {"dtype": "<i4", "shape": [3], "data": bytes(12)}),
        _array_case("samples", "images", {"dtype": "|u1", "shape": [2, 2, 2, 1], "data": bytes(8)}),
        _array_case("samples", "images", {"dtype": "<u2", "shape": [2, 2, 2, 3], "data": bytes(48)}),
        _array_case("samples", "images", {"dtype": "|u1", "shape": [0, 2 ** 64 - 1, 1, 3], "data": b""}),
        _array_case("sampled", "indices", {"dtype": "<f8", "shape": [2], "data": bytes(16)}),
    ]),
)


def _started(*then: tuple[dict, str | None], start: dict = RUN_START) -> Builder:
    """A valid run_start for a fresh run, then messages whose content contradicts it."""
    def build(run: str) -> Frames:
        frames = [(pack(envelope("run_start", run, 0, **start)), None)]
        return frames + [(pack({**frame, "run": run}), reason) for frame, reason in then]
    return build


content_garbage = st.one_of(
    st.builds(lambda bad: _started((message("preds", "?", 1, preds=u1([0, bad, 1])), "content")),
              st.integers(len(CLASSES), 255)),
    st.builds(lambda bad: _started((message("samples", "?", 1, labels=u1([bad, 0])), "content")),
              st.integers(len(CLASSES), 255)),
    st.builds(lambda bad: _started((message("sampled", "?", 1, indices={
        "dtype": "<u4", "shape": [2], "data": np.array([0, bad], "<u4").tobytes()}), "content")),
        st.integers(4, 2 ** 32 - 1)),
    st.sampled_from([
        one(message("preds", "?"), "content"),  # before any run_start
        one(message("samples", "?"), "content"),
        _started((message("sampled", "?", 1), "content"), start=bodies()["run_start"]),  # no train targets
        _started((message("run_start", "?", 1, class_names=["x", "y"]), "content")),  # restart, other names
        lambda run: [(pack(message("run_start", run, train_targets=u1([0, 3]))), "content")],
    ]),
)

# Valid messages the monitor must take even though they look odd: NaN and infinite metrics, a newer
# minor version, unknown extra fields. (No run_start, so nothing is rendered for them.)
accepted_garbage = st.sampled_from([
    one(message("metrics", "?", values={"val/loss": math.nan, "train/loss": math.inf, "x": -math.inf}), None),
    one({**message("metrics", "?"), "v": [1, 99], "future_field": {"anything": [1, b"2"]}}, None),
    one(message("epoch_end", "?", epoch=2 ** 63), None),
])

malformed_garbage = st.one_of(
    st.binary(max_size=300).filter(lambda b: not b or b[0] not in MAP_MARKERS).map(lambda b: one(b, "malformed")),
    st.builds(lambda kind, cut: (lambda run: [(pack(message(kind, run))[:cut], "malformed")]),
              kinds, st.integers(0, 40)),  # a map cut short
    st.builds(lambda kind, tail: (lambda run: [(pack(message(kind, run)) + tail, "malformed")]),
              kinds, st.binary(min_size=1, max_size=8)),  # bytes after the map
    st.sampled_from([pack([1, 2]), pack("frame"), pack(5), pack(None), pack(b"\x81"), b"\x81\x01\x02",
                     b"\x81\xa1\xff\x01", b"\x91" * 5_000, b"\xd6\xff\x00\x00\x00\x01",
                     b"\xdf\xff\xff\xff\xff"]).map(lambda b: one(b, "malformed")),
)

designed_garbage = st.one_of(malformed_garbage, version_garbage, unknown_kind_garbage, field_garbage,
                             array_garbage, content_garbage, accepted_garbage)


@st.composite
def fuzzed(draw) -> Builder:
    """A recorded frame of the valid run, moved to another run id, then damaged at random."""
    template = msgpack.unpackb(draw(st.sampled_from(TINY_FRAMES)), raw=False)
    how = draw(st.sampled_from(["flip", "byte", "insert", "delete"]))
    position = draw(st.integers(0, 10 ** 6))
    value = draw(st.integers(0, 255))

    def build(run: str) -> Frames:
        frame = bytearray(pack({**template, "run": run}))
        i = position % len(frame)
        if how == "flip":
            frame[i] ^= 1 << (value % 8)
        elif how == "byte":
            frame[i] = value
        elif how == "insert":
            frame[i:i] = bytes([value])
        else:
            del frame[i]
        return [(bytes(frame), "?")]  # the reason depends on what the damage hit: the mirror tells
    return build


# ------------------------------------------------------------------------------- in-process monitor


class DigestRenderer:
    """Records what each render job would draw (the jobs are pure descriptions of their artifacts)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.jobs: list[str] = []

    def submit(self, job: object) -> None:
        self.jobs.append(repr(_canonical(job, self.out)))

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


def _canonical(value: object, out: Path) -> object:
    if dataclasses.is_dataclass(value):
        return (type(value).__name__,
                tuple((f.name, _canonical(getattr(value, f.name), out)) for f in dataclasses.fields(value)))
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, Path):
        return str(value.relative_to(out))
    if isinstance(value, Mapping):
        return tuple(sorted((repr(k), _canonical(v, out)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v, out) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


class Mirror:
    """The monitor's intake and pipeline in this process: exact per-reason counters."""

    def __init__(self, out: Path, renderer=None) -> None:
        self.out = out
        self.logbook = LogBook(out)
        self.intake = Intake(self.logbook)
        self.renderer = renderer or DigestRenderer(out)
        self.pipeline = Pipeline(out, self.renderer, MonitorConsole(None, fresh=True))

    def feed(self, frame: bytes) -> str | None:
        """Feeds one frame; returns the reason it was rejected for, or None."""
        before = self.intake.rejected + self.pipeline.rejected
        message = self.intake.accept(frame)
        if message is not None:
            self.pipeline.handle(message, len(frame))
        change = (self.intake.rejected + self.pipeline.rejected) - before
        assert sum(change.values()) <= 1
        return next(iter(change), None)

    def finish(self) -> Counter:
        self.pipeline.finish()
        self.logbook.close()
        return self.intake.rejected + self.pipeline.rejected




def fixture_jobs(renderer: DigestRenderer) -> list[str]:
    return [job for job in renderer.jobs if f"'{FIXTURE_RUN}/" in job]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, object]:
    """The fixture log replayed alone: real artifacts (for serve) and render-job digests (in-process)."""
    tmp = tmp_path_factory.mktemp("clean")
    replay([FIXTURE_LOG], tmp / "replay", skip_corrupt=False, console=Console(file=io.StringIO()))
    mirror = Mirror(tmp / "digest")
    for frame in TINY_FRAMES:
        assert mirror.feed(frame) is None
    assert mirror.finish() == Counter()
    return {"files": tree_bytes(tmp / "replay" / FIXTURE_RUN), "digest_files": tree_bytes(tmp / "digest" / FIXTURE_RUN),
            "jobs": fixture_jobs(mirror.renderer)}


def run_names(prefix: str) -> Iterator[str]:
    return (f"{prefix}{i:05d}" for i in itertools.count())


# ---------------------------------------------------------------------------------------------- codec


@settings(max_examples=1000, **COMMON)
@given(frame=st.one_of(st.binary(max_size=200),
                       st.builds(lambda b, run: b(run)[0][0], st.one_of(designed_garbage, fuzzed()),
                                 st.just("fz"))))
def test_decode_raises_only_protocol_errors(frame):
    # Anything else escaping decode would end the receiver thread, and with it the monitor's intake.
    try:
        message = protocol.decode(frame)
    except protocol.ProtocolError as exc:
        assert exc.reason in {"malformed", "version", "unknown_kind", "field", "array"}
    else:
        assert message.kind in KINDS and 1 <= len(message.run) <= protocol.MAX_RUN_ID_LENGTH


# ------------------------------------------------------------------------------------- in-process path


@pytest.mark.slow
@settings(max_examples=25, **COMMON)
@given(items=st.lists(st.tuples(st.integers(0, len(TINY_FRAMES)), designed_garbage), min_size=1, max_size=40))
def test_in_process_counts_every_rejection_by_reason_and_the_valid_run_is_untouched(clean, items):
    names = run_names("garbage-")
    stream: Frames = [(frame, None) for frame in TINY_FRAMES]
    expected: Counter = Counter()
    for position, build in sorted(items, key=lambda item: item[0], reverse=True):
        frames = build(next(names))
        stream[position:position] = frames
        expected.update(reason for _, reason in frames if reason is not None)
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Mirror(Path(tmp) / "out")
        for frame, reason in stream:
            assert mirror.feed(frame) == reason
        assert mirror.finish() == expected
        assert mirror.intake.frames == len(stream)
        assert tree_bytes(Path(tmp) / "out" / FIXTURE_RUN) == clean["digest_files"]
        assert fixture_jobs(mirror.renderer) == clean["jobs"]


# Refused messages for the valid run itself. They carry seq 0, a number already seen, so the run's gap
# count (which its console.txt reports at run end) stays as it was.
OUT_OF_RANGE = st.one_of(
    st.builds(lambda epoch, index, step: envelope("preds", FIXTURE_RUN, 0, epoch=epoch, step=step,
                                                  preds=u1([0, index]), labels=u1([1, 2])),
              st.integers(0, 2), st.integers(4, 255), st.sampled_from([8, 16, 24, 999])),
    st.builds(lambda epoch, index: envelope("preds", FIXTURE_RUN, 0, epoch=epoch, step=8 * epoch + 8,
                                            preds=u1([1, 2]), labels=u1([index, 0])),
              st.integers(0, 2), st.integers(4, 255)),
    st.builds(lambda epoch, index: envelope("samples", FIXTURE_RUN, 0, epoch=epoch,
                                            images={"dtype": "|u1", "shape": [1, 12, 12, 3], "data": bytes(432)},
                                            labels=u1([index]), preds=u1([0])),
              st.integers(0, 2), st.integers(4, 255)),
    st.builds(lambda epoch, index: envelope("sampled", FIXTURE_RUN, 0, epoch=epoch, indices={
        "dtype": "<u4", "shape": [2], "data": np.array([0, index], "<u4").tobytes()}),
        st.integers(0, 2), st.integers(114, 2 ** 32 - 1)),
)


@pytest.mark.slow
@settings(max_examples=15, **COMMON)
@given(bad=st.lists(st.tuples(st.integers(1, len(TINY_FRAMES)), OUT_OF_RANGE), min_size=1, max_size=6))
def test_out_of_range_messages_for_the_valid_run_are_refused_and_change_no_aggregate(clean, bad):
    stream = list(TINY_FRAMES)
    for position, frame in sorted(bad, key=lambda item: item[0], reverse=True):
        stream.insert(position, pack(frame))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        mirror = Mirror(out)
        for frame in stream:
            mirror.feed(frame)
        assert mirror.finish() == Counter(content=len(bad))
        # Logged as received (it decoded), so the run's log is the whole stream ...
        assert list(iter_frames(out / FIXTURE_RUN / "messages.mlog")) == stream
        # ... but every aggregate and table is as if it never came.
        assert fixture_jobs(mirror.renderer) == clean["jobs"]
        skip = ("messages.mlog", "summary.json", "index.html")  # the run's page shows the summary's counts
        assert tree_bytes(out / FIXTURE_RUN, skip) == {k: v for k, v in clean["digest_files"].items() if k not in skip}


@pytest.mark.slow
def test_out_of_range_preds_leave_the_confusion_matrix_files_byte_for_byte(clean, tmp_path):
    stream = list(TINY_FRAMES)
    bad = pack(envelope("preds", FIXTURE_RUN, 7, epoch=1, step=16, preds=u1([0, 4, 1]), labels=u1([1, 1, 1])))
    stream.insert(8, bad)  # beside the real predictions of epoch 1, same validation step
    mirror = Mirror(tmp_path / "out", renderer=InlineRenderer())
    for frame in stream:
        mirror.feed(frame)
    assert mirror.finish() == Counter(content=1)
    produced = tree_bytes(tmp_path / "out" / FIXTURE_RUN)
    clean_files = clean["files"]
    for epoch in range(3):
        for name in ("confusion_matrix.csv", "confusion_matrix.png"):
            key = f"epoch_{epoch:03d}/{name}"
            assert produced[key] == clean_files[key], key
    assert list(iter_frames(tmp_path / "out" / FIXTURE_RUN / "messages.mlog")) == stream


def i8(values: list[int]) -> dict:
    return {"dtype": "<i8", "shape": [len(values)], "data": np.array(values, "<i8").tobytes()}


# Valid messages whose content contradicts the run in ways the checks above do not name. Each must be
# refused (or tolerated), never raise out of the pipeline: in `monitor serve` that would end the monitor.
SAMPLER = {"type": "TrackingWeightedRandomSampler", "num_samples": 4,
           "weights_per_class": {"dtype": "<f8", "shape": [3], "data": np.ones(3).tobytes()}}
CONTRADICTIONS = {
    "negative sampled index": [message("sampled", "?", 1, indices=i8([0, -10]))],
    "sampled index -1, which numpy would wrap to the last sample": [message("sampled", "?", 1, indices=i8([-1]))],
    "sampler weights for another class count": [message("run_start", "?", 1, **{**RUN_START, "sampler": {
        **SAMPLER, "weights_per_class": {"dtype": "<f8", "shape": [5], "data": np.ones(5).tobytes()}}}),
        message("sampled", "?", 2, indices=i8([0, 1]))],
    "a restart with fewer train targets than earlier draws used": [
        message("sampled", "?", 1, indices=i8([3])),
        message("run_start", "?", 2, **{**RUN_START, "sampler": SAMPLER, "train_targets": u1([0])})],
    "zero-pixel thumbnails": [message("samples", "?", 1, images={"dtype": "|u1", "shape": [2, 0, 0, 3], "data": b""})],
}


@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_contradicting_content_is_refused_without_raising(tmp_path, case):
    run = "contradiction"
    frames = [pack(envelope("run_start", run, 0, **{**RUN_START, "sampler": SAMPLER}))]
    frames += [pack({**frame, "run": run}) for frame in CONTRADICTIONS[case]]
    frames += [pack(message("metrics", run, 8)), pack(message("epoch_end", run, 9)),
               pack(message("run_end", run, 10))]
    renderer = InlineRenderer()
    mirror = Mirror(tmp_path / "out", renderer=renderer)
    for frame in frames:
        mirror.feed(frame)  # raises if the pipeline does
    rejected = mirror.finish()
    assert set(rejected) <= {"content"}
    assert renderer.failures == 0
    # The run goes on: its later messages are aggregated and drawn.
    folder = tmp_path / "out" / run
    assert (folder / "history.csv").read_text().splitlines()[1] == "0,0.5"
    sampler = folder / "epoch_000" / "sampler_distribution.json"
    if sampler.exists():  # whatever was kept, only draws inside the training set are counted
        assert sum(c["sampled"] for c in json.loads(sampler.read_text())["classes"]) <= 2
    if case.startswith("sampled index -1"):
        assert rejected == Counter(content=1)


@pytest.mark.slow
def test_a_sender_inventing_run_ids_cannot_exhaust_file_descriptors(tmp_path):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    logbook = LogBook(tmp_path / "out")
    runs = [f"flood-{i}" for i in range(1500)]
    intake = Intake(logbook, Quotas(Limits(max_runs=len(runs))))  # more runs than the default quota
    for round_ in range(2):  # the second round reopens logs that were closed to make room
        for seq, run in enumerate(runs):
            assert intake.accept(pack(message("metrics", run, round_, epoch=round_))) is not None
        assert fds() - before < 300
    logbook.close()
    for run in (runs[0], runs[777], runs[-1]):
        assert [msgpack.unpackb(f)["epoch"] for f in iter_frames(tmp_path / "out" / run / "messages.mlog")] == [0, 1]


# ------------------------------------------------------------------------------------ a real monitor


class ForeignSender:
    """A raw PUSH socket, as a client written from docs/protocol.md alone would use."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDTIMEO, 10_000)  # a dead monitor fails the test instead of hanging it
        self.socket.setsockopt(zmq.LINGER, 5_000)
        self.socket.connect(endpoint)
        self.sent = 0

    def send(self, frame: bytes) -> None:
        self.socket.send(frame)
        self.sent += 1




def log_records(path: Path) -> int:
    try:
        return sum(1 for _ in iter_frames(path))
    except Exception:  # noqa: BLE001 - still being written
        return -1


def test_served_monitor_survives_thousands_of_hostile_frames(start_monitor, tmp_path, clean):
    cap_mb = 0.05  # tiny-fixture's largest frame is 7,121 bytes
    monitor = start_monitor(tmp_path / "out", "--max-message-mb", str(cap_mb))
    out = monitor.out
    context = zmq.Context()
    valid, garbage = ForeignSender(context, monitor.endpoint), ForeignSender(context, monitor.endpoint)
    mirror = Mirror(tmp_path / "mirror")  # the same garbage, in the same order, in process
    names = run_names("g")
    expected: Counter = Counter()
    designed: Counter = Counter()
    tiny = iter(TINY_FRAMES)

    def send_garbage(build: Builder) -> None:
        for frame, reason in build(next(names)):
            garbage.send(frame)
            counted = mirror.feed(frame)
            if reason != "?":
                assert counted == reason, (frame[:80], reason, counted)
                designed[reason or "accepted"] += 1
            expected[counted or "accepted"] += 1

    try:
        # No shrinking: each example really sends, so a failure must end the test at once.
        @settings(max_examples=70, phases=[Phase.generate], **COMMON)
        @given(batch=st.lists(st.one_of(designed_garbage, fuzzed()), min_size=30, max_size=40))
        def push(batch: list[Builder]) -> None:
            for build in batch:
                send_garbage(build)
            frame = next(tiny, None)  # the valid run, interleaved with the garbage
            if frame is not None:
                valid.send(frame)

        push()
        for frame in tiny:
            valid.send(frame)

        # NaN and infinite metrics in a run that renders: the history figures must still be drawn.
        for seq, kind in enumerate(("run_start", "metrics", "epoch_end", "run_end")):
            body = {"values": {"val/loss": math.nan, "train/loss": math.inf, "val/acc_top1": -math.inf}}
            send_garbage(one(message(kind, "nan-run", seq, **(body if kind == "metrics" else {})), None))

        # Size cap: a frame just under it is taken; one over it is refused by the socket, which drops
        # the sender's connection (watched here through a socket monitor).
        cap = int(cap_mb * (1 << 20))
        below = pack(message("metrics", "below-cap", stage="x" * (cap - 200)))
        above = pack(message("metrics", "above-cap", stage="x" * (cap + 100)))
        assert len(below) < cap < len(above)
        big = ForeignSender(context, monitor.endpoint)
        events = big.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        big.send(above)
        assert events.poll(20_000), "the monitor kept the connection of a sender whose frame was over the cap"
        garbage.send(below)
        expected["accepted"] += 1
        mirror.feed(below)

        # Everything sent before a sentinel is in once the sentinel is (per-socket order).
        garbage.send(pack(message("metrics", "sentinel")))
        expected["accepted"] += 1
        mirror.feed(pack(message("metrics", "sentinel")))
        wait_for(lambda: log_records(out / "sentinel" / "messages.mlog") == 1, "the garbage sentinel")
        wait_for(lambda: (out / FIXTURE_RUN / "messages.mlog").read_bytes() == FIXTURE_LOG.read_bytes()
                 if (out / FIXTURE_RUN / "messages.mlog").exists() else False, "the valid run's frames")
        assert monitor.proc.poll() is None, monitor.output()
        events.close()
        for sender in (valid, garbage, big):
            sender.socket.close(linger=0)
    finally:
        context.destroy(linger=0)
    code = monitor.stop()
    output = monitor.output()
    assert code == 0, output
    assert "Traceback" not in output, output

    # Thousands of frames, of every designed reason, and every count agrees with the mirror's.
    assert garbage.sent >= 2000
    assert set(designed) >= {"malformed", "version", "unknown_kind", "field", "array", "content", "accepted"}
    rejected = mirror.finish()
    assert rejected == Counter({k: v for k, v in expected.items() if k != "accepted"})
    frames, rejected_total, runs = map(int, STOP_LINE.findall(output)[-1])
    assert frames == garbage.sent + valid.sent  # and not the frame over the cap
    assert rejected_total == sum(rejected.values())
    assert runs == len(mirror.pipeline.runs) + 1
    stats = json.loads((out / ".monitor" / "stats.json").read_text())
    assert stats["frames"] == frames and Counter(stats["rejected"]) == rejected  # exact, reason by reason

    # The valid run: every file byte for byte as a clean replay of its log, the log itself included.
    assert tree_bytes(out / FIXTURE_RUN) == clean["files"]
    assert not (out / "above-cap").exists()
    assert log_records(out / "below-cap" / "messages.mlog") == 1
    history = (out / "nan-run" / "history.csv").read_text().splitlines()
    assert history == ["epoch,train/loss,val/acc_top1,val/loss", "0,inf,-inf,nan"]
    for png in ("loss_history.png", "accuracy_history.png"):
        assert (out / "nan-run" / "training_history" / png).read_bytes()[:4] == b"\x89PNG"
    # Nothing was written beside out/ (the mirror's folder, the ready file and the monitor's output aside).
    assert {p.name for p in tmp_path.iterdir()} == {"out", "mirror", f"ready-{monitor.port}",
                                                     f"monitor-{monitor.port}.log"}
