"""The files and console lines of a run's start and end: labels_mapping.json, model_info.json,
dataset_statistics.json, the class distribution and model tables, and the closing line."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from monitor.aggregates.runstate import RunState
from monitor.outputs.console import MonitorConsole
from monitor.outputs.render import tables
from monitor.outputs.render.save import write_json


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
    console.table(folder, partial(tables.model_info_table, dict(start["model"])))
    if start["sampler"] is None and start["train_targets"] is None:
        console.line(folder, f"run {run.run}: no sampler distribution tables: they need the train targets")
    elif start["sampler"] is None:
        console.line(folder, f"run {run.run}: no TrackingWeightedRandomSampler in use; no sampler distribution tables")


def run_end_line(run: RunState) -> str:
    """The console's line for a finished run: its status, what its emitters dropped, its sequence gaps
    and errors."""
    summary = run.summary()
    gaps = {rank: c["gaps"] for rank, c in summary["ranks"].items() if c["gaps"]}
    dropped = {rank: c["dropped"] for rank, c in summary["ranks"].items() if c["dropped"]}
    text = f"run {run.run} {run.status}"
    if dropped:
        text += "; dropped by the emitter: " + ", ".join(f"rank {r}: {n}" for r, n in dropped.items())
    if gaps:
        text += "; sequence gaps: " + ", ".join(f"rank {r}: {n}" for r, n in gaps.items())
    for error in run.errors:
        text += f"\n  {error}"
    return text
