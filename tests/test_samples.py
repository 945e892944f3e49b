"""Per-sample history, paired statistics and the sample-level files, checked against independent
computations (direct binomial sums, per-sample loops)."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from monitor.aggregates import paired
from monitor.aggregates.samples import EpochSamples, SampleHistory, TrainingMap
from monitor.outputs import sample_files


def exact_mcnemar(b: int, c: int) -> float:
    """min(1, 2·P(X ≤ min(b, c))) for X ~ Binomial(b + c, 1/2), summed exactly with fractions."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(Fraction(comb(n, k), 2 ** n) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


def epoch(number, ids, labels, preds, confidence=None, label_confidence=None) -> EpochSamples:
    def f32(x):
        return None if x is None else np.asarray(x, dtype=np.float32)
    return EpochSamples(number, np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64),
                        np.asarray(preds, dtype=np.int64), f32(confidence), f32(label_confidence))


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (1, 0), (3, 3), (0, 7), (2, 9), (10, 4), (25, 40), (1, 60)])
def test_mcnemar_matches_a_direct_binomial_sum(b, c):
    assert paired.mcnemar_p(b, c) == pytest.approx(exact_mcnemar(b, c), rel=1e-9, abs=1e-300)


def test_mcnemar_stays_finite_and_ordered_for_millions_of_discordant_pairs():
    equal = paired.mcnemar_p(1_000_000, 1_000_000)
    near = paired.mcnemar_p(1_000_000, 1_001_000)
    far = paired.mcnemar_p(1_000_000, 1_010_000)
    assert equal == 1.0
    assert 0 < far < near < 1  # 1,000 more is noise at this size (p ≈ 0.48), 10,000 is not
    assert near > 0.3 and far < 1e-8


def test_holm_matches_the_step_down_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> monotone 0.06
    assert paired.holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_changes_match_per_sample_counts_and_pair_only_common_ids():
    rng = np.random.default_rng(7)
    ids_a = np.sort(rng.choice(500, 400, replace=False))
    ids_b = np.sort(rng.choice(500, 420, replace=False))
    truth = rng.integers(0, 6, 500)
    pred_a, pred_b = np.where(rng.random(500) < 0.7, truth, rng.integers(0, 6, 500)), \
        np.where(rng.random(500) < 0.8, truth, rng.integers(0, 6, 500))
    a = epoch(3, ids_a, truth[ids_a], pred_a[ids_a])
    b = epoch(4, ids_b, truth[ids_b], pred_b[ids_b])
    summary = sample_files.changes_summary(paired.pair(a, b), [f"c{i}" for i in range(6)])

    common = sorted(set(ids_a.tolist()) & set(ids_b.tolist()))
    newly_correct = sum(1 for i in common if pred_a[i] != truth[i] and pred_b[i] == truth[i])
    newly_wrong = sum(1 for i in common if pred_a[i] == truth[i] and pred_b[i] != truth[i])
    assert summary["n_paired"] == len(common)
    assert (summary["only_previous"], summary["only_current"]) == (400 - len(common), 420 - len(common))
    assert (summary["newly_correct"], summary["newly_wrong"]) == (newly_correct, newly_wrong)
    assert summary["accuracy_prev"] == pytest.approx(sum(pred_a[i] == truth[i] for i in common) / len(common))
    assert summary["accuracy"] == pytest.approx(sum(pred_b[i] == truth[i] for i in common) / len(common))
    assert summary["mcnemar_p"] == pytest.approx(exact_mcnemar(newly_wrong, newly_correct))
    low, high = summary["ci95"]
    assert low < summary["accuracy_diff"] < high
    # the confusion pair changes: recount each (true, pred) cell over the common ids
    for change in summary["confusion_pair_changes"]:
        t, p = change["true_index"], change["pred_index"]
        assert change["previous"] == sum(1 for i in common if truth[i] == t and pred_a[i] == p)
        assert change["current"] == sum(1 for i in common if truth[i] == t and pred_b[i] == p)
    changes = [abs(c["change"]) for c in summary["confusion_pair_changes"]]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0


def test_bootstrap_intervals_are_seeded_and_cover_a_clear_difference():
    first = paired.accuracy_diff_ci(30, 90, 1000)
    assert first == paired.accuracy_diff_ci(30, 90, 1000)
    low, high = first
    assert low < 0.06 < high and low > 0  # diff = (90 - 30) / 1000: clearly above 0
    # the multinomial draw is a paired bootstrap of samples: its spread matches resampling them
    outcome = np.array([0] * 30 + [1] * 90 + [2] * 880)
    rng = np.random.default_rng(1)
    draws = outcome[rng.integers(0, 1000, size=(2000, 1000))]
    direct = np.quantile(((draws == 1).sum(1) - (draws == 0).sum(1)) / 1000, [0.025, 0.975])
    assert np.allclose(first, direct, atol=0.006)


