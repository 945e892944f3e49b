"""Message log: the recorded form of the wire, written by `monitor serve` and by the emitter's spool.

File grammar (all integers little-endian)::

    log     := header record*
    header  := magic(8 bytes = b"SCMLOG\\r\\n") format_version(uint16 = 1) reserved(uint16 = 0)
    record  := length(uint32) crc32(uint32) payload(length bytes)

`payload` is one frame exactly as received (a protocol message, see docs/protocol.md);
`crc32` is zlib's CRC-32 of the payload alone. No frame is empty, so `length` is never 0. A writer
only ever appends whole records, so a crash can leave at most one partial record at the very end, or
a tail of zeros (a file extended before its data reached the disk): readers warn about such a
truncated tail and stop, and a writer reopening the log cuts it off before appending. Anything else
that does not check out is corruption: `CorruptLogError` names its byte offset, and
`skip_corrupt=True` resumes at the next whole record instead, reporting what it skipped.
"""

from __future__ import annotations

import mmap
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

MAGIC = b"SCMLOG\r\n"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHH")
RECORD_HEADER = struct.Struct("<II")
HEADER_SIZE = HEADER.size  # 12
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 8
# No legal record is larger than the biggest frame the monitor accepts; a larger length is damage.
MAX_RECORD_SIZE = 1 << 28


class LogFormatError(ValueError):
    """The file is not a message log (bad magic or unknown format version)."""


class CorruptLogError(ValueError):
    """A record that fails its checks; `offset` is the byte offset of the record's header."""

    def __init__(self, path: str | os.PathLike, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at byte offset {offset}: {reason}"
                         " (use --skip-corrupt to resume at the next whole record)")
        self.path, self.offset, self.reason = str(path), offset, reason


class TruncatedLogWarning(UserWarning):
    """The log ends inside a record (the writer stopped mid-write); the records before it were read."""


@dataclass
class ReadReport:
    """What a read found besides the records: skipped byte ranges and where a truncated tail began."""

    records: int = 0
    skipped: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, reason)
    truncated_at: int | None = None


def header_bytes() -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, 0)


def record_bytes(frame: bytes) -> bytes:
    """One framed record; `len(record_bytes(f)) == 8 + len(f)`."""
    return RECORD_HEADER.pack(len(frame), zlib.crc32(frame)) + frame


def check_header(data: bytes, path: str | os.PathLike) -> None:
    if len(data) < HEADER_SIZE:
        raise LogFormatError(f"{path}: too short to be a message log ({len(data)} bytes)")
    magic, version, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise LogFormatError(f"{path}: not a message log (bad magic bytes {magic!r})")
    if version != FORMAT_VERSION:
        raise LogFormatError(f"{path}: log format version {version} is not supported (expected {FORMAT_VERSION})")


class LogWriteError(OSError):
    """Records could not be written (a full disk, say). The file was cut back to its last whole record,
    so it stays readable; `frames` is the number of records dropped. The writer stays usable."""

    def __init__(self, path: str | os.PathLike, cause: OSError, frames: int) -> None:
        self.reason = f"cannot write {path}: {cause.strerror or cause}"
        super().__init__(cause.errno, f"{self.reason}; {frames} record(s) not written")
        self.path, self.frames = str(path), frames

    def __str__(self) -> str:
        return self.strerror


