"""The operator dashboard in a real browser (issue 13): headless Chromium driven by
Playwright against a whole running system with a small book (dashboard_book.py).

An operator signs in with a token and sees every panel filled; runs an end of day from the
page and watches it finish; claims and decides a review, and a maker-checker one with a
second officer; opens a loan by its id. A viewer sees no admin button and is refused (403)
by the routes behind them; a collector sees only their own cases. Screenshots go to
tests/artifacts/dashboard/ (or $LENDCORE_TEST_ARTIFACTS/dashboard/).

The browser is Debian's chromium (Playwright's own download needs a CDN the machines do not
reach): `apt-get install -y chromium` (.ci/run does it), or $LENDCORE_TEST_CHROMIUM. Without
any the module is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import RunningSystem, fresh_system
from dashboard_book import (
    COLLECTOR_TOKEN,
    OFFICER2_TOKEN,
    REVIEW_CONFIG,
    VIEWER_TOKEN,
    DemoBook,
    build,
)
from factories import ADMIN_TOKEN, ops_auth

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LENDCORE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
SHOTS = ARTIFACTS / "dashboard"
SEEDED_LOANS = 300
PANEL_TIMEOUT_MS = 20_000  # panels refresh every 2–10 s
EOD_TIMEOUT_MS = 90_000


def _chromium() -> str | None:
    configured = os.environ.get("LENDCORE_TEST_CHROMIUM")
    if configured:
        return configured
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


CHROMIUM = _chromium()
if CHROMIUM is None:
    pytest.skip("no Chromium found to drive the dashboard: install Debian's "
                "(`apt-get install -y chromium`, as .ci/run does) or set "
                "LENDCORE_TEST_CHROMIUM to a Chromium binary", allow_module_level=True)

from playwright.sync_api import (  # noqa: E402 - only once a browser is known to exist
    Browser,
    Page,
    expect,
    sync_playwright,
)


@pytest.fixture(scope="module")
def dashboard_system(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    config = tmp_path_factory.mktemp("dashboard") / "dashboard.toml"
    config.write_text(REVIEW_CONFIG, encoding="utf-8")
    with fresh_system(config) as running:
        yield running


@pytest.fixture(scope="module")
def book(dashboard_system: RunningSystem) -> DemoBook:
    system = dashboard_system.system
    return build(system.ops_url, system.api_url, loans=SEEDED_LOANS)


@pytest.fixture(scope="module")
def browser(book: DemoBook) -> Iterator[Browser]:
    """Started after the system and its book: Playwright's sync API keeps an event loop
    running on this thread while it is open, and the system's set-up and tear-down
    (conftest.create_database, drop_database) call asyncio.run."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def ops(dashboard_system: RunningSystem) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dashboard_system.system.ops_url, headers=ops_auth(),
                      timeout=30) as client:
        yield client


