"""Loan contracts (资产中心): installments, repayments of every kind, and their postings.

Pure functions over msgspec Structs. Nothing here mutates its input: every change returns a
new Loan (copy-on-write: only the installments a change touches are copied), so the shard can
apply a batch to copies and keep its memory untouched until the batch has committed.

Recognition (what the ledger knows). Each installment tracks, per income component, how much
has been RECOGNISED: accrued by end of day (`lending.daily`) or collected before it accrued.
    receivable of a component = recognised − paid        (never negative)
A payment of interest first consumes what is receivable (Cr interest_receivable) and the rest
is recognised on the spot (Cr interest_income). When a rewrite lowers an installment's
interest or fee below what was recognised (payoff, prepayment), the excess is reversed
(Dr income / Cr receivable). While a loan is non-accrual (非应计), everything recognised and
unpaid sits in the off-balance memo accounts instead of the receivables; once it is written
off (核销), its unpaid principal sits in the written-off memo accounts. `lending.reconcile`
derives every balance from these fields; the ledger must agree with it for every loan.

Rules chosen where DOMAIN.md §3 is silent (docs/domain-choices.md explains each):
* Interest to date (payoff, prepayment) accrues on the principal not yet due, at the daily
  rate, for the days elapsed in the current period; overdue principal bears penalty instead.
* A payoff waives the fees of installments not yet due; interest or fees paid in advance are
  not refunded.
* A partial prepayment first pays everything due (overdue and due installments, interest to
  date), then the prepayment fee, then principal; the remaining schedule is rebuilt from the
  new balance on the original due dates. The principal prepaid is recorded as paid on the
  first open installment, so the installments' principals always sum to the loan amount.
"""

from __future__ import annotations

from datetime import date

import msgspec

from lending import ledger
from lending.funding import Funding
from lending.ledger import PostingBuilder
from lending.money import BPS_PER_UNIT, DAYS_PER_YEAR, MONTHS_PER_YEAR, round_ratio_half_up
from lending.schedules import ScheduleLine, installment_amount

LOAN_ACTIVE = "active"
LOAN_OVERDUE = "overdue"
LOAN_PAID_OFF = "paid_off"
LOAN_WRITTEN_OFF = "written_off"

INST_PENDING = "pending"
INST_DUE = "due"
INST_OVERDUE = "overdue"
INST_PAID = "paid"

PAYEE_BORROWER = "borrower"  # else "merchant:<id>" (受托支付)

ALLOCATION_OLDEST_FIRST = "oldest_first"
ALLOCATION_PRINCIPAL_INTEREST_FIRST = "principal_interest_first"

KIND_REGULAR = "regular"
KIND_REDUCE_INSTALLMENT = "prepay_reduce_installment"
KIND_SHORTEN_TERM = "prepay_shorten_term"
KIND_PAYOFF = "payoff"
REPAYMENT_KINDS = (KIND_REGULAR, KIND_REDUCE_INSTALLMENT, KIND_SHORTEN_TERM, KIND_PAYOFF)

# Methods whose installment is not an amortising payment: "keep the installment, shorten the
# term" has no meaning for them (their principal is due in one piece at the end).
_NO_SHORTEN = ("interest_first", "bullet")

_DAILY_DENOMINATOR = BPS_PER_UNIT * DAYS_PER_YEAR  # daily rate = bps / 3,600,000
_MONTHLY_DENOMINATOR = BPS_PER_UNIT * MONTHS_PER_YEAR


# gc=False (Installment, Loan): no reference cycle can pass through them (their fields are
# ints, strings, dates, booleans and, for a Loan, a list of Installments or packed bytes),
# so the cycle collector need not track them: 16 bytes less per object, and a full
# collection no longer walks every loan and installment of the shard.
class Installment(msgspec.Struct, array_like=True, gc=False):
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
    interest_recognized: int = 0  # accrued by EOD or collected before it accrued
    fee_recognized: int = 0

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
            self.principal - self.paid_principal + self.interest - self.paid_interest
            + self.fee - self.paid_fee + self.penalty - self.paid_penalty
        )


