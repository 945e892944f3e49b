"""The monitor's life cycle under faults: an ordinary process (its own session, cgroup and priority
untouched, only the render workers idle), listening before its heavy imports, a stop bounded in time
whatever the senders did, and a test suite whose timeout fires on a hang."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import zmq

from conftest import ROOT, MonitorProcess, children_of, free_port, logged, wait_for
from monitor.outputs.render.pool import ProcessRenderer
from test_renderer import Sleep
from trainer_side import protocol
from trainer_side.protocol import make_message

# Only catches a hang: a stop is meant to take about 10 s, on a loaded machine it may take more.
STOP_BOUND_S = 60


def frame(kind: str, run: str, seq: int, world: int = 1, **body: object) -> bytes:
    return protocol.encode(make_message(kind, run, 0, world, seq, body))


def run_start(run: str, classes: int, world: int = 1, sampler: bool = False) -> bytes:
    targets = np.arange(classes, dtype=np.uint32)
    return frame("run_start", run, 0, world, class_names=[f"class {i}" for i in range(classes)],
                 normalization={"mean": [0.0], "std": [1.0]},
                 model={"class": "Net", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
                 train_targets=targets if sampler else None,
                 class_counts=None if sampler else np.ones(classes, dtype=np.int64),
                 sampler={"type": "TrackingWeightedRandomSampler", "num_samples": classes,
                          "weights_per_class": np.ones(classes)} if sampler else None,
                 hparams={})


def giant_run(classes: int, epochs: int = 3) -> list[bytes]:
    """A run of `classes` classes with a sampler: a dataset table, then a sampler table per epoch."""
    frames = [run_start("giant", classes, sampler=True)]
    indices = np.arange(classes, dtype=np.uint32)
    for epoch in range(epochs):
        frames += [frame("sampled", "giant", 1 + 2 * epoch, epoch=epoch, indices=indices),
                   frame("epoch_end", "giant", 2 + 2 * epoch, epoch=epoch, sent=3 + 2 * epoch, dropped=0)]
    return frames


def one_epoch(run: str, epoch: int, seq: int, world: int = 1) -> list[bytes]:
    """A 3-class epoch: preds (labels 0..2, each predicted right), val metrics, epoch_end."""
    labels = np.array([0, 1, 2, 2], dtype=np.uint8)
    return [frame("preds", run, seq, world, epoch=epoch, step=epoch, preds=labels, labels=labels),
            frame("metrics", run, seq + 1, world, epoch=epoch, stage="val", step=epoch,
                  values={"val/acc_top1": 1.0}),
            frame("epoch_end", run, seq + 2, world, epoch=epoch, sent=seq + 3, dropped=0)]


@pytest.fixture
def push():
    """Connects PUSH sockets to an endpoint; every one is closed, and the context ended, afterwards."""
    context = zmq.Context()
    sockets: list[zmq.Socket] = []

    def connect(endpoint: str) -> zmq.Socket:
        socket = context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close(linger=0)
    context.term()


def timed_stop(monitor: MonitorProcess) -> tuple[int, float]:
    started = time.monotonic()
    code = monitor.stop(timeout=STOP_BOUND_S)
    return code, time.monotonic() - started


def report(what: str, seconds: float) -> None:
    print(f"\n{what}: {seconds:.1f} s")


# ------------------------------------------------------------------ an ordinary process (item 16)


def _scheduling(pid: int) -> tuple[int, int, int, str]:
    """Session, policy, nice value and cgroups of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return os.getsid(pid), os.sched_getscheduler(pid), int(stat[16]), Path(f"/proc/{pid}/cgroup").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_serve_keeps_its_session_cgroup_and_priority_and_only_its_render_workers_idle(tmp_path, push):
    ours = _scheduling(os.getpid())
    # Started in this process's session, as from a shell: it must stay there, as it is.
    monitor = MonitorProcess(tmp_path / "out", own_session=False)
    try:
        assert _scheduling(monitor.proc.pid) == ours
        sender = push(monitor.endpoint)
        sender.send(run_start("ordinary", 3))
        for message in one_epoch("ordinary", 0, 1):
            sender.send(message)
        wait_for(lambda: (tmp_path / "out" / "ordinary" / "epoch_000" / "confusion_matrix.csv").exists(),
                 "the epoch's confusion matrix")

        def workers() -> list[int]:
            return [pid for pid in children_of(monitor.proc.pid)
                    if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]

        wait_for(lambda: len(workers()) == 3, "three render workers")
        assert _scheduling(monitor.proc.pid) == ours  # after rendering too: no session, cgroup or nice change
        for pid in workers():
            session, policy, nice, cgroup = _scheduling(pid)
            assert (session, nice, cgroup) == (ours[0], ours[2], ours[3])
            assert policy == os.SCHED_IDLE
        code, _ = timed_stop(monitor)
        assert code == 0, monitor.output()
    finally:
        monitor.kill()


