"""The shard's side of the manual review (lending/shard_state.py, ReviewDecision): pure
apply, no gateway. The gateway checks roles and claims first; these rules hold whatever
reaches the shard."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lending.apr import apr_bps, schedule_payments
from lending.commands import Reply, ReviewDecision
from lending.decision import RiskPolicy
from lending.products import load_catalog
from lending.schedules import build_schedule
from lending.shard_state import (
    Application,
    ApplyContext,
    Customer,
    Diff,
    Prefetched,
    ShardState,
    apply_batch,
)

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 11, 29)
POLICY = RiskPolicy(
    apr_cap_bps=2400, offer_valid_days=7,
)
CTX = ApplyContext(TODAY, load_catalog(ROOT / "config" / "products", 2400), POLICY)
APP_ID = "AP-0003-0000000002"
OVER = 7_000_000


def state_with(amount: int, *, offer: bool = True, credit_limit: int = 0) -> ShardState:
    """A shard holding one customer and one application of `amount` in manual review; with
    `offer`, the decision filled the terms (as the interim decision does), else not."""
    state = ShardState(3, next_seq=10)
    customer = Customer(
        customer_id="CU-0003-0000000001", id_hash="h", id_number_enc=b"", name_enc=b"",
        phone_enc=b"", id_number_masked="", name_masked="", phone_masked="", partner_ids=["demo"],
        credit_limit=credit_limit, loan_ids=[], created_on=TODAY,
    )
    app = Application(
        application_id=APP_ID, partner_id="demo", partner_application_id="A-1",
        customer_id=customer.customer_id, product_code="CASH_EI_12", product_version=1,
        amount=amount, term=12, status="manual_review", reasons=["amount_review"],
        approved_amount=amount if offer else None, annual_rate_bps=1500 if offer else None,
        apr_bps=1500 if offer else None, credit_limit=10_000_000 if offer else None,
        expires_on=date(2026, 11, 20) if offer else None, created_on=date(2026, 11, 13),
        merchant_id=None, purpose="consumption", device_id="d", ip="10.0.0.1",
    )
    state.commit(Diff(customers={customer.customer_id: customer},
                      applications={APP_ID: app}))
    return state


def decide(
    state: ShardState, officer: str, decision: str, stage: str, reasons: list[str] | None = None
) -> tuple[Reply, Diff]:
    command = ReviewDecision(APP_ID, officer, decision, reasons or [], "", stage, OVER)
    replies, diff = apply_batch(state, [command], Prefetched(), CTX)
    return replies[0], diff


def body(reply: Reply) -> Any:
    return json.loads(reply.body)


def test_below_the_threshold_one_approval_is_final_with_the_proposed_terms() -> None:
    state = state_with(6_000_000)
    reply, diff = decide(state, "ann", "approve", "maker", ["income_verified"])
    assert reply.status == 200, reply.body
    app = diff.applications[APP_ID]
    assert (app.status, app.reasons, app.approved_amount) == ("approved", [], 6_000_000)
    assert (app.annual_rate_bps, app.apr_bps, app.credit_limit) == (1500, 1500, 10_000_000)
    assert app.expires_on == date(2026, 12, 6)  # today + offer_valid_days, not the old expiry
    assert diff.customers["CU-0003-0000000001"].credit_limit == 10_000_000
    review = diff.reviews[APP_ID]
    assert review.proposal is None and [s.outcome for s in review.steps] == ["approved"]
    [row] = diff.audit
    assert (row.actor, row.action, row.target) == (
        "ann", "review.maker_decision", f"application:{APP_ID}")
    assert row.before is not None and row.after is not None
    assert (row.before["status"], row.after["status"]) == ("manual_review", "approved")
    assert row.before["customer_credit_limit"] == 0
    assert row.after["customer_credit_limit"] == 10_000_000
    assert body(reply)["final"] is True


def test_an_approval_computes_the_terms_the_decision_left_empty() -> None:
    state = state_with(6_000_000, offer=False, credit_limit=2_000_000)
    reply, diff = decide(state, "ann", "approve", "maker")
    assert reply.status == 200, reply.body
    app = diff.applications[APP_ID]
    schedule = build_schedule("equal_installment", 6_000_000, 1800, 12, TODAY, 0)
    assert app.annual_rate_bps == 1800  # the product's default rate
    assert app.apr_bps == apr_bps(6_000_000, schedule_payments(schedule, 12))
    # No income in the shard: the limit at least covers the amount (and keeps a higher one).
    assert app.credit_limit == 6_000_000
    assert diff.customers["CU-0003-0000000001"].credit_limit == 6_000_000


def test_an_approval_beyond_the_available_limit_is_refused_and_changes_nothing() -> None:
    state = state_with(6_000_000)
    loaned = msgspec.structs.replace(state.applications[APP_ID], credit_limit=5_000_000)
    state.applications[APP_ID] = loaned
    reply, diff = decide(state, "ann", "approve", "maker")
    assert (reply.status, reply.code) == (422, "limit_exceeded")
    assert diff.is_empty()


def test_maker_checker_above_the_threshold() -> None:
    state = state_with(8_000_000)
    reply, diff = decide(state, "ann", "decline", "maker", ["bureau_thin_file"])
    assert reply.status == 200, reply.body
    assert diff.applications[APP_ID].status == "awaiting_confirmation"
    assert diff.reviews[APP_ID].proposal is not None
    state.commit(diff)

    # The maker may not confirm himself, even if the gateway let him through.
    refused, nothing = decide(state, "ann", "decline", "checker", ["bureau_thin_file"])
    assert (refused.status, refused.code) == (403, "maker_checker")
    assert nothing.is_empty()
    # A stale view (a maker's decision on what is now awaiting a checker) is refused.
    stale, nothing = decide(state, "bob", "decline", "maker", ["x"])
    assert (stale.status, stale.code) == (409, "invalid_state")
    assert nothing.is_empty()

    confirmed, diff = decide(state, "bob", "decline", "checker", ["other"])
    assert confirmed.status == 200, confirmed.body
    app = diff.applications[APP_ID]
    assert (app.status, app.reasons, app.approved_amount) == (
        "declined", ["bureau_thin_file"], None)
    assert [row.action for row in diff.audit] == ["review.checker_decision"]
    state.commit(diff)
    assert [s.officer for s in state.reviews[APP_ID].steps] == ["ann", "bob"]

    # Retrying a decision already applied: the application moved on.
    again, nothing = decide(state, "bob", "decline", "checker", ["other"])
    assert (again.status, again.code) == (409, "invalid_state")
    assert nothing.is_empty()


def test_a_checker_who_disagrees_returns_the_application_to_the_queue() -> None:
    state = state_with(8_000_000)
    state.commit(decide(state, "ann", "approve", "maker")[1])
    reply, diff = decide(state, "bob", "decline", "checker", ["doubt"])
    assert reply.status == 200, reply.body
    app = diff.applications[APP_ID]
    assert app.status == "manual_review"
    assert app.annual_rate_bps == 1500  # the pipeline's terms stay for the next round
    assert diff.reviews[APP_ID].proposal is None
    assert body(reply)["step"]["outcome"] == "rejected"


@pytest.mark.parametrize("stage", ["maker", "checker"])
def test_an_unknown_application_is_404(stage: str) -> None:
    state = state_with(6_000_000)
    command = ReviewDecision("AP-0003-0000000099", "ann", "approve", [], "", stage, OVER)
    [missing], diff = apply_batch(state, [command], Prefetched(), CTX)
    assert (missing.status, missing.code) == (404, "not_found")
    assert diff.is_empty()
