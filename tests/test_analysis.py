"""per_class_metrics.csv and top_confusions.csv: every figure against scikit-learn or an independent
count, on random predictions and on the recorded run in tests/data/."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import precision_recall_fscore_support

from monitor.aggregates import analysis
from monitor.aggregates.confusion import SparseCounts
from monitor.outputs.render import tables
from monitor.replay import replay
from trainer_side import protocol
from trainer_side.msglog import LogWriter, iter_frames

DATA = Path(__file__).parent / "data"
FIXTURE_LOG = DATA / "tiny_run.mlog"
EPOCHS = (0, 1, 2)


def _predictions(seed: int, classes: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions where a quarter of the classes are never predicted and another quarter
    never occur as labels (with at least 2 classes left to draw from)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    never_true = order[: classes // 4]
    never_pred = order[classes // 4: classes // 2]
    labels = rng.choice(np.setdiff1d(np.arange(classes), never_true), samples)
    preds = np.where(rng.random(samples) < 0.4, labels, rng.integers(0, classes, samples))
    allowed = np.setdiff1d(np.arange(classes), never_pred)
    preds = np.where(np.isin(preds, never_pred), allowed[preds % len(allowed)], preds)
    return labels, preds


def _replay(tmp_path: Path, log: Path = FIXTURE_LOG) -> Path:
    out = tmp_path / "out"
    pipeline, intake, _ = replay([log], out, skip_corrupt=False, console=Console(file=io.StringIO(), width=200))
    assert sum(intake.rejected.values()) == 0 and sum(pipeline.rejected.values()) == 0
    return out / "tiny-fixture"


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _assert_matches_sklearn(rows: list[list[str]], labels: np.ndarray, preds: np.ndarray, names: list[str]) -> None:
    classes = len(names)
    assert rows[0] == ["class", "index", "precision", "recall", "f1", "support"]
    body = rows[1:]
    assert len(body) == classes + 2
    everything = list(range(classes))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=everything, zero_division=0)
    for i, row in enumerate(body[:classes]):
        assert row[:2] == [names[i], str(i)]
        np.testing.assert_allclose([float(x) for x in row[2:5]], [p[i], r[i], f[i]], rtol=0, atol=5e-7)
        assert int(row[5]) == s[i]
    for row, average in zip(body[classes:], ("macro", "weighted")):
        expected = precision_recall_fscore_support(labels, preds, labels=everything, average=average, zero_division=0)
        assert row[:2] == [f"{average} avg", ""]
        np.testing.assert_allclose([float(x) for x in row[2:5]], expected[:3], rtol=0, atol=5e-7)
        assert int(row[5]) == len(labels)


def _metrics_csv(rows: list[analysis.ClassMetricsRow]) -> list[list[str]]:
    fraction = analysis.format_fraction
    return [["class", "index", "precision", "recall", "f1", "support"]] + [
        [r.name, "" if r.index is None else str(r.index), fraction(r.precision), fraction(r.recall),
         fraction(r.f1), str(r.support)] for r in rows]


@pytest.mark.parametrize("classes", [4, 7, 43, 300])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_metrics_match_scikit_learn_with_zero_division_zero(classes, seed):
    labels, preds = _predictions(seed, classes, 20 * classes)
    names = [f"c{i}" for i in range(classes)]
    counts = SparseCounts.total([SparseCounts.of(preds[:7], labels[:7], classes),
                                 SparseCounts.of(preds[7:], labels[7:], classes)])
    rows = analysis.per_class_metrics(counts, names)
    support = np.bincount(labels, minlength=classes)
    predicted = np.bincount(preds, minlength=classes)
    assert (support == 0).any() and (predicted == 0).any() and ((support > 0) & (predicted == 0)).any()
    _assert_matches_sklearn(_metrics_csv(rows), labels, preds, names)
    for row in rows:
        assert np.isfinite([row.precision, row.recall, row.f1]).all()


def test_a_never_predicted_class_has_precision_zero_and_an_absent_class_recall_zero():
    # class 0: 2 samples, never predicted; class 2: predicted once, no samples
    counts = SparseCounts.of(np.array([1, 2, 1]), np.array([0, 0, 1]), 3)
    rows = {row.name: row for row in analysis.per_class_metrics(counts, ["a", "b", "c"])}
    assert (rows["a"].precision, rows["a"].recall, rows["a"].f1, rows["a"].support) == (0.0, 0.0, 0.0, 2)
    assert (rows["c"].precision, rows["c"].recall, rows["c"].f1, rows["c"].support) == (0.0, 0.0, 0.0, 0)
    assert (rows["b"].precision, rows["b"].recall) == (0.5, 1.0)
    assert rows["weighted avg"].recall == pytest.approx(1 / 3) and rows["macro avg"].recall == pytest.approx(1 / 3)


def test_worst_classes_are_the_lowest_f1_with_more_support_first_among_ties():
    rows = [analysis.ClassMetricsRow(f"c{i}", i, 0.0, 0.0, f1, support)
            for i, (f1, support) in enumerate([(0.5, 3), (0.0, 1), (0.9, 9), (0.0, 5), (0.2, 2)])]
    rows += [analysis.ClassMetricsRow(analysis.MACRO_AVG, None, 0.0, 0.0, 0.0, 20)]
    assert [row.index for row in analysis.worst_by_f1(rows, limit=3)] == [3, 1, 4]


def _independent_confusions(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> list[list[str]]:
    pairs = Counter((int(t), int(p)) for t, p in zip(labels, preds) if t != p)
    support = Counter(int(t) for t in labels)
    ordered = sorted(pairs.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))
    return [[names[t], names[p], str(n), f"{n / support[t]:.6f}"] for (t, p), n in ordered]


@pytest.mark.parametrize("classes", [3, 43, 300])
def test_top_confusions_are_every_off_diagonal_cell_largest_first_ties_by_index(classes):
    labels, preds = _predictions(classes, classes, 10 * classes)
    names = [f"n{i}" for i in range(classes)]
    top = analysis.top_confusions(SparseCounts.of(preds, labels, classes), names)
    got = [[r.true, r.pred, str(r.count), analysis.format_fraction(r.share_of_true)] for r in top.rows]
    expected = _independent_confusions(labels, preds, names)
    assert got == expected and top.total_cells == len(expected)
    if classes > 3:
        assert len({row[2] for row in got}) < len(got)  # ties exist, so their order is really checked


def test_top_confusions_stop_at_the_cap_and_count_every_cell():
    classes = 300
    labels, preds = _predictions(5, classes, 30_000)
    names = [f"n{i}" for i in range(classes)]
    expected = _independent_confusions(labels, preds, names)
    assert len(expected) > 50
    top = analysis.top_confusions(SparseCounts.of(preds, labels, classes), names, limit=50)
    got = [[r.true, r.pred, str(r.count), analysis.format_fraction(r.share_of_true)] for r in top.rows]
    assert got == expected[:50]
    assert top.total_cells == len(expected)
    assert analysis.TOP_CONFUSIONS_MAX_ROWS == 10_000


def test_without_samples_every_figure_is_zero():
    rows = analysis.per_class_metrics(SparseCounts.of(np.array([], int), np.array([], int), 3), ["a", "b", "c"])
    assert [(r.precision, r.recall, r.f1, r.support) for r in rows] == [(0.0, 0.0, 0.0, 0)] * 5
    assert analysis.top_confusions(SparseCounts.of(np.array([], int), np.array([], int), 3), ["a", "b", "c"]).rows == []


@pytest.mark.slow
def test_replaying_the_recorded_run_writes_both_files_for_every_epoch(tmp_path):
    run = _replay(tmp_path)
    expected = dict(np.load(DATA / "tiny_run_expected.npz"))
    names = [row[0] for row in _read_csv(run / "epoch_000" / "confusion_matrix.csv")[1:]]
    for epoch in EPOCHS:
        labels, preds = expected[f"labels_{epoch}"], expected[f"preds_{epoch}"]
        folder = run / f"epoch_{epoch:03d}"
        _assert_matches_sklearn(_read_csv(folder / "per_class_metrics.csv"), labels, preds, names)
        confusions = _read_csv(folder / "top_confusions.csv")
        assert confusions[0] == ["true", "pred", "count", "share_of_true"]
        assert confusions[1:] == _independent_confusions(labels, preds, names) and len(confusions) > 2
    console = (run / "console.txt").read_text()
    for epoch in EPOCHS:
        assert f"Worst classes by F1 — epoch {epoch}" in console and f"Top confusions — epoch {epoch}" in console


@pytest.mark.slow
def test_formula_like_class_names_are_neutralised_in_both_files(tmp_path):
    hostile = ["=1+1", "@SUM(A1)", "+cmd", "-x"]
    messages = [protocol.decode(frame) for frame in iter_frames(FIXTURE_LOG)]
    messages[0] = dataclasses.replace(messages[0], body={**messages[0].body, "class_names": hostile})
    log = tmp_path / "hostile.mlog"
    with LogWriter(log) as writer:
        for message in messages:
            writer.append(protocol.encode(message))
    folder = _replay(tmp_path, log) / "epoch_000"
    metrics = _read_csv(folder / "per_class_metrics.csv")
    assert [row[0] for row in metrics[1:]] == ["'=1+1", "'@SUM(A1)", "'+cmd", "'-x", "macro avg", "weighted avg"]
    confusions = _read_csv(folder / "top_confusions.csv")
    assert {cell[0] for row in confusions[1:] for cell in row[:2]} <= {"'"}


def test_console_tables_show_the_worst_ten_and_the_top_ten():
    classes = 43
    labels, preds = _predictions(3, classes, 2000)
    counts = SparseCounts.of(preds, labels, classes)
    names = [f"class{i}" for i in range(classes)]
    metrics = analysis.per_class_metrics(counts, names)
    worst = analysis.worst_by_f1(metrics)
    text = tables.table_text(tables.worst_classes_table(worst, metrics[-2:], classes, 4))
    assert len(worst) == 10 and "10 of 43 classes shown" in text and "epoch_004/per_class_metrics.csv" in text
    shown = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    assert shown == [row.name for row in worst] + ["Macro avg", "Weighted avg"]
    top = analysis.top_confusions(counts, names)
    text = tables.table_text(tables.top_confusions_table(top.rows[:10], top.total_cells, 4))
    shown = [[cell.strip() for cell in line.split("│")[1:4]] for line in text.splitlines() if line.startswith("│")]
    assert shown == [[r.true, r.pred, f"{r.count:,}"] for r in top.rows[:10]]
    assert f"10 of {top.total_cells:,} confused pairs shown" in " ".join(text.split())


def _most_confused_by_brute_force(labels: np.ndarray, preds: np.ndarray, classes: int, limit: int) -> list[int]:
    involvement = [0] * classes
    for t, p in zip(labels.tolist(), preds.tolist()):
        if t != p:
            involvement[t] += 1
            involvement[p] += 1
    return sorted(range(classes), key=lambda c: (-involvement[c], c))[:limit]


@pytest.mark.parametrize("classes, limit", [(1, 30), (3, 30), (43, 10), (300, 30), (2000, 30)])
@pytest.mark.parametrize("seed", [0, 1])
def test_most_confused_classes_are_those_with_most_mistakes_as_true_or_predicted_ties_by_index(classes, limit, seed):
    labels, preds = _predictions(seed, classes, 5 * classes)
    chosen = analysis.most_confused_classes(SparseCounts.of(preds, labels, classes), limit)
    expected = _most_confused_by_brute_force(labels, preds, classes, limit)
    assert chosen.tolist() == expected
    assert len(chosen) == min(limit, classes)


def test_most_confused_classes_break_ties_by_index_and_fill_up_with_unconfused_classes():
    # 4 ↔ 2 once each way, 0 → 3 twice: involvement 0:2, 2:2, 3:2, 4:2, others 0
    labels, preds = np.array([4, 2, 0, 0, 1, 5]), np.array([2, 4, 3, 3, 1, 5])
    chosen = analysis.most_confused_classes(SparseCounts.of(preds, labels, 6), limit=5)
    assert chosen.tolist() == [0, 2, 3, 4, 1]
    assert analysis.TOP_MATRIX_CLASSES == 30


def test_counts_among_chosen_classes_are_the_whole_matrix_restricted_to_them():
    classes = 200
    labels, preds = _predictions(7, classes, 4000)
    counts = SparseCounts.of(preds, labels, classes)
    chosen = analysis.most_confused_classes(counts, 25)
    whole = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(whole, (labels, preds), 1)
    np.testing.assert_array_equal(analysis.confusion_among(counts, chosen), whole[np.ix_(chosen, chosen)])
    np.testing.assert_array_equal(analysis.support_of(counts), np.bincount(labels, minlength=classes))
