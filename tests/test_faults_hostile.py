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
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq.auth
from rich.console import Console

from monitor.cli import main
from monitor.replay import replay
from trainer_side import protocol
from trainer_side.msglog import LogWriter, iter_frames

DATA = Path(__file__).parent / "data"
FIXTURE_LOG = DATA / "tiny_run.mlog"
TINY_FRAMES = list(iter_frames(FIXTURE_LOG))
TINY = [protocol.decode(frame) for frame in TINY_FRAMES]


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
