"""End of day for one loan (lending/daily.py): accrual, fee charge, overdue and reclass,
penalty, DPD / bucket / classification, non-accrual, write-off and recovery, idempotency;
and the key property: whatever happens to a loan, its journal reconciles with it."""

from __future__ import annotations

from datetime import date, timedelta
from fractions import Fraction
from math import floor

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from loan_factory import DISBURSED, Journal, make_loan, net_of, snapshot

from lending import ledger
from lending.daily import (
    CLASS_DOUBTFUL,
    CLASS_LOSS,
    CLASS_NORMAL,
    CLASS_SPECIAL_MENTION,
    CLASS_SUBSTANDARD,
    DayResult,
    ServicingPolicy,
    close_day,
)
from lending.loans import (
    ALLOCATION_OLDEST_FIRST,
    ALLOCATION_PRINCIPAL_INTEREST_FIRST,
    INST_DUE,
    INST_OVERDUE,
    INST_PAID,
    INST_PENDING,
    KIND_PAYOFF,
    KIND_REGULAR,
    LOAN_ACTIVE,
    LOAN_OVERDUE,
    LOAN_PAID_OFF,
    LOAN_WRITTEN_OFF,
    REPAYMENT_KINDS,
    Loan,
    RepaymentRefused,
    apply_regular,
    apply_repayment,
    bucket_of,
    days_past_due,
    payoff_quote,
    regular_payable,
)
from lending.schedules import REPAYMENT_METHODS

POLICY = ServicingPolicy()
DUE_1 = date(2026, 12, 28)  # period 1 of a loan disbursed on DISBURSED


def close_through(loan: Loan, journal: Journal, last: date,
                  policy: ServicingPolicy = POLICY) -> tuple[Loan, list[DayResult]]:
    """Close every day from the day after the last closed one (or disbursement) to `last`."""
    day = (loan.last_closed_on + timedelta(days=1) if loan.last_closed_on
           else loan.disbursed_on)
    results = []
    while day <= last:
        result = close_day(loan, day, policy)
        journal.add_all(result.postings, day, result.loan)
        results.append(result)
        loan = result.loan
        day += timedelta(days=1)
    return loan, results


def lines_of(result: DayResult, kind: str) -> list[tuple[str, int, int]]:
    found = [p for p in result.postings if p.kind == kind]
    assert len(found) <= 1
    return [(line.account, line.debit, line.credit) for line in found[0].lines] if found else []


def repay(loan: Loan, journal: Journal, kind: str, amount: int, day: date) -> Loan:
    result = apply_repayment(loan, kind, amount, day)
    journal.add_all(result.postings, day, loan)
    return result.loan


# ---------------------------------------------------------------------------------------
# Interest accrual


def test_interest_accrues_evenly_over_the_period_and_sums_to_the_installment() -> None:
    """Period 1 runs 2026-11-29 → 2026-12-28 (29 days), interest 15,000: by the end of day d
    of the period round(15,000 · d / 29) is recognised, so day 1 accrues 517 (517.24), and
    the last day (2026-12-27, d = 29) completes 15,000. From 2026-12-28 period 2 (31 days,
    interest 13,850) accrues: round(13,850 / 31) = 447 (446.77) on its first day."""
    loan = make_loan()
    journal = Journal(loan)
    loan, results = close_through(loan, journal, date(2026, 12, 27))
    assert len(results) == 29
    daily = [r.accrued_interest for r in results]
    cumulative = [floor(Fraction(15_000 * d, 29) + Fraction(1, 2)) for d in range(30)]
    assert daily == [cumulative[d] - cumulative[d - 1] for d in range(1, 30)]
    assert daily[0] == 517 and sum(daily) == 15_000
    assert loan.installments[0].interest_recognized == 15_000
    assert loan.installments[1].interest_recognized == 0
    assert lines_of(results[0], ledger.INTEREST_ACCRUAL) == [
        (ledger.INTEREST_RECEIVABLE, 517, 0), (ledger.INTEREST_INCOME, 0, 517)]
    loan, [due_day] = close_through(loan, journal, DUE_1)
    assert due_day.accrued_interest == 447
    assert loan.installments[1].interest_recognized == 447
    assert journal.differences(loan) == []


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(REPAYMENT_METHODS), st.integers(1, 5_000_000),
       st.sampled_from([0, 700, 1800, 3600]), st.sampled_from([1, 2, 3, 6, 12]),
       st.integers(1, 28))
