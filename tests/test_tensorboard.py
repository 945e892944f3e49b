"""`--tensorboard DIR`: the recorded run replayed with TensorBoard events, read back with TensorBoard's
own reader (EventAccumulator, which also checks every record's CRC-32C) and compared with the
artifacts the same replay wrote: PNG bytes, per_class_metrics.csv, history.csv."""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_masked_crc32c  # noqa: E402

from monitor import cli  # noqa: E402
from monitor.outputs import tensorboard as events  # noqa: E402
from monitor.replay import replay  # noqa: E402
from monitor.outputs.tensorboard import IMAGE_TAGS, TensorBoardOptions, TensorBoardWriter, masked_crc32c  # noqa: E402
from trainer_side import protocol  # noqa: E402
from trainer_side.msglog import LogWriter, iter_frames  # noqa: E402

FIXTURE_LOG = Path(__file__).parent / "data" / "tiny_run.mlog"
RUN = "tiny-fixture"
EPOCHS = (0, 1, 2)


def _replay(tmp_path: Path, log: Path = FIXTURE_LOG, max_classes: int = 100) -> tuple[Path, EventAccumulator]:
    out, board = tmp_path / "out", tmp_path / "tb"
    with open(os.devnull, "w") as null:
        pipeline, intake, _ = replay([log], out, skip_corrupt=False, console=Console(file=null),
                                     tensorboard=TensorBoardOptions(board, max_classes))
    assert sum(intake.rejected.values()) == 0 and sum(pipeline.rejected.values()) == 0
    assert pipeline.tensorboard.not_written == 0
    events = EventAccumulator(str(board / RUN), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return out / RUN, events


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    return _replay(tmp_path_factory.mktemp("tensorboard"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _one_per_epoch(events: list) -> dict[int, object]:
    steps = [event.step for event in events]
    assert len(steps) == len(set(steps)), f"more than one event for a step: {steps}"
    return {event.step: event for event in events}


@pytest.mark.slow
def test_every_epoch_figure_is_an_image_with_the_exact_png_bytes(replayed):
    run, events = replayed
    logged = set(events.Tags()["images"])
    assert {"confusion_matrix/counts", "samples/predictions"} <= logged
    for name, tag in IMAGE_TAGS.items():
        on_disk = {epoch: run / f"epoch_{epoch:03d}" / name for epoch in EPOCHS}
        if not any(path.exists() for path in on_disk.values()):
            assert tag not in logged
            continue
        images = _one_per_epoch(events.Images(tag))
        assert sorted(images) == [epoch for epoch, path in on_disk.items() if path.exists()]
        for epoch, image in images.items():
            png = on_disk[epoch].read_bytes()
            assert image.encoded_image_string == png
            assert (image.width, image.height) == (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))


def test_per_class_scalars_equal_per_class_metrics_csv(replayed):
    run, events = replayed
    for epoch in EPOCHS:
        rows = _read_csv(run / f"epoch_{epoch:03d}" / "per_class_metrics.csv")
        assert len(rows) == 6  # four classes, macro and weighted averages
        for row in rows:
            for metric in ("precision", "recall", "f1"):
                if row["index"]:
                    tag = f"per_class/{metric}/{row['index']}_{row['class']}"
                else:
                    tag = f"{row['class'].replace(' ', '_')}/{metric}"
                value = _one_per_epoch(events.Scalars(tag))[epoch].value
                assert value == pytest.approx(float(row[metric]), abs=1e-6), (tag, epoch)


def test_history_scalars_equal_history_csv(replayed):
    run, events = replayed
    rows = _read_csv(run / "history.csv")
    columns = [c for c in rows[0] if c != "epoch"]
    assert "val/loss" in columns and "train/loss" in columns
    history_tags = {tag for tag in events.Tags()["scalars"] if tag.startswith("history/")}
    assert history_tags == {f"history/{c}" for c in columns}
    for column in columns:
        logged = {step: event.value for step, event in _one_per_epoch(events.Scalars(f"history/{column}")).items()}
        expected = {int(row["epoch"]): float(row[column]) for row in rows if row[column]}
        assert logged.keys() == expected.keys()
        for epoch, value in expected.items():
            assert logged[epoch] == pytest.approx(value, rel=1e-6), (column, epoch)


@pytest.mark.slow
def test_class_names_with_slashes_and_spaces_give_distinct_single_level_tags(tmp_path):
    names = ["cat/dog", "cat dog", "cat_dog", "a/b c"]
    messages = [protocol.decode(frame) for frame in iter_frames(FIXTURE_LOG)]
    assert messages[0].kind == "run_start" and len(messages[0].body["class_names"]) == len(names)
    messages[0] = dataclasses.replace(messages[0], body={**messages[0].body, "class_names": names})
    log = tmp_path / "names.mlog"
    with LogWriter(log) as writer:
        for message in messages:
            writer.append(protocol.encode(message))
    run, events = _replay(tmp_path, log)
    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("per_class/f1/")]
    assert sorted(tags) == ["per_class/f1/0_cat_dog", "per_class/f1/1_cat_dog", "per_class/f1/2_cat_dog",
                            "per_class/f1/3_a_b_c"]
    rows = _read_csv(run / "epoch_002" / "per_class_metrics.csv")
    assert [row["class"] for row in rows[:4]] == names
    for tag in sorted(tags):
        expected = float(rows[int(tag.split("/")[2].split("_")[0])]["f1"])
        assert _one_per_epoch(events.Scalars(tag))[2].value == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_runs_with_more_classes_than_the_cap_get_the_averages_only_and_one_warning(tmp_path, caplog):
    _, events = _replay(tmp_path, max_classes=3)
    scalars = events.Tags()["scalars"]
    assert not [tag for tag in scalars if tag.startswith("per_class/")]
    assert {"macro_avg/f1", "weighted_avg/recall", "history/val/loss"} <= set(scalars)
    assert [_one_per_epoch(events.Scalars("macro_avg/f1"))[e].step for e in EPOCHS] == list(EPOCHS)
    warnings = [r.getMessage() for r in caplog.records if "tensorboard-max-classes" in r.getMessage()]
    assert warnings == [f"tensorboard: run {RUN} has more than 3 classes (--tensorboard-max-classes): no per-class "
                        "scalars, only the macro and weighted averages"]


def test_tags_follow_tensorflows_character_rules():
    assert events.tag_part("a/b c\ud800é.x-y") == "a_b_c_é.x-y"
    assert events.tag_part("val/loss [bold]", keep_slash=True) == "val/loss__bold_"


@pytest.mark.parametrize("inside", [".", "run/tb"])
def test_a_tensorboard_folder_inside_out_is_refused_at_start(tmp_path, capsys, inside):
    out = tmp_path / "out"
    code = cli.main(["replay", str(FIXTURE_LOG), "--out", str(out), "--tensorboard", str(out / inside)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"monitor replay: error: --tensorboard {out / inside} is inside --out {out}")
    assert not out.exists()


def test_without_tensorboard_the_option_fails_at_start_with_the_install_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard...` now raises ImportError
    monkeypatch.delitem(sys.modules, "tensorboard.compat.proto", raising=False)
    monkeypatch.delitem(sys.modules, "tensorboard.compat", raising=False)
    code = cli.main(["replay", str(FIXTURE_LOG), "--out", str(tmp_path / "out"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "pip install 'lightning-sidecar-monitor[tensorboard]'" in err
    assert err.startswith("monitor replay: error: --tensorboard needs the tensorboard and google-crc32c packages")
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()


def test_a_live_writer_never_waits_it_drops_and_counts_and_close_keeps_its_deadline(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "MAX_QUEUED", 4)
    writer = TensorBoardWriter(TensorBoardOptions(tmp_path / "tb"), tmp_path / "out")
    busy, release = threading.Event(), threading.Event()

    def stuck(path: Path) -> list:
        busy.set()
        release.wait(60)
        return []

    writer._figure_events = stuck  # the writer thread stalls on its first item
    try:
        writer.figure(tmp_path / "out" / "run" / "epoch_000" / "confusion_matrix.png")
        assert busy.wait(60)
        for _ in range(4 + 3):  # four fit in the queue, three do not
            writer.figure(tmp_path / "out" / "run" / "epoch_000" / "confusion_matrix.png")
        assert writer.dropped == 3
        assert writer.close(deadline=time.monotonic()) == 3 + 1 + 4  # dropped, the stuck one, the queued ones
    finally:
        release.set()
        writer.close()


def test_an_epoch_figure_is_logged_once_per_content_and_only_from_its_epoch_folder(tmp_path):
    out = tmp_path / "out"
    figure = out / "run" / "epoch_004" / "sample_predictions.png"
    figure.parent.mkdir(parents=True)
    pngs = [_png(1, 2), _png(3, 1), _png(2, 2)]
    writer = TensorBoardWriter(TensorBoardOptions(tmp_path / "tb"), out, wait=True)
    # A job may name the file it wrote or the epoch folder; anything else is no figure of an epoch.
    for png, written in ((pngs[0], figure), (pngs[0], figure.parent), (pngs[1], figure.parent),
                         (pngs[2], out / "run"), (pngs[2], out / "run" / "training_history" / "x.png")):
        figure.write_bytes(png)
        os.utime(figure, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new file, as a redraw makes
        writer.figure(written)
        writer._queue.join()  # handled before the file changes again
    assert writer.close() == 0
    events = EventAccumulator(str(tmp_path / "tb" / "run"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("samples/predictions")
    assert [(e.step, e.encoded_image_string) for e in images] == [(4, pngs[0]), (4, pngs[1])]
    assert [(e.width, e.height) for e in images] == [(1, 2), (3, 1)]


def _png(width: int, height: int) -> bytes:
    from monitor.outputs.render.save import encode_png

    return encode_png(np.full((height, width, 4), 128, np.uint8), 100)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.one_of(st.binary(max_size=5000), st.integers(0, 40_000).map(lambda n: os.urandom(n))))
def test_masked_crc32c_equals_tensorboards_own(data):
    assert masked_crc32c(data) == reference_masked_crc32c(data)



def test_serve_writes_the_served_figures_as_events_from_the_render_workers(tmp_path, start_monitor):
    import zmq

    from conftest import wait_for

    board = tmp_path / "tb"
    monitor = start_monitor(tmp_path / "out", "--tensorboard", str(board), "--render-priority", "normal")
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    try:
        push.connect(monitor.endpoint)
        for frame in iter_frames(FIXTURE_LOG):  # the recorded run, sent as its trainer sent it
            push.send(frame)
    finally:
        push.close(linger=10_000)
        context.term()
    tags = ("confusion_matrix/counts", "samples/predictions")

    def logged() -> EventAccumulator:
        events = EventAccumulator(str(board / RUN), size_guidance={"images": 0, "scalars": 0})
        if (board / RUN).is_dir():
            events.Reload()
        return events

    def every_figure_logged() -> bool:
        events = logged()
        return all(tag in events.Tags()["images"] and len(events.Images(tag)) == len(EPOCHS) for tag in tags)

    wait_for(every_figure_logged, "every epoch's figures in the event file")
    assert monitor.stop() == 0, monitor.output()
    events = logged()
    for name, tag in (("confusion_matrix.png", tags[0]), ("sample_predictions.png", tags[1])):
        images = _one_per_epoch(events.Images(tag))
        for epoch in EPOCHS:
            assert images[epoch].encoded_image_string == (tmp_path / "out" / RUN / f"epoch_{epoch:03d}" / name).read_bytes()
    history = _read_csv(tmp_path / "out" / RUN / "history.csv")
    assert [e.value for e in events.Scalars("history/val/loss")] == pytest.approx(
        [float(row["val/loss"]) for row in history], rel=1e-6)
