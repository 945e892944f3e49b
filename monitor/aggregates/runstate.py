"""What the monitor knows about one run: identity, per-epoch aggregates from every rank, history, counters.

Pure state: the pipeline feeds it decoded messages and asks it what is ready; it does no I/O.
Aggregates depend only on message content, never on arrival order or wall time.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from monitor.aggregates.calibration import CalibrationBins, MergedMistakes, check_confidence, merge_mistakes
from monitor.aggregates.confusion import SparseCounts
from monitor.aggregates.run_samples import RunSamples
from monitor.aggregates.sample_ids import SampleChunk
from monitor.aggregates.sample_names import NamesTable
from monitor.aggregates.samples import SampleHistory, TrainingMap, samples_summary
from monitor.aggregates.sequence import SequenceGaps
from trainer_side.protocol import Message

NAMED_MISSING_RANKS = 3  # a warning names this many missing ranks and counts the rest


class RejectedMessage(ValueError):
    """A well-formed message whose content contradicts the run (e.g. a class index out of range)."""

    reason = "content"


class RefusedSender(RejectedMessage):
    """A message from an emitter that may not write to this run (see `RunState.account`).

    `first` is True for the message that got the sender refused, False for the ones after it."""

    reason = "sender"

    def __init__(self, text: str, first: bool) -> None:
        super().__init__(text)
        self.first = first


Source = tuple[str, int]  # (sender, global step) of one validation pass on one rank


@dataclass
class EpochState:
    """One epoch's data. Once drawn with every rank it is released: its per-rank data is freed and only
    what a redraw of its summary needs (`accuracy`, who sent it) stays."""

    # rank -> (source, counts): chunks of the same pass add up, a pass from another source replaces them
    confusion: dict[int, tuple[Source, SparseCounts]] = field(default_factory=dict)
    calibration: dict[int, tuple[Source, CalibrationBins]] = field(default_factory=dict)  # the same rule
    samples: Message | None = None
    mistakes: dict[int, Message] = field(default_factory=dict)  # rank -> its hardest mistakes
    sampled: dict[int, np.ndarray] = field(default_factory=dict)  # rank -> drawn indices
    ended_ranks: set[int] = field(default_factory=set)
    senders: set[str] = field(default_factory=set)  # who sent its preds, samples, draws or epoch ends
    first_end_at: float | None = None  # monotonic time of the first epoch_end, for the timeout only
    released: bool = False
    accuracy: float | None = None  # from the confusion counts, kept when they are freed
    # rank -> (source, its chunks' sample-level data; None for a chunk without ids): the confusion rule
    val_samples: dict[int, tuple[Source, list[SampleChunk | None]]] = field(default_factory=dict)
    train_samples: dict[int, tuple[Source, list[SampleChunk]]] = field(default_factory=dict)  # track_train
    samples_taken: bool = False  # handed to the run's sample history (once, at its first draw)


def _add_pass(per_rank: dict, rank: int, source: Source, part: Any, add: Callable[[Any, Any], Any]) -> None:
    """Chunks of one validation pass add up (`add`); a later pass within the same epoch
    (val_check_interval < 1), or the same epoch from another sender, replaces what the rank sent
    before. A `part` of None (nothing of this kind in the chunk) adds nothing."""
    earlier = per_rank.get(rank)
    if earlier is not None and earlier[0] == source:
        if part is not None:
            per_rank[rank] = (source, add(earlier[1], part))
        return
    if part is None:
        per_rank.pop(rank, None)
    else:
        per_rank[rank] = (source, part)


class LateData(RejectedMessage):
    """Data for an epoch already drawn with every rank and released, from a sender it already heard."""

    reason = "late"


@dataclass
class RankTotals:
    """Sums over a run's ranks, kept as messages arrive, so that nothing per message walks the ranks."""

    messages: int = 0
    bytes: int = 0
    gaps: int = 0
    dropped: int = 0


@dataclass
class RankCounters:
    sequence: SequenceGaps = field(default_factory=SequenceGaps)  # the rule monitor inspect follows too
    gaps: int = 0  # messages never received (sequence numbers skipped)
    sent: int = 0  # last counters the rank reported
    dropped: int = 0
    messages: int = 0
    bytes: int = 0