def test_accrual_of_every_installment_is_complete_by_its_due_date(
    method: str, principal: int, rate: int, term: int, day_of_month: int
) -> None:
    """For every method, term and disbursement day: daily accruals are never negative,
    each installment's interest is fully recognised at the end of its due date, and
    nothing more than the schedule's interest is ever recognised."""
    fee = 0
    if method == "installment_fee":
        rate, fee = 0, 60
    loan = make_loan(method, principal, rate, term, monthly_fee_bps=fee,
                     disbursed_on=date(2027, 3, day_of_month))
    journal = Journal(loan)
    total = 0
    for inst in loan.installments:
        loan, results = close_through(loan, journal, inst.due_date)
        assert all(r.accrued_interest >= 0 for r in results)
        total += sum(r.accrued_interest for r in results)
        done = loan.installments[inst.period - 1]
        assert done.interest_recognized == done.interest
    assert total == sum(i.interest for i in loan.installments)
    assert journal.differences(loan) == []


# ---------------------------------------------------------------------------------------
# Fee charge, overdue transition, principal reclass


def test_installment_fee_is_charged_on_its_due_date() -> None:
    """等本等费 1,000,000 at 60 bps a month: fee 6,000 per period, charged (recognised) at the
    end of its due date, not before."""
    loan = make_loan("installment_fee", 1_000_000, 0, 12, monthly_fee_bps=60,
                     penalty_rate_bps=1300)
    journal = Journal(loan)
    loan, results = close_through(loan, journal, DUE_1 - timedelta(days=1))
    assert loan.installments[0].fee_recognized == 0
    assert all(not lines_of(r, ledger.FEE_CHARGE) for r in results)
    assert loan.installments[0].status == INST_DUE  # due as of the next business date
    loan, [due_day] = close_through(loan, journal, DUE_1)
    assert lines_of(due_day, ledger.FEE_CHARGE) == [
        (ledger.FEE_RECEIVABLE, 6_000, 0), (ledger.FEE_INCOME, 0, 6_000)]
    assert loan.installments[0].fee_recognized == 6_000
    assert loan.installments[1].fee_recognized == 0
    assert journal.differences(loan) == []


def test_fee_paid_in_advance_is_not_charged_again() -> None:
    """Period 1 paid in full on day 0 (fee 6,000 recognised as income when collected): its
    due date charges no fee, and no fee is left receivable."""
    loan = make_loan("installment_fee", 1_000_000, 0, 12, monthly_fee_bps=60,
                     penalty_rate_bps=1300)
    journal = Journal(loan)
    loan = repay(loan, journal, KIND_REGULAR, 6_000 + 83_333, DISBURSED)
    assert loan.installments[0].fee_recognized == 6_000
    loan, _ = close_through(loan, journal, DUE_1 - timedelta(days=1))
    loan, [due_day] = close_through(loan, journal, DUE_1)
    assert not lines_of(due_day, ledger.FEE_CHARGE)
    assert loan.installments[0].status == INST_PAID
    assert journal.net().get(ledger.FEE_RECEIVABLE, 0) == 0
    assert journal.differences(loan) == []


