"""Per-sample state of a run: each validation sample's history over epochs, and the training set's
cartography (track_train), in compact numpy arrays indexed by sample id.

Ids are dataset indices (protocol 1.3), so the arrays are dense: slot `i` holds sample `i`, a slot
never seen has `seen == 0`. They grow (doubling) to the largest id received, up to a cap; an id at
or above the cap is left out and counted, never stored. Memory is a few tens of bytes per id and
does not grow with the number of epochs: only the latest two epochs are kept whole (for the
per-epoch changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The largest validation / training id kept (exclusive). At most about 50 / 40 bytes per slot.
MAX_VAL_IDS = 4_000_000
MAX_TRAIN_IDS = 16_000_000
# label_suspects.csv lists at most this many samples.
LABEL_SUSPECTS_MAX_ROWS = 1_000


@dataclass(frozen=True)
class EpochSamples:
    """One validation epoch, all ranks merged, duplicates removed: parallel arrays by sample."""

    epoch: int
    ids: np.ndarray  # int64, unique, sorted ascending
    labels: np.ndarray  # int64
    preds: np.ndarray  # int64
    confidence: np.ndarray | None  # float32 top-1 confidence; None from a pre-1.2 sender
    label_confidence: np.ndarray | None  # float32 probability of the given label; None without it

    @property
    def correct(self) -> np.ndarray:
        return self.preds == self.labels

    def check(self) -> None:
        """Raises ValueError unless the arrays are parallel and the ids unique and ascending."""
        n = len(self.ids)
        for name in ("labels", "preds", "confidence", "label_confidence"):
            array = getattr(self, name)
            if array is not None and len(array) != n:
                raise ValueError(f"EpochSamples.{name} has {len(array)} entries for {n} ids")
        if n > 1 and not bool(np.all(np.diff(self.ids) > 0)):
            raise ValueError("EpochSamples.ids must be unique and sorted ascending")
        if n and int(self.ids[0]) < 0:
            raise ValueError("EpochSamples.ids must be >= 0")


@dataclass(frozen=True)
class SuspectRows:
    """The most suspect samples, most suspect first (parallel arrays)."""

    ids: np.ndarray
    labels: np.ndarray
    suspected: np.ndarray  # the class the model predicts instead (-1: none)
    epochs_wrong: np.ndarray
    mean_label_confidence: np.ndarray  # NaN where the sender gave no label confidence
    score: np.ndarray


@dataclass(frozen=True)
class PerSampleRows:
    """Every sample seen, by id (parallel arrays); confidence NaN where none was sent."""

    ids: np.ndarray
    labels: np.ndarray
    last_pred: np.ndarray
    last_confidence: np.ndarray
    epochs_seen: np.ndarray
    epochs_correct: np.ndarray
    forgetting_events: np.ndarray
    first_correct_epoch: np.ndarray  # -1: never correct


class _Dense:
    """Named int/float arrays indexed by id that grow together (doubling) up to `cap` slots."""

    def __init__(self, cap: int, fields: dict[str, tuple[type, float]]) -> None:
        self.cap = cap
        self.fields = fields
        self.size = 0
        for name, (dtype, fill) in fields.items():
            setattr(self, name, np.full(0, fill, dtype=dtype))

    def keep(self, ids: np.ndarray) -> np.ndarray:
        """A mask of the ids under the cap; grows the arrays to hold them."""
        kept = ids < self.cap
        if len(ids):
            top = int(ids[kept].max()) + 1 if kept.any() else 0
            if top > self.size:
                size = min(self.cap, max(top, 2 * self.size))
                for name, (dtype, fill) in self.fields.items():
                    old = getattr(self, name)
                    new = np.full(size, fill, dtype=dtype)
                    new[:self.size] = old
                    setattr(self, name, new)
                self.size = size
        return kept

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.fields)


class SampleHistory:
    """Per-sample history of one run's validation set (bounded, numpy arrays keyed by id).

    `add_epoch` takes each epoch once, in increasing order (a repeated or older epoch is ignored);
    it keeps, per id, the label, the last prediction and confidence, epochs seen and correct,
    forgetting events (correct at one appearance, wrong at the next), the first correct epoch, the
    mean probability of the given label, and the class most wrong predictions went to (a
    Boyer-Moore majority vote: exact when one class holds more than half of them).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.state = _Dense(MAX_VAL_IDS, {
            "label": (np.int32, -1), "last_pred": (np.int32, -1), "last_confidence": (np.float32, np.nan),
            "seen": (np.int32, 0), "correct": (np.int32, 0), "forgetting": (np.int32, 0),
            "first_correct": (np.int32, -1), "last_correct": (np.bool_, False),
            "label_confidence_sum": (np.float64, 0.0), "label_confidence_n": (np.int32, 0),
            "candidate": (np.int32, -1), "votes": (np.int32, 0),
        })
        self.previous: EpochSamples | None = None  # the epoch before `latest`, for the changes
        self.latest: EpochSamples | None = None
        self.epochs: list[int] = []
        self.ids_over_cap = 0  # ids at or above MAX_VAL_IDS, left out
        self.label_changed = 0  # (id, epoch) pairs whose label differs from the id's first one

    def add_epoch(self, samples: EpochSamples) -> bool:
        """Adds one epoch; False (nothing changed) when it is not newer than the last one added."""
        samples.check()
        if self.epochs and samples.epoch <= self.epochs[-1]:
            return False
        s = self.state
        kept = s.keep(samples.ids)
        if not kept.all():
            self.ids_over_cap += int((~kept).sum())
            samples = _subset(samples, kept)
        ids, labels, preds = samples.ids, samples.labels, samples.preds
        first = s.seen[ids] == 0
        s.label[ids[first]] = labels[first]
        self.label_changed += int((s.label[ids] != labels).sum())
        correct = preds == labels
        forgot = (~first) & s.last_correct[ids] & ~correct
        s.forgetting[ids[forgot]] += 1
        s.seen[ids] += 1
        s.correct[ids[correct]] += 1
        newly = correct & (s.first_correct[ids] < 0)
        s.first_correct[ids[newly]] = samples.epoch
        s.last_correct[ids] = correct
        s.last_pred[ids] = preds
        s.last_confidence[ids] = np.nan if samples.confidence is None else samples.confidence
        if samples.label_confidence is not None:
            s.label_confidence_sum[ids] += samples.label_confidence
            s.label_confidence_n[ids] += 1
        self._vote(ids[~correct], preds[~correct])
        self.previous, self.latest = self.latest, samples
        self.epochs.append(samples.epoch)
        return True

    def _vote(self, ids: np.ndarray, preds: np.ndarray) -> None:
        s = self.state
        same = s.candidate[ids] == preds
        s.votes[ids[same]] += 1
        other = ~same
        empty = other & (s.votes[ids] == 0)
        s.candidate[ids[empty]] = preds[empty]
        s.votes[ids[empty]] = 1
        s.votes[ids[other & ~empty]] -= 1

    @property
    def nbytes(self) -> int:
        """Bytes held: the per-id arrays and the two kept epochs."""
        kept = sum(_epoch_bytes(e) for e in (self.previous, self.latest) if e is not None)
        return self.state.nbytes + kept

    def per_sample(self) -> PerSampleRows:
        s = self.state
        ids = np.flatnonzero(s.seen[:s.size])
        return PerSampleRows(ids, s.label[ids], s.last_pred[ids], s.last_confidence[ids], s.seen[ids],
                             s.correct[ids], s.forgetting[ids], s.first_correct[ids])

    def suspects(self, limit: int = LABEL_SUSPECTS_MAX_ROWS) -> SuspectRows:
        """The samples most likely mislabelled, most suspect first, at most `limit`.

        score = (epochs wrong / epochs seen) × (1 − mean probability of the given label); for a
        sender without label confidences, the mean is taken as 0 so the score is the share of
        epochs wrong. Only samples wrong at least once are listed; ties go to the smaller id.
        """
        s = self.state
        seen = s.seen[:s.size]
        ids = np.flatnonzero((seen > 0) & (s.correct[:s.size] < seen))
        wrong = (s.seen[ids] - s.correct[ids]).astype(np.int64)
        n = s.label_confidence_n[ids]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, s.label_confidence_sum[ids] / np.maximum(n, 1), np.nan)
        score = wrong / s.seen[ids] * (1.0 - np.nan_to_num(mean, nan=0.0))
        order = np.lexsort((ids, -score))[:limit]
        ids = ids[order]
        return SuspectRows(ids, s.label[ids], s.candidate[ids], wrong[order], mean[order], score[order])


