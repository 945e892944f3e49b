"""The sample-level files of a run (protocol 1.3 ids): each epoch's predictions.npy, changes.json and
changes.csv, and the run's per_sample.csv, label_suspects.csv and data_map.csv.

`predictions.npy` is what `monitor compare` pairs runs on: one record per validation sample (id,
label, prediction, confidence, label confidence; NaN where the sender gave none), in numpy's .npy
format, whose bytes depend only on the content. The other files are for people and spreadsheets.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from monitor.aggregates import paired
from monitor.aggregates.samples import EpochSamples, SampleHistory, TrainingMap
from monitor.outputs.render.save import csv_cell, write_bytes, write_json, write_text_parts

PREDICTIONS_FILE = "predictions.npy"

Namer = Callable[[np.ndarray], Sequence[str]]  # sample ids -> their names (the id as text by default)


class SampleFileError(ValueError):
    """A predictions.npy that cannot be read: the message says which file and why."""


def id_names(ids: np.ndarray) -> list[str]:
    return list(map(str, np.asarray(ids).tolist()))


def class_name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else f"#{index}"


def _class_column(class_names: Sequence[str], indices: np.ndarray) -> list[str]:
    indices = np.asarray(indices, dtype=np.int64)
    if not len(indices) or (indices.min() >= 0 and indices.max() < len(class_names)):
        return np.asarray(list(class_names) or [""], dtype=object)[indices].tolist()
    return [class_name(class_names, i) for i in indices.tolist()]


def _fraction_column(values: np.ndarray | None, n: int) -> list[str]:
    """Four decimals, blank for NaN or a missing column."""
    if values is None:
        return [""] * n
    return [f"{x:.4f}" if x == x and abs(x) != float("inf") else "" for x in np.asarray(values, np.float64).tolist()]


ROWS_PER_PART = 65_536  # a large table is formatted and written this many rows at a time
_FIELD_CACHE_MAX = 10_000


def write_columns(path: Path, header: Sequence[str], columns: Sequence[Sequence[str]], text: set[int]) -> None:
    """A CSV file from columns of cells already turned into text (`write_column_parts`, one part)."""
    write_column_parts(path, header, [columns], text)


def write_column_parts(path: Path, header: Sequence[str], parts: Iterable[Sequence[Sequence[str]]],
                       text: set[int]) -> None:
    """A CSV file from parts, each a list of columns of cells already turned into text, as `write_csv`
    would write it: the columns in `text` (names from the trainer) are neutralised (`csv_cell`) and
    quoted where needed; the others hold numbers we formatted. Column-wise, so 50,000 rows cost
    milliseconds, and part by part, so a million-row table never sits whole in memory."""
    cache: dict[str, str] = {}

    def field(value: str) -> str:
        done = cache.get(value)
        if done is None:
            done = str(csv_cell(value))
            if any(c in done for c in ',"\r\n'):
                done = '"' + done.replace('"', '""') + '"'
            if len(cache) >= _FIELD_CACHE_MAX:
                cache.clear()
            cache[value] = done
        return done

    def lines() -> Iterator[str]:
        yield ",".join(field(h) for h in header) + "\n"
        for columns in parts:
            cells = [[field(v) for v in column] if i in text else column for i, column in enumerate(columns)]
            rows = list(map(",".join, zip(*cells)))
            if rows:
                yield "\n".join(rows) + "\n"

    write_text_parts(path, lines())


def _slices(count: int) -> Iterator[slice]:
    return (slice(start, start + ROWS_PER_PART) for start in range(0, count, ROWS_PER_PART))


def _int_column(values: np.ndarray) -> list[str]:
    return list(map(str, np.asarray(values).tolist()))


# --- predictions.npy ------------------------------------------------------------------------------

def predictions_record(samples: EpochSamples) -> np.ndarray:
    """The epoch as one structured array, in the smallest dtypes that hold it."""
    n = len(samples.ids)
    big_id = n and int(samples.ids[-1]) >= 2**32
    top = max(int(samples.labels.max(initial=0)), int(samples.preds.max(initial=0)))
    label_type = "<u2" if top < 2**16 else "<u4"
    record = np.empty(n, dtype=[("id", "<u8" if big_id else "<u4"), ("label", label_type), ("pred", label_type),
                                ("confidence", "<f2"), ("label_confidence", "<f2")])
    record["id"], record["label"], record["pred"] = samples.ids, samples.labels, samples.preds
    record["confidence"] = np.nan if samples.confidence is None else samples.confidence
    record["label_confidence"] = np.nan if samples.label_confidence is None else samples.label_confidence
    return record


def write_predictions(epoch_dir: Path, samples: EpochSamples) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, predictions_record(samples), allow_pickle=False)
    write_bytes(epoch_dir / PREDICTIONS_FILE, buffer.getvalue())


def read_predictions(path: Path, epoch: int) -> EpochSamples:
    """An epoch's samples back from its predictions.npy; SampleFileError if it is missing or damaged."""
    try:
        record = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SampleFileError(f"{path} does not exist: that epoch has no sample ids (protocol before 1.3, "
                              "or the epoch was never drawn)") from None
    except (OSError, ValueError) as exc:
        raise SampleFileError(f"{path} is not a readable predictions file ({exc})") from None
    if record.dtype.names is None or not {"id", "label", "pred"} <= set(record.dtype.names) or record.ndim != 1:
        raise SampleFileError(f"{path} is not a predictions file (expected fields id, label, pred)")
    ids = record["id"].astype(np.int64)
    if len(ids) > 1 and not bool(np.all(np.diff(ids) > 0)):
        raise SampleFileError(f"{path}: ids are not unique and ascending")

    def optional(name: str) -> np.ndarray | None:
        if name not in record.dtype.names:
            return None
        values = record[name].astype(np.float32)
        return None if len(values) and np.isnan(values).all() else values

    return EpochSamples(epoch, ids, record["label"].astype(np.int64), record["pred"].astype(np.int64),
                        optional("confidence"), optional("label_confidence"))


