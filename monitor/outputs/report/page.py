"""The run page, `<out>/<run>/index.html`, and each epoch's tables for it: pure builders from a
run folder's contents (monitor/outputs/report/folder.py) to text.

The page holds what every epoch shares (status, history curves, model) and, per epoch, only the list
of its figures; an epoch's tables (per-class metrics, top confusions, sampler balance) are in
`epoch_NNN/report_data.js`, which the page loads when that epoch is shown, and the class
distribution in `report_dataset.js`. So the page grows with the number of epochs and each data file
with the number of classes, never with both.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from monitor.outputs.render.tables import model_not_sent
from monitor.outputs.report.folder import DATASET_DATA, EPOCH_DATA, EpochTables, Figure, RunFolder, history_series
from monitor.outputs.report.samples_section import SAMPLES_DATA, samples_section
from monitor.outputs.report.html import (REFRESH_S, asset, document, href, json_script, key_value_table, script_json,
                                 status_badge, text)

MAX_TABLE_ROWS = 1000  # rows a table shows at once, in its sort order; the files hold them all
CONFUSION_ROWS = 50  # top confusions carried into a page's epoch data
HEADLINE = "val/acc_top1"
NAMED_RANKS = 10  # rank numbers the page names for one gap, drop or error; the rest are counted
NAMED_ERRORS = 20  # distinct error texts the page shows

PER_CLASS_COLUMNS = [{"name": "class"}, {"name": "index", "number": True}, {"name": "precision", "number": True},
                     {"name": "recall", "number": True}, {"name": "f1", "number": True},
                     {"name": "support", "number": True}]
CONFUSION_COLUMNS = [{"name": "true"}, {"name": "predicted"}, {"name": "count", "number": True},
                     {"name": "share of true", "number": True}]
SAMPLER_COLUMNS = [{"name": "class"}, {"name": "index", "number": True}, {"name": "sampled", "number": True},
                   {"name": "expected", "number": True}, {"name": "ratio", "number": True, "bar": True}]
DATASET_COLUMNS = [{"name": "class"}, {"name": "index", "number": True}, {"name": "count", "number": True},
                   {"name": "percentage", "number": True}]


def run_page(run: RunFolder) -> str:
    """The run's page: status, history, an epoch selector with that epoch's figures and tables, model
    and dataset. A running run's page reloads itself every REFRESH_S seconds."""
    live = run.status == "running"
    epochs = sorted(run.epochs)
    selected = epochs[-1] if epochs else None
    sections = [_header(run), _status(run), _history(run),
                _epoch_section(run, selected) if selected is not None else
                "<h2>Epochs</h2><p class=\"note\">No epoch drawn yet.</p>",
                samples_section(run.samples), _model(run), _dataset_section(run)]
    data = {
        "live": live, "refresh_s": REFRESH_S, "max_rows": MAX_TABLE_ROWS, "selected": selected,
        "epochs": [_epoch_entry(run, number) for number in epochs],
        "dataset": href(DATASET_DATA) if run.dataset_data else None,
        "samples": href(SAMPLES_DATA) if run.samples.data else None,
    }
    body = "\n".join(sections) + "\n" + json_script("report-data", data)
    return document(f"{run.run} — training report", body, script=asset("report.js"))


def epoch_script(tables: EpochTables) -> str:
    """An epoch's `report_data.js`: one call that hands the page the epoch's tables."""
    data: dict[str, Any] = {
        "epoch": tables.epoch,
        "per_class": {"columns": PER_CLASS_COLUMNS, "rows": tables.per_class, "footer": tables.averages},
        "confusions": {"columns": CONFUSION_COLUMNS, "rows": tables.confusions, "total": tables.confusion_rows},
        "sampler": _sampler(tables.sampler),
    }
    return f"reportEpoch({script_json(data)});\n"


def dataset_script(dataset: dict[str, Any]) -> str | None:
    """The run's `report_dataset.js`: its class distribution as a table; None without one."""
    table = _dataset(dataset)
    return None if table is None else f"reportDataset({script_json(table)});\n"