class Loan(msgspec.Struct, gc=False):
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
    dpd: int = 0
    bucket: str = "C"
    classification: str = "normal"
    version: int = 0
    # Contract terms copied from the product version at booking (the contract governs).
    monthly_fee_bps: int = 0
    penalty_rate_bps: int = 0  # annual base rate of penalty interest, before the multiplier
    penalty_multiplier_pct: int = 150
    grace_days: int = 3
    compound_penalty: bool = False
    # Servicing state
    non_accrual: bool = False
    written_off_on: date | None = None
    prepayment_fees_paid: int = 0
    last_closed_on: date | None = None  # the last business date end of day applied
    # The installment prepay_shorten_term keeps: principal + interest a period
    # (equal_installment) or principal a period (equal_principal, installment_fee). Booked
    # from the schedule, lowered by prepay_reduce_installment. It cannot be read back from
    # the installments: the first open one carries prepaid principal, the last a remainder.
    # 0 on loans stored before it existed (never prepaid): see _installment_in_force.
    installment_in_force: int = 0
    # Joint and assisted lending: the books that fund the loan and what each holds
    # (lending.funding); None for a self-funded loan, which posts everything in `book`.
    funding: Funding | None = None
    # 受托支付 booked since the merchant clearing account existed: the disbursement was
    # credited to it (merchant_clearing), not to cash (loans stored before: cash).
    entrusted_clearing: bool = False

    def outstanding_principal(self) -> int:
        return sum(i.principal - i.paid_principal for i in self.installments)

    def outstanding_penalty(self) -> int:
        return sum(i.penalty - i.paid_penalty for i in self.installments)

    def outstanding_interest(self) -> int:
        """Recognised and unpaid interest (what the borrower owes today, not future periods)."""
        return sum(max(0, i.interest_recognized - i.paid_interest) for i in self.installments)

    def outstanding_fee(self) -> int:
        return sum(max(0, i.fee_recognized - i.paid_fee) for i in self.installments)

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


class RepaymentResult(msgspec.Struct, frozen=True):
    loan: Loan
    allocation: Allocation  # fee includes the prepayment fee
    prepayment_fee: int
    postings: tuple[ledger.Posting, ...]