def test_history_counts_forgetting_first_correct_and_suspects_like_a_loop():
    rng = np.random.default_rng(3)
    n, classes, epochs = 60, 4, 6
    labels = rng.integers(0, classes, n)
    history = SampleHistory(classes)
    preds_by_epoch = []
    for e in range(epochs):
        seen = np.sort(rng.choice(n, 50, replace=False))  # not every sample every epoch
        preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes, n))
        preds_by_epoch.append({int(i): int(preds[i]) for i in seen})
        assert history.add_epoch(epoch(e, seen, labels[seen], preds[seen], np.full(50, 0.5), np.full(50, 0.25)))
    assert not history.add_epoch(epoch(2, [0], [labels[0]], [0]))  # an older epoch changes nothing

    rows = history.per_sample()
    for k, i in enumerate(rows.ids.tolist()):
        outcomes = [(e, p[i] == labels[i]) for e, p in enumerate(preds_by_epoch) if i in p]
        forgetting = sum(1 for (_, x), (_, y) in zip(outcomes, outcomes[1:]) if x and not y)
        assert rows.epochs_seen[k] == len(outcomes)
        assert rows.epochs_correct[k] == sum(ok for _, ok in outcomes)
        assert rows.forgetting_events[k] == forgetting
        assert rows.first_correct_epoch[k] == next((e for e, ok in outcomes if ok), -1)
        assert rows.last_pred[k] == [p[i] for p in preds_by_epoch if i in p][-1]
    assert history.previous.epoch == 4 and history.latest.epoch == 5


def test_planted_wrong_labels_come_first_in_label_suspects(tmp_path):
    rng = np.random.default_rng(11)
    n, classes = 400, 5
    truth = rng.integers(0, classes, n)
    planted = np.sort(rng.choice(n, 12, replace=False))
    given = truth.copy()
    given[planted] = (truth[planted] + 1 + rng.integers(0, classes - 1, 12)) % classes
    history = SampleHistory(classes)
    for e in range(8):
        # a model that learns the truth: right on most samples, some noise, and confident
        preds = np.where(rng.random(n) < 0.85, truth, rng.integers(0, classes, n))
        p_given = np.where(preds == given, rng.uniform(0.6, 0.95, n), rng.uniform(0.05, 0.4, n))
        p_given[planted] = rng.uniform(0.01, 0.1, 12)  # the given (wrong) label looks improbable
        history.add_epoch(epoch(e, np.arange(n), given, preds, np.full(n, 0.9), p_given))
    rows = sample_files.write_label_suspects(tmp_path, history, [f"class{i}" for i in range(classes)],
                                             lambda ids: [f"img/{i:04d}.png" for i in ids.tolist()])
    top = {int(r[0]) for r in rows[:15]}
    assert set(planted.tolist()) <= top
    by_id = {int(r[0]): r for r in rows}
    for i in planted.tolist():
        assert by_id[i][1] == f"img/{i:04d}.png"
        assert by_id[i][3] == f"class{truth[i]}"  # the suspected label is the true class
    with open(tmp_path / "label_suspects.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == sample_files.SUSPECTS_HEADER
    scores = [float(r[6]) for r in table[1:]]
    assert scores == sorted(scores, reverse=True)


def test_training_map_counts_an_id_once_per_epoch_and_computes_mean_and_spread():
    tm = TrainingMap(3)
    conf = {0: [0.9, 0.7, 0.8], 1: [0.1, 0.5, 0.3]}
    for e in range(3):
        tm.add_epoch(e, [0], [2], [2], [conf[0][e]])  # one epoch in two chunks
        tm.add_epoch(e, [1, 1], [0, 0], [1, 1], [conf[1][e], 0.99])  # a repeated id within the epoch
    ids, labels, mean, variability, correctness = tm.rows()
    assert ids.tolist() == [0, 1] and labels.tolist() == [2, 0]
    assert mean == pytest.approx([np.mean(conf[0]), np.mean(conf[1])])
    assert variability == pytest.approx([np.std(conf[0]), np.std(conf[1])])
    assert correctness.tolist() == [1.0, 0.0]
    assert tm.duplicates == 3
    tm.add_epoch(1, [0], [2], [2], [0.0])
    assert tm.late == 1 and tm.rows()[2][0] == pytest.approx(0.8)


def test_predictions_file_round_trips_with_stable_bytes(tmp_path):
    samples = epoch(2, [3, 9, 70000], [1, 0, 2], [1, 2, 2], [0.5, 0.25, 1.0], None)
    sample_files.write_predictions(tmp_path, samples)
    data = (tmp_path / sample_files.PREDICTIONS_FILE).read_bytes()
    sample_files.write_predictions(tmp_path, samples)
    assert (tmp_path / sample_files.PREDICTIONS_FILE).read_bytes() == data
    back = sample_files.read_predictions(tmp_path / sample_files.PREDICTIONS_FILE, 2)
    assert back.ids.tolist() == [3, 9, 70000] and back.preds.tolist() == [1, 2, 2]
    assert back.confidence.tolist() == [0.5, 0.25, 1.0] and back.label_confidence is None
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(sample_files.SampleFileError, match="bad.npy"):
        sample_files.read_predictions(tmp_path / "bad.npy", 2)


def test_changes_files_list_every_changed_prediction(tmp_path):
    a = epoch(0, [0, 1, 2, 3], [0, 1, 1, 2], [0, 0, 2, 2], [0.9, 0.8, 0.7, 0.6])
    b = epoch(1, [0, 1, 2, 3], [0, 1, 1, 2], [1, 1, 0, 2], [0.6, 0.7, 0.5, 0.9])
    summary = sample_files.write_changes(tmp_path, a, b, ["x", "y", "z"])
    assert json.loads((tmp_path / "changes.json").read_text()) == summary
    with open(tmp_path / "changes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [sample_files.CHANGES_HEADER,
                    ["0", "0", "x", "x", "0.9000", "y", "0.6000", "newly_wrong"],
                    ["1", "1", "y", "x", "0.8000", "y", "0.7000", "newly_correct"],
                    ["2", "2", "y", "z", "0.7000", "x", "0.5000", "other_wrong"]]
    assert (summary["newly_correct"], summary["newly_wrong"], summary["mcnemar_p"]) == (1, 1, 1.0)
