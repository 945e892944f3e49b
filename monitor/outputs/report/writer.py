"""Writes the report pages under --out, each atomically (a temporary file renamed over the page):
`<run>/index.html`, `<run>/epoch_NNN/report_data.js` and `index.html`.

The monitor calls it from its pipeline thread only: `drawn` when an epoch is drawn, `write_run` after
each summary.json, `figure_done` (from the renderer's completion thread: it only queues) when a figure
is saved, and `write_pending` from the pipeline's tick and at the end, once every figure is drawn.
A run's page is rewritten at most once per `every_s` for finished figures, and the index at most once
per `every_s`, except `at_once`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import time
from pathlib import Path
from typing import Callable

from monitor.outputs.render.save import write_text
from monitor.outputs.report.folder import DATASET_DATA, EPOCH_DATA, epoch_folders, read_epoch, read_run
from monitor.outputs.report.index import RunEntry, index_page, run_entry
from monitor.outputs.report.page import CONFUSION_ROWS, dataset_script, epoch_script, run_page

log = logging.getLogger("monitor")

PAGE = "index.html"


class Reports:
    """The report pages of the runs under `out` (see the module docstring for when each is written)."""

    def __init__(self, out: Path, *, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.every_s = every_s
        self.clock = clock
        self._drawn: dict[str, set[int]] = {}  # run folder -> epochs drawn since their data was written
        self._figures: queue.SimpleQueue[str] = queue.SimpleQueue()  # run folders with a newly saved figure
        self._waiting: set[str] = set()  # run folders whose page waits for `every_s` to pass
        self._page_written: dict[str, float] = {}
        self._index_due = False
        self._index_written = -math.inf
        self._entries: dict[str, tuple[tuple, RunEntry]] = {}  # run folder -> (files' stat, entry)
        self._datasets: set[str] = set()  # run folders whose DATASET_DATA is written (it never changes)
        self._summaries: dict[str, dict | None] = {}  # run folder -> the summary its page was last written with

    def drawn(self, folder: Path, epoch: int) -> None:
        """Epoch `epoch` of the run in `folder` was drawn: its tables go to the page with the next write."""
        self._drawn.setdefault(folder.name, set()).add(epoch)

    def figure_done(self, folder: str) -> None:
        """A figure of the run folder `folder` was saved; safe from any thread."""
        self._figures.put(folder)

    def write_run(self, folder: Path, summary: dict | None = None) -> None:
        """Writes the epoch data drawn since the last call and the run's page, unless `summary` (what
        summary.json now holds) is the one of the last write and no epoch was drawn since; then the
        index when due."""
        drawn = self._drawn.pop(folder.name, set())
        if summary is None or drawn or summary != self._summaries.get(folder.name):
            self._summaries[folder.name] = summary
            self._write_run(folder.name, drawn)
        self._index(at_once=False)

    def write_pending(self, *, at_once: bool = False) -> None:
        """Rewrites the pages of runs with newly saved figures (each at most once per `every_s`, unless
        `at_once`), and the index when due."""
        while True:
            try:
                self._waiting.add(self._figures.get_nowait())
            except queue.Empty:
                break
        now = self.clock()
        for name in sorted(self._waiting):
            if at_once or now - self._page_written.get(name, -math.inf) >= self.every_s:
                self._waiting.discard(name)
                self._write_run(name, self._drawn.pop(name, set()))
        self._index(at_once=at_once)

    def write_all(self) -> int:
        """Every run folder's page and every epoch's data, then the index (`monitor report`); returns
        the number of run pages written."""
        names = [path.name for path in sorted(self.out.iterdir()) if path.is_dir() and not path.name.startswith(".")]
        written = 0
        for name in names:
            epochs = {number for number, _ in epoch_folders(self.out / name)}
            written += self._write_run(name, epochs)
        self._index(at_once=True)
        return written

    def _write_run(self, name: str, epochs: set[int]) -> int:
        folder = self.out / name
        self._page_written[name] = self.clock()
        try:
            for number in sorted(epochs):
                epoch_dir = folder / f"epoch_{number:03d}"
                if epoch_dir.is_dir():
                    write_text(epoch_dir / EPOCH_DATA,
                               epoch_script(read_epoch(epoch_dir, number, confusion_limit=CONFUSION_ROWS)))
            run = read_run(folder)
            if run is None:
                return 0
            if run.dataset is not None and name not in self._datasets:
                script = dataset_script(run.dataset)
                if script is not None:
                    write_text(folder / DATASET_DATA, script)
                    run = dataclasses.replace(run, dataset_data=True)
                self._datasets.add(name)
            write_text(folder / PAGE, run_page(run))
        except OSError as exc:
            log.error("cannot write the report page of %s (%s)", folder, exc.strerror or exc)
            return 0
        self._entries[name] = (_stat_key(folder), run_entry(run))
        self._index_due = True
        return 1

    def _index(self, *, at_once: bool) -> None:
        now = self.clock()
        if not self._index_due or (not at_once and now - self._index_written < self.every_s):
            return
        self._index_due, self._index_written = False, now
        try:
            write_text(self.out / PAGE, index_page(self._runs()))
        except OSError as exc:
            log.error("cannot write %s (%s)", self.out / PAGE, exc.strerror or exc)

    def _runs(self) -> list[RunEntry]:
        """Every run folder under `out`, by folder name; a folder is read again only when its
        summary.json or history.csv changed."""
        entries = []
        for path in sorted(self.out.iterdir()):
            if not path.is_dir() or path.name.startswith("."):
                continue
            key = _stat_key(path)
            cached = self._entries.get(path.name)
            if cached is None or cached[0] != key:
                run = read_run(path, figures=False)
                if run is None:
                    continue
                cached = self._entries[path.name] = (key, run_entry(run))
            entries.append(cached[1])
        return entries


def _stat_key(folder: Path) -> tuple:
    key = []
    for name in ("summary.json", "history.csv"):
        try:
            stat = (folder / name).stat()
            key.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            key.append(None)
    return tuple(key)