class RepaymentRefused(ValueError):
    """A business-rule refusal (HTTP 422 or 409); the loan is unchanged."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------------------
# Booking


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
    monthly_fee_bps: int = 0,
    penalty_rate_bps: int | None = None,
    penalty_multiplier_pct: int = 150,
    grace_days: int = 3,
    compound_penalty: bool = False,
    funding: Funding | None = None,
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
        monthly_fee_bps=monthly_fee_bps,
        penalty_rate_bps=annual_rate_bps if penalty_rate_bps is None else penalty_rate_bps,
        penalty_multiplier_pct=penalty_multiplier_pct,
        grace_days=grace_days,
        compound_penalty=compound_penalty,
        installment_in_force=_period_payment(
            repayment_method, installments[0].principal, installments[0].interest),
        funding=funding,
        entrusted_clearing=payee != PAYEE_BORROWER,
    )


def _period_payment(method: str, principal: int, interest: int) -> int:
    """What "the installment" of a period is, to keep it (see Loan.installment_in_force)."""
    return principal + (interest if method == "equal_installment" else 0)


def disbursement_posting(loan: Loan) -> ledger.Posting:
    """放款: the receivable appears, cash leaves (to the borrower or, entrusted, the merchant)."""
    builder = PostingBuilder(ledger.DISBURSEMENT)
    paid_from = ledger.MERCHANT_CLEARING if loan.entrusted_clearing else ledger.CASH
    builder.move(ledger.PRINCIPAL_NORMAL, paid_from, loan.principal)
    return builder.build()


# ---------------------------------------------------------------------------------------
# Shared helpers


def copy_loan(loan: Loan) -> Loan:
    """A new version sharing the installments; `_own` copies one before it is changed."""
    return msgspec.structs.replace(
        loan, installments=list(loan.installments), version=loan.version + 1
    )


def _own(loan: Loan, index: int) -> Installment:
    """The installment at index, copied into `loan` (a copy_loan result) for mutation."""
    inst = msgspec.structs.replace(loan.installments[index])
    loan.installments[index] = inst
    return inst


def receivable_role(component: str) -> str:
    return _RECEIVABLE[component]


def income_role(component: str) -> str:
    return _INCOME[component]


_RECEIVABLE = {
    "interest": ledger.INTEREST_RECEIVABLE,
    "penalty": ledger.PENALTY_RECEIVABLE,
    "fee": ledger.FEE_RECEIVABLE,
}
_INCOME = {
    "interest": ledger.INTEREST_INCOME,
    "penalty": ledger.PENALTY_INCOME,
    "fee": ledger.FEE_INCOME,
}


def recognise(builder: PostingBuilder, loan: Loan, component: str, amount: int) -> None:
    """Accrue `amount` of an income component: on balance, or in memo when non-accrual."""
    if loan.non_accrual:
        builder.move(ledger.OFF_BALANCE_INTEREST, ledger.OFF_BALANCE_INTEREST_CONTRA, amount)
    else:
        builder.move(_RECEIVABLE[component], _INCOME[component], amount)


def derecognise(builder: PostingBuilder, loan: Loan, component: str, amount: int) -> None:
    """Reverse `amount` recognised and unpaid (a rewrite lowered what is owed)."""
    if loan.non_accrual:
        builder.move(ledger.OFF_BALANCE_INTEREST_CONTRA, ledger.OFF_BALANCE_INTEREST, amount)
    else:
        builder.move(_INCOME[component], _RECEIVABLE[component], amount)


def unpaid_principal_by_class(loan: Loan) -> tuple[int, int]:
    """(normal, overdue) unpaid principal: the split of accounts 1101 / 1102."""
    normal = overdue = 0
    for inst in loan.installments:
        unpaid = inst.principal - inst.paid_principal
        if inst.status == INST_OVERDUE:
            overdue += unpaid
        else:
            normal += unpaid
    return normal, overdue


def days_past_due(loan: Loan, as_of: date) -> int:
    """DPD: as_of − due date of the oldest unpaid installment due before as_of (0 if none).

    Unpaid penalty alone does not count (classification counts principal and interest past
    due): principal_interest_first pays penalty last, so a late penalty would otherwise keep
    a loan repaid on time ever more past due, into non-accrual and write-off."""
    for inst in loan.installments:
        if inst.due_date >= as_of:
            return 0
        if inst.unpaid_total() - inst.unpaid_penalty() > 0:
            return (as_of - inst.due_date).days
    return 0


def bucket_of(dpd: int) -> str:
    """C (0), M1 (1–30), …, M6 (151–180), M6+ (>180)."""
    if dpd <= 0:
        return "C"
    if dpd > 180:
        return "M6+"
    return f"M{(dpd + 29) // 30}"


# ---------------------------------------------------------------------------------------
# Collecting a payment


class _Collected:
    """What one repayment collected, split the way the ledger needs it."""

    __slots__ = (
        "fee_new",
        "fee_recv",
        "interest_new",
        "interest_recv",
        "penalty_recv",
        "principal_normal",
        "principal_overdue",
    )

    def __init__(self) -> None:
        self.principal_normal = 0
        self.principal_overdue = 0
        self.interest_recv = 0  # settles what was recognised
        self.interest_new = 0   # recognised on collection
        self.penalty_recv = 0
        self.fee_recv = 0
        self.fee_new = 0

    def allocation(self, prepayment_fee: int) -> Allocation:
        return Allocation(
            penalty=self.penalty_recv,
            fee=self.fee_recv + self.fee_new + prepayment_fee,
            interest=self.interest_recv + self.interest_new,
            principal=self.principal_normal + self.principal_overdue,
        )

    def posting(self, loan: Loan) -> ledger.Posting:
        """还款 (or, written off, 核销后收回): cash in, by component."""
        builder = PostingBuilder(ledger.REPAYMENT)
        principal = self.principal_normal + self.principal_overdue
        recognised = self.interest_recv + self.penalty_recv + self.fee_recv
        builder.debit(ledger.CASH, principal + recognised + self.interest_new + self.fee_new)
        if loan.written_off_on is not None:
            builder.credit(ledger.CREDIT_LOSS, principal)  # recovery after write-off
            builder.move(ledger.WRITTEN_OFF_CONTRA, ledger.WRITTEN_OFF, principal)
        else:
            builder.credit(ledger.PRINCIPAL_NORMAL, self.principal_normal)
            builder.credit(ledger.PRINCIPAL_OVERDUE, self.principal_overdue)
        if loan.non_accrual:
            builder.credit(ledger.INTEREST_INCOME, self.interest_recv)
            builder.credit(ledger.PENALTY_INCOME, self.penalty_recv)
            builder.credit(ledger.FEE_INCOME, self.fee_recv)
            builder.move(ledger.OFF_BALANCE_INTEREST_CONTRA, ledger.OFF_BALANCE_INTEREST,
                         recognised)
        else:
            builder.credit(ledger.INTEREST_RECEIVABLE, self.interest_recv)
            builder.credit(ledger.PENALTY_RECEIVABLE, self.penalty_recv)
            builder.credit(ledger.FEE_RECEIVABLE, self.fee_recv)
        builder.credit(ledger.INTEREST_INCOME, self.interest_new)
        builder.credit(ledger.FEE_INCOME, self.fee_new)
        return builder.build()


def _pay_penalty(inst: Installment, budget: int, got: _Collected) -> int:
    paid = min(inst.penalty - inst.paid_penalty, budget)
    if paid <= 0:
        return budget
    inst.paid_penalty += paid
    got.penalty_recv += paid
    return budget - paid


def _pay_fee(inst: Installment, budget: int, got: _Collected) -> int:
    paid = min(inst.fee - inst.paid_fee, budget)
    if paid <= 0:
        return budget
    from_receivable = min(paid, max(0, inst.fee_recognized - inst.paid_fee))
    got.fee_recv += from_receivable
    got.fee_new += paid - from_receivable
    inst.fee_recognized += paid - from_receivable
    inst.paid_fee += paid
    return budget - paid


def _pay_interest(inst: Installment, budget: int, got: _Collected) -> int:
    paid = min(inst.interest - inst.paid_interest, budget)
    if paid <= 0:
        return budget
    from_receivable = min(paid, max(0, inst.interest_recognized - inst.paid_interest))
    got.interest_recv += from_receivable
    got.interest_new += paid - from_receivable
    inst.interest_recognized += paid - from_receivable
    inst.paid_interest += paid
    return budget - paid


def _pay_principal(inst: Installment, budget: int, got: _Collected) -> int:
    paid = min(inst.principal - inst.paid_principal, budget)
    if paid <= 0:
        return budget
    inst.paid_principal += paid
    if inst.status == INST_OVERDUE:
        got.principal_overdue += paid
    else:
        got.principal_normal += paid
    return budget - paid


_PAYERS = {
    "penalty": _pay_penalty, "fee": _pay_fee, "interest": _pay_interest,
    "principal": _pay_principal,
}
_ALLOCATION_PASSES = {
    # 还款冲账顺序: oldest installment first, inside it penalty → fee → interest → principal
    ALLOCATION_OLDEST_FIRST: ((_pay_penalty, _pay_fee, _pay_interest, _pay_principal),),
    # for non-performing loans: interest and principal of every installment, then fee, penalty
    ALLOCATION_PRINCIPAL_INTEREST_FIRST: ((_pay_interest, _pay_principal),
                                          (_pay_fee, _pay_penalty)),
}


def _pay_in_full(inst: Installment, got: _Collected) -> None:
    for payer in (_pay_penalty, _pay_fee, _pay_interest, _pay_principal):
        payer(inst, inst.unpaid_total(), got)


def _refresh_status(loan: Loan, as_of: date) -> None:
    """After a payment: installments paid, loan paid off or current, DPD and bucket."""
    # One pass (every repayment runs this): what is left open, and whether any of it is
    # overdue, after marking what the payment settled.
    open_left = overdue_left = False
    for index, inst in enumerate(loan.installments):
        if inst.status == INST_PAID:
            continue
        if inst.unpaid_total() == 0:
            _own(loan, index).status = INST_PAID
        else:
            open_left = True
            overdue_left = overdue_left or inst.status == INST_OVERDUE
    if not open_left:
        loan.status = LOAN_PAID_OFF
    elif loan.status == LOAN_OVERDUE and not overdue_left:
        loan.status = LOAN_ACTIVE
    loan.dpd = days_past_due(loan, as_of)
    loan.bucket = bucket_of(loan.dpd)


def _check_open(loan: Loan, amount: int) -> None:
    if loan.status == LOAN_PAID_OFF:
        raise RepaymentRefused("invalid_state", f"loan {loan.loan_id} is paid off", 409)
    if amount <= 0:
        raise RepaymentRefused("invalid_amount", "amount must be positive")


# ---------------------------------------------------------------------------------------
# Repayments


def apply_repayment(loan: Loan, kind: str, amount: int, as_of: date) -> RepaymentResult:
    """Apply one repayment of any kind; raises RepaymentRefused with the loan unchanged."""
    _check_open(loan, amount)
    if kind == KIND_REGULAR:
        return apply_regular(loan, amount, as_of)
    if kind == KIND_PAYOFF:
        return apply_payoff(loan, amount, as_of)
    if kind in (KIND_REDUCE_INSTALLMENT, KIND_SHORTEN_TERM):
        return apply_prepayment(loan, amount, as_of, keep_term=kind == KIND_REDUCE_INSTALLMENT)
    raise RepaymentRefused("invalid_kind", f"unknown repayment kind {kind!r}")


def _regular_indexes(loan: Loan, as_of: date) -> list[int]:
    """Installments a regular repayment may touch, oldest first: all due on or before as_of,
    then the next one not yet fully paid (in advance)."""
    reachable: list[int] = []
    for index, inst in enumerate(loan.installments):
        if inst.due_date <= as_of:
            reachable.append(index)
        elif inst.unpaid_total() > 0:
            reachable.append(index)
            break
    return reachable


def regular_payable(loan: Loan, as_of: date) -> int:
    """The most a regular repayment may pay: everything overdue or due on or before as_of,
    plus the next installment in advance (DOMAIN.md §3). Paying more ahead is a prepayment."""
    return sum(loan.installments[i].unpaid_total() for i in _regular_indexes(loan, as_of))


def apply_regular(loan: Loan, amount: int, as_of: date) -> RepaymentResult:
    """Regular repayment: overdue, then due, then the next installment in advance, each split
    by the product's allocation strategy. The excess is refused, never absorbed."""
    _check_open(loan, amount)
    indexes = _regular_indexes(loan, as_of)
    payable = sum(loan.installments[i].unpaid_total() for i in indexes)
    if amount > payable:
        raise RepaymentRefused(
            "amount_exceeds_due",
            f"amount {amount} exceeds what is due plus the next installment ({payable})",
        )
    updated = copy_loan(loan)
    got = _Collected()
    budget = amount
    for payers in _ALLOCATION_PASSES[loan.allocation]:
        for index in indexes:
            if budget == 0:
                break
            if updated.installments[index].unpaid_total() == 0:
                continue
            inst = updated.installments[index]
            if inst is loan.installments[index]:
                inst = _own(updated, index)
            for payer in payers:
                budget = payer(inst, budget, got)
    if budget:
        raise AssertionError("allocation must consume the whole amount when amount <= owed")
    _refresh_status(updated, as_of)
    return RepaymentResult(updated, got.allocation(0), 0, (got.posting(loan),))


