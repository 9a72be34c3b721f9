"""Operator API (ops port) and the endpoints both ports share (API.md, "Operator API")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import (
    ADMIN_TOKEN,
    RECONCILIATION_KEYS,
    assert_error,
    new_loan,
    ops_auth,
    reconciliation,
    repay,
    trial_balance,
)

from lending.chart import load_chart
from lending.funding import product_books
from lending.products import load_catalog
from loadtests.client import PartnerClient

TOKEN = ADMIN_TOKEN
CHART = load_chart(Path(__file__).resolve().parents[2] / "config" / "chart_of_accounts.toml")
auth = ops_auth


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def api(system: Any) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=system.system.api_url, timeout=30)
    yield client
    client.close()


def account(balance: dict[str, Any], code: str) -> dict[str, Any]:
    for row in balance["accounts"]:
        if row["code"] == code:
            return row
    return {"code": code, "debit": 0, "credit": 0, "balance": 0}


# ---- business date and auth ----------------------------------------------------------------


def test_business_date(ops: httpx.Client) -> None:
    response = ops.get("/ops/business-date", headers=auth())
    assert response.status_code == 200, response.text
    assert response.json() == {"business_date": "2026-11-29"}


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong-token"), {"Authorization": TOKEN}, {"Authorization": "Bearer"},
     {"Authorization": f"Basic {TOKEN}"}, auth(TOKEN + "x"), auth(TOKEN[:-1])],
)
@pytest.mark.parametrize(
    "path",
    ["/ops/business-date", "/ops/ledger/trial-balance", "/ops/ledger/reconciliation",
     "/ops/ledger/reconciliation?shard=0&book=own", "/ops/cluster"],
)
def test_ops_without_a_valid_token_is_401(
    ops: httpx.Client, headers: dict[str, str], path: str
) -> None:
    assert_error(ops.get(path, headers=headers), 401, "unauthenticated")


def test_partner_routes_are_not_on_the_ops_port(ops: httpx.Client) -> None:
    response = ops.get("/v1/loans/LN-0000-0000000001", headers=auth())
    assert response.status_code == 404


def test_ops_routes_are_not_on_the_partner_port(api: httpx.Client) -> None:
    response = api.get("/ops/business-date", headers=auth())
    assert response.status_code == 404


# ---- ledger ---------------------------------------------------------------------------------


def test_trial_balance_moves_exactly_with_a_booking_and_a_repayment(
    ops: httpx.Client, demo: PartnerClient
) -> None:
    before = trial_balance(ops)
    before_own = trial_balance(ops, "?book=own")

    principal = 1_234_500
    loan = new_loan(demo, amount=principal)
    first = loan["schedule"][0]
    # 1,234,500 × 1.5% = 18,517.5 → 18,518 (half-up); the test pays the first installment.
    assert first["interest"] == 18_518
    repaid = repay(demo, loan["loan_id"], first["total"])
    assert repaid.status_code == 201, repaid.text
    allocation = repaid.json()["allocation"]
    p, i = allocation["principal"], allocation["interest"]
    assert (p, i) == (first["principal"], 18_518)

    after = trial_balance(ops)
    after_own = trial_balance(ops, "?book=own")
    for b, a in ((before, after), (before_own, after_own)):
        d_1101 = account(a, "1101")["debit"] - account(b, "1101")["debit"]
        c_1101 = account(a, "1101")["credit"] - account(b, "1101")["credit"]
        c_6011 = account(a, "6011")["credit"] - account(b, "6011")["credit"]
        d_1001 = account(a, "1001")["debit"] - account(b, "1001")["debit"]
        c_1001 = account(a, "1001")["credit"] - account(b, "1001")["credit"]
        assert (d_1101, c_1101) == (principal, p)
        assert c_6011 == i
        # Cash: out the disbursement, in the repayment.
        assert (d_1001, c_1001) == (p + i, principal)
        assert a["total_debit"] - b["total_debit"] == principal + p + i
    for row in after["accounts"]:
        assert set(row) == {"code", "name", "role", "debit", "credit", "balance"}, row
        # Every account is the chart's (config/chart_of_accounts.toml): code, name and role.
        chart_account = CHART.by_code(row["code"])
        assert (row["name"], row["role"]) == (chart_account.name, chart_account.role), row
        sign = 1 if chart_account.side == "debit" else -1
        assert row["balance"] == sign * (row["debit"] - row["credit"]), row
    assert [row["code"] for row in after["accounts"]] == sorted(
        row["code"] for row in after["accounts"]
    )
    by_code = {row["code"]: row for row in after["accounts"]}
    assert by_code["1101"]["role"] == "principal_receivable_normal"
    assert by_code["1101"]["name"] == "Loans receivable, normal 贷款本金-正常"
    assert by_code["1001"]["role"] == "cash_clearing"
    assert by_code["6011"]["role"] == "interest_income"
    assert by_code["1101"]["balance"] == by_code["1101"]["debit"] - by_code["1101"]["credit"]
    assert by_code["6011"]["balance"] == by_code["6011"]["credit"] - by_code["6011"]["debit"]
    for body, book in ((after, None), (after_own, "own")):
        assert body["book"] == book
        # Other tests of the session may have booked joint or assisted loans: more books.
        assert "own" in body["books"] and body["books"] == sorted(body["books"])
        assert body["balanced"] is True


@pytest.mark.parametrize("report", ["trial-balance", "reconciliation", "daily-summary"])
def test_a_ledger_report_of_an_unknown_book_is_404(ops: httpx.Client, report: str) -> None:
    """Not an empty, hence balanced (or reconciled), report of a book nobody has: 404."""
    query = "book=no-such-funder&business_date=2026-11-29"
    response = ops.get(f"/ops/ledger/{report}?{query}", headers=auth())
    error = assert_error(response, 404, "not_found", "book")
    assert "own" in error["message"]  # the books there are


def test_the_known_books_come_from_the_products(ops: httpx.Client) -> None:
    """Every book a product posts to (its funders', from config/products, not a list of our
    own) is known before anything posted to it."""
    books = product_books(load_catalog(Path("config/products")).latest())
    assert {"own", "funder:bank_a", "funder:bank_b"} <= books
    for book in books:
        assert trial_balance(ops, f"?book={book}")["book"] == book


def _loan_count(system: Any, shard: int | None = None) -> int:
    """Loans stored in Postgres (all shards, or one): what a reconciliation must check."""
    count: int = system.run(system.pg().fetchval(
        "SELECT count(*) FROM loans WHERE ($1::int IS NULL OR shard_id = $1)", shard,
    ))
    return count


def _shard_of(loan_id: str) -> int:
    return int(loan_id.split("-")[1])  # LN-0007-0000000042 lives on logical shard 7


def test_reconciliation_of_the_whole_book(
    ops: httpx.Client, demo: PartnerClient, system: Any
) -> None:
    loan = new_loan(demo)
    assert repay(demo, loan["loan_id"], loan["schedule"][0]["total"]).status_code == 201
    assert repay(demo, loan["loan_id"], 100_000, kind="prepay_reduce_installment"
                 ).status_code == 201

    body = reconciliation(ops)

    assert body["book"] is None
    assert body["shards"] == list(range(16))
    assert body["loans_checked"] == _loan_count(system) >= 1
    assert body["reconciled"] is True, body["differences"]
    assert body["loans_with_differences"] == 0
    assert body["differences"] == []


@pytest.mark.parametrize(
    "shard", ["x", "-1", "16", "99", "1.5", "0x1", "%201", "1%20", "1e1", "%C2%B2"]
)
def test_reconciliation_of_a_bad_shard_is_400(ops: httpx.Client, shard: str) -> None:
    """Only 0..15 (logical shards) are shards; bad input is 400, never 5xx (API.md).
    %C2%B2 is "²", which str.isdigit() accepts but int() does not."""
    response = ops.get(f"/ops/ledger/reconciliation?shard={shard}", headers=auth())
    assert_error(response, 400, "invalid_request", "shard")


def test_reconciliation_of_one_shard_checks_only_its_loans(
    ops: httpx.Client, demo: PartnerClient, system: Any
) -> None:
    loan = new_loan(demo)
    shard = _shard_of(loan["loan_id"])

    body = reconciliation(ops, f"?shard={shard}")

    assert body["shards"] == [shard]
    assert body["book"] is None
    assert body["loans_checked"] == _loan_count(system, shard) >= 1
    assert body["reconciled"] is True, body["differences"]
    # The shards' reports add up to the whole book's.
    per_shard = [reconciliation(ops, f"?shard={n}")["loans_checked"] for n in range(16)]
    assert sum(per_shard) == reconciliation(ops)["loans_checked"] == _loan_count(system)
    assert reconciliation(ops, f"?shard={shard:02d}")["shards"] == [shard]


def test_reconciliation_by_book(ops: httpx.Client, demo: PartnerClient, system: Any) -> None:
    new_loan(demo)  # every sandbox product is self-funded: the lender's own book

    own = reconciliation(ops, "?book=own")
    assert own["book"] == "own"
    assert own["shards"] == list(range(16))
    assert own["loans_checked"] == _loan_count(system) >= 1
    assert own["reconciled"] is True, own["differences"]

    both = reconciliation(ops, "?book=own&shard=3")
    assert (both["book"], both["shards"]) == ("own", [3])
    assert both["loans_checked"] == _loan_count(system, 3)


def test_reconciliation_reports_a_ledger_that_disagrees_with_a_loan(
    ops: httpx.Client, demo: PartnerClient, system: Any
) -> None:
    """A journal entry the loans' state does not explain (written behind the system's back,
    then removed) is reported on the loan and the accounts it touches, in its shard only;
    so is an entry of a loan that does not exist."""
    loan = new_loan(demo)
    shard = _shard_of(loan["loan_id"])
    other = (shard + 1) % 16
    orphan = f"LN-{other:04d}-9999999999"
    pool = system.pg()
    insert = (
        "INSERT INTO journal_lines (shard_id, entry_id, line_no, business_date, book, loan_id,"
        " cause, kind, account, debit, credit) VALUES"
        " ($1, $2, 1, '2026-11-29', 'own', $3, 'test', 'test', $4, $5, 0),"
        " ($1, $2, 2, '2026-11-29', 'own', $3, 'test', 'test', $6, 0, $5)"
    )
    try:
        system.run(pool.execute(insert, shard, "JE-TEST-1", loan["loan_id"], "1101", 7, "1001"))
        system.run(pool.execute(insert, other, "JE-TEST-2", orphan, "1131", 5, "1001"))
        body = reconciliation(ops)
        assert body["reconciled"] is False
        assert body["loans_with_differences"] == 2
        rows = sorted(body["differences"], key=lambda d: (d["loan_id"], d["account"]))
        expected_principal = loan["principal"]
        assert rows == sorted([
            {"loan_id": loan["loan_id"], "account": "1001", "role": "cash_clearing",
             "expected": -expected_principal, "ledger": -expected_principal - 7},
            {"loan_id": loan["loan_id"], "account": "1101",
             "role": "principal_receivable_normal",
             "expected": expected_principal, "ledger": expected_principal + 7},
            {"loan_id": orphan, "account": "1001", "role": "cash_clearing",
             "expected": 0, "ledger": -5},
            {"loan_id": orphan, "account": "1131", "role": "interest_receivable",
             "expected": 0, "ledger": 5},
        ], key=lambda d: (d["loan_id"], d["account"]))

        mine = reconciliation(ops, f"?shard={shard}")
        assert (mine["reconciled"], mine["loans_with_differences"]) == (False, 1)
        assert {d["loan_id"] for d in mine["differences"]} == {loan["loan_id"]}
        quiet = next(n for n in range(16) if n not in (shard, other))
        assert reconciliation(ops, f"?shard={quiet}")["reconciled"] is True
    finally:
        system.run(pool.execute("DELETE FROM journal_lines WHERE entry_id LIKE 'JE-TEST-%'"))
    assert reconciliation(ops)["reconciled"] is True
    assert set(reconciliation(ops)) == RECONCILIATION_KEYS


# ---- cluster --------------------------------------------------------------------------------


def test_cluster_has_16_serving_shards(ops: httpx.Client) -> None:
    response = ops.get("/ops/cluster", headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    shards = body["shards"]
    assert sorted(s["shard_id"] for s in shards) == list(range(16))
    for shard in shards:
        assert isinstance(shard["owner"], str) and shard["owner"], shard
        assert shard["epoch"] >= 1, shard
        assert shard["state"] == "serving", shard
        assert "queue_depth" in shard and shard["queue_depth"] >= 0
        assert shard["takeovers"] == shard["epoch"] - 1
    assert body["nodes"], body


# ---- endpoints on both ports ----------------------------------------------------------------


@pytest.mark.parametrize("port", ["api", "ops"])
def test_common_endpoints_on_both_ports(
    request: pytest.FixtureRequest, port: str, demo: PartnerClient
) -> None:
    client: httpx.Client = request.getfixturevalue(port)
    demo.get("/v1/loans/LN-0000-9999999999")  # at least one partner request was counted

    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "lendcore_http_requests_total" in metrics.text
    assert 'lendcore_http_requests_total{api="partner"' in metrics.text

    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200

    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    doc = json.loads(spec.content)
    assert doc["openapi"].startswith("3.")
    assert "/v1/loans/{loan_id}/repayments" in doc["paths"]
    for path in ("/v1/applications", "/v1/applications/{application_id}", "/v1/loans",
                 "/v1/loans/{loan_id}", "/v1/loans/{loan_id}/payoff", "/v1/repayments/batch",
                 "/v1/customers/{customer_id}", "/ops/business-date",
                 "/ops/ledger/trial-balance", "/ops/ledger/reconciliation", "/ops/cluster"):
        assert path in doc["paths"], path
    # The fields the servicing rewrite added are published too.
    schemas = doc["components"]["schemas"]
    assert {"non_accrual", "written_off_on", "remaining_periods"} <= set(
        schemas["LoanView"]["properties"])
    assert "prepayment_fee" in schemas["RepaymentView"]["properties"]
    assert set(schemas["AllocationView"]["properties"]) == {
        "penalty", "fee", "interest", "principal"}
    reconciliation_op = doc["paths"]["/ops/ledger/reconciliation"]["get"]
    assert {p["name"] for p in reconciliation_op["parameters"]} == {"book", "shard"}
    assert {"200", "400", "401"} <= set(reconciliation_op["responses"])
