"""Untrusted run ids and class names: never a path outside `--out` (or the spool folder), always printed
as literal, single-line text.

Messages are built by the real emitter (spool only, no socket) and fed through the monitor's intake and
pipeline with the inline renderer, as `monitor replay` does; then the whole temporary folder is walked.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path, PurePosixPath

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from monitor.outputs.console import MonitorConsole
from monitor.ingest.intake import Intake
from monitor.folders import run_dir
from monitor.ingest.logbook import LogBook
from monitor.pipeline import Pipeline
from monitor.outputs.render.tables import TABLE_NAME_MAX_CHARS, TABLE_WIDTH
from monitor.outputs.render.pool import InlineRenderer
from trainer_side import protocol
from trainer_side.emitter import Emitter
from trainer_side.msglog import iter_frames
from trainer_side.names import safe_component

SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# What must never reach a terminal or a text file from data: C0/C1 controls (ANSI escapes start with
# ESC), bidi overrides and isolates, NUL, and the zero-width characters that hide text.
UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

HOSTILE_RUN_IDS = [
    "../escape", "../../../../../../tmp/escape-from-out", "/etc/passwd", "a/b/c", "..", ".", "...", ".hidden",
    "nul\x00byte", "back\\slash", "C:\\Windows\\win.ini", "~", "$HOME", "-rf", "line\nbreak", "tab\there",
    "\uff0e\uff0e\uff0fwide", "\u2215division-slash", "%2e%2e%2f", "\u202eexe.txt", "\U0001F600" * 50,
    "e\u0301" * 30, "[bold red]markup[/]", ":smile:", "x" * protocol.MAX_RUN_ID_LENGTH, " ", "index.html", "INDEX.html",
]
SCREEN_RUN_IDS = ["esc\x1b[2J\x1b[31mred", "bell\x07cr\rback\x08", "\u202eRTL override", "c1\x9bcontrol"]
CLASS_NAMES = ["[bold red]boom[/]", "esc\x1b[2J\x1b[31mred", "\u202eRTL", "nul\x00byte", "new\nline", "tab\tstop",
               "\U0001F600 emoji", "e\u0301 combining", "$\\frac{1}{0}$", "x" * 5000, "../../etc/passwd", "plain"]
METRIC = "[bold]val/evil\x1b[0m"


# -------------------------------------------------------------------------------------- safe_component


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(name=st.text(st.characters(exclude_categories=()), max_size=300))  # lone surrogates included
def test_safe_component_is_one_harmless_path_component(name):
    component = safe_component(name)
    assert SAFE.fullmatch(component), component
    assert len(component.encode()) <= 255  # NAME_MAX
    parent = PurePosixPath("/out")
    assert (parent / component).parent == parent and os.path.normpath(parent / component) == str(parent / component)
    assert safe_component(name) == component
    assert component == name or re.search(r"-[0-9a-f]{8}$", component)  # changed names carry a hash


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(a=st.text(max_size=120), b=st.text(max_size=120))
def test_different_names_never_share_a_folder(a, b):
    if a != b:
        assert safe_component(a) != safe_component(b)


def test_names_that_only_look_alike_get_their_own_folders():
    names = ["a/b", "a_b", "a\\b", "a b", "A/B", "\uff41/b", "..", ".", "", "x" * 200, "x" * 201]
    assert len({safe_component(n) for n in names}) == len(names)


# ------------------------------------------------------------------------------------- through a run


def emit_run(spool: Path, run: str, *, full: bool) -> None:
    """One run through the real emitter, spooled to disk; `full` adds a whole epoch that renders."""
    emitter = Emitter(None, run=run, spool=spool)
    classes = len(CLASS_NAMES)
    targets = (np.arange(3 * classes) % classes).astype(np.uint8)
    assert emitter.run_start(
        CLASS_NAMES, normalization={"mean": [0.5], "std": [0.25]},
        model={"class": "[red]Net\x1b[0m\u202e", "total_params": 10, "trainable_params": 10, "size_mb": 0.1},
        train_targets=targets, hparams={"[b]lr": "\x1b[2J"},
        sampler={"type": "TrackingWeightedRandomSampler", "num_samples": 3 * classes,
                 "weights_per_class": np.full(classes, 3.0)})
    if full:
        labels = np.arange(classes, dtype=np.uint8)
        emitter.preds(0, preds=np.roll(labels, 1), labels=labels, step=3)
        emitter.samples(0, images=np.full((4, 8, 8, 3), 200, np.uint8), labels=labels[:4], preds=labels[1:5])
        emitter.sampled(0, np.arange(3 * classes, dtype=np.uint32))
        emitter.metrics(0, "val", {"val/loss": 0.5, METRIC: 1.0}, step=3)
        emitter.epoch_end(0)
    emitter.run_end("failed", error="boom\x1b[2J [red]x[/]\u202e")
    emitter.close()


def monitor_spools(spool: Path, out: Path, terminal: Console | None = None) -> tuple[Intake, Pipeline]:
    logbook = LogBook(out)
    intake = Intake(logbook)
    pipeline = Pipeline(out, InlineRenderer(), MonitorConsole(terminal, fresh=True))
    for log in sorted(spool.rglob("*.mlog")):
        for frame in iter_frames(log):
            message = intake.accept(frame)
            if message is not None:
                pipeline.handle(message, len(frame))
    pipeline.finish()
    logbook.close()
    return intake, pipeline


def every_file(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        found += [Path(root) / name for name in dirs + files]
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every hostile run id through emitter spool and monitor, run from inside the temporary folder."""
    tmp = tmp_path_factory.mktemp("hostile")
    absolute = str(tmp / "abs-target")
    runs = HOSTILE_RUN_IDS + [absolute]
    previous = os.getcwd()
    os.chdir(tmp / ".")  # a relative path that escaped would land here, where the walk below sees it
    try:
        emit_run(tmp / "spool", "[bold red]full run[/] ../x", full=True)
        for run in runs:
            emit_run(tmp / "spool", run, full=False)
        intake, pipeline = monitor_spools(tmp / "spool", tmp / "out")
    finally:
        os.chdir(previous)
    return tmp, ["[bold red]full run[/] ../x", *runs], intake, pipeline