# ------------------------------------------------------------- listening at once (item 2)

# Holds every `import torch` of the process until the file $TORCH_GATE exists: what arrives at the
# monitor then arrives while its heavy imports are still going on.
GATE = '''
import os, sys, time
_gate = os.environ.get("TORCH_GATE")
if _gate:
    class _HoldTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                while not os.path.exists(_gate):
                    time.sleep(0.05)
            return None
    sys.meta_path.insert(0, _HoldTorch())
'''


@contextlib.contextmanager
def serve_with_torch_held(tmp_path: Path, port: int) -> Iterator[tuple[subprocess.Popen, Path, Path, Path]]:
    """`monitor serve` whose `import torch` waits until the gate file exists, once it listens; yields
    the process, the gate, its ready file and output folder, and at exit opens the gate and ends the
    process if it is still running. Output goes to tmp_path/monitor.log."""
    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "sitecustomize.py").write_text(GATE)
    gate, ready, out = tmp_path / "release", tmp_path / "ready", tmp_path / "out"
    env = {**os.environ, "TORCH_GATE": str(gate),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "gate"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "monitor.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "serve", "--bind", f"tcp://127.0.0.1:{port}",
                                 "--out", str(out), "--ready-file", str(ready)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # torch cannot load until the gate opens, so the monitor must listen without it.
        wait_for(lambda: ready.exists() or proc.poll() is not None, "listening before torch is imported", 60)
        assert proc.poll() is None, (tmp_path / "monitor.log").read_text()
        yield proc, gate, ready, out
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_frames_sent_while_serve_is_still_importing_are_logged_then_processed(tmp_path, push):
    port = free_port()
    with serve_with_torch_held(tmp_path, port) as (proc, gate, ready, out):
        assert ready.read_text().strip() == f"tcp://127.0.0.1:{port}"
        frames = [run_start("early", 3)]
        for epoch in range(2):
            frames += one_epoch("early", epoch, 1 + 3 * epoch)
        frames.append(frame("run_end", "early", 7, status="completed", error=None, sent=8, dropped=0))
        sender = push(ready.read_text().splitlines()[0])
        for message in frames:
            sender.send(message)
        log_path = out / "early" / "messages.mlog"
        wait_for(lambda: len(logged(log_path)) == len(frames), "every frame logged while torch is held")
        assert logged(log_path) == frames
        assert not (out / "early" / "labels_mapping.json").exists()  # nothing processed yet
        assert "monitor: listening on" in (tmp_path / "monitor.log").read_text()
        gate.touch()
        for epoch in range(2):
            wait_for(lambda: (out / "early" / f"epoch_{epoch:03d}" / "confusion_matrix.csv").exists(),
                     f"epoch {epoch}'s confusion matrix")
        summary = out / "early" / "summary.json"
        wait_for(lambda: summary.exists() and json.loads(summary.read_text())["status"] == "completed", "run end")
        assert json.loads(summary.read_text())["ranks"]["0"]["messages"] == len(frames)
        csv = (out / "early" / "epoch_001" / "confusion_matrix.csv").read_text().splitlines()
        assert csv[1:] == ["class 0,1,0,0", "class 1,0,1,0", "class 2,0,0,2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_BOUND_S) == 0


# ------------------------------------------------------------- a bounded stop (item 9)


@dataclass
class Flood:
    """A separate process sending small frames to an endpoint as fast as it can, until killed."""

    proc: subprocess.Popen

    @classmethod
    def start(cls, endpoint: str) -> "Flood":
        code = textwrap.dedent(f"""
            import zmq
            from trainer_side import protocol
            from trainer_side.protocol import make_message
            context = zmq.Context()
            socket = context.socket(zmq.PUSH)
            socket.connect({endpoint!r})
            seq = 0
            while True:
                socket.send(protocol.encode(make_message("metrics", "flood", 0, 1, seq, {{
                    "epoch": 0, "stage": "train", "step": seq, "values": {{"train/loss": 1.0}}}})))
                seq += 1
        """)
        return cls(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)}))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.mark.slow
