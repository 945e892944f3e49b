"""Where `monitor serve` listens and who may send to it: the bind-address check and the CURVE server
keys. Standard library only, so that the command line checks its arguments at once (monitor/cli.py)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MAX_PORT = 65534  # the receipts socket binds the next port (trainer_side.protocol.receipts_endpoint)


class BindError(ValueError):
    """The bind address is unusable or not allowed."""


def check_bind(endpoint: str, allow_remote: bool) -> str:
    """Refuses non-loopback TCP addresses unless remote access was asked for explicitly."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise BindError(f"--bind must start with tcp://, ipc:// or inproc://, got {endpoint!r}")
    host = urlsplit(endpoint).hostname or ""
    port = endpoint.rsplit(":", 1)[-1]
    if not (port.isdigit() or port == "*"):
        raise BindError(f"--bind needs a port (tcp://127.0.0.1:5555, or :0 for any free port), got {endpoint!r}")
    if port.isdigit() and int(port) != 0 and not 0 < int(port) <= MAX_PORT:
        raise BindError(f"--bind port must be 1 to {MAX_PORT} (the receipts socket takes the next port), or 0 for "
                        f"any free port, got {endpoint!r}")
    if not allow_remote and not _is_loopback(host):
        raise BindError(f"--bind {endpoint} is not a loopback address; pass --allow-remote to accept other "
                        "machines (and consider --curve-secret so that only your trainers may send)")
    return endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class CurveServerKeys:
    public: bytes
    secret: bytes
    allowed_clients: Path | None  # a folder of client public-key certificates; None allows any CURVE client


def check_http(address: str, allow_remote: bool) -> tuple[str, int]:
    """`HOST:PORT` for `--http` (IPv6 as `[::1]:PORT`) as (host, port): loopback only unless remote
    access was asked for, as for --bind."""
    host, colon, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise BindError(f"--http needs HOST:PORT (127.0.0.1:8765, or port 0 for any free port), got {address!r}")
    if not allow_remote and not _is_loopback(host):
        raise BindError(f"--http {address} is not a loopback address; pass --allow-remote to serve the report "
                        "to other machines")
    return host, int(port)
