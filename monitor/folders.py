"""Where a run's files live under --out: its folder, named from the run id, never outside `out`.

A leaf module: every layer (ingest, aggregates, outputs) may import it, and it imports none of them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from trainer_side.names import safe_component

# Names of files in `out` itself (the report's runs index): a run id never gets them as its folder.
RESERVED_NAMES = frozenset({"index.html"})


def run_dir(out: Path, run: str) -> Path:
    """The run's folder: always a direct child of `out`, whatever the run id holds, and never one of
    RESERVED_NAMES (compared without case, as some filesystems do)."""
    name = safe_component(run)
    if name.lower() in RESERVED_NAMES:
        name = f"{name}-{hashlib.sha1(run.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return out / name