def format_time(seconds: object) -> str:
    """A message time (seconds since the epoch, the sender's clock) as UTC; "—" when unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or not 0 <= seconds < 253402300800:
        return "—"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def best(rows: list[dict[str, str]], column: str = HEADLINE) -> tuple[int, float] | None:
    """(epoch, value) of the highest finite `column` value; the first such epoch on ties."""
    series = history_series(rows, column)
    return max(series, key=lambda point: (point[1], -point[0])) if series else None


# --- sections ---------------------------------------------------------------------------------

def _header(run: RunFolder) -> str:
    return (f'<header><a href="../index.html">&larr; all runs</a><h1>{text(run.run)}</h1>'
            f'{status_badge(run.status)}</header>')


def _status(run: RunFolder) -> str:
    summary, labels = run.summary, run.labels or {}
    drawn = summary.get("epochs") if isinstance(summary.get("epochs"), list) else []
    top = best(run.history)
    rows = [("status", status_badge(run.status)),
            ("last update", text(format_time(summary.get("last_message_time")))),
            ("epochs drawn", text(len(drawn)) + (f" (last: {text(drawn[-1])})" if drawn else "")),
            ("classes", text(labels.get("num_classes", "—"))),
            ("world size", text(summary.get("world", "—"))),
            (f"best {HEADLINE}", "—" if top is None else f"{top[1]:.4f} (epoch {top[0]})")]
    log = summary.get("log")
    if isinstance(log, dict):
        rows.append(("not logged", text(f"{log.get('frames_not_logged')} frame(s): {log.get('error')}")))
    html = "<h2>Status</h2><div class=\"columns\"><div>" + key_value_table(rows) + "</div>"
    ranks = _ranks(summary)
    if ranks:
        html += f"<div>{key_value_table(ranks)}</div>"
    html += "</div>" + _errors(summary)
    return html


def _ranks(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The ranks in aggregate, however many there are: how many run, ended (by status) or were never
    heard from, and their messages, bytes, gaps and drops in total, naming the first ranks with gaps
    or drops. summary.json keeps the figures of every rank."""
    ranks = summary.get("ranks") if isinstance(summary.get("ranks"), dict) else {}
    states = summary.get("rank_states") if isinstance(summary.get("rank_states"), dict) else {}
    if not ranks and not states:
        return []
    counters = [c for c in ranks.values() if isinstance(c, dict)]

    def total(key: str) -> int:
        return sum(c[key] for c in counters if isinstance(c.get(key), int))

    def with_ranks(key: str) -> str:
        named = [rank for rank, c in ranks.items() if isinstance(c, dict) and isinstance(c.get(key), int) and c[key]]
        named.sort(key=_rank_order)
        if not named:
            return "0"
        return f"{total(key):,} in {len(named):,} rank(s): {list_ranks(named)}"

    rows = []
    if states:
        rows.append(("ranks", ", ".join(f"{n:,} {state}" for state, n in states.items() if isinstance(n, int) and n)
                     or "—"))
    rows += [("messages", f"{total('messages'):,}"), ("bytes", f"{total('bytes'):,}"),
             ("sequence gaps", with_ranks("gaps")), ("dropped by the emitters", with_ranks("dropped"))]
    return [(label, text(value)) for label, value in rows]


def _rank_order(rank: str) -> tuple[int, str]:
    """summary.json's rank keys in the order of their numbers ("2" before "10")."""
    return (int(rank), "") if rank.isdigit() else (-1, rank)


def list_ranks(ranks: list[Any]) -> str:
    """"3", "3, 7 and 9", or the first NAMED_RANKS and how many more."""
    shown = ", ".join(str(rank) for rank in ranks[:NAMED_RANKS])
    if len(ranks) > NAMED_RANKS:
        return f"{shown} and {len(ranks) - NAMED_RANKS:,} more"
    head, _, last = shown.rpartition(", ")
    return f"{head} and {last}" if head else last


def _errors(summary: dict[str, Any]) -> str:
    """The errors the ranks ended with, each text once with the ranks that sent it, and the refused
    senders: at most NAMED_ERRORS of each, and how many more."""
    by_text: dict[str, list[str]] = {}
    for error in summary.get("errors") or []:
        if isinstance(error, str):
            rank, colon, what = error.partition(": ")
            known = colon and rank.startswith("rank ")
            by_text.setdefault(what if known else error, []).append(rank[5:] if known else "")
    refused = [e for e in summary.get("refused_senders") or [] if isinstance(e, str)]
    if not by_text and not refused:
        return ""
    items = []
    for what, ranks in list(by_text.items())[:NAMED_ERRORS]:
        numbers = sorted((r for r in ranks if r), key=_rank_order)
        which = f" <span class=\"note\">(rank{'s' if len(numbers) > 1 else ''} {text(list_ranks(numbers))})</span>"
        items.append(f"<li>{text(what)}{which if numbers else ''}</li>")
    items += [f"<li>{text(e)}</li>" for e in refused[:NAMED_ERRORS]]
    left = max(0, len(by_text) - NAMED_ERRORS) + max(0, len(refused) - NAMED_ERRORS)
    if left:
        items.append(f"<li class=\"note\">and {left:,} more (summary.json lists them all)</li>")
    return "<h3>Errors</h3><ul>" + "".join(items) + "</ul>"