def test_unpaid_installment_turns_overdue_and_its_principal_is_reclassified() -> None:
    """Interest 15,000 and 10,000 of principal of period 1 are paid in advance; at the end
    of its due date the 66,680 principal left moves from normal to overdue principal. As
    of the next day DPD is 1: bucket M1, special mention, loan overdue."""
    loan = make_loan()
    journal = Journal(loan)
    loan = repay(loan, journal, KIND_REGULAR, 25_000, date(2026, 12, 10))
    loan, _ = close_through(loan, journal, DUE_1 - timedelta(days=1))
    assert (loan.installments[0].status, loan.dpd, loan.status) == (INST_DUE, 0, LOAN_ACTIVE)
    loan, [due_day] = close_through(loan, journal, DUE_1)
    assert due_day.became_overdue == 1
    assert lines_of(due_day, ledger.OVERDUE_RECLASS) == [
        (ledger.PRINCIPAL_OVERDUE, 66_680, 0), (ledger.PRINCIPAL_NORMAL, 0, 66_680)]
    assert loan.installments[0].status == INST_OVERDUE
    assert (loan.status, loan.dpd, loan.bucket, loan.classification) == (
        LOAN_OVERDUE, 1, "M1", CLASS_SPECIAL_MENTION)
    net = journal.net()
    assert net[ledger.PRINCIPAL_OVERDUE] == 66_680
    assert net[ledger.PRINCIPAL_NORMAL] == 1_000_000 - 76_680
    assert journal.differences(loan) == []
    # Paying the overdue installment makes the loan current again; its principal paid
    # leaves the overdue account.
    day = DUE_1 + timedelta(days=1)
    loan = repay(loan, journal, KIND_REGULAR, loan.installments[0].unpaid_total(), day)
    assert (loan.status, loan.dpd) == (LOAN_ACTIVE, 0)
    assert journal.net()[ledger.PRINCIPAL_OVERDUE] == 0
    loan, [after] = close_through(loan, journal, day)
    assert (after.loan.dpd, after.loan.bucket, after.loan.classification) == (0, "C",
                                                                             CLASS_NORMAL)


def test_paid_installment_does_not_turn_overdue() -> None:
    loan = make_loan()
    journal = Journal(loan)
    loan = repay(loan, journal, KIND_REGULAR, 91_680, DUE_1)
    loan, _ = close_through(loan, journal, DUE_1 - timedelta(days=1))
    loan, [due_day] = close_through(loan, journal, DUE_1)
    assert due_day.became_overdue == 0 and not lines_of(due_day, ledger.OVERDUE_RECLASS)
    assert (loan.status, loan.dpd) == (LOAN_ACTIVE, 0)


# ---------------------------------------------------------------------------------------
# Penalty


def penalty_days(loan: Loan, last: date) -> dict[date, int]:
    journal = Journal(loan)
    _, results = close_through(loan, journal, last)
    return {r.loan.last_closed_on: r.accrued_penalty for r in results
            if r.accrued_penalty and r.loan.last_closed_on}


def test_penalty_starts_on_the_day_after_the_grace_days() -> None:
    """Grace 3: overdue from the end of 2026-12-28; days 1–3 overdue (12-29..12-31) are
    free, day 4 (2027-01-01) is the first charged: round(76,680 × 1800 × 150 /
    (10,000 × 100 × 360)) = round(57.51) = 58 a day on the unpaid principal."""
    days = penalty_days(make_loan(), date(2027, 1, 5))
    assert days == {date(2027, 1, d): 58 for d in range(1, 6)}


def test_penalty_without_grace_days_starts_the_first_day_overdue() -> None:
    days = penalty_days(make_loan(grace_days=0), date(2026, 12, 31))
    assert days == {date(2026, 12, d): 58 for d in (29, 30, 31)}


def test_compound_penalty_also_bears_on_unpaid_interest() -> None:
    """复利: base = principal 76,680 + interest 15,000 = 91,680: round(68.76) = 69."""
    days = penalty_days(make_loan(compound_penalty=True), date(2027, 1, 2))
    assert days == {date(2027, 1, 1): 69, date(2027, 1, 2): 69}


def test_penalty_rate_and_multiplier_come_from_the_contract() -> None:
    """Base rate 1300 × multiplier 200 %: round(76,680 × 1300 × 200 / 360,000,000) =
    round(55.38) = 55."""
    loan = make_loan(penalty_rate_bps=1300, penalty_multiplier_pct=200)
    assert penalty_days(loan, date(2027, 1, 1)) == {date(2027, 1, 1): 55}


def test_penalty_follows_the_unpaid_principal_and_is_posted() -> None:
    """After 50,000 is repaid on 2027-01-02 (58 × 1 penalty, 15,000 interest, then 34,942 of
    principal), the base is 76,680 − 34,942 = 41,738: round(31.30) = 31 a day."""
    loan = make_loan()
    journal = Journal(loan)
    loan, results = close_through(loan, journal, date(2027, 1, 1))
    assert lines_of(results[-1], ledger.PENALTY_ACCRUAL) == [
        (ledger.PENALTY_RECEIVABLE, 58, 0), (ledger.PENALTY_INCOME, 0, 58)]
    loan = repay(loan, journal, KIND_REGULAR, 50_000, date(2027, 1, 2))
    assert loan.installments[0].unpaid_principal() == 41_738
    loan, [next_day] = close_through(loan, journal, date(2027, 1, 2))
    assert next_day.accrued_penalty == 31
    assert journal.differences(loan) == []


