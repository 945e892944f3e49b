"""Paired comparisons of two sets of predictions on the same samples (two epochs, or two runs).

Pure functions, no I/O. The exact McNemar test is scipy's binomial test; the confidence intervals
come from a paired bootstrap over samples with a fixed seed, so the same inputs give the same
numbers (and replay the same bytes). For the accuracy difference the bootstrap draws the counts of
the four (right/wrong, right/wrong) cells from a multinomial, which is the same distribution as
resampling the samples themselves, at a cost independent of their number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.aggregates.samples import EpochSamples

BOOTSTRAP_SEED = 0
ACCURACY_RESAMPLES = 2_000
F1_RESAMPLES = 1_000
# changes.json / comparison.json list this many class pairs whose confusion count changed most.
TOP_PAIR_CHANGES = 10
P_NOISE = 0.05  # below it, a difference is called distinguishable from noise in the words


@dataclass(frozen=True)
class Pairing:
    """Two prediction sets aligned on their common ids: `a` and `b` hold the same ids in order."""

    a: EpochSamples
    b: EpochSamples
    only_a: int  # ids in a but not b
    only_b: int
    label_mismatches: int  # common ids whose labels differ

    @property
    def n(self) -> int:
        return len(self.a.ids)


def pair(a: EpochSamples, b: EpochSamples) -> Pairing:
    """Aligns `a` and `b` on the ids they share (both sorted, unique)."""
    common, ia, ib = np.intersect1d(a.ids, b.ids, assume_unique=True, return_indices=True)
    aligned_a, aligned_b = _take(a, ia), _take(b, ib)
    return Pairing(aligned_a, aligned_b, len(a.ids) - len(common), len(b.ids) - len(common),
                   int((aligned_a.labels != aligned_b.labels).sum()))


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs: min(1, 2·P(X ≤ min(b, c))),
    X ~ Binomial(b + c, 1/2); 1.0 when there is no discordant pair."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest  # scipy.stats takes a second to import: only once ids arrive

    return float(min(1.0, binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def accuracy_diff_ci(a_only: int, b_only: int, n: int, *, seed: int = BOOTSTRAP_SEED,
                     resamples: int = ACCURACY_RESAMPLES) -> list[float] | None:
    """95 % paired-bootstrap interval of accuracy(b) − accuracy(a) over `n` paired samples, of
    which `a_only` only a got right and `b_only` only b; None without samples."""
    if n <= 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [a_only / n, b_only / n, (n - a_only - b_only) / n], size=resamples)
    diffs = (draws[:, 1] - draws[:, 0]) / n
    low, high = np.quantile(diffs, [0.025, 0.975])
    return [float(low), float(high)]


def macro_f1(labels: np.ndarray, preds: np.ndarray, classes: np.ndarray, num_classes: int,
             weights: np.ndarray | None = None) -> float:
    """The mean F1 over `classes` (0 for a class never predicted nor present), samples weighted by
    `weights` (bootstrap counts; None: once each)."""
    support = np.bincount(labels, weights=weights, minlength=num_classes)
    predicted = np.bincount(preds, weights=weights, minlength=num_classes)
    right = labels == preds
    hits = np.bincount(labels[right], weights=None if weights is None else weights[right], minlength=num_classes)
    denominator = (predicted + support)[classes]
    f1 = np.divide(2 * hits[classes], denominator, out=np.zeros(len(classes)), where=denominator > 0)
    return float(f1.mean()) if len(classes) else 0.0


def macro_f1_diff_ci(pairing: Pairing, num_classes: int, *, seed: int = BOOTSTRAP_SEED,
                     resamples: int = F1_RESAMPLES) -> list[float] | None:
    """95 % paired-bootstrap interval of macro-F1(b) − macro-F1(a), over the classes with a paired
    sample, resampling samples (the same draw for both)."""
    n = pairing.n
    if n == 0:
        return None
    labels = pairing.a.labels
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for i in range(resamples):
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        diffs[i] = (macro_f1(labels, pairing.b.preds, classes, num_classes, weights)
                    - macro_f1(labels, pairing.a.preds, classes, num_classes, weights))
    low, high = np.quantile(diffs, [0.025, 0.975])
    return [float(low), float(high)]


@dataclass(frozen=True)
class PairChange:
    """A (true, predicted) class pair whose count of mistakes changed from a to b."""

    true: int
    pred: int
    count_a: int
    count_b: int

    @property
    def change(self) -> int:
        return self.count_b - self.count_a


def confusion_pair_changes(pairing: Pairing, num_classes: int, limit: int = TOP_PAIR_CHANGES) -> list[PairChange]:
    """The off-diagonal cells whose count changed most between a and b (largest |change| first,
    then by true and predicted class)."""
    labels = pairing.a.labels.astype(np.int64)
    cells_a = _mistake_cells(labels, pairing.a.preds, num_classes)
    cells_b = _mistake_cells(labels, pairing.b.preds, num_classes)
    cells, inverse = np.unique(np.concatenate([cells_a, cells_b]), return_inverse=True)
    count_a = np.bincount(inverse[:len(cells_a)], minlength=len(cells))
    count_b = np.bincount(inverse[len(cells_a):], minlength=len(cells))
    change = count_b - count_a
    order = np.lexsort((cells, -np.abs(change)))
    order = order[change[order] != 0][:limit]
    return [PairChange(int(cells[i] // num_classes), int(cells[i] % num_classes), int(count_a[i]), int(count_b[i]))
            for i in order]


@dataclass(frozen=True)
class PairedResult:
    """Accuracy of a and b on the paired samples, the discordant counts and the tests."""

    n_paired: int
    newly_correct: int  # wrong in a, right in b
    newly_wrong: int  # right in a, wrong in b
    accuracy_a: float | None
    accuracy_b: float | None
    accuracy_diff: float | None
    ci95: list[float] | None
    mcnemar_p: float


def paired_accuracy(pairing: Pairing) -> PairedResult:
    right_a, right_b = pairing.a.correct, pairing.b.correct
    n = pairing.n
    newly_correct = int((~right_a & right_b).sum())
    newly_wrong = int((right_a & ~right_b).sum())
    if n == 0:
        return PairedResult(0, 0, 0, None, None, None, None, 1.0)
    accuracy_a, accuracy_b = float(right_a.sum()) / n, float(right_b.sum()) / n
    return PairedResult(n, newly_correct, newly_wrong, accuracy_a, accuracy_b, accuracy_b - accuracy_a,
                        accuracy_diff_ci(newly_wrong, newly_correct, n), mcnemar_p(newly_wrong, newly_correct))


@dataclass(frozen=True)
class ClassComparison:
    index: int
    support: int
    recall_a: float
    recall_b: float
    mcnemar_p: float
    holm_p: float


def per_class_comparison(pairing: Pairing) -> list[ClassComparison]:
    """Recall of each class present among the paired labels in a and b, with its McNemar p-value
    and Holm's adjustment over those classes."""
    labels = pairing.a.labels.astype(np.int64)
    right_a, right_b = pairing.a.correct, pairing.b.correct
    classes, inverse = np.unique(labels, return_inverse=True)
    k = len(classes)
    support = np.bincount(inverse, minlength=k)
    hits_a = np.bincount(inverse[right_a], minlength=k)
    hits_b = np.bincount(inverse[right_b], minlength=k)
    only_a = np.bincount(inverse[right_a & ~right_b], minlength=k)
    only_b = np.bincount(inverse[~right_a & right_b], minlength=k)
    p = np.array([mcnemar_p(int(x), int(y)) for x, y in zip(only_a, only_b)])
    adjusted = holm(p)
    return [ClassComparison(int(classes[i]), int(support[i]), float(hits_a[i] / support[i]),
                            float(hits_b[i] / support[i]), float(p[i]), float(adjusted[i])) for i in range(k)]


def verdict(diff: float | None, p: float, unit: str = "pts") -> str:
    """The test result in words: "+0.40 pts, p = 0.21: not distinguishable from noise"."""
    if diff is None:
        return "no paired samples"
    words = "a real difference at the 5 % level" if p < P_NOISE else "not distinguishable from noise"
    return f"{100 * diff:+.2f} {unit}, p = {p:.2g}: {words}"


def _mistake_cells(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    wrong = labels != preds
    return labels[wrong] * num_classes + preds[wrong].astype(np.int64)


def _take(samples: EpochSamples, index: np.ndarray) -> EpochSamples:
    def pick(array):
        return None if array is None else array[index]
    return EpochSamples(samples.epoch, samples.ids[index], samples.labels[index], samples.preds[index],
                        pick(samples.confidence), pick(samples.label_confidence))
