"""`monitor compare`'s work: two run folders paired on sample id, and what it writes
(comparison.json, flipped.csv, comparison.html).

Each run is read from its run folder: class names from labels_mapping.json, the epoch's samples from
`epoch_NNN/predictions.npy` (monitor/outputs/sample_files.py), sample names from per_sample.csv. So a
live run folder, a replayed one and one copied off a report site all compare the same way.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.aggregates import paired
from monitor.aggregates.samples import EpochSamples
from monitor.outputs import sample_files
from monitor.outputs.render.save import write_json, write_text
from monitor.outputs.report.html import document, href, key_value_table, text

COMPARISON_FILE = "comparison.json"
COMPARISON_PAGE = "comparison.html"
FLIPPED_FILE = "flipped.csv"
# Paired samples must be at least this share of the smaller run's validation set.
MIN_COMMON_SHARE = 0.5
PAGE_FLIPPED_ROWS = 200
PAGE_CLASS_ROWS = 100
NO_IDS = "its trainer sent no sample ids (protocol before 1.3)"
_EPOCH_DIR = re.compile(r"epoch_(\d{3,})")


class CompareError(ValueError):
    """Two runs that cannot be compared, or a folder that is not a run: one line saying why."""


@dataclass(frozen=True)
class RunSamples:
    folder: Path
    run: str
    class_names: list[str]
    samples: EpochSamples

    def names(self, ids: np.ndarray) -> list[str]:
        """Sample names from the run's per_sample.csv; the id as text where it has none."""
        known = _read_names(self.folder)
        return [known.get(i, str(i)) for i in ids.tolist()]


