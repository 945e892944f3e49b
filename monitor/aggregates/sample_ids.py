"""One epoch's sample-level data (protocol 1.3 ids) gathered from every rank, and merged once.

Each `preds` (or `train_preds`) chunk that carries ids is kept as it came, per rank and validation
pass, by the rule the confusion counts follow (`monitor.aggregates.runstate._add_pass`). When the epoch is
drawn, `merge` joins the ranks in rank order: an id sent twice with the same label keeps its first
prediction (Lightning's DistributedSampler pads the ranks with repeated samples), and a merge that
would give a wrong table is refused with a reason instead (`SampleProblem`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer_side.protocol import IdRange, Message

# Reason codes, as summary.json counts them (`RunState.sample_problems`).
DUPLICATE_IDS = "duplicate_ids"  # the same id more than once in an epoch: the first prediction kept
CONFLICTING_LABELS = "conflicting_labels"  # the same id with two labels: the epoch has no per-sample data
IDS_OUT_OF_RANGE = "ids_out_of_range"  # an id at or beyond run_start's val_size / train_size: the same
RANKS_WITHOUT_IDS = "ranks_without_ids"  # some ranks sent ids, others none: the epoch has theirs only


@dataclass(frozen=True)
class SampleChunk:
    """The sample-level fields of one message, as decoded (views on the frame's bytes)."""

    ids: np.ndarray | IdRange
    labels: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray | None
    label_confidence: np.ndarray | None

    @classmethod
    def of(cls, message: Message) -> SampleChunk | None:
        """The chunk of a `preds` or `train_preds` message; None for one without ids."""
        ids = message.get("ids")
        if ids is None:
            return None
        return cls(ids, message["labels"], message["preds"], message.get("confidence"),
                   message.get("label_confidence"))


@dataclass(frozen=True)
class MergedSamples:
    """An epoch's samples over every rank: each id once, ascending."""

    ids: np.ndarray  # int64
    labels: np.ndarray  # int64
    preds: np.ndarray  # int64
    confidence: np.ndarray | None  # float32
    label_confidence: np.ndarray | None  # float32
    duplicates: int  # predictions dropped because their id came earlier (same label)


@dataclass(frozen=True)
class SampleProblem:
    """Why an epoch's per-sample data is refused or incomplete: a reason code and one line."""

    reason: str
    text: str


def _ids(chunk: SampleChunk) -> np.ndarray:
    return chunk.ids.array() if isinstance(chunk.ids, IdRange) else chunk.ids.astype(np.int64)


def _joined(chunks: list[SampleChunk], field: str) -> np.ndarray | None:
    parts = [getattr(chunk, field) for chunk in chunks]
    if any(part is None for part in parts):
        return None
    return np.concatenate(parts).astype(np.float32)


def merge(per_rank: dict[int, list[SampleChunk]], size: int | None,
          what: str) -> tuple[MergedSamples | None, list[SampleProblem]]:
    """Joins the ranks' chunks of one epoch (rank order, then arrival order).

    Args:
        per_rank: rank -> its chunks with ids for this epoch.
        size: the declared dataset size (ids must be below it), or None when not declared.
        what: names the epoch in the problems' text, e.g. "epoch 3 (validation)".

    Returns:
        The merged samples (None when refused) and the problems found, each with its reason code.
    """
    chunks = [chunk for rank in sorted(per_rank) for chunk in per_rank[rank]]
    if not chunks:
        return None, []
    ids = np.concatenate([_ids(chunk) for chunk in chunks])
    if size is not None and len(ids) and int(ids.max()) >= size:
        return None, [SampleProblem(IDS_OUT_OF_RANGE, f"{what}: sample id {int(ids.max())} is not below the "
                                                      f"declared dataset size {size}; no per-sample data for it")]
    labels = np.concatenate([chunk.labels for chunk in chunks]).astype(np.int64)
    preds = np.concatenate([chunk.preds for chunk in chunks]).astype(np.int64)
    unique, first = np.unique(ids, return_index=True)
    problems = []
    duplicates = len(ids) - len(unique)
    if duplicates:
        inverse = np.searchsorted(unique, ids)
        clash = labels != labels[first][inverse]
        if clash.any():
            bad = int(ids[np.argmax(clash)])
            return None, [SampleProblem(CONFLICTING_LABELS, f"{what}: sample id {bad} came with two different "
                                                            "labels; no per-sample data for it (are the ranks "
                                                            "validating different datasets?)")]
        problems.append(SampleProblem(DUPLICATE_IDS, f"{what}: {duplicates} prediction(s) of sample ids already "
                                                     "seen in the epoch (same label); the first of each is kept"))
    confidence, label_confidence = _joined(chunks, "confidence"), _joined(chunks, "label_confidence")
    merged = MergedSamples(ids=unique, labels=labels[first], preds=preds[first],
                           confidence=None if confidence is None else confidence[first],
                           label_confidence=None if label_confidence is None else label_confidence[first],
                           duplicates=duplicates)
    return merged, problems
