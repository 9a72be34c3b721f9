"""The shard's bulk seeding command (lending/shard_state.py SeedLoans): counts, ids of the
shard's own sequence, placeholder (never personal) customer data, a balanced disbursement
journal that reconciles loan by loan, variety over the products, one Diff, refusals."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta

from loan_factory import shard_context

from lending import ledger, reconcile
from lending.commands import SEED_MAX_PER_COMMAND, EodStep, SeedLoans, is_write
from lending.decision import APPROVED
from lending.shard_state import (
    Prefetched,
    ShardState,
    apply_batch,
    seed_id_hash,
    shard_of_id,
)

DAY = date(2026, 3, 2)
CTX = shard_context(DAY)


def seed(state: ShardState, count: int, seed_value: int = 7):
    replies, diff = apply_batch(state, [SeedLoans(count, seed_value, DAY)], Prefetched(), CTX)
    return replies[0], diff


def test_seed_is_an_ops_write() -> None:
    assert is_write(SeedLoans(1, 1, DAY))


def test_seeds_count_loans_of_the_shard_that_reconcile() -> None:
    state = ShardState(3, next_seq=500)
    reply, diff = seed(state, 300)
    assert reply.status == 200, reply.body
    body = json.loads(reply.body)
    assert body["shard_id"] == 3 and body["loans"] == 300 and len(body["sample_loan_ids"]) == 5
    assert len(diff.loans) == len(diff.customers) == len(diff.applications) == 300
    assert len(diff.partner_refs) == 300
    # customer, application, loan and disbursement entry each, plus the entries of the
    # catch-up close of back-dated loans
    assert diff.next_seq == 500 + 300 * 3 + len(diff.entries)
    assert len([e for e in diff.entries if e.kind == ledger.DISBURSEMENT]) == 300
    for loan_id in diff.loans:
        assert shard_of_id("loan", loan_id) == 3
    for customer in diff.customers.values():
        assert shard_of_id("customer", customer.customer_id) == 3
        assert customer.id_number_enc == customer.name_enc == customer.phone_enc == b""
        assert customer.name_masked == "测*"
        seq = int(customer.customer_id.rsplit("-", 1)[1])
        assert customer.id_hash == seed_id_hash(3, seq)
        assert customer.partner_ids == ["demo"] and len(customer.loan_ids) == 1
    for app in diff.applications.values():
        assert app.status == APPROVED and app.loan_id in diff.loans
        assert (app.merchant_id is not None) == (app.product_code == "INST_FEE_12")
    # the journal balances, and every loan's own ledger matches its state
    debit = sum(line.debit for e in diff.entries for line in e.lines)
    credit = sum(line.credit for e in diff.entries for line in e.lines)
    assert debit == credit > 0
    by_loan: dict[str, list[ledger.JournalEntry]] = {}
    for entry in diff.entries:
        by_loan.setdefault(entry.loan_id, []).append(entry)
    for loan in diff.loans.values():
        assert loan.partner_id == "demo" and loan.disbursed_on <= DAY
        # back-dated loans were closed up to yesterday; today's never
        closed_until = None if loan.disbursed_on == DAY else DAY - timedelta(days=1)
        assert loan.last_closed_on == closed_until
        assert reconcile.differences(loan, ledger.net_debits(by_loan[loan.loan_id])) == []
    products = Counter(loan.product_code for loan in diff.loans.values())
    assert set(products) == {"CASH_BL_3", "CASH_EI_12", "CASH_EP_12", "CASH_IF_12",
                             "INST_FEE_12"}
    assert len({loan.principal for loan in diff.loans.values()}) > 10
    # due dates spread over the month, and a delinquent few (SEED_DELINQUENT_SHARE)
    assert len({loan.disbursed_on for loan in diff.loans.values()}) > 20
    overdue = [loan for loan in diff.loans.values() if loan.dpd > 0]
    assert 0 < len(overdue) < 40 and all(loan.dpd <= 90 for loan in overdue)


def test_deterministic_and_then_closed_by_eod() -> None:
    first, diff_a = seed(ShardState(1), 50, 42)
    second, diff_b = seed(ShardState(1), 50, 42)
    assert first.body == second.body and diff_a.loans == diff_b.loans
    state = ShardState(1)
    state.commit(diff_a)
    replies, _ = apply_batch(state, [EodStep(DAY, 1000)], Prefetched(), CTX)
    assert replies[0].status == 200 and json.loads(replies[0].body)["processed"] == 50


def test_refusals() -> None:
    state = ShardState(0)
    for command, status in (
        (SeedLoans(0, 1, DAY), 400),
        (SeedLoans(SEED_MAX_PER_COMMAND + 1, 1, DAY), 400),
        (SeedLoans(1, 1, date(2026, 3, 3)), 409),
    ):
        replies, diff = apply_batch(state, [command], Prefetched(), CTX)
        assert replies[0].status == status and diff.is_empty()
