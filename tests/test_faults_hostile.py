"""Faults and hostile input: a full disk, key files, spreadsheet formulas in names, negative class
counts, zero-filled log tails, duplicated log tails, and the reasons for rejected frames.

Each test reproduces a failure of the code before its fix; the disk-full ones inject the error into
the log writer's file (no filesystem is filled or mounted).
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq.auth
from rich.console import Console

from conftest import record_index
from monitor.cli import main
from monitor.replay import replay
from trainer_side import protocol
from trainer_side.msglog import LogWriter, iter_frames

DATA = Path(__file__).parent / "data"
FIXTURE_LOG = DATA / "tiny_run.mlog"
TINY_FRAMES = list(iter_frames(FIXTURE_LOG))
TINY = [protocol.decode(frame) for frame in TINY_FRAMES]
# Where the tiny run's epochs 0 and 1 end, found in the log: frames [E0:E1] are epoch 1's messages.
E0, E1 = (record_index(TINY_FRAMES, "epoch_end", epoch) + 1 for epoch in (0, 1))
N = len(TINY_FRAMES)


def cli(capfd, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def write_log(path: Path, messages) -> Path:
    with LogWriter(path) as writer:
        for message in messages:
            writer.append(message if isinstance(message, bytes) else protocol.encode(message))
    return path


def with_body(message: protocol.Message, **fields) -> protocol.Message:
    return dataclasses.replace(message, body={**message.body, **fields})


# --- item 11: monitor keygen ------------------------------------------------------------------


def test_keygen_creates_the_secret_file_readable_by_its_owner_only(capfd, tmp_path):
    code, out, _ = cli(capfd, "keygen", tmp_path / "keys")
    assert code == 0
    secret = tmp_path / "keys" / "server.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public, private = zmq.auth.load_certificate(str(secret))
    assert private is not None and public.decode() in out
    assert zmq.auth.load_certificate(str(tmp_path / "keys" / "server.key")) == (public, None)


def test_keygen_never_makes_the_secret_file_readable_even_for_an_instant(capfd, tmp_path, monkeypatch):
    # Created with its final mode: a chmod after writing leaves a window where others may read it.
    chmods = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmods.append(a))
    modes = {}
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        modes[Path(path).name] = mode
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    assert cli(capfd, "keygen", tmp_path)[0] == 0
    assert modes["server.key_secret"] == 0o600 and not chmods


def test_keygen_refuses_to_overwrite_a_key_pair_without_force(capfd, tmp_path):
    assert cli(capfd, "keygen", tmp_path, "--name", "node1")[0] == 0
    before = (tmp_path / "node1.key_secret").read_bytes()
    code, _, err = cli(capfd, "keygen", tmp_path, "--name", "node1")
    assert code == 2 and err.count("\n") == 1 and "--force" in err and "node1.key" in err
    assert (tmp_path / "node1.key_secret").read_bytes() == before
    code, _, _ = cli(capfd, "keygen", tmp_path, "--name", "node1", "--force")
    assert code == 0 and (tmp_path / "node1.key_secret").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "node1.key_secret").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "x y", "/abs"])
def test_keygen_refuses_a_name_that_is_not_a_plain_file_name(capfd, tmp_path, name):
    folder = tmp_path / "a" / "b"
    code, _, err = cli(capfd, "keygen", folder, "--name", name)
    assert code == 2 and err.count("\n") == 1 and "--name" in err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


# --- item 12: CSV formula injection ----------------------------------------------------------

HOSTILE_NAMES = ["=1+1", "@SUM(A1)", "+cmd", "\tx"]


@pytest.mark.slow
def test_formula_like_class_and_metric_names_are_neutralised_in_every_csv(tmp_path):
    start = with_body(TINY[0], class_names=HOSTILE_NAMES)
    messages = [start]
    for message in TINY[1:]:
        if message.kind == "metrics":
            values = {"-2+3" if k == "val/loss" else k: v for k, v in message["values"].items()}
            values["=HYPERLINK(\"http://x\")"] = -0.5
            message = with_body(message, values=values)
        messages.append(message)
    log = write_log(tmp_path / "hostile.mlog", messages)
    replay([log], tmp_path / "out", skip_corrupt=False, console=quiet())
    run = tmp_path / "out" / TINY[0].run

    matrix = list(csv.reader(open(run / "epoch_000" / "confusion_matrix.csv", newline="")))
    assert matrix[0] == ["true\\pred", "'=1+1", "'@SUM(A1)", "'+cmd", "'\tx"]
    assert [row[0] for row in matrix[1:]] == ["'=1+1", "'@SUM(A1)", "'+cmd", "'\tx"]
    history = list(csv.reader(open(run / "history.csv", newline="")))
    assert "'-2+3" in history[0] and "'=HYPERLINK(\"http://x\")" in history[0]
    column = history[0].index("'=HYPERLINK(\"http://x\")")
    assert [row[column] for row in history[1:]] == ["-0.5"] * 3  # numbers stay numbers
    for path in run.rglob("*.csv"):
        for row in csv.reader(open(path, newline="")):
            for cell in row:
                assert not cell.startswith(("=", "+", "@", "\t", "\r")), (path, cell)
                assert not cell.startswith("-") or float(cell) < 0, (path, cell)


# --- item 13a: negative class counts ----------------------------------------------------------


def test_a_run_start_with_negative_class_counts_is_refused_by_the_codec():
    bad = with_body(TINY[0], train_targets=None, class_counts=np.array([5, -3, 2, 1], dtype=np.int64))
    with pytest.raises(protocol.InvalidFieldError, match="class_counts"):
        protocol.decode(protocol.encode(bad))
    good = with_body(TINY[0], train_targets=None, class_counts=np.array([5, 0, 2, 1], dtype=np.int64))
    assert list(protocol.decode(protocol.encode(good))["class_counts"]) == [5, 0, 2, 1]


# --- item 3: a full disk ----------------------------------------------------------------------


class _FullFile:
    """A log file on a disk that may be full: while `full()` holds, a write stores half of what it is
    given (a partial record on disk) and raises ENOSPC, and a flush raises ENOSPC."""

    def __init__(self, real, full) -> None:
        self._real, self._full = real, full

    def write(self, data):
        if self._full():
            self._real.write(bytes(data)[: max(1, len(data) // 2)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._real.write(data)

    def flush(self):
        if self._full():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._real.flush()

    def __getattr__(self, name):
        return getattr(self._real, name)


def install_full_disk(full) -> None:
    """Makes every log the message-log writer opens for appending sit on a disk that is full while
    `full()` holds (the writer's module-level `open`, nothing else)."""
    from trainer_side import msglog

    def opener(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return _FullFile(handle, full) if "a" in mode else handle

    msglog.open = opener


@pytest.fixture
def full_disk(monkeypatch):
    from trainer_side import msglog

    state = {"full": False}
    monkeypatch.setattr(msglog, "open", open, raising=False)  # restored after the test
    install_full_disk(lambda: state["full"])
    return state


def test_frames_that_cannot_be_logged_are_reported_and_logging_resumes_when_space_is_freed(tmp_path, full_disk):
    from monitor.ingest.intake import Intake
    from monitor.ingest.logbook import LogBook

    intake = Intake(LogBook(tmp_path, flush_every=1 << 30))
    first = intake.accept_many(TINY_FRAMES[:E0])
    full_disk["full"] = True
    during = intake.accept_many(TINY_FRAMES[E0:E1])
    full_disk["full"] = False
    after = intake.accept_many(TINY_FRAMES[E1:])
    intake.logbook.close()
    # Every decoded frame is returned, each marked logged or not; none counted as rejected.
    assert [len(first), len(during), len(after)] == [E0, E1 - E0, N - E1]
    assert (first.logged, during.logged, after.logged) == ([True] * E0, [False] * (E1 - E0), [True] * (N - E1))
    assert intake.not_logged == E1 - E0 and not intake.rejected
    assert intake.logbook.status(TINY[0].run) == {
        "frames_not_logged": E1 - E0, "error": f"cannot write {intake.logbook.path(TINY[0].run)}: No space left on device"}
    # The half record written before the error was cut back: whole records only, no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(iter_frames(intake.logbook.path(TINY[0].run))) == TINY_FRAMES[:E0] + TINY_FRAMES[E1:]


def test_a_log_writer_keeps_whole_records_through_a_full_disk(tmp_path, full_disk):
    path = tmp_path / "spool.mlog"
    writer = LogWriter(path, flush_every=2)
    writer.append(b"one")
    writer.append(b"two")
    full_disk["full"] = True
    with pytest.raises(OSError) as caught:
        writer.append(b"three")
        writer.append(b"four")
    assert caught.value.errno == errno.ENOSPC and getattr(caught.value, "frames", None) == 2
    full_disk["full"] = False
    writer.append_many([b"five", b"six"])
    writer.close()
    assert list(iter_frames(path)) == [b"one", b"two", b"five", b"six"]
    assert (writer.records, writer.lost, writer.bytes) == (4, 2, path.stat().st_size)


def test_the_receive_thread_survives_a_full_disk_and_logs_again_once_space_is_freed(tmp_path, full_disk):
    from conftest import free_port, wait_for
    from monitor.ingest.receiver import Receiver

    receiver = Receiver(f"tcp://127.0.0.1:{free_port()}", tmp_path, max_message_bytes=1 << 20)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    receiver.start()
    try:
        push.connect(receiver.endpoint)
        log = receiver.logbook.path(TINY[0].run)

        def send(frames, total):
            for frame in frames:
                push.send(frame)
            wait_for(lambda: receiver.intake.frames == total, f"{total} frames received", timeout=30)

        send(TINY_FRAMES[:E0], E0)
        full_disk["full"] = True
        send(TINY_FRAMES[E0:E1], E1)
        full_disk["full"] = False
        assert receiver.is_alive()
        send(TINY_FRAMES[E1:], N)
    finally:
        receiver.stop()
        receiver.join(30)
        push.close()
        context.term()
    assert not receiver.is_alive()
    assert receiver.intake.not_logged == E1 - E0 and not receiver.intake.rejected
    assert list(iter_frames(log)) == TINY_FRAMES[:E0] + TINY_FRAMES[E1:]
    queued = []
    while not receiver.messages.empty():
        queued.append(receiver.messages.get(timeout=0)[0])
    assert [m.seq for m in queued] == list(range(N))  # every frame still reaches the pipeline


_SERVE_WITH_A_DISK = """
import os, sys
sys.path.insert(0, {tests!r})
import test_faults_hostile
test_faults_hostile.install_full_disk(lambda: os.path.exists({flag!r}))
from monitor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_explains_a_full_disk_and_exits_1_with_the_count(tmp_path):
    from conftest import ROOT, free_port, logged, wait_for

    out, flag, ready, output = tmp_path / "out", tmp_path / "full", tmp_path / "ready", tmp_path / "serve.txt"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    code = _SERVE_WITH_A_DISK.format(tests=str(Path(__file__).parent), flag=str(flag))
    with open(output, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--bind", endpoint, "--out", str(out),
                                 "--ready-file", str(ready), "--render-priority", "normal", "--render-defer", "0"],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    log = out / TINY[0].run / "messages.mlog"

    def records() -> int:
        return len(logged(log))

    try:
        wait_for(ready.exists, "the monitor to listen", timeout=120)
        push.connect(endpoint)
        for frame in TINY_FRAMES[:E0]:
            push.send(frame)
        wait_for(lambda: records() == E0, f"{E0} records logged", timeout=60)
        flag.touch()
        for frame in TINY_FRAMES[E0:E1]:
            push.send(frame)
        wait_for(lambda: "not logged" in output.read_text(), "the disk-full error", timeout=60)
        flag.unlink()
        for frame in TINY_FRAMES[E1:]:
            push.send(frame)
        wait_for(lambda: records() == N - (E1 - E0), f"{N - (E1 - E0)} records logged", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        push.close()
        context.term()
    text = output.read_text()
    errors = [line for line in text.splitlines() if "not logged so far" in line]
    assert len(errors) >= 1 and "No space left on device" in errors[0] and "Free space" in errors[0]
    assert f"{N} frames received, 0 rejected, 1 run(s)" in text.splitlines()[-1]
    assert f"; {E1 - E0} frame(s) NOT logged (cannot write" in text.splitlines()[-1]
    assert "Traceback" not in text
    summary = json.loads((out / TINY[0].run / "summary.json").read_text())
    assert summary["log"]["frames_not_logged"] == E1 - E0 and "No space left" in summary["log"]["error"]
    stats = json.loads((out / ".monitor" / "stats.json").read_text())
    assert stats["not_logged"] == {TINY[0].run: E1 - E0}
    assert list(iter_frames(log)) == TINY_FRAMES[:E0] + TINY_FRAMES[E1:]


# --- item 13b: a zero-filled log tail ---------------------------------------------------------


@pytest.fixture
def zero_tail(tmp_path) -> Path:
    """The tiny log extended with 4 KiB of zeros, as a crash can leave it."""
    path = tmp_path / "zeros.mlog"
    path.write_bytes(FIXTURE_LOG.read_bytes() + bytes(4096))
    return path


def test_a_zero_filled_tail_reads_as_a_truncated_tail_not_as_empty_records(zero_tail):
    from trainer_side.msglog import ReadReport, TruncatedLogWarning

    report = ReadReport()
    with pytest.warns(TruncatedLogWarning, match="byte offset"):
        frames = list(iter_frames(zero_tail, report=report))
    assert frames == TINY_FRAMES
    assert (report.records, report.truncated_at) == (N, FIXTURE_LOG.stat().st_size)


def test_the_follower_stops_at_a_zero_filled_tail(zero_tail):
    from trainer_side.msglog import LogFollower

    follower = LogFollower(zero_tail)
    assert follower.poll() == TINY_FRAMES
    assert follower.poll() == []
    assert follower.offset == FIXTURE_LOG.stat().st_size


def test_a_writer_cuts_a_zero_filled_tail_off_before_appending(zero_tail):
    import warnings

    from trainer_side.msglog import TruncatedLogWarning

    with pytest.warns(TruncatedLogWarning, match="dropping a partial record"):
        writer = LogWriter(zero_tail)
    with writer:
        writer.append(b"after the crash")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(iter_frames(zero_tail)) == TINY_FRAMES + [b"after the crash"]


def test_inspect_reports_a_zero_filled_tail_as_a_truncated_tail(capfd, zero_tail):
    code, out, _ = cli(capfd, "inspect", zero_tail)
    assert code == 0
    assert f"{N} records" in out and f"from byte {FIXTURE_LOG.stat().st_size}" in out


# --- item 13c: one gap rule for inspect and replay --------------------------------------------


def restarted(message: protocol.Message, seq: int) -> protocol.Message:
    """The message as a resumed emitter session (a new run_start time) numbers it."""
    return dataclasses.replace(message, seq=seq, time=message.time + 1000.0)


RESUMED = [protocol.encode(restarted(m, seq)) for seq, m in enumerate(TINY[:E0])]
GAP_CASES = {
    # log contents -> the number of messages never received
    "tail appended twice": (TINY_FRAMES + TINY_FRAMES[10:], 0),
    "whole log appended twice": (TINY_FRAMES + TINY_FRAMES, 0),
    "gap, then a tail holding the missing ones": (TINY_FRAMES[:5] + TINY_FRAMES[7:] + TINY_FRAMES[3:], 0),
    "gap, then the whole log again": (TINY_FRAMES[:5] + TINY_FRAMES[7:] + TINY_FRAMES, 0),
    "gap in a tail appended twice": (TINY_FRAMES[:10] + TINY_FRAMES[12:] + TINY_FRAMES[12:], 2),
    "resumed session with a gap": (TINY_FRAMES + RESUMED[:3] + RESUMED[5:], 2),
    "resumed session, its tail twice": (TINY_FRAMES + RESUMED + RESUMED[2:] + TINY_FRAMES[15:], 0),
    "tail across a resume appended twice": (TINY_FRAMES + RESUMED + TINY_FRAMES[15:] + RESUMED, 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", GAP_CASES)
def test_inspect_and_replay_count_the_same_sequence_gaps(tmp_path, case):
    from monitor.loginspect import inspect_log

    frames, missing = GAP_CASES[case]
    log = write_log(tmp_path / "dup.mlog", frames)
    inspected = inspect_log(log, skip_corrupt=False).ranks[(TINY[0].run, 0)]
    replay([log], tmp_path / "out", skip_corrupt=False, console=quiet(), show_tables=False)
    summary = json.loads((tmp_path / "out" / TINY[0].run / "summary.json").read_text())
    assert sum(b - a + 1 for a, b in inspected.gaps()) == summary["ranks"]["0"]["gaps"] == missing


# --- item 14: rejections explained ------------------------------------------------------------


def garbage() -> dict[str, list[bytes]]:
    """Frames refused for each decode reason (built with plain msgpack, as a foreign sender would)."""
    import msgpack

    envelope = {"v": [1, 0], "run": "g", "rank": 0, "world": 1, "seq": 0, "time": 1.0}
    metrics = {**envelope, "kind": "metrics", "epoch": 0, "stage": "val", "step": 0, "values": {}}
    preds = {**envelope, "kind": "preds", "epoch": 0, "step": 0,
             "preds": {"dtype": "|u1", "shape": [2], "data": b"\x00"},
             "labels": {"dtype": "|u1", "shape": [1], "data": b"\x00"}}
    pack = lambda obj: msgpack.packb(obj, use_bin_type=True)  # noqa: E731
    return {
        "malformed": [b"\xc1", pack([1, 2])],
        "version": [pack({**metrics, "v": [2, 0]})],
        "unknown_kind": [pack({**metrics, "kind": "gossip"})],
        "field": [pack({**metrics, "epoch": -1}), pack({**metrics, "stage": 3}), pack({**metrics, "world": 0})],
        "array": [pack(preds)],
    }


def test_inspect_shows_each_rejection_reason_with_its_count_and_an_example(capfd, tmp_path, monkeypatch):
    from monitor.loginspect import inspect_log

    monkeypatch.setenv("COLUMNS", "250")
    refused = garbage()
    log = write_log(tmp_path / "mixed.mlog", TINY_FRAMES[:3] + [f for frames in refused.values() for f in frames])
    report = inspect_log(log, skip_corrupt=False)
    assert dict(report.rejected) == {reason: len(frames) for reason, frames in refused.items()}
    assert report.examples["version"].startswith("protocol major version 2 is not supported")
    assert report.examples["field"].startswith("metrics.epoch")
    code, out, _ = cli(capfd, "inspect", log)
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 4}
    assert set(refused) <= set(rows)
    assert rows["field"].split("│")[2].strip() == "3" and "metrics.epoch" in rows["field"]
    assert rows["malformed"].split("│")[2].strip() == "2" and "msgpack" in rows["malformed"]


def test_repeated_lines_are_shown_first_then_at_most_once_per_interval_with_a_count():
    from monitor.ingest.rejections import RateLimitedLines

    now = [0.0]
    lines = RateLimitedLines(interval_s=5.0, clock=lambda: now[0])
    lines.add("field", "f1")
    lines.add("version", "v1")
    lines.add("field", "f2")
    lines.add("field", "f3")
    assert lines.take() == ["f1", "v1"]  # the first of each key at once
    now[0] = 4.9
    lines.add("field", "f4")
    assert lines.take() == []
    now[0] = 5.0
    assert lines.take() == ["f4 [and 2 more like it not shown]"]  # f2, f3 counted, f4 shown
    now[0] = 6.0
    lines.add("field", "f5")
    assert lines.take() == []
    now[0] = 11.0
    lines.add("field", "f6")  # the interval has passed: shown at once, with the one held back
    assert lines.take() == ["f6 [and 1 more like it not shown]"]
    lines.add("field", "f7")
    lines.add("quota", "q1")  # a reason this module does not know is shown like any other
    assert lines.take(final=True) == ["q1", "f7"]


def test_serve_explains_every_rejection_reason_on_the_console_rate_limited(start_monitor, tmp_path, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "1000")  # one console line per note
    refused = garbage()
    monitor = start_monitor(tmp_path / "out")
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        push.connect(monitor.endpoint)
        for frames in refused.values():
            for _ in range(20):
                for frame in frames:
                    push.send(frame)
        sent = sum(20 * len(frames) for frames in refused.values())
        from conftest import wait_for

        wait_for(lambda: sum(_shown(monitor.output(), reason) for reason in refused) == len(refused),
                 "a line for every reason", timeout=120)
        assert monitor.stop() == 0
    finally:
        push.close()
        context.term()
    output = monitor.output()
    assert "Traceback" not in output
    assert re.search(rf"{sent} frames received, {sent} rejected", output)
    for reason, frames in refused.items():
        lines = [line for line in output.splitlines() if f"rejected a frame ({reason})" in line]
        hidden = [int(m) for line in lines for m in re.findall(r"\[and (\d+) more like it not shown\]", line)]
        assert len(lines) + sum(hidden) == 20 * len(frames), (reason, lines)  # every frame accounted for
        assert len(lines) < 20 * len(frames)  # rate-limited
    # The refused frames are kept apart, for `monitor inspect` to show what they were.
    from monitor.loginspect import inspect_log

    kept = inspect_log(monitor.out / ".monitor" / "rejected.mlog", skip_corrupt=False)
    assert dict(kept.rejected) == {reason: 20 * len(frames) for reason, frames in refused.items()}


def _shown(output: str, reason: str) -> int:
    return int(f"rejected a frame ({reason})" in output)


def test_refused_frames_are_kept_for_inspect_up_to_a_byte_cap(tmp_path, monkeypatch):
    from monitor.ingest import logbook as logbook_module
    from monitor.ingest.intake import Intake
    from monitor.ingest.logbook import REJECTED_LOG, LogBook

    monkeypatch.setattr(logbook_module, "MAX_REJECTED_LOG_BYTES", 12 + 3 * (8 + 100))
    book = LogBook(tmp_path, flush_every=1 << 30)
    book.rejected_path = tmp_path / REJECTED_LOG
    intake = Intake(book)
    refused = [bytes([0xC1]) * 100] * 5  # malformed, 100 bytes each
    accepted = intake.accept_many(refused + TINY_FRAMES[:1])
    assert [(m.kind, m.seq, size) for m, size in accepted] == [("run_start", 0, len(TINY_FRAMES[0]))]
    book.close()
    assert list(iter_frames(tmp_path / REJECTED_LOG)) == refused[:3]
    assert book.rejected_not_kept == 2 and intake.rejected == {"malformed": 5}