@pytest.mark.slow
def test_nothing_is_written_outside_out_or_the_spool_folder(hostile):
    tmp, runs, intake, pipeline = hostile
    assert sum(intake.rejected.values()) == 0 and sum(pipeline.rejected.values()) == 0
    components = {safe_component(run) for run in runs}
    folders = {run_dir(tmp / "out", run).name for run in runs}  # components, but never "index.html"
    assert len(components) == len(runs) and len(folders) == len(runs) and not {"index.html", "INDEX.html"} & folders
    assert {p.name for p in tmp.iterdir()} == {"out", "spool"}
    for path in every_file(tmp):
        assert not path.is_symlink(), path
        relative = path.relative_to(tmp).parts
        assert relative[0] in ("out", "spool")
        if len(relative) > 1:
            assert relative[1] in (components if relative[0] == "spool" else folders | {"index.html"}), path
    assert {p.name for p in (tmp / "out").iterdir()} == folders | {"index.html"}  # the report's runs index
    assert {p.name for p in (tmp / "spool").iterdir()} == components
    for run in runs:
        assert [p.name for p in (tmp / "spool" / safe_component(run)).iterdir()] == ["rank0.mlog"]
        folder = run_dir(tmp / "out", run)
        assert folder.parent == tmp / "out"
        assert {"messages.mlog", "labels_mapping.json", "console.txt"} <= {p.name for p in folder.iterdir()}
        # the id is kept as data, exactly
        assert {protocol.decode(f).run for f in iter_frames(folder / "messages.mlog")} == {run}
    assert not Path(runs[-1]).exists() and not Path("/tmp/escape-from-out").exists()


