"""API views (API.md shapes) of domain objects, rendered to the exact bytes a partner sees.

Rendering happens inside the shard, before commit, because the rendered bytes are what the
idempotency record stores: a replay returns them byte for byte.
"""

from __future__ import annotations

from datetime import date

import msgspec

from lending import ledger
from lending.funding import Funding
from lending.loans import INST_PAID, Allocation, Loan, PayoffQuote


class Components(msgspec.Struct, frozen=True):
    principal: int
    interest: int
    penalty: int
    fee: int


class ScheduleItemView(msgspec.Struct, frozen=True):
    period: int
    due_date: date
    principal: int
    interest: int
    fee: int
    total: int
    status: str
    paid: Components
    penalty: int


class FundingPartView(msgspec.Struct, frozen=True):
    """What one book holds of a funded loan: on-balance principal (normal and overdue) and
    receivables, and interest tracked off balance while the loan is non-accrual."""

    book: str
    ratio_bps: int
    principal: int
    interest: int
    penalty: int
    fee: int
    off_balance_interest: int


class FundingView(msgspec.Struct, frozen=True):
    """Joint and assisted lending: the books that fund the loan, the lead (who takes every
    rounding residue) first; the guarantor and its compensation (代偿), if any."""

    parts: list[FundingPartView]
    guarantor: str | None
    compensation_dpd: int | None
    compensated_on: date | None


class LoanView(msgspec.Struct, frozen=True, omit_defaults=True):
    loan_id: str
    application_id: str
    customer_id: str
    product_code: str
    status: str
    principal: int
    annual_rate_bps: int
    apr_bps: int
    term: int
    repayment_method: str
    disbursed_on: date
    outstanding: Components
    dpd: int
    bucket: str
    classification: str
    schedule: list[ScheduleItemView]
    product_version: int
    payee: str
    non_accrual: bool
    written_off_on: date | None
    remaining_periods: int
    funding: FundingView | None = None  # left out for a self-funded loan


class AllocationView(msgspec.Struct, frozen=True):
    penalty: int
    fee: int  # includes the prepayment fee, so the four components sum to the amount
    interest: int
    principal: int


class RepaymentView(msgspec.Struct, frozen=True):
    repayment_id: str
    loan_id: str
    value_date: date
    allocation: AllocationView
    loan: LoanView
    amount: int
    external_ref: str
    kind: str
    prepayment_fee: int  # the part of allocation.fee that is the prepayment fee


class PayoffView(msgspec.Struct, frozen=True):
    as_of: date
    principal: int
    interest: int
    penalty: int
    fee: int
    total: int
    prepayment_fee: int


class DecisionView(msgspec.Struct, frozen=True):
    reasons: list[str]
    approved_amount: int | None
    annual_rate_bps: int | None
    apr_bps: int | None
    term: int | None
    credit_limit: int | None
    expires_on: date | None


class ApplicationView(msgspec.Struct, frozen=True):
    application_id: str
    customer_id: str
    status: str
    decision: DecisionView
    created_on: date
    partner_application_id: str
    product_code: str
    amount: int
    term: int
    loan_id: str | None


class CustomerView(msgspec.Struct, frozen=True):
    """A customer as ONE partner sees it (several partners may bring the same person):
    `loan_ids` are that partner's loans only; `credit_limit` and `available_limit` are the
    customer's shared limit as that partner may use it (`partner_limit`)."""

    customer_id: str
    name_masked: str
    id_number_masked: str
    phone_masked: str
    credit_limit: int
    available_limit: int
    loan_ids: list[str]


_ENCODER = msgspec.json.Encoder()


def encode(view: msgspec.Struct) -> bytes:
    return _ENCODER.encode(view)


def partner_limit(credit_limit: int, used: int, used_by_partner: int) -> tuple[int, int]:
    """(credit_limit, available_limit) shown to one partner of a customer whose limit is
    shared by every partner that brought them. `used` is the outstanding principal of all the
    customer's loans, `used_by_partner` that of the partner's own.

    available: what is left of the shared limit, i.e. what this partner could still book.
    credit_limit: the partner's own use plus that, never above the customer's limit. So
    credit_limit − available_limit is the partner's own use (what it can add up from its
    own loans), and the view does not show what another partner borrowed. With one partner
    (or none borrowing elsewhere) these are the customer's limit and what is left of it.
    """
    available = max(0, credit_limit - used)
    return min(credit_limit, used_by_partner + available), available


