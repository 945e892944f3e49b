"""Bounded resources (issue 17, items 7, 8 and 10): the hand-off queue in bytes, confusion counts kept
sparse and freed once drawn, per-tick work that does not grow with a sender's claims, and quotas on
what a sender may claim."""

from __future__ import annotations

import json
import logging
import queue
import threading

import numpy as np
import pytest
import zmq
from rich.console import Console

from conftest import MonitorProcess, wait_for
from monitor.outputs.console import MonitorConsole
from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.pipeline import Pipeline
from monitor.outputs.render.pool import InlineRenderer
from test_end_to_end import independent_confusion, read_confusion_csv
from trainer_side import protocol
from trainer_side.protocol import make_message

MODEL = {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0}


def _message(kind: str, run: str, rank: int, world: int, seq: int, body: dict, sender: str | None = None):
    message = protocol.decode(protocol.encode(make_message(kind, run, rank, world, seq, body, time=0.0)))
    if sender is not None:
        object.__setattr__(message, "sender", sender)
    return message


def _frame(kind: str, run: str, rank: int, world: int, seq: int, body: dict) -> bytes:
    return protocol.encode(make_message(kind, run, rank, world, seq, body, time=0.0))


def _run_start(classes: int) -> dict:
    return {"class_names": [f"c{i}" for i in range(classes)], "normalization": {"mean": [0], "std": [1]},
            "model": MODEL}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pipeline(tmp_path, clock=None, timeout=None) -> tuple[Pipeline, list[str]]:
    notes: list[str] = []
    console = MonitorConsole(Console(file=open("/dev/null", "w")), fresh=True)
    console.note = lambda text, style="yellow": notes.append(text)  # type: ignore[method-assign]
    return Pipeline(tmp_path, InlineRenderer(), console, epoch_timeout=timeout,
                    clock=clock or FakeClock()), notes


# --- item 7a: the hand-off queue ----------------------------------------------------------------


def test_the_handoff_waits_when_full_and_frees_bytes_as_the_reader_takes_them():
    from monitor.ingest.handoff import MESSAGE_OVERHEAD, Handoff

    unit = 2000 - MESSAGE_OVERHEAD  # one message costing 2,000 bytes in all
    handoff = Handoff(capacity=5000)
    assert handoff.put_many([("a", unit), ("b", unit)])  # 4,000 bytes
    done = threading.Event()
    blocked = threading.Thread(target=lambda: (handoff.put_many([("c", unit)]), done.set()), daemon=True)
    blocked.start()
    assert not done.wait(0.5)  # 6,000 would exceed 5,000: the put waits
    assert handoff.queued_bytes == 4000 and handoff.waits == 1
    assert handoff.get(timeout=0) == ("a", unit, False)
    assert not done.wait(0.3)  # the batch is freed only once it is used up
    assert handoff.get(timeout=0) == ("b", unit, False)
    assert handoff.get(timeout=60) == ("c", unit, False)  # freeing [a, b] let the waiting put through
    assert done.wait(60)
    assert handoff.peak_bytes == 4000 and handoff.unqueued == 0


def test_a_batch_larger_than_the_capacity_passes_alone_and_close_ends_a_wait():
    from monitor.ingest.handoff import Handoff

    handoff = Handoff(capacity=100)
    assert handoff.put_many([("big", 10_000)])  # an empty queue takes any batch: no frame is stuck
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(handoff.put_many([("x", 1), ("y", 1)])), daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()
    handoff.close()
    waiter.join(60)
    assert result == [False] and handoff.unqueued == 2  # counted, not dropped silently
    assert handoff.get(timeout=0)[0] == "big"
    with pytest.raises(queue.Empty):
        handoff.get(timeout=0)