def _interest_to_date(loan: Loan, as_of: date) -> tuple[int | None, int, int]:
    """(index of the calendar-current installment or None, principal not yet due, interest
    to date on it at the daily rate for the days elapsed in the current period)."""
    start = loan.disbursed_on
    current: int | None = None
    for index, inst in enumerate(loan.installments):
        if inst.due_date > as_of:
            current = index
            break
        start = inst.due_date
    not_due = sum(
        i.principal - i.paid_principal for i in loan.installments if i.due_date > as_of
    )
    if current is None:
        return None, 0, 0
    days = (as_of - start).days
    interest = round_ratio_half_up(not_due * loan.annual_rate_bps * days, _DAILY_DENOMINATOR)
    # Never more than the contract charges for the whole period: actual days at annual/360
    # exceed the monthly schedule in periods longer than 30 days (a 92-day bullet).
    return current, not_due, min(interest, loan.installments[current].interest)


def _prepayment_fee(loan: Loan, principal_ahead: int) -> int:
    return round_ratio_half_up(principal_ahead * loan.prepayment_fee_bps, BPS_PER_UNIT)


def payoff_quote(loan: Loan, as_of: date) -> PayoffQuote:
    """结清: principal + interest to date at the daily rate + penalty + fees + prepayment fee.

    Interest: what is unpaid on installments due on or before as_of, plus interest to date on
    the principal not yet due, less interest already paid on the current installment (never
    refunded). Later installments' scheduled interest and fees are not owed. Fees: those of
    installments due on or before as_of. Prepayment fee: on the principal not yet due.
    """
    current, not_due, to_date = _interest_to_date(loan, as_of)
    principal = penalty = interest = fee = 0
    for inst in loan.installments:
        principal += inst.principal - inst.paid_principal
        penalty += inst.penalty - inst.paid_penalty
        if inst.due_date <= as_of:
            interest += inst.interest - inst.paid_interest
            fee += inst.fee - inst.paid_fee
    if current is not None:
        interest += max(0, to_date - loan.installments[current].paid_interest)
    prepayment_fee = _prepayment_fee(loan, not_due)
    total = principal + interest + penalty + fee + prepayment_fee
    return PayoffQuote(as_of, principal, interest, penalty, fee, prepayment_fee, total)


