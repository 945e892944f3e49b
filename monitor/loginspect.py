"""`monitor inspect`: what a message log holds, per run and rank, without rendering anything."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from monitor.outputs.render.tables import display_name
from monitor.aggregates.sequence import SequenceGaps
from trainer_side import protocol
from trainer_side.msglog import ReadReport, TruncatedLogWarning, iter_records


@dataclass
class RankReport:
    kinds: Counter = field(default_factory=Counter)
    kind_bytes: Counter = field(default_factory=Counter)
    sequence: SequenceGaps = field(default_factory=SequenceGaps)  # the rule replay and serve follow too
    world: int = 1

    def gaps(self) -> list[tuple[int, int]]:
        """Missing sequence-number ranges [first, last] (see monitor.aggregates.sequence)."""
        return self.sequence.ranges()


@dataclass
class LogReport:
    path: Path
    records: int = 0
    bytes: int = 0
    ranks: dict[tuple[str, int], RankReport] = field(default_factory=lambda: defaultdict(RankReport))
    rejected: Counter = field(default_factory=Counter)  # reason code -> frames
    examples: dict[str, str] = field(default_factory=dict)  # reason code -> the first frame's message
    read: ReadReport = field(default_factory=ReadReport)
    warnings: list[str] = field(default_factory=list)


def inspect_log(path: Path, *, skip_corrupt: bool) -> LogReport:
    """What the log at `path` holds, read through once (see `LogReport`).

    Raises:
        CorruptLogError: a damaged record, unless `skip_corrupt`.
    """
    report = LogReport(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncatedLogWarning)
        for _, frame in iter_records(path, skip_corrupt=skip_corrupt, report=report.read):
            report.records += 1
            report.bytes += len(frame)
            try:
                message = protocol.decode(frame)
            except protocol.ProtocolError as exc:
                report.rejected[exc.reason] += 1
                report.examples.setdefault(exc.reason, str(exc)[:200])
                continue
            rank = report.ranks[(message.run, message.rank)]
            rank.kinds[message.kind] += 1
            rank.kind_bytes[message.kind] += len(frame)
            rank.sequence.see(message.seq, run_start=message.kind == "run_start", time=message.time,
                              sender=message.sender)
            rank.world = message.world
    report.warnings = [str(w.message) for w in caught]
    return report


def report_tables(report: LogReport) -> list[Table]:
    overview = Table(title=f"{report.path}", title_justify="left")
    for column in ("Run", "Rank", "World", "Kind", "Messages", "Bytes", "Sequence gaps"):
        overview.add_column(column)
    for (run, rank), ranks in sorted(report.ranks.items()):
        gaps = ranks.gaps()
        gap_text = "none" if not gaps else f"{ranks.sequence.missing} missing: " + ", ".join(
            str(a) if a == b else f"{a}-{b}" for a, b in gaps[:10]) + (" …" if len(gaps) > 10 else "")
        for i, kind in enumerate(sorted(ranks.kinds)):
            # Run ids and reasons come from the frames: shown like the monitor's tables, controls neutralized.
            overview.add_row(display_name(run, protocol.MAX_RUN_ID_LENGTH) if i == 0 else "",
                             str(rank) if i == 0 else "", str(ranks.world) if i == 0 else "", kind,
                             str(ranks.kinds[kind]),
                             f"{ranks.kind_bytes[kind]:,}", gap_text if i == 0 else "")
    overview.caption = f"{report.records} records, {report.bytes:,} bytes of frames"
    tables = [overview]
    if report.rejected:
        rejected = Table(title="Rejected frames", title_justify="left")
        for column in ("Reason", "Frames", "First example"):
            rejected.add_column(column)
        for reason, count in sorted(report.rejected.items()):
            # The example quotes the frame: shown like the monitor's tables, controls neutralized.
            rejected.add_row(reason, str(count), display_name(report.examples[reason], 200))
        tables.append(rejected)
    if report.read.skipped or report.read.truncated_at is not None:
        problems = Table(title="Damaged records", title_justify="left")
        problems.add_column("What")
        problems.add_column("Count / where")
        for start, end, reason in report.read.skipped:
            problems.add_row(f"skipped damaged bytes ({reason})", f"{start}..{end}")
        if report.read.truncated_at is not None:
            problems.add_row("truncated tail", f"from byte {report.read.truncated_at}")
        tables.append(problems)
    return tables


def inspect_logs(paths: list[Path], *, skip_corrupt: bool, console: Console) -> int:
    """Prints the report tables of each log; returns the exit status (0).

    Raises:
        FileNotFoundError: a path is not a file.
    """
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no such log file: {path}")
        report = inspect_log(path, skip_corrupt=skip_corrupt)
        for table in report_tables(report):
            console.print(table)
    return 0
