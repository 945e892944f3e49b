"""Damaged message logs through the command line (`monitor replay`, `monitor inspect`).

A log cut at any byte still yields every whole record before the cut, with a warning naming where the
partial record starts; a flipped bit stops the command with a one-line error naming the damaged record's
byte offset (exit 2, no traceback); `--skip-corrupt` resumes at the next whole record, reports the skipped
byte range, and what the damage did not touch comes out as a clean replay makes it. (The reader itself
is tested in test_msglog.py.)
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import record_index, tree_bytes
from monitor.cli import main
from trainer_side.msglog import HEADER_SIZE, RECORD_HEADER_SIZE, iter_frames, iter_records

DATA = Path(__file__).parent / "data"
FIXTURE_LOG = DATA / "tiny_run.mlog"
RUN = "tiny-fixture"
LOG_BYTES = FIXTURE_LOG.read_bytes()
RECORDS = list(iter_records(FIXTURE_LOG))  # (offset, frame)
OFFSETS = [offset for offset, _ in RECORDS]
ENDS = [offset + RECORD_HEADER_SIZE + len(frame) for offset, frame in RECORDS]
DAMAGED = record_index([frame for _, frame in RECORDS], "preds", 1)  # the one record the damaged log below loses
CUT = record_index([frame for _, frame in RECORDS], "samples", 2)  # the record the cut log below ends inside
RUN_LEVEL = ("labels_mapping.json", "model_info.json", "dataset_statistics.json", "history.csv",
             "training_history/loss_history.png", "training_history/accuracy_history.png")
COMMON = dict(deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def cli(capfd, *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capfd.readouterr()
    return code, captured.out, captured.err




def flipped(bit: int) -> bytes:
    data = bytearray(LOG_BYTES)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def assert_one_line_error(err: str, command: str, *needles: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"monitor {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells to the terminal width otherwise


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "out"
    assert main(["replay", str(FIXTURE_LOG), "--out", str(out), "--quiet"]) == 0
    return tree_bytes(out / RUN)


@pytest.fixture
def damaged(tmp_path) -> Path:
    """The fixture log with one bit flipped inside the payload of record DAMAGED."""
    path = tmp_path / "damaged.mlog"
    path.write_bytes(flipped(8 * (OFFSETS[DAMAGED] + RECORD_HEADER_SIZE + 40) + 3))
    return path


# ---------------------------------------------------------------------------------------------- cuts


def inspect_summary(out: str) -> tuple[int, int]:
    records, frame_bytes = re.search(r"(\d+) records, ([\d,]+) bytes of frames", out).groups()
    return int(records), int(frame_bytes.replace(",", ""))


@settings(max_examples=40, **COMMON)
@given(cut=st.one_of(st.integers(HEADER_SIZE, len(LOG_BYTES)), st.sampled_from(ENDS),
                     st.sampled_from([end + 1 for end in ENDS[:-1]])))
@pytest.mark.slow
def test_inspect_of_a_log_cut_at_any_byte_counts_every_whole_record_before_the_cut(capfd, cut):
    whole = [frame for (offset, frame), end in zip(RECORDS, ENDS) if end <= cut]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.mlog"
        path.write_bytes(LOG_BYTES[:cut])
        code, out, err = cli(capfd, "inspect", path)
    assert code == 0 and err == ""
    assert inspect_summary(out) == (len(whole), sum(len(frame) for frame in whole))
    partial = OFFSETS[len(whole)] if len(whole) < len(RECORDS) and cut > OFFSETS[len(whole)] else None
    if partial is None:
        assert "truncated" not in out
    else:
        assert re.search(rf"│ truncated tail +│ from byte {partial} +│", out), out


def test_a_log_cut_inside_its_header_is_refused_in_one_line(capfd, tmp_path):
    path = tmp_path / "stub.mlog"
    path.write_bytes(LOG_BYTES[:HEADER_SIZE - 1])
    for command in ("inspect", "replay"):
        code, out, err = cli(capfd, command, path, *(["--out", tmp_path / "out"] if command == "replay" else []))
        assert code == 2
        assert_one_line_error(err, command, str(path), "too short to be a message log")


@pytest.mark.slow
def test_replay_of_a_cut_log_renders_every_whole_record_before_the_cut(capfd, tmp_path, clean):
    cut = OFFSETS[CUT] + 100  # inside the thumbnails of epoch 2, after its predictions
    path = tmp_path / "cut.mlog"
    path.write_bytes(LOG_BYTES[:cut])
    code, out, err = cli(capfd, "replay", path, "--out", tmp_path / "out", "--quiet")
    assert code == 0 and err == ""
    text = out.replace("\n", " ")
    assert f"log ends inside a record at byte offset {OFFSETS[CUT]}" in text
    assert f"monitor replay: {CUT} frames, 0 rejected, 1 run(s)" in text
    produced = tree_bytes(tmp_path / "out" / RUN)
    for name, content in clean.items():
        if name.startswith(("epoch_000/", "epoch_001/")) or name in RUN_LEVEL[:3]:
            assert produced.get(name) == content, name
    assert produced["epoch_002/confusion_matrix.csv"] == clean["epoch_002/confusion_matrix.csv"]
    assert "epoch_002/sample_predictions.png" not in produced
    assert list(iter_frames(tmp_path / "out" / RUN / "messages.mlog")) == [frame for _, frame in RECORDS[:CUT]]


# ----------------------------------------------------------------------------------------- bit flips


@pytest.mark.slow
def test_replay_stops_at_a_flipped_bit_with_a_one_line_error_naming_the_offset(capfd, tmp_path, damaged):
    code, out, err = cli(capfd, "replay", damaged, "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert_one_line_error(err, "replay", str(damaged), f"corrupt record at byte offset {OFFSETS[DAMAGED]}",
                          "CRC-32 mismatch", "--skip-corrupt")
    assert "Traceback" not in out


@pytest.mark.slow
def test_replay_with_skip_corrupt_resumes_at_the_next_whole_record(capfd, tmp_path, damaged, clean):
    code, out, err = cli(capfd, "replay", damaged, "--out", tmp_path / "out", "--quiet", "--skip-corrupt")
    assert code == 0 and err == ""
    text = out.replace("\n", " ")
    assert f"skipped bytes {OFFSETS[DAMAGED]}..{ENDS[DAMAGED]} (CRC-32 mismatch)" in text
    assert f"monitor replay: {len(RECORDS) - 1} frames, 0 rejected, 1 run(s)" in text
    produced = tree_bytes(tmp_path / "out" / RUN)
    # Epochs 0 and 2 and everything at run level are exactly as in a clean replay ...
    for name, content in clean.items():
        if name.startswith(("epoch_000/", "epoch_002/")) or name in RUN_LEVEL:
            assert produced.get(name) == content, name
    # ... and of epoch 1 only what came from the lost record (its predictions) is missing.
    assert produced["epoch_001/sample_predictions.png"] == clean["epoch_001/sample_predictions.png"]
    assert produced["epoch_001/sampler_distribution.json"] == clean["epoch_001/sampler_distribution.json"]
    assert "epoch_001/confusion_matrix.csv" not in produced and "epoch_001/confusion_matrix.png" not in produced
    frames = [frame for i, (_, frame) in enumerate(RECORDS) if i != DAMAGED]
    assert list(iter_frames(tmp_path / "out" / RUN / "messages.mlog")) == frames


def test_inspect_names_the_damage_and_with_skip_corrupt_reports_range_and_gap(capfd, damaged):
    code, out, err = cli(capfd, "inspect", damaged)
    assert code == 2
    assert_one_line_error(err, "inspect", f"corrupt record at byte offset {OFFSETS[DAMAGED]}")
    code, out, err = cli(capfd, "inspect", damaged, "--skip-corrupt")
    assert code == 0 and err == ""
    skipped = rf"│ skipped damaged bytes \(CRC-32 mismatch\) +│ {OFFSETS[DAMAGED]}\.\.{ENDS[DAMAGED]} +│"
    assert re.search(skipped, out), out
    assert inspect_summary(out)[0] == len(RECORDS) - 1
    assert re.search(rf"│ {RUN} .*│ 1 missing: {DAMAGED} +│", out), out  # the lost record's sequence number


# A bit anywhere in a record (its length, CRC or payload) except the last record's length field: a
# longer length there cannot be told from a crash mid-write, so it reads as a truncated tail instead.
DAMAGEABLE_BITS = st.integers(8 * HEADER_SIZE, 8 * len(LOG_BYTES) - 1).filter(
    lambda bit: not OFFSETS[-1] <= bit // 8 < OFFSETS[-1] + 4)


@pytest.mark.slow
@settings(max_examples=40, **COMMON)
@given(bit=DAMAGEABLE_BITS)
def test_any_flipped_bit_is_named_by_its_record_and_skipped_to_the_next(capfd, bit):
    record = max(i for i, offset in enumerate(OFFSETS) if offset <= bit // 8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flipped.mlog"
        path.write_bytes(flipped(bit))
        code, _, err = cli(capfd, "inspect", path)
        assert code == 2
        assert_one_line_error(err, "inspect", f"corrupt record at byte offset {OFFSETS[record]}:")
        code, out, err = cli(capfd, "inspect", path, "--skip-corrupt")
    assert code == 0 and err == ""
    assert re.search(rf"│ skipped damaged bytes \(.*\) +│ {OFFSETS[record]}\.\.{ENDS[record]} +│", out), out
    assert inspect_summary(out) == (len(RECORDS) - 1, sum(len(f) for i, (_, f) in enumerate(RECORDS) if i != record))


@pytest.mark.parametrize("byte", [0, 7, 8])
def test_a_damaged_file_header_is_refused_in_one_line(capfd, tmp_path, byte):
    path = tmp_path / "header.mlog"
    path.write_bytes(flipped(8 * byte + 1))
    for command in ("inspect", "replay"):
        code, _, err = cli(capfd, command, path, *(["--out", tmp_path / "out"] if command == "replay" else []))
        assert code == 2
        assert_one_line_error(err, command, str(path),
                              "not a message log" if byte < 8 else "log format version")


def test_the_cli_runs_in_process_when_stderr_has_no_file_descriptor(capsys):
    """`main(argv)` is the CLI's in-process entry point (STYLE.md 9). Under pytest's capsys, in a notebook,
    or wherever sys.stderr is a Python object, stderr has no file descriptor; the CLI must still run.
    (The tests above use capfd, which gives stderr a real descriptor.)"""
    assert main(["inspect", str(FIXTURE_LOG)]) == 0
    assert f"{len(RECORDS)} records" in capsys.readouterr().out
