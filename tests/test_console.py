"""MonitorConsole: tables drawn elsewhere (serve's table worker) still come out complete, in the
order they were made, identical to drawing them inline, and a failed worker costs nothing."""

from __future__ import annotations

import io
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from monitor.outputs.console import MonitorConsole
from monitor.outputs.render.jobs import TableJob
from monitor.pipeline import Pipeline
from monitor.outputs.render import tables
from monitor.outputs.render.pool import InlineRenderer
from trainer_side.msglog import iter_frames
from trainer_side.protocol import decode

LOG = Path(__file__).parent / "data" / "tiny_run.mlog"
RUN = "tiny-fixture"


def _terminal() -> Console:
    return Console(file=io.StringIO(), width=100, force_terminal=True, color_system="truecolor",
                   markup=False, emoji=False)


def _feed(out: Path, console: MonitorConsole) -> Pipeline:
    pipeline = Pipeline(out, InlineRenderer(), console)
    for frame in iter_frames(LOG):
        pipeline.handle(decode(frame), len(frame))
    return pipeline


def _inline(out: Path) -> tuple[str, str]:
    terminal = _terminal()
    _feed(out, MonitorConsole(terminal, fresh=True)).finish()
    return (out / RUN / "console.txt").read_text(encoding="utf-8"), terminal.file.getvalue()


@pytest.mark.slow
def test_offloaded_tables_come_out_in_order_and_identical_to_inline_ones(tmp_path):
    expected_record, expected_screen = _inline(tmp_path / "inline")
    held: list[tuple[TableJob, Future]] = []

    def offload(job: TableJob) -> Future:
        held.append((job, Future()))
        return held[-1][1]

    terminal = _terminal()
    console = MonitorConsole(terminal, fresh=True, offload=offload)
    pipeline = _feed(tmp_path / "offloaded", console)
    # Every table went to the worker, and nothing, not even the plain lines after the first table,
    # was written ahead of it.
    assert len(held) == expected_record.count("┏") > 3
    assert not (tmp_path / "offloaded" / RUN / "console.txt").exists()
    assert terminal.file.getvalue() == "" and console.pending >= len(held)
    # The worker finishes them last to first, and one of them fails: it is drawn in the monitor.
    for index, (job, future) in reversed(list(enumerate(held))):
        if index == 1:
            future.set_exception(RuntimeError("the table worker died"))
        else:
            future.set_result(job.run())
    pipeline.finish()
    assert console.pending == 0
    assert (tmp_path / "offloaded" / RUN / "console.txt").read_text(encoding="utf-8") == expected_record
    assert terminal.file.getvalue() == expected_screen


@pytest.mark.slow
def test_a_table_worker_that_cannot_take_jobs_leaves_the_tables_to_the_monitor(tmp_path):
    expected_record, expected_screen = _inline(tmp_path / "inline")

    def offload(job: TableJob) -> Future:
        raise RuntimeError("A process in the process pool was terminated abruptly")

    terminal = _terminal()
    _feed(tmp_path / "broken", MonitorConsole(terminal, fresh=True, offload=offload)).finish()
    assert (tmp_path / "broken" / RUN / "console.txt").read_text(encoding="utf-8") == expected_record
    assert terminal.file.getvalue() == expected_screen


def test_a_waiting_table_holds_back_its_runs_later_lines_but_no_other_runs_output_or_notes(tmp_path):
    future: Future = Future()
    terminal = _terminal()
    console = MonitorConsole(terminal, fresh=True, offload=lambda job: future)
    rows = tables.sampler_rows(["a", "b"], [3, 1], [0.5, 0.5])
    slow, other = tmp_path / "slow", tmp_path / "other"
    console.line(slow, "before")
    console.table(slow, lambda: tables.sampler_table(rows, 0))
    console.line(slow, "after")
    console.line(other, "other run")
    console.note("a note")
    assert (slow / "console.txt").read_text() == "before\n"
    assert (other / "console.txt").read_text() == "other run\n"
    console.flush()  # still drawing: nothing of that run moves
    assert (slow / "console.txt").read_text() == "before\n"
    future.set_result(("TABLE\n", "\x1b[1mTABLE\x1b[0m"))
    console.flush()
    assert (slow / "console.txt").read_text() == "before\nTABLE\nafter\n"
    assert [line.strip() for line in Text.from_ansi(terminal.file.getvalue()).plain.splitlines()] == \
        ["before", "other run", "a note", "TABLE", "after"]


def test_past_the_stop_deadline_a_table_still_being_drawn_is_abandoned_not_drawn_here(tmp_path):
    drawn: list[TableJob] = []
    terminal = _terminal()
    console = MonitorConsole(terminal, fresh=True, offload=lambda job: drawn.append(job) or Future())
    rows = tables.sampler_rows(["a", "b"], [3, 1], [0.5, 0.5])
    console.line(tmp_path, "before")
    console.table(tmp_path, lambda: tables.sampler_table(rows, 0))
    console.line(tmp_path, "after")
    console.stop_by(time.monotonic())
    console.flush(wait=True)
    assert console.abandoned == 1 and console.pending == 0 and len(drawn) == 1
    assert (tmp_path / "console.txt").read_text() == "before\nafter\n"


def test_terminal_text_prints_exactly_what_printing_the_table_prints():
    rows = tables.sampler_rows([f"class {i}" for i in range(12)], [90 + i for i in range(12)], [1 / 12] * 12)
    for color_system in ("truecolor", "256", None):
        direct, through = (Console(file=io.StringIO(), width=90, force_terminal=color_system is not None,
                                   color_system=color_system, markup=False, emoji=False) for _ in range(2))
        direct.print(tables.sampler_table(rows, 2))
        view = tables.TerminalView.of(through)
        through.print(Text.from_ansi(tables.terminal_text(tables.sampler_table(rows, 2), view)))
        assert through.file.getvalue() == direct.file.getvalue(), color_system
        assert ("\x1b[" in direct.file.getvalue()) == (color_system is not None)
