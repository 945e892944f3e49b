"""`monitor compare`: two run folders paired on sample id, checked against an independent count,
and its refusals."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pytest

from monitor import cli
from monitor.aggregates.samples import EpochSamples, SampleHistory
from monitor.outputs import sample_files

CLASSES = ["cat", "dog", "bird"]


def make_run(out: Path, name: str, ids, labels, preds_by_epoch, classes=CLASSES) -> Path:
    """A run folder as the monitor leaves it: labels_mapping.json, summary.json, per_sample.csv and
    one predictions.npy per epoch."""
    folder = out / name
    folder.mkdir(parents=True)
    (folder / "labels_mapping.json").write_text(json.dumps(
        {"num_classes": len(classes), "idx_to_class": {str(i): c for i, c in enumerate(classes)}}))
    (folder / "summary.json").write_text(json.dumps({"run": name, "status": "completed",
                                                     "epochs": list(range(len(preds_by_epoch)))}))
    history = SampleHistory(len(classes))
    for number, preds in enumerate(preds_by_epoch):
        samples = EpochSamples(number, np.asarray(ids, np.int64), np.asarray(labels, np.int64),
                               np.asarray(preds, np.int64), np.full(len(ids), 0.75, np.float32), None)
        sample_files.write_predictions(folder / f"epoch_{number:03d}", samples)
        history.add_epoch(samples)
    sample_files.write_per_sample(folder, history, classes, lambda i: [f"s{x}.png" for x in i.tolist()])
    return folder


def exact_mcnemar(b: int, c: int) -> float:
    b, c = int(b), int(c)
    n = b + c
    return 1.0 if n == 0 else float(min(1, 2 * sum(Fraction(comb(n, k), 2 ** n) for k in range(min(b, c) + 1))))


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(5)
    n = 300
    labels = rng.integers(0, 3, n)
    a_last = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 3)
    b_last = np.where(rng.random(n) < 0.8, labels, (labels + 2) % 3)
    # B was validated on ids 20..319: 280 in common with A's 0..299
    ids_b = np.arange(20, 320)
    labels_b = np.concatenate([labels[20:], rng.integers(0, 3, 20)])
    b_preds = np.concatenate([b_last[20:], rng.integers(0, 3, 20)])
    run_a = make_run(tmp_path, "run-a", np.arange(n), labels, [labels, a_last])
    run_b = make_run(tmp_path, "run-b", ids_b, labels_b, [b_preds])
    return tmp_path, run_a, run_b, labels, a_last, b_last


def test_comparison_matches_an_independent_count(two_runs, capsys):
    out, run_a, run_b, labels, a_last, b_last = two_runs
    assert cli.main(["compare", str(run_a), str(run_b), "--out", str(out / "cmp")]) == 0
    summary = json.loads((out / "cmp" / "comparison.json").read_text())
    common = range(20, 300)
    right_a = [a_last[i] == labels[i] for i in common]
    right_b = [b_last[i] == labels[i] for i in common]
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    assert (summary["epoch_a"], summary["epoch_b"], summary["n_paired"]) == (1, 0, 280)
    assert (summary["only_a"], summary["only_b"]) == (20, 20)
    assert (summary["only_a_right"], summary["only_b_right"]) == (only_a, only_b)
    assert summary["accuracy_a"] == pytest.approx(sum(right_a) / 280)
    assert summary["accuracy_b"] == pytest.approx(sum(right_b) / 280)
    assert summary["mcnemar_p"] == pytest.approx(exact_mcnemar(only_a, only_b))
    assert summary["ci95"][0] < summary["accuracy_diff"] < summary["ci95"][1]
    assert summary["macro_f1_ci95"][0] < summary["macro_f1_diff"] < summary["macro_f1_ci95"][1]
    for row in summary["per_class"]:
        k = row["index"]
        members = [i for i in common if labels[i] == k]
        assert row["support"] == len(members)
        assert row["recall_a"] == pytest.approx(sum(a_last[i] == k for i in members) / len(members))
        assert row["recall_b"] == pytest.approx(sum(b_last[i] == k for i in members) / len(members))
        x = sum(a_last[i] == k and b_last[i] != k for i in members)
        y = sum(a_last[i] != k and b_last[i] == k for i in members)
        assert row["mcnemar_p"] == pytest.approx(exact_mcnemar(x, y))
        assert row["holm_p"] >= row["mcnemar_p"]
    with open(out / "cmp" / "flipped.csv", newline="") as f:
        flipped = list(csv.DictReader(f))
    assert [int(r["id"]) for r in flipped] == [i for i in common if a_last[i] != b_last[i]]
    assert flipped[0]["name"] == f"s{flipped[0]['id']}.png"
    assert "run-a vs run-b" in (out / "cmp" / "comparison.html").read_text()
    assert "cmp/comparison.html" in (out / "index.html").read_text()  # the runs index links to it
    assert "paired samples" in capsys.readouterr().out


def test_an_earlier_epoch_can_be_compared(two_runs):
    out, run_a, run_b, *_ = two_runs
    assert cli.main(["compare", str(run_a), str(run_b), "--epoch-a", "0", "--out", str(out / "cmp0")]) == 0
    summary = json.loads((out / "cmp0" / "comparison.json").read_text())
    assert summary["epoch_a"] == 0 and summary["accuracy_a"] == 1.0  # epoch 0 predicted every label


def refusal(capsys, *argv) -> str:
    assert cli.main(["compare", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_runs_on_other_samples_or_classes_are_refused(tmp_path, capsys):
    ids = np.arange(100)
    labels = ids % 3
    a = make_run(tmp_path, "a", ids, labels, [labels])
    relabelled = make_run(tmp_path, "b", ids, (labels + 1) % 3, [labels])
    assert "different labels" in refusal(capsys, a, relabelled, "--out", tmp_path / "x")
    elsewhere = make_run(tmp_path, "c", ids + 90, (ids + 90) % 3, [(ids + 90) % 3])
    assert "share only 10 sample ids" in refusal(capsys, a, elsewhere, "--out", tmp_path / "x")
    other_task = make_run(tmp_path, "d", ids, labels, [labels], classes=["x", "y", "z"])
    assert "different classes" in refusal(capsys, a, other_task, "--out", tmp_path / "x")
    assert "no sample ids for epoch 7" in refusal(capsys, a, a, "--epoch-b", 7, "--out", tmp_path / "x")
    old = tmp_path / "old"
    old.mkdir()
    (old / "labels_mapping.json").write_text(json.dumps({"idx_to_class": {"0": "cat"}}))
    (old / "summary.json").write_text(json.dumps({"run": "old", "sample_ids_missing": "the trainer sent no "
                                                                                        "sample ids (protocol 1.2)"}))
    assert "protocol 1.2" in refusal(capsys, a, old, "--out", tmp_path / "x")
    assert "not a run folder" in refusal(capsys, a, tmp_path, "--out", tmp_path / "x")
    assert not (tmp_path / "x").exists()
