"""The README's code runs as documented: its snippets, pasted into scripts, feed a real monitor."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, MonitorProcess
from test_end_to_end import read_confusion_csv

README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


LIGHTNING, IMAGE_FOLDER, PLAIN_LOOP = range(3)


def _serve_snippet(code: str, tmp_path) -> MonitorProcess:
    """Runs a README snippet, pasted into its own script, against a live monitor; returns the stopped monitor."""
    monitor = MonitorProcess(tmp_path / "outputs")
    try:
        script = tmp_path / "snippet.py"
        script.write_text(code.replace("tcp://127.0.0.1:5555", monitor.endpoint))
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                                timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        monitor.trainer_stderr = result.stderr
        assert monitor.stop() == 0
    finally:
        monitor.kill()
    return monitor


def test_readme_has_the_two_commands_and_its_three_snippets():
    assert "make demo" in README and "make test" in README
    assert len(SNIPPETS) == 3 and "EmitterCallback" in SNIPPETS[LIGHTNING] and "Emitter(" in SNIPPETS[PLAIN_LOOP]
    assert "ImageFolder" in SNIPPETS[IMAGE_FOLDER] and "random_split" in SNIPPETS[IMAGE_FOLDER]


def test_the_lightning_snippet_works_against_a_live_monitor(tmp_path):
    monitor = _serve_snippet(SNIPPETS[LIGHTNING], tmp_path)
    run = tmp_path / "outputs" / "readme-example"
    for epoch in (0, 1):
        names, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        assert names == ["cat", "dog", "bird"] and counts.sum() == 100
        assert (run / f"epoch_{epoch:03d}" / "sample_predictions.png").is_file()
        assert (run / f"epoch_{epoch:03d}" / "sampler_distribution.json").is_file()
    assert "Dataset Class Distribution" in (run / "console.txt").read_text()
    assert re.search(r"\d+ frames received, 0 rejected", monitor.output())


def test_the_plain_loop_snippet_works_against_a_live_monitor(tmp_path):
    _serve_snippet(SNIPPETS[PLAIN_LOOP], tmp_path)
    run = tmp_path / "outputs" / "plain-loop"
    for epoch in (0, 1):
        _, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        assert counts.sum() == 100 and counts.shape == (3, 3)
    assert np.isfinite(float((run / "history.csv").read_text().splitlines()[1].split(",")[1]))
    console = (run / "console.txt").read_text()
    assert "Model Information" in console and "Linear" in console
    assert "no model information" not in console and "confidences" not in console
    assert (run / "epoch_001" / "reliability_diagram.png").is_file()


COLOURS = {"bird": (200, 30, 30), "cat": (30, 200, 30), "dog": (30, 30, 200)}


def test_the_imagefolder_snippet_finds_names_counts_and_normalization(tmp_path):
    """The README's ImageFolder + random_split lines in place of the first script's data: thumbnails
    de-normalized with the transform's Normalize come back in the images' own colours."""
    pytest.importorskip("torchvision")
    from PIL import Image

    for name, colour in COLOURS.items():
        (tmp_path / "images" / name).mkdir(parents=True)
        for n in range(10):
            Image.new("RGB", (12, 10), colour).save(tmp_path / "images" / name / f"{n}.png")
    head = SNIPPETS[LIGHTNING][:SNIPPETS[LIGHTNING].index("images, labels =")]
    monitor = _serve_snippet(head + SNIPPETS[IMAGE_FOLDER], tmp_path)
    assert "no normalization found" not in monitor.trainer_stderr
    run = tmp_path / "outputs" / "imagefolder-example"
    mapping = json.loads((run / "labels_mapping.json").read_text())
    assert mapping["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert mapping["class_to_idx"] == {"bird": 0, "cat": 1, "dog": 2}
    statistics = json.loads((run / "dataset_statistics.json").read_text())
    assert statistics["total"] == 24 and sum(c["count"] for c in statistics["classes"]) == 24
    from trainer_side.msglog import iter_frames
    from trainer_side.protocol import decode

    samples = [m for m in map(decode, iter_frames(run / "messages.mlog")) if m.kind == "samples"]
    assert samples
    for message in samples:
        for image, label in zip(message["images"], message["labels"]):
            colour = np.array(COLOURS[mapping["idx_to_class"][str(int(label))]])
            assert np.abs(image.reshape(-1, 3).astype(int) - colour).max() <= 2, (image[0, 0], colour)


def test_every_flag_of_every_command_is_in_the_readme():
    """The README is the contract: a flag `--help` lists and the README leaves out is one a user never finds."""
    from monitor.cli import build_parser

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    missing = {(name, flag) for name, parser in commands.items() for action in parser._actions
               for flag in action.option_strings if flag.startswith("--") and flag != "--help"
               and f"`{flag}" not in README and f"{flag} " not in README}
    assert not missing, sorted(missing)
