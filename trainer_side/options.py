"""Argument checks for the trainer side's constructors, each written once.

`Emitter`, `EmitterCallback`, `TrackingWeightedRandomSampler` and the demo's data module check
their arguments here, when they are made. Every check raises a one-line ValueError that names the argument, what is valid, and
the value it got. Limits that the wire sets (run id length, world size) come from `protocol`, which
holds received frames to the same numbers.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, NamedTuple, Sequence

from trainer_side import protocol

ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")
CURVE_KEY_LENGTH = 40  # a Z85-encoded 32-byte key


class Delivery(NamedTuple):
    """Where an emitter's messages go and how long they may wait: the arguments `Emitter` and
    `EmitterCallback` share, as `check_delivery` returns them."""

    endpoint: str | None
    spool: str | os.PathLike | bool | None
    queue_size: int
    linger_ms: int
    server_key: bytes | None
    client_keys: tuple[bytes, bytes] | None


def check_delivery(endpoint: Any, spool: Any, queue_size: Any, linger_ms: Any, server_key: Any,
                   client_keys: Any) -> Delivery:
    """Checks the delivery arguments together.

    Returns:
        The arguments, with CURVE keys as bytes; `spool` is kept as given (the caller resolves
        True against its own folder).

    Raises:
        ValueError: on the first argument that is not valid, or with neither endpoint nor spool.
    """
    spool = check_spool(spool)
    if endpoint is None and (spool is None or spool is False):
        raise ValueError("give an endpoint, a spool folder, or both: with neither, messages go nowhere")
    server_key, client_keys = check_curve_keys(server_key, client_keys)
    return Delivery(
        endpoint=None if endpoint is None else check_endpoint(endpoint),
        spool=spool,
        queue_size=check_positive_int(queue_size, "queue_size"),
        linger_ms=check_nonneg_int(linger_ms, "linger_ms", unit="milliseconds"),
        server_key=server_key,
        client_keys=client_keys,
    )


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: Any, name: str) -> int:
    """`value` as an int; raises ValueError unless it is an integer above 0 (bool is not one)."""
    if not _is_integer(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_nonneg_int(value: Any, name: str, unit: str = "") -> int:
    """`value` as an int; raises ValueError unless it is an integer of 0 or more (bool is not one)."""
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer{f' ({unit})' if unit else ''}, got {value!r}")
    return int(value)


def check_endpoint(endpoint: Any) -> str:
    if not isinstance(endpoint, str) or not endpoint.startswith(ENDPOINT_PREFIXES):
        raise ValueError(f"endpoint must start with tcp://, ipc:// or inproc://, got {endpoint!r}")
    if endpoint.startswith("tcp://"):
        port = endpoint.rpartition(":")[2]
        if not port.isdigit() or not 0 < int(port) <= protocol.MAX_DATA_PORT:
            raise ValueError(f"endpoint port must be 1 to {protocol.MAX_DATA_PORT} (the monitor's receipts socket is "
                             f"the next port), as in tcp://127.0.0.1:5555, got {endpoint!r}")
    return endpoint


def check_run_id(run: Any) -> str:
    if not isinstance(run, str) or not 0 < len(run) <= protocol.MAX_RUN_ID_LENGTH:
        raise ValueError(f"run must be a non-empty string of at most {protocol.MAX_RUN_ID_LENGTH} characters, "
                         f"got {run!r}")
    return run


def check_rank(rank: Any, world_size: Any) -> tuple[int, int]:
    """(rank, world_size) as ints; raises ValueError unless 0 <= rank < world_size <= the wire's limit."""
    rank = check_nonneg_int(rank, "rank")
    world_size = check_positive_int(world_size, "world_size")
    if world_size > protocol.MAX_WORLD_SIZE:
        raise ValueError(f"world_size must be at most {protocol.MAX_WORLD_SIZE}, got {world_size}")
    if rank >= world_size:
        raise ValueError(f"rank {rank} must be smaller than world_size {world_size}")
    return rank, world_size


def check_spool(spool: Any) -> str | os.PathLike | bool | None:
    """True (the default folder), False or None (no spool), or a non-empty folder path; else ValueError."""
    if spool is None or isinstance(spool, bool) or (isinstance(spool, (str, os.PathLike)) and str(spool)):
        return spool
    raise ValueError(f"spool must be True (default folder), False (none) or a folder path, got {spool!r}")


