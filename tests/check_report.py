"""Checks the report pages under an output folder in headless Chromium, as the browser test does, and
can save a screenshot: `python tests/check_report.py outputs [--screenshot docs/images/report.png]`.
After `make demo`, this is the browser test run on the demo's own pages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from browser import check_index, check_run_page, open_browser, show_epoch, skip_reason  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the monitor's output folder")
    parser.add_argument("--screenshot", type=Path, help="save the first run's page here (PNG)")
    parser.add_argument("--run", help="the run folder to screenshot (default: the first)")
    args = parser.parse_args(argv)
    if skip_reason() is not None:
        print(f"check_report: {skip_reason()}", file=sys.stderr)
        return 2
    with open_browser() as browser:
        page = browser.page()
        page.goto((args.out / "index.html").resolve().as_uri())
        runs = check_index(page, args.out)
        folders = sorted(p.parent for p in args.out.glob("*/index.html"))
        for folder in folders:
            page.goto((folder / "index.html").resolve().as_uri())
            check_run_page(page, folder)
        if args.screenshot is not None:
            folder = args.out / args.run if args.run else folders[0]
            page.goto((folder / "index.html").resolve().as_uri())
            epochs = page.eval_on_selector_all("#epoch-select option", "os => os.map(o => o.value)")
            show_epoch(page, int(epochs[-1]))
            page.evaluate("document.getElementById('epochs').scrollIntoView()")
            page.wait_for_timeout(200)
            page.screenshot(path=str(args.screenshot), full_page=False)
        if browser.problems:
            print("check_report: " + "\n".join(browser.problems), file=sys.stderr)
            return 1
    print(f"check_report: {len(runs)} run(s) listed, {len(folders)} run page(s) checked in Chromium: no errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
