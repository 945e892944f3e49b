"""Reading validation batches (trainer_side.batches): tuples, dicts with the usual keys, explicit
`batch_keys`, and one clear line for a batch that cannot be read."""

from __future__ import annotations

import logging

import pytest
import torch

from trainer_side.batches import BatchReader, UnreadableBatch, missing_logits_warning, read_batch

X = torch.zeros(4, 3, 8, 8)
Y = torch.tensor([0, 2, 1, 2])


@pytest.mark.parametrize("batch", [
    (X, Y), [X, Y], (X, Y, ["a.png"] * 4),
    {"image": X, "label": Y}, {"images": X, "labels": Y, "path": ["a.png"] * 4}, {"input": X, "target": Y},
    {"inputs": X, "targets": Y.view(4, 1)},
])
def test_tuples_and_dicts_with_the_usual_keys_are_read_without_batch_keys(batch):
    inputs, labels = read_batch(batch)
    assert inputs is X
    assert labels.tolist() == [0, 2, 1, 2]


def test_explicit_batch_keys_win_over_the_usual_keys():
    other = torch.ones(4, 3, 8, 8)
    inputs, labels = read_batch({"image": X, "label": Y, "x": other, "y": Y + 1}, ("x", "y"))
    assert inputs is other and labels.tolist() == [1, 3, 2, 3]
    inputs, labels = read_batch((Y, X, Y + 1), (1, 2))
    assert inputs is X and labels.tolist() == [1, 3, 2, 3]


def test_a_dict_with_two_candidates_for_one_role_is_ambiguous_and_names_batch_keys():
    with pytest.raises(UnreadableBatch) as caught:
        read_batch({"image": X, "input": X, "label": Y})
    text = str(caught.value)
    assert "'image' and 'input' could each be the input" in text
    assert "batch_keys=" in text and "\n" not in text


@pytest.mark.parametrize("batch, explicit, says", [
    ({"img": X, "cls": Y}, None, "a dict with keys ['img', 'cls'], none of them a known input key"),
    ({"image": X, "cls": Y}, None, "none of them a known target key"),
    (X, None, "a float32 tensor of shape (4, 3, 8, 8), not an (input, target) pair"),
    ((X,), None, "a tuple of 1 item, not an (input, target) pair"),
    ((X, Y), (0, 5), "batch_keys=(0, 5) do not fit the validation batch, a tuple of 2 items"),
    ({"image": X, "label": Y}, ("x", "y"), "batch_keys=('x', 'y') do not fit"),
    ((X, torch.rand(4, 3)), None, "the labels at 1 are a float32 tensor of shape (4, 3), not one integer class index"),
    ((X, torch.eye(4, dtype=torch.long)), None, "the labels at 1 are an int64 tensor of shape (4, 4)"),
    ((X, [0, 1, 2, 3]), None, "the labels at 1 are a list of 4 items"),
])
def test_a_batch_that_cannot_be_read_says_what_it_got_and_what_to_pass(batch, explicit, says):
    with pytest.raises(UnreadableBatch) as caught:
        read_batch(batch, explicit)
    text = str(caught.value)
    assert says in text
    assert 'batch_keys=("x", "y")' in text and "\n" not in text


def test_the_reader_warns_once_counts_every_unreadable_batch_and_reports_the_count(caplog):
    reader = BatchReader(None)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        results = [reader.read({"img": X, "cls": Y}) for _ in range(3)] + [reader.read((X, Y))]
        reader.report()
    assert results[:3] == [None, None, None] and results[3].labels.tolist() == Y.tolist()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("EmitterCallback: the validation batch is a dict with keys ['img', 'cls']")
    assert "training goes on" in lines[0]
    assert lines[1].startswith("EmitterCallback: 3 validation batches had no predictions")


@pytest.mark.parametrize("outputs, says", [
    (None, "returned None, not the logits"),
    ({"loss": torch.tensor(0.5)}, "returned a dict with keys ['loss'], not the logits"),
    (torch.tensor(0.5), "returned a float32 tensor of shape (), not the logits"),
    ({"logits": torch.zeros(4)}, "returned a dict whose 'logits' is a float32 tensor of shape (4,), not the logits"),
])
def test_the_missing_logits_warning_says_what_came_back_and_shows_the_one_line_fix(outputs, says):
    text = missing_logits_warning(outputs)
    assert says in text
    assert text.endswith('Fix: end validation_step with `return logits` '
                         '(or `return {"loss": loss, "logits": logits}`).')
