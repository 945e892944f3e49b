"""Delivery you can trust (issue 17, items 1, 4, 5 and 6): every message is either confirmed in the
monitor's log or counted and reported as not delivered, with the spool that holds it; CURVE refusals
are said on both sides; one emitter instance is one sender, so resumes replace and collisions are
refused; a silent run is marked stale, and a restarted monitor repairs what an earlier one left.

Each outage prints its figures (messages sent, in the monitor's log, reported as not delivered)."""

from __future__ import annotations

import json
import logging
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from conftest import free_port, wait_for
from monitor.outputs.console import MonitorConsole
from monitor.pipeline import Pipeline
from monitor.outputs.render.pool import InlineRenderer
from monitor.replay import replay
from test_end_to_end import read_confusion_csv
from trainer_side import Emitter, protocol
from trainer_side.msglog import HEADER_SIZE, TruncatedLogWarning, iter_frames
from trainer_side.protocol import make_message

CLASSES = ["cat", "dog", "owl"]
MODEL = {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0}


def frames_of(path: Path, sender: str | None = None) -> list[protocol.Message]:
    """The messages of a log (of one sender, if given); a missing log, or one whose header the monitor
    has not written yet, has none."""
    if not path.exists() or path.stat().st_size < HEADER_SIZE:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedLogWarning)
        messages = [protocol.decode(f) for f in iter_frames(path, skip_corrupt=True)]
    return [m for m in messages if sender is None or m.sender == sender]


def send_epochs(emitter: Emitter, epochs: range, *, start: bool = True, end: bool = False) -> None:
    """run_start (if `start`), then per epoch one preds, one metrics and the epoch_end; run_end if `end`."""
    if start:
        emitter.run_start(CLASSES)
    for epoch in epochs:
        labels = np.arange(30, dtype=np.int64) % 3
        emitter.preds(epoch, labels.copy(), labels, step=epoch)
        emitter.metrics(epoch, "val", {"val/loss": 1.0 / (epoch + 1)}, step=epoch)
        emitter.epoch_end(epoch)
    if end:
        emitter.run_end("completed")


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trainer_side" and r.levelno >= logging.WARNING]


def frozen(pid: int) -> bool:
    """Every thread of the process is stopped (state T), not only signalled."""
    states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in Path(f"/proc/{pid}/task").iterdir()]
    return all(state == "T" for state in states)


def figures(what: str, sent: int, logged: int, reported: int) -> None:
    print(f"\n{what}: sent {sent}, in the monitor's log {logged}, reported as not delivered {reported}")


# --- item 1: a trainer that ends while the monitor is absent, starting, dead or frozen ------------


@pytest.mark.slow
def test_no_monitor_at_all_close_does_not_wait_and_names_the_spool_that_rebuilds_the_run(tmp_path, caplog):
    spool = tmp_path / "spool"
    # A linger the test would notice: a close that waited for receipts would take a minute.
    emitter = Emitter(f"tcp://127.0.0.1:{free_port()}", run="alone", spool=spool, linger_ms=60_000)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        send_epochs(emitter, range(2), end=True)
        report = emitter.close()
    figures("no monitor", report.messages, 0, report.undelivered)
    assert (report.messages, report.dropped, report.confirmed, report.undelivered) == (8, 0, 0, 8)
    assert report.connected is False and emitter.receipt_polls == 0  # the receipt wait was skipped
    [line] = warnings_of(caplog)  # one line: where the run is and how to ingest it
    assert "no monitor ever connected" in line and "holds all 8 messages" in line
    assert f"monitor replay {spool / 'alone'}/rank*.mlog --out outputs" in line
    assert f"monitor watch {spool} --out outputs" in line
    # The recovery the line names works: the spool holds every message and rebuilds the run.
    assert [m.seq for m in frames_of(report.spool)] == list(range(8))
    replay([report.spool], tmp_path / "out", skip_corrupt=False, console=Console(file=open("/dev/null", "w")))
    assert (tmp_path / "out" / "alone" / "epoch_001" / "confusion_matrix.csv").exists()


def test_without_a_spool_close_still_waits_and_says_the_messages_are_lost(tmp_path, caplog):
    emitter = Emitter(f"tcp://127.0.0.1:{free_port()}", run="nospool", spool=False, linger_ms=300)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        send_epochs(emitter, range(1))
        report = emitter.close()
    assert report.spool is None and report.undelivered == 4 and report.connected is False
    assert emitter.receipt_polls >= 1  # nothing else holds them: a monitor starting now still could
    assert "No spool holds them (spool=False), so they are lost." in " ".join(warnings_of(caplog))


