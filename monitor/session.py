"""A monitor started inside another session (a terminal's) moves its work to a session of its own.

Under Linux's autogroup scheduler each session shares the CPU as one unit, so a monitor's share can
only be lowered by lowering its session's (BENCHMARKS.md §1: at an equal share, the monitor's own work
at each epoch end added 17 to 21 ms to the trainer's epoch boundary; at the lowest share, a median
of 4.2 ms over ten runs, from -3.6 to +19.3; where it may also join an idle cgroup,
monitor/idlecgroup.py, +2.5 to +4.1 ms in three).
A terminal's session is the shell's, which is not the monitor's to lower. So `monitor serve` and
`monitor watch`, started there, run their work in a child that leads a new session
(renderer.lower_monitor_share then lowers it) and stay in the terminal as a thin parent that:

- forwards Ctrl-C, SIGTERM and SIGUSR1 to the child, and a hang-up as SIGTERM (a graceful stop);
- stops the child with itself on Ctrl-Z and continues it on `fg`/`bg`;
- returns the child's exit status.

The child stops gracefully (SIGTERM) when the parent dies, even by SIGKILL (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

PARENT_ENV = "MONITOR_SESSION_PARENT"
_PR_SET_PDEATHSIG = 1
_AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")
# Forwarded as they are; a hang-up becomes SIGTERM, since the child stops gracefully on that.
_FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGUSR1: signal.SIGUSR1,
              signal.SIGHUP: signal.SIGTERM}


def should_move(priority: str) -> bool:
    """True where lowering the monitor's share needs a session of its own and this process has none."""
    if priority != "idle" or not sys.platform.startswith("linux") or os.environ.get(PARENT_ENV):
        return False
    if os.getsid(0) == os.getpid():
        return False  # it leads its session already (honcho, systemd, setsid)
    try:
        return _AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return False  # a kernel without autogroup: a new session would change nothing


def run_in_own_session(argv: Sequence[str]) -> int:
    """Runs `python -m monitor ARGV` in a new session and stays as its parent until it exits."""
    child: subprocess.Popen | None = None
    early: list[int] = []

    def forward(number: int, _frame: object) -> None:
        sent = _FORWARDED[signal.Signals(number)]
        if child is None:
            early.append(sent)
        else:
            _send(child, sent)

    def suspend(_number: int, _frame: object) -> None:
        # The child's process group has no parent in its session (it is orphaned), so the kernel drops
        # a SIGTSTP sent to it: SIGSTOP it, then stop this process as Ctrl-Z would have.
        if child is not None:
            _send(child, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)

    def resume(_number: int, _frame: object) -> None:
        if child is not None:
            _send(child, signal.SIGCONT)

    for number in _FORWARDED:
        signal.signal(number, forward)
    for number in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(number, suspend)
    signal.signal(signal.SIGCONT, resume)
    child = subprocess.Popen([sys.executable, "-m", "monitor", *argv], start_new_session=True,
                             env={**os.environ, PARENT_ENV: str(os.getpid())})
    for sent in early:
        _send(child, sent)
    code = child.wait()  # signal handlers run during the wait, which then goes on (PEP 475)
    return code if code >= 0 else 128 - code


def _send(child: subprocess.Popen, number: int) -> None:
    try:
        child.send_signal(number)
    except ProcessLookupError:
        pass


def follow_parent() -> None:
    """In the child: stop gracefully (SIGTERM) when the parent that moved us here dies. Call it once
    the SIGTERM handling is in place. The variable is dropped, so the render workers don't see it."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the call above: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)
