"""The live view of `monitor serve`: one row per run. Pure builder plus a thin Live/plain-line presenter."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from monitor.render.tables import display_name
from monitor.runstate import RunState

_SHOWN_METRICS = ("train/loss", "val/loss", "val/acc_top1")


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


def dashboard_table(runs: Iterable[RunState], *, endpoint: str, frames: int, rejected: Mapping[str, int],
                    render_queue: int) -> Table:
    table = Table(title=f"monitor serve — {endpoint}", title_justify="left", expand=False)
    for column in ("Run", "Ranks", "Epoch", "Status", "train/loss", "val/loss", "val/acc_top1",
                   "Msgs", "MB", "Dropped", "Gaps", "Last artifact"):
        table.add_column(column, overflow="fold" if column in ("Run", "Last artifact") else "ellipsis")
    for run in runs:
        metrics = run.history.get(run.latest_epoch, {}) if run.latest_epoch is not None else {}
        ranks = run.ranks.values()
        table.add_row(
            display_name(run.run), f"{len(run.ranks)}/{run.world}", "—" if run.latest_epoch is None else str(run.latest_epoch),
            run.status, *(_fmt(metrics.get(name)) for name in _SHOWN_METRICS),
            str(sum(c.messages for c in ranks)), f"{sum(c.bytes for c in ranks) / 1e6:.2f}",
            str(sum(c.dropped for c in ranks)), str(sum(c.gaps for c in ranks)),
            display_name(run.artifacts[-1] if run.artifacts else "—", 60),
        )
    rejected_total = sum(rejected.values())
    detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(rejected.items()))
    table.caption = (f"{frames} frames received; rejected {rejected_total}" + (f" ({detail})" if detail else "")
                     + f"; renders queued: {render_queue}")
    return table


class Dashboard:
    """A rich Live table on a terminal; on anything else (honcho, CI, a pipe) plain lines, no cursor codes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(console=console, refresh_per_second=4, transient=False)

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

    def update(self, table: Table) -> None:
        if self.live is not None:
            self.live.update(Group(table))