class LogWriter:
    """Appends records to a log, writing the header when the file is new. Single-writer.

    Records are kept whole: a failed write raises `LogWriteError` after cutting the file back to its
    last whole record, and the next append writes again (space freed meanwhile is used at once).
    """

    # Pending records are written once this many bytes wait, whatever `flush_every` says.
    BUFFER_BYTES = 1 << 20

    def __init__(self, path: str | os.PathLike, *, flush_every: int = 1, truncate: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate:
            self.path.unlink(missing_ok=True)
        elif self.path.exists() and self.path.stat().st_size > 0:
            _cut_partial_tail(self.path)
        # Unbuffered: this class keeps whole records until they are written, so a failed write can be
        # undone by cutting the file back to `_good`, the end of its last whole record.
        self._file = open(self.path, "ab", buffering=0)
        self._good = os.fstat(self._file.fileno()).st_size
        self._flush_every = flush_every
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.records = 0  # appended by this writer and not dropped (some may still be pending)
        self.bytes = self._good  # the file's size once the pending records are written
        self.lost = 0  # records dropped by failed writes
        if self._good == 0:
            try:
                self._write(header_bytes(), 0)  # a reader must never find the file without its header for long
            except LogWriteError:
                self._file.close()
                raise
            self.bytes = self._good

    def append(self, frame: bytes) -> None:
        """Adds one record; it is written once `flush_every` records or `BUFFER_BYTES` bytes wait.
        Raises LogWriteError when that write fails (every pending record is then dropped), and
        ValueError for an empty frame, which readers would take for the end of the data."""
        _check_frames((frame,))
        self._add(record_bytes(frame))
        if len(self._pending) >= self._flush_every or self._pending_bytes >= self.BUFFER_BYTES:
            self.flush()

    def _add(self, record: bytes) -> None:
        self._pending.append(record)
        self._pending_bytes += len(record)
        self.records += 1
        self.bytes += len(record)

    def append_many(self, frames: list[bytes]) -> None:
        """`append` for each frame in turn: the same records, written with one call. The flush
        policy counts records as `append` does, but is applied once, after the last of them."""
        _check_frames(frames)
        for frame in frames:
            self._add(record_bytes(frame))
        if len(self._pending) >= self._flush_every or self._pending_bytes >= self.BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        """Writes the pending records; raises LogWriteError (and drops them) if that fails."""
        if self._pending:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            self._write(b"".join(pending), len(pending))

    def _write(self, data: bytes, records: int) -> None:
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                done += self._file.write(view[done:])  # a raw write may take only part of the bytes
        except OSError as exc:
            try:
                os.ftruncate(self._file.fileno(), self._good)  # never needs space; the reader copes if it fails
            except OSError:
                pass
            self.lost += records
            self.records -= records
            self.bytes = self._good
            raise LogWriteError(self.path, exc, records) from exc
        self._good += len(data)

    def close(self) -> None:
        """Writes what is pending and closes the file (closed even when that write raises)."""
        if not self._file.closed:
            try:
                self.flush()
            finally:
                self._file.close()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_frames(frames) -> None:
    if not all(frames):
        raise ValueError("an empty frame is not a message; a log holds no empty records")


def _cut_partial_tail(path: Path) -> None:
    """Before appending to a log whose writer crashed, drops its partial last record or zero-filled
    tail: a record appended after either would be unreadable."""
    with open(path, "rb") as f:
        check_header(f.read(HEADER_SIZE), path)
    report = ReadReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedLogWarning)
        for _ in iter_records(path, skip_corrupt=True, report=report):
            pass
    if report.truncated_at is not None:
        warnings.warn(f"{path}: dropping a partial record (or a zero-filled tail) at byte offset "
                      f"{report.truncated_at} before appending",
                      TruncatedLogWarning, stacklevel=3)
        os.truncate(path, report.truncated_at)


def _valid_record_at(buf: bytes | mmap.mmap, pos: int, end: int) -> bool:
    """Whether a whole, CRC-checked, non-empty record starts at `pos` (used to resynchronize)."""
    if pos + RECORD_HEADER_SIZE > end:
        return False
    length, crc = RECORD_HEADER.unpack_from(buf, pos)
    # No frame is empty, and a run of zero bytes would look like empty records.
    if length == 0 or length > MAX_RECORD_SIZE or pos + RECORD_HEADER_SIZE + length > end:
        return False
    return zlib.crc32(buf[pos + RECORD_HEADER_SIZE:pos + RECORD_HEADER_SIZE + length]) == crc


def _next_valid(buf: bytes | mmap.mmap, start: int, end: int) -> int | None:
    for pos in range(start, end - RECORD_HEADER_SIZE + 1):
        if _valid_record_at(buf, pos, end):
            return pos
    return None


