"""Reading a validation batch and step output: where the inputs, labels and logits are, and what to say when not.

A tuple or list batch is `(inputs, labels, ...)`. A dict batch is read by its keys: the input under one
of INPUT_KEYS, the labels under one of TARGET_KEYS, unless the caller names the two keys or positions
(`batch_keys`), which always win. Labels must be integer class indices, one per sample. Every
message here is one line that says what the callback got and what the user can change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

log = logging.getLogger("trainer_side")

INPUT_KEYS = ("image", "images", "input", "inputs")
TARGET_KEYS = ("label", "labels", "target", "targets")
FIX = "pass EmitterCallback(batch_keys=(input, target)), e.g. batch_keys=(\"x\", \"y\")"
LOGITS_FIX = 'end validation_step with `return logits` (or `return {"loss": loss, "logits": logits}`)'


class UnreadableBatch(ValueError):
    """A batch whose inputs or labels this callback cannot find; the message is one line that says
    what the batch holds and what to pass."""


class Batch(NamedTuple):
    inputs: Any
    labels: torch.Tensor


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeio' else 'a'} {noun}"


def describe(value: Any) -> str:
    """A short account of a batch or a step's output: its type, keys, length or tensor shape."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"{_a(str(value.dtype).removeprefix('torch.'))} tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        keys = ", ".join(repr(key) for key in list(value)[:12])
        return f"{_a(type(value).__name__)} with keys [{keys}{', …' if len(value) > 12 else ''}]"
    if isinstance(value, (tuple, list)):
        return f"{_a(type(value).__name__)} of {len(value)} item{'' if len(value) == 1 else 's'}"
    return _a(type(value).__name__)


def _dict_key(batch: Mapping, candidates: Sequence[str], role: str) -> str:
    found = [key for key in candidates if key in batch]
    if len(found) == 1:
        return found[0]
    if found:
        raise UnreadableBatch(f"the validation batch is {describe(batch)}: {' and '.join(map(repr, found))} could "
                              f"each be the {role}; {FIX}")
    raise UnreadableBatch(f"the validation batch is {describe(batch)}, none of them a known {role} key "
                          f"({', '.join(candidates)}); {FIX}")


def batch_keys_for(batch: Any, explicit: tuple[int | str, int | str] | None) -> tuple[int | str, int | str]:
    """Where the inputs and labels are in `batch`: `explicit` when given, else positions 0 and 1 of a
    tuple or list, else a dict's known keys; raises UnreadableBatch otherwise."""
    if explicit is not None:
        return explicit
    if isinstance(batch, Mapping):
        return _dict_key(batch, INPUT_KEYS, "input"), _dict_key(batch, TARGET_KEYS, "target")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return 0, 1
    raise UnreadableBatch(f"the validation batch is {describe(batch)}, not an (input, target) pair or a dict; {FIX}")


def read_batch(batch: Any, explicit: tuple[int | str, int | str] | None = None) -> Batch:
    """The inputs and the labels (one integer class index per sample) of a validation batch.

    Raises:
        UnreadableBatch: naming what the batch holds and the `batch_keys` to pass.
    """
    input_key, target_key = batch_keys_for(batch, explicit)
    try:
        inputs, labels = batch[input_key], batch[target_key]
    except (KeyError, IndexError, TypeError):
        raise UnreadableBatch(f"batch_keys=({input_key!r}, {target_key!r}) do not fit the validation batch, "
                              f"{describe(batch)}; {FIX}") from None
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool or (labels.ndim > 1 and labels.numel() != labels.shape[0]):
        raise UnreadableBatch(f"the labels at {target_key!r} are {describe(labels)}, not one integer class index "
                              f"per sample; {FIX}")
    return Batch(inputs, labels.reshape(-1))


def missing_logits_warning(outputs: Any) -> str:
    """The once-only warning when validation_step's output holds no usable logits: what it returned and the fix."""
    if isinstance(outputs, Mapping) and "logits" in outputs:
        returned = f"{_a(type(outputs).__name__)} whose 'logits' is {describe(outputs['logits'])}"
    else:
        returned = describe(outputs)
    return (f"EmitterCallback: validation_step returned {returned}, not the logits, so one extra forward "
            f"pass runs per validation batch. Fix: {LOGITS_FIX}.")


class BatchReader:
    """`read_batch` for a callback: a batch it cannot read is counted and skipped, and said once."""

    def __init__(self, batch_keys: tuple[int | str, int | str] | None) -> None:
        self.batch_keys = batch_keys
        self.skipped = 0

    def read(self, batch: Any) -> Batch | None:
        try:
            return read_batch(batch, self.batch_keys)
        except UnreadableBatch as exc:
            self.skipped += 1
            if self.skipped == 1:
                log.warning("EmitterCallback: %s. Such batches send no predictions (counted; training goes on).",
                            exc)
            return None

    def report(self) -> None:
        """One warning with the count of skipped batches, if any, at the end of the fit."""
        if self.skipped:
            log.warning("EmitterCallback: %d validation batch%s had no predictions: the callback could not read "
                        "them (see the first warning)", self.skipped, "" if self.skipped == 1 else "es")
