"""decode → dispatch → aggregate → render: the one path that live frames and replayed logs both take."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from monitor import analysis
from monitor.confusion import SparseCounts
from monitor.console import MonitorConsole
from monitor.render.jobs import HistoryJob, ReliabilityJob, SampleGridJob, confusion_jobs
from monitor.logbook import LogBook, run_dir
from monitor.rejections import RateLimitedLines, rejection_line
from monitor.render import tables
from monitor.render.save import write_csv, write_json
from monitor.report.writer import Reports
from monitor.runstate import RefusedSender, RejectedMessage, RunState
from trainer_side.protocol import Message

if TYPE_CHECKING:
    from monitor.tensorboard_events import TensorBoardWriter

log = logging.getLogger("monitor")

SUMMARY_EVERY_S = 1.0


class Pipeline:
    """Takes decoded messages in order (`handle`) and keeps each run's state, artifacts and
    console record up to date: JSON and CSV written here, figures submitted to `renderer`, tables
    to `console`. `tick` (live) and `finish` (end) draw what is pending."""

    def __init__(self, out: Path, renderer, console: MonitorConsole, *, epoch_timeout: float | None = None,
                 stale_after: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.renderer = renderer
        self.console = console
        self.epoch_timeout = epoch_timeout
        self.stale_after = stale_after  # seconds without a message before an unfinished run is called stale
        self.clock = clock
        self.runs: dict[str, RunState] = {}
        self.rejected: Counter[str] = Counter()  # well-formed messages whose content was refused
        self._summary_written: dict[str, float] = {}  # run -> clock() of its last summary.json
        self._summaries_due: set[str] = set()  # runs whose summary.json waits for `tick`
        self._without_confidence: set[str] = set()  # runs told that their trainer sends no confidences
        self.logbook: LogBook | None = None  # the runs' logs: what could not be logged goes into the summaries
        self.reporter: RateLimitedLines | None = None  # explains rejections, rate-limited (else one note each)
        self.tensorboard: TensorBoardWriter | None = None  # --tensorboard: figures and scalars as events too
        self.reports = Reports(out, clock=clock)  # the HTML pages, rewritten with each summary.json

    # --- entry points -------------------------------------------------------------------------

    def handle(self, message: Message, size: int, *, resumed: bool = False) -> None:
        """Aggregates one message; `resumed` marks a message re-read from the run's own log after a
        monitor restart: it rebuilds state and artifacts but adds nothing to console.txt again."""
        if resumed:
            with self.console.muted():
                self._handle(message, size)
        else:
            self._handle(message, size)

    def _handle(self, message: Message, size: int) -> None:
        run = self.runs.get(message.run)
        if run is None:
            run = self.runs[message.run] = RunState(message.run, message.world)
        run.last_message_at = self.clock()
        if run.stale:
            run.stale = False
            self.console.note(f"run {run.run}: messages again after it was marked stale; running")
        try:
            skipped = run.account(message, size)
            if skipped:
                self.console.note(f"run {message.run}: rank {message.rank} skipped {skipped} message(s) "
                                  f"before seq {message.seq} (dropped by the emitter or lost)")
            self._dispatch(run, message)
        except RefusedSender as exc:
            self.rejected[exc.reason] += 1
            if exc.first:
                self.console.note(str(exc))
        except RejectedMessage as exc:
            self.rejected[exc.reason] += 1
            self._explain(exc.reason, f"run {message.run}: rejected {message.kind} from rank {message.rank}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one message must never stop the monitor
            self.rejected["internal"] += 1
            self._explain("internal", f"run {message.run}: {message.kind} from rank {message.rank} could not be "
                                      f"processed ({type(exc).__name__}: {exc})")

    def _explain(self, reason: str, text: str) -> None:
        if self.reporter is not None:
            self.reporter.add(reason, rejection_line(reason, text))
        elif reason == "internal":
            log.error("%s", text)
        else:
            self.console.note(text)

    def record_artifact(self, path: str | Path) -> None:
        """Notes a finished artifact for the dashboard and TensorBoard (called from the renderer's
        completion thread)."""
        path = Path(path)
        if self.tensorboard is not None:
            self.tensorboard.figure(path)
        try:
            folder = path.relative_to(self.out).parts[0]
        except (ValueError, IndexError):
            return
        for run in list(self.runs.values()):
            if run_dir(self.out, run.run).name == folder:
                run.artifacts.append(str(path.relative_to(self.out)))
                del run.artifacts[:-5]
        self.reports.figure_done(folder)

    def live(self) -> bool:
        """Whether some run is under way (not ended by every rank, not stale); safe from any thread."""
        return any(not run.finished and not run.stale for run in list(self.runs.values()))

    def tick(self) -> None:
        """Renders epochs whose missing ranks timed out and marks silent runs stale; call it
        periodically while serving."""
        now = self.clock()
        for run in list(self.runs.values()):
            self._render_ready(run)
            if (self.stale_after is not None and not run.stale and not run.finished
                    and run.last_message_at is not None and now - run.last_message_at >= self.stale_after):
                run.stale = True
                self.console.note(f"run {run.run}: no message for {self.stale_after:g} s and no run_end from every "
                                  "rank: marked stale in summary.json (its trainer has probably died; a new message "
                                  "marks it running again)")
                self._render_ready(run, flush=True)
                self._write_summary(run, at_once=True)
            elif run.run in self._summaries_due:
                self._write_summary(run)
        self.reports.write_pending()
        self.console.flush()

    def finish(self) -> None:
        """Renders everything still pending (end of a replay, or shutdown) and writes each run's summary."""
        for run in list(self.runs.values()):
            self._render_ready(run, flush=True)
            self._write_summary(run, at_once=True)
        self.console.flush(wait=True)
        self.renderer.drain()
        self.reports.write_pending(at_once=True)  # the pages again, with the figures drawn meanwhile

    # --- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, run: RunState, message: Message) -> None:
        kind = message.kind
        if kind == "metrics":  # the most frequent kind, and the one with nothing else to do
            run.on_metrics(message)
            return
        if kind == "run_start":
            first = run.start is None
            run.on_run_start(message)
            if first:
                self._write_run_start(run)
        elif kind == "preds":
            run.on_preds(message)
        elif kind == "samples":
            run.on_samples(message)
        elif kind == "mistakes":
            run.on_mistakes(message)
        elif kind == "sampled":
            run.on_sampled(message)
        elif kind == "epoch_end":
            run.on_epoch_end(message, self.clock())
            self._render_ready(run)
        elif kind == "run_end":
            run.on_run_end(message)
            self._render_ready(run)
            if run.finished:
                self._write_run_end(run)
        if kind in ("run_start", "epoch_end", "run_end"):
            self._write_summary(run, at_once=kind != "epoch_end")

    def _write_summary(self, run: RunState, *, at_once: bool = False) -> None:
        """Writes the run's summary.json, with what could not be logged; after an epoch end, at most
        once per SUMMARY_EVERY_S per run (later ones are written by `tick`): the summary lists every
        rank, so a sender's flood of epoch ends from many ranks would otherwise cost time proportional
        to ranks times messages. A failed write (a full disk) is reported, not raised."""
        now = self.clock()
        if not at_once and now - self._summary_written.get(run.run, -math.inf) < SUMMARY_EVERY_S:
            self._summaries_due.add(run.run)
            return
        self._summaries_due.discard(run.run)
        self._summary_written[run.run] = now
        summary = run.summary()
        problem = None if self.logbook is None else self.logbook.status(run.run)
        if problem is not None:
            summary["log"] = problem
        path = run_dir(self.out, run.run) / "summary.json"
        try:
            write_json(path, summary)
        except OSError as exc:
            log.error("cannot write %s (%s)", path, exc.strerror or exc)
            return
        self.reports.write_run(path.parent, summary)

    # --- run start ----------------------------------------------------------------------------

    def _write_run_start(self, run: RunState) -> None:
        start, folder, names = run.start, run_dir(self.out, run.run), run.class_names
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
            self.console.table(folder, *_shortened(partial(tables.class_distribution_table, rows), rows,
                                                   tables.smallest_and_largest))
        else:
            reason = start.get("targets_missing") or "the trainer sent no train targets or class counts"
            self.console.line(folder, f"run {run.run}: no dataset class distribution: {reason}")
        self.console.table(folder, partial(tables.model_info_table, dict(start["model"])))
        if start["sampler"] is None and start["train_targets"] is None:
            self.console.line(folder, f"run {run.run}: no sampler distribution tables: they need the train targets")
        elif start["sampler"] is None:
            self.console.line(folder, f"run {run.run}: no TrackingWeightedRandomSampler in use; "
                                      "no sampler distribution tables")

    # --- epochs -------------------------------------------------------------------------------

    def _render_ready(self, run: RunState, flush: bool = False) -> None:
        for number, missing, named in run.ready_epochs(self.clock(), self.epoch_timeout, flush=flush):
            if missing and not run.finished:
                self.console.note(f"run {run.run}: rendering epoch {number} without rank(s) "
                                  f"{describe_ranks(missing, named)} (no epoch_end from them)")
            self._render_epoch(run, number)
            self.reports.drawn(run_dir(self.out, run.run), number)
            if not missing and run.start is not None:
                run.release(number)

    def _render_epoch(self, run: RunState, number: int) -> None:
        epoch = run.epochs[number]
        run.drawn(number)
        if run.start is None:
            self.console.note(f"run {run.run}: epoch {number} cannot be drawn: its run_start never arrived")
            return
        folder = run_dir(self.out, run.run)
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
        sampler = run.sampler_counts(number)
        if sampler is not None:
            rows = tables.sampler_rows(names, [int(c) for c in sampler[0]], [float(e) for e in sampler[1]])
            write_json(epoch_dir / "sampler_distribution.json", {
                "epoch": number, "draws": int(sampler[0].sum()),
                "classes": [{"name": r.name, "index": r.index, "sampled": r.sampled,
                             "expected": round(r.expected, 6),
                             "ratio": None if r.ratio is None else round(r.ratio, 6)} for r in rows],
            })
            self.console.table(folder, *_shortened(partial(tables.sampler_table, rows, number), rows,
                                                   tables.furthest_from_expected))
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
            self.console.line(epoch_dir.parent, f"run {run.run}: its trainer sends no confidences (protocol before "
                                                 "1.2), so there is no reliability diagram, ECE or MCE")
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

    def _write_run_end(self, run: RunState) -> None:
        folder = run_dir(self.out, run.run)
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
        self.console.line(folder, text)