def load_curve_keys(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """The (public, secret) Z85 keys of a key file written by `monitor keygen`: `NAME.key` holds the
    public key only (secret None), `NAME.key_secret` both.

    Raises:
        ValueError: the file is missing or is not such a key file.
    """
    import zmq.auth

    if not os.path.isfile(path):
        raise ValueError(f"no such CURVE key file: {os.fspath(path)!r} (create a pair with `monitor keygen DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a CURVE key file written by `monitor keygen`: {exc}") from None
    if public is None or len(public) != CURVE_KEY_LENGTH:
        raise ValueError(f"{os.fspath(path)!r} holds no public key (use a file written by `monitor keygen`)")
    return public, secret


def _names_key_file(value: Any) -> bool:
    """A path object, or a string that names an existing file or looks like a path and is not 40
    characters long (a Z85 key may hold `/`, so a 40-character string is a key unless it is a file)."""
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str):
        return False
    return os.path.isfile(value) or (len(value) != CURVE_KEY_LENGTH
                                     and (os.sep in value or value.endswith((".key", ".key_secret"))))


def _check_curve_key(value: Any, name: str) -> bytes:
    key = value.encode("ascii") if isinstance(value, str) and value.isascii() else value
    if not isinstance(key, bytes) or len(key) != CURVE_KEY_LENGTH:
        raise ValueError(f"{name} must be a {CURVE_KEY_LENGTH}-character Z85 CURVE key or the path of a key file "
                         f"from `monitor keygen`, got {value!r}")
    return key


def _server_key(value: Any) -> bytes:
    if _names_key_file(value):
        try:
            return load_curve_keys(value)[0]
        except ValueError as exc:
            raise ValueError(f"server_key: {exc}") from None
    return _check_curve_key(value, "server_key")


def _client_keys(value: Any) -> tuple[bytes, bytes]:
    if isinstance(value, (str, os.PathLike)):  # a pair is never one string: the path of a .key_secret file
        try:
            public, secret = load_curve_keys(value)
        except ValueError as exc:
            raise ValueError(f"client_keys: {exc}") from None
        if secret is None:
            raise ValueError(f"client_keys: {os.fspath(value)!r} holds no secret key; give the trainer's "
                             "NAME.key_secret file (`monitor keygen DIR --name NAME`)")
        return public, secret
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"client_keys must be a (public, secret) pair of Z85 CURVE keys or the path of a "
                         f".key_secret file, got {value!r}")
    return _check_curve_key(value[0], "client public key"), _check_curve_key(value[1], "client secret key")


def check_curve_keys(server_key: Any, client_keys: Any) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    """The monitor's public key and this trainer's (public, secret) pair, as bytes; each may be given as
    Z85 keys or as the path of a `monitor keygen` key file. Either may be None, but client keys need the
    server key."""
    server = None if server_key is None else _server_key(server_key)
    if client_keys is None:
        return server, None
    pair = _client_keys(client_keys)
    if server is None:
        raise ValueError("client_keys need server_key too (the monitor's public key)")
    return server, pair


def check_class_names(class_names: Any) -> list[str]:
    if (isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names
            or not all(isinstance(name, str) for name in class_names)):
        raise ValueError(f"class_names must be a non-empty sequence of strings, got {class_names!r}")
    return list(class_names)


def check_normalization(normalization: Any) -> dict[str, list[float]]:
    """{"mean": [...], "std": [...]} as lists of floats: equal, non-zero lengths, finite positive std."""
    try:
        mean = [float(x) for x in normalization["mean"]]
        std = [float(x) for x in normalization["std"]]
    except (KeyError, TypeError, ValueError, IndexError):
        raise ValueError(f"normalization must be {{'mean': [...], 'std': [...]}}, got {normalization!r}") from None
    if not mean or len(mean) != len(std) or any(s <= 0 or not math.isfinite(s) for s in std):
        raise ValueError(f"normalization needs equal-length mean and std with positive std, got {normalization!r}")
    return {"mean": mean, "std": std}


def check_batch_keys(batch_keys: Any) -> tuple[int | str, int | str] | None:
    """Where the input and the target are in a batch: two positions (tuples) or keys (dicts), or None
    to find them (`trainer_side.batches`)."""
    if batch_keys is None:
        return None
    if (not isinstance(batch_keys, (tuple, list)) or len(batch_keys) != 2
            or not all(isinstance(key, (int, str)) and not isinstance(key, bool) for key in batch_keys)):
        raise ValueError(f"batch_keys must be None or an (input, target) pair of positions or keys, got {batch_keys!r}")
    return tuple(batch_keys)  # type: ignore[return-value]

