"""ZeroMQ CURVE authentication for serve, which says on the console whom it refused and why: the
authenticator for client keys not in --curve-clients, the sockets' own handshake events for trainers
whose handshake fails before that (a wrong server_key, or no CURVE at all)."""

from __future__ import annotations

import logging
import time

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from monitor.ingest.endpoint import CurveServerKeys

log = logging.getLogger("monitor")

REPEAT_AFTER_S = 30.0  # a refused sender retries its handshake: the same refusal is printed again after this


class RefusalLoggingAuthenticator(ThreadAuthenticator):
    """A ZAP handler that counts refused CURVE handshakes and logs each (address, key) refusal, at most
    once per `REPEAT_AFTER_S` (runs in the authenticator's own thread)."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context)
        self.refused = 0
        self._address = ""
        self._last_logged: dict[tuple[str, bytes], float] = {}

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 4:
            self._address = msg[3].decode("utf-8", "replace")
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            self.refused += 1
            key = zmq.utils.z85.encode(client_key)
            now = time.monotonic()
            if now - self._last_logged.get((self._address, key), -REPEAT_AFTER_S) >= REPEAT_AFTER_S:
                if len(self._last_logged) > 1024:
                    self._last_logged.clear()
                self._last_logged[(self._address, key)] = now
                log.warning("refused a CURVE handshake from %s: client key %s is not in --curve-clients (%s); "
                            "add its public key file there to let it send", self._address or "an unknown address",
                            key.decode("ascii"), reason.decode("ascii", "replace"))
        return allowed, reason


def start_authenticator(context: zmq.Context, curve: CurveServerKeys) -> RefusalLoggingAuthenticator:
    """A started authenticator for `context` that lets in the clients `curve` allows."""
    auth = RefusalLoggingAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(curve.allowed_clients) if curve.allowed_clients
                         else zmq.auth.CURVE_ALLOW_ANY)
    return auth


# Failures the authenticator never sees; a refused client key (EVENT_HANDSHAKE_FAILED_AUTH) it logs itself.
_FAILED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_WHY = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "it sends without CURVE: give it server_key=",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "its server_key is not this monitor's public key: give it",
}


class HandshakeWatch:
    """The handshake failures of CURVE server sockets, from their monitor sockets: `take` (in the
    thread that owns the sockets) counts them and logs one line per reason at most every
    `REPEAT_AFTER_S`."""

    def __init__(self, sockets: list[zmq.Socket], public_key: bytes) -> None:
        self.events = [socket.get_monitor_socket(_FAILED_EVENTS) for socket in sockets]
        self._owners = sockets
        self.failed = 0
        self._public_key = public_key.decode("ascii")
        self._last_logged: dict[str, float] = {}

    def take(self, events: zmq.Socket) -> None:
        """Reads every event waiting on `events` (one of `self.events`), without blocking."""
        while events.poll(0):
            try:
                event = recv_monitor_message(events, zmq.NOBLOCK)
            except (zmq.Again, ValueError):
                return
            self.failed += 1
            why = _WHY.get(event["value"], "a CURVE key mismatch, or not a trainer: give it")
            now = time.monotonic()
            if now - self._last_logged.get(why, -REPEAT_AFTER_S) >= REPEAT_AFTER_S:
                self._last_logged[why] = now
                endpoint = event["endpoint"].decode("utf-8", "replace") if isinstance(event["endpoint"], bytes) \
                    else str(event["endpoint"])
                log.warning("refused a CURVE handshake on %s: %s this monitor's public key, %s (or the path of "
                            "the .key file of the --curve-secret pair)", endpoint, why, self._public_key)

    def close(self) -> None:
        for socket, events in zip(self._owners, self.events):
            try:
                socket.disable_monitor()
            except zmq.ZMQError:
                pass
            events.close(linger=0)
