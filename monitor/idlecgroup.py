"""Move a process into an idle CPU cgroup, where the kernel lets it run only when nothing else wants
the CPU. Best effort, Linux only.

Why a cgroup, on top of SCHED_IDLE and autogroup nice 19 (`renderer.yield_cpu`): the kernel ranks a
SCHED_IDLE task as idle only against the tasks of its own group. Between groups (one session's
autogroup against another's) a group at nice 19 is a low-weight group, not an idle one, and a trainer
thread that wakes while such a group runs waits for the running task's protected slice. Measured on
the project machine (`python -m bench.fit_overhead`, the trainer's run-queue wait from /proc
schedstat, BENCHMARKS.md §1): a live monitor kept the demo trainer's threads waiting 310 to 348 ms
more per 3-epoch fit than no monitor, about 5 % of the fit. A group marked `cpu.idle` is idle at
every level, so a waking trainer thread preempts it at once: with the monitor and its workers in one,
36 to 42 ms.

Where: a child named `IDLE_GROUP` of the calling process's own cgroup in the `cpu` hierarchy (cgroup
v1), or of the root in cgroup v2 (any other v2 group that holds processes cannot have children with
the cpu controller). A child of one's own group stays under every limit its ancestors set. It needs
write access there (root, or a delegated group) and a kernel with `cpu.idle` (5.15+); without them
nothing changes. The group is shared by every monitor and left in place when they exit: an empty
cgroup costs nothing, and another monitor may be in it. Without write access, the same effect for a
whole monitor comes from systemd: `systemd-run --user --scope -p CPUWeight=idle monitor serve`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IDLE_GROUP = "lightning-monitor-idle"


@dataclass(frozen=True)
class Mount:
    version: int  # 1 or 2
    point: Path  # where the hierarchy is mounted
    root: str  # the hierarchy's path at that mount point (not "/" inside some containers)


def cpu_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup hierarchies that can set a CPU share, from /proc/self/mountinfo's text: v1 mounts
    whose options name the `cpu` controller, and v2 mounts."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3:
            continue
        fstype, options = after[0], after[2].split(",")
        point = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2":
            mounts.append(Mount(2, point, fields[3]))
        elif fstype == "cgroup" and "cpu" in options:
            mounts.append(Mount(1, point, fields[3]))
    return mounts


def own_groups(proc_cgroup: str) -> dict[int, str]:
    """The process's group per hierarchy version, from /proc/self/cgroup's text: 1 for the v1
    hierarchy that holds the `cpu` controller, 2 for the unified one."""
    groups = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            groups[2] = path
        elif "cpu" in controllers.split(","):
            groups[1] = path
    return groups


def idle_group_dir(mounts: list[Mount], groups: dict[int, str]) -> Path | None:
    """Where the idle group goes, or None where no hierarchy can hold one for this process."""
    for mount in sorted(mounts, key=lambda m: m.version):  # v1 `cpu` first: in a hybrid setup it owns the controller
        path = groups.get(mount.version)
        if path is None:
            continue
        if path.rstrip("/").endswith("/" + IDLE_GROUP):
            return mount.point / _below(path, mount.root)  # a worker of a monitor that is in it already
        if mount.version == 2:
            if path != "/":
                continue  # a v2 group with processes in it can't give its children the cpu controller
            try:
                enabled = (mount.point / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if "cpu" not in enabled:
                continue  # enabling it would change how every group on the machine shares the CPU
        return mount.point / _below(path, mount.root) / IDLE_GROUP
    return None


def _below(path: str, root: str) -> str:
    """The group's path relative to the mount point (the mount may show only part of the tree)."""
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")):]
    return path.lstrip("/")


def idle_group_of(proc: Path = Path("/proc/self")) -> Path | None:
    """The idle group's folder for the process whose /proc folder is `proc`, or None where no
    hierarchy can hold one (or /proc cannot be read). Makes nothing."""
    try:
        return idle_group_dir(cpu_mounts((proc / "mountinfo").read_text()), own_groups((proc / "cgroup").read_text()))
    except OSError:
        return None


def may_join_idle_group(proc: Path = Path("/proc/self")) -> Path | None:
    """The idle group's folder where this process may make or join it (write access), else None."""
    target = idle_group_of(proc)
    if target is None or not os.access(target if target.exists() else target.parent, os.W_OK):
        return None
    return target


def join_idle_group(pid: int = 0, proc: Path = Path("/proc/self")) -> Path | None:
    """Move process `pid` (0: the caller) into the idle group. Returns the group's folder, or None
    where it could not (no cgroup with a CPU controller, no write access, a kernel without
    `cpu.idle`); nothing is changed then, beyond an empty folder the kernel may have let us make."""
    target = idle_group_of(proc)
    if target is None:
        return None
    try:
        target.mkdir(exist_ok=True)
        idle = target / "cpu.idle"
        if idle.read_text().strip() != "1":
            idle.write_text("1")
        (target / "cgroup.procs").write_text(str(pid or os.getpid()))
        return target
    except OSError:
        return None
