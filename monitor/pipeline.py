"""decode → dispatch → aggregate → outputs: the one path that live frames and replayed logs both take.

The pipeline routes: each message updates its run's state (`monitor.aggregates.runstate`), and what
that makes ready goes to the outputs, which write their own files (`monitor.outputs`)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from monitor.aggregates.runstate import RefusedSender, RejectedMessage, RunState
from monitor.folders import run_dir
from monitor.ingest.logbook import LogBook
from monitor.ingest.rejections import RateLimitedLines, rejection_line
from monitor.outputs.console import MonitorConsole
from monitor.outputs.epoch_files import EpochOutputs
from monitor.outputs.report.writer import Reports
from monitor.outputs.run_files import late_run_end_line, run_end_line, write_run_start
from monitor.outputs.sample_writer import SampleOutputs
from monitor.outputs.summary import Summaries
from trainer_side.protocol import Message

if TYPE_CHECKING:
    from monitor.outputs.tensorboard import TensorBoardWriter

log = logging.getLogger("monitor")


class Pipeline:
    """Takes decoded messages in order (`handle`), keeps each run's state and hands what is ready to
    the outputs: figures to `renderer`, tables to `console`, files written by the output modules.
    `tick` (live) and `finish` (end) draw what is pending."""

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
        self.logbook: LogBook | None = None  # the runs' logs: what could not be logged goes into the summaries
        self.reporter: RateLimitedLines | None = None  # explains rejections, rate-limited (else one note each)
        self.reports = Reports(out, clock=clock)  # the HTML pages, rewritten with each summary.json
        self.epochs = EpochOutputs(renderer, console)
        self.samples = SampleOutputs(renderer, console)  # changes, per-sample files, suspects, data map
        self.summaries = Summaries(out, self.reports, clock)
        self._late_ends: dict[str, int] = {}  # run -> its ranks' run_ends after it had finished
        self._ready_since: dict[str, float] = {}  # run -> since when its ready epochs wait for the trainer

    @property
    def tensorboard(self) -> TensorBoardWriter | None:
        """--tensorboard: figures and scalars as events too."""
        return self.epochs.tensorboard

    @tensorboard.setter
    def tensorboard(self, writer: TensorBoardWriter | None) -> None:
        self.epochs.tensorboard = writer

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
            elif self.summaries.is_due(run):
                self._write_summary(run)
        self.reports.write_pending()
        self.console.flush()

    def finish(self) -> None:
        """Renders everything still pending (end of a replay, or shutdown) and writes each run's summary."""
        for run in list(self.runs.values()):
            self._render_ready(run, flush=True)
            if run.start is not None:
                self.samples.run_end(run, run_dir(self.out, run.run))
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
                write_run_start(run, run_dir(self.out, run.run), self.console)
        elif kind == "preds":
            run.on_preds(message)
        elif kind == "samples":
            run.on_samples(message)
        elif kind == "mistakes":
            run.on_mistakes(message)
        elif kind == "sampled":
            run.on_sampled(message)
        elif kind == "train_preds":
            run.on_train_preds(message)
        elif kind == "sample_names":
            run.on_sample_names(message)
            self._note_sample_problems(run)
        elif kind == "epoch_end":
            run.on_epoch_end(message, self.clock())
            self._render_ready(run)
        elif kind == "run_end":
            was_finished = run.finished
            run.on_run_end(message)
            self._render_ready(run)
            if run.finished and not was_finished:
                self.samples.run_end(run, run_dir(self.out, run.run))
                self.console.line(run_dir(self.out, run.run), run_end_line(run))
                self._write_summary(run, at_once=True)
                return
            if was_finished:
                self._late_run_end(run, message)
        if kind in ("run_start", "epoch_end", "run_end"):
            self._write_summary(run)  # at most once a second: it lists every rank

    def _write_summary(self, run: RunState, *, at_once: bool = False) -> None:
        self.summaries.write(run, None if self.logbook is None else self.logbook.status(run.run), at_once=at_once)

    def _late_run_end(self, run: RunState, message: Message) -> None:
        """A rank's run_end after its run had finished (a rank's failure finishes it)."""
        told = self._late_ends[run.run] = self._late_ends.get(run.run, 0) + 1
        line = late_run_end_line(run, message, told)
        if line is not None:
            self.console.line(run_dir(self.out, run.run), line)

    # --- epochs -------------------------------------------------------------------------------

    def _render_ready(self, run: RunState, flush: bool = False) -> None:
        ready = run.ready_epochs(self.clock(), self.epoch_timeout, flush=flush)
        if ready and not flush and self._yield_to_trainer(run):
            return
        self._ready_since.pop(run.run, None)
        for number, missing, named in ready:
            if missing and not run.finished:
                self.console.note(f"run {run.run}: rendering epoch {number} without rank(s) "
                                  f"{describe_ranks(missing, named)} (no epoch_end from them)")
            self._render_epoch(run, number)
            self.reports.drawn(run_dir(self.out, run.run), number)
            if not missing and run.start is not None:
                run.release(number)

    def _yield_to_trainer(self, run: RunState) -> bool:
        """Whether the run's ready epochs wait: while its trainer keeps the CPUs busy (the renderer's
        deferral says so) and the run goes on, at most the renderer's `defer_s` from the first
        epoch that waited. The epoch's files are then written with its figures, when the trainer
        leaves a core idle, at the run's end, or at the deadline; `tick` looks again."""
        if run.finished or not getattr(self.renderer, "busy", False):
            return False
        since = self._ready_since.setdefault(run.run, self.clock())
        return self.clock() - since < getattr(self.renderer, "defer_s", 0.0)

    def _note_sample_problems(self, run: RunState) -> None:
        for note in run.take_sample_notes():
            self.console.line(run_dir(self.out, run.run), note)

    def _render_epoch(self, run: RunState, number: int) -> None:
        run.drawn(number)
        self._note_sample_problems(run)
        if run.start is None:
            self.console.note(f"run {run.run}: epoch {number} cannot be drawn: its run_start never arrived")
            return
        folder = run_dir(self.out, run.run)
        self.epochs.draw(run, number, folder)
        scalars = self.samples.epoch(run, number, folder, folder / f"epoch_{number:03d}")
        if scalars and self.tensorboard is not None:
            self.tensorboard.epoch(folder.name, number, {}, None, scalars)


def describe_ranks(count: int, named: list[int]) -> str:
    """"3", "3, 7 and 9", "3, 7, 9 and 1,048,560 more": `count` ranks, of which `named` are the first few."""
    shown = ", ".join(map(str, named))
    rest = count - len(named)
    if rest:
        return f"{shown} and {rest:,} more"
    head, _, last = shown.rpartition(", ")
    return f"{head} and {last}" if head else last
