"""Repayments of every kind (lending/loans.py): properties over random loans in random servicing
states (overdue, penalty, non-accrual, written off, prepaid), and examples of the rules.

The loan states come from a real history: end of day run on every business date, repayments
of random kinds in between, so receivables, memo accounts and rebuilt schedules are what the
system really produces. After each repayment, the loan's journal (disbursement, every end of
day, every repayment) must still reconcile with the loan (lending/reconcile.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from loan_factory import DISBURSED, Journal, make_loan, net_of, posting_sides, snapshot

from lending import ledger, reconcile
from lending.daily import ServicingPolicy, close_day
from lending.loans import (
    ALLOCATION_OLDEST_FIRST,
    ALLOCATION_PRINCIPAL_INTEREST_FIRST,
    INST_OVERDUE,
    INST_PAID,
    KIND_PAYOFF,
    KIND_REDUCE_INSTALLMENT,
    KIND_REGULAR,
    KIND_SHORTEN_TERM,
    LOAN_ACTIVE,
    LOAN_PAID_OFF,
    REPAYMENT_KINDS,
    Loan,
    RepaymentRefused,
    RepaymentResult,
    apply_payoff,
    apply_prepayment,
    apply_regular,
    apply_repayment,
    payoff_quote,
    regular_payable,
)
from lending.schedules import REPAYMENT_METHODS

POLICY = ServicingPolicy()
PREPAYMENTS = (KIND_REDUCE_INSTALLMENT, KIND_SHORTEN_TERM)
NO_SHORTEN = ("interest_first", "bullet")
AMORTISING = ("equal_installment", "equal_principal", "installment_fee")


# ---------------------------------------------------------------------------------------
# Strategies: a loan, then a history of end-of-day runs and repayments


@st.composite
def loans(draw: st.DrawFn, methods: tuple[str, ...] = REPAYMENT_METHODS) -> Loan:
    method = draw(st.sampled_from(methods))
    if method == "installment_fee":
        rate, fee, penalty_rate = 0, draw(st.integers(10, 150)), 1300
    else:
        rate, fee = draw(st.sampled_from([0, 500, 1000, 1800, 2400, 3600])), 0
        penalty_rate = None
    principal = draw(st.one_of(st.integers(100_000, 20_000_000), st.integers(1, 20_000)))
    return make_loan(
        method, principal, rate, draw(st.sampled_from([1, 2, 3, 6, 12, 24])),
        allocation=draw(st.sampled_from([ALLOCATION_OLDEST_FIRST,
                                         ALLOCATION_PRINCIPAL_INTEREST_FIRST])),
        monthly_fee_bps=fee,
        prepayment_fee_bps=draw(st.sampled_from([0, 0, 100, 300])),
        penalty_rate_bps=penalty_rate,
        grace_days=draw(st.sampled_from([0, 3, 7])),
        compound_penalty=draw(st.booleans()),
    )


# How a test picks an amount: a named figure of the loan, or a share (per mille) of the
# payoff total. Named figures hit the exact boundaries of every refusal.
AMOUNT_CHOICES = st.one_of(
    st.sampled_from(["payable", "payable+1", "quote", "quote-1", "quote+1", "owed_now",
                     "owed_now+1", "zero", "negative", "one"]),
    st.integers(1, 1000),
)


# Histories mostly pay part of what is owed; settling the loan is rare (a paid-off loan has
# little left to test).
HISTORY_AMOUNTS = st.one_of(
    st.integers(1, 1000), st.integers(1, 1000), st.integers(1, 900),
    st.sampled_from(["payable", "owed_now+1", "one", "quote"]),
)


@dataclass
class Figures:
    """What the loan owes as of a date, derived from the installments (not from the code
    under test, except the payoff quote whose figures the golden tests check)."""

    due_now: int        # unpaid on installments due on or before as_of
    not_due: int        # unpaid principal of installments due after as_of
    payable: int        # due_now + the next unpaid installment (regular's limit)
    owed_now: int       # due_now + interest to date on the current period
    quote_total: int
    quote_prepayment_fee: int
    current_is_first_open: bool


def figures(loan: Loan, as_of: date) -> Figures:
    due = [i for i in loan.installments if i.due_date <= as_of]
    future = [i for i in loan.installments if i.due_date > as_of]
    open_future = [i for i in future if i.unpaid_total() > 0]
    due_now = sum(i.unpaid_total() for i in due)
    quote = payoff_quote(loan, as_of)
    interest_to_date = quote.interest - sum(i.unpaid_interest() for i in due)
    return Figures(
        due_now=due_now,
        not_due=sum(i.unpaid_principal() for i in future),
        payable=due_now + (open_future[0].unpaid_total() if open_future else 0),
        owed_now=due_now + interest_to_date,
        quote_total=quote.total,
        quote_prepayment_fee=quote.prepayment_fee,
        current_is_first_open=bool(future) and bool(open_future) and future[0] is open_future[0],
    )


def pick_amount(loan: Loan, as_of: date, choice: str | int) -> int:
    f = figures(loan, as_of)
    named = {
        "payable": f.payable, "payable+1": f.payable + 1, "quote": f.quote_total,
        "quote-1": f.quote_total - 1, "quote+1": f.quote_total + 1, "owed_now": f.owed_now,
        "owed_now+1": f.owed_now + 1, "zero": 0, "negative": -100, "one": 1,
    }
    if isinstance(choice, str):
        return named[choice]
    return max(1, f.quote_total * choice // 1000)


@dataclass
class State:
    loan: Loan
    journal: Journal
    as_of: date  # the business date: the day after the last end of day
    prepaid: bool  # a prepayment was applied in the history


@st.composite
def histories(draw: st.DrawFn, methods: tuple[str, ...] = REPAYMENT_METHODS,
              kinds: tuple[str, ...] = REPAYMENT_KINDS, max_gap: int = 90) -> State:
    """A loan after some days of servicing: every day closed, repayments in between (also
    several on one business date), delinquencies up to hundreds of days."""
    loan = draw(loans(methods))
    journal = Journal(loan)
    day = loan.disbursed_on
    prepaid = False
    for _ in range(draw(st.integers(0, 6))):
        # Mostly short gaps; sometimes a long silence (into non-accrual and write-off).
        gap = draw(st.one_of(st.integers(0, max_gap), st.sampled_from([0, 1, 30, 95, 190])))
        for _ in range(gap):
            result = close_day(loan, day, POLICY)
            loan = result.loan
            journal.add_all(result.postings, day, loan)
            day += timedelta(days=1)
        if loan.status == LOAN_PAID_OFF:
            break
        kind = draw(st.sampled_from(kinds))
        amount = pick_amount(loan, day, draw(HISTORY_AMOUNTS))
        try:
            repaid = apply_repayment(loan, kind, amount, day)
        except RepaymentRefused:
            continue
        journal.add_all(repaid.postings, day, loan)
        prepaid = prepaid or (kind in PREPAYMENTS and repaid.loan.status != LOAN_PAID_OFF)
        loan = repaid.loan
    assert journal.differences(loan) == [], "the history itself must reconcile"
    event(f"status {loan.status}")
    event(f"non_accrual {loan.non_accrual}")
    event(f"prepaid {prepaid}")
    event(f"dpd>90 {loan.dpd > 90}")
    return State(loan, journal, day, prepaid)


HISTORY_SETTINGS = settings(max_examples=200, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------
# Invariants


def totals_paid(loan: Loan) -> tuple[int, int, int, int]:
    """(penalty, fee, interest, principal) paid over all installments."""
    return (sum(i.paid_penalty for i in loan.installments),
            sum(i.paid_fee for i in loan.installments),
            sum(i.paid_interest for i in loan.installments),
            sum(i.paid_principal for i in loan.installments))


def assert_installments_sound(loan: Loan) -> None:
    for inst in loan.installments:
        assert 0 <= inst.paid_principal <= inst.principal, inst
        assert 0 <= inst.paid_interest <= inst.interest_recognized <= inst.interest, inst
        assert 0 <= inst.paid_fee <= inst.fee_recognized <= inst.fee, inst
        assert 0 <= inst.paid_penalty <= inst.penalty, inst
        assert (inst.status == INST_PAID) == (inst.unpaid_total() == 0), inst
    assert sum(i.principal for i in loan.installments) == loan.principal
    assert [i.period for i in loan.installments] == list(range(1, len(loan.installments) + 1))
    dates = [i.due_date for i in loan.installments]
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    assert (loan.status == LOAN_PAID_OFF) == (loan.unpaid_total() == 0)


def assert_sound_result(state: State, kind: str, amount: int, result: RepaymentResult) -> None:
    before, after = state.loan, result.loan
    allocation = result.allocation
    assert allocation.total() == amount, "every fen is allocated"
    assert min(allocation.penalty, allocation.fee, allocation.interest,
               allocation.principal, result.prepayment_fee) >= 0
    assert allocation.fee >= result.prepayment_fee
    for posting in result.postings:
        debit, credit = posting_sides(posting)
        assert debit == credit > 0, posting
    assert net_of(result.postings).get(ledger.CASH, 0) == amount, "cash received == amount"
    # Conservation: what the installments record as paid grows by the amount less the
    # prepayment fee (which is income, not an installment component), per component.
    paid_before, paid_after = totals_paid(before), totals_paid(after)
    delta = tuple(a - b for a, b in zip(paid_after, paid_before, strict=True))
    assert delta == (allocation.penalty, allocation.fee - result.prepayment_fee,
                     allocation.interest, allocation.principal)
    assert sum(delta) == amount - result.prepayment_fee
    assert after.prepayment_fees_paid - before.prepayment_fees_paid == result.prepayment_fee
    if kind == KIND_REGULAR:
        assert result.prepayment_fee == 0
        assert before.unpaid_total() - after.unpaid_total() == amount
    assert_installments_sound(after)
    assert after.version == before.version + 1
    # The installments due by the business date are never rewritten.
    for old, new in zip(before.installments, after.installments, strict=False):
        if old.due_date <= state.as_of:
            assert (new.principal, new.interest, new.fee, new.penalty) == (
                old.principal, old.interest, old.fee, old.penalty)
    journal = state.journal
    journal.add_all(result.postings, state.as_of, after)
    assert journal.differences(after) == []
    assert journal.trial_balance_ok()


def assert_closed(loan: Loan, journal: Journal) -> None:
    assert loan.status == LOAN_PAID_OFF and loan.dpd == 0 and loan.bucket == "C"
    for inst in loan.installments:
        assert inst.status == INST_PAID
        assert inst.unpaid_total() == 0
        assert inst.interest_recognized == inst.paid_interest
        assert inst.fee_recognized == inst.paid_fee
    expected = reconcile.expected_balances(loan)
    assert all(v == 0 for role, v in expected.items() if role != ledger.CASH), expected
    net = journal.net()
    for role in reconcile.RECONCILED_ROLES:
        if role != ledger.CASH:
            assert net.get(role, 0) == 0, f"orphan balance on {role}: {net.get(role)}"


def open_future(loan: Loan, as_of: date) -> int:
    return sum(1 for i in loan.installments if i.due_date > as_of and i.unpaid_total() > 0)


# ---------------------------------------------------------------------------------------
# Properties


@HISTORY_SETTINGS
@given(histories(), st.sampled_from(REPAYMENT_KINDS), AMOUNT_CHOICES)
def test_any_repayment_is_sound_or_refused_without_change(
    state: State, kind: str, choice: str | int
) -> None:
    """Every repayment allocates every fen, balances, conserves money, keeps every component
    within 0..owed, keeps principals summing to the loan amount and reconciles; every
    refusal is justified by the figures and leaves the loan exactly as it was."""
    loan, as_of = state.loan, state.as_of
    amount = pick_amount(loan, as_of, choice)
    f = figures(loan, as_of)
    before = snapshot(loan)
    try:
        result = apply_repayment(loan, kind, amount, as_of)
    except RepaymentRefused as refusal:
        event(f"refused {refusal.code}")
        assert snapshot(loan) == before, "a refusal changes nothing"
        assert_refusal_justified(loan, kind, amount, f, refusal.code)
        return
    event(f"applied {kind}")
    assert snapshot(loan) == before, "the input loan is never mutated"
    assert_success_allowed(loan, kind, amount, f)
    assert_sound_result(state, kind, amount, result)
    if kind == KIND_PAYOFF or (kind in PREPAYMENTS and amount == f.quote_total):
        assert_closed(result.loan, state.journal)


def assert_refusal_justified(loan: Loan, kind: str, amount: int, f: Figures,
                             code: str) -> None:
    if loan.status == LOAN_PAID_OFF:
        assert code == "invalid_state"
    elif amount <= 0:
        assert code == "invalid_amount"
    elif kind == KIND_REGULAR:
        assert code == "amount_exceeds_due" and amount > f.payable
    elif kind == KIND_PAYOFF:
        assert amount != f.quote_total
        assert code == ("amount_exceeds_due" if amount > f.quote_total else
                        "amount_below_payoff")
    elif kind == KIND_SHORTEN_TERM and loan.repayment_method in NO_SHORTEN:
        assert code == "kind_not_supported"
    else:
        assert amount != f.quote_total, "the payoff total settles the loan"
        if code == "nothing_to_prepay":
            assert f.not_due == 0
        elif code == "prepayment_below_due":
            assert amount <= f.owed_now
        else:
            assert code == "amount_exceeds_due"
            assert amount >= f.due_now + f.not_due
            if f.current_is_first_open:
                assert amount >= f.quote_total - f.quote_prepayment_fee


def assert_success_allowed(loan: Loan, kind: str, amount: int, f: Figures) -> None:
    assert loan.status != LOAN_PAID_OFF and amount > 0
    if kind == KIND_REGULAR:
        assert amount <= f.payable
    elif kind == KIND_PAYOFF:
        assert amount == f.quote_total
    elif amount != f.quote_total:
        assert not (kind == KIND_SHORTEN_TERM and loan.repayment_method in NO_SHORTEN)
        assert f.not_due > 0
        assert f.due_now < amount < f.quote_total


@HISTORY_SETTINGS
@given(histories(), st.sampled_from(REPAYMENT_KINDS), st.integers(1, 1000))
def test_every_acceptable_amount_is_accepted(state: State, kind: str, permille: int) -> None:
    """The converse of the refusal rules: an amount inside the window of its kind is taken
    (regular: up to what is due plus the next installment; prepayment: more than is owed
    now, less than the payoff total minus its prepayment fee)."""
    loan, as_of = state.loan, state.as_of
    f = figures(loan, as_of)
    if loan.status == LOAN_PAID_OFF:
        return
    if kind == KIND_REGULAR:
        if f.payable == 0:
            return
        amount = max(1, f.payable * permille // 1000)
    elif kind == KIND_PAYOFF:
        if f.quote_total == 0:
            # Only a loan with no principal left can quote nothing (the future fees and
            # interest a payoff waives are all it still shows).
            assert loan.outstanding_principal() == 0
            return
        amount = f.quote_total
    else:
        if kind == KIND_SHORTEN_TERM and loan.repayment_method in NO_SHORTEN:
            return
        low, high = f.owed_now + 1, f.quote_total - f.quote_prepayment_fee - 1
        if not f.current_is_first_open or f.not_due == 0 or low > high:
            return
        amount = low + (high - low) * permille // 1000
    event(f"accepted {kind}")
    result = apply_repayment(loan, kind, amount, as_of)
    assert_sound_result(state, kind, amount, result)


@HISTORY_SETTINGS
@given(histories())
def test_payoff_for_the_quoted_total_closes_the_loan_everywhere(state: State) -> None:
    """Payoff at any point of a loan's life (current, overdue with penalty, non-accrual,
    written off, after prepayments): the quote's parts add up, one fen less or more is
    refused, the quoted total closes every installment and leaves no balance on any
    receivable or memo account of the loan."""
    loan, as_of = state.loan, state.as_of
    if loan.status == LOAN_PAID_OFF:
        return
    quote = payoff_quote(loan, as_of)
    assert quote.total == (quote.principal + quote.interest + quote.penalty + quote.fee
                           + quote.prepayment_fee)
    assert quote.principal == loan.outstanding_principal()
    assert quote.penalty == loan.outstanding_penalty()
    assert min(quote.interest, quote.fee, quote.prepayment_fee) >= 0
    if quote.total == 0:
        assert loan.outstanding_principal() == 0
        return
    event(f"paid off a {loan.status} loan")
    before = snapshot(loan)
    for wrong, code in ((quote.total + 1, "amount_exceeds_due"),
                        (quote.total - 1, "amount_below_payoff")):
        if wrong > 0:
            with pytest.raises(RepaymentRefused) as refused:
                apply_payoff(loan, wrong, as_of)
            assert refused.value.code == code
    result = apply_payoff(loan, quote.total, as_of)
    assert snapshot(loan) == before
    assert result.prepayment_fee == quote.prepayment_fee
    assert_sound_result(state, KIND_PAYOFF, quote.total, result)
    assert_closed(result.loan, state.journal)
    # Once paid off, every kind is refused with 409 and nothing changes.
    closed = snapshot(result.loan)
    for kind in REPAYMENT_KINDS:
        with pytest.raises(RepaymentRefused) as refused:
            apply_repayment(result.loan, kind, 100, as_of)
        assert (refused.value.code, refused.value.status) == ("invalid_state", 409)
    assert snapshot(result.loan) == closed


@HISTORY_SETTINGS
@given(histories(), st.sampled_from(PREPAYMENTS), st.integers(0, 1000))
def test_prepayment_rebuilds_the_schedule(state: State, kind: str, permille: int) -> None:
    """A partial prepayment pays everything due, then principal ahead; the rebuilt schedule
    keeps the due dates; reduce_installment keeps the number of open installments (when
    the balance left is not so tiny that a period rounds to nothing), shorten_term never
    adds one, and never raises a later installment."""
    loan, as_of = state.loan, state.as_of
    f = figures(loan, as_of)
    if (loan.status == LOAN_PAID_OFF or not f.current_is_first_open or f.not_due == 0
            or (kind == KIND_SHORTEN_TERM and loan.repayment_method in NO_SHORTEN)):
        event("skipped: no principal ahead to prepay")
        return
    low, high = f.owed_now + 1, f.quote_total - f.quote_prepayment_fee - 1
    if low > high:
        event("skipped: no room for a partial prepayment")
        return
    event("prepaid")
    amount = low + (high - low) * permille // 1000
    result = apply_repayment(loan, kind, amount, as_of)
    after = result.loan
    assert_sound_result(state, kind, amount, result)
    assert all(i.unpaid_total() == 0 for i in after.installments if i.due_date <= as_of)
    assert after.dpd == 0
    prepaid = amount - f.owed_now - result.prepayment_fee
    assert 0 < prepaid < f.not_due
    assert after.outstanding_principal() == f.not_due - prepaid
    # The prepayment fee is prepayment_fee_bps of the principal prepaid (±1 fen of rounding).
    assert abs(result.prepayment_fee * 10_000 - prepaid * loan.prepayment_fee_bps) <= 10_000
    old_dates = [i.due_date for i in loan.installments]
    new_dates = [i.due_date for i in after.installments]
    n_rebuilt = sum(1 for d in old_dates if d > as_of)
    if kind == KIND_REDUCE_INSTALLMENT:
        assert new_dates == old_dates
        if after.outstanding_principal() >= max(100_000, n_rebuilt**2):
            # Every period stays open, except that the current one may close: the
            # prepayment pays its interest to date, and a period's interest never exceeds
            # the contract's (late in a period the two meet), leaving only principal on it.
            closed = open_future(loan, as_of) - open_future(after, as_of)
            head = next(i for i in after.installments if i.due_date > as_of)
            assert closed == 0 or (closed == 1 and head.unpaid_total() == 0), (closed, head)
    else:
        assert new_dates == old_dates[: len(new_dates)]
        assert open_future(after, as_of) <= open_future(loan, as_of)
        first = next(k for k, i in enumerate(loan.installments) if i.due_date > as_of)
        for old, new in zip(loan.installments[first + 1:], after.installments[first + 1:],
                            strict=False):
            tolerance = 2 * n_rebuilt  # rounding of the last period
            assert new.principal + new.interest + new.fee <= (
                old.principal + old.interest + old.fee + tolerance), (old, new)


@HISTORY_SETTINGS
@given(histories(methods=AMORTISING, kinds=(KIND_REGULAR,)), st.integers(0, 1000))
def test_shorten_term_drops_periods_when_the_prepayment_is_big_enough(
    state: State, permille: int
) -> None:
    """Keeping the installment, a prepayment of more than the principal of the first and the
    last open installments must shorten the term: what is left is at most the principal of
    the m − 2 periods in between, which the same installment (with less interest, as the
    balance is lower) repays in at most m − 2 periods. The loan has only had regular
    repayments, so the installment in force is the booked one."""
    loan, as_of = state.loan, state.as_of
    f = figures(loan, as_of)
    if (loan.status == LOAN_PAID_OFF or not f.current_is_first_open
            or open_future(loan, as_of) < 3):
        event("skipped: fewer than 3 open periods")
        return
    head = next(i for i in loan.installments if i.due_date > as_of)
    low = head.unpaid_principal() + loan.installments[-1].unpaid_principal() + 2
    high = f.not_due - 1
    if low > high:
        event("skipped: balance too small")
        return
    event("shortened")
    target = low + (high - low) * permille // 1000
    fee = (target * loan.prepayment_fee_bps + 5_000) // 10_000
    amount = f.owed_now + target + fee
    result = apply_prepayment(loan, amount, as_of, keep_term=False)
    assert result.allocation.total() == amount
    assert open_future(result.loan, as_of) < open_future(loan, as_of)
    assert len(result.loan.installments) < len(loan.installments)


@settings(max_examples=300, deadline=None)
@given(loans(), st.sampled_from(REPAYMENT_KINDS), AMOUNT_CHOICES, st.integers(0, 400))
def test_repayments_on_a_loan_never_serviced(
    loan: Loan, kind: str, choice: str | int, days: int
) -> None:
    """Many cheap examples on loans whose end of day never ran (nothing recognised)."""
    as_of = loan.disbursed_on + timedelta(days=days)
    state = State(loan, Journal(loan), as_of, False)
    amount = pick_amount(loan, as_of, choice)
    f = figures(loan, as_of)
    before = snapshot(loan)
    try:
        result = apply_repayment(loan, kind, amount, as_of)
    except RepaymentRefused as refusal:
        assert snapshot(loan) == before
        assert_refusal_justified(loan, kind, amount, f, refusal.code)
        return
    assert snapshot(loan) == before
    assert_success_allowed(loan, kind, amount, f)
    assert_sound_result(state, kind, amount, result)


# ---------------------------------------------------------------------------------------
# Examples: allocation strategies


def overdue_loan(allocation: str) -> tuple[Loan, date]:
    """1,000,000 / 1800 bps / 12, period 1 (76,680 + 15,000, due 2026-12-28) unpaid through
    the end of 2027-01-07: 10 days overdue, penalty charged on days 4..10 (grace 3)."""
    loan = make_loan(allocation=allocation)
    day = DISBURSED
    while day <= date(2027, 1, 7):
        loan = close_day(loan, day, POLICY).loan
        day += timedelta(days=1)
    return loan, day


def test_oldest_first_pays_penalty_fee_interest_principal_of_the_oldest_first() -> None:
    loan, as_of = overdue_loan(ALLOCATION_OLDEST_FIRST)
    first = loan.installments[0]
    # Penalty 7 days × round(76,680 × 1800 × 150 / 360,000,000) = 7 × round(57.51) = 406
    assert (first.status, first.penalty) == (INST_OVERDUE, 7 * 58)
    result = apply_regular(loan, 406 + 15_000 + 1_000, as_of)
    assert result.allocation == msgspec.structs.replace(
        result.allocation, penalty=406, fee=0, interest=15_000, principal=1_000)
    paid = result.loan.installments[0]
    assert (paid.paid_penalty, paid.paid_interest, paid.paid_principal) == (406, 15_000, 1_000)
    assert result.loan.installments[1].paid_interest == 0
    # The rest of period 1 comes before any of period 2.
    rest = apply_regular(result.loan, 75_680 + 100, as_of)
    assert rest.allocation.principal == 75_680 and rest.allocation.interest == 100
    assert rest.loan.installments[0].status == INST_PAID
    assert rest.loan.installments[1].paid_interest == 100
    assert rest.loan.status == LOAN_ACTIVE and rest.loan.dpd == 0


def test_principal_interest_first_leaves_fee_and_penalty_last() -> None:
    """Interest and principal of every reachable installment (overdue period 1, then the next
    one, period 2 due 2027-01-28) come before any fee or penalty."""
    loan, as_of = overdue_loan(ALLOCATION_PRINCIPAL_INTEREST_FIRST)
    assert loan.installments[0].penalty == 406
    second = loan.installments[1]  # interest round(923,320 × 0.015) = 13,850
    assert (second.principal, second.interest) == (77_830, 13_850)
    result = apply_regular(loan, 91_680 + 91_680, as_of)
    assert result.allocation.penalty == 0
    assert (result.allocation.interest, result.allocation.principal) == (
        15_000 + 13_850, 76_680 + 77_830)
    assert result.loan.installments[0].unpaid_penalty() == 406
    assert result.loan.installments[1].status == INST_PAID
    # Period 1 stays overdue (its penalty is unpaid). Period 3 (78,998 + 12,682) is now the
    # next installment, and its interest and principal still come before that penalty.
    assert result.loan.installments[0].status == INST_OVERDUE
    third = apply_regular(result.loan, 406, as_of)
    assert (third.allocation.interest, third.allocation.penalty) == (406, 0)
    last = apply_regular(result.loan, 91_680 + 406, as_of)
    assert (last.allocation.interest, last.allocation.principal, last.allocation.penalty) == (
        12_682, 78_998, 406)
    assert last.loan.installments[0].status == INST_PAID


def test_principal_interest_first_with_installment_fees() -> None:
    """On an installment-fee loan (fee 6,000 a period, principal 83,333), a payment of the
    principal of period 1 and 1,000 more goes to period 2's principal before period 1's
    fee (the strategy reads "penalty last" at loan level)."""
    loan = make_loan("installment_fee", 1_000_000, 0, 12, monthly_fee_bps=60,
                     allocation=ALLOCATION_PRINCIPAL_INTEREST_FIRST, penalty_rate_bps=1300)
    as_of = date(2026, 12, 28)  # period 1 due today
    assert loan.installments[0].fee == 6_000 and loan.installments[0].principal == 83_333
    result = apply_regular(loan, 83_333 + 1_000, as_of)
    assert (result.allocation.principal, result.allocation.fee) == (84_333, 0)
    assert result.loan.installments[1].paid_principal == 1_000
    oldest = apply_regular(make_loan("installment_fee", 1_000_000, 0, 12,
                                     monthly_fee_bps=60, penalty_rate_bps=1300),
                           83_333 + 1_000, as_of)
    assert (oldest.allocation.fee, oldest.allocation.principal) == (6_000, 78_333)


# ---------------------------------------------------------------------------------------
# Examples: regular limit, prepayment fee, refusals


def test_regular_may_pay_overdue_due_and_the_next_installment_only() -> None:
    """As of 2027-01-28: period 1 (due 2026-12-28) overdue with penalty, period 2 due today,
    period 3 next. regular_payable = everything unpaid on periods 1 and 2 + period 3; one
    fen more is a prepayment and is refused."""
    loan = make_loan()
    day = DISBURSED
    while day < date(2027, 1, 28):
        loan = close_day(loan, day, POLICY).loan
        day += timedelta(days=1)
    first, second, third = loan.installments[:3]
    assert first.status == INST_OVERDUE and second.status == "due"
    limit = first.unpaid_total() + second.unpaid_total() + third.unpaid_total()
    assert regular_payable(loan, day) == limit
    assert limit == 3 * 91_680 + first.penalty and first.penalty > 0
    before = snapshot(loan)
    with pytest.raises(RepaymentRefused) as refused:
        apply_regular(loan, limit + 1, day)
    assert (refused.value.code, refused.value.status) == ("amount_exceeds_due", 422)
    assert snapshot(loan) == before
    result = apply_regular(loan, limit, day)
    assert [i.status for i in result.loan.installments[:4]] == [
        INST_PAID, INST_PAID, INST_PAID, "pending"]
    # Paid ahead, period 4 becomes "the next installment".
    assert regular_payable(result.loan, day) == 91_680


def test_prepayment_fee_is_charged_on_the_principal_prepaid() -> None:
    """300 bps prepayment fee. Day 10 of period 1: interest to date round(1,000,000 × 0.18 ×
    10 / 360) = 5,000. Paying 5,000 + 103,000 leaves 103,000 = X + 3% X: X = 100,000 prepaid
    principal, fee 3,000. A payoff the same day: 1,000,000 + 5,000 + 3% × 1,000,000."""
    loan = make_loan(prepayment_fee_bps=300)
    as_of = DISBURSED + timedelta(days=10)
    quote = payoff_quote(loan, as_of)
    assert (quote.interest, quote.prepayment_fee, quote.total) == (5_000, 30_000, 1_035_000)
    result = apply_repayment(loan, KIND_REDUCE_INSTALLMENT, 108_000, as_of)
    assert result.prepayment_fee == 3_000
    assert (result.allocation.interest, result.allocation.principal,
            result.allocation.fee) == (5_000, 100_000, 3_000)
    assert result.loan.outstanding_principal() == 900_000
    assert result.loan.prepayment_fees_paid == 3_000
    fee_postings = [p for p in result.postings if p.kind == ledger.PREPAYMENT_FEE]
    assert [(line.account, line.debit, line.credit) for line in fee_postings[0].lines] == [
        (ledger.CASH, 3_000, 0), (ledger.FEE_INCOME, 0, 3_000)]
    payoff = apply_repayment(loan, KIND_PAYOFF, 1_035_000, as_of)
    assert payoff.prepayment_fee == 30_000 and payoff.loan.status == LOAN_PAID_OFF


@pytest.mark.parametrize(
    ("kind", "method", "amount", "days", "code"),
    [
        (KIND_REGULAR, "equal_installment", 0, 0, "invalid_amount"),
        (KIND_PAYOFF, "equal_installment", -5, 0, "invalid_amount"),
        (KIND_REGULAR, "equal_installment", 91_681, 0, "amount_exceeds_due"),
        (KIND_PAYOFF, "equal_installment", 1_004_999, 10, "amount_below_payoff"),
        (KIND_PAYOFF, "equal_installment", 1_005_001, 10, "amount_exceeds_due"),
        (KIND_SHORTEN_TERM, "interest_first", 200_000, 10, "kind_not_supported"),
        (KIND_SHORTEN_TERM, "bullet", 200_000, 10, "kind_not_supported"),
        (KIND_REDUCE_INSTALLMENT, "equal_installment", 5_000, 10, "prepayment_below_due"),
        # Above the payoff total 1,005,000 (1,000,000 + 10 days' interest 5,000).
        (KIND_REDUCE_INSTALLMENT, "equal_installment", 1_005_001, 10, "amount_exceeds_due"),
        ("lump_sum", "equal_installment", 100, 10, "invalid_kind"),
    ],
)
def test_refusals_name_the_rule_and_change_nothing(
    kind: str, method: str, amount: int, days: int, code: str
) -> None:
    loan = make_loan(method)
    before = snapshot(loan)
    with pytest.raises(RepaymentRefused) as refused:
        apply_repayment(loan, kind, amount, DISBURSED + timedelta(days=days))
    assert refused.value.code == code
    assert refused.value.status == 422
    assert snapshot(loan) == before


def test_nothing_to_prepay_when_all_principal_is_due() -> None:
    """On the last due date every principal is due: a prepayment has nothing to reduce."""
    loan = make_loan(term=3)
    last_due = loan.installments[-1].due_date
    with pytest.raises(RepaymentRefused) as refused:
        apply_repayment(loan, KIND_REDUCE_INSTALLMENT, 1_000, last_due)
    assert refused.value.code == "nothing_to_prepay"


def test_paid_off_loan_refuses_everything_with_409() -> None:
    loan = make_loan()
    closed = apply_payoff(loan, payoff_quote(loan, DISBURSED).total, DISBURSED).loan
    before = snapshot(closed)
    for kind in REPAYMENT_KINDS:
        with pytest.raises(RepaymentRefused) as refused:
            apply_repayment(closed, kind, 1, DISBURSED)
        assert (refused.value.code, refused.value.status) == ("invalid_state", 409)
    assert snapshot(closed) == before


def test_two_shorten_term_prepayments_keep_the_installment() -> None:
    """Keep the installment (91,680) across two prepayments. Day 10 of period 1: pay all but
    150,000 of the payoff total → balance 150,000: period 1 pays 91,680 − 2,250 = 89,430
    principal, the last (period 2) the 60,570 left. A second shorten_term next day of
    10,000 (interest to date round(150,000 × 0.18 × 11/360) = 825 is below the 5,000 paid
    on period 1 already, so all 10,000 is principal) leaves 140,000: period 1 keeps
    91,680 − round(140,000 × 0.015) = 91,680 − 2,100 = 89,580, period 2 the 50,420 left.
    The last installment must go down, never up."""
    loan = make_loan()
    day = DISBURSED + timedelta(days=10)
    first = apply_repayment(loan, KIND_SHORTEN_TERM,
                            payoff_quote(loan, day).total - 150_000, day).loan
    assert [i.principal - i.paid_principal for i in first.installments] == [89_430, 60_570]
    second = apply_repayment(first, KIND_SHORTEN_TERM, 10_000, day + timedelta(days=1))
    assert second.allocation.principal == 10_000
    assert [i.principal - i.paid_principal for i in second.loan.installments] == [
        89_580, 50_420]


def test_shorten_term_with_two_periods_left_keeps_the_installment() -> None:
    """After a shorten_term, months later, with only two periods left (the second being the
    short remainder), another shorten_term must still keep 91,680 a period: the remainder
    installment is not the installment in force."""
    loan = make_loan()
    day = DISBURSED + timedelta(days=10)
    quote = payoff_quote(loan, day).total
    loan = apply_repayment(loan, KIND_SHORTEN_TERM, quote - 250_000, day).loan
    remaining = [i.principal - i.paid_principal for i in loan.installments]
    assert len(remaining) == 3 and sum(remaining) == 250_000
    # Pay period 1 on its due date; as of the next day two periods are left.
    due = loan.installments[0].due_date
    loan = apply_regular(loan, loan.installments[0].unpaid_total(), due).loan
    as_of = due + timedelta(days=1)
    last_before = loan.installments[2].principal
    balance = loan.outstanding_principal()
    owed = figures(loan, as_of).owed_now
    result = apply_repayment(loan, KIND_SHORTEN_TERM, owed + 10_000, as_of)
    new_balance = balance - 10_000
    head, last = result.loan.installments[1], result.loan.installments[2]
    assert head.principal - head.paid_principal == 91_680 - (new_balance * 15 + 500) // 1000
    assert last.principal < last_before


def test_a_small_prepayment_never_raises_the_period_interest() -> None:
    """CASH_BL_3-like bullet: 1,000,000 fen, 1800 bps, 3 months, disbursed 2026-11-29 and due
    2027-02-28 (91 days). Contract interest: round(1,000,000 × 0.015 × 3) = 45,000. At the
    daily rate the 91 days would cost 1,000,000 × 0.18 / 360 × 91 = 45,500, so without the
    ceiling a prepayment of 1 fen on the disbursement day would raise the interest to 45,500.
    With it: min(0 + round(999,999 × 0.0005 × 91) = 45,500, 45,000) = 45,000."""
    loan = make_loan("bullet", 1_000_000, 1800, 3)
    result = apply_repayment(loan, KIND_REDUCE_INSTALLMENT, 1, DISBURSED)
    (only,) = result.loan.installments
    assert (only.principal, only.paid_principal, only.interest) == (1_000_000, 1, 45_000)


def test_interest_paid_ahead_counts_toward_the_rebuilt_period() -> None:
    """1,000,000 fen, 1800 bps, 12 months, disbursed 2026-11-29; period 1 due 2026-12-28
    (29 days). A regular 1,000 on day 0 pays 1,000 of period 1's interest ahead. Prepaying
    300,000 the same day then owes no interest to date (0 days) and the rest of the period on
    700,000: round(700,000 × 0.0005 × 29) = 10,150. Period 1's interest becomes
    max(1,000 paid, 0 + 10,150) = 10,150, of which 9,150 is still owed: the 1,000 paid ahead
    counts, exactly as if the borrower had prepaid 301,000 less the 1,000 of interest."""
    loan = make_loan()
    ahead = apply_repayment(loan, KIND_REGULAR, 1_000, DISBURSED).loan
    prepaid = apply_repayment(ahead, KIND_REDUCE_INSTALLMENT, 300_000, DISBURSED).loan
    first = prepaid.installments[0]
    assert (first.interest, first.paid_interest) == (10_150, 1_000)
    assert first.unpaid_interest() == 9_150
