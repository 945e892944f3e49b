"""Console tables of the sample-level analysis: an epoch's changes against the one before, and the
top label-noise suspects. Pure builders (rows in, rich Table out)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from monitor.aggregates.paired import P_NOISE
from monitor.outputs.render.tables import display_name

SUSPECT_TABLE_ROWS = 10
PAIR_TABLE_ROWS = 5


def changes_table(changes: dict) -> Table:
    """changes.json as a table: counts, accuracies, the test result in words, the pairs that moved."""
    epoch, previous = changes["epoch"], changes["previous_epoch"]
    table = Table(title=f"Changes — epoch {epoch} vs {previous}",
                  caption=Text(f"every changed sample: epoch_{epoch:03d}/changes.csv"))
    table.add_column("Item")
    table.add_column("Value", justify="right")
    table.add_row("Paired samples", f"{changes['n_paired']:,}")
    table.add_row("Newly right", f"{changes['newly_correct']:,}")
    table.add_row("Newly wrong", f"{changes['newly_wrong']:,}")
    if changes["accuracy"] is not None:
        table.add_row("Accuracy (paired)", f"{changes['accuracy_prev']:.4f} → {changes['accuracy']:.4f}")
    if changes["accuracy_diff"] is not None:
        table.add_row("Difference", f"{100 * changes['accuracy_diff']:+.2f} pts")
    if changes["ci95"] is not None:
        low, high = changes["ci95"]
        table.add_row("95 % interval", f"[{100 * low:+.2f}, {100 * high:+.2f}] pts")
    table.add_row("McNemar p", f"{changes['mcnemar_p']:.2g}")
    table.add_row("Reads as", "a real difference" if changes["mcnemar_p"] < P_NOISE else "noise")
    for pair in changes["confusion_pair_changes"][:PAIR_TABLE_ROWS]:
        table.add_row(f"{display_name(pair['true'])} → {display_name(pair['pred'])}",
                      f"{pair['previous']:,} → {pair['current']:,} ({pair['change']:+,})")
    return table


def suspects_table(rows: Sequence[Sequence[object]], total: int, epoch: int) -> Table:
    """The first label_suspects.csv rows (id, name, label, suspected, epochs wrong, mean label
    confidence, score) of `total`."""
    table = Table(title=f"Label suspects — after epoch {epoch}",
                  caption=Text(f"{min(len(rows), SUSPECT_TABLE_ROWS)} of {total:,} shown; all in label_suspects.csv"))
    for name, justify in (("Sample", "left"), ("Given", "left"), ("Model says", "left"),
                          ("Epochs wrong", "right"), ("P(given)", "right"), ("Score", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows[:SUSPECT_TABLE_ROWS]:
        _, name, label, suspected, wrong, mean, score = row
        table.add_row(display_name(str(name)), display_name(str(label)), display_name(str(suspected)), str(wrong),
                      str(mean) or "n/a", str(score))
    return table
