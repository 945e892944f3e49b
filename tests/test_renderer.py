"""ProcessRenderer: two figure lanes and a table worker under the requested CPU priority, history
redraws that a newer one supersedes, per-file order, failures counted without stopping the other jobs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from rich.table import Table

from conftest import wait_for
from monitor.outputs.render import pool
from monitor.outputs.render.jobs import ConfusionJob, HistoryJob, TableJob
from monitor.outputs.render.pool import InlineRenderer, ProcessRenderer

# The jobs below run in spawned workers, which import this module by name to unpickle them.


@dataclass(frozen=True)
class Probe:
    """Writes the worker's pid and scheduling policy; runs on the figure lane."""

    png: Path

    def run(self) -> None:
        self.png.write_text(json.dumps({"pid": os.getpid(), "policy": os.sched_getscheduler(0),
                                        "nice": os.nice(0), "sid": os.getsid(0),
                                        "cgroup": Path("/proc/self/cgroup").read_text()}))


@dataclass(frozen=True)
class ConfusionProbe(ConfusionJob):
    """The same probe, routed like a confusion matrix."""

    def run(self) -> None:
        Probe(self.png).run()


def probe_table(path: Path) -> Table:
    """A table builder that records where it ran (the table worker, when offloaded)."""
    Probe(path).run()
    return Table("probe")


@dataclass(frozen=True)
class Sleep:
    png: Path
    seconds: float

    def run(self) -> None:
        time.sleep(self.seconds)
        self.png.write_text("slept")


@dataclass(frozen=True)
class Broken:
    png: Path

    def run(self) -> None:
        raise RuntimeError("this job always fails")


def _probe_every_lane(tmp_path: Path, priority: str) -> tuple[dict, dict, dict]:
    renderer = ProcessRenderer(priority=priority)
    try:
        renderer.submit(ConfusionProbe(tmp_path / "confusion.json", tmp_path / "unused.csv", np.zeros((1, 1)), ["a"], "t"))
        renderer.submit(Probe(tmp_path / "figure.json"))
        record, shown = renderer.table(TableJob(partial(probe_table, tmp_path / "table.json"), None, None)).result()
        renderer.drain()
    finally:
        renderer.close()
    assert "probe" in record and shown is None
    return tuple(json.loads((tmp_path / f"{lane}.json").read_text())  # type: ignore[return-value]
                 for lane in ("confusion", "figure", "table"))


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_idle_priority_puts_every_lane_under_sched_idle_in_separate_processes(tmp_path):
    confusion, figure, table = _probe_every_lane(tmp_path, "idle")
    assert confusion["policy"] == figure["policy"] == table["policy"] == os.SCHED_IDLE
    assert len({confusion["pid"], figure["pid"], table["pid"], os.getpid()}) == 4
    # Only the policy changes: each worker stays in the session and cgroup of the process that made it.
    own_cgroup = Path("/proc/self/cgroup").read_text()
    for worker in (confusion, figure, table):
        assert worker["sid"] == os.getsid(0) and worker["cgroup"] == own_cgroup


def test_normal_priority_leaves_the_workers_alone(tmp_path):
    confusion, figure, table = _probe_every_lane(tmp_path, "normal")
    assert confusion["policy"] == figure["policy"] == table["policy"] == os.sched_getscheduler(0)
    assert confusion["nice"] == figure["nice"] == table["nice"] == os.nice(0)
    assert confusion["sid"] == figure["sid"] == table["sid"] == os.getsid(0)


def test_unknown_priority_is_refused():
    with pytest.raises(ValueError, match="render priority must be one of idle, normal"):
        ProcessRenderer(priority="high")


def _history(epochs: int) -> dict[int, dict[str, float]]:
    return {e: {"train/loss": 1.0 / (e + 1), "val/loss": 1.2 / (e + 1), "val/acc_top1": e / epochs}
            for e in range(epochs)}


def test_queued_history_redraws_are_superseded_by_the_latest(tmp_path):
    done: list[str] = []
    renderer = ProcessRenderer(on_done=done.append, priority="normal")
    folder = tmp_path / "served" / "training_history"
    try:
        renderer.submit(Sleep(tmp_path / "slept.txt", 2.0))  # occupies the figure lane
        time.sleep(0.5)
        for epochs in range(1, 7):
            renderer.submit(HistoryJob(folder, _history(epochs)))
        renderer.drain()
    finally:
        renderer.close()
    # Only the jobs that had already left the queue when their successor came could not be withdrawn.
    assert renderer.superseded >= 3
    assert len(done) == 1 + 6 - renderer.superseded
    assert renderer.pending == 0 and renderer.failures == 0
    expected = tmp_path / "inline" / "training_history"
    inline = InlineRenderer()
    inline.submit(HistoryJob(expected, _history(6)))
    inline.drain()
    for name in ("loss_history.png", "accuracy_history.png"):
        assert (folder / name).read_bytes() == (expected / name).read_bytes(), name


