"""Monitor ingest rate: messages/s and samples/s that `monitor serve` decodes, logs and aggregates.

A separate sender process (bench/sender.py) pushes pre-encoded frames as fast as it can to a real
`monitor serve`; the clock runs from the first frame sent to the moment the run's closing line
("run ... completed", written by the pipeline after it handled the run_end) is in console.txt.
Two streams: small `metrics` messages, and `preds` messages of 1,000 samples (43 classes).

`--fan-in` measures one run of R ranks instead (default R = 1, 64, 1,024, 4,096), each rank sending
what a trainer process does: run_start, 3 epochs of preds (500 samples, 100 classes), metrics and
epoch_end, and run_end; the ranks take turns, kind by kind, as the ranks of one job do. For each R, on
a monitor of its own:
- messages/s: every frame sent at once, up to the run's closing line in console.txt. Each rank's
  epoch comes in K preds messages, K = 4,096 / R (at least 1), so that every R has the same 12,288
  preds messages and the rate is not one of a few dozen messages. The other messages (8 a rank) are
  cheaper than a preds, so messages/s rises with R where the work per message stays the same; preds/s
  (12,288 over the same seconds) compares like with like;
- artifact latency: a second run with one preds message per rank and epoch (11 messages a rank), one
  epoch at a time, each sent once the previous epoch's artifacts are on disk: seconds from the
  epoch's last epoch_end sent to its confusion_matrix.csv and .png on disk, and whether the CSV
  holds exactly the counts of the preds sent;
- replay: `monitor replay` of that second run's log, from start to exit, into a new folder;
- memory: the monitor process's RSS once loaded, and its peak (VmHWM) after both runs.
With `--checkout DIR` the monitor (and replay) of another checkout is measured.

    python -m bench.monitor_ingest [--quick] [--json FILE]
    python -m bench.monitor_ingest --fan-in [--ranks 1 64 1024 4096] [--checkout DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.harness import PYTHON, ROOT, MonitorProcess, add_common_args, print_table, write_json
from trainer_side import protocol

CLASSES = 43


def frames_for(run: str, kind: str, count: int, samples: int) -> list[tuple[float, bytes, str]]:
    rng = np.random.default_rng(0)
    names = [f"class_{i:02d}" for i in range(CLASSES)]
    start = {"class_names": names, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
             "model": {"class": "Bench", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
             "train_targets": None, "class_counts": None, "sampler": None, "hparams": {}}
    bodies = [("run_start", start)]
    if kind == "metrics":
        values = {"train/loss": 0.5, "train/acc_top1": 0.8, "val/loss": 0.6, "val/acc_top1": 0.7, "val/acc_top5": 0.9}
        bodies += [("metrics", {"epoch": 0, "stage": "train", "step": i, "values": values}) for i in range(count)]
    else:
        preds = rng.integers(0, CLASSES, samples, dtype=np.uint8)
        labels = rng.integers(0, CLASSES, samples, dtype=np.uint8)
        bodies += [("preds", {"epoch": 0, "step": 0, "preds": preds, "labels": labels})] * count
    bodies.append(("run_end", {"status": "completed", "error": None, "sent": count + 2, "dropped": 0}))
    return [(0.0, protocol.encode(protocol.make_message(k, run, 0, 1, seq, body)), "")
            for seq, (k, body) in enumerate(bodies)]


def ingest(monitor: MonitorProcess, work: Path, run: str, kind: str, count: int, samples: int) -> dict:
    schedule = frames_for(run, kind, count, samples)
    plan = work / f"{run}.pickle"
    plan.write_bytes(pickle.dumps(schedule))
    console = monitor.out / run / "console.txt"
    monitor.wait_idle()
    sender = subprocess.Popen([PYTHON, "-m", "bench.sender", "--endpoint", monitor.endpoint, "--frames", str(plan)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    done = None
    while time.monotonic() < deadline:
        if console.exists() and f"run {run} completed" in console.read_text():
            done = time.time()
            break
        time.sleep(0.002)
    report = json.loads(sender.communicate(timeout=60)[0])
    if done is None:  # the log lives in a temporary folder that is gone by the time anyone reads it
        tail = "\n".join(monitor.log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"monitor did not finish run {run}; the end of its log:\n{tail}")
    elapsed = done - report["first"]
    messages = len(schedule)
    return {"messages": messages, "bytes": sum(len(f) for _, f, _ in schedule), "seconds": elapsed,
            "messages_per_s": messages / elapsed, "samples_per_s": count * samples / elapsed if samples else None,
            "sender_seconds": report["last"] - report["first"], "frame_bytes": len(schedule[1][1])}


# ------------------------------------------------------------------------------------ fan-in

FAN_IN_CLASSES = 100
FAN_IN_SAMPLES = 500  # validation samples per preds message
FAN_IN_EPOCHS = 3
FAN_IN_PREDS = 4096 * FAN_IN_EPOCHS  # preds messages of a throughput run, whatever R


def fan_in_phases(run: str, ranks: int, chunks: int = 1) -> list[list[tuple[float, bytes, str]]]:
    """The frames of one run of `ranks` ranks, one phase per epoch, each rank's epoch in `chunks` preds
    messages, then metrics and epoch_end; the first phase starts with every rank's run_start, the last
    ends with every rank's run_end, and the last epoch_end of epoch E is labelled `end E`. The ranks
    take turns kind by kind. Message times are fixed, so that two replays write the same bytes."""
    rng = np.random.default_rng(ranks)
    start = {"class_names": [f"class_{i:03d}" for i in range(FAN_IN_CLASSES)],
             "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
             "model": {"class": "Bench", "total_params": 1, "trainable_params": 1, "size_mb": 0.0}}
    seq = [0] * ranks
    truth = rng.integers(0, FAN_IN_CLASSES, (16, FAN_IN_SAMPLES), dtype=np.uint8)
    wrong = rng.random((16, FAN_IN_SAMPLES)) < 0.3
    guesses = np.where(wrong, rng.integers(0, FAN_IN_CLASSES, (16, FAN_IN_SAMPLES)), truth).astype(np.uint8)

    def turn(kind: str, body_of: Callable[[int], dict]) -> list[tuple[float, bytes, str]]:
        frames = []
        for rank in range(ranks):
            message = protocol.make_message(kind, run, rank, ranks, seq[rank], body_of(rank),
                                            time=1.8e9 + seq[rank], sender=f"{rank:016x}")
            frames.append((0.0, protocol.encode(message), ""))
            seq[rank] += 1
        return frames

    phases = []
    for epoch in range(FAN_IN_EPOCHS):
        phase = turn("run_start", lambda rank: start) if epoch == 0 else []
        for chunk in range(chunks):
            phase += turn("preds", lambda rank, e=epoch, i=(epoch + chunk) % 16: {
                "epoch": e, "step": e, "preds": guesses[(i + rank) % 16], "labels": truth[(i + rank) % 16]})
        phase += turn("metrics", lambda rank, e=epoch: {"epoch": e, "stage": "val", "step": e,
                                                         "values": {"val/loss": 1.0 / (e + 1)}})
        phase += turn("epoch_end", lambda rank, e=epoch: {"epoch": e, "sent": seq[rank] + 1, "dropped": 0})
        phase[-1] = (0.0, phase[-1][1], f"end {epoch}")
        if epoch == FAN_IN_EPOCHS - 1:
            phase += turn("run_end", lambda rank: {"status": "completed", "error": None, "sent": seq[rank] + 1,
                                                   "dropped": 0})
        phases.append(phase)
    return phases


def _send(monitor: MonitorProcess, work: Path, name: str, frames: list) -> subprocess.Popen:
    plan = work / f"{name}.pickle"
    plan.write_bytes(pickle.dumps(frames))
    return subprocess.Popen([PYTHON, "-m", "bench.sender", "--endpoint", monitor.endpoint, "--frames", str(plan)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _first_time(ready: Callable[[], bool], deadline: float) -> float | None:
    """The wall time at which `ready()` first holds (polled every 2 ms), or None at the deadline."""
    while time.monotonic() < deadline:
        if ready():
            return time.time()
        time.sleep(0.002)
    return None


def _counts_exact(csv_path: Path, phase: list[tuple[float, bytes, str]]) -> bool:
    """Whether the epoch's confusion_matrix.csv holds exactly the counts of the preds frames sent."""
    expected = np.zeros((FAN_IN_CLASSES, FAN_IN_CLASSES), dtype=np.int64)
    for _, frame, _ in phase:
        message = protocol.decode(frame)
        if message.kind == "preds":
            np.add.at(expected, (message["labels"].astype(np.int64), message["preds"].astype(np.int64)), 1)
    rows = [line.split(",")[1:] for line in csv_path.read_text().splitlines()[1:]]
    return np.array_equal(np.array(rows, dtype=np.int64), expected)


