"""A customer shared by partners, as each partner sees it (GET /v1/customers/{id}): its own
loans only, and the shared credit limit only as what it may use (lending/views.py
partner_limit), rendered by the shard (lending/shard_state.py)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import msgspec
import pytest
from loan_factory import make_loan, shard_context

from lending.commands import GetCustomer
from lending.shard_state import Customer, Diff, Prefetched, ShardState, apply_batch
from lending.views import partner_limit

CUSTOMER_ID = "CU-0003-0000000001"
LIMIT = 3_000_000


def shared_customer(loans_by_partner: dict[str, int]) -> ShardState:
    """A customer of demo and demo2 with limit LIMIT and one loan of the given principal per
    partner listed."""
    state = ShardState(3, next_seq=10)
    loans = {}
    for seq, (partner, principal) in enumerate(loans_by_partner.items(), start=2):
        loan = msgspec.structs.replace(
            make_loan(principal=principal), loan_id=f"LN-0003-{seq:010d}",
            customer_id=CUSTOMER_ID, partner_id=partner)
        loans[loan.loan_id] = loan
    customer = Customer(
        customer_id=CUSTOMER_ID, id_hash="h", id_number_enc=b"", name_enc=b"", phone_enc=b"",
        id_number_masked="1101**********0017", name_masked="张*", phone_masked="138****8000",
        partner_ids=["demo", "demo2"], credit_limit=LIMIT, loan_ids=list(loans),
        created_on=date(2026, 11, 29),
    )
    state.commit(Diff(customers={CUSTOMER_ID: customer}, loans=loans))
    return state


def view(state: ShardState, partner: str) -> dict[str, Any]:
    replies, _ = apply_batch(state, [GetCustomer(partner, CUSTOMER_ID)], Prefetched(),
                             shard_context(date(2026, 11, 29)))
    assert replies[0].status == 200, replies[0].body
    body: dict[str, Any] = json.loads(replies[0].body)
    return body


def test_a_partner_sees_neither_the_loans_nor_the_use_of_another() -> None:
    state = shared_customer({"demo": 1_000_000})
    theirs = view(state, "demo")
    mine = view(state, "demo2")

    assert theirs["loan_ids"] == ["LN-0003-0000000002"]
    assert (theirs["credit_limit"], theirs["available_limit"]) == (LIMIT, 2_000_000)
    # demo2 borrowed nothing: what it sees adds up to its own use, 0. demo's 1,000,000 is
    # nowhere (it could subtract it from the customer's limit if the limit were shown).
    assert mine["loan_ids"] == []
    assert (mine["credit_limit"], mine["available_limit"]) == (2_000_000, 2_000_000)
    assert mine["name_masked"] == "张*"


def test_each_partner_sees_its_own_use_and_the_shared_remainder() -> None:
    state = shared_customer({"demo": 1_000_000, "demo2": 500_000})
    demo, demo2 = view(state, "demo"), view(state, "demo2")
    assert demo["loan_ids"] == ["LN-0003-0000000002"]
    assert demo2["loan_ids"] == ["LN-0003-0000000003"]
    assert demo["available_limit"] == demo2["available_limit"] == 1_500_000
    assert demo["credit_limit"] - demo["available_limit"] == 1_000_000
    assert demo2["credit_limit"] - demo2["available_limit"] == 500_000


def test_a_partner_that_did_not_bring_the_customer_gets_404() -> None:
    state = shared_customer({})
    replies, _ = apply_batch(state, [GetCustomer("demo3", CUSTOMER_ID)], Prefetched(),
                             shard_context(date(2026, 11, 29)))
    assert replies[0].status == 404


@pytest.mark.parametrize(("used", "own", "expected"), [
    (0, 0, (LIMIT, LIMIT)),  # nobody borrowed
    (1_000_000, 1_000_000, (LIMIT, 2_000_000)),  # one partner: the plain limit
    (1_000_000, 0, (2_000_000, 2_000_000)),  # another partner borrowed
    (2_500_000, 500_000, (1_000_000, 500_000)),
    (4_000_000, 4_000_000, (LIMIT, 0)),  # over a limit lowered since: never above it
    (4_000_000, 1_000_000, (1_000_000, 0)),
])
def test_partner_limit(used: int, own: int, expected: tuple[int, int]) -> None:
    assert partner_limit(LIMIT, used=used, used_by_partner=own) == expected