def load_run(folder: Path, epoch: int | None = None) -> RunSamples:
    """A run folder's samples of `epoch` (default: the last epoch with a predictions.npy)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f"{folder} is not a folder; give a run folder (<out>/<run>)")
    labels = _read_json(folder / "labels_mapping.json")
    if not isinstance(labels, dict) or not isinstance(labels.get("idx_to_class"), dict):
        raise CompareError(f"{folder} is not a run folder (no readable labels_mapping.json); give <out>/<run>")
    mapping = labels["idx_to_class"]
    class_names = [str(mapping.get(str(i), i)) for i in range(len(mapping))]
    summary = _read_json(folder / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    run = str(summary.get("run", folder.name))
    with_ids = sorted(int(m.group(1)) for path in folder.iterdir()
                      if (m := _EPOCH_DIR.fullmatch(path.name)) and (path / sample_files.PREDICTIONS_FILE).is_file())
    if not with_ids:
        reason = summary.get("sample_ids_missing") or NO_IDS
        raise CompareError(f"run {run} ({folder}) has no epoch with sample ids: {reason}")
    if epoch is None:
        epoch = with_ids[-1]
    elif epoch not in with_ids:
        raise CompareError(f"run {run} has no sample ids for epoch {epoch}; epochs with them: "
                           f"{_epoch_list(with_ids)}")
    path = folder / f"epoch_{epoch:03d}" / sample_files.PREDICTIONS_FILE
    try:
        samples = sample_files.read_predictions(path, epoch)
    except sample_files.SampleFileError as exc:
        raise CompareError(str(exc)) from None
    return RunSamples(folder, run, class_names, samples)


def compare(a: RunSamples, b: RunSamples) -> tuple[dict, paired.Pairing]:
    """comparison.json's content (b against a) and the pairing; CompareError when the two runs were
    not validated on the same samples."""
    if a.class_names != b.class_names:
        raise CompareError(f"runs {a.run} and {b.run} have different classes ({len(a.class_names)} and "
                           f"{len(b.class_names)}, or other names): compare runs of the same task")
    pairing = paired.pair(a.samples, b.samples)
    if pairing.label_mismatches:
        first = int(pairing.a.ids[np.flatnonzero(pairing.a.labels != pairing.b.labels)[0]])
        raise CompareError(f"{pairing.label_mismatches:,} of the {pairing.n:,} sample ids the runs share have "
                           f"different labels (e.g. id {first}): they were validated on different samples")
    smaller = min(len(a.samples.ids), len(b.samples.ids))
    if pairing.n == 0 or pairing.n < MIN_COMMON_SHARE * smaller:
        raise CompareError(f"runs {a.run} and {b.run} share only {pairing.n:,} sample ids ({len(a.samples.ids):,} "
                           f"and {len(b.samples.ids):,} validated): too few to pair; were they validated on the "
                           "same dataset?")
    names = a.class_names
    result = paired.paired_accuracy(pairing)
    classes = np.unique(pairing.a.labels)
    f1_a = paired.macro_f1(pairing.a.labels, pairing.a.preds, classes, len(names))
    f1_b = paired.macro_f1(pairing.a.labels, pairing.b.preds, classes, len(names))
    per_class = paired.per_class_comparison(pairing)
    summary = {
        "run_a": a.run, "run_b": b.run, "epoch_a": a.samples.epoch, "epoch_b": b.samples.epoch,
        "n_paired": result.n_paired, "only_a": pairing.only_a, "only_b": pairing.only_b,
        "only_b_right": result.newly_correct, "only_a_right": result.newly_wrong,
        "accuracy_a": result.accuracy_a, "accuracy_b": result.accuracy_b, "accuracy_diff": result.accuracy_diff,
        "ci95": result.ci95, "mcnemar_p": result.mcnemar_p,
        "verdict": paired.verdict(result.accuracy_diff, result.mcnemar_p),
        "macro_f1_a": f1_a, "macro_f1_b": f1_b, "macro_f1_diff": f1_b - f1_a,
        "macro_f1_ci95": paired.macro_f1_diff_ci(pairing, len(names)),
        "per_class": [{"class": sample_files.class_name(names, c.index), "index": c.index, "support": c.support,
                       "recall_a": c.recall_a, "recall_b": c.recall_b, "diff": c.recall_b - c.recall_a,
                       "mcnemar_p": c.mcnemar_p, "holm_p": c.holm_p} for c in per_class],
        "confusion_pair_changes": sample_files.pair_changes_json(
            paired.confusion_pair_changes(pairing, len(names)), names, "a", "b"),
    }
    return summary, pairing


FLIPPED_HEADER = ["id", "name", "label", "pred_a", "confidence_a", "pred_b", "confidence_b", "change"]


def write_comparison(out: Path, a: RunSamples, b: RunSamples) -> dict:
    """comparison.json, flipped.csv and comparison.html in `out`; returns comparison.json's content."""
    summary, pairing = compare(a, b)
    columns = sample_files.flipped_columns(pairing, a.class_names, a.names, ("only_b_right", "only_a_right"))
    rows = [list(row) for row in zip(*columns)]
    write_json(out / COMPARISON_FILE, summary)
    sample_files.write_columns(out / FLIPPED_FILE, FLIPPED_HEADER, columns, sample_files.FLIPPED_TEXT)
    write_text(out / COMPARISON_PAGE, comparison_page(summary, rows))
    return summary


