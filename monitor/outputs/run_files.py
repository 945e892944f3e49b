"""The files and console lines of a run's start and end: labels_mapping.json, model_info.json,
dataset_statistics.json, the class distribution and model tables, and the closing line."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from monitor.aggregates.runstate import RunState
from monitor.outputs.console import MonitorConsole
from monitor.outputs.render import tables
from monitor.outputs.render.save import write_json
from trainer_side.protocol import Message


def write_run_start(run: RunState, folder: Path, console: MonitorConsole) -> None:
    """What the run's first run_start tells: the label mapping, the model, the training set's classes."""
    start, names = run.start, run.class_names
    write_json(folder / "labels_mapping.json", {
        "num_classes": len(names),
        "class_to_idx": {name: i for i, name in enumerate(names)},
        "idx_to_class": {str(i): name for i, name in enumerate(names)},
        "normalization": start["normalization"],
    })
    write_json(folder / "model_info.json", {**start["model"], "hparams": start["hparams"] or {}})
    counts = run.class_counts()
    if counts is not None:
        rows = tables.class_distribution_rows(names, [int(c) for c in counts])
        write_json(folder / "dataset_statistics.json", {
            "total": int(counts.sum()),
            "classes": [{"name": r.name, "index": r.index, "count": r.count,
                         "percentage": round(r.percentage, 4)} for r in rows],
        })
        console.table(folder, *tables.shortened(partial(tables.class_distribution_table, rows), rows,
                                                tables.smallest_and_largest))
    else:
        reason = start.get("targets_missing") or "the trainer sent no train targets or class counts"
        console.line(folder, f"run {run.run}: no dataset class distribution: {reason}")
    if tables.model_not_sent(start["model"]):
        console.line(folder, f"run {run.run}: no model information: its trainer sent none; pass "
                             "`model=trainer_side.model_summary(net)` to `Emitter.run_start` (EmitterCallback sends it)")
    else:
        console.table(folder, partial(tables.model_info_table, dict(start["model"])))
    if start["sampler"] is None and start["train_targets"] is None:
        console.line(folder, f"run {run.run}: no sampler distribution tables: they need the train targets")
    elif start["sampler"] is None:
        console.line(folder, f"run {run.run}: no TrackingWeightedRandomSampler in use; no sampler distribution tables")


NAMED_IN_LINES = 10  # ranks (or errors) a closing line names; the rest are counted


def run_end_line(run: RunState) -> str:
    """The console's line for a run that just finished: its status, what its emitters dropped, its
    sequence gaps and errors, naming at most NAMED_IN_LINES ranks or errors of each and counting the
    rest (summary.json lists them all)."""
    dropped = [(rank, c.dropped) for rank, c in sorted(run.ranks.items()) if c.dropped]
    gaps = [(rank, c.gaps) for rank, c in sorted(run.ranks.items()) if c.gaps]
    text = f"run {run.run} {run.status}"
    if dropped:
        text += "; dropped by the emitter: " + _per_rank(dropped)
    if gaps:
        text += "; sequence gaps: " + _per_rank(gaps)
    for error in run.errors[:NAMED_IN_LINES]:
        text += f"\n  {error}"
    if len(run.errors) > NAMED_IN_LINES:
        text += f"\n  and {len(run.errors) - NAMED_IN_LINES:,} more errors (summary.json lists them all)"
    return text


def late_run_end_line(run: RunState, message: Message, told: int) -> str | None:
    """The line for the `told`-th rank of a run to end after the run had finished: one naming the
    rank for each of the first NAMED_IN_LINES, one for all the others, then none."""
    if told <= NAMED_IN_LINES:
        error = message["error"]
        return f"run {run.run}: rank {message.rank} ended {message['status']}" + (f": {error}" if error else "")
    if told == NAMED_IN_LINES + 1:
        return (f"run {run.run}: more ranks ended after it finished; summary.json and the run's page give each "
                "rank's status and error")
    return None


def _per_rank(counts: list[tuple[int, int]]) -> str:
    """"rank 3: 5, rank 9: 1", naming at most NAMED_IN_LINES ranks and counting the rest."""
    text = ", ".join(f"rank {rank}: {n}" for rank, n in counts[:NAMED_IN_LINES])
    if len(counts) > NAMED_IN_LINES:
        rest = counts[NAMED_IN_LINES:]
        text += f" and {sum(n for _, n in rest):,} more in {len(rest):,} other ranks"
    return text