def scan_records(buf: bytes | mmap.mmap, start: int, end: int, *, final: bool, skip_corrupt: bool,
                 path: str | os.PathLike, report: ReadReport, base: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yields (offset, payload) for the records in buf[start:end]; offsets are `base` + index in buf.

    With `final=False` (a log still being written) a partial record at the end is simply not yet
    read; `report.truncated_at` then tells where the next read must resume.
    """
    pos = start
    while pos < end:
        if pos + RECORD_HEADER_SIZE > end:
            problem = None  # a partial record header: truncation
        else:
            length, crc = RECORD_HEADER.unpack_from(buf, pos)
            body_end = pos + RECORD_HEADER_SIZE + length
            if length > MAX_RECORD_SIZE:
                problem = f"record length {length} exceeds the {MAX_RECORD_SIZE}-byte limit"
            elif body_end > end or length == 0:
                # The writer stopped mid-record, or the file was extended with zeros after a crash (no
                # frame is empty, so a zero length ends the valid data), or the length field is
                # damaged: a whole record further on can only mean damage.
                problem = None
                if final and _next_valid(buf, pos + 1, end) is not None:
                    problem = ("empty record (no frame is empty)" if length == 0
                               else f"record length {length} runs past the end of the file")
            elif zlib.crc32(buf[pos + RECORD_HEADER_SIZE:body_end]) != crc:
                problem = "CRC-32 mismatch"
            else:
                report.records += 1
                yield base + pos, bytes(buf[pos + RECORD_HEADER_SIZE:body_end])
                pos = body_end
                continue
            if problem is not None:
                if not skip_corrupt:
                    raise CorruptLogError(path, base + pos, problem)
                resume = _next_valid(buf, pos + 1, end)
                report.skipped.append((base + pos, base + (end if resume is None else resume), problem))
                if resume is None:
                    pos = end
                    break
                pos = resume
                continue
        report.truncated_at = base + pos
        if final:
            warnings.warn(f"{path}: log ends inside a record at byte offset {base + pos} "
                          f"({end - pos} bytes ignored: a partial record or zeros); "
                          "the writer probably stopped mid-write",
                          TruncatedLogWarning, stacklevel=3)
        return
    report.truncated_at = None


def iter_records(path: str | os.PathLike, *, skip_corrupt: bool = False,
                 report: ReadReport | None = None) -> Iterator[tuple[int, bytes]]:
    """Yields (byte offset, frame) for every whole record of a finished (or crashed) log."""
    report = report if report is not None else ReadReport()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_header(f.read(HEADER_SIZE), path)
        if size == HEADER_SIZE:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield from scan_records(buf, HEADER_SIZE, size, final=True, skip_corrupt=skip_corrupt,
                                    path=path, report=report)


def iter_frames(path: str | os.PathLike, *, skip_corrupt: bool = False,
                report: ReadReport | None = None) -> Iterator[bytes]:
    """Yields every whole frame of a log, in order."""
    for _, frame in iter_records(path, skip_corrupt=skip_corrupt, report=report):
        yield frame


class LogFollower:
    """Reads a log that is still growing: each `poll()` returns the whole records appended since."""

    def __init__(self, path: str | os.PathLike, *, skip_corrupt: bool = False) -> None:
        self.path = Path(path)
        self.skip_corrupt = skip_corrupt
        self.offset = 0
        self.report = ReadReport()

    def poll(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                if self.offset == 0:
                    head = f.read(HEADER_SIZE)
                    if len(head) < HEADER_SIZE:
                        return []  # the writer has not written the header yet
                    check_header(head, self.path)
                    self.offset = HEADER_SIZE
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        frames = []
        self.report.truncated_at = None
        for _, frame in scan_records(data, 0, len(data), final=False, skip_corrupt=self.skip_corrupt,
                                     path=self.path, report=self.report, base=self.offset):
            frames.append(frame)
        if self.report.truncated_at is None:
            self.offset += len(data)
        else:
            self.offset = self.report.truncated_at
        return frames