def _rewrite_income(
    builder: PostingBuilder, loan: Loan, inst: Installment, interest: int, fee: int
) -> None:
    """Set an installment's interest and fee (never below what was paid), reversing what had
    been recognised above the new figures."""
    interest = max(interest, inst.paid_interest)
    fee = max(fee, inst.paid_fee)
    if inst.interest_recognized > interest:
        derecognise(builder, loan, "interest", inst.interest_recognized - interest)
        inst.interest_recognized = interest
    if inst.fee_recognized > fee:
        derecognise(builder, loan, "fee", inst.fee_recognized - fee)
        inst.fee_recognized = fee
    inst.interest = interest
    inst.fee = fee


def _finish(
    loan: Loan, updated: Loan, got: _Collected, adjust: PostingBuilder, prepayment_fee: int,
    as_of: date,
) -> RepaymentResult:
    postings = []
    if not adjust.is_empty():
        postings.append(adjust.build())
    postings.append(got.posting(loan))
    if prepayment_fee:
        fee = PostingBuilder(ledger.PREPAYMENT_FEE)
        fee.move(ledger.CASH, ledger.FEE_INCOME, prepayment_fee)
        postings.append(fee.build())
        updated.prepayment_fees_paid += prepayment_fee
    _refresh_status(updated, as_of)
    return RepaymentResult(updated, got.allocation(prepayment_fee), prepayment_fee,
                           tuple(postings))


