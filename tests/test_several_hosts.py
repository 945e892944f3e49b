"""Ranks on other hosts: two "hosts" (network namespaces the test makes) send the ranks of one run over
TCP, with CURVE keys from `monitor keygen`, to `monitor serve` in a third namespace, bound to its veth
address with `--allow-remote`.

Every address is made by the test inside namespaces it made (10.231.1.0/30 and 10.231.2.0/30), and the
namespaces are deleted after, also on failure; nothing changes in the namespace the tests run in. The
test skips, saying why, where namespaces cannot be made (not root, no `ip`, no CAP_NET_ADMIN).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq.auth

from conftest import ROOT, MonitorProcess
from monitor.cli import main
from remote_ranks import CLASS_NAMES, rank_predictions
from test_end_to_end import independent_confusion, read_confusion_csv

PORT = 5555  # the monitor's namespace is new: nothing else listens there
MONITOR_ADDRESS = "10.231.1.1"
HOSTS = {"a": ("10.231.1.2", [0, 1]), "b": ("10.231.2.2", [2, 3])}  # host -> (its address, its ranks)
WORLD = 4
EPOCHS = 2
STOP_LINE = re.compile(r"(\d+) frames received, (\d+) rejected, (\d+) run\(s\)")


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _why_no_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); running as uid %d" % os.geteuid()
    return None


@pytest.fixture
def hosts():
    """Three namespaces: `mon` (the monitor, 10.231.1.1 towards host a, 10.231.2.1 towards host b) and
    hosts `a` and `b`, each joined to `mon` by a veth pair; b reaches 10.231.1.1 through `mon`. Yields
    {role: namespace name}; deletes them after, killing what the test left running inside."""
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    names = {role: f"lsm-{tag}-{role}" for role in ("mon", "a", "b")}
    made: list[str] = []
    try:
        for name in names.values():
            result = ip("netns", "add", name)
            if result.returncode != 0:
                pytest.skip(f"cannot make a network namespace: `ip netns add` says {result.stderr.strip()}")
            made.append(name)
        mon = names["mon"]
        steps = [("-n", mon, "link", "set", "lo", "up")]
        for host, (address, _) in HOSTS.items():
            ns, subnet = names[host], address.rsplit(".", 1)[0]
            steps += [("-n", mon, "link", "add", f"to-{host}", "type", "veth", "peer", "name", "to-mon", "netns", ns),
                      ("-n", mon, "addr", "add", f"{subnet}.1/30", "dev", f"to-{host}"),
                      ("-n", mon, "link", "set", f"to-{host}", "up"),
                      ("-n", ns, "addr", "add", f"{address}/30", "dev", "to-mon"),
                      ("-n", ns, "link", "set", "to-mon", "up"),
                      ("-n", ns, "link", "set", "lo", "up")]
        steps.append(("-n", names["b"], "route", "add", f"{MONITOR_ADDRESS}/32", "via", "10.231.2.1"))
        for step in steps:
            result = ip(*step)
            if result.returncode != 0:
                pytest.skip(f"cannot set up the namespaces' network: `ip {' '.join(step)}` says "
                            f"{result.stderr.strip()}")
        yield names
    finally:
        for name in made:
            for pid in ip("netns", "pids", name).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ip("netns", "del", name)


def keygen(folder: Path, name: str) -> Path:
    assert main(["keygen", str(folder), "--name", name]) == 0
    return folder / f"{name}.key_secret"


def in_namespace(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def send_from(host: str, ns: str, keys: Path, tmp: Path, run: str, secret: Path | None,
              linger_ms: int) -> subprocess.Popen:
    """Starts the ranks of `host` inside its namespace."""
    argv = [sys.executable, str(ROOT / "tests" / "remote_ranks.py"), "--endpoint", f"tcp://{MONITOR_ADDRESS}:{PORT}",
            "--server-key", str(keys / "server.key"), "--run", run, "--world", str(WORLD), "--ranks",
            *map(str, HOSTS[host][1]), "--epochs", str(EPOCHS), "--spool", str(tmp / f"spool-{host}-{run}"),
            "--linger-ms", str(linger_ms)]
    if secret is not None:
        argv += ["--client-secret", str(secret)]
    return subprocess.Popen(in_namespace(ns, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


def reports_of(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines()]


def test_ranks_on_two_other_hosts_arrive_exact_and_a_client_without_the_key_is_refused(tmp_path, hosts):
    keys = tmp_path / "keys"
    keygen(keys, "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    secrets_of = {}
    for host in HOSTS:
        secrets_of[host] = keygen(keys, f"host-{host}")
        shutil.copy(keys / f"host-{host}.key", allowed)
    intruder = keygen(keys, "intruder")  # made by keygen, but not in --curve-clients
    intruder_key = zmq.auth.load_certificate(str(intruder))[0].decode()

    monitor = MonitorProcess(tmp_path / "out", "--allow-remote", "--curve-secret", str(keys / "server.key_secret"),
                             "--curve-clients", str(allowed), port=PORT, host=MONITOR_ADDRESS,
                             command=in_namespace(hosts["mon"], sys.executable, "-m", "monitor", "serve"))
    try:
        senders = [send_from(host, hosts[host], keys, tmp_path, "job", secrets_of[host], linger_ms=20000)
                   for host in HOSTS]
        refused = send_from("b", hosts["b"], keys, tmp_path, "intruder", intruder, linger_ms=1000)
        reports = [report for proc in senders for report in reports_of(proc)]
        refused_reports = reports_of(refused)
        assert monitor.stop() == 0, monitor.output()
    finally:
        monitor.close()
    output = monitor.output()
    assert "Traceback" not in output

    # Nothing lost: every rank's every message is in the monitor's log, by its own receipts.
    assert sorted(r["rank"] for r in reports) == list(range(WORLD))
    for report in reports:
        assert report["dropped"] == 0 and report["refusal"] is None, report
        assert report["confirmed"] == report["messages"] == 2 + 3 * EPOCHS, report  # run_start, 3 per epoch, run_end
    run = monitor.out / "job"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world"] == WORLD
    assert sorted(summary["ranks"]) == [str(rank) for rank in range(WORLD)]
    assert all(rank["gaps"] == 0 and rank["dropped"] == 0 for rank in summary["ranks"].values()), summary["ranks"]
    assert STOP_LINE.findall(output)[-1] == (str(sum(r["messages"] for r in reports)), "0", "1")

    # Every rank's counts, exact, summed over both hosts.
    for epoch in range(EPOCHS):
        names, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        expected = sum(independent_confusion(*rank_predictions(rank, epoch), len(CLASS_NAMES))
                       for rank in range(WORLD))
        assert names == CLASS_NAMES
        np.testing.assert_array_equal(counts, expected)

    # The client without an allowed key: refused, told so, and named (address and key) on the console.
    assert [r["rank"] for r in refused_reports] == HOSTS["b"][1]
    for report in refused_reports:
        assert report["confirmed"] == 0 and report["refusal"], report
    assert not (monitor.out / "intruder").exists()
    assert f"refused a CURVE handshake from {HOSTS['b'][0]}: client key {intruder_key}" in output, output
