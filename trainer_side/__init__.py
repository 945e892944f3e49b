"""Trainer side of the sidecar monitor: a tiny emitter that ships training facts to `monitor serve`.

The public names load lazily, so that the monitor can import the wire codec (`trainer_side.protocol`)
and the log format (`trainer_side.msglog`) without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Emitter", "EmitterCallback", "TrackingWeightedRandomSampler", "load_curve_keys", "model_summary"]

_HOMES = {
    "Emitter": "trainer_side.emitter",
    "EmitterCallback": "trainer_side.callback",
    "TrackingWeightedRandomSampler": "trainer_side.sampler",
    "load_curve_keys": "trainer_side.options",
    "model_summary": "trainer_side.runinfo",
}

if TYPE_CHECKING:
    from trainer_side.callback import EmitterCallback
    from trainer_side.emitter import Emitter
    from trainer_side.options import load_curve_keys
    from trainer_side.runinfo import model_summary
    from trainer_side.sampler import TrackingWeightedRandomSampler


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trainer_side' has no attribute {name!r}")
