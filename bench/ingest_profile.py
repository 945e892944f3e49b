"""Where the monitor's per-message time goes: each ingest stage timed alone, in one process, no sockets.

Stages, for small `metrics` frames: protocol.decode, the message log append (one frame per call, and
a batch per call as the receiver does), the hand-off queue, Pipeline.handle; then a cProfile of
decode. Explains the ingest rate of bench/monitor_ingest.py.
Each stage is run several times (5; 3 with --quick) on fresh state and its fastest run is kept: on
a shared machine the slower runs measure the neighbours.

    python -m bench.ingest_profile [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

from rich.console import Console

from bench.common import add_common_args, print_table, write_json
from bench.monitor_ingest import frames_for
from monitor.console import MonitorConsole
from monitor.logbook import LogBook
from monitor.pipeline import Pipeline
from monitor.handoff import Handoff
from monitor.receiver import BATCH_FRAMES
from trainer_side import protocol


class _NoRenderer:
    def submit(self, job: object) -> None:
        pass


def per_message_us(action: Callable[[], object], count: int, repeats: int,
                   setup: Callable[[], None] = lambda: None) -> float:
    """The fastest of `repeats` runs of `action`, in µs per message; `setup` runs untimed before each."""
    best = float("inf")
    for _ in range(repeats):
        setup()
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / count


def each(function: Callable[[object], object], items: list) -> None:
    """Calls `function` on every item and keeps no result, as the monitor does. (Keeping 50,000
    decoded messages in a list would time the garbage collector walking them, too.)"""
    for item in items:
        function(item)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    frames = [frame for _, frame, _ in frames_for("profile", "metrics", 10_000 if args.quick else 50_000, 0)][:-1]
    messages = [protocol.decode(frame) for frame in frames]
    count, size, repeats = len(frames), len(frames[1]), 3 if args.quick else 5
    batches = [frames[i:i + BATCH_FRAMES] for i in range(0, count, BATCH_FRAMES)]
    pairs = [[(m, size) for m in messages[i:i + BATCH_FRAMES]] for i in range(0, count, BATCH_FRAMES)]
    handoff = Handoff()

    def hand_off() -> None:
        for batch in pairs:
            handoff.put_many(batch)
        for _ in messages:
            handoff.get()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-profile-") as tmp:
        logbook = LogBook(Path(tmp) / "log", flush_every=1 << 30)
        pipelines: list[Pipeline] = []  # a fresh one per run: a repeated seq would take another path

        def new_pipeline() -> None:
            pipelines.append(Pipeline(Path(tmp) / f"out{len(pipelines)}", _NoRenderer(),
                                      MonitorConsole(Console(file=io.StringIO()), fresh=False)))

        stages = {
            "msgpack.unpackb alone": per_message_us(lambda: each(protocol._unpack, frames), count, repeats),
            "protocol.decode (unpack + checks + Message)": per_message_us(
                lambda: each(protocol.decode, frames), count, repeats),
            "message log append, one frame a call": per_message_us(
                lambda: each(partial(logbook.append, "profile"), frames), count, repeats),
            f"message log append_many, {BATCH_FRAMES} frames a call": per_message_us(
                lambda: each(partial(logbook.append_many, "profile"), batches), count, repeats),
            f"hand-off put_many ({BATCH_FRAMES}) + get": per_message_us(hand_off, count, repeats),
            "Pipeline.handle": per_message_us(
                lambda: each(partial(pipelines[-1].handle, size=size), messages), count, repeats, setup=new_pipeline),
        }
        logbook.close()
    total = sum(v for k, v in stages.items() if k not in ("msgpack.unpackb alone", "message log append, one frame a call"))
    print_table(f"Monitor cost per small message ({count:,} metrics frames of {size} bytes, fastest of {repeats} runs), "
                "one thread",
                ["stage", "µs per message"], [*stages.items(), ["sum (decode + log append_many + hand-off + handle)", total],
                                              ["=> ceiling, messages/s on one core", 1e6 / total]])
    profile = cProfile.Profile()
    profile.enable()
    for frame in frames[:10_000]:
        protocol.decode(frame)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(8)
    print("\ncProfile of protocol.decode, 10,000 frames (by own time):")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:3000])
    write_json(args.json, {"us_per_message": stages, "sum_us": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
