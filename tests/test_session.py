"""`monitor serve` and `watch` started inside another session (a terminal's) move their work to a child
that leads a session of its own, at the lowest share; the parent stays, forwards signals and returns
the child's exit status (monitor/session.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import monitor.session
from conftest import ROOT, alive, children_of, run_tiny, wait_for
from monitor.cli import main

pytestmark = pytest.mark.skipif(
    not Path("/proc/sys/kernel/sched_autogroup_enabled").exists()
    or Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1",
    reason="kernel without autogroup: serve has no reason to move")


def _autogroup(pid: int) -> str:
    return Path(f"/proc/{pid}/autogroup").read_text().strip()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _mover(start_monitor, out: Path, *extra: str):
    """A monitor started in the test's session, and the child it moved its work to."""
    monitor = start_monitor(out, *extra, own_session=False)
    (child,) = children_of(monitor.proc.pid)
    return monitor, child


def test_in_a_terminal_serve_moves_its_work_to_its_own_session_and_passes_signals_on(start_monitor, tmp_path):
    ours = (os.getsid(0), _autogroup(os.getpid()), os.sched_getscheduler(0))
    monitor, child = _mover(start_monitor, tmp_path / "out")
    # The parent stays in the terminal's session, which keeps its share; the child leads a new one at
    # nice 19 and keeps its policy (its receive loop must preempt its SCHED_IDLE workers).
    assert (os.getsid(monitor.proc.pid), _autogroup(monitor.proc.pid)) == ours[:2]
    assert os.getsid(child) == child != ours[0]
    assert _autogroup(child).endswith("nice 19") and _autogroup(child) != ours[1]
    assert os.sched_getscheduler(child) == ours[2]
    assert _autogroup(os.getpid()) == ours[1]
    # Its render workers are the child's, not the parent's.
    assert children_of(monitor.proc.pid) == [child] and len(children_of(child)) >= 2
    # Ctrl-Z stops both (the parent SIGSTOPs the child: a SIGTSTP would be dropped); fg continues both.
    os.kill(monitor.proc.pid, signal.SIGTSTP)
    wait_for(lambda: _state(child) == "T" and _state(monitor.proc.pid) == "T", what="both stopped", timeout=20)
    os.kill(monitor.proc.pid, signal.SIGCONT)
    wait_for(lambda: _state(child) != "T" and _state(monitor.proc.pid) != "T", what="both running", timeout=20)
    result = run_tiny("--endpoint", monitor.endpoint, "--run", "moved", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    # Ctrl-C reaches the parent alone (the terminal's foreground group); it passes it on, and the child
    # drains, finishes the run's artifacts and exits 0, which the parent returns.
    assert monitor.stop(signal.SIGINT) == 0, monitor.output()
    assert not alive(child)
    run = tmp_path / "out" / "moved"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / "epoch_000" / "confusion_matrix.png").stat().st_size > 0
    assert monitor.output().count("monitor: stopped;") == 1


def test_the_moved_monitor_stops_gracefully_when_its_parent_is_killed(start_monitor, tmp_path):
    monitor, child = _mover(start_monitor, tmp_path / "out")
    workers = children_of(child)
    monitor.kill()  # SIGKILL: the parent can forward nothing; the kernel tells the child (PDEATHSIG)
    wait_for(lambda: not alive(child), what="the child stopping after its parent", timeout=60)
    wait_for(lambda: not any(map(alive, workers)), what="its workers exiting", timeout=60)
    # A graceful stop, not a kill: it wrote its closing stats.
    assert json.loads((tmp_path / "out" / ".monitor" / "stats.json").read_text())["frames"] == 0


def test_the_child_exit_status_and_its_error_come_back_once(tmp_path):
    # The port is taken, which only binding finds out: in the child, after the move.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-m", "monitor", "serve", "--bind", endpoint, "--out",
                                 str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(f"cannot bind {endpoint}") == 1, result.stderr


def test_bad_arguments_are_refused_before_anything_moves(monkeypatch, capfd, tmp_path):
    def moved(argv):
        raise AssertionError(f"moved before checking its arguments: {argv}")

    monkeypatch.setattr(monitor.session, "run_in_own_session", moved)
    for argv in (["serve", "--bind", "tcp://0.0.0.0:5555"], ["serve", "--curve-secret", str(tmp_path / "none")],
                 ["watch", str(tmp_path / "no-such-spool")]):
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capfd.readouterr().err
        assert err.startswith(f"monitor {argv[0]}: error: ") and err.count("\n") == 1, err


def test_watch_moves_too_and_normal_priority_does_not(start_monitor, tmp_path):
    (tmp_path / "spool").mkdir()
    watch = subprocess.Popen([sys.executable, "-m", "monitor", "watch", str(tmp_path / "spool"), "--out",
                              str(tmp_path / "watched")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(children_of(watch.pid)) == 1, what="watch's child", timeout=60)
        (child,) = children_of(watch.pid)
        wait_for(lambda: os.getsid(child) == child and _autogroup(child).endswith("nice 19"),
                 what="the child in its own session at nice 19", timeout=60)
        time.sleep(0.5)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(120) == 0
    finally:
        watch.kill()
    normal = start_monitor(tmp_path / "normal", "--render-priority", "normal", own_session=False)
    assert all(os.getsid(pid) == os.getsid(0) for pid in [normal.proc.pid, *children_of(normal.proc.pid)])
    assert _autogroup(normal.proc.pid) == _autogroup(os.getpid())
    assert normal.stop() == 0
