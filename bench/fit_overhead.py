"""Fit overhead of observability on the demo (digits, DemoClassifier), five configurations interleaved.

    (a) no observability                     (b) EmitterCallback, live `monitor serve`
    (c) EmitterCallback, nobody listening    (d) EmitterCallback, monitor SIGSTOPped for the whole fit
    (e) in-process baseline (bench/fit_worker.py: extra forward passes, PNGs, rich tables)
    (n) (b) with `monitor serve --render-priority normal` (renders not at idle priority)
    (i) (b) with `monitor serve --render-defer 0` (idle-priority renders at once, not deferred)
    (s) EmitterCallback, a bare receiver (bench/harness.py `PullSink`: no monitor work, linger_ms=0):
        the trainer side's own cost, hooks, sender and spool threads
    (z) A/A control: (a) again. What it measures is the noise floor of this method on this
        machine: any ratio within (z)'s spread of 1 cannot be told from noise.

One trainer process (bench/fit_worker.py) runs every configuration, one fit after another: two
processes that run the very same fits can differ by several per cent for their whole life (layout
in memory, where the kernel puts their threads), which no number of rounds averages away
(--separate-processes gives each configuration its own process, to see it). Each round runs (a)
first and the others in a new seeded order (--order fixed: as listed), and one more (a) closes the
last round. The machine's speed drifts over minutes, so each fit is compared with (a)'s time
interpolated, by start time, between the (a) that opens its round and the one that opens the next
("bracketed ratio"); the median over rounds is reported, with a 95 % bootstrap interval.
The costs split: (s) ÷ (a) is the trainer side's own cost, (b) ÷ (s) (fits of the same round) the
co-located monitor's; the monitor's CPU time is given for its own process and its render workers.
With --fresh-monitor every monitored fit gets a monitor started for it (a long-lived monitor that
has served many runs is the default). Also: the stall at each validation epoch end (last validation batch -> next training batch, median,
minus (a)'s), the emitter's teardown time, and each fit's peak RSS.

    python -m bench.fit_overhead [--quick] [--rounds N] [--epochs N] [--configs azbcs] [--fresh-monitor] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import (PYTHON, ROOT, MonitorProcess, PullSink, add_common_args, free_port, median, print_table,
                           write_json)

CONFIGS = {
    "a": "no observability",
    "b": "emitter, live monitor",
    "c": "emitter, no monitor",
    "d": "emitter, monitor SIGSTOPped",
    "e": "in-process callbacks",
    "n": "(b), renders at normal priority",
    "i": "(b), renders not deferred",
    "s": "emitter, bare receiver",
    "z": "A/A control: (a) again",
}
# The trainer side of each configuration (n differs from b only in how the monitor runs).
WORKER_CONFIG = {"n": "b", "i": "b", "z": "a"}
MONITOR_ARGS = {"b": (), "d": (), "n": ("--render-priority", "normal"), "i": ("--render-defer", "0")}


class Worker:
    def __init__(self, configs: str, threads: int, log: Path) -> None:
        self.config = configs
        self._log = open(log, "w")
        self.proc = subprocess.Popen([PYTHON, "-m", "bench.fit_worker", "--configs", configs,
                                      "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=ROOT)
        self.ready = json.loads(self._read("READY"))

    def _read(self, tag: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return line[len(tag) + 1:]
        raise RuntimeError(f"worker {self.config} exited; see {self._log.name}")

    def fit(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read("RESULT"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_rounds(args: argparse.Namespace, work: Path) -> dict:
    from trainer_side.demo_data import default_cache_dir, ensure_digits_imagefolder

    ensure_digits_imagefolder(default_cache_dir() / "digits_imagefolder")  # before any worker needs it
    configs = [c for c in args.configs]
    monitors: dict[str, MonitorProcess] = {}
    sink: PullSink | None = None
    workers: dict[str, Worker] = {}
    results: dict[str, list[dict]] = {c: [] for c in configs}
    closing_run: dict | None = None
    try:
        for config in MONITOR_ARGS.keys() & set(configs):
            monitors[config] = MonitorProcess(work / f"monitor_{config}", *MONITOR_ARGS[config])
        if "s" in configs:
            sink = PullSink()
        trainer_side = "".join(sorted({WORKER_CONFIG.get(c, c) for c in configs}))
        if args.separate_processes:
            workers = {c: Worker(WORKER_CONFIG.get(c, c), args.threads, work / f"worker_{c}.log") for c in configs}
        else:
            shared = Worker(trainer_side, args.threads, work / "worker.log")
            workers = {c: shared for c in configs}
        for monitor in monitors.values():
            monitor.wait_idle()
        total = args.warmup + args.rounds
        for round_index in range(total + 1):
            warm = round_index < args.warmup
            closing = round_index == total  # the (a) that brackets the last round
            for config in configs[:1] if closing else round_order(configs, round_index, args.order):
                request = {"config": WORKER_CONFIG.get(config, config), "epochs": 1 if warm else args.epochs,
                           "seed": round_index,
                           "run": f"fit-{config}-{round_index}", "out": str(work / f"inproc_{round_index}"),
                           "endpoint": None, "train_batches": args.train_batches, "epoch_scale": args.epoch_scale}
                if config in monitors and args.fresh_monitor and not warm:
                    monitors[config].close()
                    monitors[config] = MonitorProcess(work / f"monitor_{config}_{round_index}", *MONITOR_ARGS[config])
                    monitors[config].wait_idle()
                if config in monitors:  # live or, for (d), stopped below
                    request["endpoint"] = monitors[config].endpoint
                elif config == "s":
                    request["endpoint"] = sink.endpoint
                elif config == "c":
                    request["endpoint"] = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
                if config == "d":
                    monitors["d"].sigstop()
                monitor_cpu = monitors[config].cpu_seconds_split() if config in monitors else (0.0, 0.0)
                started = time.monotonic()
                result = workers[config].fit(request)
                result["started"] = started
                if config == "d":
                    monitors["d"].sigcont()
                if config in monitors:
                    in_fit = monitors[config].cpu_seconds_split()
                    result["monitor_cpu_in_fit_s"] = sum(in_fit) - sum(monitor_cpu)
                    result["monitor_own_cpu_in_fit_s"] = in_fit[0] - monitor_cpu[0]
                    result["monitor_settle_s"] = monitors[config].wait_idle()
                    own, workers_cpu = monitors[config].cpu_seconds_split()
                    result["monitor_cpu_s"] = own + workers_cpu - sum(monitor_cpu)
                    result["monitor_own_cpu_s"] = own - monitor_cpu[0]
                if closing:
                    closing_run = result
                elif not warm:
                    results[config].append(result)
                label = ("warm-up" if warm else "closing" if closing
                         else f"round {round_index - args.warmup + 1}/{args.rounds}")
                print(f"  {label} {config}: fit {result['fit_s']:.2f} s, teardown {result['teardown_s']:.3f} s",
                      flush=True)
        threads = workers[configs[0]].ready["threads"]
    finally:
        for worker in set(workers.values()):
            worker.close()
        codes = {name: monitor.close() for name, monitor in monitors.items()}
        if sink is not None:
            sink.close()
    return {"results": results, "closing_a": closing_run, "monitor_exit_codes": codes, "torch_threads": threads}


def round_order(configs: list[str], round_index: int, order: str) -> list[str]:
    """(a) first, then the others as listed ("fixed") or in a new seeded order each round ("shuffled"):
    with a fixed order each configuration always sits at the same place in its round, and whatever
    that place does to a fit (what ran just before it, the drift inside the round) becomes a bias."""
    rest = configs[1:]
    if order == "shuffled":
        rest = random.Random(round_index).sample(rest, len(rest))
    return [configs[0], *rest]


def bracketed_ratios(runs: list[dict], base: list[dict]) -> list[float]:
    """Each run's fit time over (a)'s, interpolated by start time between the (a) that opened its round
    and the next one; `base` has one (a) more than there are rounds (the closing one)."""
    ratios = []
    for run, before, after in zip(runs, base, base[1:]):
        weight = (run["started"] - before["started"]) / (after["started"] - before["started"])
        ratios.append(run["fit_s"] / (before["fit_s"] + weight * (after["fit_s"] - before["fit_s"])))
    return ratios


def bootstrap_median_ci(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median: how far the median of this few noisy rounds
    could be from the one many more rounds would give."""
    rng = random.Random(seed)
    medians = sorted(median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def summarize(results: dict[str, list[dict]], closing_a: dict | None = None) -> dict:
    """`closing_a`: the (a) fit after the last round; without it (older result files) each run is
    compared with its own round's (a) only."""
    base = results["a"]
    summary = {}
    base_stall = median([s for r in base for s in r["stalls_s"]])
    for config, runs in results.items():
        bracketed = closing_a is not None and config != "a"
        ratios = bracketed_ratios(runs, [*base, closing_a]) if bracketed else \
            [r["fit_s"] / b["fit_s"] for r, b in zip(runs, base)]
        cpu_ratios = [r["cpu_s"] / b["cpu_s"] for r, b in zip(runs, base)]
        stalls = [s for r in runs for s in r["stalls_s"]]
        summary[config] = {
            "fit_s_median": median([r["fit_s"] for r in runs]),
            # Interference on a shared machine only ever slows a run down, so the fastest run of each
            # configuration is the least disturbed one: the ratio of minimums is a second estimate.
            "fit_s_min": min(r["fit_s"] for r in runs),
            "ratio_of_minimums": min(r["fit_s"] for r in runs) / min(b["fit_s"] for b in base),
            "ratio_median": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_ci95": bootstrap_median_ci(ratios) if config != "a" else (1.0, 1.0),
            "ratios": ratios,
            "bracketed": bracketed,
            "teardown_s_median": median([r["teardown_s"] for r in runs]),
            "cpu_ratio_median": median(cpu_ratios),
            "boundary_hooks_ms_median": 1e3 * median([s for r in runs for s in r["boundary_hooks_s"]]),
            "boundary_hooks_ms_max": 1e3 * max((s for r in runs for s in r["boundary_hooks_s"]), default=float("nan")),
            "loadavg_range": (min(min(r["loadavg_1min"]) for r in runs), max(max(r["loadavg_1min"]) for r in runs)),
            "stall_ms_median": 1e3 * median(stalls), "stall_ms_max": 1e3 * max(stalls) if stalls else float("nan"),
            "added_stall_ms_median": 1e3 * (median(stalls) - base_stall),
            # Older result files have no run-queue wait: NaN there.
            "runqueue_wait_ms_median": 1e3 * median([r.get("runqueue_wait_s", float("nan")) for r in runs]),
            "runqueue_wait_ms_range": (1e3 * min(r.get("runqueue_wait_s", float("nan")) for r in runs),
                                       1e3 * max(r.get("runqueue_wait_s", float("nan")) for r in runs)),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rss_mb_first_last": (runs[0]["rss_mb"], runs[-1]["rss_mb"]),
            "dropped": [r["dropped"] for r in runs], "sent": [r["sent"] for r in runs],
            "monitor_cpu_s_median": median([r["monitor_cpu_s"] for r in runs]) if "monitor_cpu_s" in runs[0] else None,
            # Of it, what it used while the fit ran (the rest it put off until the fit had ended).
            "monitor_cpu_in_fit_s_median": (median([r["monitor_cpu_in_fit_s"] for r in runs])
                                            if "monitor_cpu_in_fit_s" in runs[0] else None),
            "monitor_own_cpu_in_fit_s_median": (median([r["monitor_own_cpu_in_fit_s"] for r in runs])
                                                if "monitor_own_cpu_in_fit_s" in runs[0] else None),
            "monitor_own_cpu_s_median": (median([r["monitor_own_cpu_s"] for r in runs])
                                         if "monitor_own_cpu_s" in runs[0] else None),
            # How long after fit() returned the monitor still worked (renders it had put off).
            "monitor_settle_s_median": median([r["monitor_settle_s"] for r in runs]) if "monitor_settle_s" in runs[0] else None,
        }
    return summary


def cost_split(results: dict[str, list[dict]], summary: dict) -> list[list]:
    """Rows of whose cost a fit pays: the trainer side's, (s) over (a), and the co-located monitor's,
    (b) over (s) of the same round, each a median ratio with its 95 % interval, and the A/A control's."""
    control = summary.get("z")
    aa = "-" if control is None else "{:.3f} [{:.3f}..{:.3f}]".format(control["ratio_median"], *control["ratio_ci95"])
    rows = []
    if "s" in summary:
        s = summary["s"]
        rows.append(["trainer side: hooks, sender and spool threads, (s) / (a)", s["ratio_median"],
                     "{:.3f}..{:.3f}".format(*s["ratio_ci95"]), s["cpu_ratio_median"], aa])
    for config in ("b", "i", "n"):
        if config in results and "s" in results:
            ratios = [m["fit_s"] / t["fit_s"] for m, t in zip(results[config], results["s"])]
            cpu = [m["cpu_s"] / t["cpu_s"] for m, t in zip(results[config], results["s"])]
            rows.append([f"co-located monitor, ({config}) / (s)", median(ratios),
                         "{:.3f}..{:.3f}".format(*bootstrap_median_ci(ratios)), median(cpu), aa])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fit (default 3; --quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default 7; --quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured 1-epoch rounds first (default 1)")
    parser.add_argument("--train-batches", type=int, default=None,
                        help="limit training batches per epoch (default: the whole demo epoch, 18 batches)")
    parser.add_argument("--epoch-scale", type=int, default=1,
                        help="each training epoch draws N times the demo's training set (default 1): longer epochs, "
                             "the same validation and monitor work per epoch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the trainers (0: torch's default)")
    parser.add_argument("--order", choices=("shuffled", "fixed"), default="shuffled",
                        help="the order of the configurations after (a) in each round: a new seeded shuffle each "
                             "round (default) or always as --configs lists them")
    parser.add_argument("--separate-processes", action="store_true",
                        help="one trainer process per configuration (default: one process runs them all)")
    parser.add_argument("--configs", default="azbcden",
                        help="configurations to run, (a) first (default azbcden; z = the A/A control, s = the "
                             "trainer side alone, n and i = (b) with the monitor's --render-priority normal or "
                             "--render-defer 0, for comparison)")
    parser.add_argument("--fresh-monitor", action="store_true",
                        help="start a new monitor for every measured fit of (b), (d), (n), (i) (default: one "
                             "long-lived monitor per configuration serves all its runs)")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else 3)
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.warmup = (0 if args.quick else 1) if args.warmup is None else args.warmup
    if not args.configs.startswith("a") or set(args.configs) - set(CONFIGS):
        parser.error(f"--configs must start with a and use only {', '.join(CONFIGS)}; got {args.configs!r}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        print(f"fit overhead: {args.rounds} rounds x {len(args.configs)} configs x {args.epochs} epochs "
              f"(+{args.warmup} warm-up round), work dir {tmp}", flush=True)
        measured = run_rounds(args, Path(tmp))
    summary = summarize(measured["results"], measured["closing_a"])
    print_table(f"Fit wall time, demo digits{f' (epochs x{args.epoch_scale} longer)' if args.epoch_scale > 1 else ''}, "
                f"{args.epochs} epochs, validation every epoch, "
                f"median of {args.rounds} interleaved runs, torch threads {measured['torch_threads']}",
                ["config", "fit s", "ratio to (a)", "95 % interval", "min..max", "fastest s", "ratio of fastest",
                 "teardown s", "CPU-time ratio", "load avg"],
                [[f"({c}) {CONFIGS[c]}", s["fit_s_median"], s["ratio_median"],
                  "{:.3f}..{:.3f}".format(*s["ratio_ci95"]),
                  f"{s['ratio_min']:.3f}..{s['ratio_max']:.3f}", s["fit_s_min"], s["ratio_of_minimums"],
                  s["teardown_s_median"], s["cpu_ratio_median"], "{:.1f}..{:.1f}".format(*s["loadavg_range"])]
                 for c, s in summary.items()])
    print(("one trainer process per configuration" if args.separate_processes else
           "one trainer process ran every configuration") + f"; order in each round: (a), then {args.order}. " + "ratio to (a): median over rounds of each fit over (a)'s time "
          + ("interpolated between the (a) runs that bracket it" if measured["closing_a"] else "in the same round")
          + "; 95 % interval: bootstrap of that median." + (" (z) runs (a) again: the spread a "
          "ratio of 1 shows here is the noise floor." if "z" in summary else ""))
    split = cost_split(measured["results"], summary)
    if split:
        print_table("Whose cost: fit time ratios, medians over rounds", ["part", "fit ratio", "95 % interval",
                                                                        "trainer CPU-time ratio", "A/A control (z)"],
                    split)
    if not all(r.get("peak_is_this_fit") for runs in measured["results"].values() for r in runs):
        print("peak RSS: the kernel could not reset its high-water mark, so peaks are the process's lifetime peak")
    print_table("Stall at each validation epoch end (last validation batch -> next training batch)",
                ["config", "median ms", "max ms", "added vs (a), ms", "callback hooks ms (median)", "hooks max ms"],
                [[f"({c}) {CONFIGS[c]}", s["stall_ms_median"], s["stall_ms_max"], s["added_stall_ms_median"],
                  s["boundary_hooks_ms_median"], s["boundary_hooks_ms_max"]] for c, s in summary.items()])
    base_wait = summary["a"]["runqueue_wait_ms_median"]
    print_table("Trainer's threads waiting for a CPU during each fit (run-queue wait from /proc schedstat): the CPU "
                "time other work on this machine kept from the trainer",
                ["config", "median ms per fit", "min..max ms", "added vs (a), ms", "per epoch, ms"],
                [[f"({c}) {CONFIGS[c]}", s["runqueue_wait_ms_median"], "{:.0f}..{:.0f}".format(*s["runqueue_wait_ms_range"]),
                  s["runqueue_wait_ms_median"] - base_wait, (s["runqueue_wait_ms_median"] - base_wait) / args.epochs]
                 for c, s in summary.items()])
    print_table("Trainer process memory (RSS during and after each configuration's fits)",
                ["config", "peak MB (any fit)", "after 1st fit MB", "after last fit MB", "messages sent", "dropped"],
                [[f"({c}) {CONFIGS[c]}", s["peak_rss_mb"], *s["rss_mb_first_last"],
                  ",".join(map(str, s["sent"])) if s["sent"][0] is not None else "-",
                  ",".join(map(str, s["dropped"])) if s["dropped"][0] is not None else "-"]
                 for c, s in summary.items()])
    for config in ("b", "i", "n"):
        if config in summary:
            s = summary[config]
            print(f"\n({config}) live monitor CPU per fit, median: {s['monitor_cpu_s_median']:.2f} s for {args.epochs} "
                  f"epochs, {s['monitor_own_cpu_s_median']:.2f} s of it its own process (the rest its render "
                  f"workers, at idle priority); while the fit ran: {s['monitor_cpu_in_fit_s_median']:.2f} s, "
                  f"{s['monitor_own_cpu_in_fit_s_median']:.2f} s of it its own process; "
                  f"the monitor was idle again "
                  f"{s['monitor_settle_s_median']:.2f} s after fit() returned (median; 0.6 s is the quiet "
                  f"period the check needs)")
    print(f"monitor exit codes: {measured['monitor_exit_codes']}; took {time.perf_counter() - started:.0f} s")
    write_json(args.json, {"args": vars(args) | {"json": str(args.json)}, "summary": summary, **measured})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