STATS_FILE = Path(".monitor") / "stats.json"  # run folders never start with a dot, so no run can collide


def write_stats(out: Path, *, frames: int, frame_bytes: int, rejected: Counter[str], pipeline: Pipeline | None,
                logbook: LogBook | None = None, curve_refused: int = 0) -> None:
    """What this monitor process took in and refused, by reason, for scripts and tests.

    Args:
        pipeline: gives the runs and their status; None when nothing was processed.
        logbook: the logs whose failures are reported; default, the pipeline's.
        curve_refused: CURVE handshakes refused (senders, not frames).
    """
    write_json(out / STATS_FILE, {
        "frames": frames, "bytes": frame_bytes, "rejected": dict(sorted(rejected.items())),
        "runs": {} if pipeline is None else {run.run: run.status for run in pipeline.runs.values()},
        **({"curve_handshakes_refused": curve_refused} if curve_refused else {}),
        **_log_stats(logbook if logbook is not None or pipeline is None else pipeline.logbook),
    })


def describe_ranks(count: int, named: list[int]) -> str:
    """"3", "3, 7 and 9", "3, 7, 9 and 1,048,560 more": `count` ranks, of which `named` are the first few."""
    shown = ", ".join(map(str, named))
    rest = count - len(named)
    if rest:
        return f"{shown} and {rest:,} more"
    head, _, last = shown.rpartition(", ")
    return f"{head} and {last}" if head else last


def _log_stats(logbook: LogBook | None) -> dict:
    stats: dict = {}
    if logbook is not None and logbook.not_logged:
        stats.update(not_logged=dict(sorted(logbook.not_logged.items())), log_error=logbook.last_error)
    if logbook is not None and logbook.rejected_not_kept:
        stats["rejected_not_kept"] = logbook.rejected_not_kept  # beyond the rejected-frames log's cap
    return stats


def _shortened(table: partial, rows: list, pick: Callable[..., list]) -> tuple[partial, partial | None]:
    """A per-class table for console.txt and the terminal's shorter version (None: the same), each
    drawing only the rows `pick` chooses where the run has more classes than they show."""
    record = table if len(rows) <= tables.RECORD_MAX_CLASS_ROWS else partial(
        table, shown=pick(rows, tables.RECORD_MAX_CLASS_ROWS))
    return record, partial(table, shown=pick(rows)) if len(rows) > tables.TERMINAL_MAX_CLASS_ROWS else None


def _csv_value(value: float | None) -> str:
    return "" if value is None else repr(float(value))
