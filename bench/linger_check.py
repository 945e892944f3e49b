"""Why a fit with no (or a frozen) monitor ends 2 s late, and a measured candidate fix.

The emitter's PUSH socket closes with linger_ms=2000 (default). When nobody ever completed the ZeroMQ
handshake (no monitor, or one stopped with SIGSTOP), the queued frames can never leave, so close()
always waits the full linger. The candidate: watch the socket's own events (`get_monitor_socket`)
and close with linger 0 unless a handshake has succeeded and not been followed by a disconnect.
This program sends 20 frames to each kind of peer and times close() both ways, and counts what a
live receiver got (the fix must not lose frames there).

    python -m bench.linger_check [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from bench.common import Monitor, PullSink, add_common_args, free_port, print_table, write_json

FRAMES = 20


def close_time(endpoint: str, connection_aware: bool) -> tuple[float, str]:
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, 1000)
    events = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
    socket.connect(endpoint)
    for _ in range(FRAMES):
        socket.send(b"x" * 100, zmq.DONTWAIT)
    time.sleep(0.3)  # a training epoch's worth of time for the connection to come up
    seen, up = [], 0
    while events.poll(0):
        event = recv_monitor_message(events)["event"]
        seen.append(zmq.Event(event).name)
        up = up + 1 if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else max(0, up - 1) if event == zmq.EVENT_DISCONNECTED else up
    socket.disable_monitor()
    events.close()
    started = time.perf_counter()
    socket.close(linger=2000 if (up or not connection_aware) else 0)
    context.term()
    return time.perf_counter() - started, ",".join(seen) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-linger-") as tmp, Monitor(Path(tmp) / "stopped") as monitor:
        monitor.wait_idle()
        monitor.sigstop()
        for peer, endpoint in (("absent", f"tcp://127.0.0.1:{free_port()}"), ("SIGSTOPped monitor", monitor.endpoint)):
            for aware in (False, True):
                seconds, events = close_time(endpoint, aware)
                rows.append([peer, "connection-aware" if aware else "linger 2000 (now)", events, seconds, "-"])
                raw[f"{peer}/{aware}"] = seconds
        monitor.sigcont()
    for aware in (False, True):
        sink = PullSink()
        seconds, events = close_time(sink.endpoint, aware)
        frames, _ = sink.close()
        rows.append(["live receiver", "connection-aware" if aware else "linger 2000 (now)", events, seconds,
                     f"{frames}/{FRAMES}"])
        raw[f"live/{aware}"] = (seconds, frames)
    print_table(f"close() after {FRAMES} queued frames", ["peer", "close policy", "socket events", "close s",
                                                         "frames received"], rows)
    write_json(args.json, {"close": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