def _history(run: RunFolder) -> str:
    html = "<h2>History</h2>"
    if run.history_figures:
        html += f'<div class="figures history">{_figures(run.history_figures)}</div>'
    if run.history:
        last = run.history[-1]
        columns = [c for c in last if c != "epoch"]
        body = "".join(f"<tr><td>{text(c)}</td><td class=\"num\">{text(_short(last.get(c)))}</td></tr>"
                       for c in columns)
        html += (f'<h3>Metrics at epoch {text(last.get("epoch", "?"))}</h3>'
                 f'<table><thead><tr><th>metric</th><th class="num">value</th></tr></thead><tbody>{body}</tbody>'
                 f'</table><p class="note">Every epoch in <a href="history.csv">history.csv</a>.</p>')
    if not run.history_figures and not run.history:
        html += '<p class="note">No metrics yet.</p>'
    return html


def _epoch_section(run: RunFolder, selected: int) -> str:
    options = "".join(f'<option value="{n}"{" selected" if n == selected else ""}>epoch {n}</option>'
                      for n in sorted(run.epochs))
    return ('<h2 id="epochs">Epoch</h2>'
            f'<div class="epoch-bar"><label for="epoch-select">Show</label><select id="epoch-select">{options}'
            '</select><span class="note">files: <span id="epoch-links"></span></span></div>'
            f'<div class="figures" id="epoch-figures">{_figures(run.epochs[selected], empty="No figures for this epoch yet.")}</div>'
            '<div class="columns"><div><h3>Per-class metrics</h3>'
            '<p class="note">Click a column to sort by it, again to reverse.</p>'
            '<div id="per-class"><p class="note">Loading…</p></div></div>'
            '<div><h3>Top confusions</h3><div id="confusions"><p class="note">Loading…</p></div></div>'
            '<div><h3>Sampler balance</h3><div id="sampler"><p class="note">Loading…</p></div></div></div>')


def _model(run: RunFolder) -> str:
    model = run.model
    if not model:
        return ""
    if model_not_sent(model):
        return ('<h2>Model</h2><p class="note">The trainer sent no model summary: pass '
                '<code>model=trainer_side.model_summary(net)</code> to <code>Emitter.run_start</code> '
                '(EmitterCallback sends it).</p>')
    rows = [(str(k), text(_short(v))) for k, v in sorted(model.items()) if k != "hparams"]
    hparams = model.get("hparams")
    if isinstance(hparams, dict):
        rows += [(f"hparams.{k}", text(_short(v))) for k, v in sorted(hparams.items())]
    return "<h2>Model</h2>" + key_value_table(rows)


def _dataset_section(run: RunFolder) -> str:
    if not run.dataset:
        return "<h2>Dataset</h2><p class=\"note\">The trainer sent no training targets: no class distribution.</p>"
    total = run.dataset.get("total", "—")
    return (f'<h2>Dataset</h2><p class="note">{text(total)} training samples by class '
            '(<a href="dataset_statistics.json">dataset_statistics.json</a>).</p><div id="dataset"></div>')


# --- data for the script ----------------------------------------------------------------------

def _epoch_entry(run: RunFolder, number: int) -> dict[str, Any]:
    folder = f"epoch_{number:03d}"
    files = [(f"{folder}/{name}", name) for name in run.epoch_files.get(number, [])]
    return {
        "epoch": number, "folder": folder,
        "figures": [{"src": href(f.path), "caption": f.caption} for f in run.epochs[number]],
        "files": [{"src": href(path), "name": name} for path, name in files],
        "data": href(f"{folder}/{EPOCH_DATA}") if number in run.epoch_data else None,
    }


def _dataset(dataset: dict[str, Any] | None) -> dict[str, Any] | None:
    classes = (dataset or {}).get("classes")
    if not isinstance(classes, list):
        return None
    rows = [[str(c.get("name", "")), str(c.get("index", "")), str(c.get("count", "")), str(c.get("percentage", ""))]
            for c in classes if isinstance(c, dict)]
    return {"columns": DATASET_COLUMNS, "rows": rows}


def _sampler(sampler: dict[str, Any] | None) -> dict[str, Any] | None:
    classes = (sampler or {}).get("classes")
    if not isinstance(classes, list):
        return None
    rows = [[str(c.get("name", "")), str(c.get("index", "")), str(c.get("sampled", "")), str(c.get("expected", "")),
             "" if c.get("ratio") is None else str(c.get("ratio"))] for c in classes if isinstance(c, dict)]
    return {"columns": SAMPLER_COLUMNS, "rows": rows, "draws": _count(sampler.get("draws"))}


def _figures(figures: list[Figure], empty: str = "") -> str:
    if not figures:
        return f'<p class="note">{text(empty)}</p>' if empty else ""
    return "".join(f'<figure><a href="{href(f.path)}"><img src="{href(f.path)}" alt="{text(f.caption)}"></a>'
                   f'<figcaption>{text(f.caption)}</figcaption></figure>' for f in figures)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _short(value: object) -> str:
    """A value for a table cell: floats with at most 6 significant digits, the rest as text."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return value if not math.isfinite(number) else f"{number:.6g}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