# What most periods of a schedule show as paid: one shared (frozen) object, not one each.
_NOTHING_PAID = Components(0, 0, 0, 0)


def loan_view(loan: Loan) -> LoanView:
    # One pass over the installments for the schedule, the outstanding amounts and the
    # periods left: every repayment's reply renders this view, and walking the list once
    # instead of five times (Loan.outstanding_* each walk it) halves what the view costs.
    schedule: list[ScheduleItemView] = []
    principal = interest = penalty = fee = remaining_periods = 0
    for inst in loan.installments:
        paid_principal, paid_interest = inst.paid_principal, inst.paid_interest
        paid_penalty, paid_fee = inst.paid_penalty, inst.paid_fee
        principal += inst.principal - paid_principal
        penalty += inst.penalty - paid_penalty
        # Recognised and unpaid only, as Loan.outstanding_interest and outstanding_fee
        # (an `if`, not max(): this loop runs for every period of every reply).
        recognised_unpaid = inst.interest_recognized - paid_interest
        if recognised_unpaid > 0:
            interest += recognised_unpaid
        recognised_unpaid = inst.fee_recognized - paid_fee
        if recognised_unpaid > 0:
            fee += recognised_unpaid
        if inst.status != INST_PAID:
            remaining_periods += 1
        schedule.append(ScheduleItemView(
            period=inst.period,
            due_date=inst.due_date,
            principal=inst.principal,
            interest=inst.interest,
            fee=inst.fee,
            total=inst.principal + inst.interest + inst.fee,
            status=inst.status,
            paid=(Components(paid_principal, paid_interest, paid_penalty, paid_fee)
                  if paid_principal or paid_interest or paid_penalty or paid_fee
                  else _NOTHING_PAID),
            penalty=inst.penalty,
        ))
    return LoanView(
        loan_id=loan.loan_id,
        application_id=loan.application_id,
        customer_id=loan.customer_id,
        product_code=loan.product_code,
        status=loan.status,
        principal=loan.principal,
        annual_rate_bps=loan.annual_rate_bps,
        apr_bps=loan.apr_bps,
        term=loan.term,
        repayment_method=loan.repayment_method,
        disbursed_on=loan.disbursed_on,
        outstanding=Components(principal, interest, penalty, fee),
        dpd=loan.dpd,
        bucket=loan.bucket,
        classification=loan.classification,
        schedule=schedule,
        product_version=loan.product_version,
        payee=loan.payee,
        non_accrual=loan.non_accrual,
        written_off_on=loan.written_off_on,
        remaining_periods=remaining_periods,
        funding=None if loan.funding is None else funding_view(loan.funding),
    )


def funding_view(funding: Funding) -> FundingView:
    parts = [
        FundingPartView(
            book=share.book,
            ratio_bps=share.ratio_bps,
            principal=(share.holding(ledger.PRINCIPAL_NORMAL)
                       + share.holding(ledger.PRINCIPAL_OVERDUE)),
            interest=share.holding(ledger.INTEREST_RECEIVABLE),
            penalty=share.holding(ledger.PENALTY_RECEIVABLE),
            fee=share.holding(ledger.FEE_RECEIVABLE),
            off_balance_interest=share.holding(ledger.OFF_BALANCE_INTEREST),
        )
        for share in funding.shares
    ]
    guaranteed = bool(funding.guarantor_book)
    return FundingView(
        parts=parts,
        guarantor=funding.guarantor_book or None,
        compensation_dpd=funding.compensation_dpd if guaranteed else None,
        compensated_on=funding.compensated_on,
    )


def payoff_view(quote: PayoffQuote) -> PayoffView:
    return PayoffView(
        as_of=quote.as_of,
        principal=quote.principal,
        interest=quote.interest,
        penalty=quote.penalty,
        fee=quote.fee + quote.prepayment_fee,
        total=quote.total,
        prepayment_fee=quote.prepayment_fee,
    )


def allocation_view(allocation: Allocation) -> AllocationView:
    return AllocationView(
        allocation.penalty, allocation.fee, allocation.interest, allocation.principal
    )