def apply_payoff(loan: Loan, amount: int, as_of: date) -> RepaymentResult:
    """Settle the loan for exactly the quoted total."""
    _check_open(loan, amount)
    quote = payoff_quote(loan, as_of)
    if amount > quote.total:
        raise RepaymentRefused(
            "amount_exceeds_due", f"amount {amount} exceeds the payoff total {quote.total}"
        )
    if amount < quote.total:
        raise RepaymentRefused(
            "amount_below_payoff", f"a payoff must pay the quoted total {quote.total}"
        )
    current, _, to_date = _interest_to_date(loan, as_of)
    updated = copy_loan(loan)
    got = _Collected()
    adjust = PostingBuilder(ledger.INTEREST_ADJUSTMENT)
    for index, original in enumerate(loan.installments):
        if original.unpaid_total() == 0 and original.due_date <= as_of:
            continue
        inst = _own(updated, index)
        if inst.due_date > as_of:
            # The future is rewritten: the current period owes interest to date, later
            # periods nothing; fees not yet due are waived.
            _rewrite_income(adjust, updated, inst, to_date if index == current else 0, 0)
        _pay_in_full(inst, got)
    result = _finish(loan, updated, got, adjust, quote.prepayment_fee, as_of)
    if result.loan.status != LOAN_PAID_OFF or result.allocation.total() != amount:
        raise AssertionError("a payoff for the quoted total must close the loan exactly")
    return result


