"""The run page's sample-level section (protocol 1.3 ids): each epoch's changes against the one
before with the test result in words, the label suspects, the per-sample history (paged) and the
data map. Pure builders from the run folder's files to text; the tables' rows travel in
`report_samples.js`, loaded with the page, so the page does not grow with the validation set."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.outputs.report.html import href, script_json, text

SAMPLES_DATA = "report_samples.js"
# per_sample.csv rows carried into the page's data (by id); the file holds them all.
PAGE_SAMPLE_ROWS = 10_000
RUN_FILES = ("per_sample.csv", "label_suspects.csv", "data_map.csv")
RUN_FIGURES = (("label_suspects.png", "Label suspects: given label vs the model's"),
               ("data_map.png", "Data map (Dataset Cartography) of the training set"))
PER_SAMPLE_COLUMNS = [{"name": "id", "number": True}, {"name": "name"}, {"name": "label"}, {"name": "last pred"},
                      {"name": "last confidence", "number": True}, {"name": "epochs seen", "number": True},
                      {"name": "epochs correct", "number": True}, {"name": "forgetting events", "number": True},
                      {"name": "first correct epoch", "number": True}]
SUSPECT_COLUMNS = [{"name": "id", "number": True}, {"name": "name"}, {"name": "label"},
                   {"name": "suspected label"}, {"name": "epochs wrong", "number": True},
                   {"name": "mean P(label)", "number": True}, {"name": "score", "number": True}]
_EPOCH_DIR = re.compile(r"epoch_(\d{3,})")


@dataclass(frozen=True)
class SampleFiles:
    """What a run folder holds of the sample-level analysis."""

    changes: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> its changes.json
    files: list[str] = field(default_factory=list)  # RUN_FILES and RUN_FIGURES present
    data: bool = False  # whether SAMPLES_DATA exists
    missing: str | None = None  # summary.json's sample_ids_missing


def read_sample_files(folder: Path, summary: dict[str, Any]) -> SampleFiles:
    changes = {}
    if folder.is_dir():
        for path in folder.iterdir():
            m = _EPOCH_DIR.fullmatch(path.name)
            if m:
                value = _json(path / "changes.json")
                if isinstance(value, dict):
                    changes[int(m.group(1))] = value
    names = [name for name in RUN_FILES + tuple(n for n, _ in RUN_FIGURES) if (folder / name).is_file()]
    missing = summary.get("sample_ids_missing")
    return SampleFiles(dict(sorted(changes.items())), names, (folder / SAMPLES_DATA).is_file(),
                       missing if isinstance(missing, str) else None)


def samples_section(samples: SampleFiles) -> str:
    """The section's HTML ("" for a run with neither sample files nor a reason for their absence)."""
    if samples.missing and not samples.files:
        return f'<h2>Samples</h2><p class="note">No sample-level analysis: {text(samples.missing)}.</p>'
    if not samples.files and not samples.changes:
        return ""
    html = "<h2 id=\"samples\">Samples</h2>" + _changes(samples.changes)
    figures = "".join(f'<figure><a href="{href(name)}"><img src="{href(name)}" alt="{text(caption)}"></a>'
                      f'<figcaption>{text(caption)}</figcaption></figure>'
                      for name, caption in RUN_FIGURES if name in samples.files)
    if "label_suspects.csv" in samples.files:
        html += ('<h3>Label suspects</h3><p class="note">Samples the model keeps predicting as another class '
                 "while giving their label a low probability, most suspect first (score: share of epochs wrong × "
                 "(1 − mean probability of the given label)).</p>")
    if figures:
        html += f'<div class="figures">{figures}</div>'
    if "label_suspects.csv" in samples.files:
        html += '<div id="suspects"><p class="note">Loading…</p></div>'
    if "per_sample.csv" in samples.files:
        html += ('<h3>Per-sample history</h3><p class="note">Forgetting events: right at one epoch, wrong at the '
                 'next.</p><div id="per-sample"><p class="note">Loading…</p></div>')
    links = ", ".join(f'<a href="{href(name)}">{text(name)}</a>' for name in RUN_FILES if name in samples.files)
    return html + (f'<p class="note">Files: {links}.</p>' if links else "")


def _changes(changes: dict[int, dict[str, Any]]) -> str:
    if not changes:
        return ""
    rows = []
    for epoch, c in changes.items():
        ci = c.get("ci95")
        interval = (f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"
                    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci) else "—")
        rows.append(f'<tr><td class="num">{text(epoch)}</td><td class="num">{text(c.get("previous_epoch", ""))}</td>'
                    f'<td class="num">{text(c.get("n_paired", ""))}</td><td class="num">'
                    f'{text(c.get("newly_correct", ""))}</td><td class="num">{text(c.get("newly_wrong", ""))}</td>'
                    f'<td class="num">{interval}</td><td>{text(c.get("verdict", ""))}</td>'
                    f'<td><a href="{href(f"epoch_{epoch:03d}/changes.csv")}">changes.csv</a></td></tr>')
    return ("<h3>Changes between epochs</h3><p class=\"note\">The same samples at two epochs: an exact McNemar "
            "test on the samples that became right or wrong, and a paired bootstrap 95 % interval of the "
            "accuracy difference (points).</p><table><thead><tr><th class=\"num\">epoch</th><th class=\"num\">"
            "vs</th><th class=\"num\">paired</th><th class=\"num\">newly right</th><th class=\"num\">newly wrong"
            "</th><th class=\"num\">95 % interval</th><th>result</th><th>samples</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def samples_script(folder: Path) -> str | None:
    """The run's `report_samples.js`: its label suspects and the first PAGE_SAMPLE_ROWS samples;
    None without per_sample.csv."""
    per_sample = _rows(folder / "per_sample.csv", PAGE_SAMPLE_ROWS)
    if per_sample is None:
        return None
    data: dict[str, Any] = {"per_sample": {"columns": PER_SAMPLE_COLUMNS, "rows": per_sample}}
    suspects = _rows(folder / "label_suspects.csv", None)
    if suspects is not None:
        data["suspects"] = {"columns": SUSPECT_COLUMNS, "rows": suspects}
    return f"reportSamples({script_json(data)});\n"


def _rows(path: Path, limit: int | None) -> list[list[str]] | None:
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            rows = []
            for row in reader:
                if limit is not None and len(rows) >= limit:
                    break
                rows.append(row)
            return rows
    except (OSError, csv.Error):
        return None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
