"""A run's per-sample state (protocol 1.3): each drawn epoch's samples merged and handed to the sample
history and the training map, the names table, the mistakes' thumbnails by id, and the problems
found, each counted under its reason and said once.

Pure state, fed by `monitor.aggregates.runstate.RunState` (which keeps the chunks per epoch and rank).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import numpy as np

from monitor.aggregates import sample_ids
from monitor.aggregates.calibration import MergedMistakes
from monitor.aggregates.sample_ids import SampleChunk
from monitor.aggregates.sample_names import NAMES_TOO_LONG, NamesTable
from monitor.aggregates.samples import EpochSamples, SampleHistory, TrainingMap
from trainer_side.protocol import MAX_NAME_LENGTH, Message

MAX_THUMBNAILS_BY_ID = 256  # thumbnails of mistaken samples kept for the label suspects, the latest first
NO_IDS_BEFORE_1_3 = "the trainer sent no sample ids (protocol before 1.3)"
NO_IDS = ("the trainer sent no sample ids (a shuffled validation loader whose batches hold no index/idx/id key? "
          "the trainer's log names the fix)")
EPOCH_REPEATED = "epoch_repeated"

PerRank = dict[int, tuple[Any, list[SampleChunk | None]]]  # rank -> (source, chunks), as RunState keeps them


class RunSamples:
    """Per-sample state of one run. `history` and `training_map` are None until the first epoch with
    ids (or training records); `ids_missing` says why there is none."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.history: SampleHistory | None = None
        self.training_map: TrainingMap | None = None
        self.names = NamesTable()
        self.ids_missing: str | None = None
        self.problems: Counter[str] = Counter()  # reason code -> refusals and notes
        self.notes: list[str] = []  # one line per new reason, until the pipeline takes them
        self.thumbnails_by_id: dict[int, np.ndarray] = {}
        self._last_epoch = {"val": -1, "train": -1}
        self._newest_version: tuple[int, int] = (1, 0)  # of the preds messages, for the missing-ids line

    def saw_preds(self, message: Message) -> None:
        self._newest_version = max(self._newest_version, message.version)

    def add_names(self, message: Message) -> None:
        """A `sample_names` chunk; what the table does not keep is counted."""
        split, first = message["split"], message["first"]
        for reason, count in self.names.add(split, first, message["names"]).items():
            why = (f"longer than {MAX_NAME_LENGTH} characters" if reason == NAMES_TOO_LONG
                   else f"the run's names table is full at {self.names.limit:,} bytes")
            self.problem(reason, count, f"sample names of split {split!r} from id {first}: {count} not kept ({why}); "
                                        "those samples are shown by id")

    def problem(self, reason: str, count: int, text: str) -> None:
        if not self.problems[reason]:
            self.notes.append(f"run {self.run}: {text}")
        self.problems[reason] += count

    def take_notes(self) -> list[str]:
        """The problem lines found since the last call (each reason once per run)."""
        notes, self.notes = self.notes, []
        return notes

    def take_epoch(self, number: int, val: PerRank, train: PerRank, start: Message, num_classes: int,
                   mistakes: Callable[[], MergedMistakes | None]) -> None:
        """Hands an epoch's samples, merged over ranks, to the sample history (and its training
        records to the training map), says why there are none, and keeps its mistakes' thumbnails."""
        with_ids = {rank: chunks for rank, (_, chunks) in val.items() if all(chunk is not None for chunk in chunks)}
        if val and not with_ids and self.history is None:
            self.ids_missing = NO_IDS_BEFORE_1_3 if self._newest_version < (1, 3) else NO_IDS
        if with_ids:
            without = len(val) - len(with_ids)
            if without:
                self.problem(sample_ids.RANKS_WITHOUT_IDS, 1, f"epoch {number}: {without} rank(s) sent predictions "
                                                              "without sample ids; its per-sample data holds the "
                                                              "other ranks' only")
            merged = self._merged(number, "val", with_ids, start)
            if merged is not None:
                if self.history is None:
                    self.history = SampleHistory(num_classes)
                self.ids_missing = None
                self.history.add_epoch(EpochSamples(number, merged.ids, merged.labels, merged.preds,
                                                    merged.confidence, merged.label_confidence))
                self._keep_thumbnails(mistakes())
        if train:
            merged = self._merged(number, "train", {rank: chunks for rank, (_, chunks) in train.items()}, start)
            if merged is not None:
                if self.training_map is None:
                    self.training_map = TrainingMap(num_classes)
                self.training_map.add_epoch(number, merged.ids, merged.labels, merged.preds, merged.label_confidence)

    def _merged(self, number: int, split: str, per_rank: dict, start: Message) -> sample_ids.MergedSamples | None:
        what = f"epoch {number} ({'validation' if split == 'val' else 'training'} samples)"
        if number <= self._last_epoch[split]:
            self.problem(EPOCH_REPEATED, 1, f"{what} came again after a later epoch (a resumed training?); the "
                                            "per-sample history keeps the first pass")
            return None
        merged, problems = sample_ids.merge(per_rank, start.get(f"{split}_size"), what)
        for problem in problems:
            if split == "train" and problem.reason == sample_ids.DUPLICATE_IDS:
                continue  # a sampler drawing with replacement repeats training samples: nothing wrong
            self.problem(problem.reason, 1, problem.text)
        if merged is not None:
            self._last_epoch[split] = number
        return merged

    def _keep_thumbnails(self, mistakes: MergedMistakes | None) -> None:
        if mistakes is None or mistakes.ids is None:
            return
        kept = self.thumbnails_by_id
        for id_, image in zip(mistakes.ids.tolist(), mistakes.images):
            kept.pop(id_, None)  # re-inserted last: the oldest thumbnails go first
            kept[id_] = image.copy()  # not a view: it would keep the epoch's whole stack alive
        for id_ in list(kept)[:max(0, len(kept) - MAX_THUMBNAILS_BY_ID)]:
            del kept[id_]