def test_sigterm_during_a_flood_stops_in_bounded_time_with_every_received_frame_logged(tmp_path):
    monitor = MonitorProcess(tmp_path / "out")
    flood = Flood.start(monitor.endpoint)
    try:
        log_path = tmp_path / "out" / "flood" / "messages.mlog"
        wait_for(lambda: log_path.exists() and log_path.stat().st_size > 1 << 20, "the flood arriving")
        code, seconds = timed_stop(monitor)  # the flood goes on the whole time
        report("stop during a flood", seconds)
        assert code == 0, monitor.output()
    finally:
        flood.kill()
        monitor.kill()
    stats = json.loads((tmp_path / "out" / ".monitor" / "stats.json").read_text())
    assert stats["rejected"] == {} and stats["frames"] > 0
    assert len(logged(log_path)) == stats["frames"]  # every frame taken in is in the log, whole
    # What was logged but not processed in time is counted, and replay can process it.
    output = " ".join(monitor.output().split())
    unprocessed = re.search(r"stopped before processing (\d+) logged message", output)
    processed = stats["frames"] - (int(unprocessed.group(1)) if unprocessed else 0)
    summary = tmp_path / "out" / "flood" / "summary.json"
    assert processed == (json.loads(summary.read_text())["ranks"]["0"]["messages"] if summary.exists() else 0)


def send_then_stop(tmp_path: Path, push, frames: list[bytes], ready: Callable[[], bool], when: str) -> None:
    """Starts a monitor, sends `frames`, waits for `ready`, then stops it with SIGTERM: it must exit
    0 within the bound; the time the stop took is reported."""
    monitor = MonitorProcess(tmp_path / "out")
    try:
        sender = push(monitor.endpoint)
        for message in frames:
            sender.send(message)
        wait_for(ready, when)
        code, seconds = timed_stop(monitor)
        report(f"stop {when}", seconds)
        assert code == 0, monitor.output()
    finally:
        monitor.kill()


@pytest.mark.slow
def test_sigterm_after_messages_claiming_a_huge_world_stops_in_bounded_time(tmp_path, push):
    world = 1 << 20
    frames = [run_start("wide", 3, world=world)]
    for epoch in range(100):
        frames += one_epoch("wide", epoch, 1 + 3 * epoch, world=world)
    log_path = tmp_path / "out" / "wide" / "messages.mlog"
    started = tmp_path / "out" / "wide" / "labels_mapping.json"  # the pipeline is up and at work on them
    send_then_stop(tmp_path, push, frames, lambda: started.exists() and len(logged(log_path)) == len(frames),
                   "after 301 messages claiming a world of 2**20")
    assert logged(log_path) == frames
    assert json.loads((tmp_path / "out" / "wide" / "summary.json").read_text())["world"] == world
    assert json.loads((tmp_path / "out" / ".monitor" / "stats.json").read_text())["frames"] == len(frames)


@pytest.mark.slow
def test_sigterm_right_after_a_70000_class_run_start_stops_in_bounded_time(tmp_path, push):
    classes = 70_000
    frames = giant_run(classes)
    mapping = tmp_path / "out" / "giant" / "labels_mapping.json"
    send_then_stop(tmp_path, push, frames, mapping.exists, "right after a 70,000-class run_start")  # tables being drawn
    assert logged(tmp_path / "out" / "giant" / "messages.mlog") == frames
    assert json.loads(mapping.read_text())["num_classes"] == classes
    assert json.loads((tmp_path / "out" / "giant" / "summary.json").read_text())["run"] == "giant"


