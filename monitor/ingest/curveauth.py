"""ZeroMQ CURVE authentication for serve, which says on the console whom it refused and why."""

from __future__ import annotations

import logging
import time

import zmq
from zmq.auth.thread import ThreadAuthenticator

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
