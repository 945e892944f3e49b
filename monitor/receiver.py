"""The receive loop: a thread that only receives frames, logs them and queues them for the pipeline."""

from __future__ import annotations

import threading
from pathlib import Path

import zmq

from monitor.endpoint import BindError, CurveServerKeys
from monitor.handoff import RCVHWM, Handoff
from monitor.intake import Intake
from monitor.logbook import LogBook
from monitor.quotas import Limits, Quotas
from trainer_side import protocol


POLL_MS = 100
DRAIN_QUIET_MS = 300  # on shutdown, keep receiving until the socket has been quiet this long
# A batch of frames is received before any of it is decoded, logged and queued (see `_take`).
BATCH_FRAMES = 256
BATCH_BYTES = 1 << 20


class Receiver(threading.Thread):
    def __init__(self, endpoint: str, out: Path, *, max_message_bytes: int, curve: CurveServerKeys | None = None,
                 limits: Limits | None = None) -> None:
        super().__init__(name="monitor-receiver", daemon=True)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # bigger frames close the sender's connection
        self.socket.setsockopt(zmq.RCVHWM, RCVHWM)  # frames per sender: see monitor/handoff.py
        self.socket.setsockopt(zmq.LINGER, 0)
        self._auth = None
        if curve is not None:
            self._auth = _start_authenticator(self.context, curve)
            self.socket.curve_server = True
            self.socket.curve_publickey = curve.public
            self.socket.curve_secretkey = curve.secret
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close()
            self.context.term()
            raise BindError(f"cannot bind {endpoint}: {exc}") from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        # Flushed after every burst, not every frame; a restarted monitor resumes runs from their logs.
        self.logbook = LogBook(out, flush_every=1 << 30, on_resume=self._resume)
        self.intake = Intake(self.logbook, Quotas(limits))
        self.messages = Handoff()
        self._stopping = threading.Event()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                if poller.poll(POLL_MS):
                    self._receive_burst()
            # Drain: whatever the trainers already sent is still taken, logged and queued.
            while poller.poll(DRAIN_QUIET_MS):
                self._receive_burst()
        finally:
            self.logbook.close()
            self.socket.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self.context.term()

    def _receive_burst(self) -> None:
        """Takes every frame waiting on the socket, a batch at a time, then flushes the logs once."""
        drained = False
        while not drained:
            frames, drained = self._take()
            if frames:
                self.messages.put_many(self.intake.accept_many(frames))
        self.logbook.flush()

    def _take(self) -> tuple[list[bytes], bool]:
        """The frames already waiting, up to one batch, and whether the socket ran dry.

        Receiving a batch before handling any of it keeps the GIL hand-offs to the pipeline thread
        to a few per batch: each receive releases the GIL, and a message queued just before it
        would wake the pipeline thread for that one message.
        """
        frames: list[bytes] = []
        size = 0
        recv = self.socket.recv
        try:
            while len(frames) < BATCH_FRAMES and size < BATCH_BYTES:
                frame = recv(zmq.NOBLOCK)
                frames.append(frame)
                size += len(frame)
        except zmq.Again:
            return frames, True
        return frames, False

    def _resume(self, run: str, frames: list[bytes]) -> None:
        resumed = []
        for frame in frames:
            try:
                resumed.append((protocol.decode(frame), len(frame)))
            except protocol.ProtocolError:
                pass  # was rejected and counted when it first arrived
        self.messages.put_many(resumed, resumed=True)

    def stop(self) -> None:
        self._stopping.set()


def _start_authenticator(context: zmq.Context, curve: CurveServerKeys):
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(curve.allowed_clients) if curve.allowed_clients else zmq.auth.CURVE_ALLOW_ANY)
    return auth
