"""The sample-level output writer: the files and figures an epoch with sample ids leaves, the same
bytes on a second pass, and the one-line note for a run without ids."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from monitor.aggregates.samples import EpochSamples, SampleHistory, TrainingMap, samples_summary
from monitor.outputs.console import MonitorConsole
from monitor.outputs.sample_writer import NO_IDS_NOTE, SampleOutputs
from monitor.outputs.render.pool import InlineRenderer

pytestmark = pytest.mark.slow  # replays or draws whole runs

CLASSES = ["cat", "dog", "bird"]


class Names:
    def names(self, split, ids):
        return [f"{split}/{i:03d}.png" for i in np.asarray(ids).tolist()]


def fake_run(thumbnails: bool):
    return SimpleNamespace(run="r", class_names=CLASSES, samples=SampleHistory(3), training_map=TrainingMap(3),
                           sample_names=Names(), sample_ids_missing=None,
                           thumbnails_by_id={i: np.full((8, 8, 3), 6 * i, np.uint8) for i in range(40)}
                           if thumbnails else {})


def write_epochs(out, thumbnails=True):
    console = MonitorConsole(Console(file=io.StringIO(), width=100), fresh=True)
    outputs = SampleOutputs(InlineRenderer(), console)
    run = fake_run(thumbnails)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 40)
    folder = out / "r"
    scalars = []
    for number in range(3):
        preds = np.where(rng.random(40) < 0.6, labels, (labels + 1) % 3)
        run.samples.add_epoch(EpochSamples(number, np.arange(40), labels, preds, rng.random(40).astype(np.float32),
                                           rng.random(40).astype(np.float32)))
        run.training_map.add_epoch(number, np.arange(100), rng.integers(0, 3, 100), rng.integers(0, 3, 100),
                                   rng.random(100))
        scalars.append(outputs.epoch(run, number, folder, folder / f"epoch_{number:03d}"))
        assert outputs.epoch(run, number, folder, folder / f"epoch_{number:03d}") == {}  # a redraw: nothing again
    console.flush(wait=True)
    return folder, scalars, run


def test_an_epoch_with_ids_leaves_every_sample_file_and_the_same_bytes_twice(tmp_path):
    folder, scalars, run = write_epochs(tmp_path / "a")
    again, _, _ = write_epochs(tmp_path / "b")
    names = ["per_sample.csv", "label_suspects.csv", "label_suspects.png", "data_map.csv", "data_map.png",
             "epoch_000/predictions.npy", "epoch_001/changes.json", "epoch_001/changes.csv",
             "epoch_002/changes.json", "epoch_002/predictions.npy"]
    for name in names:
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name
    assert not (folder / "epoch_000" / "changes.json").exists()  # nothing to pair the first epoch with
    assert scalars[0] == {} and set(scalars[1]) == {"changes/newly_correct", "changes/newly_wrong",
                                                    "changes/accuracy_diff", "changes/mcnemar_p"}
    assert "val/000.png" in (folder / "per_sample.csv").read_text()
    record = (folder / "console.txt").read_text()
    assert "Changes — epoch 1 vs 0" in record and "Label suspects" in record and "data map after epoch 2" in record
    assert samples_summary(run.samples, run.training_map, None)["samples"] == {"tracked": 40, "epochs": 3, "ids_over_cap": 0, "label_changed": 0}


def test_suspects_without_thumbnails_get_a_ranked_chart(tmp_path):
    with_images, _, _ = write_epochs(tmp_path / "a")
    without, _, _ = write_epochs(tmp_path / "b", thumbnails=False)
    assert (with_images / "label_suspects.png").read_bytes() != (without / "label_suspects.png").read_bytes()


def test_a_run_without_ids_gets_one_line_and_no_files(tmp_path):
    console = MonitorConsole(Console(file=io.StringIO(), width=200), fresh=True)
    outputs = SampleOutputs(InlineRenderer(), console)
    run = SimpleNamespace(run="old", samples=None, training_map=None,
                          sample_ids_missing="the trainer sent no sample ids (protocol before 1.3)")
    for number in range(2):
        assert outputs.epoch(run, number, tmp_path / "old", tmp_path / "old" / f"epoch_{number:03d}") == {}
    console.flush(wait=True)
    lines = (tmp_path / "old" / "console.txt").read_text().splitlines()
    assert lines == [f"run old: {NO_IDS_NOTE}: the trainer sent no sample ids (protocol before 1.3)"]
    assert samples_summary(None, None, run.sample_ids_missing) == {"sample_ids_missing": "the trainer sent no sample ids (protocol before 1.3)"}


def test_a_large_training_map_is_written_at_the_run_end_with_one_line(tmp_path, monkeypatch):
    from monitor.outputs import sample_writer

    monkeypatch.setattr(sample_writer, "DATA_MAP_EVERY_EPOCH_MAX_IDS", 50)
    console = MonitorConsole(Console(file=io.StringIO(), width=200), fresh=True)
    outputs = SampleOutputs(InlineRenderer(), console)
    run = SimpleNamespace(run="big", class_names=CLASSES, samples=None, training_map=TrainingMap(3),
                          sample_names=Names(), sample_ids_missing=None, thumbnails_by_id={})
    for number in range(2):
        run.training_map.add_epoch(number, np.arange(100), np.zeros(100), np.zeros(100), np.full(100, 0.5))
        outputs.epoch(run, number, tmp_path / "big", tmp_path / "big" / f"epoch_{number:03d}")
    assert not (tmp_path / "big" / "data_map.csv").exists()
    outputs.run_end(run, tmp_path / "big")
    console.flush(wait=True)
    assert len((tmp_path / "big" / "data_map.csv").read_text().splitlines()) == 101
    assert (tmp_path / "big" / "data_map.png").exists()
    notes = [line for line in (tmp_path / "big" / "console.txt").read_text().splitlines() if "when the run ends" in line]
    assert len(notes) == 1
