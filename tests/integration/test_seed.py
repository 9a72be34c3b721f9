"""Bulk seeding on the real system (POST /ops/seed, gateway/seeding.py): the seeded loans
are the partner `demo`'s and readable through the partner API, the books reconcile and
balance, one end of day closes every one of them; admin only; bounds refused with 400.

On a system of its own: the end of day advances the business date. Last, the README tour's
commands: `lendcore seed` then `lendcore eod`, whose summary shows real numbers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from conftest import RunningSystem, fresh_system
from factories import ADMIN_TOKEN, get_loan, ops_auth, reconciliation, trial_balance

from cluster import eod_cli, seed_cli

OFFICER_TOKEN = "dev-officer2-token-change-me"  # risk_officer only, not admin


@pytest.fixture(scope="module")
def seed_system(ray_cluster: None) -> Iterator[RunningSystem]:
    with fresh_system() as running:
        yield running


@pytest.fixture
def ops_client(seed_system: RunningSystem) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=seed_system.system.ops_url, timeout=120)
    yield client
    client.close()


def test_seed_then_end_of_day(seed_system: RunningSystem, ops_client: httpx.Client) -> None:
    response = ops_client.post("/ops/seed", json={"loans": 200}, headers=ops_auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["loans"] == 200 and body["seconds"] > 0 and body["partner_id"] == "demo"
    assert body["sample_loan_ids"]
    client = seed_system.client("demo")
    try:
        for loan_id in body["sample_loan_ids"]:
            loan = get_loan(client, loan_id)
            # a few seeded loans are delinquent (back-dated, never repaid)
            assert loan["loan_id"] == loan_id and loan["status"] in ("active", "overdue")
            assert (loan["status"] == "overdue") == (loan["dpd"] > 0)
            assert loan["outstanding"]["principal"] > 0
    finally:
        client.close()
    other = seed_system.client("demo2")
    try:
        assert other.get(f"/v1/loans/{body['sample_loan_ids'][0]}").status_code == 404
    finally:
        other.close()
    report = reconciliation(ops_client)
    assert report["reconciled"] and report["loans_checked"] >= 200, report
    trial_balance(ops_client)
    eod = ops_client.post("/ops/eod", json={}, headers=ops_auth())
    assert eod.status_code == 200, eod.text
    report = eod.json()
    assert report["loans_processed"] == 200
    # the seeded book exercises collections: cases for the delinquent loans, reminders for
    # installments falling due (no withholding: nothing is ever due on the 30th, as due
    # days are capped at the 28th)
    delinquent = sum(n for bucket, n in report["buckets"].items() if bucket != "C")
    assert report["collections"]["cases_opened"] == delinquent > 0
    assert report["reminders"]["planned"] > 0
    assert reconciliation(ops_client)["reconciled"]
    trial_balance(ops_client)


@pytest.mark.parametrize("body", [{"loans": 0}, {"loans": 10_000_001}, {"loans": "5"},
                                  {"loans": True}, {}, {"loans": 5, "x": 1}])
def test_bounds_are_400(ops_client: httpx.Client, body: dict[str, object]) -> None:
    response = ops_client.post("/ops/seed", json=body, headers=ops_auth())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_admin_only(ops_client: httpx.Client) -> None:
    assert ops_client.post("/ops/seed", json={"loans": 1}).status_code == 401
    assert ops_client.post("/ops/seed", json={"loans": 1},
                           headers=ops_auth("nope")).status_code == 401
    assert ops_client.post("/ops/seed", json={"loans": 1},
                           headers=ops_auth(OFFICER_TOKEN)).status_code == 403


def test_the_tour_seeds_then_closes_a_day_with_real_numbers(
    seed_system: RunningSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lendcore seed --loans 200` then `lendcore eod --yes` (README tour, steps 9 and 10):
    the seed's loans stay open and about 5 % are overdue, so the summary counts the loans
    closed for the day, their interest, and a collection case for each overdue one."""
    ops_url = seed_system.system.ops_url
    assert seed_cli.main(ops_url, ADMIN_TOKEN, 200) == 0
    seeded = json.loads(capsys.readouterr().out)
    assert seeded["loans"] == 200 and seeded["partner_id"] == "demo"
    options = eod_cli.EodOptions(ops_url=ops_url, token=ADMIN_TOKEN, assume_yes=True)
    assert eod_cli.main(options) == 0
    summary = capsys.readouterr().out
    processed = re.search(r"loans processed +(\d+); interest accrued ([\d,]+) fen", summary)
    assert processed is not None, summary
    assert int(processed.group(1)) >= 200 and processed.group(2) != "0"
    # P(no overdue loan among 200 seeded at 5 %) = 0.95 ** 200, about 3.5e-5
    cases = re.search(r"(\d+) cases opened", summary)
    assert cases is not None and int(cases.group(1)) > 0, summary
    assert "debits = credits" in summary
