"""Shared fixtures: a real `monitor serve` process on a free loopback port (bench/harness.py, shared
with the benchmarks), and the tiny trainer.

Every Emitter a test makes is closed after the test, passed or failed (`close_emitters`): an open one
keeps a ZeroMQ context that can hold the interpreter at exit. Monitors the tests start draw at once
(`--render-defer 0`, `draw_at_once`): on a machine that other work keeps busy the default would hold
a live run's figures up to 30 s, and a test that stops the monitor right after the last epoch would
see them abandoned; tests/test_renderer.py tests the deferral itself. Tests that start processes or
run a Lightning fit, or sleep, are marked `slow` here, by the names they use; tests that replay and
draw whole runs carry `@pytest.mark.slow` themselves. `pytest -m "not slow"` (make check) runs the
rest: the codec, the aggregates, the tables and the figures' data, the quick loop while working.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from bench.harness import ROOT, MonitorProcess, free_port, wait_for

__all__ = ["ROOT", "TINY", "MonitorProcess", "free_port", "wait_for", "tree_bytes", "children_of", "alive", "run_tiny",
           "record_index"]

TINY = ROOT / "tests" / "tiny_training.py"


def tree_bytes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), for byte-for-byte comparisons."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)) not in skip}


def record_index(frames: list[bytes], kind: str, epoch: int | None = None) -> int:
    """The position of the first `kind` message (of `epoch`) among a log's frames: tests find a fixture's
    records by what they hold, so that a regenerated fixture with other messages keeps them right."""
    import msgpack

    for index, frame in enumerate(frames):
        message = msgpack.unpackb(frame, raw=False)
        if message.get("kind") == kind and (epoch is None or message.get("epoch") == epoch):
            return index
    raise LookupError(f"no {kind} message{'' if epoch is None else f' of epoch {epoch}'} in the log")


@pytest.fixture(autouse=True)
def close_emitters(monkeypatch, tmp_path_factory):
    """Closes every Emitter made during the test, after it, whatever the test did; the default spool
    of in-process emitters goes to a temporary folder, not the working directory."""
    from trainer_side import emitter as emitter_module
    from trainer_side.emitter import Emitter

    monkeypatch.setattr(emitter_module, "DEFAULT_SPOOL", str(tmp_path_factory.mktemp("monitor_spool")))

    made: list[Emitter] = []
    build = Emitter.__init__

    def tracked(self: Emitter, *args: object, **kwargs: object) -> None:
        build(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Emitter, "__init__", tracked)
    yield
    for emitter in made:
        emitter.close()


@pytest.fixture(autouse=True)
def draw_at_once(monkeypatch):
    """Every `MonitorProcess` a test starts gets `--render-defer 0`, unless the test passes its own."""
    build = MonitorProcess.__init__

    def without_deferral(self: MonitorProcess, out: Path, *extra: str, **kwargs: object) -> None:
        build(self, out, *extra, *(() if "--render-defer" in extra else ("--render-defer", "0")), **kwargs)

    monkeypatch.setattr(MonitorProcess, "__init__", without_deferral)


# What a test names (or a fixture it uses) that starts monitor, render-worker or trainer processes,
# forks, runs a Lightning fit (an integration test of the callback, seconds each) or sleeps.
SLOW_NAMES = {"MonitorProcess", "run_tiny", "subprocess", "ProcessRenderer", "start_monitor", "served_run",
              "fork", "Trainer", "sleep"}
SLOW_TIMEOUT_S = 600  # a slow test's own timeout (the others get pyproject's): a DDP trainer alone may take 400 s


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `slow` every test that starts processes: it uses such a fixture, or it or a helper function
    of its module that it calls names one of SLOW_NAMES."""
    for item in items:
        function = getattr(item, "function", None)
        names = set(getattr(item, "fixturenames", ())) | (_names_used(function) if function else set())
        if names & SLOW_NAMES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def _names_used(function: Callable, seen: set | None = None) -> set[str]:
    """The global names a test function uses, and those of the same module's functions it calls."""
    seen = set() if seen is None else seen
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return set()
    seen.add(code)
    names = set(code.co_names)
    for const in code.co_consts:  # nested functions and lambdas
        if hasattr(const, "co_names"):
            names |= set(const.co_names)
    for name in list(names):
        helper = function.__globals__.get(name)
        if callable(helper) and getattr(helper, "__module__", None) == function.__module__:
            names |= _names_used(helper, seen)
    return names


@pytest.fixture
def start_monitor(tmp_path):
    started: list[MonitorProcess] = []

    def start(out: Path | None = None, *extra: str, port: int | None = None,
              own_session: bool = True) -> MonitorProcess:
        monitor = MonitorProcess(out or tmp_path / "outputs", *extra, port=port, own_session=own_session)
        started.append(monitor)
        return monitor

    yield start
    for monitor in started:
        if monitor.proc.poll() is None:
            os.kill(monitor.proc.pid, signal.SIGCONT)
            monitor.kill()


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (exited, not yet reaped by its new parent) counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run_tiny(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs the tiny trainer as an independent process and checks it succeeded."""
    result = subprocess.run([sys.executable, str(TINY), *args], capture_output=True, text=True, timeout=timeout,
                            cwd=ROOT)
    return result


def console_of_spool(spool: Path, run: str, out: Path) -> str:
    """console.txt of `run` after its rank-0 spool log goes through the pipeline in this process,
    figures drawn inline: what the monitor says of a run, without a monitor process."""
    import io

    from rich.console import Console

    from monitor.outputs.console import MonitorConsole
    from monitor.outputs.render.pool import InlineRenderer
    from monitor.pipeline import Pipeline
    from trainer_side.msglog import iter_frames
    from trainer_side.protocol import decode

    pipeline = Pipeline(out, InlineRenderer(), MonitorConsole(Console(file=io.StringIO(), width=200), fresh=True))
    for frame in iter_frames(spool / run / "rank0.mlog"):
        pipeline.handle(decode(frame), len(frame))
    pipeline.finish()
    return (out / run / "console.txt").read_text(encoding="utf-8")


def logged(path: Path) -> list[bytes]:
    """The frames of a run's log so far, read while the monitor writes it: none while the file is
    created but its header not yet written, and none while a record's length is written but not
    yet its bytes."""
    import warnings

    from trainer_side.msglog import CorruptLogError, LogFormatError, TruncatedLogWarning, iter_frames

    if not path.exists():
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedLogWarning)
        try:
            return list(iter_frames(path))
        except (CorruptLogError, LogFormatError):
            return []
