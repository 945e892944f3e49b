"""Where the monitor's tables go: the terminal (above the live dashboard) and each run's console.txt."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.table import Table
from rich.text import Text

from monitor.render.tables import plain_text, table_text


class MonitorConsole:
    """`table` and `line` are part of the run's record (console.txt); `note` is for the terminal only,
    for what depends on wall time or arrival order (timeouts, warnings), so records stay reproducible."""

    def __init__(self, terminal: Console | None, *, fresh: bool) -> None:
        self.terminal = terminal
        self.fresh = fresh  # replay starts each run's console.txt anew; serve appends (restarts continue)
        self._started: set[Path] = set()
        self.printer: Callable[[object], None] | None = None  # the dashboard redirects printing here
        self._muted = False

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        self._muted, previous = True, self._muted
        try:
            yield
        finally:
            self._muted = previous

    def _append(self, run_dir: Path, text: str) -> None:
        if self._muted:
            return
        path = run_dir / "console.txt"
        mode = "a"
        if self.fresh and run_dir not in self._started:
            mode = "w"
        self._started.add(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(path, mode, encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def _show(self, renderable: object) -> None:
        if self._muted:
            return
        if self.printer is not None:
            self.printer(renderable)
        elif self.terminal is not None:
            self.terminal.print(renderable)

    def table(self, run_dir: Path, table: Table, terminal: Table | None = None) -> None:
        """`table` goes to console.txt, and to the terminal unless a shorter `terminal` version is given."""
        self._append(run_dir, table_text(table))
        self._show(table if terminal is None else terminal)

    # Lines and notes quote run ids and trainer errors: untrusted, so neutralized like table cells.
    def line(self, run_dir: Path, text: str) -> None:
        text = plain_text(text)
        self._append(run_dir, text)
        self._show(Text(text))

    def note(self, text: str, style: str = "yellow") -> None:
        self._show(Text(plain_text(text), style=style))
