"""Pools the rounds of several `bench.fit_overhead` runs: each configuration's bracketed ratios to (a)
from every file, their median and a 95 % bootstrap interval of it.

Rounds of one run are not independent (the machine's state lasts longer than a round), so a pooled
interval is narrower than the truth; the A/A control (z), pooled the same way, shows by how much.

    python -m bench.pool_fit_runs FILE.json [FILE.json ...] [--merge bt] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import median, print_table, write_json
from bench.fit_overhead import CONFIGS, bootstrap_median_ci, bracketed_ratios


def pooled_ratios(files: list[Path], merge: str) -> dict[str, list[float]]:
    """Config letter (or the merged group, as one key) -> every round's bracketed ratio, in file order."""
    pooled: dict[str, list[float]] = {}
    for file in files:
        measured = json.loads(file.read_text())
        results, closing = measured["results"], measured.get("closing_a")
        if closing is None:
            raise SystemExit(f"pool_fit_runs: {file} has no closing (a) run; rerun it with the current fit_overhead")
        base = [*results["a"], closing]
        for config, runs in results.items():
            if config != "a":
                key = merge if merge and config in merge else config
                pooled.setdefault(key, []).extend(bracketed_ratios(runs, base))
    return pooled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.json", help="fit_overhead --json outputs")
    parser.add_argument("--merge", default="", help="configuration letters to pool as one (e.g. bt)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the pooled numbers to FILE")
    args = parser.parse_args(argv)
    pooled = pooled_ratios(args.files, args.merge)
    rows = []
    for key, ratios in sorted(pooled.items()):
        low, high = bootstrap_median_ci(ratios)
        name = " + ".join(f"({c}) {CONFIGS[c]}" for c in key)
        rows.append([name, len(ratios), median(ratios), f"{low:.3f}..{high:.3f}"])
    print_table(f"Fit time over (a)'s, bracketed, pooled over {len(args.files)} runs",
                ["config", "rounds", "median ratio", "95 % interval (too narrow: rounds of a run are not independent)"],
                rows)
    write_json(args.json, {"files": [str(f) for f in args.files], "merge": args.merge, "ratios": pooled})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