def test_a_flood_fills_zeromq_not_the_monitor_and_every_frame_is_logged_and_queued(tmp_path):
    from monitor.ingest.handoff import Handoff
    from monitor.ingest.receiver import Receiver

    receiver = Receiver("tcp://127.0.0.1:0", tmp_path / "out", max_message_bytes=4 << 20)
    receiver.messages = Handoff(capacity=2 << 20)  # nobody reads it while the sender floods
    receiver.start()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 8)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(receiver.endpoint)
    images = np.zeros((4, 128, 128, 3), dtype=np.uint8)  # frames of about 197 kB
    sent = refused = 0
    try:
        for seq in range(400):
            frame = _frame("samples", "flood", 0, 1, seq, {"epoch": seq, "images": images,
                                                           "labels": np.zeros(4, np.uint8),
                                                           "preds": np.zeros(4, np.uint8)})
            try:
                push.send(frame, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                refused += 1  # the sender's own bounded queue is full: it counts the drop
        wait_for(lambda: receiver.messages.waits > 0, "the receive thread to wait on a full queue", 60)
        assert refused > 0
        assert receiver.messages.peak_bytes <= 2 << 20  # a receive batch is at most ~1.2 MB here
        taken = 0
        while taken < sent:  # now read everything: every frame the sender handed over arrives
            receiver.messages.get(timeout=60)
            taken += 1
        assert receiver.intake.frames == sent and receiver.messages.unqueued == 0
    finally:
        push.close(0)
        context.term()
        receiver.stop()
        receiver.join(60)


# --- item 7b: confusion counts, sparse and freed ------------------------------------------------


@pytest.mark.slow
def test_twelve_ranks_of_tiny_preds_keep_a_few_cells_each_and_the_sum_is_exact(tmp_path):
    pipeline, _ = _pipeline(tmp_path)
    classes, world = 1000, 12
    rng = np.random.default_rng(0)
    expected = np.zeros((classes, classes), dtype=np.int64)
    for rank in range(world):
        pipeline.handle(_message("run_start", "wide", rank, world, 0, _run_start(classes)), 100)
        preds = rng.integers(0, classes, 10).astype(np.uint16)
        labels = rng.integers(0, classes, 10).astype(np.uint16)
        pipeline.handle(_message("preds", "wide", rank, world, 1, {"epoch": 0, "step": 1, "preds": preds,
                                                                    "labels": labels}), 100)
        expected += independent_confusion(preds, labels, classes)
    epoch = pipeline.runs["wide"].epochs[0]
    held = sum(counts.nbytes for _, counts in epoch.confusion.values())
    assert held <= world * 10 * 16  # at most one (cell, count) pair of int64 per sample, not 8·C² bytes
    for rank in range(world):
        pipeline.handle(_message("epoch_end", "wide", rank, world, 2, {"epoch": 0, "sent": 2, "dropped": 0}), 100)
    _, counts = read_confusion_csv(tmp_path / "wide" / "epoch_000" / "confusion_matrix.csv")
    np.testing.assert_array_equal(counts, expected)
    assert epoch.released and not epoch.confusion and not epoch.ended_ranks  # freed once drawn with every rank


def test_chunks_of_one_source_add_up_and_another_source_replaces_them(tmp_path):
    pipeline, _ = _pipeline(tmp_path)
    one, two = np.array([0, 1], np.uint8), np.array([1, 1], np.uint8)
    pipeline.handle(_message("run_start", "src", 0, 1, 0, _run_start(2)), 100)

    def preds(seq, step, values, sender):
        pipeline.handle(_message("preds", "src", 0, 1, seq, {"epoch": 0, "step": step, "preds": values,
                                                            "labels": values}, sender=sender), 100)

    run = pipeline.runs["src"]
    preds(1, 5, one, "a")
    preds(2, 5, one, "a")  # a second chunk of the same pass
    assert run.confusion(0).dense().tolist() == [[2, 0], [0, 2]]
    preds(3, 9, two, "a")  # a later validation pass in the same epoch replaces the first
    assert run.confusion(0).dense().tolist() == [[0, 0], [0, 2]]
    preds(4, 9, one, "b")  # the same step from another sender (a resumed training) replaces it too
    assert run.confusion(0).dense().tolist() == [[1, 0], [0, 1]]


def test_late_preds_for_a_freed_epoch_are_refused_and_counted_a_new_sender_redraws_it(tmp_path):
    pipeline, notes = _pipeline(tmp_path)
    labels = np.array([0, 1, 1], np.uint8)
    csv = tmp_path / "late" / "epoch_000" / "confusion_matrix.csv"
    pipeline.handle(_message("run_start", "late", 0, 1, 0, _run_start(2), sender="a"), 100)
    pipeline.handle(_message("preds", "late", 0, 1, 1, {"epoch": 0, "step": 1, "preds": labels, "labels": labels},
                             sender="a"), 100)
    pipeline.handle(_message("epoch_end", "late", 0, 1, 2, {"epoch": 0, "sent": 2, "dropped": 0}, sender="a"), 100)
    drawn = csv.read_bytes()
    pipeline.handle(_message("preds", "late", 0, 1, 3, {"epoch": 0, "step": 1, "preds": labels, "labels": labels},
                             sender="a"), 100)
    pipeline.tick()
    assert pipeline.rejected["late"] == 1 and csv.read_bytes() == drawn
    assert any("already drawn with every rank and freed" in note for note in notes)
    wrong = np.array([1, 0, 0], np.uint8)
    pipeline.handle(_message("preds", "late", 0, 1, 0, {"epoch": 0, "step": 1, "preds": wrong, "labels": labels},
                             sender="b"), 100)
    pipeline.handle(_message("epoch_end", "late", 0, 1, 1, {"epoch": 0, "sent": 1, "dropped": 0}, sender="b"), 100)
    _, counts = read_confusion_csv(csv)
    assert counts.tolist() == [[0, 1], [2, 0]]


# --- item 8: per-tick work does not grow with the claimed world ---------------------------------


class CountingSet(set):
    lookups = 0

    def __contains__(self, item) -> bool:
        CountingSet.lookups += 1
        return super().__contains__(item)


def test_a_world_of_a_million_ranks_costs_a_tick_a_few_lookups_and_the_warning_counts_the_rest(tmp_path):
    clock = FakeClock()
    pipeline, notes = _pipeline(tmp_path, clock, timeout=30.0)
    world = 1 << 20
    labels = np.array([0, 1], np.uint8)
    pipeline.handle(_message("run_start", "huge", 0, world, 0, _run_start(2)), 100)
    run = pipeline.runs["huge"]
    for epoch in range(3):
        pipeline.handle(_message("preds", "huge", 0, world, 1 + 2 * epoch,
                                 {"epoch": epoch, "step": epoch, "preds": labels, "labels": labels}), 100)
        pipeline.handle(_message("epoch_end", "huge", 0, world, 2 + 2 * epoch,
                                 {"epoch": epoch, "sent": 1, "dropped": 0}), 100)
        run.epochs[epoch].ended_ranks = CountingSet(run.epochs[epoch].ended_ranks)
    CountingSet.lookups = 0
    for _ in range(5):
        pipeline.tick()
    assert CountingSet.lookups == 0  # waiting epochs are checked by count, no rank is looked at
    clock.now += 31.0
    pipeline.tick()
    assert CountingSet.lookups <= 3 * 4  # naming the first three missing ranks of each epoch
    assert run.dirty == set() and run.rendered == {0, 1, 2}
    assert [n for n in notes if "without rank(s)" in n] == [
        f"run huge: rendering epoch {e} without rank(s) 1, 2, 3 and 1,048,572 more (no epoch_end from them)"
        for e in range(3)]
    CountingSet.lookups = 0
    for _ in range(5):
        pipeline.tick()
    assert CountingSet.lookups == 0  # nothing is dirty: nothing is looked at


def test_a_normal_runs_artifacts_appear_beside_a_sender_claiming_a_world_of_a_million(tmp_path):
    monitor = MonitorProcess(tmp_path / "out")
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        push.connect(monitor.endpoint)
        labels = np.array([0, 1, 1], np.uint8)
        huge, seq = 1 << 20, 0
        push.send(_frame("run_start", "huge", 0, huge, seq, _run_start(2)))
        for epoch in range(20):
            push.send(_frame("preds", "huge", 0, huge, seq + 1, {"epoch": epoch, "step": epoch, "preds": labels,
                                                                  "labels": labels}))
            push.send(_frame("epoch_end", "huge", 0, huge, seq + 2, {"epoch": epoch, "sent": 0, "dropped": 0}))
            seq += 2
        push.send(_frame("run_start", "normal", 0, 1, 0, _run_start(2)))
        push.send(_frame("preds", "normal", 0, 1, 1, {"epoch": 0, "step": 0, "preds": labels, "labels": labels}))
        push.send(_frame("epoch_end", "normal", 0, 1, 2, {"epoch": 0, "sent": 2, "dropped": 0}))
        csv = tmp_path / "out" / "normal" / "epoch_000" / "confusion_matrix.csv"
        wait_for(csv.exists, "the normal run's confusion matrix", 120)
        assert read_confusion_csv(csv)[1].tolist() == [[1, 0], [0, 2]]
        assert monitor.stop() == 0
    finally:
        push.close(0)
        context.term()
        monitor.kill()


# --- items 7c and 10: quotas --------------------------------------------------------------------


def _intake(tmp_path, **limits) -> Intake:
    from monitor.ingest.quotas import Limits, Quotas

    return Intake(LogBook(tmp_path, flush_every=1), Quotas(Limits(**limits)))


def test_runs_over_the_limit_are_refused_unlogged_counted_and_told_once(tmp_path, caplog):
    intake = _intake(tmp_path, max_runs=2)
    frames = [_frame("metrics", f"r{i}", 0, 1, seq, {"epoch": 0, "stage": "val", "values": {"x": 1.0}, "step": 0})
              for seq in range(2) for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="monitor"):
        logged = intake.accept_many(frames)
    assert [(m.run, m.seq) for m, _ in logged] == [("r0", 0), ("r1", 0), ("r0", 1), ("r1", 1)]
    assert intake.rejected == {"quota-runs": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0", "r1"]
    told = [r.getMessage() for r in caplog.records if "limit" in r.getMessage()]
    assert len(told) == 1 and "runs per monitor (2)" in told[0] and "--max-runs" in told[0]


def test_bytes_per_run_and_per_monitor_are_capped_and_each_is_counted_under_its_reason(tmp_path, caplog):
    frame = _frame("metrics", "a", 0, 1, 0, {"epoch": 0, "stage": "val", "values": {"x": 1.0}, "step": 0})
    size = len(frame)
    intake = _intake(tmp_path, max_run_bytes=3 * size, max_total_bytes=5 * size)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for run in ("a", "b"):
            for seq in range(4):
                intake.accept(_frame("metrics", run, 0, 1, seq, {"epoch": 0, "stage": "val", "values": {"x": 1.0},
                                                                  "step": 0}))
    assert intake.rejected == {"quota-run-bytes": 1, "quota-total-bytes": 2}
    told = [r.getMessage() for r in caplog.records if "limit" in r.getMessage()]
    assert len(told) == 2 and "--max-run-gb" in told[0] and "--max-total-gb" in told[1]


def test_classes_and_ranks_are_capped_and_a_70000_class_run_start_passes_by_default(tmp_path):
    intake = _intake(tmp_path, max_classes=20_000, max_ranks=2)
    assert intake.accept(_frame("run_start", "many", 0, 8, 0, _run_start(20_001))) is None
    for rank in range(3):
        intake.accept(_frame("run_start", "ranks", rank, 8, 0, _run_start(2)))
    assert intake.rejected == {"quota-classes": 1, "quota-ranks": 1}
    default = _intake(tmp_path / "default")
    assert default.accept(_frame("run_start", "big", 0, 1, 0, _run_start(70_000))) is not None


def test_serve_refuses_a_run_over_max_runs_and_says_which_flag_raises_it(tmp_path):
    monitor = MonitorProcess(tmp_path / "out", "--max-runs", "1")
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        push.connect(monitor.endpoint)
        for run in ("first", "second", "third"):
            push.send(_frame("run_start", run, 0, 1, 0, _run_start(2)))
        wait_for(lambda: (tmp_path / "out" / "first" / "labels_mapping.json").exists(), "the first run", 120)
        assert monitor.stop() == 0
    finally:
        push.close(0)
        context.term()
        monitor.kill()
    stats = json.loads((tmp_path / "out" / ".monitor" / "stats.json").read_text())
    assert stats["rejected"] == {"quota-runs": 2} and list(stats["runs"]) == ["first"]
    assert not (tmp_path / "out" / "second").exists()
    lines = [line for line in monitor.output().splitlines() if "--max-runs" in line]
    assert len(lines) == 1, monitor.output()


def test_a_flood_of_epoch_ends_from_many_ranks_rewrites_summary_json_once_per_second(tmp_path, monkeypatch):
    import monitor.outputs.summary as summary_module

    written: list[int] = []
    real = summary_module.write_json

    def counting(path, payload):
        if path.name == "summary.json":
            written.append(len(payload["ranks"]))
        real(path, payload)

    monkeypatch.setattr(summary_module, "write_json", counting)
    clock = FakeClock()
    pipeline, _ = _pipeline(tmp_path, clock, timeout=30.0)
    world = 1000
    pipeline.handle(_message("run_start", "many", 0, world, 0, _run_start(2)), 100)
    for rank in range(world):
        pipeline.handle(_message("epoch_end", "many", rank, world, 1, {"epoch": 0, "sent": 1, "dropped": 0}), 100)
    assert written == [1]  # at run start; the epoch ends within the same second wait for a tick
    pipeline.tick()
    assert written == [1]
    clock.now += 1.0
    pipeline.tick()
    assert written == [1, world]
    pipeline.tick()
    assert written == [1, world]  # nothing new to write
    pipeline.finish()
    assert written == [1, world, world]