# ---------------------------------------------------------------------------------------
# DPD, bucket, classification


@pytest.mark.parametrize(
    ("dpd", "bucket"),
    [(0, "C"), (1, "M1"), (30, "M1"), (31, "M2"), (60, "M2"), (61, "M3"), (90, "M3"),
     (91, "M4"), (120, "M4"), (121, "M5"), (150, "M5"), (151, "M6"), (180, "M6"),
     (181, "M6+"), (1000, "M6+")],
)
def test_bucket_boundaries(dpd: int, bucket: str) -> None:
    assert bucket_of(dpd) == bucket


@pytest.mark.parametrize(
    ("dpd", "classification"),
    [(0, CLASS_NORMAL), (1, CLASS_SPECIAL_MENTION), (90, CLASS_SPECIAL_MENTION),
     (91, CLASS_SUBSTANDARD), (180, CLASS_SUBSTANDARD), (181, CLASS_DOUBTFUL),
     (360, CLASS_DOUBTFUL), (361, CLASS_LOSS)],
)
def test_default_classification_boundaries(dpd: int, classification: str) -> None:
    assert POLICY.classify(dpd) == classification


def test_custom_classification_thresholds() -> None:
    policy = ServicingPolicy(special_mention_dpd=5, substandard_dpd=31, doubtful_dpd=61,
                             loss_dpd=91)
    policy.validate()
    assert [policy.classify(d) for d in (0, 4, 5, 30, 31, 60, 61, 90, 91)] == [
        CLASS_NORMAL, CLASS_NORMAL, CLASS_SPECIAL_MENTION, CLASS_SPECIAL_MENTION,
        CLASS_SUBSTANDARD, CLASS_SUBSTANDARD, CLASS_DOUBTFUL, CLASS_DOUBTFUL, CLASS_LOSS]


def expected_bucket(dpd: int) -> str:
    """DOMAIN.md §3, written out as ranges."""
    for bucket, low, high in (("C", 0, 0), ("M1", 1, 30), ("M2", 31, 60), ("M3", 61, 90),
                              ("M4", 91, 120), ("M5", 121, 150), ("M6", 151, 180)):
        if low <= dpd <= high:
            return bucket
    return "M6+"


@pytest.mark.parametrize("policy", [POLICY, ServicingPolicy(
    special_mention_dpd=4, substandard_dpd=30, doubtful_dpd=45, loss_dpd=100,
    non_accrual_dpd=60, write_off_dpd=400)])
def test_dpd_bucket_and_classification_day_by_day(policy: ServicingPolicy) -> None:
    """A loan never repaid, closed day by day for 400 days: DPD as of the next business date
    counts from period 1's due date (the oldest unpaid), and bucket and classification
    follow it at every boundary."""
    loan = make_loan()
    journal = Journal(loan)
    loan, results = close_through(loan, journal, DUE_1 + timedelta(days=400), policy)
    thresholds = ((policy.loss_dpd, CLASS_LOSS), (policy.doubtful_dpd, CLASS_DOUBTFUL),
                  (policy.substandard_dpd, CLASS_SUBSTANDARD),
                  (policy.special_mention_dpd, CLASS_SPECIAL_MENTION))
    for result in results:
        assert result.loan.last_closed_on is not None
        next_day = result.loan.last_closed_on + timedelta(days=1)
        dpd = max(0, (next_day - DUE_1).days)
        assert result.loan.dpd == dpd == days_past_due(result.loan, next_day)
        assert result.loan.bucket == expected_bucket(dpd)
        expected = next((c for low, c in thresholds if dpd >= low), CLASS_NORMAL)
        assert result.loan.classification == expected
    assert journal.differences(loan) == []


def test_dpd_counts_from_the_oldest_unpaid_installment() -> None:
    loan = make_loan()
    journal = Journal(loan)
    loan, _ = close_through(loan, journal, date(2027, 2, 10))
    assert loan.dpd == (date(2027, 2, 11) - DUE_1).days == 45
    loan = repay(loan, journal, KIND_REGULAR, loan.installments[0].unpaid_total(),
                 date(2027, 2, 11))
    loan, _ = close_through(loan, journal, date(2027, 2, 11))
    assert loan.dpd == (date(2027, 2, 12) - date(2027, 1, 28)).days == 15


