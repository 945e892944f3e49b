"""What senders may claim from one monitor process: runs, bytes, classes, ranks.

Senders choose run ids, class lists and ranks, so each of these is theirs to inflate. `Quotas`
admits or refuses each decoded frame before it is logged: a refused frame is neither logged nor
processed, it is counted under its own reason, and the user is told once per run (once per process
for the process-wide limits) in one line which limit was hit and which flag raises it. The defaults
are far above what a real training sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer_side.protocol import Message

log = logging.getLogger("monitor")

GB = 1 << 30  # the --max-*-gb flags count GiB


@dataclass(frozen=True)
class Limits:
    """Args:
        max_runs: runs one monitor process takes (`--max-runs`).
        max_run_bytes: frame bytes logged per run by one monitor process (`--max-run-gb`).
        max_total_bytes: frame bytes logged by one monitor process, all runs together (`--max-total-gb`).
        max_classes: class names in a run_start (`--max-classes`).
        max_ranks: distinct ranks sending to one run (`--max-ranks`); the world size a sender
            claims is capped by the protocol (2**20) and costs nothing per rank.
    """

    max_runs: int = 1_000
    max_run_bytes: int = 20 * GB
    max_total_bytes: int = 100 * GB
    max_classes: int = 100_000
    max_ranks: int = 65_536


# reason -> (what was exceeded, the flag that raises it, the limit's field)
REASONS = {
    "quota-runs": ("runs per monitor", "--max-runs", "max_runs"),
    "quota-run-bytes": ("bytes per run", "--max-run-gb", "max_run_bytes"),
    "quota-total-bytes": ("bytes per monitor", "--max-total-gb", "max_total_bytes"),
    "quota-classes": ("classes per run", "--max-classes", "max_classes"),
    "quota-ranks": ("ranks per run", "--max-ranks", "max_ranks"),
}
_PROCESS_WIDE = ("quota-runs", "quota-total-bytes")


@dataclass
class _RunUsage:
    bytes: int = 0
    ranks: set[int] = field(default_factory=set)
    told: set[str] = field(default_factory=set)  # reasons already reported for this run


class Quotas:
    """What senders have claimed so far against `limits`; `admit` decides frame by frame."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.total_bytes = 0
        self._runs: dict[str, _RunUsage] = {}
        self._told: set[str] = set()  # process-wide reasons already reported

    def admit(self, message: Message, size: int) -> str | None:
        """None, and the frame counted against its run's quotas, if it may be logged; else the
        reason it is refused (a key of REASONS)."""
        limits = self.limits
        usage = self._runs.get(message.run)
        if usage is None:
            if len(self._runs) >= limits.max_runs:
                return self._refuse(None, message, "quota-runs", f"{limits.max_runs:,}")
            usage = self._runs[message.run] = _RunUsage()
        if self.total_bytes + size > limits.max_total_bytes:
            return self._refuse(usage, message, "quota-total-bytes", _gb(limits.max_total_bytes))
        if usage.bytes + size > limits.max_run_bytes:
            return self._refuse(usage, message, "quota-run-bytes", _gb(limits.max_run_bytes))
        if message.rank not in usage.ranks and len(usage.ranks) >= limits.max_ranks:
            return self._refuse(usage, message, "quota-ranks", f"{limits.max_ranks:,}")
        if message.kind == "run_start" and len(message["class_names"]) > limits.max_classes:
            return self._refuse(usage, message, "quota-classes",
                                f"{limits.max_classes:,}; this run_start has {len(message['class_names']):,}")
        usage.bytes += size
        usage.ranks.add(message.rank)
        self.total_bytes += size
        return None

    def _refuse(self, usage: _RunUsage | None, message: Message, reason: str, limit: str) -> str:
        told = self._told if reason in _PROCESS_WIDE or usage is None else usage.told
        if reason not in told:
            told.add(reason)
            what, flag, _ = REASONS[reason]
            scope = "this monitor" if reason in _PROCESS_WIDE else f"run {message.run!r}"
            log.warning("%s hit its limit of %s (%s): a %s frame from rank %d was refused, neither logged nor "
                        "processed, as is every further frame over it (counted as %s); %s raises it",
                        scope, what, limit, message.kind, message.rank, reason, flag)
        return reason


def _gb(count: int) -> str:
    return f"{count / GB:g} GiB"
