"""Where encoded frames go: a non-blocking ZeroMQ PUSH socket, and an optional spool log on disk."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from trainer_side.msglog import LogWriter

VALID_ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")
CONNECT_GRACE_MS = 250


def check_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str) or not endpoint.startswith(VALID_ENDPOINT_PREFIXES):
        raise ValueError(f"endpoint must start with tcp://, ipc:// or inproc://, got {endpoint!r}")
    return endpoint


class SocketSink:
    """A PUSH socket that never blocks: a full queue (high-water mark) drops the frame.

    The socket and its context belong to the process that created them; ZeroMQ sockets must not
    cross a fork, so the owner checks the pid before every use (see `Emitter`).
    """

    def __init__(self, endpoint: str, *, queue_size: int, linger_ms: int,
                 server_key: bytes | None = None, client_keys: tuple[bytes, bytes] | None = None) -> None:
        self._context = zmq.Context()  # our own, so closing it cannot disturb the user's sockets
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, queue_size)
        self._socket.setsockopt(zmq.LINGER, linger_ms)
        if server_key is not None:
            public, secret = client_keys if client_keys is not None else zmq.curve_keypair()
            self._socket.curve_serverkey = server_key
            self._socket.curve_publickey = public
            self._socket.curve_secretkey = secret
        # The socket's own connection events tell close() whether lingering can deliver anything.
        self._events = self._socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._peers = 0
        self._connecting_since: float | None = None  # a TCP connection whose handshake has not completed
        self._socket.connect(endpoint)
        self._created = time.monotonic()
        self._linger_ms = linger_ms

    def send(self, frame: bytes) -> bool:
        try:
            # copy=False hands large frames (thumbnails, predictions) to ZeroMQ without a copy.
            self._socket.send(frame, zmq.DONTWAIT, copy=len(frame) < 65536)
            sent = True
        except zmq.Again:
            sent = False
        self._take_events()
        return sent

    def _take_events(self) -> None:
        """Notes connection events as they come (a flag read, no system call), so close() knows how
        long a handshake has been pending. The time noted is when a send first sees the event, so at
        worst one message interval late: that only lengthens the grace."""
        while self._events.get(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(self._events)["event"]
            if event == zmq.EVENT_CONNECTED:
                if self._connecting_since is None:
                    self._connecting_since = time.monotonic()
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peers += 1
                self._connecting_since = None
            elif event == zmq.EVENT_DISCONNECTED:
                self._peers = max(0, self._peers - 1)
                self._connecting_since = None

    def _connected(self, grace_ms: int) -> bool:
        """Whether a monitor is connected. A connection younger than `grace_ms` (a socket created just
        now, or a monitor that has just accepted) gets until then to complete its handshake. An older
        one never will (a stopped monitor, or something else on the port), and waiting for it would
        only delay the end of training (bench/fit_overhead.py, configurations c and d)."""
        self._take_events()
        while self._peers == 0:
            since = self._created if self._connecting_since is None else self._connecting_since
            remaining = since + grace_ms / 1000 - time.monotonic()
            if remaining <= 0:
                break
            if self._events.poll(max(1, int(remaining * 1000))):
                self._take_events()
        return self._peers > 0

    def close(self) -> int:
        """Closes the socket; returns the linger it granted queued frames, in ms (0: they are dropped)."""
        # With no monitor connected, queued frames cannot leave: lingering would only delay the end
        # of training (2 s per fit, measured by bench/linger_check.py).
        linger = self._linger_ms if self._connected(min(self._linger_ms, CONNECT_GRACE_MS)) else 0
        self._socket.disable_monitor()
        self._events.close(linger=0)
        self._socket.close(linger=linger)
        self._context.term()
        return linger


class SpoolSink:
    """Appends every frame to a local message log from a background thread (the hook never waits
    on the disk); a bounded queue drops and counts when the disk cannot keep up."""

    def __init__(self, path: Path, *, queue_size: int) -> None:
        self.path = path
        self._writer = LogWriter(path, flush_every=64)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._thread.start()

    def _write_loop(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                break
            self._writer.append(frame)
            if self._queue.empty():
                self._writer.flush()
        self._writer.close()

    def send(self, frame: bytes) -> bool:
        try:
            self._queue.put_nowait(frame)
            return True
        except queue.Full:
            return False

    def close(self, timeout: float = 10.0) -> None:
        # The sentinel must get in even when the queue is full: wait for room, bounded.
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


def spool_path(spool_dir: str | os.PathLike, run_component: str, rank: int) -> Path:
    return Path(spool_dir) / run_component / f"rank{rank}.mlog"
