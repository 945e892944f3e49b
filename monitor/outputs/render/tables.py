"""Compute the monitor's table rows (pure functions); build rich Tables and plain text from them."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from rich.console import Console
from rich.table import Table
from rich.text import Text

from monitor.aggregates.analysis import ClassMetricsRow, ConfusionRow
from monitor.outputs.render.text import clean

TABLE_NAME_MAX_CHARS = 40
# Above this many classes the terminal gets a shortened table: a 1,000-row table scrolls the screen
# away, and drawing it takes time in proportion to its rows.
TERMINAL_MAX_CLASS_ROWS = 30
# console.txt gets at most this many class rows per table, chosen the same way (the run's JSON files keep
# every class): drawing takes time in proportion to the rows, and tables are drawn one at a time.
RECORD_MAX_CLASS_ROWS = 1000
TABLE_WIDTH = 100
MISSING = "—"
MODEL_INFO_KEYS = ("class", "total_params", "trainable_params", "size_mb")


@dataclass(frozen=True)
class ClassDistributionRow:
    """One class of the training set: how many samples it has and its share of the total."""

    name: str
    index: int
    count: int
    percentage: float


@dataclass(frozen=True)
class SamplerRow:
    """One class in one epoch: draws made, draws its weights predict, and their ratio."""

    name: str
    index: int
    sampled: int
    expected: float
    ratio: float | None


def display_name(name: object, max_chars: int = TABLE_NAME_MAX_CHARS) -> Text:
    """An untrusted name as literal text: markup inert, control characters replaced, ellipsized.

    A ``Text`` is never parsed for markup or emoji codes, so "[bold]" or ":smile:" print as typed.
    """
    return Text(clean(name, max_chars))


def plain_text(text: object) -> str:
    """Untrusted text for a plain line (run ids, error messages): like `display_name`, but whole and
    with its line breaks kept."""
    return "\n".join(clean(line) for line in str(text).split("\n"))


# ---------------------------------------------------------------------------- class distribution


def class_distribution_rows(class_names: Sequence[str],
                            counts: Sequence[int]) -> list[ClassDistributionRow]:
    """One row per class, by index, with its percentage of all samples (0.0 when there are none)."""
    _check_lengths(class_names, counts=counts)
    total = sum(int(count) for count in counts)
    return [ClassDistributionRow(name, index, int(count),
                                 100.0 * int(count) / total if total else 0.0)
            for index, (name, count) in enumerate(zip(class_names, counts))]


def class_distribution_table(rows: Sequence[ClassDistributionRow],
                             shown: Sequence[ClassDistributionRow] | None = None) -> Table:
    """The "Dataset Class Distribution" table, with a total row over all `rows`; `shown` limits the
    class rows drawn (see `smallest_and_largest`)."""
    table = Table(title="Dataset Class Distribution",
                  caption=_shortened_caption(rows, shown, "smallest and largest", "dataset_statistics.json"))
    table.add_column("Class Name")
    table.add_column("Index", justify="right")
    table.add_column("Count", justify="right")
    table.add_column("Percentage", justify="right")
    for row in rows if shown is None else shown:
        table.add_row(display_name(row.name), str(row.index), f"{row.count:,}",
                      f"{row.percentage:.1f}%")
    total = sum(row.count for row in rows)
    table.add_section()
    table.add_row("Total", "", f"{total:,}", "100.0%" if total else "0.0%")
    return table


def smallest_and_largest(rows: Sequence[ClassDistributionRow],
                         limit: int = TERMINAL_MAX_CLASS_ROWS) -> list[ClassDistributionRow]:
    """The `limit` classes at both ends of the distribution (half the smallest, half the largest),
    in class order: where imbalance shows."""
    by_count = sorted(rows, key=lambda row: (row.count, row.index))
    if len(by_count) <= limit:
        return list(rows)
    chosen = by_count[:limit // 2] + by_count[len(by_count) - (limit - limit // 2):]
    return sorted(chosen, key=lambda row: row.index)


def _shortened_caption(rows: Sequence[object], shown: Sequence[object] | None, which: str, json_file: str) -> Text | None:
    if shown is None or len(shown) == len(rows):
        return None
    where = "the run's console.txt" if len(rows) <= RECORD_MAX_CLASS_ROWS else json_file
    return Text(f"{len(shown)} of {len(rows):,} classes shown ({which}); every class is in {where}")


# ---------------------------------------------------------------------------- model information


def model_info_table(model: Mapping[str, object]) -> Table:
    """The "Model Information" table from a model summary (class, parameters, size in MB of 10⁶ bytes)."""
    missing = [key for key in MODEL_INFO_KEYS if key not in model]
    if missing:
        raise ValueError(f"model summary needs keys {', '.join(MODEL_INFO_KEYS)}; "
                         f"missing {', '.join(missing)}")
    total = int(model["total_params"])  # type: ignore[call-overload]
    trainable = int(model["trainable_params"])  # type: ignore[call-overload]
    table = Table(title="Model Information")
    table.add_column("Property")
    table.add_column("Value", justify="right")
    table.add_row("Model class", display_name(model["class"]))
    table.add_row("Total parameters", f"{total:,}")
    table.add_row("Trainable parameters", f"{trainable:,}")
    table.add_row("Non-trainable parameters", f"{total - trainable:,}")
    table.add_row("Size (MB = 10⁶ bytes)", significant(float(model["size_mb"])))  # type: ignore[arg-type]
    return table


def model_not_sent(model: Mapping[str, object]) -> bool:
    """Whether a run_start's model summary is the emitter's placeholder for "none given"."""
    return model.get("class") == "unknown" and not model.get("total_params") and not model.get("size_mb")


def significant(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits in plain notation (0.00233, 44.6, 1.50), whole with
    thousands separators from 10**digits up."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


# ---------------------------------------------------------------------------- sampler distribution


def sampler_rows(class_names: Sequence[str], sampled_counts: Sequence[int],
                 expected_counts: Sequence[float]) -> list[SamplerRow]:
    """One row per class, by index: drawn vs expected count; ratio None when none was expected."""
    _check_lengths(class_names, sampled_counts=sampled_counts, expected_counts=expected_counts)
    return [SamplerRow(name, index, int(sampled), float(expected),
                       _ratio(int(sampled), float(expected)))
            for index, (name, sampled, expected)
            in enumerate(zip(class_names, sampled_counts, expected_counts))]


def sampler_table(rows: Sequence[SamplerRow], epoch: int, shown: Sequence[SamplerRow] | None = None) -> Table:
    """The per-epoch sampler table, with a total row over all `rows`; `shown` limits the class rows
    drawn (see `furthest_from_expected`)."""
    table = Table(title=f"Sampler Distribution — epoch {epoch}",
                  caption=_shortened_caption(rows, shown, "furthest from their expected count",
                                              f"epoch_{epoch:03d}/sampler_distribution.json"))
    table.add_column("Class Name")
    table.add_column("Sampled Count", justify="right")
    table.add_column("Expected Count", justify="right")
    table.add_column("Ratio", justify="right")
    for row in rows if shown is None else shown:
        table.add_row(display_name(row.name), f"{row.sampled:,}", f"{row.expected:,.1f}",
                      _format_ratio(row.ratio))
    sampled = sum(row.sampled for row in rows)
    expected = sum(row.expected for row in rows)
    table.add_section()
    table.add_row("Total", f"{sampled:,}", f"{expected:,.1f}",
                  _format_ratio(_ratio(sampled, expected)))
    return table


def furthest_from_expected(rows: Sequence[SamplerRow], limit: int = TERMINAL_MAX_CLASS_ROWS) -> list[SamplerRow]:
    """The `limit` classes whose draws strayed furthest from their weights' prediction, in class
    order; a class drawn although nothing was expected counts as furthest of all."""
    def distance(row: SamplerRow) -> float:
        if row.ratio is None:
            return float("inf") if row.sampled else 0.0
        return abs(row.ratio - 1.0)

    chosen = sorted(rows, key=lambda row: (-distance(row), row.index))[:limit]
    return sorted(chosen, key=lambda row: row.index)


def _ratio(sampled: int, expected: float) -> float | None:
    return sampled / expected if expected else None


def _format_ratio(ratio: float | None) -> str:
    return MISSING if ratio is None else f"{ratio:.2f}"


# ---------------------------------------------------------------------------- per-class analysis


def worst_classes_table(worst: Sequence[ClassMetricsRow], averages: Sequence[ClassMetricsRow], classes: int,
                        epoch: int) -> Table:
    """The classes with the lowest F1 (`worst`, from `monitor.aggregates.analysis.worst_by_f1`), then the
    average rows; the caption says where every class is."""
    table = Table(title=f"Worst classes by F1 — epoch {epoch}",
                  caption=Text(f"{len(worst)} of {classes:,} classes shown; every class is in "
                               f"epoch_{epoch:03d}/per_class_metrics.csv") if classes > len(worst) else None)
    table.add_column("Class Name")
    table.add_column("Index", justify="right")
    for column in ("Precision", "Recall", "F1", "Support"):
        table.add_column(column, justify="right")
    for row in worst:
        _add_metrics_row(table, display_name(row.name), str(row.index), row)
    table.add_section()
    for row in averages:
        _add_metrics_row(table, Text(row.name.capitalize()), "", row)
    return table


def _add_metrics_row(table: Table, name: Text, index: str, row: ClassMetricsRow) -> None:
    table.add_row(name, index, f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}", f"{row.support:,}")


def top_confusions_table(confusions: Sequence[ConfusionRow], total_cells: int, epoch: int) -> Table:
    """The largest off-diagonal cells (`confusions`, largest first) of `total_cells` nonzero ones."""
    table = Table(title=f"Top confusions — epoch {epoch}",
                  caption=Text(f"{len(confusions)} of {total_cells:,} confused pairs shown; more are in "
                               f"epoch_{epoch:03d}/top_confusions.csv") if total_cells > len(confusions) else None)
    table.add_column("True Class")
    table.add_column("Predicted As")
    table.add_column("Count", justify="right")
    table.add_column("Share of True", justify="right")
    for row in confusions:
        table.add_row(display_name(row.true), display_name(row.pred), f"{row.count:,}",
                      f"{100.0 * row.share_of_true:.1f}%")
    return table


# ---------------------------------------------------------------------------- epoch summary


def epoch_summary_table(run: str, epoch: int, metrics: Mapping[str, float],
                        accuracy_from_confusion: float | None, ranks: int) -> Table:
    """A short summary of one epoch: identity, every metric by name, accuracy from the matrix."""
    table = Table(title=f"Epoch {epoch} summary")
    table.add_column("Item")
    table.add_column("Value", justify="right")
    table.add_row("Run", display_name(run))
    table.add_row("Epoch", str(epoch))
    table.add_row("Ranks", str(ranks))
    for name in sorted(metrics):
        table.add_row(display_name(name), format_metric(metrics[name]))
    if accuracy_from_confusion is not None:
        table.add_row("Accuracy (confusion matrix)", format_metric(accuracy_from_confusion))
    return table


def format_metric(value: float) -> str:
    """Four significant digits; NaN and infinities print as "nan", "inf", "-inf"."""
    return f"{float(value):.4g}"


# ---------------------------------------------------------------------------- plain text


@dataclass(frozen=True)
class TerminalView:
    """What the monitor's terminal can show, so a table can be drawn for it in another process."""

    width: int
    color_system: str | None  # rich's name ("standard", "256", "truecolor", ...); None: no colour codes
    highlight: bool = True

    @classmethod
    def of(cls, console: Console) -> "TerminalView":
        # rich keeps the console's highlight setting private; our consoles leave it at rich's default.
        return cls(console.width, console.color_system, bool(getattr(console, "_highlight", True)))


