"""Import cost of the trainer side on top of Lightning, and the heavy modules it must not load.

Each sample is a fresh interpreter that imports lightning (timed), then `import trainer_side` and
`from trainer_side import EmitterCallback, Emitter, TrackingWeightedRandomSampler` (timed, since the
package loads its public names lazily), and lists the top-level modules that appeared. A second probe
imports only the framework-agnostic `Emitter`, without lightning, to show what it pulls in by itself.

    python -m bench.import_cost [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import add_common_args, median, print_table, write_json
from bench.harness import PYTHON, ROOT

HEAVY = ("matplotlib", "rich", "torchmetrics", "watchdog", "torchvision", "PIL", "sklearn", "scipy", "pandas", "monitor")

_PROBE = """
import json, sys, time
def tops(): return {name.split('.')[0] for name in sys.modules}
started = time.perf_counter()
if WITH_LIGHTNING:
    import lightning
after_lightning = time.perf_counter(); before = tops()
import trainer_side
after_package = time.perf_counter()
IMPORT_NAMES
done = time.perf_counter()
print(json.dumps({"lightning_s": after_lightning - started, "package_s": after_package - after_lightning,
                  "public_names_s": done - after_lightning, "before": sorted(before),
                  "added": sorted(tops() - before)}))
"""


def probe(with_lightning: bool, names: str = "EmitterCallback, Emitter, TrackingWeightedRandomSampler") -> dict:
    code = _PROBE.replace("WITH_LIGHTNING", str(with_lightning)).replace("IMPORT_NAMES", f"from trainer_side import {names}")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    samples = [probe(True) for _ in range(repeats)]
    alone = probe(False, "Emitter")
    lightning_loads = [m for m in HEAVY if m in samples[0]["before"]]
    added = samples[0]["added"]
    print_table(f"Import cost, fresh interpreter each time, median of {repeats}",
                ["step", "median ms", "min ms", "max ms", "target"],
                [["import lightning", *_ms(s["lightning_s"] for s in samples), ""],
                 ["+ import trainer_side (lazy package)", *_ms(s["package_s"] for s in samples), ""],
                 ["+ from trainer_side import EmitterCallback, ...", *_ms(s["public_names_s"] for s in samples),
                  "<= 50 ms"]])
    print_table("Heavy modules", ["module", "loaded by lightning", "added by trainer_side", "loaded by `from trainer_side import Emitter` alone"],
                [[m, m in lightning_loads, m in added, m in alone["added"]] for m in HEAVY])
    print(f"\ntop-level modules trainer_side adds on top of lightning: {', '.join(added)}")
    print(f"the framework-agnostic Emitter alone (no lightning) takes {1e3 * alone['public_names_s']:.0f} ms and loads "
          f"{', '.join(_third_party(alone['added']))} (plus the standard library); heavy: {[m for m in HEAVY if m in alone['added']] or 'none'}")
    write_json(args.json, {"samples": samples, "alone": alone, "heavy": HEAVY})
    return 0


def _third_party(modules: list[str]) -> list[str]:
    return [m for m in modules if m not in sys.stdlib_module_names and not m.startswith("_") and m != "cython_runtime"]


def _ms(values) -> list[float]:
    values = [1e3 * v for v in values]
    return [median(values), min(values), max(values)]


if __name__ == "__main__":
    raise SystemExit(main())
