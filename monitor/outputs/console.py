"""Where the monitor's tables go: the terminal (above the live dashboard) and each run's console.txt.

Drawing a rich table is pure-Python work: serve and watch hand it to a render worker (`offload`, see
`ProcessRenderer.table`) so that the monitor's normal-priority process does not compete with the
trainer; replay draws inline. Either way, each run's entries come out in the order they
were made: each one waits for the run's entries before it, never for another run's, so a large table
being drawn for one run holds back no other run's output. Terminal-only notes never wait.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Future, TimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.table import Table
from rich.text import Text

from monitor.outputs.render.jobs import TableJob
from monitor.outputs.render.tables import TerminalView, plain_text

log = logging.getLogger("monitor")
NOTE_MAX_CHARS = 2000


@dataclass
class _Entry:
    run_dir: Path | None        # where the record goes (None: terminal only)
    record: str | None          # console.txt text, once known
    shown: object | None        # what the terminal prints, once known
    job: TableJob | None = None
    future: Future | None = None  # a table being drawn elsewhere


class MonitorConsole:
    """`table` and `line` are part of the run's record (console.txt); `note` is for the terminal only,
    for what depends on wall time or arrival order (timeouts, warnings), so records stay reproducible."""

    def __init__(self, terminal: Console | None, *, fresh: bool,
                 offload: Callable[[TableJob], Future] | None = None) -> None:
        self.terminal = terminal
        self.fresh = fresh  # replay starts each run's console.txt anew; serve appends (restarts continue)
        self.offload = offload
        self._started: set[Path] = set()
        self.printer: Callable[[object], None] | None = None  # the dashboard redirects printing here
        self._muted = False
        self._outboxes: dict[Path | None, deque[_Entry]] = {}  # per run folder (None: terminal-only notes)
        self._deadline: float | None = None
        self.abandoned = 0  # tables not drawn by the `stop_by` deadline: neither printed nor recorded

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        self._muted, previous = True, self._muted
        try:
            yield
        finally:
            self._muted = previous

    # --- what the pipeline says -------------------------------------------------------------

    def table(self, run_dir: Path, record: Callable[[], Table], terminal: Callable[[], Table] | None = None) -> None:
        """`record()` builds the table for console.txt, and for the terminal unless a shorter
        `terminal()` version is given. Both must pickle when an `offload` is set (module-level
        builders bound to their rows with `functools.partial`)."""
        if self._muted:
            return
        job = TableJob(record, terminal, None if self.terminal is None else TerminalView.of(self.terminal))
        future = None
        if self.offload is not None:
            try:
                future = self.offload(job)
            except Exception as exc:  # noqa: BLE001 - e.g. a broken worker pool: draw it here instead
                log.warning("table worker unavailable (%s: %s); drawing the table in the monitor",
                            type(exc).__name__, exc)
        self._queue(_Entry(run_dir, None, None, job, future))

    # Lines and notes quote run ids and trainer errors: untrusted, so neutralized like table cells.
    def line(self, run_dir: Path, text: str) -> None:
        if self._muted:
            return
        text = plain_text(text)
        self._queue(_Entry(run_dir, text, Text(text)))

    def note(self, text: str, style: str = "yellow") -> None:
        if self._muted:
            return
        if len(text) > NOTE_MAX_CHARS:  # a sender's claims (a run id, an error) must not flood the screen
            text = f"{text[:NOTE_MAX_CHARS]}… ({len(text) - NOTE_MAX_CHARS:,} more characters)"
        self._queue(_Entry(None, None, Text(plain_text(text), style=style)))

    # --- writing out, in order ----------------------------------------------------------------

    def stop_by(self, deadline: float) -> None:
        """From now on `flush(wait=True)` waits for tables until the monotonic `deadline` at most; a
        table not drawn by then is abandoned (counted in `abandoned`), not drawn here."""
        self._deadline = deadline

    def _queue(self, entry: _Entry) -> None:
        self._outboxes.setdefault(entry.run_dir, deque()).append(entry)
        self.flush()

    def flush(self, wait: bool = False) -> None:
        """Writes out, per run and oldest first, every entry whose table is drawn, stopping at the
        run's first one still being drawn; `wait` waits for them all (until the `stop_by` deadline,
        if one is set). Called after each entry and on each serve tick."""
        for key in list(self._outboxes):
            outbox = self._outboxes[key]
            while outbox:
                entry = outbox[0]
                if entry.job is not None:
                    if entry.future is not None and not entry.future.done() and not wait:
                        break
                    self._complete(entry)
                outbox.popleft()
                if entry.run_dir is not None and entry.record is not None:
                    self._append(entry.run_dir, entry.record)
                if entry.shown is not None:
                    self._show(entry.shown)
            if not outbox:
                del self._outboxes[key]

    @property
    def pending(self) -> int:
        return sum(len(outbox) for outbox in self._outboxes.values())

    def _complete(self, entry: _Entry) -> None:
        """Fills in the entry's texts from its drawn table; past the `stop_by` deadline, a table not
        drawn yet is abandoned and the entry left empty."""
        assert entry.job is not None
        texts = None
        if entry.future is not None:
            timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            try:
                texts = entry.future.result(timeout)
            except TimeoutError:
                self.abandoned += 1
                return
            except Exception as exc:  # noqa: BLE001 - the worker died or failed: draw it here instead
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self.abandoned += 1
                    return
                log.warning("table worker failed (%s: %s); drawing the table in the monitor", type(exc).__name__, exc)
        if texts is None:
            texts = entry.job.run()
        record, shown = texts
        entry.record = record
        entry.shown = None if shown is None else Text.from_ansi(shown)

    def _append(self, run_dir: Path, text: str) -> None:
        path = run_dir / "console.txt"
        mode = "a"
        if self.fresh and run_dir not in self._started:
            mode = "w"
        self._started.add(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(path, mode, encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def _show(self, renderable: object) -> None:
        if self.printer is not None:
            self.printer(renderable)
        elif self.terminal is not None:
            self.terminal.print(renderable)