def test_unpaid_penalty_alone_does_not_make_a_loan_past_due() -> None:
    """principal_interest_first pays penalty last. Period 1 is paid (91,680) ten days late,
    on 2027-01-07: 6 days of penalty × 58 = 348 stay unpaid, as every later payment of
    91,680 on its due date goes to that period's interest and principal. The borrower pays
    on time: DPD must stay 0 (no non-accrual, no write-off of a performing loan), while the
    348 stays owed (period 1 overdue, in the receivable)."""
    loan = make_loan(allocation=ALLOCATION_PRINCIPAL_INTEREST_FIRST)
    journal = Journal(loan)
    loan, _ = close_through(loan, journal, date(2027, 1, 6))
    loan = repay(loan, journal, KIND_REGULAR, 91_680, date(2027, 1, 7))
    assert loan.installments[0].unpaid_total() == loan.installments[0].penalty == 6 * 58
    for inst in make_loan().installments[1:8]:
        loan, _ = close_through(loan, journal, inst.due_date - timedelta(days=1))
        loan = repay(loan, journal, KIND_REGULAR, 91_680, inst.due_date)
        loan, _ = close_through(loan, journal, inst.due_date)
        assert (loan.dpd, loan.bucket, loan.classification) == (0, "C", CLASS_NORMAL)
    assert (loan.non_accrual, loan.written_off_on) == (False, None)
    assert loan.installments[0].status == INST_OVERDUE
    assert journal.net()[ledger.PENALTY_RECEIVABLE] == 348
    assert journal.differences(loan) == []


# ---------------------------------------------------------------------------------------
# Non-accrual, write-off, recovery


def test_non_accrual_past_90_dpd_moves_income_to_memo_and_back() -> None:
    loan = make_loan()
    journal = Journal(loan)
    day_90 = DUE_1 + timedelta(days=89)  # closing it, DPD as of the next day is 90
    loan, _ = close_through(loan, journal, day_90)
    assert (loan.dpd, loan.non_accrual) == (90, False)
    receivable = journal.net()[ledger.INTEREST_RECEIVABLE]
    penalty = journal.net()[ledger.PENALTY_RECEIVABLE]
    assert receivable > 0 and penalty > 0
    loan, [day_91] = close_through(loan, journal, day_90 + timedelta(days=1))
    assert (loan.dpd, loan.non_accrual, loan.bucket) == (91, True, "M4")
    moved = lines_of(day_91, ledger.NON_ACCRUAL)
    interest_today = day_91.accrued_interest
    penalty_today = day_91.accrued_penalty
    interest_total = receivable + interest_today
    penalty_total = penalty + penalty_today
    assert sorted(moved) == sorted([
        (ledger.INTEREST_INCOME, interest_total, 0),
        (ledger.INTEREST_RECEIVABLE, 0, interest_total),
        (ledger.PENALTY_INCOME, penalty_total, 0),
        (ledger.PENALTY_RECEIVABLE, 0, penalty_total),
        (ledger.OFF_BALANCE_INTEREST, interest_total + penalty_total, 0),
        (ledger.OFF_BALANCE_INTEREST_CONTRA, 0, interest_total + penalty_total),
    ])
    net = journal.net()
    assert net[ledger.INTEREST_RECEIVABLE] == net[ledger.PENALTY_RECEIVABLE] == 0
    assert net[ledger.OFF_BALANCE_INTEREST] == interest_total + penalty_total
    # While non-accrual, the day's interest and penalty go to the memo accounts only.
    loan, [memo_day] = close_through(loan, journal, day_90 + timedelta(days=2))
    assert {account for account, _, _ in lines_of(memo_day, ledger.INTEREST_ACCRUAL)} == {
        ledger.OFF_BALANCE_INTEREST, ledger.OFF_BALANCE_INTEREST_CONTRA}
    assert {account for account, _, _ in lines_of(memo_day, ledger.PENALTY_ACCRUAL)} == {
        ledger.OFF_BALANCE_INTEREST, ledger.OFF_BALANCE_INTEREST_CONTRA}
    assert journal.differences(loan) == []
    # Pay everything overdue: the recognised income collected leaves the memo and is
    # income now; the next end of day (DPD 0) returns what is left to the receivables.
    as_of = day_90 + timedelta(days=3)  # the business date after memo_day
    overdue = sum(i.unpaid_total() for i in loan.installments if i.due_date <= as_of)
    loan = repay(loan, journal, KIND_REGULAR, overdue, as_of)
    assert journal.differences(loan) == []
    loan, [back] = close_through(loan, journal, as_of)
    assert (loan.dpd, loan.non_accrual) == (0, False)
    unpaid_interest = sum(i.interest_recognized - i.paid_interest for i in loan.installments)
    assert unpaid_interest > 0
    assert (ledger.INTEREST_RECEIVABLE, unpaid_interest, 0) in lines_of(
        back, ledger.ACCRUAL_RESUMED)
    net = journal.net()
    assert net[ledger.INTEREST_RECEIVABLE] == unpaid_interest
    assert net.get(ledger.OFF_BALANCE_INTEREST, 0) == 0
    assert net.get(ledger.OFF_BALANCE_INTEREST_CONTRA, 0) == 0
    assert journal.differences(loan) == []