class RunState:
    """One run's aggregated state, built from its messages alone (`on_<kind>` per message kind):
    no I/O, no clock but the one passed in, so replay rebuilds exactly what serve had."""

    def __init__(self, run: str, world: int) -> None:
        self.run = run
        self.world = world
        self.start: Message | None = None
        self.epochs: dict[int, EpochState] = {}
        self.history: dict[int, dict[str, float]] = {}
        self.ranks: dict[int, RankCounters] = {}
        self.totals = RankTotals()  # the sums of `ranks`' counters
        self.ended: dict[int, str] = {}  # rank -> run_end status; change it with `_set_ended` only
        self._ended_as: Counter[str] = Counter()  # run_end status -> ranks in `ended` with it
        self.dirty: set[int] = set()  # epochs with new data since they were last drawn
        self.rendered: set[int] = set()  # epochs drawn at least once
        self.errors: list[str] = []
        self.artifacts: list[str] = []
        self.latest_epoch: int | None = None
        self.owners: dict[int, str] = {}  # rank -> the sender (emitter instance) that writes it now
        self.superseded: set[tuple[int, str]] = set()  # (rank, sender) taken over before its run_end
        self.refused: dict[tuple[int, str], str] = {}  # (rank, sender) -> why its messages are refused
        self.last_message_at: float | None = None  # the pipeline's clock; only for staleness, never in artifacts
        self.last_message_time: float | None = None  # the latest message's own time (the sender's clock)
        self.stale = False  # unfinished, and silent for longer than the monitor's --stale-after
        self.per_sample = RunSamples(run)  # protocol 1.3: ids, names, the sample history

    # --- per-sample state (protocol 1.3), as the outputs read it -------------------------------

    @property
    def samples(self) -> SampleHistory | None:
        """The validation set's per-sample history; None until an epoch with sample ids is drawn."""
        return self.per_sample.history

    @property
    def training_map(self) -> TrainingMap | None:
        """The training set's cartography (track_train); None until training records are drawn."""
        return self.per_sample.training_map

    @property
    def sample_names(self) -> NamesTable:
        return self.per_sample.names

    @property
    def sample_ids_missing(self) -> str | None:
        """Why the run has no per-sample data, in one line (None when it has, or no epoch was drawn)."""
        return self.per_sample.ids_missing

    @property
    def thumbnails_by_id(self) -> dict[int, np.ndarray]:
        return self.per_sample.thumbnails_by_id

    @property
    def sample_problems(self) -> Counter[str]:
        return self.per_sample.problems

    def take_sample_notes(self) -> list[str]:
        return self.per_sample.take_notes()

    # --- identity -----------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str] | None:
        return None if self.start is None else list(self.start["class_names"])

    @property
    def num_classes(self) -> int | None:
        return None if self.start is None else len(self.start["class_names"])

    @property
    def status(self) -> str:
        if self.stale and not self.finished:
            return "stale"
        if not self.ended:
            return "running"
        for status in ("failed", "interrupted"):
            if self._ended_as[status]:
                return status
        return "completed" if len(self.ended) >= self.world else "running"

    @property
    def finished(self) -> bool:
        return len(self.ended) >= self.world or self._ended_as["failed"] > 0

    # --- bookkeeping every message goes through -----------------------------------------------

    def account(self, message: Message, size: int) -> int:
        """Counts a message and returns how many sequence numbers were skipped before it.

        Each rank is written by one sender (emitter instance) at a time. A new sender takes the rank
        over: a resumed training, whose repeated epochs replace the earlier ones. A sender taken over
        before its run_end that sends again means two trainings share the run id: its messages are
        refused from then on. So is a sender whose run_start names other classes than the run's.

        Raises:
            RefusedSender: the message's sender may not write to this run.
        """
        rank, sender = message.rank, message.sender
        why = self.refused.get((rank, sender))
        if why is not None:
            raise RefusedSender(why, first=False)
        owner = self.owners.get(rank)
        taken_over = owner is not None and owner != sender
        if taken_over:
            self._take_over(message, owner)
        counters = self.ranks.get(rank)  # not setdefault: it would build a RankCounters per message
        if counters is None:
            counters = self.ranks[rank] = RankCounters()
        counters.messages += 1
        counters.bytes += size
        totals = self.totals
        totals.messages += 1
        totals.bytes += size
        if math.isfinite(message.time) and (self.last_message_time is None or message.time > self.last_message_time):
            self.last_message_time = message.time
        if message.world > self.world:
            self.world = message.world
        self.owners[rank] = sender
        skipped = counters.sequence.see(message.seq, run_start=message.kind == "run_start", time=message.time,
                                        sender=sender)
        totals.gaps += counters.sequence.missing - counters.gaps
        counters.gaps = counters.sequence.missing
        return max(skipped, 0)

    def _take_over(self, message: Message, owner: str) -> None:
        rank, sender = message.rank, message.sender
        if (rank, sender) in self.superseded:
            why = (f"run {self.run!r} rank {rank}: two trainings are sending under this run id at once (emitters "
                   f"{sender} and {owner}); the messages of {sender} are refused from now on. Give each training "
                   "a run id of its own.")
            self.refused[(rank, sender)] = why
            raise RefusedSender(why, first=True)
        if message.kind == "run_start" and self.start is not None and \
                list(message["class_names"]) != list(self.start["class_names"]):
            why = (f"run {self.run!r} already exists with {len(self.start['class_names'])} classes "
                   f"({self.status}); emitter {sender} starts it with {len(message['class_names'])} other ones, so "
                   "its messages are refused. Start the new training under a new run id.")
            self.refused[(rank, sender)] = why
            raise RefusedSender(why, first=True)
        if rank not in self.ended:
            self.superseded.add((rank, owner))

    def epoch(self, number: int) -> EpochState:
        state = self.epochs.get(number)
        if state is None:
            state = self.epochs[number] = EpochState()
        if self.latest_epoch is None or number > self.latest_epoch:
            self.latest_epoch = number
        return state

    def _open_epoch(self, message: Message, *, data: bool = True) -> EpochState | None:
        """The epoch a message adds to; `data` (preds, samples, sampled) marks it dirty. A released
        epoch starts afresh for a sender it has not heard (a resumed training that repeats the
        epoch); from a sender it heard, data is refused (LateData) and an epoch end gives None."""
        number = message["epoch"]
        epoch = self.epoch(number)
        sender = getattr(message, "sender", "")
        if epoch.released:
            if sender in epoch.senders:
                if not data:
                    return None
                raise LateData(f"{message.kind} from rank {message.rank} for epoch {number}, which was already "
                               "drawn with every rank and freed: ignored (the run's log keeps it)")
            epoch = self.epochs[number] = EpochState()
        epoch.senders.add(sender)
        if data:
            self.dirty.add(number)
        return epoch

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
        self._set_ended(message.rank, None)  # a run resumed under the same id is running again

    def on_preds(self, message: Message) -> EpochState:
        preds, labels, confidence = message["preds"], message["labels"], message.get("confidence")
        self._check_labels(message, preds, labels)
        why = None if confidence is None else check_confidence(confidence)
        if why is not None:
            raise RejectedMessage(f"preds: {why}")
        self._check_label_confidence(message)
        epoch = self._open_epoch(message)
        counts = SparseCounts.of(preds, labels, self.num_classes)
        rank, source = message.rank, (getattr(message, "sender", ""), message["step"])
        _add_pass(epoch.confusion, rank, source, counts, lambda a, b: SparseCounts.total([a, b]))
        bins = None if confidence is None else CalibrationBins.of(confidence, preds, labels)
        _add_pass(epoch.calibration, rank, source, bins, CalibrationBins.__add__)
        _add_pass(epoch.val_samples, rank, source, [SampleChunk.of(message)], list.__add__)
        self.per_sample.saw_preds(message)
        return epoch

    def _check_label_confidence(self, message: Message) -> None:
        label_confidence = message.get("label_confidence")
        why = None if label_confidence is None else check_confidence(label_confidence)
        if why is not None:
            raise RejectedMessage(f"{message.kind}: label_confidence: {why}")

    def on_train_preds(self, message: Message) -> EpochState:
        """Training-set predictions (track_train): kept per rank until the epoch is drawn."""
        self._check_labels(message, message["preds"], message["labels"])
        self._check_label_confidence(message)
        epoch = self._open_epoch(message)
        _add_pass(epoch.train_samples, message.rank, (message.sender, 0), [SampleChunk.of(message)], list.__add__)
        return epoch

    def on_sample_names(self, message: Message) -> None:
        """A chunk of sample names; rank 0's are kept (every rank would send the same)."""
        if message.rank == 0:
            self.per_sample.add_names(message)

    def on_mistakes(self, message: Message) -> EpochState:
        self._check_labels(message, message["labels"], message["preds"])
        ids, size = message.get("ids"), None if self.start is None else self.start.get("val_size")
        if ids is not None and size is not None and len(ids) and int(ids.max()) >= size:
            raise RejectedMessage(f"mistakes: sample id {int(ids.max())} is not below val_size {size}")
        why = check_confidence(message["confidence"])
        if why is not None:
            raise RejectedMessage(f"mistakes: {why}")
        epoch = self._open_epoch(message)
        size = message["images"].shape[1:]
        for rank, other in epoch.mistakes.items():
            if rank != message.rank and len(other["images"]) and len(message["images"]) \
                    and other["images"].shape[1:] != size:
                raise RejectedMessage(f"mistakes: thumbnails of {size[0]}×{size[1]} px, but rank {rank} sent "
                                      f"{other['images'].shape[1]}×{other['images'].shape[2]} px for this epoch")
        epoch.mistakes[message.rank] = message
        return epoch

    def on_samples(self, message: Message) -> EpochState:
        self._check_labels(message, message["labels"], message["preds"])
        if message.rank != 0:
            return self.epoch(message["epoch"])
        epoch = self._open_epoch(message)
        epoch.samples = message
        return epoch

    def on_sampled(self, message: Message) -> EpochState:
        targets = None if self.start is None else self.start["train_targets"]
        indices = message["indices"]
        if targets is None:
            raise RejectedMessage("sampled: the run_start carried no train targets to map indices to classes")
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(targets)):
            raise RejectedMessage(f"sampled: indices must lie in 0..{len(targets) - 1}")
        epoch = self._open_epoch(message)
        epoch.sampled[message.rank] = indices
        return epoch

    def on_metrics(self, message: Message) -> None:
        body = message.body
        number = body["epoch"]
        row = self.history.get(number)
        if row is None:
            row = self.history[number] = {}
        row.update(body["values"])
        self.epoch(number)
        self.dirty.add(number)

    def _rank_counters(self, message: Message) -> None:
        """Takes the sent and dropped counters an epoch_end or run_end reports for its rank."""
        counters = self.ranks.get(message.rank)
        if counters is None:
            counters = self.ranks[message.rank] = RankCounters()
        self.totals.dropped += message["dropped"] - counters.dropped
        counters.sent, counters.dropped = message["sent"], message["dropped"]

    def on_epoch_end(self, message: Message, now: float) -> EpochState:
        self._rank_counters(message)
        epoch = self._open_epoch(message, data=False)
        if epoch is None:
            return self.epochs[message["epoch"]]  # a repeated end of an epoch already drawn and freed
        epoch.ended_ranks.add(message.rank)
        if epoch.first_end_at is None:
            epoch.first_end_at = now
        return epoch

    def on_run_end(self, message: Message) -> None:
        self._rank_counters(message)
        self._set_ended(message.rank, message["status"])
        if message["error"]:
            self.errors.append(f"rank {message.rank}: {message['error']}")

    def _set_ended(self, rank: int, status: str | None) -> None:
        """Records a rank's run_end status (None: running again), keeping the count per status that
        `status` and `finished` read without walking every rank."""
        earlier = self.ended.pop(rank, None)
        if earlier is not None:
            self._ended_as[earlier] -= 1
        if status is not None:
            self.ended[rank] = status
            self._ended_as[status] += 1

    # --- what is ready ------------------------------------------------------------------------

    def missing_ranks(self, epoch: EpochState) -> tuple[int, list[int]]:
        """How many ranks sent no epoch_end for the epoch, and the first few of them (at most
        NAMED_MISSING_RANKS): the work is bounded by the ranks that did, never by the world size."""
        missing = self.world - len(epoch.ended_ranks)
        named: list[int] = []
        rank = 0
        while len(named) < min(missing, NAMED_MISSING_RANKS) and rank < self.world:
            if rank not in epoch.ended_ranks:
                named.append(rank)
            rank += 1
        return missing, named

    def ready_epochs(self, now: float, timeout: float | None, *,
                     flush: bool = False) -> list[tuple[int, int, list[int]]]:
        """Dirty epochs to (re)render now, each with how many ranks it will be rendered without and the
        first few of them. Looks at dirty epochs only, and at no rank one by one."""
        ready = []
        finished = self.finished
        for number in sorted(self.dirty):
            epoch = self.epochs[number]
            missing = 0 if epoch.released else self.world - len(epoch.ended_ranks)
            timed_out = (timeout is not None and epoch.first_end_at is not None
                         and now - epoch.first_end_at >= timeout)
            if missing <= 0 or flush or finished or timed_out:
                ready.append((number, *self.missing_ranks(epoch)) if missing > 0 else (number, 0, []))
        return ready

    def drawn(self, number: int) -> None:
        """Notes that the epoch was just drawn with everything it holds, and puts its calibration
        errors (`val/ece`, `val/mce`) in its history row."""
        bins = self.calibration(number)
        if bins is not None and bins.total:
            self.history.setdefault(number, {}).update({"val/ece": bins.ece(), "val/mce": bins.mce()})
        epoch = self.epochs[number]
        if not epoch.samples_taken and not epoch.released and self.start is not None:
            epoch.samples_taken = True
            self.per_sample.take_epoch(number, epoch.val_samples, epoch.train_samples, self.start, self.num_classes,
                                       lambda: self.hardest_mistakes(number))
        self.dirty.discard(number)
        self.rendered.add(number)

    def release(self, number: int) -> None:
        """Frees an epoch's per-rank data (confusion counts, thumbnails, draws) once it is drawn with
        every rank: on a long run it would otherwise grow without bound. Its accuracy stays for a
        redraw of its summary (late metrics); late preds, samples or draws are refused (LateData)."""
        epoch = self.epochs[number]
        if epoch.released:
            return
        total = self.confusion(number)
        epoch.accuracy = None if total is None else total.accuracy()
        epoch.confusion.clear()
        epoch.calibration.clear()
        epoch.samples = None
        epoch.mistakes.clear()
        epoch.sampled.clear()
        epoch.val_samples.clear()
        epoch.train_samples.clear()
        epoch.ended_ranks.clear()
        epoch.released = True

    # --- derived numbers ----------------------------------------------------------------------

    def confusion(self, number: int) -> SparseCounts | None:
        """The epoch's confusion counts summed over ranks; None without any (or once released)."""
        epoch = self.epochs.get(number)
        if epoch is None or not epoch.confusion:
            return None
        return SparseCounts.total([epoch.confusion[rank][1] for rank in sorted(epoch.confusion)])

    def calibration(self, number: int) -> CalibrationBins | None:
        """The epoch's calibration bins summed over ranks; None without confidences (or once released)."""
        epoch = self.epochs.get(number)
        if epoch is None or not epoch.calibration:
            return None
        parts = [epoch.calibration[rank][1] for rank in sorted(epoch.calibration)]
        return sum(parts[1:], parts[0])

    def hardest_mistakes(self, number: int) -> MergedMistakes | None:
        """The epoch's most confident mistakes over every rank; None without any (or once released)."""
        epoch = self.epochs.get(number)
        return None if epoch is None or not epoch.mistakes else merge_mistakes(epoch.mistakes)

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

    def rank_states(self) -> dict[str, int]:
        """How many ranks run (heard from, no run_end yet), ended by each run_end status, and were
        never heard from; counted without walking the ranks."""
        ended = self._ended_as
        return {"running": len(self.ranks) - len(self.ended), "completed": ended["completed"],
                "failed": ended["failed"], "interrupted": ended["interrupted"],
                "missing": max(0, self.world - len(self.ranks))}

    def summary(self) -> dict[str, Any]:
        ended = self.ended
        return {
            "run": self.run, "world": self.world, "status": self.status,
            "epochs": sorted(self.rendered),
            "rank_states": self.rank_states(),
            "ranks": {rank: {"messages": c.messages, "bytes": c.bytes, "gaps": c.gaps, "sent": c.sent,
                             "dropped": c.dropped, "status": ended.get(rank, "running")}
                      for rank, c in sorted(self.ranks.items())},
            "errors": list(self.errors),
            "refused_senders": sorted(self.refused.values()),
            **({"sample_problems": dict(sorted(self.sample_problems.items()))} if self.sample_problems else {}),
            **samples_summary(self.samples, self.training_map, self.sample_ids_missing),
            "last_message_time": self.last_message_time,
        }
