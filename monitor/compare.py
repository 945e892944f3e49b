"""`monitor compare RUN_DIR_A RUN_DIR_B --out DIR`: is B's accuracy really different from A's?

Pairs the two runs' validation predictions on sample id (each run's last epoch with ids unless
--epoch-a / --epoch-b say otherwise) and writes comparison.json, flipped.csv and comparison.html
into DIR (monitor/outputs/comparison.py). When DIR sits in a report folder beside runs, the runs
index there lists it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare", help="pair two runs on sample id: accuracy and macro-F1 difference, McNemar p, flipped samples",
        description="Pair two run folders' validation predictions on sample id (protocol 1.3) and test whether "
                    "B differs from A: exact McNemar p, paired bootstrap 95 % intervals for the accuracy and "
                    "macro-F1 differences, per-class recall with Holm-adjusted p, the confusions that changed "
                    "and every sample whose prediction changed. Refuses runs validated on different samples.")
    parser.add_argument("run_a", type=Path, metavar="RUN_DIR_A", help="run folder A (<out>/<run>)")
    parser.add_argument("run_b", type=Path, metavar="RUN_DIR_B", help="run folder B")
    parser.add_argument("--epoch-a", type=int, metavar="N", help="epoch of A (default: its last epoch with ids)")
    parser.add_argument("--epoch-b", type=int, metavar="M", help="epoch of B (default: its last epoch with ids)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for comparison.json, flipped.csv and comparison.html; inside the runs' "
                             "--out folder (e.g. outputs/compare-a-b) the runs index links to it")


def run_compare(args: argparse.Namespace, console: Console) -> int:
    """Writes the comparison; a CompareError (runs that cannot be paired) propagates as a ValueError,
    which the command line prints as one line."""
    from monitor.outputs.comparison import COMPARISON_PAGE, load_run, write_comparison

    a, b = load_run(args.run_a, args.epoch_a), load_run(args.run_b, args.epoch_b)
    summary = write_comparison(args.out, a, b)
    _refresh_index(args.out, (args.run_a, args.run_b))
    console.print(f"monitor compare: {summary['run_a']} (epoch {summary['epoch_a']}) vs {summary['run_b']} (epoch "
                  f"{summary['epoch_b']}), {summary['n_paired']:,} paired samples: accuracy {summary['verdict']}; "
                  f"open {args.out / COMPARISON_PAGE}", highlight=False)
    return 0


def _refresh_index(out: Path, runs: tuple[Path, Path]) -> None:
    """Rewrites the runs index of the folder holding `out` when that folder also holds one of the runs."""
    parent = out.resolve().parent
    if not any(run.resolve().parent == parent for run in runs):
        return
    from monitor.outputs.report.writer import Reports

    Reports(parent).write_index()
