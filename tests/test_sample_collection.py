"""The monitor's per-sample collection (protocol 1.3): every rank's ids merged once per epoch and
handed to the run's sample history; bad ids, names and repeats refused with a counted reason."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.aggregates import sample_ids
from monitor.aggregates.sample_names import NAMES_OVER_LIMIT, NAMES_TOO_LONG, NamesTable
from monitor.aggregates.run_samples import MAX_THUMBNAILS_BY_ID, NO_IDS_BEFORE_1_3
from monitor.aggregates.runstate import RejectedMessage, RunState
from trainer_side.protocol import IdRange, Message, decode, encode, make_message

U1 = np.uint8


def _wire(kind: str, rank: int, world: int, body: dict, sender: str | None = None,
          version: tuple[int, int] | None = None) -> Message:
    message = make_message(kind, "r", rank, world, 1, body, sender=f"s{rank}" if sender is None else sender)
    if version is not None:
        message = Message(message.kind, message.run, message.rank, message.world, message.seq, message.time,
                          message.body, version=version, sender=message.sender)
    return decode(encode(message))


def _run(world: int = 2, val_size: int | None = 10, train_size: int | None = None) -> RunState:
    run = RunState("r", world)
    run.on_run_start(_wire("run_start", 0, world, {
        "class_names": ["a", "b", "c"], "normalization": {"mean": [0.5], "std": [0.5]},
        "model": {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
        "train_targets": None, "class_counts": None, "sampler": None, "hparams": None,
        "val_size": val_size, "train_size": train_size}))
    return run


def _preds(run: RunState, rank: int, ids, preds, labels, *, epoch: int = 0, step: int = 5,
           label_confidence=None, version=None) -> None:
    body = {"epoch": epoch, "step": step, "preds": np.asarray(preds, U1), "labels": np.asarray(labels, U1),
            "confidence": np.linspace(0.5, 1, len(preds)).astype(np.float16)}
    if ids is not None:
        body["ids"] = ids if isinstance(ids, IdRange) else np.asarray(ids, np.uint32)
    if label_confidence is not None:
        body["label_confidence"] = np.asarray(label_confidence, np.float16)
    run.on_preds(_wire("preds", rank, run.world, body, version=version))


def test_ranks_merge_by_id_and_a_padded_repeat_keeps_the_first_prediction():
    run = _run()
    # DistributedSampler without shuffling over 5 samples on 2 ranks: rank 1 repeats sample 0.
    _preds(run, 1, [1, 3, 0], [1, 0, 2], [1, 1, 0], label_confidence=[0.25, 0.5, 0.75])
    _preds(run, 0, [0, 2, 4], [0, 2, 2], [0, 2, 1], label_confidence=[1.0, 0.5, 0.125])
    run.drawn(0)
    got = run.samples.latest
    assert got.epoch == 0
    assert got.ids.tolist() == [0, 1, 2, 3, 4] and got.ids.dtype == np.int64
    assert got.labels.tolist() == [0, 1, 2, 1, 1]
    assert got.preds.tolist() == [0, 1, 2, 0, 2]  # sample 0: rank 0's prediction, not rank 1's repeat
    assert got.label_confidence.tolist() == [1.0, 0.25, 0.5, 0.5, 0.125]
    assert got.label_confidence.dtype == np.float32 and got.confidence.dtype == np.float32
    assert run.sample_problems == {sample_ids.DUPLICATE_IDS: 1}
    assert run.summary()["sample_problems"] == {"duplicate_ids": 1}
    assert len(run.take_sample_notes()) == 1 and run.take_sample_notes() == []


def test_ranges_cost_nothing_and_chunks_of_one_pass_add_up():
    run = _run(world=1)
    _preds(run, 0, IdRange(0, 3), [0, 1, 2], [0, 1, 1])
    _preds(run, 0, IdRange(3, 2), [2, 2], [2, 0])
    run.drawn(0)
    assert run.samples.latest.ids.tolist() == [0, 1, 2, 3, 4]
    assert run.samples.latest.preds.tolist() == [0, 1, 2, 2, 2]
    assert run.samples.latest.label_confidence is None  # no sender field, no array
    assert not run.sample_problems


def test_a_new_validation_pass_replaces_the_ranks_earlier_ids():
    run = _run(world=1)
    _preds(run, 0, [0, 1], [0, 0], [0, 1], step=5)
    _preds(run, 0, [2, 3], [1, 1], [1, 1], step=9)
    run.drawn(0)
    assert run.samples.latest.ids.tolist() == [2, 3]


def test_an_id_with_two_labels_refuses_the_epochs_samples_but_not_its_counts():
    run = _run()
    _preds(run, 0, [0, 1], [0, 0], [0, 1])
    _preds(run, 1, [1, 2], [0, 0], [2, 0])
    run.drawn(0)
    assert run.samples is None and run.sample_problems == {sample_ids.CONFLICTING_LABELS: 1}
    assert int(run.confusion(0).values.sum()) == 4
    assert "sample id 1 came with two different labels" in run.take_sample_notes()[0]


def test_ids_beyond_val_size_are_refused_with_their_reason():
    run = _run(world=1, val_size=3)
    _preds(run, 0, [0, 1, 3], [0, 0, 0], [0, 1, 2])
    run.drawn(0)
    assert run.samples is None and run.sample_problems == {sample_ids.IDS_OUT_OF_RANGE: 1}
    assert "sample id 3 is not below the declared dataset size 3" in run.take_sample_notes()[0]


def test_a_rank_without_ids_is_left_out_and_said():
    run = _run()
    _preds(run, 0, [0, 1], [0, 0], [0, 1])
    _preds(run, 1, None, [2, 2], [2, 2])
    run.drawn(0)
    assert run.samples.latest.ids.tolist() == [0, 1]
    assert run.sample_problems == {sample_ids.RANKS_WITHOUT_IDS: 1}


def test_a_sender_before_1_3_gives_the_one_line_reason():
    run = _run(world=1, val_size=None)
    _preds(run, 0, None, [0, 1], [0, 1], version=(1, 2))
    run.drawn(0)
    assert run.samples is None and run.sample_ids_missing == NO_IDS_BEFORE_1_3
    assert run.sample_ids_missing == "the trainer sent no sample ids (protocol before 1.3)"


def test_epochs_reach_the_history_once_each_in_increasing_order():
    run = _run(world=1)
    for epoch in (0, 1):
        _preds(run, 0, IdRange(0, 2), [0, 1], [0, 1], epoch=epoch)
        run.drawn(epoch)
        run.drawn(epoch)  # a redraw (late metrics) hands nothing again
    _preds(run, 0, IdRange(0, 2), [1, 1], [0, 1], epoch=0, step=99)  # a resumed run repeats epoch 0
    run.epochs[0].samples_taken = False
    run.drawn(0)
    assert run.samples.epochs == [0, 1]
    assert run.sample_problems == {"epoch_repeated": 1}


def test_label_confidence_outside_zero_to_one_refuses_the_message():
    run = _run(world=1)
    with pytest.raises(RejectedMessage, match="label_confidence"):
        _preds(run, 0, [0, 1], [0, 1], [0, 1], label_confidence=[0.5, 1.5])


def test_training_records_of_every_rank_reach_the_training_map():
    run = _run(train_size=6)
    for rank, ids in ((1, [5, 1]), (0, [0, 4])):
        run.on_train_preds(_wire("train_preds", rank, 2, {
            "epoch": 0, "ids": np.asarray(ids, np.uint32), "labels": np.asarray([1, 2], U1),
            "preds": np.asarray([1, 0], U1), "label_confidence": np.asarray([0.75, 0.25], np.float16)}))
    calls = []
    run.per_sample.training_map = type("Recorder", (), {"add_epoch": lambda self, *args: calls.append(args)})()
    run.drawn(0)
    epoch, ids, labels, preds, label_confidence = calls[0]
    assert epoch == 0 and ids.tolist() == [0, 1, 4, 5]
    assert labels.tolist() == [1, 2, 2, 1] and preds.tolist() == [1, 0, 0, 1]
    assert label_confidence.tolist() == [0.75, 0.25, 0.25, 0.75]


def test_training_ids_beyond_train_size_are_refused():
    run = _run(world=1, train_size=2)
    run.on_train_preds(_wire("train_preds", 0, 1, {
        "epoch": 0, "ids": IdRange(1, 2), "labels": np.zeros(2, U1), "preds": np.zeros(2, U1),
        "label_confidence": np.ones(2, np.float16)}))
    run.drawn(0)
    assert run.training_map is None and run.sample_problems == {sample_ids.IDS_OUT_OF_RANGE: 1}


def _mistakes(rank: int, ids: list[int], epoch: int = 0) -> Message:
    n = len(ids)
    images = np.zeros((n, 2, 2, 3), U1)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.asarray(ids) % 256, np.asarray(ids) // 256
    return _wire("mistakes", rank, 1, {"epoch": epoch, "top_k": 64, "images": images, "labels": np.zeros(n, U1),
                                       "preds": np.ones(n, U1), "confidence": np.full(n, 0.5, np.float16),
                                       "ids": np.asarray(ids, np.uint32)})


def test_mistakes_thumbnails_are_kept_by_id_and_bounded():
    run = _run(world=1, val_size=1000)
    for epoch in range(6):
        ids = list(range(epoch * 60, epoch * 60 + 60))
        _preds(run, 0, ids, np.ones(60), np.zeros(60), epoch=epoch)
        run.on_mistakes(_mistakes(0, ids, epoch))
        run.drawn(epoch)
    kept = run.thumbnails_by_id
    assert len(kept) == MAX_THUMBNAILS_BY_ID
    assert all(int(image[0, 0, 0]) + 256 * int(image[0, 0, 1]) == id_ for id_, image in kept.items())
    assert sorted(kept) == list(range(360 - MAX_THUMBNAILS_BY_ID, 360))  # the oldest went first


def test_mistakes_ids_beyond_val_size_are_refused():
    run = _run(world=1, val_size=3)
    with pytest.raises(RejectedMessage, match="not below val_size 3"):
        run.on_mistakes(_mistakes(0, [1, 3]))


def test_names_are_found_by_id_and_default_to_the_id():
    run = _run(world=1)
    run.on_sample_names(_wire("sample_names", 0, 1, {"split": "val", "first": 2, "names": ["cats/a.jpg", "é/b"]}))
    run.on_sample_names(_wire("sample_names", 0, 1, {"split": "val", "first": 0, "names": ["x", ""]}))
    assert run.sample_names.names("val", [0, 1, 2, 3, 4]) == ["x", "1", "cats/a.jpg", "é/b", "4"]
    assert run.sample_names.names("train", [2]) == ["2"]


def test_names_too_long_or_beyond_the_tables_bound_are_counted_not_kept():
    table = NamesTable(limit=100)
    assert table.add("val", 0, ["a" * 201, "b"]) == {NAMES_TOO_LONG: 1}
    assert table.names("val", [0, 1]) == ["0", "b"]
    assert table.add("val", 2, ["c" * 100]) == {NAMES_OVER_LIMIT: 1}
    assert table.names("val", [2]) == ["2"] and table.size <= 100
    assert table.add("val", 0, ["z"]) == {}  # a chunk sent again replaces its earlier copy
    assert table.names("val", [0, 1]) == ["z", "1"] and len(table) == 1


def test_name_problems_reach_the_summary():
    run = _run(world=1)
    run.on_sample_names(_wire("sample_names", 0, 1, {"split": "val", "first": 0, "names": ["a" * 300]}))
    assert run.summary()["sample_problems"] == {"names_too_long": 1}
    assert "longer than 200 characters" in run.take_sample_notes()[0]


def test_monitor_inspect_shows_the_per_sample_problems_a_replay_counts(tmp_path):
    from monitor.loginspect import inspect_log, report_tables
    from trainer_side.msglog import LogWriter

    def frame(kind, rank, seq, body):
        return encode(make_message(kind, "r", rank, 2, seq, body, time=1.0, sender=f"s{rank}"))

    start = {"class_names": ["a", "b", "c"], "normalization": {"mean": [0.5], "std": [0.5]},
             "model": {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0}, "val_size": 10}
    writer = LogWriter(tmp_path / "messages.mlog")
    for rank, ids, labels in ((0, [0, 1], [0, 1]), (1, [1, 2], [2, 0])):  # id 1 with labels 1 and 2
        writer.append(frame("run_start", rank, 0, start))
        writer.append(frame("preds", rank, 1, {"epoch": 0, "step": 3, "preds": np.zeros(2, U1),
                                               "labels": np.asarray(labels, U1), "ids": np.asarray(ids, np.uint32)}))
        writer.append(frame("sample_names", rank, 2, {"split": "val", "first": 0, "names": ["n" * 201]}))
        writer.append(frame("epoch_end", rank, 3, {"epoch": 0, "sent": 4, "dropped": 0}))
    writer.close()
    report = inspect_log(tmp_path / "messages.mlog", skip_corrupt=False)
    problems = report.sample_problems["r"]
    assert [(reason, count) for reason, count, _ in problems] == [("names_too_long", 1), ("conflicting_labels", 1)]
    assert "sample id 1 came with two different labels" in problems[1][2]
    assert any(table.title.startswith("Per-sample data") for table in report_tables(report))