def terminal_text(table: Table, view: TerminalView) -> str:
    """Render ``table`` as the terminal described by ``view`` would print it (ANSI codes included),
    without its final line break; `rich.text.Text.from_ansi` turns it back into printable text."""
    console = Console(file=io.StringIO(), width=view.width, color_system=view.color_system,  # type: ignore[arg-type]
                      force_terminal=view.color_system is not None, force_jupyter=False, force_interactive=False,
                      legacy_windows=False, markup=False, emoji=False, highlight=view.highlight)
    console.print(table)
    return console.file.getvalue().removesuffix("\n")  # type: ignore[attr-defined]


def table_text(table: Table, width: int = TABLE_WIDTH) -> str:
    """Render ``table`` to plain text: no ANSI codes, independent of the real terminal."""
    # An explicit width ignores $COLUMNS; exporting without styles drops colour codes even if
    # FORCE_COLOR or a TTY made the console think it may emit them.
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                      force_jupyter=False, force_interactive=False, legacy_windows=False,
                      record=True, markup=False, emoji=False, highlight=False)
    console.print(table)
    # rich pads centred titles with spaces; trailing blanks only add noise to console.txt diffs.
    lines = console.export_text(styles=False).splitlines()
    return "".join(line.rstrip() + "\n" for line in lines)


def shortened(table: partial, rows: list, pick: Callable[..., list]) -> tuple[partial, partial | None]:
    """A per-class table for console.txt and the terminal's shorter version (None: the same), each
    drawing only the rows `pick` chooses where the run has more classes than they show."""
    record = table if len(rows) <= RECORD_MAX_CLASS_ROWS else partial(table, shown=pick(rows, RECORD_MAX_CLASS_ROWS))
    return record, partial(table, shown=pick(rows)) if len(rows) > TERMINAL_MAX_CLASS_ROWS else None


def _check_lengths(class_names: Sequence[str], **columns: Sequence[object]) -> None:
    for name, values in columns.items():
        if len(values) != len(class_names):
            raise ValueError(f"{name} must have one entry per class ({len(class_names)}), "
                             f"got {len(values)}")