def comparison_page(summary: dict, flipped: list[list]) -> str:
    """The comparison as a page in the report's style: the verdict, the per-class recalls, the
    confusion pairs that changed and the first flipped samples."""
    a, b = summary["run_a"], summary["run_b"]

    def number(value, digits=4):
        return "—" if value is None else f"{value:.{digits}f}"

    def interval(ci):
        return "—" if ci is None else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] pts"

    overview = key_value_table([
        ("run A", f"{text(a)}, epoch {summary['epoch_a']}"), ("run B", f"{text(b)}, epoch {summary['epoch_b']}"),
        ("paired samples", f"{summary['n_paired']:,} (only in A: {summary['only_a']:,}, only in B: "
                           f"{summary['only_b']:,})"),
        ("accuracy A → B", f"{number(summary['accuracy_a'])} → {number(summary['accuracy_b'])}"),
        ("difference", text(summary["verdict"])), ("95 % interval (paired bootstrap)", interval(summary["ci95"])),
        ("right only in B / only in A", f"{summary['only_b_right']:,} / {summary['only_a_right']:,}"),
        ("macro F1 A → B", f"{number(summary['macro_f1_a'])} → {number(summary['macro_f1_b'])} "
                           f"({100 * summary['macro_f1_diff']:+.2f} pts, 95 % {interval(summary['macro_f1_ci95'])})"),
    ])
    classes = sorted(summary["per_class"], key=lambda c: (c["holm_p"], -abs(c["diff"]), c["index"]))
    class_rows = "".join(
        f"<tr><td>{text(c['class'])}</td><td class=\"num\">{c['support']:,}</td><td class=\"num\">"
        f"{c['recall_a']:.4f}</td><td class=\"num\">{c['recall_b']:.4f}</td><td class=\"num\">{100 * c['diff']:+.2f}"
        f"</td><td class=\"num\">{c['mcnemar_p']:.3g}</td><td class=\"num\">{c['holm_p']:.3g}</td></tr>"
        for c in classes[:PAGE_CLASS_ROWS])
    pair_rows = "".join(
        f"<tr><td>{text(c['true'])}</td><td>{text(c['pred'])}</td><td class=\"num\">{c['a']:,}</td>"
        f"<td class=\"num\">{c['b']:,}</td><td class=\"num\">{c['change']:+,}</td></tr>"
        for c in summary["confusion_pair_changes"])
    flipped_rows = "".join("<tr>" + "".join(f"<td>{text(cell)}</td>" for cell in row) + "</tr>"
                           for row in flipped[:PAGE_FLIPPED_ROWS])
    body = (
        f"<header><a href=\"../index.html\">&larr; all runs</a><h1>{text(a)} vs {text(b)}</h1>"
        "<span class=\"muted\">paired on sample id</span></header>"
        f"{overview}<p class=\"note\">Exact McNemar test on the samples right in one run only; a p below 0.05 "
        "reads as a real difference. Files: "
        f"<a href=\"{href(COMPARISON_FILE)}\">{COMPARISON_FILE}</a>, <a href=\"{href(FLIPPED_FILE)}\">"
        f"{FLIPPED_FILE}</a>.</p>"
        f"<h2>Per class</h2><p class=\"note\">Recall in each run, most significant first (Holm-adjusted p over "
        f"{len(classes):,} classes); at most {PAGE_CLASS_ROWS} shown.</p>"
        "<table><thead><tr><th>class</th><th class=\"num\">support</th><th class=\"num\">recall A</th>"
        "<th class=\"num\">recall B</th><th class=\"num\">diff (pts)</th><th class=\"num\">McNemar p</th>"
        f"<th class=\"num\">Holm p</th></tr></thead><tbody>{class_rows}</tbody></table>"
        "<h2>Confusions that changed most</h2>"
        + ("<table><thead><tr><th>true</th><th>predicted</th><th class=\"num\">A</th><th class=\"num\">B</th>"
           f"<th class=\"num\">change</th></tr></thead><tbody>{pair_rows}</tbody></table>" if pair_rows else
           "<p class=\"note\">No confusion count changed.</p>")
        + f"<h2>Samples whose prediction changed</h2><p class=\"note\">{len(flipped):,} in all"
        + (f", the first {PAGE_FLIPPED_ROWS} by id" if len(flipped) > PAGE_FLIPPED_ROWS else "")
        + f"; every one in {FLIPPED_FILE}.</p>"
        + ("<table><thead><tr>" + "".join(f"<th>{text(h)}</th>" for h in FLIPPED_HEADER)
           + f"</tr></thead><tbody>{flipped_rows}</tbody></table>" if flipped else ""))
    return document(f"{a} vs {b} — comparison", body)


def comparisons_under(out: Path) -> list[tuple[str, dict]]:
    """(folder name, comparison.json) of each comparison folder directly under `out`, by name."""
    found = []
    try:
        folders = sorted(out.iterdir())
    except OSError:
        return []
    for path in folders:
        if path.is_dir() and not path.name.startswith("."):
            summary = _read_json(path / COMPARISON_FILE)
            if isinstance(summary, dict) and "run_a" in summary:
                found.append((path.name, summary))
    return found


def _epoch_list(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs[:10])) + (f" and {len(epochs) - 10} more" if len(epochs) > 10 else "")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_names(folder: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    try:
        with open(folder / "per_sample.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                try:
                    names[int(row["id"])] = row["name"]
                except (KeyError, TypeError, ValueError):
                    continue
    except OSError:
        pass
    return names