def _rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live process, in MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def fan_in(tree: Path, work: Path, ranks: int, timeout: float) -> dict:
    """One R on a monitor of its own: throughput, artifact latency per epoch, replay and memory (see
    the module docstring). A measurement not done within `timeout` seconds is None."""
    result: dict = {"ranks": ranks, "latency_s": [], "replay_s": None}
    with MonitorProcess(work / "out", cwd=tree) as monitor:
        monitor.wait_idle()
        result["loaded_rss_mib"] = _rss_mib(monitor.proc.pid)[0]
        chunks = max(1, FAN_IN_PREDS // (FAN_IN_EPOCHS * ranks))
        frames = [frame for phase in fan_in_phases("fan-in", ranks, chunks) for frame in phase]
        result.update(messages=len(frames), preds_per_rank_epoch=chunks)
        sender = _send(monitor, work, "fan-in", frames)
        console = monitor.out / "fan-in" / "console.txt"
        done = _first_time(lambda: console.exists() and "run fan-in completed" in console.read_text(),
                           time.monotonic() + timeout)
        report = json.loads(sender.communicate(timeout=600)[0])
        result["seconds"] = None if done is None else done - report["first"]
        result["messages_per_s"] = None if done is None else len(frames) / result["seconds"]
        if done is not None:
            for epoch, phase in enumerate(fan_in_phases("fan-in-latency", ranks)):
                report = json.loads(_send(monitor, work, f"latency-{epoch}", phase).communicate(timeout=600)[0])
                epoch_dir = monitor.out / "fan-in-latency" / f"epoch_{epoch:03d}"
                ready = _first_time(lambda: all((epoch_dir / name).exists() for name in
                                                ("confusion_matrix.csv", "confusion_matrix.png")),
                                    time.monotonic() + timeout)
                result["latency_s"].append(None if ready is None else ready - dict(report["labelled"])[f"end {epoch}"])
                if ready is None:
                    break
                exact = _counts_exact(epoch_dir / "confusion_matrix.csv", phase)
                result["counts_exact"] = exact and result.get("counts_exact", True)
            latency_log = monitor.out / "fan-in-latency" / "messages.mlog"
            result["latency_messages"] = ranks * (2 + 3 * FAN_IN_EPOCHS)
        result["rss_mib"], result["peak_rss_mib"] = _rss_mib(monitor.proc.pid)
        result["exit_code"] = monitor.close()
    if done is not None and None not in result["latency_s"]:
        began = time.monotonic()
        replay = subprocess.run([PYTHON, "-m", "monitor", "replay", str(latency_log), "--out", str(work / "replayed")],
                                cwd=tree, capture_output=True, text=True, timeout=max(timeout, 60))
        result["replay_s"] = time.monotonic() - began if replay.returncode == 0 else None
    return result


def fan_in_main(args: argparse.Namespace) -> int:
    os.environ["PYTHONPATH"] = str(args.checkout)  # the monitor imports that checkout's code, not ours
    results = []
    for ranks in [1, 64, 256] if args.quick else args.ranks:
        with tempfile.TemporaryDirectory(prefix=f"bench-fan-in-{ranks}-") as tmp:
            results.append(fan_in(args.checkout, Path(tmp), ranks, args.timeout))

    def seconds(value: float | None) -> str:
        return f"> {args.timeout:g}" if value is None else f"{value:.2f}"

    print_table(f"One run of R ranks, {FAN_IN_EPOCHS} epochs, preds of {FAN_IN_SAMPLES} samples, {FAN_IN_CLASSES} "
                f"classes ({args.checkout})",
                ["ranks", "preds/rank/epoch", "messages", "seconds", "messages/s", "preds/s",
                 "artifacts after each epoch's last epoch_end (1 preds/rank/epoch), s", "counts", "its replay, s",
                 "RSS loaded, MiB", "peak RSS, MiB"],
                [[r["ranks"], r["preds_per_rank_epoch"], r["messages"], seconds(r["seconds"]),
                  "-" if r["messages_per_s"] is None else r["messages_per_s"],
                  "-" if r["seconds"] is None else FAN_IN_PREDS / r["seconds"],
                  " / ".join(seconds(v) for v in r["latency_s"]) or "-",
                  {True: "exact", False: "WRONG"}.get(r.get("counts_exact"), "-"), seconds(r["replay_s"]),
                  round(r["loaded_rss_mib"]), round(r["peak_rss_mib"])] for r in results])
    print("targets (issue 31): messages/s flat within 2x from 1 to 4,096 ranks; at 1,024 ranks every epoch's "
          "artifacts within 2 s and a replay under 5 s; memory bounded at 4,096")
    write_json(args.json, {"fan_in": results, "checkout": str(args.checkout)})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--fan-in", action="store_true", help="measure one run of many ranks instead (see above)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 64, 1024, 4096], help="with --fan-in: the R values")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="with --fan-in: the checkout whose monitor runs")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="with --fan-in: seconds to wait for each measurement before calling it not done")
    args = parser.parse_args(argv)
    if args.fan_in:
        return fan_in_main(args)
    small, preds = (20_000, 300) if args.quick else (200_000, 3_000)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        with MonitorProcess(Path(tmp) / "out") as monitor:
            results["metrics"] = ingest(monitor, Path(tmp), "ingest-metrics", "metrics", small, 0)
            results["preds"] = ingest(monitor, Path(tmp), "ingest-preds", "preds", preds, 1_000)
            code = monitor.close()
    print_table("Monitor ingest from a separate sender process (decoded, logged, aggregated; first frame sent -> "
                "run_end handled)",
                ["stream", "frame bytes", "messages", "seconds", "messages/s", "samples/s", "sender busy s"],
                [["metrics (5 values)", r["frame_bytes"], r["messages"], r["seconds"], r["messages_per_s"], "-",
                  r["sender_seconds"]] if name == "metrics" else
                 [f"preds (1,000 samples, {CLASSES} classes)", r["frame_bytes"], r["messages"], r["seconds"],
                  r["messages_per_s"], r["samples_per_s"], r["sender_seconds"]] for name, r in results.items()])
    print(f"target: >= 50,000 small messages/s; monitor exit code {code}")
    write_json(args.json, {"ingest": results, "monitor_exit_code": code})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
