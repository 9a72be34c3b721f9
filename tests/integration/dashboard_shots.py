"""Screenshots and load times of the operator dashboard against a running system: the
pictures of docs/dashboard.md and the figures of its "Load time" section.

    ./lendcore up --config my.toml                                  # any running system
    ./lendcore seed --loans 100000 --ops-url http://127.0.0.1:8081  # a big book
    cd tests/integration && ../../.venv/bin/python dashboard_shots.py \\
        --ops-url http://127.0.0.1:8081 --api-url http://127.0.0.1:8080 --book --run-eod \\
        --out ../../docs/img

`--book` first adds the activity of dashboard_book.py (an end of day, applications of each
outcome, reviews, a blacklist entry, an assigned case) without seeding more loans; the
system needs dashboard_book.REVIEW_CONFIG's operators (its viewer signs in for the last
picture). `--run-eod` last runs an end of day with the page's button and pictures its panel
while the shards work. Prints the timings as JSON on stdout. Not a test: nothing here
asserts a target.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from dashboard_book import VIEWER_TOKEN, build
from factories import ADMIN_TOKEN
from playwright.sync_api import Browser, Page, sync_playwright

FRAGMENTS = ("header", "cluster", "business", "eod", "reviews", "collections", "cases",
             "blacklist")
PANELS_FILLED = ("#shards tbody tr", "#today", "#eod-status", "#reviews-table",
                 "#collections-buckets", "#cases-table", "#blacklist-table")
SECTIONS = ("cluster", "business", "eod", "reviews", "collections", "cases", "blacklist")
ROUNDS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops-url", required=True)
    parser.add_argument("--api-url", default="")
    parser.add_argument("--book", action="store_true", help="add dashboard_book's activity")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-eod", action="store_true",
                        help="also run an end of day from the page, pictured while it runs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    if args.book:
        build(args.ops_url, args.api_url, loans=0)
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"fragments_ms": fragment_times(args.ops_url)}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
        figures["page_load_s"] = page_loads(browser, args.ops_url)
        figures["loan_id"] = pictures(browser, args.ops_url, args.out)
        if args.run_eod:
            figures["eod_from_the_page_s"] = eod_from_the_page(browser, args.ops_url, args.out)
        browser.close()
    print(json.dumps(figures, indent=2))


def fragment_times(ops_url: str) -> dict[str, float]:
    """Median server time of each panel's fragment over ROUNDS requests, in ms."""
    with httpx.Client(base_url=ops_url, timeout=60) as http:
        http.post("/dashboard/login", data={"token": ADMIN_TOKEN})
        times: dict[str, float] = {}
        for name in FRAGMENTS:
            samples = []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                answer = http.get(f"/dashboard/panels/{name}", headers={"HX-Request": "true"})
                samples.append(1000 * (time.perf_counter() - started))
                answer.raise_for_status()
            times[name] = round(statistics.median(samples), 1)
        return times


def page_loads(browser: Browser, ops_url: str) -> dict[str, float]:
    """Sign-in to every panel filled, ROUNDS times, in s (a new browser session each)."""
    loads = []
    for _ in range(ROUNDS):
        page = sign_in(browser, ops_url, ADMIN_TOKEN)
        started = time.perf_counter()
        page.reload()
        for selector in PANELS_FILLED:
            page.wait_for_selector(selector, timeout=60_000)
        loads.append(time.perf_counter() - started)
        page.context.close()
    return {"median": round(statistics.median(loads), 3), "max": round(max(loads), 3)}


def pictures(browser: Browser, ops_url: str, out: Path) -> str:
    page = sign_in(browser, ops_url, ADMIN_TOKEN)
    for selector in PANELS_FILLED:
        page.wait_for_selector(selector, timeout=60_000)
    page.wait_for_selector('#charts[data-samples]', timeout=60_000)
    time.sleep(1)  # the last chart draw
    page.screenshot(path=str(out / "dashboard-overview.png"), full_page=True)
    for section in SECTIONS:
        page.locator(f"#{section}-section").screenshot(path=str(out / f"dashboard-{section}.png"))
    loan_link = page.locator("#cases-table a").first
    loan_id = loan_link.inner_text()
    page.fill("#search-id", loan_id)
    page.press("#search-id", "Enter")
    page.wait_for_selector("#schedule")
    page.screenshot(path=str(out / "dashboard-loan.png"), full_page=True)
    page.context.close()
    viewer = sign_in(browser, ops_url, VIEWER_TOKEN)
    viewer.wait_for_selector("#eod-status")
    viewer.wait_for_selector("#today")
    viewer.screenshot(path=str(out / "dashboard-viewer.png"), full_page=True)
    viewer.context.close()
    return loan_id


def eod_from_the_page(browser: Browser, ops_url: str, out: Path) -> float:
    """Run end of day with the button; picture the panel while shards are still working;
    the seconds from the click to the panel saying done."""
    page = sign_in(browser, ops_url, ADMIN_TOKEN)
    page.on("dialog", lambda dialog: dialog.accept())
    day = page.locator("#eod-business-date").inner_text()
    started = time.perf_counter()
    page.locator("#run-eod").click()
    while f"{day}: done" not in page.locator("#eod-status").inner_text():
        running = f"{day}: running" in page.locator("#eod-status").inner_text()
        if running and not page.locator("#eod-loans").inner_text().startswith("0 of"):
            # The last picture taken while shards are still working is the one kept.
            page.locator("#eod-section").screenshot(path=str(out / "dashboard-eod-running.png"))
        time.sleep(0.2)
    took = time.perf_counter() - started
    page.locator("#eod-section").screenshot(path=str(out / "dashboard-eod-done.png"))
    page.context.close()
    return round(took, 2)


def sign_in(browser: Browser, ops_url: str, token: str) -> Page:
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.goto(f"{ops_url}/dashboard/login")
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url(re.compile(r".*/dashboard/$"))
    return page


if __name__ == "__main__":
    main()
