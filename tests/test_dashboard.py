"""The live table of `monitor serve`: redrawn only when what it shows changed, at most once a second, and
never built where there is no terminal."""

from __future__ import annotations

import io

from rich.console import Console

from monitor.outputs.dashboard import COLUMNS, MIN_REDRAW_S, Dashboard, dashboard_caption


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def row(messages: int) -> tuple[str, ...]:
    values = {"Run": "demo", "Ranks": "1/1", "Epoch": "0", "Status": "running", "Msgs": str(messages)}
    return tuple(values.get(column, "—") for column in COLUMNS)


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160, color_system=None), out


def test_the_table_is_redrawn_when_it_changed_and_at_most_once_a_second():
    console, out = terminal()
    clock = Clock()
    caption = dashboard_caption(frames=3, rejected={}, render_queue=0)
    with Dashboard(console, clock=clock) as dashboard:
        assert dashboard.show([row(1)], caption, endpoint="tcp://127.0.0.1:1")
        assert "demo" in out.getvalue() and "3 frames received; rejected 0; renders queued: 0" in out.getvalue()
        clock.now += 5 * MIN_REDRAW_S
        written = len(out.getvalue())
        assert not dashboard.show([row(1)], caption, endpoint="tcp://127.0.0.1:1")  # nothing changed
        assert len(out.getvalue()) == written
        clock.now += 0.1
        assert dashboard.show([row(2)], caption, endpoint="tcp://127.0.0.1:1")
        clock.now += MIN_REDRAW_S / 2
        assert not dashboard.show([row(3)], caption, endpoint="tcp://127.0.0.1:1")  # too soon
        clock.now += MIN_REDRAW_S / 2
        assert dashboard.show([row(3)], caption, endpoint="tcp://127.0.0.1:1")  # the change waited, not lost
        clock.now += 0.01
        assert dashboard.show([row(4)], caption, endpoint="tcp://127.0.0.1:1", now=True)  # the final state


def test_without_a_terminal_nothing_is_drawn():
    out = io.StringIO()
    dashboard = Dashboard(Console(file=out, force_terminal=False))
    assert not dashboard.active
    with dashboard:
        assert not dashboard.show([row(1)], "caption", endpoint="e", now=True)
        dashboard.print("a table, printed as lines")
    assert out.getvalue() == "a table, printed as lines\n"


def test_the_caption_lists_rejections_by_reason():
    caption = dashboard_caption(frames=10, rejected={"too_large": 2, "bad_magic": 1}, render_queue=4)
    assert caption == "10 frames received; rejected 3 (bad_magic: 1, too_large: 2); renders queued: 4"
