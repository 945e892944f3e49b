"""What a run folder holds, read back for the report pages: the run's JSON and CSV files and which
figures exist. Reading only, no HTML; a missing or damaged file reads as absent."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# An epoch's figures, in the order the page shows them, with their captions; each only where its file
# exists. Other PNGs in the epoch folder follow under their file names.
EPOCH_FIGURES: tuple[tuple[str, str], ...] = (
    ("confusion_matrix.png", "Confusion matrix (counts)"),
    ("confusion_matrix_normalized.png", "Confusion matrix, row-normalized (recall of each true class)"),
    ("confusion_matrix_top.png", "Most confused classes"),
    ("reliability_diagram.png", "Reliability diagram (calibration)"),
    ("sample_predictions.png", "Validation samples (green right, red wrong)"),
    ("misclassified.png", "Hardest mistakes (most confident wrong predictions)"),
)
# An epoch's data files the page links to, each where it exists (the whole confusion matrix or, above
# 1,000 classes, its nonzero cells).
EPOCH_FILES = ("per_class_metrics.csv", "top_confusions.csv", "confusion_matrix.csv", "confusion_matrix_cells.csv",
               "sampler_distribution.json")
HISTORY_FIGURES = ("loss_history.png", "accuracy_history.png")  # first; other training_history PNGs follow
_EPOCH_DIR = re.compile(r"epoch_(\d{3,})")


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the run folder, with "/" separators
    caption: str


@dataclass(frozen=True)
class RunFolder:
    """One run's folder as the page shows it. `folder` is its name under --out (a safe path part)."""

    folder: str
    summary: dict[str, Any]
    labels: dict[str, Any] | None
    model: dict[str, Any] | None
    dataset: dict[str, Any] | None
    history: list[dict[str, str]]  # history.csv rows, as text
    history_figures: list[Figure]
    epochs: dict[int, list[Figure]]  # epoch -> its figures that exist
    epoch_files: dict[int, list[str]] = field(default_factory=dict)  # epoch -> its EPOCH_FILES that exist
    epoch_data: list[int] = field(default_factory=list)  # epochs whose report data file exists
    dataset_data: bool = False  # whether DATASET_DATA exists

    @property
    def run(self) -> str:
        return str(self.summary.get("run", self.folder))

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))


@dataclass(frozen=True)
class EpochTables:
    """One epoch's tables for the page: per-class metrics (classes, then the averages), top
    confusions (first `limit` rows) and the sampler's draws (None without a tracking sampler)."""

    epoch: int
    per_class: list[list[str]]
    averages: list[list[str]]
    confusions: list[list[str]]
    confusion_rows: int
    sampler: dict[str, Any] | None


def read_run(folder: Path, *, figures: bool = True) -> RunFolder | None:
    """The run in `folder`; None when it holds no summary.json (not a run folder, or not yet one).
    `figures=False` reads only summary.json and history.csv (what the runs index needs)."""
    summary = _json(folder / "summary.json")
    if not isinstance(summary, dict):
        return None
    if not figures:
        return RunFolder(folder=folder.name, summary=summary, labels=None, model=None, dataset=None,
                         history=read_history(folder / "history.csv"), history_figures=[], epochs={})
    epochs, files = {}, {}
    for number, path in epoch_folders(folder):
        epochs[number] = epoch_figures(path, f"epoch_{number:03d}")
        files[number] = [name for name in EPOCH_FILES if (path / name).is_file()]
    history_dir = folder / "training_history"
    present = sorted(p.name for p in history_dir.glob("*.png")) if history_dir.is_dir() else []
    ordered = [n for n in HISTORY_FIGURES if n in present] + [n for n in present if n not in HISTORY_FIGURES]
    return RunFolder(
        folder=folder.name, summary=summary, labels=_dict(folder / "labels_mapping.json"),
        model=_dict(folder / "model_info.json"), dataset=_dict(folder / "dataset_statistics.json"),
        history=read_history(folder / "history.csv"),
        history_figures=[Figure(f"training_history/{n}", _title(n)) for n in ordered], epochs=epochs,
        epoch_files=files,
        epoch_data=[n for n, path in epoch_folders(folder) if (path / EPOCH_DATA).is_file()],
        dataset_data=(folder / DATASET_DATA).is_file())


EPOCH_DATA = "report_data.js"  # each epoch folder's tables for the page, loaded when that epoch is shown
DATASET_DATA = "report_dataset.js"  # the run's class distribution for the page, loaded with it


def epoch_folders(folder: Path) -> list[tuple[int, Path]]:
    """The run's epoch_NNN folders, by epoch."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_DIR.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def epoch_figures(path: Path, prefix: str) -> list[Figure]:
    """The figures in one epoch folder: the known ones in EPOCH_FIGURES order, then any other PNG."""
    present = {p.name for p in path.glob("*.png")}
    known = [Figure(f"{prefix}/{name}", caption) for name, caption in EPOCH_FIGURES if name in present]
    names = {name for name, _ in EPOCH_FIGURES}
    return known + [Figure(f"{prefix}/{name}", _title(name)) for name in sorted(present - names)]


def read_epoch(path: Path, number: int, *, confusion_limit: int) -> EpochTables:
    """One epoch folder's tables (missing files read as empty tables)."""
    per_class, averages = [], []
    for row in _csv_rows(path / "per_class_metrics.csv"):
        (per_class if row.get("index", "") != "" else averages).append(
            [row.get(k, "") for k in ("class", "index", "precision", "recall", "f1", "support")])
    confusions, total = [], 0
    for row in _csv_rows(path / "top_confusions.csv"):
        total += 1
        if len(confusions) < confusion_limit:
            confusions.append([row.get(k, "") for k in ("true", "pred", "count", "share_of_true")])
    sampler = _dict(path / "sampler_distribution.json")
    return EpochTables(number, per_class, averages, confusions, total, sampler)


def read_history(path: Path) -> list[dict[str, str]]:
    return list(_csv_rows(path))


def history_series(rows: list[dict[str, str]], column: str) -> list[tuple[int, float]]:
    """(epoch, value) for each history row with a finite value in `column`."""
    series = []
    for row in rows:
        try:
            epoch, value = int(row["epoch"]), float(row.get(column) or "nan")
        except (KeyError, ValueError):
            continue
        if math.isfinite(value):
            series.append((epoch, value))
    return series


def _csv_rows(path: Path):  # type: ignore[no-untyped-def]
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as file:
            yield from csv.DictReader(file)
    except (OSError, csv.Error):
        return


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None


def _dict(path: Path) -> dict[str, Any] | None:
    value = _json(path)
    return value if isinstance(value, dict) else None


def _title(name: str) -> str:
    return name.rsplit(".", 1)[0].replace("_", " ").capitalize()