class TrainingMap:
    """Training-set cartography state (track_train): per training id, the mean and spread of the
    given label's probability over epochs and the share of epochs predicted right.

    An epoch may come in several calls (chunks); an id counts once per epoch (a repeat within an
    epoch is counted in `duplicates`), and an epoch older than the latest is ignored (`late`).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.state = _Dense(MAX_TRAIN_IDS, {
            "label": (np.int32, -1), "seen": (np.int32, 0), "correct": (np.int32, 0),
            "last_epoch": (np.int32, -1), "sum": (np.float64, 0.0), "sum_squares": (np.float64, 0.0),
        })
        self.epoch = -1
        self.ids_over_cap = 0
        self.duplicates = 0
        self.late = 0

    def add_epoch(self, epoch: int, ids, labels, preds, label_confidence) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
        confidence = np.asarray(label_confidence, dtype=np.float64)
        if not len(ids) == len(labels) == len(preds) == len(confidence):
            raise ValueError(f"TrainingMap.add_epoch: {len(ids)} ids, {len(labels)} labels, {len(preds)} preds "
                             f"and {len(confidence)} label confidences; they must be parallel")
        if epoch < self.epoch:
            self.late += len(ids)
            return
        self.epoch = epoch
        s = self.state
        kept = s.keep(ids)
        if not kept.all():
            self.ids_over_cap += int((~kept).sum())
            ids, labels, preds, confidence = ids[kept], labels[kept], preds[kept], confidence[kept]
        _, first_index = np.unique(ids, return_index=True)
        fresh = np.zeros(len(ids), dtype=bool)
        fresh[first_index] = True
        fresh &= s.last_epoch[ids] != epoch
        self.duplicates += int(len(ids) - fresh.sum())
        ids, labels, preds, confidence = ids[fresh], labels[fresh], preds[fresh], confidence[fresh]
        s.label[ids] = labels
        s.last_epoch[ids] = epoch
        s.seen[ids] += 1
        s.correct[ids[preds == labels]] += 1
        s.sum[ids] += confidence
        s.sum_squares[ids] += confidence * confidence

    @property
    def nbytes(self) -> int:
        return self.state.nbytes

    @property
    def tracked(self) -> int:
        """Training ids seen at least once."""
        return int((self.state.seen[:self.state.size] > 0).sum())

    def rows(self) -> tuple[np.ndarray, ...]:
        """(ids, labels, confidence mean, variability (population std), correctness) of every id seen."""
        s = self.state
        ids = np.flatnonzero(s.seen[:s.size])
        seen = s.seen[ids].astype(np.float64)
        mean = s.sum[ids] / seen
        variability = np.sqrt(np.maximum(s.sum_squares[ids] / seen - mean * mean, 0.0))
        return ids, s.label[ids], mean, variability, s.correct[ids] / seen


def samples_summary(history: SampleHistory | None, training_map: TrainingMap | None, missing: str | None) -> dict:
    """What summary.json says of a run's sample-level data: counts, or why there is none."""
    if history is None:
        return {} if missing is None else {"sample_ids_missing": missing}
    s = history.state
    summary: dict = {"samples": {"tracked": int((s.seen[:s.size] > 0).sum()), "epochs": len(history.epochs),
                                 "ids_over_cap": history.ids_over_cap, "label_changed": history.label_changed}}
    if training_map is not None:
        summary["training_map"] = {"tracked": training_map.tracked, "ids_over_cap": training_map.ids_over_cap,
                                   "duplicates": training_map.duplicates, "late": training_map.late}
    return summary


def _subset(samples: EpochSamples, mask: np.ndarray) -> EpochSamples:
    def pick(array):
        return None if array is None else array[mask]
    return EpochSamples(samples.epoch, samples.ids[mask], samples.labels[mask], samples.preds[mask],
                        pick(samples.confidence), pick(samples.label_confidence))


def _epoch_bytes(samples: EpochSamples) -> int:
    arrays = (samples.ids, samples.labels, samples.preds, samples.confidence, samples.label_confidence)
    return sum(a.nbytes for a in arrays if a is not None)