# --- changes ----------------------------------------------------------------------------------------

def pair_changes_json(changes: list[paired.PairChange], class_names: Sequence[str], a: str, b: str) -> list[dict]:
    return [{"true": class_name(class_names, c.true), "pred": class_name(class_names, c.pred),
             "true_index": c.true, "pred_index": c.pred, a: c.count_a, b: c.count_b, "change": c.change}
            for c in changes]


def changes_summary(pairing: paired.Pairing, class_names: Sequence[str]) -> dict:
    """changes.json's content: `pairing.b` (this epoch) against `pairing.a` (the one before)."""
    previous, latest = pairing.a, pairing.b
    result = paired.paired_accuracy(pairing)
    return {
        "epoch": latest.epoch, "previous_epoch": previous.epoch,
        "n_paired": result.n_paired, "only_previous": pairing.only_a, "only_current": pairing.only_b,
        "label_mismatches": pairing.label_mismatches,
        "newly_correct": result.newly_correct, "newly_wrong": result.newly_wrong,
        "accuracy_prev": result.accuracy_a, "accuracy": result.accuracy_b, "accuracy_diff": result.accuracy_diff,
        "ci95": result.ci95, "mcnemar_p": result.mcnemar_p,
        "verdict": paired.verdict(result.accuracy_diff, result.mcnemar_p),
        "confusion_pair_changes": pair_changes_json(
            paired.confusion_pair_changes(pairing, len(class_names)), class_names, "previous", "current"),
    }


def flipped_columns(pairing: paired.Pairing, class_names: Sequence[str], names: Namer,
                    labels: tuple[str, str] = ("newly_correct", "newly_wrong")) -> list[list[str]]:
    """The paired samples whose prediction changed, as text columns: id, name, label, the two
    predictions and confidences, and the change (`labels`, or "other_wrong": wrong both times, as
    another class)."""
    a, b = pairing.a, pairing.b
    changed = np.flatnonzero(a.preds != b.preds)
    right_a, right_b = a.correct[changed], b.correct[changed]
    kind = np.where(right_b, labels[0], np.where(right_a, labels[1], "other_wrong"))
    ids = a.ids[changed]
    n = len(changed)
    conf_a = None if a.confidence is None else a.confidence[changed]
    conf_b = None if b.confidence is None else b.confidence[changed]
    return [_int_column(ids), list(names(ids)), _class_column(class_names, a.labels[changed]),
            _class_column(class_names, a.preds[changed]), _fraction_column(conf_a, n),
            _class_column(class_names, b.preds[changed]), _fraction_column(conf_b, n), kind.tolist()]


FLIPPED_TEXT = {1, 2, 3, 5}  # the name and class columns of flipped_columns


def flipped_rows(pairing: paired.Pairing, class_names: Sequence[str], names: Namer,
                 labels: tuple[str, str] = ("newly_correct", "newly_wrong")) -> list[list[str]]:
    """flipped_columns as rows."""
    return [list(row) for row in zip(*flipped_columns(pairing, class_names, names, labels))]


CHANGES_HEADER = ["id", "name", "label", "previous_pred", "previous_confidence", "pred", "confidence", "change"]