def test_a_monitor_that_starts_after_the_trainer_sent_everything_confirms_it_all(tmp_path, caplog, start_monitor):
    """The monitor starts only after the trainer has sent everything; once it has connected, close()
    waits (bounded by linger_ms) until the monitor's receipt covers every message."""
    port = free_port()
    emitter = Emitter(f"tcp://127.0.0.1:{port}", run="early", spool=tmp_path / "spool", linger_ms=120_000)
    send_epochs(emitter, range(1), end=True)
    monitor = start_monitor(tmp_path / "out", port=port)
    socket = emitter._socket
    wait_for(lambda: socket.take_refusal() is None and socket.ever_connected, "the trainer's connection", timeout=60)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        report = emitter.close()
    logged = frames_of(tmp_path / "out" / "early" / "messages.mlog", emitter.sender)
    figures("monitor starting", report.messages, len(logged), report.undelivered)
    assert (report.messages, report.confirmed, report.undelivered, report.connected) == (5, 5, 0, True)
    assert [m.seq for m in logged] == list(range(5))
    assert not warnings_of(caplog)
    assert monitor.stop() == 0, monitor.output()


def test_monitor_killed_mid_run_every_lost_message_is_counted_and_a_restart_repairs_the_run(tmp_path, caplog,
                                                                                               start_monitor):
    out, spool = tmp_path / "out", tmp_path / "spool"
    monitor = start_monitor(out)
    emitter = Emitter(monitor.endpoint, run="killed", spool=spool, linger_ms=1000)
    send_epochs(emitter, range(5))  # 1 + 5 x 3 = 16 messages
    log = out / "killed" / "messages.mlog"
    wait_for(lambda: len(frames_of(log)) == 16, "the first five epochs in the monitor's log", timeout=120)
    monitor.stop(signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        send_epochs(emitter, range(5, 12), start=False, end=True)  # 22 more, to nobody
        report = emitter.close()
    logged = len(frames_of(log, emitter.sender))
    figures("monitor killed -9 at epoch 5 of 12", report.messages, logged, report.undelivered)
    assert report.messages == 38 and logged == 16
    # Nothing lost without a number: what is not in the log is at most what the warning reports.
    assert report.messages - logged <= report.undelivered == report.messages - report.confirmed
    assert report.confirmed <= logged
    assert report.connected is True and emitter.receipt_polls >= 1  # a monitor had connected: close waited
    assert f"{report.undelivered} of 38 messages are not confirmed" in " ".join(warnings_of(caplog))

    # A restarted monitor re-reads the run it left unfinished: epochs drawn, then marked stale.
    restarted = start_monitor(out, "--stale-after", "1", "--epoch-timeout", "1")
    summary = out / "killed" / "summary.json"
    wait_for(lambda: summary.exists() and json.loads(summary.read_text())["status"] == "stale",
             "the unfinished run marked stale", timeout=120)
    assert json.loads(summary.read_text())["epochs"] == [0, 1, 2, 3, 4]
    assert restarted.stop() == 0, restarted.output()
    # The spool named in the warning rebuilds all twelve epochs.
    replay([report.spool], tmp_path / "rebuilt", skip_corrupt=False, console=Console(file=open("/dev/null", "w")))
    rebuilt = json.loads((tmp_path / "rebuilt" / "killed" / "summary.json").read_text())
    assert rebuilt["status"] == "completed" and rebuilt["epochs"] == list(range(12))


def test_monitor_frozen_while_training_ends_the_unconfirmed_messages_are_reported(tmp_path, caplog, start_monitor):
    out = tmp_path / "out"
    monitor = start_monitor(out)
    emitter = Emitter(monitor.endpoint, run="frozen", spool=tmp_path / "spool", linger_ms=1500)
    try:
        send_epochs(emitter, range(2))
        log = out / "frozen" / "messages.mlog"
        wait_for(lambda: len(frames_of(log)) == 7, "the first epochs in the monitor's log", timeout=120)
        monitor.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: frozen(monitor.proc.pid), "every thread of the monitor stopped", timeout=60)
        with caplog.at_level(logging.WARNING, logger="trainer_side"):
            send_epochs(emitter, range(2, 40), start=False, end=True)
            report = emitter.close()
    finally:
        monitor.proc.send_signal(signal.SIGCONT)
    assert monitor.stop() == 0, monitor.output()
    logged = len(frames_of(out / "frozen" / "messages.mlog", emitter.sender))
    figures("monitor frozen (SIGSTOP) while training ends", report.messages, logged, report.undelivered)
    assert report.messages == 1 + 40 * 3 + 1 and report.undelivered > 0
    assert report.messages - logged <= report.undelivered
    assert f"{report.undelivered} of {report.messages} messages are not confirmed" in " ".join(warnings_of(caplog))
    assert len(frames_of(report.spool)) == report.messages


