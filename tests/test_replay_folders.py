"""`monitor replay FOLDER`: a spool folder replays as its log files do, every rank of every run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tree_bytes
from monitor.cli import main
from trainer_side import Emitter


def write_spool(spool, run: str, world: int = 2) -> None:
    """A run of two epochs from `world` ranks, to the spool only; rank r predicts its labels shifted by r."""
    for rank in range(world):
        emitter = Emitter(None, run=run, rank=rank, world_size=world, spool=spool)
        emitter.run_start(class_names=["cat", "dog", "bird"])
        for epoch in range(2):
            labels = np.arange(30, dtype=np.uint8) % 3
            emitter.preds(epoch, preds=((labels + rank) % 3).astype(np.uint8), labels=labels)
            emitter.epoch_end(epoch)
        emitter.run_end("completed")
        emitter.close()


def test_replay_of_a_spool_folder_reads_every_rank_of_every_run(tmp_path, capfd):
    spool = tmp_path / "spool"
    write_spool(spool, "alpha")
    write_spool(spool, "beta", world=1)
    assert main(["replay", str(spool), "--out", str(tmp_path / "from_folder"), "--quiet"]) == 0
    files = [spool / "alpha" / "rank0.mlog", spool / "alpha" / "rank1.mlog", spool / "beta" / "rank0.mlog"]
    assert main(["replay", *map(str, files), "--out", str(tmp_path / "from_files"), "--quiet"]) == 0
    capfd.readouterr()
    assert tree_bytes(tmp_path / "from_folder") == tree_bytes(tmp_path / "from_files")
    matrix = (tmp_path / "from_folder" / "alpha" / "epoch_001" / "confusion_matrix.csv").read_text().splitlines()
    # Rank 0 is always right, rank 1 always one class off: 10 + 10 per row, on the diagonal and beside it.
    assert matrix[1:] == ["cat,10,10,0", "dog,0,10,10", "bird,10,0,10"]
    assert (tmp_path / "from_folder" / "beta" / "epoch_001" / "confusion_matrix.csv").is_file()


def test_a_run_folder_of_a_spool_replays_too(tmp_path, capfd):
    spool = tmp_path / "spool"
    write_spool(spool, "alpha")
    assert main(["replay", str(spool / "alpha"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    capfd.readouterr()
    assert (tmp_path / "out" / "alpha" / "epoch_001" / "confusion_matrix.csv").is_file()


def test_a_folder_without_logs_is_refused_in_one_line(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    assert main(["replay", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "no *.mlog files under the folder" in err and str(tmp_path / "empty") in err


def test_replaying_an_output_folder_into_itself_finds_no_inputs(tmp_path, capfd):
    """The run logs a monitor writes under --out are its outputs, never inputs (as for watch)."""
    spool = tmp_path / "spool"
    write_spool(spool, "alpha", world=1)
    out = tmp_path / "out"
    assert main(["replay", str(spool), "--out", str(out), "--quiet"]) == 0
    capfd.readouterr()
    assert main(["replay", str(out), "--out", str(out)]) == 2
    assert "no *.mlog files under the folder" in capfd.readouterr().err