def apply_prepayment(loan: Loan, amount: int, as_of: date, *, keep_term: bool) -> RepaymentResult:
    """Partial prepayment (提前部分还款): pay everything due and interest to date, then the
    prepayment fee, then principal; rebuild the rest keeping the term (lower installment) or
    keeping the installment (shorter term). Paying exactly the payoff total settles the loan.
    """
    _check_open(loan, amount)
    kind = KIND_REDUCE_INSTALLMENT if keep_term else KIND_SHORTEN_TERM
    if not keep_term and loan.repayment_method in _NO_SHORTEN:
        raise RepaymentRefused(
            "kind_not_supported",
            f"{kind} does not apply to {loan.repayment_method} loans (their principal is "
            f"due at the end); use {KIND_REDUCE_INSTALLMENT}",
        )
    quote = payoff_quote(loan, as_of)
    if amount == quote.total:
        return apply_payoff(loan, amount, as_of)
    current, not_due, to_date = _interest_to_date(loan, as_of)
    first_open = _first_open_future(loan, as_of)
    if current is None or first_open is None or not_due == 0:
        raise RepaymentRefused(
            "nothing_to_prepay", "no principal is left ahead of its due date; use regular"
        )
    due_now = sum(i.unpaid_total() for i in loan.installments if i.due_date <= as_of)
    # Interest to date is owed on the current period unless it was paid ahead in full (then
    # the rebuild starts at a later period, whose interest is all in the future).
    interest_now = 0
    if first_open == current:
        interest_now = max(0, to_date - loan.installments[current].paid_interest)
    remaining = amount - due_now - interest_now
    if remaining <= 0:
        raise RepaymentRefused(
            "prepayment_below_due",
            f"a prepayment must pay more than what is due now ({due_now + interest_now}, "
            f"interest to date included); to pay only that, use regular",
        )
    bps = loan.prepayment_fee_bps
    fee = round_ratio_half_up(remaining * bps, BPS_PER_UNIT + bps)  # fee on principal X
    prepaid = remaining - fee
    if prepaid >= not_due:
        raise RepaymentRefused(
            "amount_exceeds_due",
            f"amount {amount} prepays more than the principal ahead ({not_due}); to settle "
            f"the loan pay exactly {quote.total} with kind {KIND_PAYOFF}",
        )
    updated = copy_loan(loan)
    updated.installment_in_force = _installment_in_force(loan)
    got = _Collected()
    adjust = PostingBuilder(ledger.INTEREST_ADJUSTMENT)
    for index, inst in enumerate(loan.installments):
        if inst.due_date <= as_of and inst.unpaid_total() > 0:
            _pay_in_full(_own(updated, index), got)
    new_balance = not_due - prepaid
    _rebuild_future(updated, adjust, got, as_of, first_open, current, to_date, prepaid,
                    new_balance, keep_term)
    return _finish(loan, updated, got, adjust, fee, as_of)


def _installment_in_force(loan: Loan) -> int:
    """Loans stored before the field existed were never prepaid: their first installment is
    still the booked one."""
    if loan.installment_in_force:
        return loan.installment_in_force
    first = loan.installments[0]
    return _period_payment(loan.repayment_method, first.principal, first.interest)


def _first_open_future(loan: Loan, as_of: date) -> int | None:
    for index, inst in enumerate(loan.installments):
        if inst.due_date > as_of and inst.unpaid_total() > 0:
            return index
    return None