def test_a_spool_that_cannot_be_written_costs_the_spool_only_and_says_why(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    emitter = Emitter(f"tcp://127.0.0.1:{free_port()}", run="nospace", spool=blocker, linger_ms=100)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        send_epochs(emitter, range(1), end=True)
        report = emitter.close()
    assert report.messages == 5 and report.spool_missed == 5 and report.undelivered == 5
    text = " ".join(warnings_of(caplog))
    assert "monitoring turned off" not in text  # the socket side went on
    assert "5 messages were not written to the spool" in text and "cannot write" in text


# --- item 4: CURVE refusals are said on both sides -------------------------------------------------


def test_a_refused_curve_handshake_is_warned_on_the_trainer_and_logged_on_the_monitor(tmp_path, caplog,
                                                                                        start_monitor):
    import zmq
    import zmq.auth

    from monitor.cli import main

    keys = tmp_path / "keys"
    for name in ("server", "alice", "mallory"):
        assert main(["keygen", str(keys), "--name", name]) == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    monitor = start_monitor(tmp_path / "out", "--curve-secret", str(keys / "server.key_secret"),
                             "--curve-clients", str(allowed))
    server_public, _ = zmq.auth.load_certificate(keys / "server.key_secret")
    mallory = Emitter(monitor.endpoint, run="mallory", spool=False, linger_ms=3000, server_key=server_public,
                      client_keys=zmq.auth.load_certificate(keys / "mallory.key_secret"))
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        send_epochs(mallory, range(1), end=True)
        report = mallory.close()
    assert monitor.stop() == 0
    output = monitor.output()
    figures("CURVE key not allowed", report.messages, 0, report.undelivered)
    assert report.undelivered == report.messages == 5
    assert report.refusal == "the monitor refused this trainer's CURVE key"
    assert any(report.refusal in w and "server_key/client_keys" in w for w in warnings_of(caplog))
    public = zmq.auth.load_certificate(keys / "mallory.key_secret")[0].decode()
    assert "refused a CURVE handshake" in output and public in output
    assert json.loads((tmp_path / "out" / ".monitor" / "stats.json").read_text())["curve_handshakes_refused"] >= 1


# --- item 5: one emitter instance is one sender -----------------------------------------------------


def message(kind: str, run: str, seq: int, sender: str, body: dict, rank: int = 0) -> protocol.Message:
    return protocol.decode(protocol.encode(make_message(kind, run, rank, 1, seq, body, time=100.0 + seq,
                                                        sender=sender)))


def start_body(classes: list[str]) -> dict:
    return {"class_names": classes, "normalization": {"mean": [0], "std": [1]}, "model": MODEL}


def epoch_messages(run: str, sender: str, epochs: range, first_seq: int, correct: bool = True):
    """preds (30 samples, all right or all wrong) and epoch_end for each epoch, numbered on from first_seq."""
    seq = first_seq
    for epoch in epochs:
        labels = np.arange(30, dtype=np.uint8) % 3
        preds = labels.copy() if correct else (labels + 1) % 3
        yield message("preds", run, seq, sender, {"epoch": epoch, "step": epoch, "preds": preds, "labels": labels})
        yield message("epoch_end", run, seq + 1, sender, {"epoch": epoch, "sent": seq + 1, "dropped": 0})
        seq += 2


def pipeline_for(tmp_path: Path) -> tuple[Pipeline, list[str]]:
    notes: list[str] = []
    console = MonitorConsole(Console(file=open("/dev/null", "w")), fresh=True)
    console.note = lambda text, style="yellow": notes.append(text)  # type: ignore[method-assign]
    return Pipeline(tmp_path, InlineRenderer(), console, epoch_timeout=None), notes


def feed(pipeline: Pipeline, messages) -> None:
    for m in messages:
        pipeline.handle(m, 100)


def matrix_total(tmp_path: Path, run: str, epoch: int) -> int:
    _, counts = read_confusion_csv(tmp_path / run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
    return int(np.asarray(counts).sum())


def test_two_trainings_under_one_run_id_are_not_mixed(tmp_path):
    pipeline, notes = pipeline_for(tmp_path)
    feed(pipeline, [message("run_start", "same", 0, "aaaa", start_body(CLASSES))])
    feed(pipeline, epoch_messages("same", "aaaa", range(1), 1))
    feed(pipeline, [message("run_start", "same", 0, "bbbb", start_body(CLASSES))])  # the second training
    # The first keeps sending: it is refused, and its epoch does not add to the second's.
    feed(pipeline, epoch_messages("same", "aaaa", range(1, 2), 3, correct=False))
    feed(pipeline, epoch_messages("same", "bbbb", range(2), 1))
    pipeline.finish()
    assert matrix_total(tmp_path, "same", 1) == 30  # not 60
    summary = json.loads((tmp_path / "same" / "summary.json").read_text())
    assert pipeline.rejected["sender"] == 2
    assert len(summary["refused_senders"]) == 1 and "two trainings" in summary["refused_senders"][0]
    assert sum("two trainings are sending under this run id" in n for n in notes) == 1  # said once


@pytest.mark.slow
def test_a_resumed_emitter_that_repeats_epochs_replaces_them(tmp_path):
    pipeline, _ = pipeline_for(tmp_path)
    feed(pipeline, [message("run_start", "resumed", 0, "aaaa", start_body(CLASSES))])
    feed(pipeline, epoch_messages("resumed", "aaaa", range(3), 1, correct=False))  # then the trainer dies
    feed(pipeline, [message("run_start", "resumed", 0, "bbbb", start_body(CLASSES))])
    feed(pipeline, epoch_messages("resumed", "bbbb", range(1, 4), 1))  # resumes from epoch 1
    feed(pipeline, [message("run_end", "resumed", 7, "bbbb", {"status": "completed", "error": None, "sent": 7,
                                                              "dropped": 0})])
    pipeline.finish()
    for epoch in (1, 2, 3):
        _, counts = read_confusion_csv(tmp_path / "resumed" / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        counts = np.asarray(counts)
        assert counts.sum() == 30 and np.trace(counts) == 30, f"epoch {epoch}"  # the resumed pass only
    assert matrix_total(tmp_path, "resumed", 0) == 30
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["ranks"]["0"]["gaps"] == 0
    assert summary["refused_senders"] == []


def test_a_finished_run_id_reused_with_other_classes_is_refused_not_merged(tmp_path):
    pipeline, notes = pipeline_for(tmp_path)
    feed(pipeline, [message("run_start", "reused", 0, "aaaa", start_body(CLASSES))])
    feed(pipeline, epoch_messages("reused", "aaaa", range(1), 1))
    feed(pipeline, [message("run_end", "reused", 3, "aaaa", {"status": "completed", "error": None, "sent": 3,
                                                             "dropped": 0})])
    feed(pipeline, [message("run_start", "reused", 0, "cccc", start_body(["a", "b", "c", "d", "e"]))])
    feed(pipeline, epoch_messages("reused", "cccc", range(1), 1))
    pipeline.finish()
    labels = json.loads((tmp_path / "reused" / "labels_mapping.json").read_text())
    assert labels["num_classes"] == 3
    summary = json.loads((tmp_path / "reused" / "summary.json").read_text())
    assert summary["status"] == "completed" and "5 other ones" in summary["refused_senders"][0]
    assert any("Start the new training under a new run id" in n for n in notes)
    assert matrix_total(tmp_path, "reused", 0) == 30


def test_inspect_and_replay_agree_on_gaps_across_a_resume(tmp_path):
    from monitor.loginspect import inspect_log
    from trainer_side.msglog import LogWriter

    log = tmp_path / "messages.mlog"

    writer = LogWriter(log)
    first = [message("run_start", "g", 0, "aaaa", start_body(CLASSES)), *epoch_messages("g", "aaaa", range(2), 1)]
    del first[2]  # seq 2 of the first sender is lost
    second = [message("run_start", "g", 0, "bbbb", start_body(CLASSES)), *epoch_messages("g", "bbbb", range(2), 1)]
    for m in first + second:
        writer.append(protocol.encode(m))
    writer.close()
    replay([log], tmp_path / "out", skip_corrupt=False, console=Console(file=open("/dev/null", "w")))
    replayed = json.loads((tmp_path / "out" / "g" / "summary.json").read_text())["ranks"]["0"]["gaps"]
    report = inspect_log(log, skip_corrupt=False)
    inspected = sum(rank.sequence.missing for rank in report.ranks.values())
    assert replayed == inspected == 1


# --- item 6: a run whose trainer vanished ---------------------------------------------------------


def test_a_silent_unfinished_run_is_marked_stale_and_running_again_when_it_speaks(tmp_path):
    now = [1000.0]
    notes: list[str] = []
    console = MonitorConsole(Console(file=open("/dev/null", "w")), fresh=True)
    console.note = lambda text, style="yellow": notes.append(text)  # type: ignore[method-assign]
    pipeline = Pipeline(tmp_path, InlineRenderer(), console, epoch_timeout=None, stale_after=60.0,
                        clock=lambda: now[0])
    feed(pipeline, [message("run_start", "quiet", 0, "aaaa", start_body(CLASSES))])
    feed(pipeline, epoch_messages("quiet", "aaaa", range(1), 1))
    status = lambda: json.loads((tmp_path / "quiet" / "summary.json").read_text())["status"]  # noqa: E731
    now[0] += 59
    pipeline.tick()
    assert status() == "running"
    now[0] += 2
    pipeline.tick()
    assert status() == "stale" and any("marked stale" in n for n in notes)
    feed(pipeline, epoch_messages("quiet", "aaaa", range(1, 2), 3))
    pipeline.tick()
    assert pipeline.runs["quiet"].status == "running"
    feed(pipeline, [message("run_end", "quiet", 5, "aaaa", {"status": "completed", "error": None, "sent": 5,
                                                            "dropped": 0})])
    now[0] += 1000
    pipeline.tick()
    assert status() == "completed"  # a finished run never goes stale


class BusyMachineRenderer(InlineRenderer):
    """The process renderer's deferral as the pipeline sees it: `busy` while a trainer keeps the CPUs."""

    busy = True
    defer_s = 30.0


def test_ready_epochs_wait_while_the_trainer_keeps_the_cpus_busy_and_nothing_is_lost(tmp_path):
    now = [0.0]
    console = MonitorConsole(Console(file=open("/dev/null", "w")), fresh=True)
    renderer = BusyMachineRenderer()
    pipeline = Pipeline(tmp_path, renderer, console, epoch_timeout=None, clock=lambda: now[0])
    csv = [tmp_path / "busy" / f"epoch_{e:03d}" / "confusion_matrix.csv" for e in range(3)]
    feed(pipeline, [message("run_start", "busy", 0, "aaaa", start_body(CLASSES))])
    feed(pipeline, epoch_messages("busy", "aaaa", range(1), 1))
    pipeline.tick()
    assert not csv[0].exists() and not csv[0].with_suffix(".png").exists()  # files and figures held while busy
    renderer.busy = False
    pipeline.tick()
    assert csv[0].exists() and matrix_total(tmp_path, "busy", 0) == 30  # a core idle: written at once
    renderer.busy = True
    feed(pipeline, epoch_messages("busy", "aaaa", range(1, 2), 3))
    now[0] += 29.0
    pipeline.tick()
    assert not csv[1].exists()
    now[0] += 1.5
    pipeline.tick()
    assert csv[1].exists() and matrix_total(tmp_path, "busy", 1) == 30  # never longer than defer_s
    feed(pipeline, epoch_messages("busy", "aaaa", range(2, 3), 5))
    assert not csv[2].exists()
    feed(pipeline, [message("run_end", "busy", 7, "aaaa", {"status": "completed", "error": None, "sent": 7,
                                                          "dropped": 0})])
    assert csv[2].exists() and matrix_total(tmp_path, "busy", 2) == 30  # the run's end waits for nothing
    feed(pipeline, [message("run_start", "cut", 0, "bbbb", start_body(CLASSES))])
    feed(pipeline, epoch_messages("cut", "bbbb", range(1), 1))
    cut = tmp_path / "cut" / "epoch_000" / "confusion_matrix.csv"
    assert not cut.exists()
    pipeline.finish()  # the stop: what is held is drawn, busy or not
    assert cut.exists() and cut.with_suffix(".png").exists() and matrix_total(tmp_path, "cut", 0) == 30
    summary = json.loads((tmp_path / "busy" / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["epochs"]) == 3
