"""`monitor serve`, unchanged except that the receive loop notes the wall time at which it accepted each frame.

    python -m bench.probe_serve RECORD.json [--gc-freeze] serve --bind ... --out ...

Wraps `monitor.intake.Intake.accept_many` (called by the receiver thread for every batch of frames,
right after it has taken them from the socket) and `accept` to append (received, sent, run, kind,
seq) per frame, and writes them to RECORD.json when
serve exits. With --gc-freeze (an experiment, a proposed fix) it imports the serve modules, then
moves every object alive at that point into the garbage collector's permanent generation
(`gc.freeze()`), so full collections no longer walk torch's and matplotlib's import-time objects.
The probe messages of bench/sender.py carry their send time, so a late probe shows how
long the receive loop was away.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

from monitor import cli
from monitor.intake import Intake


def main() -> int:
    record_path = Path(sys.argv[1])
    argv = sys.argv[2:]
    if argv[:1] == ["--gc-freeze"]:
        argv = argv[1:]
        import monitor.serve  # noqa: F401 - everything serve imports, torch and torchmetrics included

        gc.collect()
        gc.freeze()
    arrivals: list[tuple[float, float, str, str, int]] = []
    accept = Intake.accept

    def timed_accept(self: Intake, frame: bytes):
        received = time.time()
        message = accept(self, frame)
        if message is not None:
            arrivals.append((received, message.time, message.run, message.kind, message.seq))
        return message

    accept_many = Intake.accept_many

    def timed_accept_many(self: Intake, frames: list[bytes]):
        # The receiver takes every waiting frame (up to a batch) and then hands them over at once.
        received = time.time()
        accepted = accept_many(self, frames)
        arrivals.extend((received, message.time, message.run, message.kind, message.seq) for message, _ in accepted)
        return accepted

    Intake.accept = timed_accept  # type: ignore[method-assign]
    Intake.accept_many = timed_accept_many  # type: ignore[method-assign]
    try:
        return cli.main(argv)
    finally:
        record_path.write_text(json.dumps(arrivals))


if __name__ == "__main__":
    raise SystemExit(main())
