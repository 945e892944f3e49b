"""The framework-agnostic emitter: builds protocol messages, numbers them, hands frames to its sinks.

It never blocks and never raises into training: a full queue drops (and counts) the message, and any
unexpected failure turns monitoring off (`never_raises`). At close it waits, at most `linger_ms`, for
the monitor's receipt that every message is in its log, and says how many are not.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import time
import weakref
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from trainer_side import options, protocol
from trainer_side.names import new_run_id, safe_component
from trainer_side.sinks import SocketSink, SpoolSink, spool_path

log = logging.getLogger("trainer_side")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_SPOOL = "monitor_spool"
RECEIPT_POLL_MS = 100  # while closing, how often the monitor is asked again
# While closing a sender opened just before, how long its first connection attempt may take to
# succeed or fail (on loopback, milliseconds) before close waits for receipts as for a live monitor.
FIRST_ATTEMPT_MS = 1000

_Entry = TypeVar("_Entry", bound=Callable[..., Any])


def never_raises(entry: _Entry) -> _Entry:
    """The one boundary between the training loop and monitoring, for methods of an `Emitter` or of an
    object whose `emitter` attribute holds one (`EmitterCallback`).

    Whatever `entry` raises, its caller never sees: the first failure turns the emitter off
    (`Emitter._turn_off`), and from then on every guarded call returns False without running. A
    guarded call made inside another is not guarded again, so a failure anywhere in a callback step
    ends that step, at the outermost call.
    """

    @wraps(entry)
    def guarded(owner: Any, *args: Any, **kwargs: Any) -> Any:
        emitter = owner if isinstance(owner, Emitter) else owner.emitter
        if emitter is None or emitter._turned_off:
            return False
        if emitter._inside_guard:
            return entry(owner, *args, **kwargs)
        emitter._inside_guard = True
        try:
            return entry(owner, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the training must never see the monitor's failures
            emitter._turn_off(exc)
            return False
        finally:
            emitter._inside_guard = False

    return guarded  # type: ignore[return-value]


class Emitter:
    """Sends one run's messages from one rank.

    Example (a plain PyTorch loop)::

        emitter = Emitter("tcp://127.0.0.1:5555", run="my-run")
        emitter.run_start(class_names=["cat", "dog"])
        ...
        emitter.preds(epoch, preds=val_preds, labels=val_labels)
        emitter.metrics(epoch, "val", {"val/loss": 0.3})
        emitter.epoch_end(epoch)
        emitter.run_end("completed")
        emitter.close()  # waits at most linger_ms for the monitor's receipt; warns about what is missing

    The message methods never block and never raise: each returns True when the socket took the
    message (or, without an endpoint, the spool was handed it) and False when it was dropped. An
    unexpected failure turns monitoring off for this emitter: one error is logged, `run_end` "failed"
    is sent with the error, and every later message method returns False.

    Args:
        endpoint: where `monitor serve` listens; its receipts socket is the next port (docs/protocol.md).
            None to write the spool only.
        run: the run id; None generates a readable unique one.
        rank, world_size: this process's place among the run's ranks.
        spool: a local copy of every message, as a message log at `<spool>/<run>/rank<N>.mlog` that
            `monitor replay` and `monitor watch` read. True (default): `./monitor_spool`; False: none.
        queue_size: messages held while the monitor is slow or absent; beyond, they are dropped and counted.
        linger_ms: the most `close()` waits for the monitor to confirm that every message is in its log.
        server_key, client_keys: ZeroMQ CURVE keys (`monitor keygen`) when the monitor requires them.

    Raises:
        ValueError: at once, naming the argument and what is valid, for an argument that is not
            (checked in `trainer_side.options`).
    """

    def __init__(self, endpoint: str | None = DEFAULT_ENDPOINT, run: str | None = None, *, rank: int = 0,
                 world_size: int = 1, spool: str | os.PathLike | bool | None = True, queue_size: int = 1000,
                 linger_ms: int = 2000, server_key: str | bytes | None = None,
                 client_keys: tuple[str | bytes, str | bytes] | None = None) -> None:
        delivery = options.check_delivery(endpoint, spool, queue_size, linger_ms, server_key, client_keys)
        self.endpoint, self.queue_size, self.linger_ms = delivery.endpoint, delivery.queue_size, delivery.linger_ms
        self.server_key, self.client_keys = delivery.server_key, delivery.client_keys
        self.spool = resolve_spool(delivery.spool, Path.cwd())
        self.run = new_run_id() if run is None else options.check_run_id(run)
        self.rank, self.world_size = options.check_rank(rank, world_size)
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.spool_dropped = 0
        self.spool_error: str | None = None  # why the spool could not take every message, if it could not
        self._turned_off = False  # set by `_turn_off`: every message method is a no-op from then on
        self._inside_guard = False
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._socket: SocketSink | None = None
        self._spool: SpoolSink | None = None
        self._drop_reported = False
        self.sender = ""  # this process's identity on the wire, made when its sinks open
        self._first_dropped = 0  # `dropped` when this sender opened: it reports only its own messages
        self.confirmed = 0  # of this sender's messages, how many the monitor says are in its log
        self.receipt_polls = 0  # receipt queries `close` waited on

    # Pickling (ddp_spawn, deepcopy) carries the configuration and counters, never a socket.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pid", "_socket", "_spool"):
            state[key] = None
        return state

    def _open(self) -> None:
        self._pid = os.getpid()
        self.sender = secrets.token_hex(8)
        self.seq = 0  # each sender numbers its messages from 0 (docs/protocol.md)
        self._first_dropped, self.confirmed = self.dropped, 0
        if self.endpoint is not None:
            self._socket = SocketSink(self.endpoint, queue_size=self.queue_size, server_key=self.server_key,
                                      client_keys=self.client_keys)
        if self.spool is not None:
            self._spool = SpoolSink(spool_path(self.spool, safe_component(self.run), self.rank),
                                    queue_size=self.queue_size)
        _open_emitters.add(self)

    @never_raises
    def send(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Encodes and sends one message of any kind (docs/protocol.md) with this emitter's envelope.

        Returns:
            True when the socket took it; False when it was dropped or monitoring is off.
        """
        return self._send(kind, body)

    def _turn_off(self, failure: Exception) -> None:
        """Ends monitoring for this emitter after an unexpected failure; the training goes on.

        Logs one error, sends `run_end` with status "failed" and the failure (if the emitter still
        can), and makes every later message method return False without sending. `close()` still
        closes the sinks and reports delivery.
        """
        if self._turned_off:
            return
        self._turned_off = True
        log.error("trainer_side: monitoring turned off for run %s rank %d after %s: %s; the training goes on "
                  "without it", self.run, self.rank, type(failure).__name__, failure)
        error = f"monitoring turned off: {type(failure).__name__}: {failure}"[:1000]
        try:
            self._send_run_end("failed", error)
        except Exception:  # noqa: BLE001 - the failure may be in sending itself
            pass

    def _send(self, kind: str, body: Mapping[str, Any]) -> bool:
        # Unguarded: every public caller is guarded once, by `never_raises`.
        if self._pid != os.getpid():
            if self._pid is not None:
                return False  # a forked child (a DataLoader worker): the parent's socket is not ours
            self._open()
        message = protocol.make_message(kind, self.run, self.rank, self.world_size, self.seq, body,
                                        sender=self.sender)
        frame = protocol.encode(message)
        self.seq += 1  # a dropped message keeps its number, so the monitor sees the gap
        if self._spool is not None and not self._spool.send(frame):
            self.spool_dropped += 1
        if self._socket is None:
            self.sent += 1
            return True
        sent = self._socket.send(frame)
        if kind in ("epoch_end", "run_end"):
            self._check_delivery()
        if sent:
            self.sent += 1
            return True
        self._count_drop(kind)
        return False

    def _check_delivery(self) -> None:
        """Once per epoch: reads the receipts that came (no wait) and asks for a new one, so that the
        last confirmed count survives a monitor that dies later; warns once on a refused handshake."""
        socket = self._socket
        refusal = socket.take_refusal()
        if refusal is not None:
            log.warning("trainer_side: run %s rank %d: %s at %s, so nothing this trainer sends arrives. Check "
                        "server_key/client_keys against the monitor's keys (`monitor keygen`, --curve-secret, "
                        "--curve-clients).", self.run, self.rank, refusal, self.endpoint)
        self._take_receipts(socket.take_receipts())
        socket.ask_receipt(protocol.encode_receipt_query(self.run, self.rank, self.sender))

    def _take_receipts(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                receipt = protocol.decode_receipt(frame)
            except protocol.ProtocolError:
                continue
            if receipt.sender == self.sender and receipt.run == self.run and receipt.rank == self.rank:
                self.confirmed = max(self.confirmed, receipt.logged)

    def _count_drop(self, kind: str) -> None:
        self.dropped += 1
        if not self._drop_reported and self.rank == 0:
            self._drop_reported = True
            log.warning("trainer_side: the monitor at %s is not keeping up (queue of %d messages full); "
                        "dropped a %r message. Drops are counted and reported to the monitor; "
                        "training is not slowed.", self.endpoint, self.queue_size, kind)

    # --- one method per message kind (fields in docs/protocol.md); see the class docstring for what
    # they return.

    @never_raises
    def run_start(self, class_names: Sequence[str], *, normalization: Mapping[str, Sequence[float]] | None = None,
                  model: Mapping[str, Any] | None = None, train_targets: np.ndarray | None = None,
                  class_counts: np.ndarray | None = None, sampler: Mapping[str, Any] | None = None,
                  hparams: Mapping[str, Any] | None = None, targets_missing: str | None = None,
                  val_size: int | None = None, train_size: int | None = None) -> bool:
        """What the monitor knows once per run: class names, and optionally the normalization (default
        ImageNet's), a model summary, the training targets or class counts (else `targets_missing`: one
        line saying why, for the monitor to print), the sampler's weights per class,
        hyper-parameters (non-scalars are sent as their repr), and the sizes of the validation and
        training sets that sample ids index (every id is below them)."""
        from trainer_side.runinfo import IMAGENET_NORMALIZATION, plain_hparams

        body = {
            "class_names": [str(name) for name in class_names],
            "normalization": dict(normalization or IMAGENET_NORMALIZATION),
            "model": dict(model or {"class": "unknown", "total_params": 0, "trainable_params": 0, "size_mb": 0.0}),
            "train_targets": train_targets,
            "class_counts": class_counts,
            "sampler": None if sampler is None else dict(sampler),
            "hparams": plain_hparams(hparams or {}),
        }
        if targets_missing is not None:
            body["targets_missing"] = str(targets_missing)[:protocol.MAX_REASON_LENGTH]
        for key, size in (("val_size", val_size), ("train_size", train_size)):
            if size is not None:
                body[key] = int(size)
        return self._send("run_start", body)

    @never_raises
    def preds(self, epoch: int, preds: np.ndarray, labels: np.ndarray, step: int = 0,
              confidence: np.ndarray | None = None, *, ids: np.ndarray | protocol.IdRange | None = None,
              label_confidence: np.ndarray | None = None) -> bool:
        """Validation predictions (argmax) and labels, as non-negative integer arrays of equal length;
        optionally each prediction's top-1 confidence and its given label's probability (softmax;
        sent as float16), and its sample's id: the dataset index, an integer array or an `IdRange`."""
        body = {"epoch": epoch, "step": step, "preds": _unsigned(preds), "labels": _unsigned(labels)}
        if confidence is not None:
            body["confidence"] = _half(confidence)
        if ids is not None:
            body["ids"] = _ids(ids)
        if label_confidence is not None:
            body["label_confidence"] = _half(label_confidence)
        return self._send("preds", body)

    @never_raises
    def train_preds(self, epoch: int, ids: np.ndarray | protocol.IdRange, labels: np.ndarray, preds: np.ndarray,
                    label_confidence: np.ndarray) -> bool:
        """Training predictions of one epoch's samples (Dataset Cartography): their ids, labels,
        argmax predictions and each given label's probability (float16)."""
        return self._send("train_preds", {"epoch": epoch, "ids": _ids(ids), "labels": _unsigned(labels),
                                          "preds": _unsigned(preds), "label_confidence": _half(label_confidence)})

    @never_raises
    def sample_names(self, split: str, names: Sequence[str], first: int = 0) -> bool:
        """The names of samples `first, first + 1, ...` of a split ("val" or "train"), sent in chunks of
        at most 1,000; a name longer than 200 characters is cut to 199 and an ellipsis. True when
        every chunk was taken."""
        if split not in protocol.SPLITS:
            raise ValueError(f"split must be one of {list(protocol.SPLITS)}, got {split!r}")
        taken = True
        size, longest = protocol.MAX_NAMES_PER_CHUNK, protocol.MAX_NAME_LENGTH
        for start in range(0, len(names), size):
            chunk = [name if len(name) <= longest else name[:longest - 1] + "…"
                     for name in map(str, names[start:start + size])]
            taken = self._send("sample_names", {"split": split, "first": first + start, "names": chunk}) and taken
        return taken

    @never_raises
    def mistakes(self, epoch: int, images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                 confidence: np.ndarray, top_k: int, ids: np.ndarray | None = None) -> bool:
        """The epoch's most confident wrong predictions on this rank, at most `top_k`, most confident
        first: thumbnails (uint8 N×H×W×3), true classes, predictions, their confidences and,
        optionally, their sample ids."""
        body = {"epoch": epoch, "top_k": top_k, "images": images, "labels": _unsigned(labels),
                "preds": _unsigned(preds), "confidence": _half(confidence)}
        if ids is not None:
            body["ids"] = _ids(ids)
        return self._send("mistakes", body)

    @never_raises
    def samples(self, epoch: int, images: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> bool:
        """Thumbnails (uint8 N×H×W×3) with their labels and predictions."""
        return self._send("samples", {"epoch": epoch, "images": images, "labels": _unsigned(labels),
                                      "preds": _unsigned(preds)})

    @never_raises
    def sampled(self, epoch: int, indices: np.ndarray) -> bool:
        """The dataset indices the sampler drew this epoch."""
        return self._send("sampled", {"epoch": epoch, "indices": _unsigned(indices)})

    @never_raises
    def metrics(self, epoch: int, stage: str, values: Mapping[str, float], step: int = 0) -> bool:
        """Epoch metrics of one stage ("train", "val"), by name."""
        return self._send("metrics", {"epoch": epoch, "stage": stage, "step": step,
                                     "values": {str(k): float(v) for k, v in values.items()}})

    @never_raises
    def epoch_end(self, epoch: int) -> bool:
        """The end of an epoch on this rank, with the sent and dropped counters."""
        # The counters include this message itself only if it gets through; the monitor knows.
        return self._send("epoch_end", {"epoch": epoch, "sent": self.sent, "dropped": self.dropped})

    @never_raises
    def run_end(self, status: str = "completed", error: str | None = None) -> bool:
        """The end of the run: status "completed", "failed" or "interrupted", and the error if any."""
        return self._send_run_end(status, error)

    def _send_run_end(self, status: str, error: str | None) -> bool:
        return self._send("run_end", {"status": status, "error": error, "sent": self.sent, "dropped": self.dropped})

    def close(self) -> DeliveryReport | None:
        """Closes the sinks of this process and reports what reached the monitor.

        When a monitor ever accepted the connection, waits at most `linger_ms` for its receipt that
        every message sent is in its log (never while training: only here), and logs a warning with
        the number of messages that did not get there and how to recover them from the spool. When
        none ever did and the spool holds every message, it does not wait: one line names the spool
        and the commands that ingest it.

        Returns:
            The delivery report, or None when this process has nothing open (already closed, never
            used, or a forked child).
        """
        if self._pid != os.getpid():
            return None
        socket, spool = self._socket, self._spool
        self._socket = self._spool = None
        self._pid = None
        _open_emitters.discard(self)
        try:
            if spool is not None:
                spool.close()
                self.spool_dropped += spool.failed
                self.spool_error = spool.error
            if socket is not None:
                self._await_receipts(socket, spool_complete=spool is not None and not self.spool_dropped)
                socket.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("trainer_side: error while closing the emitter: %s", exc)
        report = DeliveryReport(
            messages=self.seq, dropped=self.dropped - self._first_dropped,
            confirmed=None if socket is None else self.confirmed,
            spool=None if self.spool is None else spool_path(self.spool, safe_component(self.run), self.rank),
            spool_missed=self.spool_dropped, refusal=None if socket is None else socket.refusal,
            connected=None if socket is None else socket.ever_connected)
        _warn_undelivered(self, report)
        return report

    def _await_receipts(self, socket: SocketSink, *, spool_complete: bool) -> None:
        """Asks the monitor until it confirms every message the socket took, or `linger_ms` passes;
        not at all when no monitor ever connected and the spool holds every message (nothing the
        wait could deliver that the spool does not already have)."""
        if spool_complete:
            socket.await_first_attempt(min(self.linger_ms, FIRST_ATTEMPT_MS))
            if socket.attempt_failed and not socket.ever_connected:
                return
        expected = self.seq - (self.dropped - self._first_dropped)
        deadline = time.monotonic() + self.linger_ms / 1000
        query = protocol.encode_receipt_query(self.run, self.rank, self.sender)
        while self.confirmed < expected:
            self._take_receipts(socket.take_receipts())
            remaining = deadline - time.monotonic()
            if self.confirmed >= expected or remaining <= 0:
                break
            socket.ask_receipt(query)
            self.receipt_polls += 1
            self._take_receipts(socket.take_receipts(max(1, int(min(remaining, RECEIPT_POLL_MS / 1000) * 1000))))
        socket.take_refusal()  # reads the handshake events that came meanwhile into `socket.refusal`


@dataclass(frozen=True)
class DeliveryReport:
    """What one emitter process sent, and what of it is known to be in the monitor's log.

    Attributes:
        messages: messages built and numbered by this process.
        dropped: of those, refused by the full send queue (never left the process).
        confirmed: of those, in the monitor's log by its last receipt; None without an endpoint.
        spool: the spool log holding every message, or None with `spool=False`.
        spool_missed: messages the spool could not take (disk too slow).
        refusal: why the monitor refused this trainer's connection (CURVE keys), if it did.
        connected: whether a monitor ever accepted this sender's connection; None without an endpoint.
    """

    messages: int
    dropped: int
    confirmed: int | None
    spool: Path | None
    spool_missed: int = 0
    refusal: str | None = None
    connected: bool | None = None

    @property
    def undelivered(self) -> int:
        """Messages not known to be in the monitor's log (0 without an endpoint)."""
        return 0 if self.confirmed is None else max(0, self.messages - self.confirmed)


def _warn_undelivered(emitter: Emitter, report: DeliveryReport) -> None:
    if report.undelivered and report.connected is False and report.spool is not None and not report.spool_missed:
        log.warning("trainer_side: run %s rank %d: no monitor ever connected to %s; the spool %s holds all %d "
                    "messages: `monitor replay %s/rank*.mlog --out outputs` draws the run (`monitor watch %s "
                    "--out outputs` follows spools as they are written)", emitter.run, emitter.rank,
                    emitter.endpoint, report.spool, report.messages, report.spool.parent, report.spool.parent.parent)
    elif report.undelivered:
        unconfirmed = report.undelivered - report.dropped
        text = (f"trainer_side: run {emitter.run} rank {emitter.rank}: {report.undelivered} of {report.messages} "
                f"messages are not confirmed in the log of the monitor at {emitter.endpoint}: {report.dropped} "
                f"dropped while the send queue was full, {max(0, unconfirmed)} sent but unconfirmed after "
                f"linger_ms={emitter.linger_ms} ("
                + (f"{report.refusal}: check server_key/client_keys against the monitor's keys)."
                   if report.refusal else "the monitor was not running, frozen or too slow; they arrive only if it "
                                          "resumes)."))
        if report.spool is None:
            text += " No spool holds them (spool=False), so they are lost."
        else:
            held = "holds the run" if not report.spool_missed else f"holds all but {report.spool_missed} of them"
            text += (f" The spool {report.spool} {held}: `monitor replay {report.spool.parent}/rank*.mlog "
                     "--out outputs` rebuilds it.")
        log.warning(text)
    if report.spool_missed:
        log.warning("trainer_side: run %s rank %d: %d messages were not written to the spool %s (%s)",
                    emitter.run, emitter.rank, report.spool_missed, report.spool,
                    emitter.spool_error or "the disk did not keep up with the send queue")


def _unsigned(array: np.ndarray) -> np.ndarray:
    """Class indices as the protocol carries them (unsigned): a signed integer array of non-negative
    values (numpy's and torch's default int64) is narrowed to the smallest unsigned type that holds it."""
    if not isinstance(array, np.ndarray) or array.dtype.kind != "i":
        return array
    if array.size and int(array.min()) < 0:
        raise ValueError(f"class indices must be non-negative, got {int(array.min())}")
    return array.astype(protocol.smallest_label_dtype(int(array.max()) + 1 if array.size else 1))


def _ids(ids: np.ndarray | protocol.IdRange) -> np.ndarray | protocol.IdRange:
    """Sample ids as the protocol carries them: a range, or `<u4` (`<u8` when an id needs it)."""
    return ids if isinstance(ids, protocol.IdRange) else protocol.compact_ids(ids)


def _half(confidence: np.ndarray) -> np.ndarray:
    """Confidences as the protocol carries them: float16."""
    return np.asarray(confidence).astype(np.float16, copy=False)


def resolve_spool(spool: str | os.PathLike | bool | None, root: Path) -> Path | None:
    """The folder of a checked `spool` argument (`options.check_spool`): True is `<root>/monitor_spool`,
    False or None is no spool, a path is itself."""
    if spool is None or spool is False:
        return None
    return root.absolute() / DEFAULT_SPOOL if spool is True else Path(spool)


_open_emitters: "weakref.WeakSet[Emitter]" = weakref.WeakSet()


@atexit.register
def _close_open_emitters() -> None:
    # An emitter the user forgot to close must not leave ZeroMQ holding the interpreter at exit.
    for emitter in list(_open_emitters):
        emitter.close()
