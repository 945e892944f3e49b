"""Regenerates the recorded fixture logs under tests/data/ from real runs of the tiny trainer.

    .venv/bin/python tests/data/regenerate.py

tiny_run.mlog: a 3-epoch run (class-imbalanced data, TrackingWeightedRandomSampler, 16 thumbnails)
recorded by a real `monitor serve`; tiny_run_expected.npz: the same run's validation predictions,
labels and metrics as recorded independently inside the trainer (tests/tiny_training.py --record),
plus the training set's targets and sampler weights, so the replay tests compare against facts the
monitor never saw.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import MonitorProcess, run_tiny  # noqa: E402
from tiny_training import TinyData  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        monitor = MonitorProcess(tmp_path / "outputs")
        try:
            result = run_tiny("--endpoint", monitor.endpoint, "--run", "tiny-fixture", "--epochs", "3",
                              "--record", str(tmp_path / "record.npz"))
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
        finally:
            code = monitor.stop()
        if code != 0:
            print(monitor.output(), file=sys.stderr)
            return 1
        shutil.copyfile(tmp_path / "outputs" / "tiny-fixture" / "messages.mlog", HERE / "tiny_run.mlog")
        record = dict(np.load(tmp_path / "record.rank0.npz"))
    data = TinyData()
    targets = np.array(data.train_set.targets)
    record["train_targets"] = targets
    record["sample_weights"] = 1.0 / np.bincount(targets)[targets]
    np.savez(HERE / "tiny_run_expected.npz", **record)
    print(f"wrote {HERE / 'tiny_run.mlog'} and {HERE / 'tiny_run_expected.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
