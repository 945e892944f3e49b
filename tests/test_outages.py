"""Monitor outages and offline modes with real trainers and real monitor processes: late start,
kill -9 and restart, SIGSTOP, spool + replay, `monitor watch`, failed runs."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY, MonitorProcess, alive, children_of, free_port, run_tiny, tree_bytes, wait_for
from test_end_to_end import independent_confusion, read_confusion_csv
from trainer_side import Emitter
from trainer_side.msglog import LogFollower, TruncatedLogWarning, iter_frames
from trainer_side import protocol
from trainer_side.protocol import decode




def epoch_ends_in(path: Path) -> int:
    if not path.exists() or path.stat().st_size < 12:  # not there yet, or being created
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedLogWarning)
        return sum(1 for f in iter_frames(path, skip_corrupt=True) if decode(f).kind == "epoch_end")


def assert_confusions_match(run: Path, record: np.lib.npyio.NpzFile, epochs) -> None:
    for epoch in epochs:
        _, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        expected = independent_confusion(record[f"preds_{epoch}"], record[f"labels_{epoch}"], 4)
        np.testing.assert_array_equal(counts, expected, err_msg=f"epoch {epoch}")


def start_tiny(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TINY), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def test_monitor_started_after_the_trainer_gets_what_was_queued(tmp_path):
    port = free_port()
    spool = tmp_path / "spool"
    # The last epoch waits until the monitor listens (a run that ended first would drop what it held).
    monitor_up = tmp_path / "monitor-up"
    trainer = start_tiny("--endpoint", f"tcp://127.0.0.1:{port}", "--run", "late", "--epochs", "3", "--spool",
                         str(spool), "--record", str(tmp_path / "rec.npz"), "--epoch-sleep", "1",
                         "--hold", str(monitor_up), "--hold-at", "2")
    # The monitor starts only once the trainer has finished its first epoch.
    wait_for(lambda: epoch_ends_in(spool / "late" / "rank0.mlog") >= 1, what="the trainer's first epoch")
    monitor = MonitorProcess(tmp_path / "out", port=port)
    assert trainer.poll() is None, "the trainer ended before the monitor started"
    monitor_up.touch()
    out, err = trainer.communicate(timeout=240)
    assert trainer.returncode == 0, err
    assert monitor.stop() == 0, monitor.output()
    run = tmp_path / "out" / "late"
    assert "Dataset Class Distribution" in (run / "console.txt").read_text()
    assert_confusions_match(run, np.load(tmp_path / "rec.rank0.npz"), range(3))
    assert json.loads((run / "summary.json").read_text())["ranks"]["0"]["gaps"] == 0


def test_monitor_killed_and_restarted_continues_the_run_and_reports_the_gap(tmp_path):
    out = tmp_path / "out"
    first = MonitorProcess(out)
    # Epoch 4 waits until the second monitor listens: a trainer that ended the run first would close
    # with no monitor connected and drop what it still held (trainer_side/sinks.py, by design).
    second_up = tmp_path / "second-monitor-up"
    trainer = start_tiny("--endpoint", first.endpoint, "--run", "phoenix", "--epochs", "6", "--record",
                         str(tmp_path / "rec.npz"), "--linger-ms", "60000", "--epoch-sleep", "1.5",
                         "--hold", str(second_up), "--hold-at", "4")
    log = out / "phoenix" / "messages.mlog"
    wait_for(lambda: epoch_ends_in(log) >= 2, what="two epochs in the first monitor")
    # Both render lanes past epoch 0: the confusion matrix and the sample grid of epoch 1 exist.
    wait_for(lambda: all((out / "phoenix" / "epoch_001" / name).exists()
                         for name in ("confusion_matrix.png", "sample_predictions.png")), what="epoch 1 artifacts")
    before = tree_bytes(out / "phoenix" / "epoch_000")
    workers = children_of(first.proc.pid)
    assert len(workers) >= 2  # the render lanes (and multiprocessing's resource tracker)
    first.kill()  # SIGKILL, mid-run
    assert trainer.poll() is None, "the run ended before the kill; the test needs a slower trainer"
    second = MonitorProcess(out, port=first.port)
    second_up.touch()
    _, err = trainer.communicate(timeout=240)
    assert trainer.returncode == 0, err
    assert second.stop() == 0, second.output()
    run = out / "phoenix"
    assert tree_bytes(run / "epoch_000") == before  # earlier artifacts kept as they were
    seqs = sorted(decode(f).seq for f in iter_frames(log))
    missing = (seqs[-1] + 1) - len(set(seqs))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["ranks"]["0"]["gaps"] == missing  # the exact gap, whatever the kill cost
    assert len(seqs) == len(set(seqs))  # the restarted monitor did not log anything twice
    inspect = subprocess.run([sys.executable, "-m", "monitor", "inspect", str(log)], capture_output=True, text=True,
                             cwd=ROOT, env={"COLUMNS": "200", "PATH": ""})
    assert ("none" if missing == 0 else f"{missing} missing") in inspect.stdout
    if missing:
        assert f"skipped {missing}" in second.output() or "skipped" in second.output()
    record = np.load(tmp_path / "rec.rank0.npz")
    received = {decode(f)["epoch"] for f in iter_frames(log) if decode(f).kind == "preds"}
    assert_confusions_match(run, record, sorted(received))
    assert received >= {0, 1, 4, 5}  # everything before the kill and after the restart
    # A SIGKILLed monitor cannot stop its render workers; they notice and leave instead of lingering.
    wait_for(lambda: not any(map(alive, workers)), what="orphaned workers exiting")


def test_frozen_monitor_never_blocks_the_sender_and_every_drop_is_counted(tmp_path):
    monitor = MonitorProcess(tmp_path / "out")
    payload = np.zeros(256 * 1024, dtype=np.uint8)
    emitter = Emitter(monitor.endpoint, run="frozen", queue_size=4, linger_ms=20000)
    emitter.run_start(["a", "b"])
    time.sleep(0.5)
    monitor.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.perf_counter()
        for _ in range(400):  # 100 MB: far more than the queue and the socket buffers hold
            emitter.preds(0, payload, payload)
        elapsed = time.perf_counter() - started
    finally:
        monitor.proc.send_signal(signal.SIGCONT)
    assert emitter.dropped > 0 and emitter.sent + emitter.dropped == 401
    assert elapsed < 30  # generous: a blocking send would hang here until the monitor woke up
    time.sleep(1.0)
    emitter.epoch_end(0)
    emitter.run_end("completed")
    emitter.close()
    assert monitor.stop() == 0
    summary = json.loads((tmp_path / "out" / "frozen" / "summary.json").read_text())
    rank = summary["ranks"]["0"]
    assert rank["gaps"] == emitter.dropped  # every message the emitter dropped shows as a gap
    assert rank["dropped"] == emitter.dropped and rank["messages"] == emitter.sent


def test_training_finishes_while_the_monitor_is_frozen(tmp_path):
    monitor = MonitorProcess(tmp_path / "out")
    monitor.proc.send_signal(signal.SIGSTOP)
    try:
        result = run_tiny("--endpoint", monitor.endpoint, "--run", "stopped", "--epochs", "2", timeout=120)
    finally:
        monitor.proc.send_signal(signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    assert "run stopped finished" in result.stdout
    assert monitor.stop() == 0


def test_spool_replay_gives_the_full_artifact_set_without_any_monitor(tmp_path):
    result = run_tiny("--spool", str(tmp_path / "spool"), "--run", "offline", "--epochs", "2", "--record",
                      str(tmp_path / "rec.npz"))
    assert result.returncode == 0, result.stderr
    log = tmp_path / "spool" / "offline" / "rank0.mlog"
    replay = subprocess.run([sys.executable, "-m", "monitor", "replay", str(log), "--out", str(tmp_path / "out"),
                             "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert replay.returncode == 0, replay.stderr
    run = tmp_path / "out" / "offline"
    assert_confusions_match(run, np.load(tmp_path / "rec.rank0.npz"), range(2))
    for name in ("labels_mapping.json", "model_info.json", "dataset_statistics.json", "history.csv",
                 "training_history/loss_history.png", "training_history/accuracy_history.png",
                 "epoch_001/sample_predictions.png", "epoch_001/sampler_distribution.json", "console.txt"):
        assert (run / name).is_file(), name


def test_watch_follows_a_spool_as_it_grows(tmp_path):
    spool, out = tmp_path / "spool", tmp_path / "out"
    spool.mkdir()
    log = open(tmp_path / "watch.log", "wb")
    watcher = subprocess.Popen([sys.executable, "-m", "monitor", "watch", str(spool), "--out", str(out),
                                "--render-defer", "0"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        trainer = start_tiny("--spool", str(spool), "--run", "watched", "--epochs", "3", "--record",
                             str(tmp_path / "rec.npz"))
        # Live: the first epoch is drawn while the trainer is still running.
        wait_for(lambda: (out / "watched" / "epoch_000" / "confusion_matrix.csv").exists(), what="live epoch 0")
        _, err = trainer.communicate(timeout=240)
        assert trainer.returncode == 0, err
        wait_for(lambda: (out / "watched" / "epoch_002" / "confusion_matrix.csv").exists(), what="last epoch")
    finally:
        watcher.send_signal(signal.SIGTERM)
        code = watcher.wait(60)
        log.close()
    assert code == 0, (tmp_path / "watch.log").read_text()
    assert_confusions_match(out / "watched", np.load(tmp_path / "rec.rank0.npz"), range(3))
    # The run log the watcher wrote replays to the same artifacts.
    subprocess.run([sys.executable, "-m", "monitor", "replay", str(out / "watched" / "messages.mlog"), "--out",
                    str(tmp_path / "again"), "--quiet"], check=True, cwd=ROOT, capture_output=True)
    assert tree_bytes(tmp_path / "again" / "watched") == tree_bytes(out / "watched")


def test_a_failed_run_ends_as_failed_and_keeps_its_artifacts(tmp_path):
    monitor = MonitorProcess(tmp_path / "out")
    result = run_tiny("--endpoint", monitor.endpoint, "--run", "doomed", "--epochs", "3", "--fail-at-epoch", "1")
    assert result.returncode != 0 and "deliberate failure" in result.stderr
    assert monitor.stop() == 0
    run = tmp_path / "out" / "doomed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert any("deliberate failure at epoch 1" in e for e in summary["errors"])
    assert (run / "epoch_000" / "confusion_matrix.png").is_file()
    assert "run doomed failed" in (run / "console.txt").read_text()


def test_appending_after_a_crash_drops_the_partial_record_first(tmp_path):
    from trainer_side.msglog import LogWriter, record_bytes

    path = tmp_path / "crashed.mlog"
    with LogWriter(path) as writer:
        writer.append(b"whole")
    with open(path, "ab") as f:
        f.write(record_bytes(b"half-written")[:7])
    with pytest.warns(TruncatedLogWarning, match="dropping a partial record"):
        writer = LogWriter(path)
    writer.append(b"after")
    writer.close()
    assert list(iter_frames(path)) == [b"whole", b"after"]


def test_a_run_resumed_from_a_checkpoint_continues_its_history(tmp_path):
    monitor = MonitorProcess(tmp_path / "out")
    try:
        first = run_tiny("--endpoint", monitor.endpoint, "--run", "resumed", "--epochs", "2", "--checkpoint-dir",
                         str(tmp_path / "ckpt"), "--record", str(tmp_path / "first.npz"))
        assert first.returncode == 0, first.stderr
        second = run_tiny("--endpoint", monitor.endpoint, "--run", "resumed", "--epochs", "4", "--resume",
                          str(tmp_path / "ckpt" / "last.ckpt"), "--record", str(tmp_path / "second.npz"))
        assert second.returncode == 0, second.stderr
        assert monitor.stop() == 0
    finally:
        monitor.kill()
    run = tmp_path / "out" / "resumed"
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2", "3"]
    assert_confusions_match(run, np.load(tmp_path / "first.rank0.npz"), (0, 1))
    assert_confusions_match(run, np.load(tmp_path / "second.rank0.npz"), (2, 3))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == [0, 1, 2, 3]
    assert summary["ranks"]["0"]["gaps"] == 0  # the second session numbers from 0 again: not a gap


def test_sigterm_right_after_sigcont_always_stops_the_monitor_cleanly(tmp_path):
    # Once, a SIGTERM sent right after a SIGCONT could go unhandled (no thread was woken for it) and
    # the monitor never stopped; a process manager does exactly this to a frozen monitor.
    for attempt in range(3):
        monitor = MonitorProcess(tmp_path / f"out{attempt}")
        monitor.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        monitor.proc.send_signal(signal.SIGCONT)
        monitor.proc.send_signal(signal.SIGTERM)
        try:
            assert monitor.proc.wait(30) == 0, monitor.output()
        finally:
            monitor.kill()


def test_watch_reads_a_spool_once_when_its_folder_is_given_relative(tmp_path, monkeypatch):
    from rich.console import Console

    from monitor.watch import SpoolSource
    from trainer_side.msglog import LogWriter

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spool" / "run").mkdir(parents=True)
    with LogWriter(tmp_path / "spool" / "run" / "rank0.mlog") as writer:
        for seq in range(3):
            writer.append(protocol.encode(protocol.Message("metrics", "run", 0, 1, seq, 1.0 + seq,
                                                           {"epoch": seq, "stage": "val", "step": seq,
                                                            "values": {"x": 1.0}})))
    handled = []
    source = SpoolSource(Path("spool"), Path("out"), Console(file=io.StringIO()), skip_corrupt=False, polling=True)
    try:
        pipeline = types.SimpleNamespace(handle=lambda message, size: handled.append(message.seq))
        # A change event names the file relative to the folder as given; the rescan names it resolved.
        source.poll(pipeline, {Path("spool/run/rank0.mlog")})
        source.poll(pipeline, source.rescan())
    finally:
        source.close()
    assert handled == [0, 1, 2]
    assert source.taken() == "read from 1 spool log(s)"