def test_write_off_past_180_dpd_then_recovery() -> None:
    loan = make_loan()
    journal = Journal(loan)
    day_180 = DUE_1 + timedelta(days=179)
    loan, _ = close_through(loan, journal, day_180)
    assert (loan.dpd, loan.status, loan.written_off_on) == (180, LOAN_OVERDUE, None)
    overdue_principal = journal.net()[ledger.PRINCIPAL_OVERDUE]
    normal_principal = journal.net()[ledger.PRINCIPAL_NORMAL]
    assert overdue_principal + normal_principal == 1_000_000
    loan, [day_181] = close_through(loan, journal, day_180 + timedelta(days=1))
    assert (loan.dpd, loan.status, loan.bucket) == (181, LOAN_WRITTEN_OFF, "M6+")
    assert loan.written_off_on == day_180 + timedelta(days=2)
    assert loan.classification == CLASS_DOUBTFUL
    # Periods 1–6 (due 2026-12-28 .. 2027-05-28) are overdue; 7–12 are not due yet.
    assert overdue_principal == sum(i.principal for i in loan.installments[:6])
    assert sorted(lines_of(day_181, ledger.WRITE_OFF)) == sorted([
        (ledger.CREDIT_LOSS, 1_000_000, 0),
        (ledger.PRINCIPAL_NORMAL, 0, normal_principal),
        (ledger.PRINCIPAL_OVERDUE, 0, overdue_principal),
        (ledger.WRITTEN_OFF, 1_000_000, 0),
        (ledger.WRITTEN_OFF_CONTRA, 0, 1_000_000),
    ])
    net = journal.net()
    assert net[ledger.PRINCIPAL_NORMAL] == net[ledger.PRINCIPAL_OVERDUE] == 0
    assert net[ledger.CREDIT_LOSS] == net[ledger.WRITTEN_OFF] == 1_000_000
    assert journal.differences(loan) == []
    # Recovery: oldest first, period 1's penalty, interest, then 10,000 of its principal.
    as_of = day_180 + timedelta(days=2)
    first = loan.installments[0]
    amount = first.penalty + first.interest + 10_000
    result = apply_regular(loan, amount, as_of)
    journal.add_all(result.postings, as_of, loan)
    loan = result.loan
    assert result.allocation.principal == 10_000
    [posting] = result.postings
    assert (ledger.CREDIT_LOSS, 0, 10_000) in [(x.account, x.debit, x.credit)
                                                for x in posting.lines]
    net = journal.net()
    assert net[ledger.CREDIT_LOSS] == net[ledger.WRITTEN_OFF] == 990_000
    assert net[ledger.WRITTEN_OFF_CONTRA] == -990_000
    # Penalty collected is income now (income accounts carry a credit: negative net debit).
    assert -net[ledger.PENALTY_INCOME] == first.penalty
    assert journal.differences(loan) == []
    # Later end-of-day runs keep the loan written off; a payoff closes every memo.
    loan, _ = close_through(loan, journal, as_of + timedelta(days=30))
    assert loan.status == LOAN_WRITTEN_OFF
    as_of += timedelta(days=31)
    loan = repay(loan, journal, KIND_PAYOFF, payoff_quote(loan, as_of).total, as_of)
    assert loan.status == LOAN_PAID_OFF
    net = journal.net()
    for role in (ledger.WRITTEN_OFF, ledger.WRITTEN_OFF_CONTRA, ledger.OFF_BALANCE_INTEREST,
                 ledger.OFF_BALANCE_INTEREST_CONTRA, ledger.PRINCIPAL_NORMAL,
                 ledger.PRINCIPAL_OVERDUE, ledger.INTEREST_RECEIVABLE,
                 ledger.PENALTY_RECEIVABLE):
        assert net.get(role, 0) == 0, role
    assert net[ledger.CREDIT_LOSS] == 0, "all principal recovered: no loss left"
    assert journal.differences(loan) == []


