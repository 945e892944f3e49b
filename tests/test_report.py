"""The HTML report: escaping, contents checked against the files they come from, determinism, the
offline `monitor report`, and the read-only HTTP server. The browser test is test_report_browser.py."""

from __future__ import annotations

import csv
import json
import re
import urllib.error
import urllib.request
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.ingest.endpoint import BindError, check_http
from monitor.folders import run_dir
from monitor.outputs.report.folder import DATASET_DATA, EPOCH_DATA, epoch_figures, read_run
from monitor.outputs.report.http import ReportServer
from monitor.outputs.report.index import index_page, run_entry
from monitor.outputs.report.page import run_page
from monitor.outputs.report.writer import Reports
from report_runs import HOSTILE_CLASS, HOSTILE_RUN, replay_into, write_spool
from trainer_side.msglog import iter_frames
from trainer_side.protocol import decode


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside each script element."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        self._in_script = False

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if self._in_script:
            self.scripts[-1] += data


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three replayed runs, one with markup in its run id and a class name: (out, {run: log})."""
    root = tmp_path_factory.mktemp("sweep")
    logs = {}
    for seed, run in enumerate([HOSTILE_RUN, "lr-0.001", "lr-0.01"]):
        logs[run] = write_spool(root / f"spool{seed}", run, seed=seed, skill=0.3 + 0.2 * seed)
    out = root / "out"
    replay_into(out, [log for run_logs in logs.values() for log in run_logs])
    return out, logs


@pytest.mark.slow
def test_markup_in_run_ids_and_class_names_is_text_on_the_page_never_markup(sweep):
    out, _ = sweep
    for page in (out / "index.html", run_dir(out, HOSTILE_RUN) / "index.html"):
        html = page.read_text()
        elements = parse(html)
        # Only the page's own scripts: no element came from a name.
        scripts = [attrs for tag, attrs in elements.tags if tag == "script"]
        assert len(scripts) <= 2 and all(not attrs or attrs == {"type": "application/json", "id": "report-data"}
                                         for attrs in scripts), scripts
        assert "<script>alert" not in html and "alert('c')</script>" not in html
        assert "&lt;script&gt;alert(&quot;r&quot;)&lt;/script&gt;&amp;&#x27;x&#x27;" in html
    html = (run_dir(out, HOSTILE_RUN) / "index.html").read_text()
    data = json.loads(parse(html).scripts[0])  # the page's data survives its escaping whole
    assert data["dataset"] == DATASET_DATA and "<" not in parse(html).scripts[0]
    # The data files hold the names whole, with no character that could end a script or start markup.
    dataset = (run_dir(out, HOSTILE_RUN) / DATASET_DATA).read_text()
    epoch_data = (run_dir(out, HOSTILE_RUN) / "epoch_002" / EPOCH_DATA).read_text()
    assert not set("<>&") & set(dataset + epoch_data)
    assert HOSTILE_CLASS in [row[0] for row in json.loads(dataset[len("reportDataset("):-len(");\n")])["rows"]]
    tables = json.loads(epoch_data[len("reportEpoch("):-len(");\n")])
    assert HOSTILE_CLASS in [row[0] for row in tables["per_class"]["rows"]]


def test_the_index_lists_every_run_with_its_best_accuracy_epochs_and_last_message_time(sweep):
    out, logs = sweep
    html = (out / "index.html").read_text()
    links = [attrs["href"] for tag, attrs in parse(html).tags if tag == "a"]
    assert links == [f"{run_dir(out, run).name}/index.html" for run in sorted(logs, key=lambda r: run_dir(out, r).name)]
    for run, run_logs in logs.items():
        with open(run_dir(out, run) / "history.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        accuracy = [float(row["val/acc_top1"]) for row in rows]
        best_epoch = accuracy.index(max(accuracy))
        last = max(decode(frame).time for log in run_logs for frame in iter_frames(log))
        stamp = datetime.fromtimestamp(last, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        row = re.search(rf'<a href="{re.escape(run_dir(out, run).name)}/index.html">.*?</tr>', html).group(0)
        assert f"{max(accuracy):.4f} (epoch {best_epoch})" in row
        assert f'<td class="num">{len(rows)}</td>' in row and stamp in row and "completed" in row


def test_the_overlay_draws_one_line_per_run_with_a_point_per_epoch(sweep):
    out, logs = sweep
    html = (out / "index.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 2  # val/acc_top1 and val/loss
    for svg in svgs:
        lines = re.findall(r'<polyline points="([^"]*)"', svg)
        assert len(lines) == len(logs) and all(len(points.split()) == 3 for points in lines)
    # Higher accuracy is drawn higher (smaller y): each run's last point orders as its accuracy does.
    finals = []
    for run in sorted(logs, key=lambda r: run_dir(out, r).name):
        with open(run_dir(out, run) / "history.csv", newline="") as file:
            finals.append(float(list(csv.DictReader(file))[-1]["val/acc_top1"]))
    last_y = [float(points.split()[-1].split(",")[1]) for points in re.findall(r'<polyline points="([^"]*)"', svgs[0])]
    assert sorted(range(3), key=lambda i: finals[i]) == sorted(range(3), key=lambda i: -last_y[i])


def test_a_run_page_lists_each_epochs_figures_and_loads_each_epochs_tables_from_its_own_file(sweep):
    out, _ = sweep
    folder = run_dir(out, "lr-0.001")
    data = json.loads(parse((folder / "index.html").read_text()).scripts[0])
    assert [e["epoch"] for e in data["epochs"]] == [0, 1, 2] and data["selected"] == 2 and data["live"] is False
    for entry in data["epochs"]:
        assert [f["src"] for f in entry["figures"]] == [f"{entry['folder']}/confusion_matrix.png",
                                                       f"{entry['folder']}/confusion_matrix_normalized.png",
                                                       f"{entry['folder']}/sample_predictions.png"]
        assert [f["name"] for f in entry["files"]] == ["per_class_metrics.csv", "top_confusions.csv",
                                                      "confusion_matrix.csv", "sampler_distribution.json"]
        assert entry["data"] == f"{entry['folder']}/{EPOCH_DATA}"
        script = (folder / entry["data"]).read_text()
        tables = json.loads(script[len("reportEpoch("):-len(");\n")])
        with open(folder / entry["folder"] / "per_class_metrics.csv", newline="") as file:
            rows = list(csv.reader(file))[1:]
        assert tables["per_class"]["rows"] + tables["per_class"]["footer"] == rows
        sampler = json.loads((folder / entry["folder"] / "sampler_distribution.json").read_text())
        assert [int(r[2]) for r in tables["sampler"]["rows"]] == [c["sampled"] for c in sampler["classes"]]


def test_figures_of_an_epoch_are_the_known_ones_in_order_then_any_other_png(tmp_path):
    for name in ("sample_predictions.png", "zz_new.png", "misclassified.png", "confusion_matrix_normalized.png",
                 "confusion_matrix.png", "reliability_diagram.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [(f.path, f.caption.split(" ")[0]) for f in epoch_figures(tmp_path, "epoch_004")] == [
        ("epoch_004/confusion_matrix.png", "Confusion"), ("epoch_004/confusion_matrix_normalized.png", "Confusion"),
        ("epoch_004/reliability_diagram.png", "Reliability"), ("epoch_004/sample_predictions.png", "Validation"),
        ("epoch_004/misclassified.png", "Hardest"), ("epoch_004/zz_new.png", "Zz")]


def test_a_running_run_reloads_itself_and_a_finished_one_does_not(sweep, tmp_path):
    out, _ = sweep
    run = read_run(run_dir(out, "lr-0.01"))
    assert "location.reload" not in index_page([run_entry(run)])
    assert json.loads(parse(run_page(run)).scripts[0])["live"] is False
    running = type(run)(**{**run.__dict__, "summary": {**run.summary, "status": "running"}})
    assert "location.reload" in index_page([run_entry(running)])
    assert json.loads(parse(run_page(running)).scripts[0])["live"] is True


@pytest.mark.slow
def test_replaying_a_log_twice_writes_the_same_pages_byte_for_byte(sweep, tmp_path):
    out, logs = sweep
    again = tmp_path / "again"
    replay_into(again, [log for run_logs in logs.values() for log in run_logs])
    for page in [Path("index.html"), *(p.relative_to(out) for p in out.glob("*/index.html")),
                 *(p.relative_to(out) for p in out.glob(f"*/{DATASET_DATA}")),
                 *(p.relative_to(out) for p in out.glob(f"*/epoch_*/{EPOCH_DATA}"))]:
        assert (again / page).read_bytes() == (out / page).read_bytes(), page


@pytest.mark.slow
def test_monitor_report_without_logs_rebuilds_the_pages_replay_wrote(sweep, tmp_path, capsys):
    out, logs = sweep
    copy = tmp_path / "copy"
    replay_into(copy, [log for run_logs in logs.values() for log in run_logs])
    pages = [p for p in copy.rglob("*") if p.name in ("index.html", EPOCH_DATA, DATASET_DATA)]
    before = {p: p.read_bytes() for p in pages}
    for page in pages:
        page.unlink()
    assert main(["report", "--out", str(copy)]) == 0
    assert "3 run(s)" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in pages} == before


@pytest.mark.slow
def test_monitor_report_with_logs_replays_them_and_writes_the_pages(sweep, tmp_path, capsys):
    _, logs = sweep
    assert main(["report", *map(str, logs["lr-0.01"]), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "r" / "lr-0.01" / "index.html").is_file()
    assert main(["report", "--out", str(tmp_path / "empty")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_pages_are_replaced_whole_never_written_in_place(sweep, tmp_path, monkeypatch):
    import os

    out, _ = sweep
    renamed: list[str] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(dst).name), real(src, dst)))
    written = Reports(out).write_all()
    assert written == 3 and renamed.count("index.html") == 4 and renamed.count(EPOCH_DATA) == 9
    assert renamed.count(DATASET_DATA) == 3
    assert not [p for p in out.rglob(".*.tmp")]


def test_serve_writes_the_pages_a_replay_of_its_logs_writes_and_serves_them_over_http(tmp_path):
    from conftest import MonitorProcess, free_port, wait_for

    port = free_port()
    out = tmp_path / "out"
    monitor = MonitorProcess(out, "--http", f"127.0.0.1:{port}", "--render-priority", "normal")
    try:
        for seed, run in enumerate(["served-a", HOSTILE_RUN]):
            write_spool(tmp_path / f"spool{seed}", run, seed=seed, endpoint=monitor.endpoint)
        wait_for(lambda: all(_status(run_dir(out, run)) == "completed" for run in ["served-a", HOSTILE_RUN]),
                 "both runs completed", 60)
        status, body, _ = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"served-a/index.html" in body
        assert _get(f"http://127.0.0.1:{port}/served-a/epoch_002/{EPOCH_DATA}")[0] == 200
        assert monitor.stop() == 0, monitor.output()
    finally:
        monitor.kill()
    assert f"report pages at http://127.0.0.1:{port}/" in monitor.output()
    replay_into(tmp_path / "replayed", [run_dir(out, run) / "messages.mlog" for run in ["served-a", HOSTILE_RUN]])
    pages = [p.relative_to(out) for p in out.rglob("*") if p.name in ("index.html", EPOCH_DATA, DATASET_DATA)]
    assert len(pages) == 1 + 2 * (1 + 1 + 3)
    for page in pages:
        assert (tmp_path / "replayed" / page).read_bytes() == (out / page).read_bytes(), page


def _status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "summary.json").read_text())["status"]
    except (OSError, ValueError):
        return None


def test_a_page_is_rewritten_only_when_its_summary_changed_or_an_epoch_was_drawn(sweep, tmp_path, monkeypatch):
    import monitor.outputs.report.writer as writer_module

    out, _ = sweep
    folder = run_dir(out, "lr-0.01")
    written: list[str] = []
    real = writer_module.write_text
    monkeypatch.setattr(writer_module, "write_text", lambda path, text: (written.append(path.name), real(path, text)))
    reports, summary = Reports(out, every_s=0.0), json.loads((folder / "summary.json").read_text())
    reports.write_run(folder, summary)
    reports.write_run(folder, dict(summary))
    assert written.count("index.html") == 2  # the run's page and the index, once
    reports.drawn(folder, 2)
    reports.write_run(folder, dict(summary))
    assert written.count("index.html") == 4 and written.count(EPOCH_DATA) == 1
    reports.write_run(folder, {**summary, "status": "running"})
    assert written.count("index.html") == 6


# --- HTTP --------------------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["0.0.0.0:8765", "192.168.1.4:80", "[::]:8765", "example.com:80"])
def test_http_refuses_a_non_loopback_address_without_allow_remote(address):
    with pytest.raises(BindError, match="--allow-remote"):
        check_http(address, allow_remote=False)
    assert check_http(address, allow_remote=True)[1] in (8765, 80)


@pytest.mark.parametrize("address", ["8765", "127.0.0.1", "127.0.0.1:x", ":80", "127.0.0.1:70000"])
def test_http_refuses_an_address_without_host_and_port(address):
    with pytest.raises(BindError, match="HOST:PORT"):
        check_http(address, allow_remote=False)


def test_serve_http_checks_its_address_before_starting(capfd):
    assert main(["serve", "--http", "0.0.0.0:8765"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--allow-remote" in err


@pytest.fixture
def pages(sweep):
    out, _ = sweep
    (out.parent / "secret.txt").write_text("outside")
    server = ReportServer("127.0.0.1", 0, out).start()
    yield server.url, out
    server.close()


def _get(url: str, method: str = "GET") -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, b"", dict(error.headers)


def test_the_http_server_serves_the_pages_and_files_under_out(pages):
    url, out = pages
    status, body, headers = _get(url)
    assert status == 200 and body == (out / "index.html").read_bytes() and headers["Cache-Control"] == "no-cache"
    status, body, _ = _get(url + "lr-0.001/epoch_001/confusion_matrix.png")
    assert status == 200 and body == (out / "lr-0.001" / "epoch_001" / "confusion_matrix.png").read_bytes()
    assert _get(url + "lr-0.001/index.html", "HEAD")[0] == 200


@pytest.mark.parametrize("path", ["../secret.txt", "%2e%2e/secret.txt", "lr-0.001/../../secret.txt", "lr-0.001/epoch_000/",
                                  ".monitor/stats.json", "lr-0.001/.index.html.tmp", "nothing.html"])
def test_the_http_server_gives_nothing_outside_out_no_hidden_file_and_no_listing(pages, path):
    url, out = pages
    assert (out / ".monitor" / "stats.json").is_file() and (out.parent / "secret.txt").is_file()
    assert _get(url + path)[0] == 404


def test_the_http_server_refuses_every_method_but_get_and_head(pages):
    url, _ = pages
    for method in ("POST", "PUT", "DELETE"):
        assert _get(url + "index.html", method)[0] == 501