def sign_in(browser: Browser, system: RunningSystem, token: str) -> Page:
    """A new browser session signed in with `token` through the form."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.goto(f"{system.system.ops_url}/dashboard/")
    assert page.url.endswith("/dashboard/login"), page.url  # not signed in yet
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url("**/dashboard/")
    return page


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def csrf(page: Page) -> str:
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    assert token
    return token


def test_signing_in_shows_every_panel_filled_from_the_book(
    browser: Browser, dashboard_system: RunningSystem, book: DemoBook
) -> None:
    started = time.perf_counter()
    page = sign_in(browser, dashboard_system, ADMIN_TOKEN)
    expect(page.locator("#shards tbody tr")).to_have_count(16, timeout=PANEL_TIMEOUT_MS)
    expect(page.locator("#applications-by-status")).to_contain_text("approved")
    expect(page.locator("#buckets")).to_be_visible()
    expect(page.locator("#eod-status")).to_contain_text(f"{book.closed_date}: done")
    expect(page.locator("#reviews-table")).to_contain_text(book.single_decision_review)
    expect(page.locator("#collections-buckets")).to_contain_text("M")
    expect(page.locator("#cases-table")).to_contain_text(book.assigned_case)
    expect(page.locator("#blacklist-table")).to_contain_text("d-stolen-0001")
    loaded_s = time.perf_counter() - started

    expect(page.locator("#business-date")).to_have_text(book.business_date)
    expect(page.locator("#shards")).not_to_contain_text("reloading")
    expect(page.locator("#alerts")).to_contain_text("No alerts")
    # The day's activity of the book: 4 approved, booked and repaid, 3 declined, 2 in review.
    expect(page.locator("#today-applications")).to_have_text("9")
    expect(page.locator("#today-approved")).to_have_text("4")
    expect(page.locator("#today-disbursed")).to_have_text("4 · ¥40,000.00")
    expect(page.locator("#today-repayments")).to_contain_text("4 · ¥")
    expect(page.locator("#applications-by-status")).to_contain_text("declined")
    expect(page.locator("#applications-by-status")).to_contain_text("manual_review")
    expect(page.locator("#applications-by-reason")).to_contain_text("amount_review")
    expect(page.locator("#applications-by-reason")).to_contain_text("income_low")
    expect(page.locator("#close-open-loans")).to_have_text(f"{SEEDED_LOANS}")
    expect(page.locator("#classifications")).to_contain_text("special_mention")
    expect(page.locator("#book-balances")).to_contain_text("1101")
    # Charts need two samples of the counters (one every 5 s).
    expect(page.locator("#charts")).to_have_attribute("data-samples", re.compile(r"[1-9]"),
                                                       timeout=PANEL_TIMEOUT_MS)
    expect(page.locator("#chart-rps canvas")).to_have_count(1)

    # The token is in no URL, cookie or page: the session cookie is a random id.
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["lendcore_dashboard"], cookies
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict", cookies
    assert ADMIN_TOKEN not in cookies[0]["value"] and ADMIN_TOKEN not in page.url
    assert ADMIN_TOKEN not in page.content()
    shot(page, "01-overview")
    (SHOTS / "load.json").write_text(json.dumps(
        {"loans": SEEDED_LOANS, "sign_in_to_all_panels_s": round(loaded_s, 3)}))
    page.context.close()


def test_an_end_of_day_runs_from_the_page_and_shows_its_progress(
    browser: Browser, dashboard_system: RunningSystem, book: DemoBook, ops: httpx.Client
) -> None:
    today = ops.get("/ops/business-date").json()["business_date"]
    tomorrow = (date.fromisoformat(today) + timedelta(days=1)).isoformat()
    page = sign_in(browser, dashboard_system, ADMIN_TOKEN)
    asked: list[str] = []

    def confirm(dialog: object) -> None:
        asked.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", confirm)
    page.locator("#run-eod").click()
    expect(page.locator("#eod-launch")).to_contain_text(f"by admin for {today}")
    shot(page, "02-eod-started")
    expect(page.locator("#eod-status")).to_contain_text(f"{today}: done", timeout=EOD_TIMEOUT_MS)
    expect(page.locator("#eod-launch")).to_contain_text(f"business date now {tomorrow}",
                                                        timeout=EOD_TIMEOUT_MS)
    expect(page.locator("#eod-shards")).to_have_text("16 of 16 done")
    loans = page.locator("#eod-loans").inner_text()
    processed, _, total = loans.partition(" of ")
    assert processed == total and int(total.replace(",", "")) >= SEEDED_LOANS, loans
    expect(page.locator("#business-date")).to_have_text(tomorrow, timeout=PANEL_TIMEOUT_MS)
    shot(page, "03-eod-done")
    assert asked and today in asked[0], asked  # the confirmation named the date it closes

    assert ops.get("/ops/business-date").json()["business_date"] == tomorrow
    audit = ops.get("/ops/audit", params={"target": f"eod:{today}"}).json()["entries"]
    assert [(e["action"], e["actor"]) for e in audit] == [("eod.run", "admin")]
    page.context.close()


def test_a_review_is_claimed_and_decided_on_the_page(
    browser: Browser, dashboard_system: RunningSystem, book: DemoBook, ops: httpx.Client
) -> None:
    application_id = book.single_decision_review
    page = sign_in(browser, dashboard_system, ADMIN_TOKEN)
    row = page.locator(f'[id="review-{application_id}"]')
    row.locator(".claim-button").click()
    expect(page.locator("#reviews-message")).to_contain_text(f"{application_id}: claimed")
    expect(row).to_contain_text("admin")
    row.locator('select[name="decision"]').select_option("approve")
    row.locator('input[name="reasons"]').fill("income_verified")
    row.locator('input[name="note"]').fill("payslips checked")
    shot(page, "04-review-claimed")
    row.locator(".decide-button").click()
    expect(page.locator("#reviews-message")).to_contain_text(
        f"{application_id}: approved (final)")
    expect(row).to_have_count(0)

    decided = ops.get(f"/ops/applications/{application_id}").json()
    assert decided["status"] == "approved", decided
    audit = ops.get("/ops/audit", params={"target": f"application:{application_id}"})
    assert [(e["action"], e["actor"]) for e in audit.json()["entries"]] == [
        ("review.claim", "admin"), ("review.maker_decision", "admin")]
    page.context.close()


def test_maker_checker_needs_a_second_officer_on_the_page(
    browser: Browser, dashboard_system: RunningSystem, book: DemoBook, ops: httpx.Client
) -> None:
    application_id = book.maker_checker_review
    selector = f'[id="review-{application_id}"]'
    maker = sign_in(browser, dashboard_system, ADMIN_TOKEN)
    maker.locator(selector).locator(".claim-button").click()
    expect(maker.locator("#reviews-message")).to_contain_text("claimed")
    maker.locator(selector).locator(".decide-button").click()  # approve is preselected
    expect(maker.locator("#reviews-message")).to_contain_text("another officer must confirm")
    expect(maker.locator(selector)).to_contain_text("your proposal")
    expect(maker.locator(selector)).to_contain_text("awaiting_confirmation")
    shot(maker, "05-maker-proposal")

    checker = sign_in(browser, dashboard_system, OFFICER2_TOKEN)
    expect(checker.locator(selector)).to_contain_text("admin proposes approve",
                                                      timeout=PANEL_TIMEOUT_MS)
    checker.locator(selector).locator(".claim-button").click()
    expect(checker.locator("#reviews-message")).to_contain_text("claimed")
    checker.locator(selector).locator(".decide-button").click()
    expect(checker.locator("#reviews-message")).to_contain_text("approved (final)")
    shot(checker, "06-checker-confirmed")
    assert ops.get(f"/ops/applications/{application_id}").json()["status"] == "approved"
    maker.context.close()
    checker.context.close()


def test_a_loan_opens_by_its_id_with_schedule_repayments_journal_and_trace(
    browser: Browser, dashboard_system: RunningSystem, book: DemoBook
) -> None:
    page = sign_in(browser, dashboard_system, ADMIN_TOKEN)
    page.fill("#search-id", book.loan_id)
    page.press("#search-id", "Enter")
    page.wait_for_url(f"**/dashboard/loans/{book.loan_id}")
    expect(page.locator("#loan h2")).to_have_text(f"Loan {book.loan_id}")
    expect(page.locator("#schedule tbody tr")).to_have_count(12)  # CASH_EI_12
    expect(page.locator("#repayments tbody tr")).to_have_count(1)
    expect(page.locator("#journal")).to_contain_text("disbursement")
    expect(page.locator("#journal")).to_contain_text("repayment")
    expect(page.locator("#trace-stages")).to_contain_text("admission")
    expect(page.locator("#application-status")).to_have_text("approved")
    shot(page, "07-loan")
    page.context.close()


def test_a_viewer_sees_no_admin_button_and_is_refused_behind_them(
    browser: Browser, dashboard_system: RunningSystem, book: DemoBook
) -> None:
    page = sign_in(browser, dashboard_system, VIEWER_TOKEN)
    expect(page.locator("#shards tbody tr")).to_have_count(16, timeout=PANEL_TIMEOUT_MS)
    expect(page.locator("#eod-status")).to_be_visible()
    expect(page.locator("#business-section")).to_be_visible()
    for hidden in ("#run-eod", "#reviews-section", "#blacklist-section",
                   "#collections-section", "#cases-section"):
        expect(page.locator(hidden)).to_have_count(0)
    shot(page, "08-viewer")

    ops_url = dashboard_system.system.ops_url
    headers = {"X-CSRF-Token": csrf(page), "HX-Request": "true"}
    refused = [
        page.request.post(f"{ops_url}/dashboard/eod/run", headers=headers,
                          form={"business_date": book.business_date}),
        page.request.post(f"{ops_url}/dashboard/reviews/{book.maker_checker_review}/claim",
                          headers=headers),
        page.request.post(f"{ops_url}/dashboard/blacklist", headers=headers,
                          form={"kind": "device", "value": "d-1", "reason": "r"}),
        page.request.get(f"{ops_url}/dashboard/panels/reviews", headers=headers),
    ]
    assert [r.status for r in refused] == [403, 403, 403, 403]
    assert all("forbidden" in r.text() for r in refused)
    page.context.close()


def test_a_collector_sees_only_their_own_cases(
    browser: Browser, dashboard_system: RunningSystem, book: DemoBook
) -> None:
    page = sign_in(browser, dashboard_system, COLLECTOR_TOKEN)
    expect(page.locator("#cases-table tbody tr")).to_have_count(1, timeout=PANEL_TIMEOUT_MS)
    expect(page.locator("#cases-table")).to_contain_text(book.assigned_case)
    for hidden in ("#cluster-section", "#business-section", "#eod-section",
                   "#reviews-section", "#collections-section", "#search-id"):
        expect(page.locator(hidden)).to_have_count(0)
    shot(page, "09-collector")
    page.context.close()
