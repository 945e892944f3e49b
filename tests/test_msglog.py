"""Log framing: exact sizes, round trips, truncation at every byte, and bit flips named with their offset."""

import struct
import warnings
import zlib

import pytest

from trainer_side.msglog import (HEADER_SIZE, CorruptLogError, LogFollower, LogFormatError, LogWriter, ReadReport,
                                 TruncatedLogWarning, iter_frames, iter_records, record_bytes)

FRAMES = [b"alpha", b"\x00", b"\x00" * 3, bytes(range(256)), b"omega!"]


def _write(path, frames):
    with LogWriter(path) as writer:
        for frame in frames:
            writer.append(frame)
    return path.read_bytes()


def test_record_is_exactly_length_crc_payload(tmp_path):
    record = record_bytes(b"hello")
    assert len(record) == 8 + 5
    assert record == struct.pack("<II", 5, zlib.crc32(b"hello")) + b"hello"
    data = _write(tmp_path / "a.mlog", [b"hello"])
    assert len(data) == HEADER_SIZE + 13 and data[HEADER_SIZE:] == record


def test_an_empty_frame_is_refused_since_no_record_is_empty(tmp_path):
    with pytest.raises(ValueError, match="empty frame"):
        _write(tmp_path / "e.mlog", [b"one", b""])
    with LogWriter(tmp_path / "e.mlog") as writer, pytest.raises(ValueError, match="empty frame"):
        writer.append_many([b"two", b""])
    assert list(iter_frames(tmp_path / "e.mlog")) == [b"one"]


def test_many_records_round_trip_with_offsets(tmp_path):
    frames = [bytes([i % 251]) * (i * 7 % 300 or 1) for i in range(2000)]
    _write(tmp_path / "m.mlog", frames)
    records = list(iter_records(tmp_path / "m.mlog"))
    assert [f for _, f in records] == frames
    offsets = [o for o, _ in records]
    assert offsets[0] == HEADER_SIZE and offsets[1] == HEADER_SIZE + 8 + len(frames[0])


def test_appending_to_an_existing_log_continues_it(tmp_path):
    path = tmp_path / "c.mlog"
    _write(path, [b"one"])
    _write(path, [b"two"])
    assert list(iter_frames(path)) == [b"one", b"two"]


def test_truncation_at_every_offset_yields_every_whole_record(tmp_path):
    data = _write(tmp_path / "full.mlog", FRAMES)
    ends, pos = [], HEADER_SIZE
    for frame in FRAMES:
        pos += 8 + len(frame)
        ends.append(pos)
    cut_path = tmp_path / "cut.mlog"
    for cut in range(HEADER_SIZE, len(data) + 1):
        cut_path.write_bytes(data[:cut])
        whole = sum(1 for end in ends if end <= cut)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert list(iter_frames(cut_path)) == FRAMES[:whole], cut
        truncated = cut not in ends and cut != HEADER_SIZE
        assert any(issubclass(w.category, TruncatedLogWarning) for w in caught) == truncated, cut


def test_short_or_foreign_header_is_a_format_error(tmp_path):
    data = _write(tmp_path / "h.mlog", FRAMES)
    for cut in range(HEADER_SIZE):
        (tmp_path / "h2.mlog").write_bytes(data[:cut])
        with pytest.raises(LogFormatError):
            list(iter_frames(tmp_path / "h2.mlog"))
    (tmp_path / "png.mlog").write_bytes(b"\x89PNG\r\n\x1a\n" + data[8:])
    with pytest.raises(LogFormatError, match="not a message log"):
        list(iter_frames(tmp_path / "png.mlog"))


def test_every_flipped_bit_in_a_record_raises_with_the_record_offset(tmp_path):
    data = _write(tmp_path / "f.mlog", [b"first-frame", b"second-frame-longer", b"third"])
    second = HEADER_SIZE + 8 + len(b"first-frame")
    third = second + 8 + len(b"second-frame-longer")
    bad = tmp_path / "bad.mlog"
    for byte in range(second, third):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[byte] ^= 1 << bit
            bad.write_bytes(bytes(flipped))
            with pytest.raises(CorruptLogError) as info:
                list(iter_frames(bad))
            assert info.value.offset == second, (byte, bit)


def test_skip_corrupt_resumes_at_the_next_whole_record(tmp_path):
    frames = [b"frame-%d" % i * 3 for i in range(6)]
    data = bytearray(_write(tmp_path / "s.mlog", frames))
    third = HEADER_SIZE + 2 * (8 + len(frames[0]))
    data[third + 10] ^= 0xFF  # inside the third record's payload
    (tmp_path / "s.mlog").write_bytes(bytes(data))
    report = ReadReport()
    got = list(iter_frames(tmp_path / "s.mlog", skip_corrupt=True, report=report))
    assert got == frames[:2] + frames[3:]
    assert report.skipped == [(third, third + 8 + len(frames[2]), "CRC-32 mismatch")]


def test_follower_reads_records_as_they_are_completed(tmp_path):
    path = tmp_path / "g.mlog"
    follower = LogFollower(path)
    assert follower.poll() == []
    writer = LogWriter(path)
    writer.append(b"one")
    writer.flush()
    assert follower.poll() == [b"one"]
    record = record_bytes(b"two-is-longer")
    with open(path, "ab") as f:  # a record arriving in two writes
        f.write(record[:6])
    assert follower.poll() == []
    with open(path, "ab") as f:
        f.write(record[6:])
    assert follower.poll() == [b"two-is-longer"]
    writer.close()
