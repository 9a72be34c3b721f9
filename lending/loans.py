"""Loan contracts (资产中心): installments, allocation of repayments, payoff.

Pure functions over msgspec Structs. Nothing here mutates its input: every change returns a
new Loan, so the shard can apply a batch to copies and keep its memory untouched until the
batch has committed.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import msgspec

from lending import ledger
from lending.money import rate_daily, round_half_up
from lending.schedules import ScheduleLine

LOAN_ACTIVE = "active"
LOAN_OVERDUE = "overdue"
LOAN_PAID_OFF = "paid_off"
LOAN_WRITTEN_OFF = "written_off"

INST_PENDING = "pending"
INST_DUE = "due"
INST_OVERDUE = "overdue"
INST_PAID = "paid"

ALLOCATION_OLDEST_FIRST = "oldest_first"
ALLOCATION_PRINCIPAL_INTEREST_FIRST = "principal_interest_first"

REPAYMENT_KINDS = ("regular", "prepay_reduce_installment", "prepay_shorten_term", "payoff")


class Installment(msgspec.Struct, array_like=True):
    period: int
    due_date: date
    principal: int
    interest: int
    fee: int
    penalty: int = 0
    paid_principal: int = 0
    paid_interest: int = 0
    paid_fee: int = 0
    paid_penalty: int = 0
    status: str = INST_PENDING

    def unpaid_principal(self) -> int:
        return self.principal - self.paid_principal

    def unpaid_interest(self) -> int:
        return self.interest - self.paid_interest

    def unpaid_fee(self) -> int:
        return self.fee - self.paid_fee

    def unpaid_penalty(self) -> int:
        return self.penalty - self.paid_penalty

    def unpaid_total(self) -> int:
        return (
            self.unpaid_principal()
            + self.unpaid_interest()
            + self.unpaid_fee()
            + self.unpaid_penalty()
        )


class Loan(msgspec.Struct):
    loan_id: str
    application_id: str
    customer_id: str
    partner_id: str
    product_code: str
    product_version: int
    book: str
    principal: int
    annual_rate_bps: int
    apr_bps: int
    term: int
    repayment_method: str
    allocation: str
    prepayment_fee_bps: int
    disbursed_on: date
    payee: str  # "borrower" or "merchant:<id>" (受托支付)
    installments: list[Installment]
    status: str = LOAN_ACTIVE
    # Balances that live in receivable accounts (accrued but unpaid); EOD raises them.
    interest_receivable: int = 0
    fee_receivable: int = 0
    dpd: int = 0
    bucket: str = "C"
    classification: str = "normal"
    version: int = 0

    def outstanding_principal(self) -> int:
        return sum(i.unpaid_principal() for i in self.installments)

    def outstanding_penalty(self) -> int:
        return sum(i.unpaid_penalty() for i in self.installments)

    def unpaid_total(self) -> int:
        return sum(i.unpaid_total() for i in self.installments)


class Allocation(msgspec.Struct, frozen=True):
    penalty: int = 0
    fee: int = 0
    interest: int = 0
    principal: int = 0

    def total(self) -> int:
        return self.penalty + self.fee + self.interest + self.principal


class PayoffQuote(msgspec.Struct, frozen=True):
    as_of: date
    principal: int
    interest: int
    penalty: int
    fee: int
    prepayment_fee: int
    total: int


class RepaymentRefused(ValueError):
    """A business-rule refusal (HTTP 422); the loan is unchanged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def new_loan(
    *,
    loan_id: str,
    application_id: str,
    customer_id: str,
    partner_id: str,
    product_code: str,
    product_version: int,
    book: str,
    annual_rate_bps: int,
    apr_bps: int,
    repayment_method: str,
    allocation: str,
    prepayment_fee_bps: int,
    disbursed_on: date,
    payee: str,
    term: int,
    schedule: list[ScheduleLine],
) -> Loan:
    installments = [
        Installment(line.period, line.due_date, line.principal, line.interest, line.fee)
        for line in schedule
    ]
    return Loan(
        loan_id=loan_id,
        application_id=application_id,
        customer_id=customer_id,
        partner_id=partner_id,
        product_code=product_code,
        product_version=product_version,
        book=book,
        principal=sum(i.principal for i in installments),
        annual_rate_bps=annual_rate_bps,
        apr_bps=apr_bps,
        term=term,  # contract months: a bullet loan of 3 months has one installment
        repayment_method=repayment_method,
        allocation=allocation,
        prepayment_fee_bps=prepayment_fee_bps,
        disbursed_on=disbursed_on,
        payee=payee,
        installments=installments,
    )


