"""Everything made of one ready epoch: its figures (submitted to the renderer), its CSV and JSON files
(per-class metrics, top confusions, sampler distribution, the run's history), its console tables and
its TensorBoard scalars."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.aggregates import analysis
from monitor.aggregates.confusion import SparseCounts
from monitor.aggregates.runstate import RunState
from monitor.outputs.console import MonitorConsole
from monitor.outputs.render import tables
from monitor.outputs.render.jobs import HistoryJob, ReliabilityJob, SampleGridJob, confusion_jobs
from monitor.outputs.render.save import write_csv, write_json

if TYPE_CHECKING:
    from monitor.outputs.tensorboard import TensorBoardWriter


class EpochOutputs:
    """Draws ready epochs: `draw(run, number, folder)` once per epoch the run state calls ready."""

    def __init__(self, renderer, console: MonitorConsole) -> None:
        self.renderer = renderer
        self.console = console
        self.tensorboard: TensorBoardWriter | None = None
        self._without_confidence: set[str] = set()  # runs told that their trainer sends no confidences

    def draw(self, run: RunState, number: int, folder: Path) -> None:
        epoch = run.epochs[number]
        epoch_dir = folder / f"epoch_{number:03d}"
        names = run.class_names
        counts = run.confusion(number)
        per_class = None
        if counts is not None:  # None once released: then only late metrics redraw the epoch's summary
            for job in confusion_jobs(epoch_dir, counts, names, number):
                self.renderer.submit(job)
            per_class = self._write_analysis(folder, epoch_dir, number, counts, names)
        if epoch.samples is not None:
            s = epoch.samples
            self.renderer.submit(SampleGridJob(epoch_dir / "sample_predictions.png", s["images"], s["labels"],
                                               s["preds"], names))
        self._submit_calibration(run, number, epoch_dir, has_preds=counts is not None)
        self._write_sampler(run, number, folder, epoch_dir)
        if run.history:
            self.renderer.submit(HistoryJob(folder / "training_history",
                                            {e: dict(v) for e, v in sorted(run.history.items())}))
            columns = run.history_columns()
            write_csv(folder / "history.csv", ["epoch", *columns],
                      ([e, *(_csv_value(run.history[e].get(c)) for c in columns)] for e in sorted(run.history)))
        self.console.table(folder, partial(
            tables.epoch_summary_table, run.run, number, dict(run.history.get(number, {})),
            epoch.accuracy if counts is None else counts.accuracy(), run.world))
        if self.tensorboard is not None:
            self.tensorboard.epoch(folder.name, number, run.finite_metrics(number), per_class)

    def _submit_calibration(self, run: RunState, number: int, epoch_dir: Path, *, has_preds: bool) -> None:
        """reliability_diagram.png and misclassified.png, for a trainer that sent confidences (1.2);
        for one that did not, a line once per run."""
        bins, mistakes = run.calibration(number), run.hardest_mistakes(number)
        if bins is None and has_preds and run.run not in self._without_confidence:
            self._without_confidence.add(run.run)
            self.console.line(epoch_dir.parent, f"run {run.run}: {_why_no_confidences(run)}, so there is no "
                                                 "reliability diagram, ECE or MCE")
        if bins is not None and bins.total:
            self.renderer.submit(ReliabilityJob(epoch_dir / "reliability_diagram.png", bins,
                                                f"Reliability diagram — epoch {number}"))
        if mistakes is not None:
            self.renderer.submit(SampleGridJob(epoch_dir / "misclassified.png", mistakes.images, mistakes.labels,
                                               mistakes.preds, run.class_names, mistakes.confidence))

    def _write_analysis(self, folder: Path, epoch_dir: Path, number: int, counts: SparseCounts,
                        names: list[str]) -> list[analysis.ClassMetricsRow]:
        """per_class_metrics.csv and top_confusions.csv, and their console tables; returns the
        per-class rows."""
        metrics = analysis.per_class_metrics(counts, names)
        fraction = analysis.format_fraction
        write_csv(epoch_dir / "per_class_metrics.csv", ["class", "index", "precision", "recall", "f1", "support"],
                  ([r.name, "" if r.index is None else r.index, fraction(r.precision), fraction(r.recall),
                    fraction(r.f1), r.support] for r in metrics))
        confusions = analysis.top_confusions(counts, names)
        write_csv(epoch_dir / "top_confusions.csv", ["true", "pred", "count", "share_of_true"],
                  ([r.true, r.pred, r.count, fraction(r.share_of_true)] for r in confusions.rows))
        self.console.table(folder, partial(tables.worst_classes_table, analysis.worst_by_f1(metrics),
                                           metrics[-2:], counts.classes, number))
        if confusions.rows:
            self.console.table(folder, partial(tables.top_confusions_table, confusions.rows[:10],
                                               confusions.total_cells, number))
        else:
            self.console.line(folder, f"epoch {number}: no confusions (every validation prediction was right)")
        return metrics

    def _write_sampler(self, run: RunState, number: int, folder: Path, epoch_dir: Path) -> None:
        """sampler_distribution.json and its table, for a run drawn by a TrackingWeightedRandomSampler."""
        sampler = run.sampler_counts(number)
        if sampler is None:
            return
        rows = tables.sampler_rows(run.class_names, [int(c) for c in sampler[0]], [float(e) for e in sampler[1]])
        write_json(epoch_dir / "sampler_distribution.json", {
            "epoch": number, "draws": int(sampler[0].sum()),
            "classes": [{"name": r.name, "index": r.index, "sampled": r.sampled,
                         "expected": round(r.expected, 6),
                         "ratio": None if r.ratio is None else round(r.ratio, 6)} for r in rows],
        })
        self.console.table(folder, *tables.shortened(partial(tables.sampler_table, rows, number), rows,
                                                     tables.furthest_from_expected))


def _csv_value(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _why_no_confidences(run: RunState) -> str:
    """What a run without confidences lacks: a trainer from before protocol 1.2 cannot send them; a
    newer one calls `preds` without the argument that does."""
    version = run.start.version if run.start is not None else (1, 0)
    if tuple(version) < (1, 2):
        return "its trainer sends no confidences (protocol before 1.2)"
    return ("its trainer sends preds without confidences: pass each prediction's top-1 softmax probability as "
            "`preds(..., confidence=...)` (EmitterCallback does)")
