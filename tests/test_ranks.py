"""Several ranks: a real 2-rank DDP run on the CPU, and the missing-rank timeout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from conftest import MonitorProcess, run_tiny
from monitor.outputs.console import MonitorConsole
from monitor.pipeline import Pipeline
from monitor.outputs.render.pool import InlineRenderer
from test_calibration import reference_ece_mce
from test_end_to_end import independent_confusion, read_confusion_csv
from trainer_side import protocol
from trainer_side.protocol import make_message


def test_two_ddp_ranks_are_summed_and_their_draws_tracked(tmp_path):
    monitor = MonitorProcess(tmp_path / "out")
    try:
        result = run_tiny("--endpoint", monitor.endpoint, "--run", "ddp", "--epochs", "2", "--devices", "2",
                          "--record", str(tmp_path / "rec.npz"), timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        assert monitor.stop() == 0
    finally:
        monitor.kill()
    run = tmp_path / "out" / "ddp"
    records = [np.load(tmp_path / f"rec.rank{rank}.npz") for rank in (0, 1)]
    targets = np.array(__import__("tiny_training").TinyData().train_set.targets)
    with open(run / "history.csv", newline="") as f:
        history = {int(row["epoch"]): {k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)}
    for epoch in (0, 1):
        _, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        per_rank = [independent_confusion(r[f"preds_{epoch}"], r[f"labels_{epoch}"], 4) for r in records]
        assert all(m.sum() == 20 for m in per_rank)  # 40 validation samples split over 2 ranks, no padding
        np.testing.assert_array_equal(counts, per_rank[0] + per_rank[1])
        sampler = json.loads((run / f"epoch_{epoch:03d}" / "sampler_distribution.json").read_text())
        seen = sum(np.bincount(r[f"train_labels_{epoch}"], minlength=4) for r in records)
        assert [c["sampled"] for c in sampler["classes"]] == seen.tolist()
        assert sampler["draws"] == len(targets)
        # Calibration over both ranks' confidences, and one grid of both ranks' hardest mistakes.
        confidence = np.concatenate([r[f"confidence_{epoch}"] for r in records])
        right = np.concatenate([r[f"preds_{epoch}"] == r[f"labels_{epoch}"] for r in records])
        ece, _ = reference_ece_mce(confidence, right)
        assert history[epoch]["val/ece"] == pytest.approx(ece, abs=1e-12)
        assert (run / f"epoch_{epoch:03d}" / "misclassified.png").exists() == (not right.all())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world"] == 2 and sorted(summary["ranks"]) == ["0", "1"]
    assert summary["status"] == "completed"
    assert all(rank["gaps"] == 0 and rank["dropped"] == 0 for rank in summary["ranks"].values())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _feed(pipeline: Pipeline, kind: str, rank: int, seq: int, body: dict) -> None:
    message = protocol.decode(protocol.encode(make_message(kind, "two", rank, 2, seq, body, time=0.0)))
    pipeline.handle(message, 100)


def test_an_epoch_waits_for_every_rank_then_times_out_naming_the_missing_one(tmp_path):
    clock = FakeClock()
    notes: list[str] = []
    console = MonitorConsole(Console(file=open("/dev/null", "w")), fresh=True)
    console.note = lambda text, style="yellow": notes.append(text)  # type: ignore[method-assign]
    pipeline = Pipeline(tmp_path, InlineRenderer(), console, epoch_timeout=30.0, clock=clock)
    labels = np.array([0, 1, 1], dtype=np.uint8)
    for rank in (0, 1):
        _feed(pipeline, "run_start", rank, 0, {"class_names": ["a", "b"], "normalization": {"mean": [0], "std": [1]},
                                               "model": {"class": "M", "total_params": 1, "trainable_params": 1,
                                                         "size_mb": 0.0}})
        _feed(pipeline, "preds", rank, 1, {"epoch": 0, "step": 5, "preds": labels, "labels": labels})
    _feed(pipeline, "epoch_end", 0, 2, {"epoch": 0, "sent": 2, "dropped": 0})
    csv = tmp_path / "two" / "epoch_000" / "confusion_matrix.csv"
    pipeline.tick()
    assert not csv.exists()  # rank 1 has not finished the epoch yet
    clock.now += 29.0
    pipeline.tick()
    assert not csv.exists()
    clock.now += 2.0
    pipeline.tick()
    assert csv.exists()
    assert any("without rank(s) 1" in note for note in notes)
    _, counts = read_confusion_csv(csv)
    assert counts.tolist() == [[2, 0], [0, 4]]  # rank 1's predictions arrived, so they count
    # The late epoch_end re-renders nothing new and warns no more.
    notes.clear()
    _feed(pipeline, "epoch_end", 1, 2, {"epoch": 0, "sent": 2, "dropped": 0})
    assert notes == []