@pytest.mark.slow
def test_a_70000_class_run_holds_back_no_other_run_and_records_at_most_1000_rows_a_table(tmp_path, push):
    classes = 70_000
    monitor = MonitorProcess(tmp_path / "out")
    try:
        sender = push(monitor.endpoint)
        for message in [*giant_run(classes), run_start("small", 3)]:
            sender.send(message)
        small = tmp_path / "out" / "small" / "console.txt"
        # Without a bound on each table, the giant run's four tables held this one back for minutes.
        wait_for(lambda: small.exists() and "Model Information" in small.read_text(), "the small run's tables", 60)
        giant = tmp_path / "out" / "giant" / "console.txt"
        wait_for(lambda: giant.exists() and "Sampler Distribution — epoch 2" in giant.read_text(),
                 "the giant run's tables", 240)
        code, _ = timed_stop(monitor)
        assert code == 0, monitor.output()
    finally:
        monitor.kill()
    text = giant.read_text()
    assert text.count("1000 of 70,000 classes shown") == 4
    assert "every class is in dataset_statistics.json" in " ".join(text.split())
    assert "every class is in epoch_002/sampler_distribution.json" in " ".join(text.split())
    assert sum(line.startswith("│ class ") for line in text.splitlines()) == 4 * 1000
    statistics = json.loads((tmp_path / "out" / "giant" / "dataset_statistics.json").read_text())
    assert len(statistics["classes"]) == classes


def test_a_renderer_stopped_by_a_deadline_abandons_its_pending_jobs_and_kills_its_workers(tmp_path):
    renderer = ProcessRenderer(priority="normal")
    try:
        for lane_job in range(3):
            renderer.submit(Sleep(tmp_path / f"{lane_job}.png", 600))
        renderer.stop_by(time.monotonic() + 1)
        started = time.monotonic()
        abandoned = renderer.close()
    finally:
        renderer.stop_by(time.monotonic())
        renderer.close()
    assert abandoned == 3 and renderer.failures == 0
    assert time.monotonic() - started < STOP_BOUND_S


# ------------------------------------------------------------- the suite itself (item 15)


def test_the_suite_timeout_fires_even_where_a_signal_cannot_interrupt_the_test(tmp_path):
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import signal, time

        def test_hangs():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as a thread stuck in C code would be
            time.sleep(600)
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                             str(tmp_path), "-o", "timeout=3", "-p", "no:cacheprovider", str(tmp_path / "test_hang.py")],
                            capture_output=True, text=True, timeout=STOP_BOUND_S, cwd=tmp_path)
    assert result.returncode != 0
    assert "Timeout" in result.stdout + result.stderr


def test_slow_tests_are_marked_so_the_unit_layer_runs_without_them():
    result = subprocess.run([sys.executable, "-m", "pytest", "--markers", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, timeout=STOP_BOUND_S, cwd=ROOT)
    assert "@pytest.mark.slow:" in result.stdout


@pytest.mark.slow
def test_a_stop_during_start_up_keeps_every_frame_that_arrived_and_writes_the_stats(tmp_path, push):
    """SIGTERM while serve is still importing torch: it does not start the pipeline and the workers
    only to stop them; what arrived is in the log for `monitor replay`, and the numbers are said."""
    with serve_with_torch_held(tmp_path, free_port()) as (proc, gate, ready, out):
        sender = push(ready.read_text().splitlines()[0])
        frames = [run_start("early-stop", 3), *one_epoch("early-stop", 0, 1)]
        for f in frames:
            sender.send(f)
        wait_for(lambda: len(logged(out / "early-stop" / "messages.mlog")) == len(frames), "the frames logged", 60)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        gate.touch()  # torch loads only now, after the stop
        assert proc.wait(STOP_BOUND_S) == 0
    output = " ".join((tmp_path / "monitor.log").read_text().split())
    assert f"stopped before processing {len(frames)} logged message(s) (the stop came during start-up)" in output
    assert "0 run(s) written" in output and "Traceback" not in output
    assert not ready.read_text().endswith("started\n")
    assert logged(out / "early-stop" / "messages.mlog") == frames
    stats = json.loads((out / ".monitor" / "stats.json").read_text())
    assert stats["frames"] == len(frames) and stats["rejected"] == {} and stats["runs"] == {}
