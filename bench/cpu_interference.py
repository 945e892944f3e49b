"""How much a busy process beside the trainer slows it down, whatever that process does.

The live monitor costs the trainer in proportion to the CPU it uses, so this program measures the
price of CPU used beside a trainer on this machine, with no monitor at all. A training-step loop of
a small CNN (the demo's shapes: batches of 64 32×32 images) runs a fixed number of steps:

- alone;
- beside one process that spins on the CPU for the whole measurement (normal priority);
- beside the same spinner under SCHED_IDLE, started in the trainer's session;
- beside it under SCHED_IDLE in a session of its own, as a monitor in a second terminal is. Where the
  kernel groups processes by session (autogroup), SCHED_IDLE then ranks it only within its own group;
- the same, with its session's autogroup at nice 19;
- the same, also in the idle CPU cgroup (`monitor.idlecgroup`; what `monitor serve` does for its render
  workers where it may write to the cpu cgroup; the row is left out where it may not);
- beside a spinner that works for ``--duty`` of each 100 ms (normal priority), about what a
  monitor rendering every epoch of a short fit uses.

Besides wall time, the trainer reports its threads' run-queue wait (/proc schedstat): the time they
were ready to run but kept off the CPU, a figure the host's own noise hardly moves.

Each is measured with the trainer on 1 torch thread (one vCPU left free, as a GPU trainer leaves
its spare cores) and on all vCPUs. Runs are interleaved, and each slowdown is the median of the
per-round ratios to the same round's "alone".

    python -m bench.cpu_interference [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.common import PYTHON, ROOT, add_common_args, median, print_table, write_json
from monitor.idlecgroup import may_join_idle_group

_TRAINER = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
steps = int(sys.argv[2])
torch.manual_seed(0)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                          torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                          torch.nn.Flatten(), torch.nn.Linear(64, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
loss_fn = torch.nn.CrossEntropyLoss()
def run(n):
    for _ in range(n):
        opt.zero_grad(); loss_fn(net(x), y).backward(); opt.step()
run(10)
print("READY", flush=True)
sys.stdin.readline()
from bench.common import runqueue_wait_s  # a light module: no Lightning in this trainer
waited = runqueue_wait_s()
start = time.perf_counter(); cpu0 = time.process_time()
run(steps)
print(json.dumps({"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu0,
                  "runqueue_wait_s": runqueue_wait_s() - waited}), flush=True)
"""

# python -c SPINNER DUTY MODE: busy for DUTY of each 100 ms; MODE may name session, autogroup, idle, cgroup.
# It exits when the program that started it does, even from a session of its own.
SPINNER = """
import os, sys, time
duty, mode = float(sys.argv[1]), sys.argv[2]
if "session" in mode:
    os.setsid()
if "autogroup" in mode:
    with open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write("19")
if "idle" in mode:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
if "cgroup" in mode:
    from monitor.idlecgroup import join_idle_group
    if join_idle_group() is None:
        sys.exit("no idle cgroup here")
parent = os.getppid()
print("READY", flush=True)
while os.getppid() == parent:  # a spinner in its own session must not outlive an interrupted bench
    start = time.perf_counter()
    while time.perf_counter() - start < 0.1 * duty:
        pass
    if duty < 1:
        time.sleep(0.1 * (1 - duty))
"""


def one_run(threads: int, steps: int, spinner: tuple[float, str] | None) -> dict[str, float]:
    spin = None
    if spinner is not None:
        spin = subprocess.Popen([PYTHON, "-c", SPINNER, str(spinner[0]), spinner[1]],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert spin.stdout is not None and spin.stdout.readline().strip() == "READY"
    trainer = subprocess.Popen([PYTHON, "-c", _TRAINER, str(threads), str(steps)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert trainer.stdout is not None and trainer.stdin is not None
        assert trainer.stdout.readline().strip() == "READY"
        trainer.stdin.write("go\n")
        trainer.stdin.flush()
        result = json.loads(trainer.stdout.readline())
    finally:
        trainer.wait()
        if spin is not None:
            spin.kill()
            spin.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 100; --quick 30)")
    parser.add_argument("--duty", type=float, default=0.2,
                        help="share of each 100 ms the part-time spinner works (default 0.2)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (30 if args.quick else 100)
    cpus = os.cpu_count() or 1
    setups = {
        "alone": None,
        "spinner, normal priority": (1.0, "normal"),
        "spinner, SCHED_IDLE": (1.0, "idle"),
        "spinner, SCHED_IDLE, own session": (1.0, "idle session"),
        "same, autogroup nice 19": (1.0, "idle session autogroup"),
        "same, in an idle cgroup": (1.0, "idle session autogroup cgroup"),
        f"spinner {args.duty:.0%} of the time": (args.duty, "normal"),
    }
    if may_join_idle_group() is None:
        del setups["same, in an idle cgroup"]
        print("no cpu cgroup this process may write to: the idle-cgroup row is left out")
    thread_counts = sorted({1, cpus})
    runs: dict[str, list[dict[str, float]]] = {}
    for round_index in range(rounds):
        for threads in thread_counts:
            for name, spinner in setups.items():
                result = one_run(threads, steps, spinner)
                runs.setdefault(f"{threads}|{name}", []).append(result)
                print(f"  round {round_index + 1}/{rounds}, {threads} thread(s), {name}: {result['wall_s']:.2f} s",
                      flush=True)

    rows = []
    for threads in thread_counts:
        alone = runs[f"{threads}|alone"]
        for name in setups:
            mine = runs[f"{threads}|{name}"]
            ratios = [m["wall_s"] / a["wall_s"] for m, a in zip(mine, alone)]
            rows.append([f"{threads}", name, median([m["wall_s"] for m in mine]), median(ratios),
                         f"{min(ratios):.3f}..{max(ratios):.3f}",
                         median([m["cpu_s"] for m in mine]) / median([a["cpu_s"] for a in alone]),
                         1e3 * median([m["runqueue_wait_s"] for m in mine])])
    print_table(f"{steps} training steps of a small CNN on {cpus} vCPU(s), median of {rounds} interleaved rounds",
                ["torch threads", "beside the trainer", "wall s", "wall ratio to alone", "min..max",
                 "trainer CPU-time ratio", "trainer run-queue wait ms"], rows)
    write_json(args.json, {"rounds": rounds, "steps": steps, "duty": args.duty, "runs": runs})


if __name__ == "__main__":
    sys.exit(main())