def _rebuild_future(
    loan: Loan, adjust: PostingBuilder, got: _Collected, as_of: date, first: int,
    current: int, to_date: int, prepaid: int, new_balance: int, keep_term: bool,
) -> None:
    """Replace installments from `first` on with a schedule of `new_balance` on their due
    dates; the first keeps what was paid on it and records the principal prepaid."""
    head = _own(loan, first)
    dates = [i.due_date for i in loan.installments[first:]]
    if keep_term:
        lines = _reamortise_keep_term(loan, new_balance, dates)
        if len(lines) > 1:  # the new installment in force (a single period keeps nothing)
            loan.installment_in_force = _period_payment(
                loan.repayment_method, lines[0][0], lines[0][1])
    else:
        lines = _reamortise_keep_installment(loan, new_balance, dates)
    # The first open installment: paid amounts stay, the prepaid principal is recorded on it.
    principal = head.paid_principal + prepaid + lines[0][0]
    if first == current:
        # Interest to date on the old balance (paid now) + the rest of the period on the new.
        rest = round_ratio_half_up(
            new_balance * loan.annual_rate_bps * (head.due_date - as_of).days,
            _DAILY_DENOMINATOR,
        )
        # Interest paid ahead counts toward the period's total, not only toward interest to
        # date; and a prepayment never raises the period's interest above the contract's.
        ceiling = max(head.interest, head.paid_interest)
        interest = min(max(head.paid_interest, to_date + rest), ceiling)
        paid_interest_now = max(0, to_date - head.paid_interest)
    else:
        interest = lines[0][1]
        paid_interest_now = 0
    head.principal = principal
    _rewrite_income(adjust, loan, head, interest, head.fee)
    _pay_interest(head, paid_interest_now, got)
    _pay_principal(head, prepaid, got)
    rebuilt = [
        Installment(first + k + 1, dates[k], p, i, f)
        for k, (p, i, f) in enumerate(lines[1:], start=1)
    ]
    loan.installments[first + 1:] = rebuilt


def _monthly_interest(balance: int, annual_rate_bps: int) -> int:
    return round_ratio_half_up(balance * annual_rate_bps, _MONTHLY_DENOMINATOR)


def _reamortise_keep_term(
    loan: Loan, balance: int, dates: list[date]
) -> list[tuple[int, int, int]]:
    """(principal, interest, fee) per remaining period, same count: the method's schedule of
    the new balance (DOMAIN.md §2 formulas). installment_fee charges its fee on the new
    balance from the next period on."""
    periods = len(dates)
    rate = loan.annual_rate_bps
    method = loan.repayment_method
    lines: list[tuple[int, int, int]] = []
    if method in ("interest_first", "bullet"):
        interest = _monthly_interest(balance, rate)
        lines = [(0, interest, 0)] * (periods - 1) + [(balance, interest, 0)]
        return lines
    if method == "equal_installment":
        total = installment_amount(balance, rate, periods)
        shares = None
    else:
        total = 0
        shares = round_ratio_half_up(balance, periods)
    fee = round_ratio_half_up(balance * loan.monthly_fee_bps, BPS_PER_UNIT)
    left = balance
    for k in range(periods):
        interest = _monthly_interest(left, rate)
        if k == periods - 1:
            repaid = left
        elif shares is None:
            repaid = min(max(total - interest, 0), left)
        else:
            repaid = min(shares, left)
        lines.append((repaid, interest, fee))
        left -= repaid
    return lines


def _reamortise_keep_installment(
    loan: Loan, balance: int, dates: list[date]
) -> list[tuple[int, int, int]]:
    """Keep the installment, shorten the term: equal_installment keeps its total payment,
    equal_principal / installment_fee keep their principal per period (and fee); the last
    period pays what is left. Never more periods than remain."""
    rate = loan.annual_rate_bps
    payment = loan.installment_in_force
    # The fee of the periods ahead: the last one's (a reduce_installment may have lowered it
    # below the first open installment's).
    fee = loan.installments[-1].fee
    lines: list[tuple[int, int, int]] = []
    left = balance
    while left > 0:
        if len(lines) == len(dates) - 1:
            lines.append((left, _monthly_interest(left, rate), fee))
            break
        interest = _monthly_interest(left, rate)
        if loan.repayment_method == "equal_installment":
            repaid = min(max(payment - interest, 1), left)
        else:
            repaid = min(max(payment, 1), left)
        lines.append((repaid, interest, fee))
        left -= repaid
    if not lines:  # nothing left ahead (cannot happen: the prepayment is below the balance)
        raise AssertionError("a partial prepayment leaves principal ahead")
    return lines
