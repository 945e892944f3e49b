"""The report pages in a real browser (headless Chromium): no console or page error, every image
loads, the epoch selector switches the figures and tables, a column header sorts its table, both
from file:// and through `monitor serve --http`'s server. Skipped, with the reason, where no
Chromium or playwright is installed (.ci/run installs both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import broken_images, check_index, check_run_page, open_browser, skip_reason, table_rows
from monitor.folders import run_dir
from monitor.outputs.report.page import MAX_TABLE_ROWS
from monitor.outputs.report.http import ReportServer
from report_runs import HOSTILE_CLASS, HOSTILE_RUN, replay_into, write_spool

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    logs = []
    for seed, run in enumerate([HOSTILE_RUN, "lr-0.001", "lr-0.01"]):
        logs += write_spool(root / f"spool{seed}", run, seed=seed, skill=0.3 + 0.2 * seed)
    replay_into(root / "out", logs)
    return root / "out"


@pytest.fixture(scope="module")
def browser():
    with open_browser() as chromium:
        yield chromium


@pytest.fixture
def clean(browser):
    """The browser, with its problem list checked empty after the test."""
    browser.problems.clear()
    yield browser
    assert browser.problems == []


def test_a_run_page_opened_from_file_has_no_errors_loads_every_image_switches_epochs_and_sorts(out, clean):
    folder = run_dir(out, HOSTILE_RUN)
    page = clean.page()
    page.goto((folder / "index.html").as_uri())
    check_run_page(page, folder)
    assert HOSTILE_CLASS in [row[0] for row in table_rows(page, "per-class")]  # shown as text, not run
    page.close()


def test_the_runs_index_opened_from_file_links_every_run_and_draws_the_overlay(out, clean):
    page = clean.page()
    page.goto((out / "index.html").as_uri())
    assert check_index(page, out) == [HOSTILE_RUN, "lr-0.001", "lr-0.01"]  # by folder name
    assert page.locator("svg.overlay").count() == 2 and page.locator("svg.overlay polyline").count() == 6
    page.click("tbody a:text-is('lr-0.01')")
    page.wait_for_selector("body[data-shown-epoch='2']")
    assert page.url == (run_dir(out, "lr-0.01") / "index.html").as_uri()
    assert broken_images(page) == []
    page.close()


def test_the_pages_work_the_same_through_the_http_server(out, clean):
    server = ReportServer("127.0.0.1", 0, out).start()
    try:
        page = clean.page()
        page.goto(server.url)
        page.click("tbody a:text-is('lr-0.001')")
        check_run_page(page, run_dir(out, "lr-0.001"))
        page.reload()  # the chosen epoch is kept in the address
        page.wait_for_selector("body[data-shown-epoch='0']")
        page.close()
    finally:
        server.close()


def test_a_table_longer_than_the_page_shows_shows_the_first_rows_of_each_sort_order(tmp_path, clean):
    classes = [f"class {i:04d}" for i in range(MAX_TABLE_ROWS + 100)]
    replay_into(tmp_path / "out", write_spool(tmp_path / "spool", "wide", classes=classes, epochs=2))
    folder = run_dir(tmp_path / "out", "wide")
    page = clean.page()
    page.goto((folder / "index.html").as_uri())
    check_run_page(page, folder)  # every comparison there is with the first MAX_TABLE_ROWS rows
    assert page.locator("#per-class tbody tr").count() == MAX_TABLE_ROWS
    assert page.locator("text=Showing 1,000 of 1,100 rows").count() >= 1
    page.close()
