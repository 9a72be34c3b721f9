"""Daily mechanics of a loan (DOMAIN.md §3, §5): what end of day does to one loan for one
business date. Pure: `close_day(loan, day, policy)` returns the new loan and its postings.

The order is that of DOMAIN.md §5: accrue the day's interest; installments due on `day` and
unpaid become overdue (principal reclassified, fee charged); penalty for the day; then DPD,
bucket, classification, non-accrual and write-off as of the next business date (day + 1,
the date partners see once the run ends). A loan remembers the last day it closed, so
closing the same day twice changes nothing (the EOD run can resume after a crash).

Rules chosen where DOMAIN.md is silent (docs/domain-choices.md):
* Interest accrues evenly over the days of each period: by the end of day d of a period of
  N days, round(I·d/N) of its interest I is recognised, so the installment's interest is
  fully receivable on its due date and the daily amounts sum to I exactly.
* An installment's fee is charged (recognised) on its due date.
* Penalty accrues on the days overdue beyond the grace days only (day grace+1 is the first
  charged), on unpaid principal, plus unpaid interest when the contract compounds (复利).
  Regular interest stops at the due date: overdue principal bears penalty instead.
* Non-accrual starts when DPD exceeds `non_accrual_dpd` (everything recognised and unpaid
  moves to the off-balance memo accounts) and ends when the loan is current again (DPD 0).
"""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise

import msgspec

from lending import ledger
from lending.ledger import PostingBuilder
from lending.loans import (
    INST_DUE,
    INST_OVERDUE,
    INST_PAID,
    INST_PENDING,
    LOAN_ACTIVE,
    LOAN_OVERDUE,
    LOAN_PAID_OFF,
    LOAN_WRITTEN_OFF,
    Installment,
    Loan,
    _own,
    bucket_of,
    copy_loan,
    days_past_due,
    derecognise,
    recognise,
    unpaid_principal_by_class,
)
from lending.money import BPS_PER_UNIT, DAYS_PER_YEAR

_PCT = 100
_PENALTY_DENOMINATOR = BPS_PER_UNIT * _PCT * DAYS_PER_YEAR

CLASS_NORMAL = "normal"
CLASS_SPECIAL_MENTION = "special_mention"
CLASS_SUBSTANDARD = "substandard"
CLASS_DOUBTFUL = "doubtful"
CLASS_LOSS = "loss"


class ServicingPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Thresholds in DPD, from config `[servicing]` (docs/operations.md)."""

    non_accrual_dpd: int = 90       # past this, interest goes off balance sheet
    write_off_dpd: int = 180        # past this, the loan is written off (核销)
    special_mention_dpd: int = 1    # 五级分类: the first DPD of each class
    substandard_dpd: int = 91
    doubtful_dpd: int = 181
    loss_dpd: int = 361

    def validate(self) -> None:
        steps = [self.special_mention_dpd, self.substandard_dpd, self.doubtful_dpd,
                 self.loss_dpd]
        if steps[0] < 1 or any(b <= a for a, b in pairwise(steps)):
            raise ValueError(
                "servicing classification thresholds must be increasing and >= 1: "
                f"special_mention {steps[0]}, substandard {steps[1]}, doubtful {steps[2]}, "
                f"loss {steps[3]}"
            )
        if self.non_accrual_dpd < 1 or self.write_off_dpd < 1:
            raise ValueError("servicing non_accrual_dpd and write_off_dpd must be >= 1")

    def classify(self, dpd: int) -> str:
        if dpd >= self.loss_dpd:
            return CLASS_LOSS
        if dpd >= self.doubtful_dpd:
            return CLASS_DOUBTFUL
        if dpd >= self.substandard_dpd:
            return CLASS_SUBSTANDARD
        if dpd >= self.special_mention_dpd:
            return CLASS_SPECIAL_MENTION
        return CLASS_NORMAL


class DayResult(msgspec.Struct, frozen=True):
    loan: Loan
    postings: tuple[ledger.Posting, ...]
    accrued_interest: int = 0
    accrued_penalty: int = 0
    became_overdue: int = 0  # installments that turned overdue today


def close_day(loan: Loan, day: date, policy: ServicingPolicy) -> DayResult:
    """End of day `day` for one loan. Idempotent: a day already closed changes nothing."""
    if loan.status == LOAN_PAID_OFF or (
        loan.last_closed_on is not None and loan.last_closed_on >= day
    ):
        return DayResult(loan, ())
    updated = copy_loan(loan)
    postings: list[ledger.Posting] = []
    accrued = _accrue_interest(updated, day, postings)
    overdue = _mark_overdue(updated, day, postings)
    penalty = _accrue_penalty(updated, day, postings)
    _classify(updated, day + timedelta(days=1), policy, postings)
    updated.last_closed_on = day
    return DayResult(updated, tuple(postings), accrued, penalty, overdue)


def accrual_target(inst: Installment, period_start: date, day: date) -> int:
    """Interest of `inst` that should be recognised by the end of `day` (even daily spread)."""
    days = (inst.due_date - period_start).days
    elapsed = (day - period_start).days + 1
    if elapsed >= days:
        return inst.interest
    return (2 * inst.interest * elapsed + days) // (2 * days)  # half-up, non-negative


def _accrue_interest(loan: Loan, day: date, postings: list[ledger.Posting]) -> int:
    builder = PostingBuilder(ledger.INTEREST_ACCRUAL)
    start = loan.disbursed_on
    total = 0
    for index, inst in enumerate(loan.installments):
        if start > day:
            break
        target = accrual_target(inst, start, day)
        start = inst.due_date
        owed = min(target, inst.interest) - inst.interest_recognized
        if owed <= 0:
            continue
        _own(loan, index).interest_recognized += owed
        recognise(builder, loan, "interest", owed)
        total += owed
    if not builder.is_empty():
        postings.append(builder.build())
    return total


def _mark_overdue(loan: Loan, day: date, postings: list[ledger.Posting]) -> int:
    """Installments due on or before `day`: fee charged; unpaid ones become overdue."""
    fees = PostingBuilder(ledger.FEE_CHARGE)
    reclass = PostingBuilder(ledger.OVERDUE_RECLASS)
    turned = 0
    for index, inst in enumerate(loan.installments):
        if inst.due_date > day:
            break
        if inst.fee_recognized < inst.fee:
            owned = _own(loan, index)
            recognise(fees, loan, "fee", inst.fee - inst.fee_recognized)
            owned.fee_recognized = inst.fee
            inst = owned
        if inst.status in (INST_PAID, INST_OVERDUE) or inst.unpaid_total() == 0:
            continue
        owned = _own(loan, index)
        owned.status = INST_OVERDUE
        turned += 1
        if loan.written_off_on is None:
            reclass.move(ledger.PRINCIPAL_OVERDUE, ledger.PRINCIPAL_NORMAL,
                         owned.principal - owned.paid_principal)
    for builder in (fees, reclass):
        if not builder.is_empty():
            postings.append(builder.build())
    return turned


def _accrue_penalty(loan: Loan, day: date, postings: list[ledger.Posting]) -> int:
    builder = PostingBuilder(ledger.PENALTY_ACCRUAL)
    annual = loan.penalty_rate_bps * loan.penalty_multiplier_pct
    total = 0
    for index, inst in enumerate(loan.installments):
        if inst.due_date >= day:
            break
        if inst.status != INST_OVERDUE or (day - inst.due_date).days <= loan.grace_days:
            continue
        base = inst.principal - inst.paid_principal
        if loan.compound_penalty:
            base += inst.interest - inst.paid_interest
        amount = (2 * base * annual + _PENALTY_DENOMINATOR) // (2 * _PENALTY_DENOMINATOR)
        if amount <= 0:
            continue
        _own(loan, index).penalty += amount
        recognise(builder, loan, "penalty", amount)
        total += amount
    if not builder.is_empty():
        postings.append(builder.build())
    return total


def _classify(
    loan: Loan, next_day: date, policy: ServicingPolicy, postings: list[ledger.Posting]
) -> None:
    """DPD, bucket, classification, non-accrual and write-off as of the next business date;
    installments falling due on it become `due`."""
    loan.dpd = days_past_due(loan, next_day)
    loan.bucket = bucket_of(loan.dpd)
    loan.classification = policy.classify(loan.dpd)
    transitions: list[ledger.Posting | None] = []
    writing_off = loan.written_off_on is None and loan.dpd > policy.write_off_dpd
    if not loan.non_accrual and (loan.dpd > policy.non_accrual_dpd or writing_off):
        transitions.append(_switch_accrual(loan, non_accrual=True))
    elif loan.non_accrual and loan.dpd == 0 and loan.written_off_on is None:
        transitions.append(_switch_accrual(loan, non_accrual=False))
    if writing_off:
        transitions.append(_write_off(loan, next_day))
    postings.extend(p for p in transitions if p is not None)
    for index, inst in enumerate(loan.installments):
        if inst.due_date == next_day and inst.status == INST_PENDING:
            _own(loan, index).status = INST_DUE
    if loan.status != LOAN_WRITTEN_OFF:
        overdue = any(i.status == INST_OVERDUE for i in loan.installments)
        loan.status = LOAN_OVERDUE if overdue else LOAN_ACTIVE


def _unpaid_income(loan: Loan) -> tuple[int, int, int]:
    interest = penalty = fee = 0
    for inst in loan.installments:
        interest += inst.interest_recognized - inst.paid_interest
        penalty += inst.penalty - inst.paid_penalty
        fee += inst.fee_recognized - inst.paid_fee
    return interest, penalty, fee


def _switch_accrual(loan: Loan, non_accrual: bool) -> ledger.Posting | None:
    """非应计 (True): recognised-unpaid interest, penalty and fee leave the P&L for the
    memo accounts; accrual resumed (False): what is still unpaid returns to the receivables.
    The same mechanism as every rewrite: derecognise where it sits, recognise where it goes."""
    unpaid = dict(zip(("interest", "penalty", "fee"), _unpaid_income(loan), strict=True))
    builder = PostingBuilder(ledger.NON_ACCRUAL if non_accrual else ledger.ACCRUAL_RESUMED)
    for component, amount in unpaid.items():
        derecognise(builder, loan, component, amount)
    loan.non_accrual = non_accrual
    for component, amount in unpaid.items():
        recognise(builder, loan, component, amount)
    return _built(builder)


def _write_off(loan: Loan, on: date) -> ledger.Posting | None:
    """核销: the unpaid principal leaves the balance sheet as a credit loss and is tracked
    in the written-off memo accounts; recoveries stay possible (see loans._Collected)."""
    builder = PostingBuilder(ledger.WRITE_OFF)
    normal, overdue = unpaid_principal_by_class(loan)
    builder.debit(ledger.CREDIT_LOSS, normal + overdue)
    builder.credit(ledger.PRINCIPAL_NORMAL, normal)
    builder.credit(ledger.PRINCIPAL_OVERDUE, overdue)
    builder.move(ledger.WRITTEN_OFF, ledger.WRITTEN_OFF_CONTRA, normal + overdue)
    loan.written_off_on = on
    loan.status = LOAN_WRITTEN_OFF
    return _built(builder)


def _built(builder: PostingBuilder) -> ledger.Posting | None:
    """The posting, or None when the transition moves no money (an entry is never empty)."""
    return None if builder.is_empty() else builder.build()
