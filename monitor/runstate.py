"""What the monitor knows about one run: identity, per-epoch aggregates from every rank, history, counters.

Pure state: the pipeline feeds it decoded messages and asks it what is ready; it does no I/O.
Aggregates depend only on message content, never on arrival order or wall time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.confusion import MAX_CONFUSION_CLASSES, confusion_counts
from monitor.sequence import SequenceGaps
from trainer_side.protocol import Message


class RejectedMessage(ValueError):
    """A well-formed message whose content contradicts the run (e.g. a class index out of range)."""

    reason = "content"


@dataclass
class EpochState:
    confusion: dict[int, np.ndarray] = field(default_factory=dict)  # rank -> C×C counts
    preds_step: dict[int, int] = field(default_factory=dict)  # rank -> global step of that validation pass
    samples: Message | None = None
    sampled: dict[int, np.ndarray] = field(default_factory=dict)  # rank -> drawn indices
    ended_ranks: set[int] = field(default_factory=set)
    first_end_at: float | None = None  # monotonic time of the first epoch_end, for the timeout only
    rendered: bool = False
    dirty: bool = False  # new data since the last render


@dataclass
class RankCounters:
    sequence: SequenceGaps = field(default_factory=SequenceGaps)  # the rule monitor inspect follows too
    gaps: int = 0  # messages never received (sequence numbers skipped)
    sent: int = 0  # last counters the rank reported
    dropped: int = 0
    messages: int = 0
    bytes: int = 0


class RunState:
    def __init__(self, run: str, world: int) -> None:
        self.run = run
        self.world = world
        self.start: Message | None = None
        self.epochs: dict[int, EpochState] = {}
        self.history: dict[int, dict[str, float]] = {}
        self.ranks: dict[int, RankCounters] = {}
        self.ended: dict[int, str] = {}  # rank -> run_end status
        self.errors: list[str] = []
        self.artifacts: list[str] = []
        self.latest_epoch: int | None = None

    # --- identity -----------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str] | None:
        return None if self.start is None else list(self.start["class_names"])

    @property
    def num_classes(self) -> int | None:
        return None if self.start is None else len(self.start["class_names"])

    @property
    def status(self) -> str:
        if not self.ended:
            return "running"
        for status in ("failed", "interrupted"):
            if status in self.ended.values():
                return status
        return "completed" if len(self.ended) >= self.world else "running"

    @property
    def finished(self) -> bool:
        return len(self.ended) >= self.world or "failed" in self.ended.values()

    # --- bookkeeping every message goes through -----------------------------------------------

    def account(self, message: Message, size: int) -> int:
        """Counts a message and returns how many sequence numbers were skipped before it."""
        counters = self.ranks.get(message.rank)  # not setdefault: it would build a RankCounters per message
        if counters is None:
            counters = self.ranks[message.rank] = RankCounters()
        counters.messages += 1
        counters.bytes += size
        if message.world > self.world:
            self.world = message.world
        skipped = counters.sequence.see(message.seq, run_start=message.kind == "run_start", time=message.time)
        counters.gaps = counters.sequence.missing
        return max(skipped, 0)

    def epoch(self, number: int) -> EpochState:
        state = self.epochs.get(number)
        if state is None:
            state = self.epochs[number] = EpochState()
        if self.latest_epoch is None or number > self.latest_epoch:
            self.latest_epoch = number
        return state

    def _check_labels(self, message: Message, *arrays: np.ndarray) -> None:
        count = self.num_classes
        if count is None:
            raise RejectedMessage(f"{message.kind} for run {self.run!r} arrived before its run_start")
        for array in arrays:
            if len(array) and int(array.max()) >= count:
                raise RejectedMessage(f"{message.kind}: class index {int(array.max())} out of range for {count} classes")

    # --- one method per kind ------------------------------------------------------------------

    def on_run_start(self, message: Message) -> None:
        if self.start is not None and self.start["class_names"] != message["class_names"]:
            raise RejectedMessage(f"run {self.run!r} restarted with different class names")
        targets, sampler = message["train_targets"], message["sampler"]
        if targets is not None and len(targets) and int(targets.max()) >= len(message["class_names"]):
            raise RejectedMessage("run_start: a train target is out of range for the class names")
        if sampler is not None and len(sampler["weights_per_class"]) != len(message["class_names"]):
            raise RejectedMessage("run_start: sampler.weights_per_class needs one weight per class")
        earlier = None if self.start is None else self.start["train_targets"]
        if earlier is not None and (targets is None or len(targets) != len(earlier)):
            raise RejectedMessage(f"run {self.run!r} restarted with a different training set")
        if message.rank == 0 or self.start is None:
            self.start = message
        self.ended.pop(message.rank, None)  # a run resumed under the same id is running again

    def on_preds(self, message: Message) -> EpochState:
        preds, labels = message["preds"], message["labels"]
        self._check_labels(message, preds, labels)
        epoch = self.epoch(message["epoch"])
        count = self.num_classes
        if count > MAX_CONFUSION_CLASSES:
            raise RejectedMessage(f"{count} classes exceed the {MAX_CONFUSION_CLASSES}-class confusion limit")
        counts = confusion_counts(preds, labels, count)
        rank = message.rank
        # A later validation pass within the same epoch (val_check_interval < 1) replaces the earlier one.
        if epoch.preds_step.get(rank) == message["step"] and rank in epoch.confusion:
            epoch.confusion[rank] = epoch.confusion[rank] + counts
        else:
            epoch.confusion[rank] = counts
            epoch.preds_step[rank] = message["step"]
        epoch.dirty = True
        return epoch

    def on_samples(self, message: Message) -> EpochState:
        self._check_labels(message, message["labels"], message["preds"])
        epoch = self.epoch(message["epoch"])
        if message.rank == 0:
            epoch.samples = message
            epoch.dirty = True
        return epoch

    def on_sampled(self, message: Message) -> EpochState:
        targets = None if self.start is None else self.start["train_targets"]
        indices = message["indices"]
        if targets is None:
            raise RejectedMessage("sampled: the run_start carried no train targets to map indices to classes")
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(targets)):
            raise RejectedMessage(f"sampled: indices must lie in 0..{len(targets) - 1}")
        epoch = self.epoch(message["epoch"])
        epoch.sampled[message.rank] = indices
        epoch.dirty = True
        return epoch

    def on_metrics(self, message: Message) -> None:
        body = message.body
        number = body["epoch"]
        row = self.history.get(number)
        if row is None:
            row = self.history[number] = {}
        row.update(body["values"])
        self.epoch(number).dirty = True

    def on_epoch_end(self, message: Message, now: float) -> EpochState:
        counters = self.ranks.setdefault(message.rank, RankCounters())
        counters.sent, counters.dropped = message["sent"], message["dropped"]
        epoch = self.epoch(message["epoch"])
        epoch.ended_ranks.add(message.rank)
        if epoch.first_end_at is None:
            epoch.first_end_at = now
        return epoch

    def on_run_end(self, message: Message) -> None:
        counters = self.ranks.setdefault(message.rank, RankCounters())
        counters.sent, counters.dropped = message["sent"], message["dropped"]
        self.ended[message.rank] = message["status"]
        if message["error"]:
            self.errors.append(f"rank {message.rank}: {message['error']}")

    # --- what is ready ------------------------------------------------------------------------

    def missing_ranks(self, epoch: EpochState) -> list[int]:
        return [rank for rank in range(self.world) if rank not in epoch.ended_ranks]

    def ready_epochs(self, now: float, timeout: float | None, *, flush: bool = False) -> list[tuple[int, list[int]]]:
        """Epochs to (re)render now, each with the ranks it will be rendered without."""
        ready = []
        for number in sorted(self.epochs):
            epoch = self.epochs[number]
            if not epoch.dirty:
                continue
            missing = self.missing_ranks(epoch)
            timed_out = (timeout is not None and epoch.first_end_at is not None
                         and now - epoch.first_end_at >= timeout)
            if not missing or flush or self.finished or timed_out:
                ready.append((number, missing))
        return ready

    def release(self, number: int) -> None:
        """Frees an epoch's thumbnails and draws once it is drawn complete; on a long run they would
        otherwise grow without bound. Its confusion counts stay, should late data redraw it."""
        epoch = self.epochs[number]
        epoch.samples = None
        epoch.sampled.clear()

    # --- derived numbers ----------------------------------------------------------------------

    def confusion(self, number: int) -> np.ndarray | None:
        epoch = self.epochs.get(number)
        if epoch is None or not epoch.confusion:
            return None
        return sum(epoch.confusion[rank] for rank in sorted(epoch.confusion))

    def class_counts(self) -> np.ndarray | None:
        if self.start is None:
            return None
        count = self.num_classes
        if self.start["train_targets"] is not None:
            return np.bincount(self.start["train_targets"].astype(np.int64), minlength=count)
        if self.start["class_counts"] is not None and len(self.start["class_counts"]) == count:
            return self.start["class_counts"].astype(np.int64)
        return None

    def sampler_counts(self, number: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(sampled per class, expected per class) for an epoch, summed over ranks."""
        epoch = self.epochs.get(number)
        if epoch is None or not epoch.sampled or self.start is None or self.start["sampler"] is None:
            return None
        targets = self.start["train_targets"].astype(np.int64)
        count = self.num_classes
        draws = np.concatenate([epoch.sampled[rank] for rank in sorted(epoch.sampled)]).astype(np.int64)
        sampled = np.bincount(targets[draws], minlength=count)
        weights = self.start["sampler"]["weights_per_class"].astype(np.float64)
        total = float(weights.sum())
        expected = weights / total * len(draws) if total > 0 else np.zeros(count)
        return sampled, expected

    def history_columns(self) -> list[str]:
        return sorted({name for row in self.history.values() for name in row})

    def finite_metrics(self, number: int) -> dict[str, float]:
        return {k: v for k, v in self.history.get(number, {}).items() if math.isfinite(v)}

    def summary(self) -> dict[str, Any]:
        return {
            "run": self.run, "world": self.world, "status": self.status,
            "epochs": sorted(n for n, e in self.epochs.items() if e.rendered),
            "ranks": {rank: {"messages": c.messages, "bytes": c.bytes, "gaps": c.gaps, "sent": c.sent,
                             "dropped": c.dropped} for rank, c in sorted(self.ranks.items())},
            "errors": list(self.errors),
        }
