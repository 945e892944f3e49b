#!/usr/bin/env python3
"""Regenerates the recorded fixture logs under tests/data/ from real runs of the tiny trainer.

    tests/data/regenerate.py [--out DIR]     (or: .venv/bin/python tests/data/regenerate.py)

writes into tests/data/, or DIR (tests/test_fixture_tool.py compares such a copy with the committed one).

tiny_run.mlog: a 3-epoch run (class-imbalanced data, TrackingWeightedRandomSampler, 16 thumbnails)
recorded by a real `monitor serve`, kept on purpose in protocol 1.0, the oldest wire format the monitor
reads, so that the replay tests cover logs from before sender ids (1.1), confidences (1.2) and sample ids (1.3): the
trainer runs without hardest mistakes (`--mistakes 0`), and each recorded frame is written as a 1.0
emitter sends it (version [1, 0], no `sender`, no `confidence`, sample `ids` or `label_confidence` in
preds, no `targets_missing`, `val_size` or `train_size` in run_start).
tiny_run_expected.npz: the same run's validation predictions, labels and metrics as recorded
independently inside the trainer (tests/tiny_training.py --record), plus the training set's targets
and sampler weights, so the replay tests compare against facts the monitor never saw.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_PYTHON = HERE.parent.parent / ".venv" / "bin" / "python"
if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])  # the project's environment

import msgpack  # noqa: E402
import numpy as np  # noqa: E402

sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # tests/ (conftest) and the repository (bench)

from conftest import MonitorProcess, run_tiny  # noqa: E402
from tiny_training import TinyData  # noqa: E402
from trainer_side import protocol  # noqa: E402
from trainer_side.msglog import LogWriter, iter_frames  # noqa: E402

FIXTURE_VERSION = [1, 0]
# field -> the kinds that carry it since a later minor version (None: every kind)
NEWER_FIELDS = {"sender": None, "confidence": ("preds",), "targets_missing": ("run_start",), "ids": ("preds",),
                "label_confidence": ("preds",), "val_size": ("run_start",), "train_size": ("run_start",)}
NEWER_KINDS = {"mistakes", "sample_names", "train_preds"}


def as_protocol_1_0(frame: bytes) -> bytes:
    """`frame` as a protocol 1.0 emitter sends it: the fields of later minor versions left out."""
    obj = msgpack.unpackb(frame, raw=False)
    obj["v"] = FIXTURE_VERSION
    for name, kind in NEWER_FIELDS.items():
        if kind is None or obj["kind"] in kind:
            obj.pop(name, None)
    old = msgpack.packb(obj, use_bin_type=True)
    if protocol.decode(old).version != tuple(FIXTURE_VERSION):
        raise RuntimeError(f"a {obj['kind']} frame did not decode as protocol 1.0")
    return old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="re-record the fixture logs of tests/data/")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write them to (default: tests/data/)")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        monitor = MonitorProcess(tmp_path / "outputs")
        try:
            result = run_tiny("--endpoint", monitor.endpoint, "--run", "tiny-fixture", "--epochs", "3",
                              "--mistakes", "0", "--record", str(tmp_path / "record.npz"))
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
        finally:
            code = monitor.stop()
        if code != 0:
            print(monitor.output(), file=sys.stderr)
            return 1
        served = tmp_path / "outputs" / "tiny-fixture" / "messages.mlog"
        kinds = {msgpack.unpackb(frame)["kind"] for frame in iter_frames(served)}
        if kinds & NEWER_KINDS:
            raise RuntimeError(f"the trainer sent {sorted(kinds & NEWER_KINDS)}, which protocol 1.0 has not")
        converted = tmp_path / "tiny_run.mlog"
        with LogWriter(converted) as writer:
            for frame in iter_frames(served):
                writer.append(as_protocol_1_0(frame))
        shutil.copyfile(converted, out / "tiny_run.mlog")
        # What a 1.0 log can be checked against: not the confidences it lacks, nor the raw inputs.
        record = {key: value for key, value in np.load(tmp_path / "record.rank0.npz").items()
                  if not key.startswith(("confidence_", "inputs_"))}
    data = TinyData()
    targets = np.array(data.train_set.targets)
    record["train_targets"] = targets
    record["sample_weights"] = 1.0 / np.bincount(targets)[targets]
    np.savez(out / "tiny_run_expected.npz", **record)
    print(f"wrote {out / 'tiny_run.mlog'} and {out / 'tiny_run_expected.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
