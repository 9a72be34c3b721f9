"""Operator API (ops port) and the endpoints both ports share (API.md, "Operator API")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from factories import assert_error, new_loan, repay

from loadtests.client import PartnerClient

TOKEN = "dev-admin-token-change-me"


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def ops(system: Any) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=system.system.ops_url, timeout=30)
    yield client
    client.close()


@pytest.fixture
def api(system: Any) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=system.system.api_url, timeout=30)
    yield client
    client.close()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def trial_balance(ops: httpx.Client, query: str = "") -> dict[str, Any]:
    response = ops.get(f"/ops/ledger/trial-balance{query}", headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total_debit"] == body["total_credit"]
    assert body["total_debit"] == sum(a["debit"] for a in body["accounts"])
    assert body["total_credit"] == sum(a["credit"] for a in body["accounts"])
    return body


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
    "path", ["/ops/business-date", "/ops/ledger/trial-balance", "/ops/cluster"]
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
        assert set(row) >= {"code", "name", "debit", "credit", "balance"}
    by_code = {row["code"]: row for row in after["accounts"]}
    assert by_code["1101"]["name"] == "principal_receivable_normal"
    assert by_code["1101"]["balance"] == by_code["1101"]["debit"] - by_code["1101"]["credit"]
    assert by_code["6011"]["balance"] == by_code["6011"]["credit"] - by_code["6011"]["debit"]


def test_trial_balance_of_an_unknown_book_is_empty_and_balanced(ops: httpx.Client) -> None:
    body = trial_balance(ops, "?book=no-such-funder")
    assert body["accounts"] == []
    assert body["total_debit"] == body["total_credit"] == 0


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
                 "/ops/ledger/trial-balance", "/ops/cluster"):
        assert path in doc["paths"], path