def test_a_failing_job_is_counted_and_the_next_one_still_runs(tmp_path):
    done: list[str] = []
    renderer = ProcessRenderer(on_done=done.append, priority="normal")
    try:
        renderer.submit(Broken(tmp_path / "never.png"))
        renderer.submit(Probe(tmp_path / "after.json"))
        renderer.drain()
    finally:
        renderer.close()
    assert renderer.failures == 1
    assert done == [str(tmp_path / "after.json")]


# --- deferral: the busy signal on which the pipeline holds ready epochs ---------------------------


@pytest.fixture
def machine(monkeypatch):
    """The idle cores the renderer's deferral sees, set by the test (the real /proc/stat is not read)."""
    state = {"idle_cores": 0.0}
    monkeypatch.setattr(pool.IdleCores, "take", lambda self: state["idle_cores"])
    return state


def test_busy_while_a_run_is_live_and_the_cpus_are_busy_and_the_renderer_still_draws(tmp_path, machine):
    live = [True]
    renderer = ProcessRenderer(priority="normal", defer_s=600, live=lambda: live[0])
    try:
        wait_for(lambda: renderer.busy, "the deferral to see a busy machine", timeout=60)
        renderer.submit(Probe(tmp_path / "drawn.json"))  # holding is the pipeline's: a figure given is drawn
        wait_for(lambda: (tmp_path / "drawn.json").exists(), "the figure drawn on a busy machine", timeout=120)
        machine["idle_cores"] = 1.5  # a core falls idle
        wait_for(lambda: not renderer.busy, "a quiet second", timeout=60)
        machine["idle_cores"] = 0.0
        wait_for(lambda: renderer.busy, "the machine busy again", timeout=60)
        live[0] = False  # the run ended: nothing to yield to
        wait_for(lambda: not renderer.busy, "no run live", timeout=60)
    finally:
        renderer.close()


def test_a_failing_reading_turns_the_deferral_off(monkeypatch, caplog):
    def broken(self):
        raise OSError("no /proc/stat")

    monkeypatch.setattr(pool.IdleCores, "take", broken)
    renderer = ProcessRenderer(priority="normal", defer_s=600, live=lambda: True)
    try:
        wait_for(lambda: renderer.defer_s == 0, "the deferral to stop", timeout=60)
        assert not renderer.busy
    finally:
        renderer.close()
    assert "render deferral stopped (OSError: no /proc/stat); epochs are drawn at once" in caplog.text


def test_a_negative_deferral_is_refused_by_name():
    with pytest.raises(ValueError, match="render deferral must be a non-negative number of seconds, got -1"):
        ProcessRenderer(priority="normal", defer_s=-1)


def test_serve_and_watch_take_render_defer_and_refuse_a_negative_one_in_one_line(monkeypatch, capfd, tmp_path):
    import monitor.serve
    import monitor.watch
    from monitor.cli import DEFAULT_RENDER_DEFER_S, main

    seen = {}
    monkeypatch.setattr(monitor.serve, "serve", lambda *a, **kw: seen.setdefault("serve", kw["render_defer"]) and 0)
    monkeypatch.setattr(monitor.watch, "watch", lambda *a, **kw: seen.setdefault("watch", kw["render_defer"]) and 0)
    main(["serve", "--out", str(tmp_path)])
    main(["watch", str(tmp_path), "--render-defer", "0"])
    assert seen == {"serve": DEFAULT_RENDER_DEFER_S, "watch": 0.0}
    capfd.readouterr()
    with pytest.raises(SystemExit) as refused:  # argparse's usage error, as for every other argument
        main(["serve", "--render-defer", "-1"])
    assert refused.value.code == 2
    last = capfd.readouterr().err.splitlines()[-1]
    assert last == "monitor serve: error: argument --render-defer: must be zero or more, got -1", last


def test_idle_cores_counts_idle_and_iowait_time_over_all_cpus_and_steal_as_busy(tmp_path):
    stat = tmp_path / "stat"

    def write(user: int, idle: int, iowait: int, steal: int) -> None:
        # user nice system idle iowait irq softirq steal guest guest_nice, then two cpus
        stat.write_text(f"cpu  {user} 0 0 {idle} {iowait} 0 0 {steal} 0 0\ncpu0 0\ncpu1 0\nintr 5\n")

    write(100, 100, 0, 0)
    idle = pool.IdleCores(str(stat))
    write(100 + 120, 100 + 50, 10, 20)  # of 200 ticks on 2 cpus: 60 idle or waiting on the disk
    assert idle.take() == pytest.approx(2 * 60 / 200)
    assert idle.take() is None  # no time passed since the last reading
    assert pool.IdleCores(str(tmp_path / "missing")).take() is None
