"""Properties of servicing and the ledger: money is conserved, entries balance, nothing goes
negative, payoff closes everything, refusals change nothing."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lending import ledger
from lending.loans import (
    ALLOCATION_OLDEST_FIRST,
    ALLOCATION_PRINCIPAL_INTEREST_FIRST,
    LOAN_PAID_OFF,
    Loan,
    RepaymentRefused,
    apply_payoff,
    apply_regular,
    disbursement_entry,
    new_loan,
    payoff_quote,
    regular_payable,
    repayment_entry,
    settle_receivables,
)
from lending.schedules import REPAYMENT_METHODS, build_schedule

DISBURSED = date(2026, 11, 29)


def make_loan(
    method: str = "equal_installment", principal: int = 1_000_000, rate: int = 1800,
    term: int = 12, allocation: str = ALLOCATION_OLDEST_FIRST, fee_bps: int = 0,
    prepayment_fee_bps: int = 0,
) -> Loan:
    schedule = build_schedule(method, principal, rate, term, DISBURSED, fee_bps)
    return new_loan(
        loan_id="LN-0000-0000000001", application_id="AP-0000-0000000001",
        customer_id="CU-0000-0000000001", partner_id="demo", product_code="P",
        product_version=1, book=ledger.OWN_BOOK, annual_rate_bps=rate, apr_bps=rate,
        repayment_method=method, allocation=allocation, prepayment_fee_bps=prepayment_fee_bps,
        disbursed_on=DISBURSED, payee="borrower", term=term, schedule=schedule,
    )


def _fee_for(method: str) -> tuple[int, int]:
    """(rate, monthly fee bps) that the method accepts."""
    return (0, 60) if method == "installment_fee" else (1800, 0)


loans = st.builds(
    lambda method, principal, term, allocation: make_loan(
        method, principal, _fee_for(method)[0], term, allocation, _fee_for(method)[1]
    ),
    st.sampled_from(REPAYMENT_METHODS),
    st.integers(100_000, 20_000_000),
    st.sampled_from([1, 3, 6, 12, 24]),
    st.sampled_from([ALLOCATION_OLDEST_FIRST, ALLOCATION_PRINCIPAL_INTEREST_FIRST]),
)


def _ledger_principal(entries: list[ledger.JournalEntry]) -> int:
    total = 0
    for entry in entries:
        for line in entry.lines:
            if line.account in (ledger.PRINCIPAL_NORMAL, ledger.PRINCIPAL_OVERDUE):
                total += line.debit - line.credit
    return total


@settings(max_examples=200, deadline=None)
@given(loans, st.lists(st.integers(1, 3_000_000), min_size=1, max_size=30))
def test_regular_repayments_conserve_money_and_reconcile(loan: Loan, amounts: list[int]) -> None:
    entries = [disbursement_entry(loan, "JE-0", DISBURSED, "book")]
    paid_total = 0
    for n, amount in enumerate(amounts):
        before = loan
        try:
            loan, split = apply_regular(loan, amount, DISBURSED)
        except RepaymentRefused as refusal:
            assert refusal.code in ("amount_exceeds_due", "invalid_state")
            payable = regular_payable(before, DISBURSED)
            assert amount > payable or before.status == LOAN_PAID_OFF
            assert loan is before
            continue
        settle_receivables(loan, before, split)
        allocation = split.allocation()
        assert allocation.total() == amount, "every fen of the payment is allocated"
        entry = repayment_entry(before, split, f"JE-{n + 1}", DISBURSED, f"RP-{n}")
        assert sum(x.debit for x in entry.lines) == sum(x.credit for x in entry.lines) == amount
        entries.append(entry)
        paid_total += amount
        assert before.unpaid_total() - loan.unpaid_total() == amount
        for inst in loan.installments:
            assert 0 <= inst.paid_principal <= inst.principal
            assert 0 <= inst.paid_interest <= inst.interest
            assert 0 <= inst.paid_fee <= inst.fee
    assert loan.outstanding_principal() == _ledger_principal(entries)
    assert loan.outstanding_principal() + sum(i.paid_principal for i in loan.installments) == (
        loan.principal
    )
    deltas = ledger.balance_deltas(entries)
    assert sum(d for d, _ in deltas.values()) == sum(c for _, c in deltas.values())


@settings(max_examples=150, deadline=None)
@given(loans, st.integers(0, 800), st.integers(0, 2_000_000))
def test_payoff_closes_everything_and_balances(loan: Loan, days: int, prepaid: int) -> None:
    if prepaid:
        before = loan
        prepaid = min(prepaid, regular_payable(loan, DISBURSED) - 1)
        if prepaid > 0:
            loan, split = apply_regular(loan, prepaid, DISBURSED)
            settle_receivables(loan, before, split)
    as_of = DISBURSED + timedelta(days=days)
    quote = payoff_quote(loan, as_of)
    assert quote.total == (
        quote.principal + quote.interest + quote.penalty + quote.fee + quote.prepayment_fee
    )
    assert quote.principal == loan.outstanding_principal()
    assert min(quote.interest, quote.fee, quote.penalty) >= 0
    # Principal all repaid ahead with only a future fee left quotes 0: nothing to settle by
    # payoff (the regular installment closes it). Every other state must settle exactly.
    assume(quote.total > 0)
    if quote.total > 1:
        with pytest.raises(RepaymentRefused) as below:
            apply_payoff(loan, quote.total - 1, as_of)
        assert below.value.code == "amount_below_payoff"
    with pytest.raises(RepaymentRefused) as above:
        apply_payoff(loan, quote.total + 1, as_of)
    assert above.value.code == "amount_exceeds_due"
    paid, split, _ = apply_payoff(loan, quote.total, as_of)
    assert paid.status == LOAN_PAID_OFF
    assert paid.unpaid_total() == 0 and paid.outstanding_principal() == 0
    assert split.allocation().total() == quote.total
    entry = repayment_entry(loan, split, "JE-9", as_of, "RP-9")
    assert sum(x.debit for x in entry.lines) == sum(x.credit for x in entry.lines) == quote.total


def test_regular_allocation_oldest_first_example() -> None:
    """API.md example: 91,680 on a fresh 1,000,000 / 1800 bps / 12 loan pays period 1:
    interest 1,000,000 × 0.015 = 15,000, principal 91,680 − 15,000 = 76,680."""
    loan, split = apply_regular(make_loan(), 91_680, DISBURSED)
    assert split.allocation().penalty == 0 and split.allocation().fee == 0
    assert (split.allocation().interest, split.allocation().principal) == (15_000, 76_680)
    assert loan.installments[0].status == "paid"
    assert loan.installments[1].status == "pending"
    assert loan.outstanding_principal() == 1_000_000 - 76_680


def test_partial_payment_goes_to_interest_before_principal() -> None:
    _, split = apply_regular(make_loan(), 10_000, DISBURSED)
    assert (split.allocation().interest, split.allocation().principal) == (10_000, 0)


def test_principal_interest_first_strategy_leaves_penalty_last() -> None:
    loan = make_loan(allocation=ALLOCATION_PRINCIPAL_INTEREST_FIRST)
    loan.installments[0].penalty = 500  # as if EOD had accrued it on the overdue period 1
    loan.installments[0].status = "overdue"
    as_of = date(2027, 1, 2)  # period 1 (due 2026-12-28) is overdue, period 2 is next
    paid, split = apply_regular(loan, 91_680, as_of)
    assert split.allocation().penalty == 0
    assert (split.allocation().interest, split.allocation().principal) == (15_000, 76_680)
    assert paid.installments[0].unpaid_penalty() == 500
    _, rest = apply_regular(paid, 600, as_of)
    assert rest.allocation().interest == 600, "period 2 interest before any penalty"


def test_overpayment_is_refused_and_changes_nothing() -> None:
    loan = make_loan()
    owed = loan.unpaid_total()
    with pytest.raises(RepaymentRefused) as refused:
        apply_regular(loan, regular_payable(loan, DISBURSED) + 1, DISBURSED)
    assert refused.value.code == "amount_exceeds_due"
    assert loan.unpaid_total() == owed and loan.version == 0


def test_payoff_interest_to_date_example() -> None:
    """Day 10 of period 1: interest = round(1,000,000 × 0.18 / 360 × 10) = 5,000."""
    quote = payoff_quote(make_loan(), DISBURSED + timedelta(days=10))
    assert (quote.principal, quote.interest, quote.total) == (1_000_000, 5_000, 1_005_000)


def test_disbursement_entry_balances() -> None:
    entry = disbursement_entry(make_loan(), "JE-1", DISBURSED, "k")
    assert [(x.account, x.debit, x.credit) for x in entry.lines] == [
        (ledger.PRINCIPAL_NORMAL, 1_000_000, 0), (ledger.CASH, 0, 1_000_000),
    ]


def test_unbalanced_entry_is_refused() -> None:
    with pytest.raises(ledger.UnbalancedEntry):
        ledger.make_entry("JE-1", DISBURSED, "own", "L", "c", "k", [(ledger.CASH, 10)],
                          [(ledger.INTEREST_INCOME, 9)])
