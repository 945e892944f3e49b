"""summary.json of each run (with its HTML page), and the process's .monitor/stats.json."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Callable

from monitor.aggregates.runstate import RunState
from monitor.folders import run_dir
from monitor.outputs.render.save import write_json
from monitor.outputs.report.writer import Reports

log = logging.getLogger("monitor")

SUMMARY_EVERY_S = 1.0
STATS_FILE = Path(".monitor") / "stats.json"  # run folders never start with a dot, so no run can collide


class Summaries:
    """Writes each run's summary.json and then its report page. A write that is not `at_once` waits
    until SUMMARY_EVERY_S has passed since the run's last one (the pipeline's tick writes it then):
    the summary lists every rank and the page counts them, so a write for each of many ranks'
    run_starts, epoch ends and run_ends would cost ranks × messages."""

    def __init__(self, out: Path, reports: Reports, clock: Callable[[], float]) -> None:
        self.out = out
        self.reports = reports
        self.clock = clock
        self._written: dict[str, float] = {}  # run -> clock() of its last summary.json
        self._due: set[str] = set()  # runs whose summary.json waits for the pipeline's tick

    def write(self, run: RunState, log_problem: dict | None, *, at_once: bool = False) -> None:
        """Writes the run's summary (now, or once SUMMARY_EVERY_S has passed); `log_problem` is what
        could not be logged for it. A failed write (a full disk) is reported, not raised."""
        now = self.clock()
        if not at_once and now - self._written.get(run.run, -math.inf) < SUMMARY_EVERY_S:
            self._due.add(run.run)
            return
        self._due.discard(run.run)
        self._written[run.run] = now
        summary = run.summary()
        if log_problem is not None:
            summary["log"] = log_problem
        path = run_dir(self.out, run.run) / "summary.json"
        try:
            write_json(path, summary)
        except OSError as exc:
            log.error("cannot write %s (%s)", path, exc.strerror or exc)
            return
        self.reports.write_run(path.parent, summary)

    def is_due(self, run: RunState) -> bool:
        """Whether the run has a summary waiting for its interval to pass."""
        return run.run in self._due


def write_stats(out: Path, *, frames: int, frame_bytes: int, rejected: Counter[str], runs: dict[str, str],
                log_stats: dict | None = None, curve_refused: int = 0) -> None:
    """What this monitor process took in and refused, by reason, for scripts and tests.

    Args:
        runs: each run's status.
        log_stats: what could not be logged (the logbook's `stats()`), if anything.
        curve_refused: CURVE handshakes refused (senders, not frames).
    """
    write_json(out / STATS_FILE, {
        "frames": frames, "bytes": frame_bytes, "rejected": dict(sorted(rejected.items())),
        "runs": runs,
        **({"curve_handshakes_refused": curve_refused} if curve_refused else {}),
        **(log_stats or {}),
    })
