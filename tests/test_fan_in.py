"""Many ranks in one run: the monitor's work per message does not grow with the number of ranks.

Hundreds of ranks feed one Pipeline in this process, as the ranks of one job feed `monitor serve`.
The work is counted, never timed: the lines of the monitor's own code run per message (a line
tracer that follows monitor/ only), and the summary.json, page and console writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from rich.console import Console

from conftest import ROOT, tree_bytes
from monitor.outputs.console import MonitorConsole
from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.pipeline import Pipeline
from monitor.ingest.receiver import BATCH_FRAMES
from monitor.outputs.render import save
from trainer_side import protocol
from trainer_side.protocol import make_message

MONITOR_CODE = os.path.realpath(ROOT / "monitor") + os.sep
CLASSES = 7
EPOCHS = 3
OOM = "OutOfMemoryError: CUDA out of memory"
TIMEOUT = "DistBackendError: NCCL watchdog timeout"
WRITE = save._write_bytes_atomic  # every file the monitor writes goes through it


class LinesRun:
    """Counts the lines of monitor/ code run in this thread while active (a sys.settrace tracer that
    returns no local tracer for frames of other code, so those cost a call each and no line events)."""

    def __init__(self) -> None:
        self.lines = 0
        self._ours: dict[str, bool] = {}  # file name -> whether it is monitor/ code

    def __enter__(self) -> "LinesRun":
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)

    def _call(self, frame, event, arg):  # noqa: ANN001 - the settrace signature
        name = frame.f_code.co_filename
        ours = self._ours.get(name)
        if ours is None:
            ours = self._ours[name] = os.path.realpath(name).startswith(MONITOR_CODE)
        return self._line if ours else None

    def _line(self, frame, event, arg):  # noqa: ANN001
        if event == "line":
            self.lines += 1
        return self._line


class Jobs:
    """A renderer that keeps the jobs it is given instead of drawing them."""

    def __init__(self) -> None:
        self.submitted: Counter[str] = Counter()
        self.pending = 0

    def submit(self, job: object) -> None:
        self.submitted[type(job).__name__] += 1

    def drain(self) -> None:
        pass


def job_frames(ranks: int, *, failing: bool = False) -> list[bytes]:
    """One run of `ranks` ranks, as their trainers send it: run_start, per epoch preds, metrics and
    epoch_end, then run_end; the ranks take turns kind by kind. When `failing`, every rank ends
    `failed`: rank 0 out of memory, the others timed out waiting for it."""
    rng = np.random.default_rng(0)
    start = {"class_names": [f"c{i}" for i in range(CLASSES)], "normalization": {"mean": [0.0], "std": [1.0]},
             "model": {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0}}
    seq = [0] * ranks
    frames: list[bytes] = []

    def turn(kind: str, body: Callable[[int], dict]) -> None:
        for rank in range(ranks):
            frames.append(protocol.encode(make_message(kind, "job", rank, ranks, seq[rank], body(rank),
                                                       time=1.8e9 + seq[rank], sender=f"{rank:016x}")))
            seq[rank] += 1

    labels = rng.integers(0, CLASSES, 40).astype(np.uint8)
    turn("run_start", lambda rank: start)
    for epoch in range(EPOCHS):
        turn("preds", lambda rank: {"epoch": epoch, "step": epoch, "labels": labels,
                                    "preds": np.roll(labels, rank % 5).astype(np.uint8)})
        turn("metrics", lambda rank: {"epoch": epoch, "stage": "val", "step": epoch, "values": {"val/loss": 0.5}})
        turn("epoch_end", lambda rank: {"epoch": epoch, "sent": seq[rank] + 1, "dropped": 0})
    turn("run_end", lambda rank: {"status": "failed" if failing else "completed", "sent": seq[rank] + 1,
                                  "dropped": 0, "error": None if not failing else OOM if rank == 0 else TIMEOUT})
    return frames


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def served(out: Path, frames: list[bytes], monkeypatch, *, seconds_per_batch: float = 0.0) -> tuple[int, Counter[str], Pipeline]:
    """Takes `frames` as serve does, in batches: decoded and logged by an Intake, then handled by a
    Pipeline, finished at the end. Its clock stands still (so no interval ever passes) unless
    `seconds_per_batch`: then it moves that much per batch, with a tick after each. Returns the lines
    of monitor/ code that ran, the files written (by name) and the pipeline."""
    written: Counter[str] = Counter()

    def counted(path: Path, data: bytes) -> None:
        written[Path(path).name] += 1
        WRITE(path, data)

    monkeypatch.setattr(save, "_write_bytes_atomic", counted)
    console = MonitorConsole(Console(file=open("/dev/null", "w")), fresh=True)
    intake = Intake(LogBook(out, fresh=True))
    clock = Clock()
    pipeline = Pipeline(out, Jobs(), console, clock=clock)
    with LinesRun() as lines:
        for start in range(0, len(frames), BATCH_FRAMES):
            for message, size in intake.accept_many(frames[start:start + BATCH_FRAMES]):
                pipeline.handle(message, size)
            if seconds_per_batch:
                clock.now += seconds_per_batch
                pipeline.tick()
        pipeline.finish()
    intake.logbook.close()
    return lines.lines, written, pipeline


@pytest.mark.parametrize("failing", [False, True], ids=["completed", "failed"])
def test_the_work_per_message_is_the_same_for_30_and_300_ranks(tmp_path, monkeypatch, failing):
    per_message, page_rows = {}, {}
    status = "failed" if failing else "completed"
    for ranks in (30, 300):
        frames = job_frames(ranks, failing=failing)
        lines, written, pipeline = served(tmp_path / str(ranks), frames, monkeypatch)
        per_message[ranks] = lines / len(frames)
        assert pipeline.runs["job"].status == status and sorted(pipeline.runs["job"].rendered) == [0, 1, 2]
        # summary.json and the run's page: when the run starts, when it ends and at the finish.
        assert written["summary.json"] == 3, written
        assert written["index.html"] <= 6, written  # the run's page and the runs index
        # Every rank's detail is in summary.json; the page counts the ranks.
        run = tmp_path / str(ranks) / "job"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rank_states"] == {"running": 0, "completed": 0 if failing else ranks,
                                          "failed": ranks if failing else 0, "interrupted": 0, "missing": 0}
        assert [summary["ranks"][str(rank)]["status"] for rank in range(ranks)] == [status] * ranks
        page = (run / "index.html").read_text()
        page_rows[ranks] = page.count("<tr>")
        assert f"{ranks} {status}" in page
        if failing:
            assert page.count(OOM) == 1 and page.count(TIMEOUT) == 1
            assert f"{TIMEOUT} <span class=\"note\">(ranks 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and {ranks - 11} more)" in page
            assert f"{OOM} <span class=\"note\">(rank 0)" in page
        console = (run / "console.txt").read_text()
        assert console.count(f"run job {status}") == 1
        assert console.count(" ended failed") == (10 if failing else 0)  # then one line for the other ranks
    assert page_rows[300] == page_rows[30]
    assert per_message[300] <= 1.3 * per_message[30], per_message


@pytest.mark.parametrize("failing", [False, True], ids=["completed", "failed"])
def test_coalesced_writes_end_with_the_bytes_of_a_replay(tmp_path, monkeypatch, failing):
    """A monitor whose clock runs writes summaries and pages in between that a frozen one (a replay
    faster than the interval) never writes; both end with the same files, byte for byte."""
    frames = job_frames(300, failing=failing)
    _, live, _ = served(tmp_path / "live", frames, monkeypatch, seconds_per_batch=1.0)
    _, replayed, _ = served(tmp_path / "replayed", frames, monkeypatch)
    assert live["summary.json"] > replayed["summary.json"] + 5  # the interval passed many times
    assert tree_bytes(tmp_path / "live") == tree_bytes(tmp_path / "replayed")
