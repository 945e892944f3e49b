"""Headless Chromium for the report tests (Debian's `chromium` package, driven by playwright).

`skip_reason()` says why no browser can run here (None when one can); `open_browser()` starts one
with a fresh profile and nothing that reaches the network, and every page it opens records its
console errors, page errors, failed requests and dialogs in `problems`. `check_run_page` and
`check_index` are the checks the test and tests/check_report.py run on an open page.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from monitor.outputs.report.page import MAX_TABLE_ROWS

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


class Browser:
    """One Chromium; `page()` opens a tab whose problems are appended to `problems`."""

    def __init__(self, context) -> None:  # type: ignore[no-untyped-def]
        self.context = context
        self.problems: list[str] = []

    def page(self, width: int = 1280, height: int = 900):  # type: ignore[no-untyped-def]
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"))
        page.on("dialog", lambda d: (self.problems.append(f"dialog opened: {d.message}"), d.dismiss()))
        return page


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="report-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=ARGS)
            try:
                yield Browser(context)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def broken_images(page) -> list[str]:  # type: ignore[no-untyped-def]
    """The src of every <img> on the page that has not loaded (after waiting for them to settle)."""
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page.evaluate("Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")


def table_rows(page, holder: str) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """The body rows of the table in element #`holder`, as shown."""
    return page.evaluate(f"""Array.from(document.querySelectorAll('#{holder} tbody tr'))
                             .map(tr => Array.from(tr.cells).map(td => td.textContent.trim()))""")


def show_epoch(page, epoch: int) -> None:  # type: ignore[no-untyped-def]
    page.select_option("#epoch-select", str(epoch))
    page.wait_for_selector(f"body[data-shown-epoch='{epoch}']")


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as file:
        return list(csv.reader(file))[1:]


def check_run_page(page, folder: Path) -> None:  # type: ignore[no-untyped-def]
    """On an open run page: every image loads; the last epoch is shown with its per-class rows as in
    its CSV; choosing the first epoch switches the figures and the table; headers sort."""
    epochs = [int(v) for v in page.eval_on_selector_all("#epoch-select option", "os => os.map(o => o.value)")]
    last, first = epochs[-1], epochs[0]
    page.wait_for_selector(f"body[data-shown-epoch='{last}']")
    assert broken_images(page) == []
    assert page.get_attribute("#epoch-figures img", "src").endswith(f"epoch_{last:03d}/confusion_matrix.png")
    assert table_rows(page, "per-class") == _classes(folder, last)[:MAX_TABLE_ROWS]

    show_epoch(page, first)
    assert page.evaluate("document.querySelector('#epoch-figures img').src").endswith(
        f"epoch_{first:03d}/confusion_matrix.png")
    assert broken_images(page) == [] and page.evaluate(
        "Array.from(document.querySelectorAll('#epoch-figures img')).every(i => i.naturalWidth > 0)")
    rows = _classes(folder, first)
    shown = MAX_TABLE_ROWS  # a table shows this many rows of its sort order
    assert table_rows(page, "per-class") == rows[:shown]

    page.click("#per-class th:text-is('recall')")
    assert table_rows(page, "per-class") == sorted(rows, key=lambda r: float(r[3]))[:shown]
    page.click("#per-class th:text-is('recall')")
    assert table_rows(page, "per-class") == sorted(rows, key=lambda r: float(r[3]), reverse=True)[:shown]
    page.click("#per-class th:text-is('class')")
    assert table_rows(page, "per-class") == sorted(rows, key=lambda r: r[0])[:shown]
    dataset = folder / "dataset_statistics.json"
    if dataset.is_file():
        page.wait_for_selector("#dataset tbody tr")
        names = [c["name"] for c in json.loads(dataset.read_text())["classes"]]
        assert [row[0] for row in table_rows(page, "dataset")] == names[:MAX_TABLE_ROWS]
    if page.locator("#sampler th").count():
        page.click("#sampler th:text-is('ratio')")
        cells = [r[4] for r in table_rows(page, "sampler")]
        ratios = [float(c) for c in cells if c]
        assert ratios == sorted(ratios) and ratios
        assert cells == [c for c in cells if c] + [c for c in cells if not c]  # blank ratios (nothing expected) last


def check_index(page, out: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """On the open runs index: no broken image, one link and one line per overlay per run; returns
    the runs' names as shown."""
    assert broken_images(page) == []
    runs = page.locator("tbody a").all_inner_texts()
    assert page.locator("svg.overlay").count() >= 1
    assert page.locator("svg.overlay").first.locator("polyline").count() == len(runs)
    return runs


def _classes(folder: Path, epoch: int) -> list[list[str]]:
    return [row[:6] for row in csv_rows(folder / f"epoch_{epoch:03d}" / "per_class_metrics.csv") if row[1] != ""]
