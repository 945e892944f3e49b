"""The live view of `monitor serve`: one row per run. Pure builders plus a thin Live presenter that redraws
only what changed, at most once a second."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Mapping

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from monitor.outputs.render.tables import display_name
from monitor.aggregates.runstate import RunState

_SHOWN_METRICS = ("train/loss", "val/loss", "val/acc_top1")
COLUMNS = ("Run", "Ranks", "Epoch", "Status", "train/loss", "val/loss", "val/acc_top1", "Changes", "Msgs", "MB",
           "Dropped", "Gaps", "Last artifact")
# The terminal is redrawn at most this often: a redraw costs CPU in the monitor's own process, which is
# not at idle priority.
MIN_REDRAW_S = 1.0


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


def changes_cell(changes: Mapping | None) -> str:
    """The latest epoch's changes against the one before: newly right / newly wrong and McNemar's p
    ("+12/−5 p=0.21"); "—" without sample ids or before the second epoch."""
    if changes is None:
        return "—"
    return f"+{changes['newly_correct']:,}/−{changes['newly_wrong']:,} p={changes['mcnemar_p']:.2g}"


def dashboard_rows(runs: Iterable[RunState], changes: Mapping[str, Mapping] | None = None) -> list[tuple[str, ...]]:
    """One row of text per run, in COLUMNS order; a run's ranks in total (nothing here walks them);
    `changes`: run -> its latest changes.json content."""
    rows = []
    for run in runs:
        metrics = run.history.get(run.latest_epoch, {}) if run.latest_epoch is not None else {}
        totals = run.totals
        rows.append((
            display_name(run.run), f"{len(run.ranks)}/{run.world}", "—" if run.latest_epoch is None else str(run.latest_epoch),
            run.status, *(_fmt(metrics.get(name)) for name in _SHOWN_METRICS),
            changes_cell(None if changes is None else changes.get(run.run)),
            str(totals.messages), f"{totals.bytes / 1e6:.2f}", str(totals.dropped), str(totals.gaps),
            display_name(run.artifacts[-1] if run.artifacts else "—", 60),
        ))
    return rows


def dashboard_caption(*, frames: int, rejected: Mapping[str, int], render_queue: int) -> str:
    rejected_total = sum(rejected.values())
    detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(rejected.items()))
    return (f"{frames} frames received; rejected {rejected_total}" + (f" ({detail})" if detail else "")
            + f"; renders queued: {render_queue}")


def dashboard_table(rows: Iterable[tuple[str, ...]], caption: str, *, endpoint: str) -> Table:
    table = Table(title=f"monitor — {endpoint}", title_justify="left", expand=False, caption=caption)
    for column in COLUMNS:
        table.add_column(column, overflow="fold" if column in ("Run", "Last artifact") else "ellipsis")
    for row in rows:
        table.add_row(*row)
    return table


class Dashboard:
    """A rich Live table on a terminal; on anything else (honcho, CI, a pipe) nothing but the printed lines.

    The table is redrawn when what it shows changed, at most once every MIN_REDRAW_S (rich's own
    refresh thread would redraw it 4 times a second even when idle), and whenever a printed table or
    line scrolls it up.
    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.clock = clock
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(console=console, auto_refresh=False, transient=False)
        self._shown: tuple | None = None
        self._shown_at = -math.inf

    @property
    def active(self) -> bool:
        """Whether there is a terminal to show the table on (callers skip building it otherwise)."""
        return self.live is not None

    def __enter__(self) -> "Dashboard":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def print(self, renderable: object) -> None:
        # Live prints above the table; plain mode just prints.
        self.console.print(renderable)

    def show(self, rows: list[tuple[str, ...]], caption: str, *, endpoint: str, now: bool = False) -> bool:
        """Redraws the table if its content changed and the last redraw is old enough (`now`: however
        recent); returns whether it redrew."""
        if self.live is None:
            return False
        content = (tuple(rows), caption, endpoint)
        at = self.clock()
        if content == self._shown or (not now and at - self._shown_at < MIN_REDRAW_S):
            return False
        self.live.update(Group(dashboard_table(rows, caption, endpoint=endpoint)), refresh=True)
        self._shown, self._shown_at = content, at
        return True