# ---------------------------------------------------------------------------------------
# Idempotency and policy validation


def test_closing_a_day_twice_changes_nothing() -> None:
    loan = make_loan()
    journal = Journal(loan)
    loan, _ = close_through(loan, journal, DUE_1 + timedelta(days=10))
    before = snapshot(loan)
    for day in (DUE_1 + timedelta(days=10), DUE_1, DISBURSED):
        again = close_day(loan, day, POLICY)
        assert again.loan is loan and again.postings == ()
        assert (again.accrued_interest, again.accrued_penalty, again.became_overdue) == (0, 0, 0)
    assert snapshot(loan) == before


def test_closing_a_paid_off_loan_changes_nothing() -> None:
    loan = make_loan()
    closed = apply_repayment(loan, KIND_PAYOFF, payoff_quote(loan, DISBURSED).total,
                             DISBURSED).loan
    result = close_day(closed, DISBURSED + timedelta(days=400), POLICY)
    assert result.loan is closed and result.postings == ()


def test_close_day_never_mutates_its_input() -> None:
    loan = make_loan("installment_fee", 1_000_000, 0, 3, monthly_fee_bps=60,
                     penalty_rate_bps=1300, compound_penalty=True)
    day = DISBURSED
    while day <= DUE_1 + timedelta(days=200):
        before = snapshot(loan)
        result = close_day(loan, day, POLICY)
        assert snapshot(loan) == before
        loan = result.loan
        day += timedelta(days=1)
    assert loan.status == LOAN_WRITTEN_OFF


@pytest.mark.parametrize(
    "changes",
    [
        {"special_mention_dpd": 0},
        {"substandard_dpd": 1},
        {"doubtful_dpd": 91},
        {"loss_dpd": 100},
        {"non_accrual_dpd": 0},
        {"write_off_dpd": 0},
        {"write_off_dpd": -5},
    ],
)
def test_policy_validate_refuses_bad_thresholds(changes: dict[str, int]) -> None:
    policy = ServicingPolicy(**changes)
    with pytest.raises(ValueError, match="servicing"):
        policy.validate()


def test_default_policy_is_valid() -> None:
    POLICY.validate()
    assert (POLICY.non_accrual_dpd, POLICY.write_off_dpd) == (90, 180)


# ---------------------------------------------------------------------------------------
# The key property: everything reconciles, always

POLICIES = st.sampled_from([
    POLICY,
    ServicingPolicy(non_accrual_dpd=30, write_off_dpd=60),
    # Write-off before non-accrual: the write-off takes the income off balance too.
    ServicingPolicy(non_accrual_dpd=120, write_off_dpd=45),
])


@st.composite
def scenario_loans(draw: st.DrawFn) -> Loan:
    method = draw(st.sampled_from(REPAYMENT_METHODS))
    if method == "installment_fee":
        rate, fee, penalty_rate = 0, draw(st.sampled_from([30, 60, 100])), 1300
    else:
        rate, fee, penalty_rate = draw(st.sampled_from([0, 1000, 1800, 2400])), 0, None
    return make_loan(
        method, draw(st.one_of(st.integers(100_000, 10_000_000), st.integers(1, 5_000))),
        rate, draw(st.sampled_from([1, 3, 6, 12, 24])),
        allocation=draw(st.sampled_from([ALLOCATION_OLDEST_FIRST,
                                         ALLOCATION_PRINCIPAL_INTEREST_FIRST])),
        monthly_fee_bps=fee, prepayment_fee_bps=draw(st.sampled_from([0, 100, 300])),
        penalty_rate_bps=penalty_rate, grace_days=draw(st.sampled_from([0, 3])),
        compound_penalty=draw(st.booleans()),
        penalty_multiplier_pct=draw(st.sampled_from([100, 150, 500])),
    )


