"""The receive thread's batch path: `Intake.accept_many`, `LogWriter.append_many` and the `Handoff`
queue give exactly what the one-frame-at-a-time path gives (messages, counters, log bytes, order)."""

from __future__ import annotations

import queue

import pytest

from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.ingest.handoff import Handoff
from trainer_side import protocol
from trainer_side.msglog import LogWriter, iter_frames


def frame(kind: str, run: str, seq: int, **body) -> bytes:
    bodies = {"metrics": {"epoch": 0, "stage": "train", "step": seq, "values": {"loss": 0.5, "acc": 1}},
              "epoch_end": {"epoch": 0, "sent": seq, "dropped": 0}}
    return protocol.encode(protocol.make_message(kind, run, 0, 1, seq, {**bodies[kind], **body}, time=1.5))


def mixed_frames() -> list[bytes]:
    """Two runs interleaved, with refused frames (not msgpack, unknown kind, bad field) among them."""
    frames = []
    for seq in range(40):
        frames.append(frame("metrics", "run-a", seq))
        if seq % 3 == 0:
            frames.append(frame("epoch_end", "run-b", seq))
        if seq % 7 == 0:
            frames += [b"\xc1 not msgpack", frame("metrics", "run-a", seq, stage=3)]
    frames.append(protocol.encode(protocol.Message("nonsense", "run-b", 0, 1, 99, 1.5, {})))
    return frames


def digest(message: protocol.Message) -> tuple:
    return (message.kind, message.run, message.rank, message.world, message.seq, message.time, message.version,
            sorted(message.body.items()))


def test_accept_many_gives_what_accept_gives_frame_by_frame(tmp_path):
    frames = mixed_frames()
    one = Intake(LogBook(tmp_path / "one"))
    expected = [(m, len(f)) for f in frames if (m := one.accept(f)) is not None]
    one.logbook.close()
    many = Intake(LogBook(tmp_path / "many", flush_every=1 << 30))
    got = [pair for start in range(0, len(frames), 16) for pair in many.accept_many(frames[start:start + 16])]
    many.logbook.close()
    assert [(digest(m), size) for m, size in got] == [(digest(m), size) for m, size in expected]
    assert (many.frames, many.bytes, many.rejected) == (one.frames, one.bytes, one.rejected)
    assert sum(many.rejected.values()) == len(frames) - len(got) > 0
    for run in ("run-a", "run-b"):  # the same log, byte for byte
        assert (tmp_path / "many" / run / "messages.mlog").read_bytes() == \
            (tmp_path / "one" / run / "messages.mlog").read_bytes()


def test_a_run_whose_log_cannot_be_written_is_counted_and_the_others_go_on(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocked").write_text("a file where the run's folder would go")
    intake = Intake(LogBook(out))
    frames = [frame("metrics", "blocked", 0), frame("metrics", "fine", 0), frame("metrics", "blocked", 1)]
    accepted = intake.accept_many(frames)
    intake.logbook.close()
    assert [m.run for m, _ in accepted] == ["blocked", "fine", "blocked"]  # still drawn, but not logged
    assert accepted.logged == [False, True, False] and intake.not_logged == 2
    assert intake.rejected == {}
    assert len(list(iter_frames(out / "fine" / "messages.mlog"))) == 1


def test_append_many_writes_the_records_append_writes(tmp_path):
    frames = [b"alpha", b"\x00", bytes(range(256)), b"omega" * 100]
    with LogWriter(tmp_path / "one.mlog") as writer:
        for f in frames:
            writer.append(f)
    with LogWriter(tmp_path / "many.mlog", flush_every=1 << 30) as writer:
        writer.append_many(frames[:1])
        writer.append_many(frames[1:])
        assert (writer.records, writer.bytes) == (len(frames), (tmp_path / "one.mlog").stat().st_size)
    assert (tmp_path / "many.mlog").read_bytes() == (tmp_path / "one.mlog").read_bytes()


def test_append_many_flushes_when_the_policy_says_so(tmp_path):
    path = tmp_path / "f.mlog"
    writer = LogWriter(path, flush_every=3)
    size = path.stat().st_size
    writer.append_many([b"a", b"b"])
    assert path.stat().st_size == size  # still buffered
    writer.append_many([b"c"])
    assert list(iter_frames(path)) == [b"a", b"b", b"c"]
    writer.close()


def test_handoff_delivers_every_message_in_order_with_its_flag():
    handoff = Handoff()
    assert handoff.empty()
    with pytest.raises(queue.Empty):
        handoff.get(timeout=0.0)
    handoff.put_many([("r0", 10), ("r1", 11)], resumed=True)
    handoff.put_many([])  # nothing to queue
    handoff.put_many([("m0", 1), ("m1", 2), ("m2", 3)])
    assert not handoff.empty()
    got = [handoff.get(timeout=0.0) for _ in range(5)]
    assert got == [("r0", 10, True), ("r1", 11, True), ("m0", 1, False), ("m1", 2, False), ("m2", 3, False)]
    assert handoff.empty()
    with pytest.raises(queue.Empty):
        handoff.get(block=False)
