"""The business models (DOMAIN.md §7) through the API and end of day: joint lending
(JOINT_EI_12: the lender 30 %, funder bank_a 70 %), assisted lending (ASSIST_EI_12: funder
bank_b 100 %, the partner guarantees, compensates at a DPD and recovers), and entrusted
payment (受托支付) to a merchant. Every book balances and reconciles at every step."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningSystem, fresh_system
from factories import (
    OpsClient,
    PartnerClient,
    app_body,
    assert_error,
    get_loan,
    new_loan,
    payoff_quote,
    reconciliation,
    repay,
    trial_balance,
)

PROJECT = Path(__file__).resolve().parents[2]


def account(balance: dict[str, Any], role: str) -> int:
    """Net debit of one role in a trial balance (0 when the book has no such line)."""
    for row in balance["accounts"]:
        if row["role"] == role:
            return int(row["debit"]) - int(row["credit"])
    return 0


def books_hold(ops: httpx.Client, *books: str) -> dict[str, dict[str, Any]]:
    """Every book balances and reconciles, alone and all together."""
    assert reconciliation(ops)["reconciled"]
    balances = {}
    for book in books:
        balances[book] = trial_balance(ops, f"?book={book}")
        report = reconciliation(ops, f"?book={book}")
        assert report["reconciled"], report
    return balances


def test_a_joint_loan_is_split_30_70_to_the_fen(demo: PartnerClient, ops: httpx.Client) -> None:
    before = {book: trial_balance(ops, f"?book={book}") for book in ("own", "funder:bank_a")}
    loan = new_loan(demo, amount=1_000_001, product="JOINT_EI_12", term=12)
    parts = {p["book"]: p for p in loan["funding"]["parts"]}
    assert [p["book"] for p in loan["funding"]["parts"]] == ["own", "funder:bank_a"]
    assert (parts["own"]["ratio_bps"], parts["funder:bank_a"]["ratio_bps"]) == (3000, 7000)
    # floor(1,000,001 × 70 %) to the bank; the residue fen to the lender, the lead
    assert (parts["funder:bank_a"]["principal"], parts["own"]["principal"]) == (700_000, 300_001)
    after = books_hold(ops, "own", "funder:bank_a")
    moved = {book: account(after[book], "principal_receivable_normal")
             - account(before[book], "principal_receivable_normal") for book in before}
    assert moved == {"own": 300_001, "funder:bank_a": 700_000}

    first = loan["schedule"][0]
    paid = repay(demo, loan["loan_id"], first["total"])
    assert paid.status_code == 201, paid.text
    view = paid.json()["loan"]
    principal_left = {p["book"]: p["principal"] for p in view["funding"]["parts"]}
    assert sum(principal_left.values()) == view["outstanding"]["principal"]
    books_hold(ops, "own", "funder:bank_a")

    quote = payoff_quote(demo, loan["loan_id"])
    paid_off = repay(demo, loan["loan_id"], quote["total"], kind="payoff")
    assert paid_off.status_code == 201, paid_off.text
    final = get_loan(demo, loan["loan_id"])
    assert final["status"] == "paid_off"
    for part in final["funding"]["parts"]:  # no fen stranded in either book
        assert (part["principal"], part["interest"], part["penalty"], part["fee"]) == (0, 0, 0, 0)
    books_hold(ops, "own", "funder:bank_a")


def test_a_self_funded_loan_shows_no_funding(demo: PartnerClient) -> None:
    loan = new_loan(demo, product="CASH_EI_12", term=12)
    assert "funding" not in loan


def test_an_entrusted_loan_pays_the_merchant_and_says_so(
    demo: PartnerClient, ops: httpx.Client
) -> None:
    before = trial_balance(ops, "?book=own")
    loan = new_loan(demo, amount=300_000, product="INST_FEE_12", term=6, merchant_id="M-7")
    assert loan["payee"] == "merchant:M-7"
    after = books_hold(ops, "own")["own"]
    assert (account(after, "merchant_clearing") - account(before, "merchant_clearing")
            == -300_000)
    assert account(after, "cash_clearing") == account(before, "cash_clearing")


def test_an_entrusted_payee_must_be_one_of_the_partners_merchants(
    demo2: PartnerClient,
) -> None:
    """demo2 lists its merchants (config/partners.toml): another is refused, nothing made."""
    refused = demo2.post("/v1/applications", app_body(
        amount=300_000, product="INST_FEE_12", term=6, merchant_id="M-999"))
    assert_error(refused, 422, "merchant_unknown", "merchant_id")
    loan = new_loan(demo2, amount=300_000, product="INST_FEE_12", term=6, merchant_id="M-002")
    assert loan["payee"] == "merchant:M-002"


# ---- assisted lending: compensation and recovery through end of day ---------------------


@pytest.fixture
def assisted_system(ray_cluster: None, tmp_path: Path) -> Iterator[RunningSystem]:
    """The shipped products, with the assisted product compensating at DPD 3 (not 80) so
    that a month of end of day reaches it."""
    products = tmp_path / "products"
    shutil.copytree(PROJECT / "config" / "products", products)
    assisted = products / "ASSIST_EI_12.toml"
    text = assisted.read_text()
    assert "compensation_dpd = 80" in text
    assisted.write_text(text.replace("compensation_dpd = 80", "compensation_dpd = 3"))
    config = tmp_path / "assisted.toml"
    config.write_text(f'[paths]\nproducts_dir = "{products}"\n'
                      "[outbox]\npayment_decline_per_mille = 1000\n")
    with fresh_system(config) as running:
        yield running


def test_an_assisted_loan_is_compensated_by_its_guarantor_who_then_recovers_it(
    assisted_system: RunningSystem,
) -> None:
    ops = OpsClient(assisted_system.system.ops_url, timeout=300)
    client = assisted_system.client()
    loan = new_loan(client, amount=1_200_000, product="ASSIST_EI_12", term=12)
    assert loan["funding"]["guarantor"] == "guarantor:demo"
    assert loan["funding"]["compensation_dpd"] == 3
    assert {item["fee"] for item in loan["schedule"]} == {2_400}  # 0.20 % a month
    balances = books_hold(ops.client, "funder:bank_b")
    assert account(balances["funder:bank_b"], "principal_receivable_normal") == 1_200_000

    due = loan["schedule"][0]["due_date"]
    compensated = None
    for _ in range(45):
        response = ops.eod()
        assert response.status_code == 200, response.text
        view = get_loan(client, loan["loan_id"])
        if view["funding"]["compensated_on"] is not None:
            compensated = view
            break
    assert compensated is not None, "no compensation within 45 days"
    assert compensated["dpd"] == 3 and compensated["schedule"][0]["due_date"] == due
    owed = sum(compensated["outstanding"].values())
    parts = {p["book"]: p for p in compensated["funding"]["parts"]}
    assert compensated["funding"]["parts"][0]["book"] == "guarantor:demo"  # now the lead
    assert parts["funder:bank_b"]["principal"] == 0
    balances = books_hold(ops.client, "funder:bank_b", "guarantor:demo")
    bank, guarantor = balances["funder:bank_b"], balances["guarantor:demo"]
    for role in ("principal_receivable_normal", "principal_receivable_overdue",
                 "interest_receivable", "penalty_receivable", "fee_receivable"):
        assert account(bank, role) == 0, role
    # The guarantor paid the bank everything the borrower owed it; it now holds that claim.
    assert account(guarantor, "guarantee_receivable") == owed
    # Cash: the bank lent 1,200,000 and got back all it held (not the guarantee fee, which
    # was the guarantor's all along); the guarantor paid exactly that.
    paid_to_bank = owed - compensated["outstanding"]["fee"]
    assert account(bank, "cash_clearing") == -1_200_000 + paid_to_bank
    assert account(guarantor, "cash_clearing") == -paid_to_bank

    # The borrower pays everything: it is the guarantor's, and its claim closes.
    quote = payoff_quote(client, loan["loan_id"])
    paid = repay(client, loan["loan_id"], quote["total"], kind="payoff")
    assert paid.status_code == 201, paid.text
    balances = books_hold(ops.client, "funder:bank_b", "guarantor:demo")
    assert account(balances["guarantor:demo"], "guarantee_receivable") == 0
    assert balances["funder:bank_b"]["accounts"] == bank["accounts"]  # the bank's is closed
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", compensated["funding"]["compensated_on"])