def disbursement_entry(loan: Loan, entry_id: str, business_date: date, cause: str):
    """放款: the receivable appears, cash leaves (to the borrower or, entrusted, the merchant)."""
    return ledger.make_entry(
        entry_id, business_date, loan.book, loan.loan_id, cause, "disbursement",
        debits=[(ledger.PRINCIPAL_NORMAL, loan.principal)],
        credits=[(ledger.CASH, loan.principal)],
    )


def _copy(loan: Loan) -> Loan:
    """Copy-on-write: the loan and its installments, so the original stays valid."""
    installments = [msgspec.structs.replace(i) for i in loan.installments]
    return msgspec.structs.replace(loan, installments=installments, version=loan.version + 1)


class _Split(msgspec.Struct):
    """What one repayment paid, split the way the ledger needs it."""

    penalty: int = 0
    fee: int = 0
    interest: int = 0
    principal_normal: int = 0
    principal_overdue: int = 0

    def allocation(self) -> Allocation:
        principal = self.principal_normal + self.principal_overdue
        return Allocation(self.penalty, self.fee, self.interest, principal)


def _pay(inst: Installment, component: str, budget: int, split: _Split) -> int:
    """Pay up to budget on one component of one installment; returns what is left."""
    owed = getattr(inst, component) - getattr(inst, "paid_" + component)
    paid = min(owed, budget)
    if paid <= 0:
        return budget
    setattr(inst, "paid_" + component, getattr(inst, "paid_" + component) + paid)
    if component == "principal":
        if inst.status == INST_OVERDUE:
            split.principal_overdue += paid
        else:
            split.principal_normal += paid
    else:
        setattr(split, component, getattr(split, component) + paid)
    return budget - paid


def _allocation_passes(strategy: str) -> list[tuple[str, ...]]:
    if strategy == ALLOCATION_OLDEST_FIRST:
        return [("penalty", "fee", "interest", "principal")]
    if strategy == ALLOCATION_PRINCIPAL_INTEREST_FIRST:
        return [("interest", "principal"), ("fee", "penalty")]
    raise ValueError(f"unknown allocation strategy {strategy!r}")


def _close_paid_installments(loan: Loan) -> None:
    for inst in loan.installments:
        if inst.unpaid_total() == 0:
            inst.status = INST_PAID
    if all(i.status == INST_PAID for i in loan.installments):
        loan.status = LOAN_PAID_OFF
        loan.dpd = 0
        loan.bucket = "C"


def regular_payable(loan: Loan, as_of: date) -> int:
    """The most a regular repayment may pay: everything overdue or due on or before as_of,
    plus the next installment in advance (DOMAIN.md §3). Paying more ahead is a prepayment."""
    payable = 0
    for inst in _regular_installments(loan, as_of):
        payable += inst.unpaid_total()
    return payable


def _regular_installments(loan: Loan, as_of: date) -> list[Installment]:
    """Installments a regular repayment may touch, oldest first."""
    reachable: list[Installment] = []
    for inst in loan.installments:
        if inst.due_date <= as_of:
            reachable.append(inst)
        elif inst.unpaid_total() > 0:
            reachable.append(inst)  # the next installment not yet fully paid
            break
    return reachable


def apply_regular(loan: Loan, amount: int, as_of: date) -> tuple[Loan, _Split]:
    """Regular repayment: overdue, then due, then the next installment in advance.

    Installments are already ordered oldest first, so "overdue, then due, then in advance"
    is the installment order. The excess is refused, never absorbed (DOMAIN.md §3).
    """
    _check_payable(loan, amount)
    payable = regular_payable(loan, as_of)
    if amount > payable:
        raise RepaymentRefused(
            "amount_exceeds_due",
            f"amount {amount} exceeds what is due plus the next installment ({payable})",
        )
    updated = _copy(loan)
    split = _Split()
    budget = amount
    for components in _allocation_passes(loan.allocation):
        for inst in _regular_installments(updated, as_of):
            for component in components:
                budget = _pay(inst, component, budget, split)
    assert budget == 0, "allocation must consume the whole amount when amount <= owed"
    _close_paid_installments(updated)
    return updated, split


def _check_payable(loan: Loan, amount: int) -> None:
    if loan.status in (LOAN_PAID_OFF,):
        raise RepaymentRefused("invalid_state", f"loan {loan.loan_id} is {loan.status}")
    if amount <= 0:
        raise RepaymentRefused("invalid_amount", "amount must be positive")


def _current_period(loan: Loan, as_of: date) -> tuple[int | None, date]:
    """Index of the first installment due after as_of, and the start of its period."""
    start = loan.disbursed_on
    for index, inst in enumerate(loan.installments):
        if inst.due_date > as_of:
            return index, start
        start = inst.due_date
    return None, start


