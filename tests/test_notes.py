"""The monitor's notes about what a trainer did not send name what is missing and the argument that
sends it (a plain `Emitter` loop sends no model summary or confidences unless given them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import console_of_spool
from trainer_side import Emitter, model_summary


def console_of_plain_loop(tmp_path: Path, *, model: bool, confidence: bool) -> str:
    """console.txt of a two-epoch plain loop through the real emitter's spool and the pipeline."""
    emitter = Emitter(None, run="plain", spool=tmp_path / "spool")
    emitter.run_start(["cat", "dog", "bird"], model=model_summary(torch.nn.Linear(4, 3)) if model else None)
    rng = np.random.default_rng(0)
    for epoch in range(2):
        preds, labels = rng.integers(0, 3, 50).astype(np.uint8), rng.integers(0, 3, 50).astype(np.uint8)
        emitter.preds(epoch, preds=preds, labels=labels,
                      confidence=rng.uniform(0.4, 1.0, 50).astype(np.float32) if confidence else None)
        emitter.epoch_end(epoch)
    emitter.run_end("completed")
    emitter.close()
    return console_of_spool(tmp_path / "spool", "plain", tmp_path / "out")


def test_preds_without_confidences_name_the_argument_not_an_old_protocol(tmp_path):
    text = console_of_plain_loop(tmp_path, model=True, confidence=False)
    assert "protocol before 1.2" not in text
    assert text.count("run plain: its trainer sends preds without confidences: pass each prediction's top-1 "
                      "softmax probability as `preds(..., confidence=...)`") == 1
    assert "no reliability diagram, ECE or MCE" in text


def test_a_run_start_without_a_model_names_the_argument_instead_of_a_table_of_zeros(tmp_path):
    text = console_of_plain_loop(tmp_path, model=False, confidence=True)
    assert "Model Information" not in text
    assert ("run plain: no model information: its trainer sent none; pass "
            "`model=trainer_side.model_summary(net)` to `Emitter.run_start`") in text
    assert "confidences" not in text
    page = (tmp_path / "out" / "plain" / "index.html").read_text(encoding="utf-8")
    assert "The trainer sent no model summary: pass <code>model=trainer_side.model_summary(net)</code>" in page
    assert ">unknown<" not in page


def test_with_both_arguments_there_is_no_note_and_the_table_shows_the_model(tmp_path):
    text = console_of_plain_loop(tmp_path, model=True, confidence=True)
    assert "no model information" not in text and "confidences" not in text
    assert "Linear" in text and "Model Information" in text
    assert (tmp_path / "out" / "plain" / "epoch_001" / "reliability_diagram.png").is_file()
