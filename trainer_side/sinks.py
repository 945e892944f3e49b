"""Where encoded frames go: a non-blocking ZeroMQ PUSH socket, and an optional spool log on disk."""

from __future__ import annotations

import functools
import itertools
import operator
import os
import queue
import struct
import threading
import time
from pathlib import Path

import zmq

from trainer_side.msglog import LogWriter
from trainer_side.protocol import receipts_endpoint

class SocketSink:
    """A PUSH socket that never blocks (a full queue, the high-water mark, drops the frame), and a
    DEALER socket that asks the monitor's receipts socket how many frames reached its log.

    The sockets and their context belong to the process that created them; ZeroMQ sockets must not
    cross a fork, so the owner checks the pid before every use (see `Emitter`).

    The PUSH socket's own events, read by `take_refusal`, say whether a monitor ever accepted the
    connection (`ever_connected`), whether a connection attempt failed (`attempt_failed`: nothing
    listened there), and why the monitor refused the handshake, if it did (`refusal`).
    """

    def __init__(self, endpoint: str, *, queue_size: int, server_key: bytes | None = None,
                 client_keys: tuple[bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self._context = zmq.Context()  # our own, so closing it cannot disturb the user's sockets
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, queue_size)
        self._socket.setsockopt(zmq.LINGER, 0)  # close() waits for receipts, not for ZeroMQ's queue
        self._receipts: zmq.Socket | None = None
        self._curve = None
        if server_key is not None:
            public, secret = client_keys if client_keys is not None else zmq.curve_keypair()
            self._curve = (server_key, public, secret)
            _set_curve(self._socket, self._curve)
        self._events = self._watch(_WATCHED_EVENTS)
        self.refusal: str | None = None
        self.ever_connected = False
        self.attempt_failed = False
        self._socket.connect(endpoint)
        self._receipts_endpoint = receipts_endpoint(endpoint)

    def send(self, frame: bytes) -> bool:
        try:
            # copy=False hands large frames (thumbnails, predictions) to ZeroMQ without a copy.
            self._socket.send(frame, zmq.DONTWAIT, copy=len(frame) < 65536)
            return True
        except zmq.Again:
            return False

    def take_refusal(self) -> str | None:
        """Reads the socket events that came (a flag read unless one is waiting) into the connection
        state, and returns the reason the monitor refused this socket's handshake, once, when it has."""
        refused = None
        while self._events.get(zmq.EVENTS) & zmq.POLLIN:
            # An event is two frames: (uint16 event, uint32 value), then the endpoint; only the id matters.
            event = struct.unpack_from("=H", self._events.recv_multipart()[0])[0]
            if event == zmq.EVENT_CONNECTED:
                self.ever_connected = True
            elif event == zmq.EVENT_CONNECT_RETRIED and not self.attempt_failed:
                # Retries come every reconnect interval while nobody listens: once one is known,
                # watch only the rare events, so the event queue never fills with them.
                self.attempt_failed = True
                self._events.close(linger=0)
                self._events = self._watch(_WATCHED_EVENTS & ~zmq.EVENT_CONNECT_RETRIED)
            elif event in _REFUSALS and self.refusal is None:
                self.refusal = refused = _REFUSALS[event]
        return refused

    def _watch(self, events: int) -> zmq.Socket:
        """A PAIR socket receiving the PUSH socket's `events` (a new one replaces the last)."""
        address = f"inproc://trainer-side-events-{id(self)}-{next(_watch_numbers)}"
        self._socket.monitor(address, events)
        watcher = self._context.socket(zmq.PAIR)
        watcher.connect(address)
        return watcher

    def await_first_attempt(self, timeout_ms: int) -> None:
        """Waits at most `timeout_ms` until the first connection attempt has either succeeded or
        failed, reading the events meanwhile: on loopback either comes within milliseconds."""
        self.take_refusal()
        if self.ever_connected or self.attempt_failed or self.refusal is not None:
            return
        deadline = time.monotonic() + timeout_ms / 1000
        while not (self.ever_connected or self.attempt_failed or self.refusal is not None):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._events.poll(max(1, int(remaining * 1000))):
                return
            self.take_refusal()

    def ask_receipt(self, query: bytes) -> None:
        """Sends a receipt query without waiting; the answer is read by `take_receipts`."""
        if self._receipts_endpoint is None:
            return
        if self._receipts is None:
            self._receipts = self._context.socket(zmq.DEALER)
            self._receipts.setsockopt(zmq.LINGER, 0)
            self._receipts.setsockopt(zmq.SNDHWM, 4)
            self._receipts.setsockopt(zmq.MAXMSGSIZE, 4096)
            if self._curve is not None:
                _set_curve(self._receipts, self._curve)
            self._receipts.connect(self._receipts_endpoint)
        try:
            self._receipts.send(query, zmq.DONTWAIT)
        except zmq.Again:
            pass  # earlier queries are still waiting for the connection: one of them will do

    def take_receipts(self, timeout_ms: int = 0) -> list[bytes]:
        """The receipt frames that have arrived, waiting at most `timeout_ms` for the first."""
        if self._receipts is None or not self._receipts.poll(timeout_ms):
            return []
        frames = []
        try:
            while True:
                frames.append(self._receipts.recv(zmq.DONTWAIT))
        except zmq.Again:
            return frames

    def close(self) -> None:
        """Closes the sockets at once: whatever ZeroMQ still queues is dropped (the caller counts it)."""
        self._socket.disable_monitor()
        self._events.close(linger=0)
        self._socket.close(linger=0)
        if self._receipts is not None:
            self._receipts.close(linger=0)
        self._context.term()


_REFUSALS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the monitor refused this trainer's CURVE key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed (a CURVE key mismatch, or not a monitor)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (a CURVE key mismatch, or not a monitor)",
}
_watch_numbers = itertools.count()
_WATCHED_EVENTS = functools.reduce(operator.or_, _REFUSALS, zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)


def _set_curve(socket: zmq.Socket, curve: tuple[bytes, bytes, bytes]) -> None:
    socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = curve


class SpoolSink:
    """Appends every frame to a local message log from a background thread (the hook never waits
    on the disk); a bounded queue drops and counts when the disk cannot keep up.

    A spool that cannot be written (no permission, a full disk) never raises: the frames it could not
    take are refused by `send` or counted in `failed`, and `error` says why."""

    def __init__(self, path: Path, *, queue_size: int) -> None:
        self.path = path
        self.failed = 0  # frames taken but not written
        self.error: str | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        try:
            self._writer = LogWriter(path, flush_every=64)
        except OSError as exc:
            self._writer = None
            self.error = f"cannot write {path}: {exc.strerror or exc}"
            return
        self._thread = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._thread.start()

    def _write_loop(self) -> None:
        writer = self._writer
        while True:
            frame = self._queue.get()
            if frame is None:
                break
            try:
                writer.append(frame)
                if self._queue.empty():
                    writer.flush()
            except OSError as exc:  # LogWriteError: the file is cut back to its last whole record
                self._failed(exc)
        try:
            writer.close()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.failed += getattr(exc, "frames", 1)
        self.error = str(exc)

    def send(self, frame: bytes) -> bool:
        if self._writer is None:
            return False
        try:
            self._queue.put_nowait(frame)
            return True
        except queue.Full:
            return False

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        # The sentinel must get in even when the queue is full: wait for room, bounded.
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


def spool_path(spool_dir: str | os.PathLike, run_component: str, rank: int) -> Path:
    return Path(spool_dir) / run_component / f"rank{rank}.mlog"
