"""The receive loop: a thread that only receives frames, logs them and queues them for the pipeline,
and answers each sender's receipt queries with how many of its frames are in the log."""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import zmq

from monitor.ingest.curveauth import HandshakeWatch, start_authenticator
from monitor.ingest.endpoint import BindError, CurveServerKeys
from monitor.ingest.handoff import RCVHWM, Handoff
from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.ingest.quotas import Limits, Quotas
from trainer_side import protocol
from trainer_side.msglog import iter_frames
from trainer_side.protocol import Message

log = logging.getLogger("monitor")


POLL_MS = 100
DRAIN_QUIET_MS = 300  # on shutdown, keep receiving until the socket has been quiet this long,
DRAIN_MAX_S = 2.0  # but no longer than this: under a flood it never is (frames not taken are not logged)
# A batch of frames is received before any of it is decoded, logged and queued (see `_take`).
BATCH_FRAMES = 256
BATCH_BYTES = 1 << 20
# Senders whose logged-frame counts are kept for receipts (least recently used forgotten first).
MAX_RECEIPT_SENDERS = 65_536


class Receiver(threading.Thread):
    """Binds the data socket (PULL) at `endpoint` and the receipts socket (ROUTER) beside it.

    Raises:
        BindError: when either address cannot be bound.
    """

    def __init__(self, endpoint: str, out: Path, *, max_message_bytes: int, curve: CurveServerKeys | None = None,
                 limits: Limits | None = None) -> None:
        super().__init__(name="monitor-receiver", daemon=True)
        self.context = zmq.Context()
        self._auth = None if curve is None else start_authenticator(self.context, curve)
        try:
            self.socket, self.receipts = _bind_pair(self.context, endpoint, max_message_bytes, curve)
        except BindError:
            if self._auth is not None:
                self._auth.stop()
            self.context.term()
            raise
        self._handshakes = None if curve is None else HandshakeWatch([self.socket, self.receipts], curve.public)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.receipts_endpoint = self.receipts.getsockopt_string(zmq.LAST_ENDPOINT)
        # Flushed after every burst, not every frame; a restarted monitor resumes runs from their logs.
        self.logbook = LogBook(out, flush_every=1 << 30, on_resume=self._resume)
        self.intake = Intake(self.logbook, Quotas(limits))
        self.messages = Handoff()
        self.logged: OrderedDict[tuple[str, int, str], int] = OrderedDict()  # (run, rank, sender) -> frames
        self._stopping = threading.Event()

    @property
    def curve_refusals(self) -> int:
        """CURVE handshakes refused: client keys the authenticator refused, and handshakes that failed
        before it (a wrong server key, a sender without CURVE)."""
        return (0 if self._auth is None else self._auth.refused) + (0 if self._handshakes is None
                                                                     else self._handshakes.failed)

    def run(self) -> None:
        self._resume_unfinished()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.receipts, zmq.POLLIN)
        for events in [] if self._handshakes is None else self._handshakes.events:
            poller.register(events, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                self._serve(dict(poller.poll(POLL_MS)))
            # Drain: whatever the trainers already sent is still taken, logged and queued.
            drain_until = time.monotonic() + DRAIN_MAX_S
            while time.monotonic() < drain_until:
                ready = dict(poller.poll(DRAIN_QUIET_MS))
                if not ready:
                    break
                self._serve(ready)
        finally:
            self.logbook.close()
            if self._handshakes is not None:
                self._handshakes.close()
            self.socket.close(linger=0)
            self.receipts.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self.context.term()

    def _resume_unfinished(self) -> None:
        """Re-reads the logs of runs that an earlier monitor left unfinished (no summary.json, or one
        that says running or stale), so their state, last epoch and summary are rebuilt now rather
        than when their trainer sends again (which it may never do)."""
        for log_path in sorted(self.logbook.out.glob("*/messages.mlog")):
            run = _unfinished_run(log_path)
            if run is not None:
                try:
                    self.logbook.append_many(run, [])  # opening the log resumes the run
                except Exception as exc:  # noqa: BLE001 - one unreadable old log must not stop the monitor
                    log.warning("could not resume %s: %s", log_path, exc)

    def _serve(self, ready: dict) -> None:
        if self.socket in ready:
            self._receive_burst()
        if self.receipts in ready:
            if self.socket.poll(0):
                self._receive_burst()  # frames sent before the query count in its answer
            self._answer_receipts()
        if self._handshakes is not None:
            for events in self._handshakes.events:
                if events in ready:
                    self._handshakes.take(events)

    def _receive_burst(self) -> None:
        """Takes every frame waiting on the socket, a batch at a time, then flushes the logs once.
        Once a stop is asked, a burst is one batch, so that a flood cannot hold the thread in it."""
        drained = False
        while not drained:
            frames, drained = self._take()
            if frames:
                accepted = self.intake.accept_many(frames)
                self._count_logged(accepted, accepted.logged)
                self.messages.put_many(accepted)
            if self._stopping.is_set():
                break
        self.logbook.flush()

    def _count_logged(self, accepted: list[tuple[Message, int]], in_log: list[bool] | None = None) -> None:
        """Counts frames that are in their run's log for receipts; `in_log` (default: all) says which
        are (a frame that could not be logged is never confirmed to its sender)."""
        logged = self.logged
        for i, (message, _) in enumerate(accepted):
            if in_log is not None and not in_log[i]:
                continue
            key = (message.run, message.rank, message.sender)
            count = logged.get(key)
            if count is None:
                if len(logged) >= MAX_RECEIPT_SENDERS:
                    logged.popitem(last=False)
                logged[key] = 1
            else:
                logged[key] = count + 1

    def _answer_receipts(self) -> None:
        """Answers every waiting receipt query with the sender's logged-frame count (never blocks)."""
        for _ in range(BATCH_FRAMES):
            try:
                identity, query = self.receipts.recv_multipart(zmq.NOBLOCK)[:2]
            except (zmq.Again, ValueError):
                return
            try:
                run, rank, sender = protocol.decode_receipt_query(query)
            except protocol.ProtocolError:
                continue
            key = (run, rank, sender)
            if key not in self.logged and self.logbook.path(run).exists():
                self.logbook.append_many(run, [])  # opening it resumes the run, and counts its senders
                self.logbook.flush()
            count = self.logged.get(key, 0)
            if key in self.logged:
                self.logged.move_to_end(key)
            try:
                self.receipts.send_multipart([identity, protocol.encode_receipt(
                    protocol.Receipt(run, rank, sender, count))], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the sender is gone, or its queue is full: it asks again

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
        self._count_logged(resumed)
        self.messages.put_many(resumed, resumed=True)

    def stop(self) -> None:
        self._stopping.set()


def _unfinished_run(log_path: Path) -> str | None:
    """The run id of a log whose run did not finish by its summary.json, else None."""
    try:
        summary = json.loads((log_path.parent / "summary.json").read_text())
        if summary.get("status") in ("completed", "failed", "interrupted"):
            return None
        return summary["run"] if isinstance(summary.get("run"), str) else None
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for frame in iter_frames(log_path, skip_corrupt=True):
                return protocol.decode(frame).run
    except Exception:  # noqa: BLE001 - an unreadable log is left as it is
        return None
    return None


def _bind_pair(context: zmq.Context, endpoint: str, max_message_bytes: int,
               curve: CurveServerKeys | None) -> tuple[zmq.Socket, zmq.Socket]:
    """The data socket bound at `endpoint` and the receipts socket at `receipts_endpoint` of the
    address actually bound. With port 0, tries other free ports until the next one is free too."""
    for _ in range(20):
        data = _socket(context, zmq.PULL, curve)
        data.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # bigger frames close the sender's connection
        data.setsockopt(zmq.RCVHWM, RCVHWM)  # frames per sender: see monitor/ingest/handoff.py
        try:
            data.bind(endpoint)
        except zmq.ZMQError as exc:
            data.close()
            raise BindError(f"cannot bind {endpoint}: {exc}") from None
        bound = data.getsockopt_string(zmq.LAST_ENDPOINT)
        address = protocol.receipts_endpoint(bound)
        if address is None:
            data.close()
            raise BindError(f"cannot bind {endpoint}: the receipts socket needs the port after it, and there is none")
        receipts = _socket(context, zmq.ROUTER, curve)
        receipts.setsockopt(zmq.MAXMSGSIZE, 4096)
        try:
            receipts.bind(address)
            return data, receipts
        except zmq.ZMQError as exc:
            data.close()
            receipts.close()
            if not endpoint.endswith(":0"):
                raise BindError(f"cannot bind {address}, where trainers ask what reached the log (always the port "
                                f"after --bind's): {exc}; choose a --bind port whose next port is free") from None
    raise BindError(f"cannot bind {endpoint}: found no free port whose next port was free too")


def _socket(context: zmq.Context, kind: int, curve: CurveServerKeys | None) -> zmq.Socket:
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        socket.curve_server = True
        socket.curve_publickey = curve.public
        socket.curve_secretkey = curve.secret
    return socket
