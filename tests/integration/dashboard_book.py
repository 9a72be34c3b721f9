"""A book that fills every panel of the operator dashboard, built through the public APIs
of a running system: seeded loans closed by one end of day (buckets, classification,
collection cases), then on the new business date applications of every outcome, booked and
repaid loans, two applications waiting for review (one decision, and maker-checker), a
blacklist entry and a case assigned to a collector.

Used by tests/integration/test_dashboard_browser.py and by dashboard_shots.py (the
screenshots of docs/dashboard.md). The review amounts need the `[review]` settings of
REVIEW_CONFIG (a single decision up to 7,000,000 fen, maker-checker above).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from typing import Any

import httpx
from factories import ADMIN_TOKEN, app_body, book, fresh_id, ops_auth, repay, submit

from loadtests.client import PartnerClient

SINGLE_DECISION_AMOUNT = 6_000_000  # in review (amount_review > 5,000,000), one decision
MAKER_CHECKER_AMOUNT = 8_000_000  # in review, above maker_checker_amount_over
REVIEW_INCOME = 2_000_000  # a limit that covers both amounts
LOW_INCOME = 300_000  # declined: income_low
BAD_CREDIT_SEQUENCE = 950  # ID sequence 900–999: a bad credit file (sandbox)
COLLECTOR = "collector1"

# Layered over config/default.toml: the review amounts above, withholdings, and one
# operator per kind of work (a --config that lists [[operators]] replaces the whole list).
REVIEW_CONFIG = """
[review]
maker_checker_amount_over = 7000000

# Every withholding declined: the overdue loans stay overdue, so the collection cases the
# page shows stay open across an end of day (a collected withholding cures its loan).
[outbox]
payment_decline_per_mille = 1000

[[operators]]
name = "admin"
token = "dev-admin-token-change-me"
roles = ["admin", "operator", "risk_officer", "viewer"]

[[operators]]
name = "officer2"
token = "dashboard-officer2-token"
roles = ["risk_officer"]

[[operators]]
name = "viewer1"
token = "dashboard-viewer1-token"
roles = ["viewer"]

[[operators]]
name = "collector1"
token = "dashboard-collector1-token"
roles = ["collector"]
"""
OFFICER2_TOKEN = "dashboard-officer2-token"
VIEWER_TOKEN = "dashboard-viewer1-token"
COLLECTOR_TOKEN = "dashboard-collector1-token"


@dataclass(frozen=True)
class DemoBook:
    seeded_loans: int
    closed_date: str  # the date the set-up's end of day closed
    business_date: str  # the date the dashboard shows (the activity's)
    loan_id: str  # booked and repaid today
    single_decision_review: str  # application ids waiting in the review queue
    maker_checker_review: str
    assigned_case: str


def build(ops_url: str, api_url: str, *, loans: int, token: str = ADMIN_TOKEN) -> DemoBook:
    with httpx.Client(base_url=ops_url, headers=ops_auth(token), timeout=900) as ops, \
            closing(PartnerClient(api_url)) as partner:
        if loans:  # 0: the book is already seeded
            _ok(ops.post("/ops/seed", json={"loans": loans}))
        closed = _ok(ops.post("/ops/eod", json={}))
        loan_id = _loans_booked_and_repaid(partner, count=4)
        for income in (LOW_INCOME, LOW_INCOME):
            submit(partner, app_body(income=income))
        submit(partner, app_body(id_no=fresh_id(sequence=BAD_CREDIT_SEQUENCE)))
        single = _in_review(partner, SINGLE_DECISION_AMOUNT)
        double = _in_review(partner, MAKER_CHECKER_AMOUNT)
        _ok(ops.post("/ops/blacklist", json={"kind": "device", "value": "d-stolen-0001",
                                            "reason": "device reported stolen"}))
        # The queue's order, most overdue first, is the dashboard's: the first free case of
        # the whole queue is on the cases panel's first page (a case of one bucket need not
        # be, when the seed made loans further overdue).
        cases = _ok(ops.get("/ops/collections/cases", params={"limit": 50}))["cases"]
        case = next(c for c in cases if c["assignee"] is None)
        _ok(ops.post(f"/ops/collections/cases/{case['case_id']}/assign",
                     json={"assignee": f"collector:{COLLECTOR}"}))
        return DemoBook(loans, closed["business_date"], closed["next_business_date"], loan_id,
                        single, double, case["case_id"])


def _loans_booked_and_repaid(partner: PartnerClient, count: int) -> str:
    """`count` new loans, each paying its first installment; the last one's id."""
    loan_id = ""
    for _ in range(count):
        application = submit(partner, app_body(amount=1_000_000))
        assert application["status"] == "approved", application
        booked = book(partner, application["application_id"])
        assert booked.status_code == 201, booked.text
        loan = booked.json()
        paid = repay(partner, loan["loan_id"], loan["schedule"][0]["total"])
        assert paid.status_code == 201, paid.text
        loan_id = loan["loan_id"]
    return loan_id


def _in_review(partner: PartnerClient, amount: int) -> str:
    application = submit(partner, app_body(amount=amount, income=REVIEW_INCOME))
    assert application["status"] == "manual_review", application
    application_id: str = application["application_id"]
    return application_id


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, f"{response.request.url}: {response.text}"
    answer: dict[str, Any] = response.json()
    return answer