def test_class_names_are_kept_exactly_as_data(hostile):
    tmp, runs, _, _ = hostile
    folder = run_dir(tmp / "out", runs[0])
    mapping = json.loads((folder / "labels_mapping.json").read_text())
    assert [mapping["idx_to_class"][str(i)] for i in range(len(CLASS_NAMES))] == CLASS_NAMES
    with open(folder / "epoch_000" / "confusion_matrix.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == CLASS_NAMES and [row[0] for row in rows[1:]] == CLASS_NAMES
    for png in ("epoch_000/confusion_matrix.png", "epoch_000/sample_predictions.png",
                "training_history/loss_history.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png  # drawn despite the names


def table_lines(console_txt: str) -> list[str]:
    return [line for line in console_txt.splitlines() if line[:1] and line[0] in "┏┃┡│├└┗┣━─"]


def test_tables_print_names_literally_on_one_line(hostile):
    tmp, runs, _, _ = hostile
    text = (run_dir(tmp / "out", runs[0]) / "console.txt").read_text(encoding="utf-8")
    lines = table_lines(text)
    for line in lines:
        assert not UNSAFE_CHARS.search(line), repr(line)
        assert len(line) <= TABLE_WIDTH, line
    rows = [line for line in lines if line.startswith("│")]
    # markup and emoji codes print as typed; controls and bidi overrides become U+FFFD; a newline or
    # tab inside a name becomes a space, so each class keeps exactly one row per table.
    expected = ["[bold red]boom[/]", "esc\ufffd[2J\ufffd[31mred", "\ufffdRTL", "nul\ufffdbyte", "new line",
                "tab stop", "\U0001F600 emoji", "e\u0301 combining", "$\\frac{1}{0}$",
                "x" * (TABLE_NAME_MAX_CHARS - 1) + "…", "../../etc/passwd", "plain"]
    for table in ("Dataset Class Distribution", "Sampler Distribution — epoch 0"):
        block = text.split(table, 1)[1]
        names = [re.match(r"│ (.*?) +│", row).group(1) for row in
                 [line for line in table_lines(block) if line.startswith("│")][:len(CLASS_NAMES)]]
        assert names == expected, table
    model_class = next(row for row in rows if row.startswith("│ Model class"))
    assert model_class.split("│")[2].strip() == "[red]Net\ufffd[0m\ufffd"
    metric = next(row for row in rows if "val/evil" in row)
    assert metric.split("│")[1].strip() == "[bold]val/evil\ufffd[0m"


def test_run_lines_in_console_txt_and_on_the_terminal_are_neutralized_too(tmp_path):
    """The tables are safe; the plain lines of console.txt ("run <id>: ...", the run-end line with the
    trainer's error) and the terminal notes embed the raw run id and error text. Fails until they go
    through the same neutralizing as the tables (pipeline.py / console.py)."""
    terminal = io.StringIO()
    for run in SCREEN_RUN_IDS:
        emit_run(tmp_path / "spool", run, full=False)
    monitor_spools(tmp_path / "spool", tmp_path / "out",
                   Console(file=terminal, color_system=None, force_terminal=False, width=TABLE_WIDTH))
    texts = [(run_dir(tmp_path / "out", run) / "console.txt").read_text(encoding="utf-8") for run in SCREEN_RUN_IDS]
    unsafe = [line for text in [*texts, terminal.getvalue()] for line in text.splitlines() if UNSAFE_CHARS.search(line)]
    assert unsafe == []


# ----------------------------------------------------------------------------------- ids the wire refuses


def test_run_ids_over_200_characters_are_refused_at_both_ends(tmp_path):
    with pytest.raises(ValueError, match="at most 200 characters"):
        Emitter(None, run="x" * 201, spool=tmp_path / "spool")
    logbook = LogBook(tmp_path / "out")
    intake = Intake(logbook)
    for run in ("x" * 201, "\U0001F600" * 201, "../" * 100):
        body = {"epoch": 0, "sent": 0, "dropped": 0}
        frame = protocol.encode(protocol.make_message("epoch_end", run, 0, 1, 0, body, time=0.0))
        assert intake.accept(frame) is None
    assert intake.rejected == {"field": 3}
    assert intake.accept(protocol.encode(protocol.make_message("epoch_end", "y" * 200, 0, 1, 0, body, time=0.0)))
    logbook.close()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [safe_component("y" * 200)]
    assert len(safe_component("y" * 200)) < 100


def test_lone_surrogates_cannot_travel(tmp_path, caplog):
    # msgpack str is UTF-8: a lone surrogate cannot be encoded, so the emitter goes quiet (and says so
    # once) rather than raising into training ...
    emitter = Emitter(None, run="surrogate-run", spool=tmp_path / "spool")
    assert emitter.run_start(["ok", "bad\ud800"]) is False
    assert emitter.metrics(0, "val", {"val/loss": 1.0}) is False
    emitter.close()
    assert "monitoring turned off" in caplog.text
    # ... and a foreign sender's surrogate bytes (CESU-8) are a malformed frame, logged nowhere.
    frame = msgpack.packb({"v": [1, 0], "kind": "epoch_end", "run": "?", "rank": 0, "world": 1, "seq": 0,
                           "time": 0.0, "epoch": 0, "sent": 0, "dropped": 0}, use_bin_type=True)
    frame = frame.replace(b"\xa1?", b"\xa3\xed\xa0\x80")
    intake = Intake(LogBook(tmp_path / "out"))
    assert intake.accept(frame) is None and intake.rejected == {"malformed": 1}
    assert not (tmp_path / "out").exists()


def test_readable_ids_keep_readable_folders():
    assert safe_component("run-20261126-181512-a3f9") == "run-20261126-181512-a3f9"  # the emitter's own ids
    assert re.fullmatch(r"cafe-run-[0-9a-f]{8}", safe_component("café-run"))  # accents folded, hash added


def test_inspect_prints_run_ids_and_rejection_reasons_safely(tmp_path, capfd, monkeypatch):
    from monitor.cli import main
    from trainer_side.msglog import LogWriter

    monkeypatch.setenv("COLUMNS", "250")
    run = "esc\x1b[2J\u202e[bold]id[/]"
    body = {"epoch": 0, "stage": "val", "step": 0, "values": {"val/loss": 1.0}}
    with LogWriter(tmp_path / "hostile.mlog") as log:
        log.append(protocol.encode(protocol.make_message("metrics", run, 0, 1, 0, body, time=0.0)))
        bad = {**body, "values": {"\x1b[31mkey\u202e": "not a number"}}  # the key shows up in the reason
        log.append(protocol.encode(protocol.make_message("metrics", "other", 0, 1, 0, bad, time=0.0)))
    assert main(["inspect", str(tmp_path / "hostile.mlog")]) == 0
    out = capfd.readouterr().out
    assert [line for line in out.splitlines() if UNSAFE_CHARS.search(line)] == []
    assert "esc\ufffd[2J\ufffd[bold]id[/]" in out  # markup literal, controls visible as U+FFFD
    assert re.search(r"field\s*│\s*1\s*│.*\ufffd\[31mkey\ufffd", out)  # reason, count, first example
