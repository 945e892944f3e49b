"""Run ids: readable unique ids for new runs, and the one safe way to turn an id or name into a path part."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_COMPONENT = 80


def new_run_id(prefix: str = "run") -> str:
    """A readable, sortable, unique id such as `run-20261126-181512-a3f9`."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def safe_component(name: str) -> str:
    """A single path component for `name` that can never leave its parent folder.

    Characters outside [A-Za-z0-9._-] become '_', leading dots are dropped (no '..', no hidden
    files), long names are cut; when anything changed a short hash of the original keeps two
    different names from landing on the same folder.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", ascii_name).lstrip(".")[:MAX_COMPONENT] or "_"
    if cleaned != name:
        cleaned = f"{cleaned}-{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return cleaned