def write_changes(epoch_dir: Path, previous: EpochSamples, latest: EpochSamples, class_names: Sequence[str],
                  names: Namer = id_names) -> dict:
    """changes.json and changes.csv of `latest` against `previous`; returns changes.json's content."""
    pairing = paired.pair(previous, latest)
    summary = changes_summary(pairing, class_names)
    write_json(epoch_dir / "changes.json", summary)
    write_columns(epoch_dir / "changes.csv", CHANGES_HEADER, flipped_columns(pairing, class_names, names),
                  FLIPPED_TEXT)
    return summary


# --- run level ----------------------------------------------------------------------------------

PER_SAMPLE_HEADER = ["id", "name", "label", "last_pred", "last_confidence", "epochs_seen", "epochs_correct",
                     "forgetting_events", "first_correct_epoch"]
SUSPECTS_HEADER = ["id", "name", "label", "suspected_label", "epochs_wrong", "mean_label_confidence", "score"]
DATA_MAP_HEADER = ["id", "name", "label", "confidence_mean", "variability", "correctness", "region"]


def write_per_sample(folder: Path, history: SampleHistory, class_names: Sequence[str],
                     names: Namer = id_names) -> None:
    rows = history.per_sample()

    def part(rows_: slice) -> list[list[str]]:
        ids = rows.ids[rows_]
        return [_int_column(ids), list(names(ids)), _class_column(class_names, rows.labels[rows_]),
                _class_column(class_names, rows.last_pred[rows_]),
                _fraction_column(rows.last_confidence[rows_], len(ids)), _int_column(rows.epochs_seen[rows_]),
                _int_column(rows.epochs_correct[rows_]), _int_column(rows.forgetting_events[rows_]),
                ["" if e < 0 else str(e) for e in rows.first_correct_epoch[rows_].tolist()]]

    write_column_parts(folder / "per_sample.csv", PER_SAMPLE_HEADER, map(part, _slices(len(rows.ids))), {1, 2, 3})


def suspect_columns(history: SampleHistory, class_names: Sequence[str], names: Namer = id_names) -> list[list[str]]:
    """label_suspects.csv's columns, most suspect first."""
    rows = history.suspects()
    n = len(rows.ids)
    suspected = ["" if s < 0 else class_name(class_names, s) for s in rows.suspected.tolist()]
    return [_int_column(rows.ids), list(names(rows.ids)), _class_column(class_names, rows.labels), suspected,
            _int_column(rows.epochs_wrong), _fraction_column(rows.mean_label_confidence, n),
            _fraction_column(rows.score, n)]


def write_label_suspects(folder: Path, history: SampleHistory, class_names: Sequence[str],
                         names: Namer = id_names) -> list[list[str]]:
    """label_suspects.csv; returns its rows (most suspect first)."""
    columns = suspect_columns(history, class_names, names)
    write_columns(folder / "label_suspects.csv", SUSPECTS_HEADER, columns, {1, 2, 3})
    return [list(row) for row in zip(*columns)]


# Dataset Cartography's regions (Swayamdipta et al. 2020), by the mean and spread of the given label's
# probability: easy to learn (confident, stable), hard to learn (unconfident, stable), ambiguous (spread).
AMBIGUOUS_VARIABILITY = 0.2
EASY_CONFIDENCE = 0.5


def regions(mean: np.ndarray, variability: np.ndarray) -> np.ndarray:
    """"ambiguous" where variability ≥ AMBIGUOUS_VARIABILITY, else "easy" or "hard" by the mean."""
    return np.where(variability >= AMBIGUOUS_VARIABILITY, "ambiguous",
                    np.where(mean >= EASY_CONFIDENCE, "easy", "hard"))


def write_data_map(folder: Path, training_map: TrainingMap, class_names: Sequence[str],
                   names: Namer = id_names) -> dict[str, int]:
    """data_map.csv; returns the number of training samples in each region."""
    ids, labels, mean, variability, correctness = training_map.rows()
    region = regions(mean, variability)

    def part(rows: slice) -> list[list[str]]:
        some = ids[rows]
        return [_int_column(some), list(names(some)), _class_column(class_names, labels[rows]),
                _fraction_column(mean[rows], len(some)), _fraction_column(variability[rows], len(some)),
                _fraction_column(correctness[rows], len(some)), region[rows].tolist()]

    write_column_parts(folder / "data_map.csv", DATA_MAP_HEADER, map(part, _slices(len(ids))), {1, 2})
    return {name: int((region == name).sum()) for name in ("easy", "ambiguous", "hard")}