STEPS = st.lists(
    st.tuples(
        # days of end of day before the repayment: often a few, sometimes a long silence
        st.one_of(st.integers(0, 40), st.sampled_from([0, 92, 185, 400])),
        st.sampled_from(REPAYMENT_KINDS),
        # amount: a share (per mille) of the payoff total; sometimes exactly what regular
        # may pay (-1) or the payoff total (-2)
        st.one_of(st.integers(1, 1000), st.integers(1, 1000), st.integers(1, 1000),
                  st.sampled_from([-1, -2])),
    ),
    min_size=1, max_size=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_loans(), POLICIES, STEPS)
def test_any_history_reconciles(
    loan: Loan, policy: ServicingPolicy, steps: list[tuple[int, str, int]]
) -> None:
    """Random days closed and repayments of random kinds and amounts, including hundreds of
    days unpaid: after every step, every reconciled account of the loan agrees with its
    journal, the trial balance balances, nothing is negative, and the servicing state
    agrees with the DPD (non-accrual past its threshold, written off past its threshold)."""
    journal = Journal(loan)
    day = loan.disbursed_on
    any_write_off = False
    for gap, kind, share in steps:
        for _ in range(gap):
            before = snapshot(loan)
            result = close_day(loan, day, policy)
            assert snapshot(loan) == before
            again = close_day(result.loan, day, policy)
            assert again.loan is result.loan and again.postings == ()
            journal.add_all(result.postings, day, result.loan)
            loan = result.loan
            assert_servicing_state(loan, policy)
            any_write_off = any_write_off or loan.dpd > 180
            day += timedelta(days=1)
        assert journal.differences(loan) == []
        if loan.status == LOAN_PAID_OFF:
            break
        quote = payoff_quote(loan, day)
        if share == -1:
            amount = regular_payable(loan, day)
        elif share == -2:
            amount = quote.total
        else:
            amount = max(1, quote.total * share // 1000)
        try:
            repaid = apply_repayment(loan, kind, amount, day)
        except RepaymentRefused as refused:
            event(f"refused {refused.code}")
            continue
        event(f"{kind} on a {loan.status} loan")
        journal.add_all(repaid.postings, day, loan)
        assert net_of(repaid.postings).get(ledger.CASH) == amount
        loan = repaid.loan
        assert journal.differences(loan) == []
    event(f"ends {loan.status}")
    event(f"max dpd > 180: {any_write_off}")
    assert journal.differences(loan) == []
    assert journal.trial_balance_ok()
    for inst in loan.installments:
        assert 0 <= inst.paid_principal <= inst.principal
        assert 0 <= inst.paid_interest <= inst.interest_recognized <= inst.interest
        assert 0 <= inst.paid_fee <= inst.fee_recognized <= inst.fee
        assert 0 <= inst.paid_penalty <= inst.penalty
    assert sum(i.principal for i in loan.installments) == loan.principal


def assert_servicing_state(loan: Loan, policy: ServicingPolicy) -> None:
    if loan.status == LOAN_PAID_OFF:
        return
    if loan.dpd > policy.write_off_dpd:
        assert loan.written_off_on is not None
    if loan.written_off_on is not None:
        assert loan.status == LOAN_WRITTEN_OFF and loan.non_accrual
    elif loan.dpd > policy.non_accrual_dpd:
        assert loan.non_accrual
    elif loan.dpd == 0:
        assert not loan.non_accrual
    if loan.status != LOAN_WRITTEN_OFF:
        has_overdue = any(i.status == INST_OVERDUE for i in loan.installments)
        assert loan.status == (LOAN_OVERDUE if has_overdue else LOAN_ACTIVE)
    assert loan.bucket == bucket_of(loan.dpd)
    assert loan.classification == policy.classify(loan.dpd)
    for inst in loan.installments:
        assert inst.status in (INST_PENDING, INST_DUE, INST_OVERDUE, INST_PAID)
