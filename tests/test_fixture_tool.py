"""tests/data/regenerate.py, run as the README shows it (a bare path), writes the fixture the replay
tests expect: the same protocol-1.0 messages, in the same order, with the same predictions."""

from __future__ import annotations

import os
import subprocess

import msgpack
import numpy as np

from conftest import ROOT
from trainer_side.msglog import iter_frames

DATA = ROOT / "tests" / "data"


def shape_of(log) -> list[tuple]:
    """Each message's kind, sequence number, version and field names: what the fixture tests rely on."""
    return [(m["kind"], m["seq"], tuple(m["v"]), tuple(sorted(m))) for m in
            (msgpack.unpackb(frame, raw=False) for frame in iter_frames(log))]


def test_the_fixture_tool_regenerates_the_committed_fixture(tmp_path):
    tool = DATA / "regenerate.py"
    assert os.access(tool, os.X_OK)
    result = subprocess.run([str(tool), "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shape_of(tmp_path / "tiny_run.mlog") == shape_of(DATA / "tiny_run.mlog")
    assert {m[2] for m in shape_of(tmp_path / "tiny_run.mlog")} == {(1, 0)}
    new, committed = np.load(tmp_path / "tiny_run_expected.npz"), np.load(DATA / "tiny_run_expected.npz")
    assert sorted(new) == sorted(committed)
    for key in committed:
        if key.startswith(("preds_", "labels_", "train_")) or key == "sample_weights":
            assert np.array_equal(new[key], committed[key]), key
