"""A separate sender process for the monitor benchmarks: replays a schedule of frames to `monitor serve`.

    python -m bench.sender --endpoint tcp://127.0.0.1:PORT --frames FILE [--probe-period-ms 2 --duration 10]

FILE is a pickle (written by bench/ itself, never from outside) of a list of (offset_s, frame, label):
each frame is sent with a blocking send once `offset_s` has passed since the start. With a probe
period, it also sends a small `metrics` message for run "probe" every period, encoded at send time,
so that the receiver can tell how late each one was picked up. Prints one JSON line: the wall time of
every labelled frame, the first and last send, and the probe count.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import zmq

from trainer_side import protocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="where the monitor listens")
    parser.add_argument("--frames", type=Path, required=True, help="pickled schedule of (offset_s, frame, label)")
    parser.add_argument("--probe-period-ms", type=float, default=0.0, help="probe message period (0: no probes)")
    parser.add_argument("--duration", type=float, default=0.0, help="keep probing until this many seconds")
    args = parser.parse_args(argv)
    schedule = pickle.loads(args.frames.read_bytes())
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, 100_000)
    socket.connect(args.endpoint)
    time.sleep(0.3)  # let the connection complete, so the first frames measure the monitor, not the handshake
    period = args.probe_period_ms / 1e3
    labelled: list[tuple[str, float]] = []
    probes = 0
    start = time.monotonic()
    first = last = None
    next_probe = start
    index = 0
    while index < len(schedule) or (period and time.monotonic() - start < args.duration):
        now = time.monotonic()
        if period and now >= next_probe and now - start < args.duration:
            body = {"epoch": 0, "stage": "val", "step": probes, "values": {"probe": float(probes)}}
            socket.send(protocol.encode(protocol.make_message("metrics", "probe", 0, 1, probes, body)))
            probes += 1
            next_probe += period
            continue
        if index < len(schedule) and now - start >= schedule[index][0]:
            _, frame, label = schedule[index]
            socket.send(frame, copy=len(frame) < 65536)
            last = time.time()
            first = first or last
            if label:
                labelled.append((label, last))
            index += 1
            continue
        if period or index < len(schedule):
            wake = min(next_probe if period else float("inf"),
                       start + schedule[index][0] if index < len(schedule) else float("inf"))
            time.sleep(max(0.0, min(wake - time.monotonic(), 0.001)))
    socket.close(linger=10_000)
    context.term()
    print(json.dumps({"labelled": labelled, "first": first, "last": last, "probes": probes,
                      "frames": len(schedule)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
