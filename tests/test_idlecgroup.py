"""monitor.idlecgroup: where the idle CPU group goes for each cgroup layout, what joining it writes,
and, where this machine lets a process write to its cpu cgroup, that a process really lands there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.idlecgroup import (IDLE_GROUP, Mount, cpu_mounts, idle_group_dir, join_idle_group, may_join_idle_group,
                                own_groups)

# /proc/self/mountinfo of a hybrid machine (v1 controllers, v2 mounted beside them), shortened.
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "4:memory:/jobs/7\n2:cpuacct:/\n1:cpu:/\n0::/\n"


def test_mounts_name_the_v1_cpu_hierarchy_and_the_v2_one_only():
    assert cpu_mounts(HYBRID) == [Mount(1, Path("/sys/fs/cgroup/cpu"), "/"),
                                  Mount(2, Path("/sys/fs/cgroup/unified"), "/")]
    # "cpu,cpuacct" is the cpu hierarchy; "cpuacct" or "cpuset" alone is not.
    joint = "50 31 0:40 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n" \
            "51 31 0:41 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
    assert cpu_mounts(joint) == [Mount(1, Path("/sys/fs/cgroup/cpu,cpuacct"), "/")]
    # Optional fields before the separator, and a mount point with a space in it.
    tagged = "60 1 0:42 /sub /mnt/my\\040cg rw shared:5 master:1 - cgroup2 cgroup2 rw\n"
    assert cpu_mounts(tagged) == [Mount(2, Path("/mnt/my cg"), "/sub")]
    assert cpu_mounts("garbage\n\n1 2 3\n") == []


def test_own_groups_reads_the_cpu_and_unified_lines():
    assert own_groups(HYBRID_CGROUP) == {1: "/", 2: "/"}
    assert own_groups("5:cpu,cpuacct:/user/3\n") == {1: "/user/3"}
    assert own_groups("0::/user.slice/app.scope\n") == {2: "/user.slice/app.scope"}
    assert own_groups("3:cpuset:/x\n") == {}


def test_v1_puts_the_group_under_the_process_own_cpu_group(tmp_path):
    mount = Mount(1, tmp_path, "/")
    assert idle_group_dir([mount], {1: "/"}) == tmp_path / IDLE_GROUP
    assert idle_group_dir([mount], {1: "/batch/7"}) == tmp_path / "batch" / "7" / IDLE_GROUP
    # A worker of a monitor that is in the group already stays there: no group inside the group.
    assert idle_group_dir([mount], {1: f"/batch/{IDLE_GROUP}"}) == tmp_path / "batch" / IDLE_GROUP
    # A container that sees only its part of the tree: the path is taken relative to the mount's root.
    assert idle_group_dir([Mount(1, tmp_path, "/docker/abc")], {1: "/docker/abc/job"}) == tmp_path / "job" / IDLE_GROUP
    assert idle_group_dir([mount], {2: "/"}) is None  # not in that hierarchy


def test_v2_only_from_the_root_and_only_where_cpu_is_already_handed_down(tmp_path):
    mount = Mount(2, tmp_path, "/")
    assert idle_group_dir([mount], {2: "/"}) is None  # no subtree_control file: not a cgroup folder
    (tmp_path / "cgroup.subtree_control").write_text("memory pids\n")
    assert idle_group_dir([mount], {2: "/"}) is None  # enabling cpu would change every group's share
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids\n")
    assert idle_group_dir([mount], {2: "/"}) == tmp_path / IDLE_GROUP
    # A group with processes in it (ours) cannot hand the cpu controller to a child.
    assert idle_group_dir([mount], {2: "/user.slice/app.scope"}) is None


def test_v1_comes_first_in_a_hybrid_layout(tmp_path):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cgroup.subtree_control").write_text("cpu\n")
    mounts = [Mount(2, tmp_path / "v2", "/"), Mount(1, tmp_path / "v1", "/")]
    assert idle_group_dir(mounts, {1: "/", 2: "/"}) == tmp_path / "v1" / IDLE_GROUP


def _fake_proc(tmp_path: Path, group: str = "/") -> tuple[Path, Path]:
    proc, hierarchy = tmp_path / "proc", tmp_path / "cpu"
    proc.mkdir()
    hierarchy.mkdir()
    (proc / "mountinfo").write_text(f"32 31 0:29 / {hierarchy} rw - cgroup cgroup rw,cpu\n")
    (proc / "cgroup").write_text(f"1:cpu:{group}\n0::/\n")
    return proc, hierarchy


def test_join_marks_the_group_idle_and_moves_the_process(tmp_path):
    proc, hierarchy = _fake_proc(tmp_path)
    group = hierarchy / IDLE_GROUP
    group.mkdir()  # the kernel makes a new group's files; here they are made by hand
    (group / "cpu.idle").write_text("0\n")
    (group / "cgroup.procs").write_text("")
    assert join_idle_group(4242, proc=proc) == group
    assert (group / "cpu.idle").read_text() == "1"
    assert (group / "cgroup.procs").read_text() == "4242"


def test_may_join_names_the_group_only_where_its_folder_can_be_written(tmp_path):
    proc, hierarchy = _fake_proc(tmp_path)
    assert may_join_idle_group(proc) == hierarchy / IDLE_GROUP
    assert not (hierarchy / IDLE_GROUP).exists()  # asking makes nothing
    hierarchy.chmod(0o500)
    try:
        if not os.access(hierarchy, os.W_OK):  # root may write anywhere: nothing to check then
            assert may_join_idle_group(proc) is None
    finally:
        hierarchy.chmod(0o700)
    assert may_join_idle_group(tmp_path / "nowhere") is None


def test_join_changes_nothing_where_the_kernel_has_no_cpu_idle(tmp_path):
    proc, hierarchy = _fake_proc(tmp_path)
    assert join_idle_group(4242, proc=proc) is None  # mkdir made a plain folder: no cpu.idle in it
    assert not (hierarchy / IDLE_GROUP / "cgroup.procs").exists()


def test_join_gives_up_quietly_without_cgroup_files(tmp_path):
    assert join_idle_group(proc=tmp_path) is None  # no mountinfo at all
    (tmp_path / "mountinfo").write_text("1 2 0:1 / / rw - ext4 /dev/vda rw\n")
    (tmp_path / "cgroup").write_text("0::/\n")
    assert join_idle_group(proc=tmp_path) is None  # no cgroup hierarchy mounted


REAL_GROUP = may_join_idle_group()  # the real idle group, where this process may make or join it
needs_cgroup = pytest.mark.skipif(REAL_GROUP is None or not sys.platform.startswith("linux"),
                                  reason="no cpu cgroup this process may write to")


def in_idle_group(pid: int) -> bool:
    """Whether the process's cpu cgroup (v1) or unified cgroup (v2) is the idle group."""
    return any(line.rstrip().endswith("/" + IDLE_GROUP) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
               if ":cpu" in line or line.startswith("0::"))


@needs_cgroup
def test_a_real_process_lands_in_an_idle_group():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not in_idle_group(child.pid)
        assert join_idle_group(child.pid) == REAL_GROUP
        assert in_idle_group(child.pid)
        assert (REAL_GROUP / "cpu.idle").read_text().strip() == "1"
        assert not in_idle_group(os.getpid())  # the caller named another process: it stays where it was
    finally:
        child.kill()
        child.wait()