def payoff_quote(loan: Loan, as_of: date) -> PayoffQuote:
    """结清: principal + interest to date at the daily rate + penalty + fees + prepayment fee.

    Interest: what is unpaid on installments due on or before as_of, plus interest on the
    whole outstanding principal for the days elapsed in the current period (daily rate =
    annual / 360), less interest already paid in advance on the current installment. The
    later installments' scheduled interest is not owed. Fees: those of installments due on or
    before as_of. Interest or fees already paid in advance are not refunded.
    """
    principal = loan.outstanding_principal()
    penalty = loan.outstanding_penalty()
    interest = 0
    fee = 0
    for inst in loan.installments:
        if inst.due_date <= as_of:
            interest += inst.unpaid_interest()
            fee += inst.unpaid_fee()
    current, start = _current_period(loan, as_of)
    if current is not None:
        days = (as_of - start).days
        accrued = round_half_up(principal * rate_daily(loan.annual_rate_bps) * days)
        interest += max(0, accrued - loan.installments[current].paid_interest)
    # The fee is on principal repaid ahead of its due date, not on principal already due.
    ahead = sum(i.unpaid_principal() for i in loan.installments if i.due_date > as_of)
    prepayment_fee = round_half_up(Fraction(ahead * loan.prepayment_fee_bps, 10000))
    total = principal + interest + penalty + fee + prepayment_fee
    return PayoffQuote(as_of, principal, interest, penalty, fee, prepayment_fee, total)


def apply_payoff(loan: Loan, amount: int, as_of: date) -> tuple[Loan, _Split, int]:
    """Settle the loan for exactly the quoted total; returns (loan, split, prepayment_fee)."""
    _check_payable(loan, amount)
    quote = payoff_quote(loan, as_of)
    if amount > quote.total:
        raise RepaymentRefused(
            "amount_exceeds_due", f"amount {amount} exceeds the payoff total {quote.total}"
        )
    if amount < quote.total:
        raise RepaymentRefused(
            "amount_below_payoff", f"a payoff must pay the quoted total {quote.total}"
        )
    updated = _copy(loan)
    split = _Split()
    current, _ = _current_period(updated, as_of)
    interest_to_date = quote.interest - sum(
        i.unpaid_interest() for i in loan.installments if i.due_date <= as_of
    )
    for index, inst in enumerate(updated.installments):
        if inst.due_date > as_of:
            # Rewrite the future: the current period owes interest to date, later ones none.
            inst.interest = inst.paid_interest + (interest_to_date if index == current else 0)
            inst.fee = inst.paid_fee
        for component in ("penalty", "fee", "interest", "principal"):
            _pay(inst, component, inst.unpaid_total(), split)
    _close_paid_installments(updated)
    assert updated.status == LOAN_PAID_OFF
    split.fee += quote.prepayment_fee
    return updated, split, quote.prepayment_fee


def repayment_entry(
    loan_before: Loan, split: _Split, entry_id: str, business_date: date, cause: str
) -> ledger.JournalEntry:
    """还款: cash in; receivables first for what was accrued, income for what was not."""
    interest_from_receivable = min(split.interest, loan_before.interest_receivable)
    fee_from_receivable = min(split.fee, loan_before.fee_receivable)
    total = split.penalty + split.fee + split.interest + split.principal_normal
    total += split.principal_overdue
    return ledger.make_entry(
        entry_id, business_date, loan_before.book, loan_before.loan_id, cause, "repayment",
        debits=[(ledger.CASH, total)],
        credits=[
            (ledger.PENALTY_RECEIVABLE, split.penalty),
            (ledger.FEE_RECEIVABLE, fee_from_receivable),
            (ledger.FEE_INCOME, split.fee - fee_from_receivable),
            (ledger.INTEREST_RECEIVABLE, interest_from_receivable),
            (ledger.INTEREST_INCOME, split.interest - interest_from_receivable),
            (ledger.PRINCIPAL_OVERDUE, split.principal_overdue),
            (ledger.PRINCIPAL_NORMAL, split.principal_normal),
        ],
    )


def settle_receivables(loan_after: Loan, loan_before: Loan, split: _Split) -> None:
    """Lower the receivable balances by what the repayment took from them."""
    loan_after.interest_receivable = loan_before.interest_receivable - min(
        split.interest, loan_before.interest_receivable
    )
    loan_after.fee_receivable = loan_before.fee_receivable - min(
        split.fee, loan_before.fee_receivable
    )
