"""Per-loan reconciliation (对账): the balances a loan's state implies, against its ledger.

`expected_balances(loan)` derives, from the installments alone, what every balance-sheet and
memo account should hold for the loan (net debit, in fen); `differences` compares that with
the loan's ledger (the sum of its journal lines per account). Income and expense accounts are
not per-loan balances (they close into profit), so they are checked by the trial balance,
where every entry balances, rather than here.
"""

from __future__ import annotations

import msgspec

from lending import funding, ledger
from lending.loans import Loan, unpaid_principal_by_class

RECONCILED_ROLES = (
    ledger.CASH,
    ledger.MERCHANT_CLEARING,
    ledger.GUARANTEE_RECEIVABLE,
    ledger.PRINCIPAL_NORMAL,
    ledger.PRINCIPAL_OVERDUE,
    ledger.INTEREST_RECEIVABLE,
    ledger.PENALTY_RECEIVABLE,
    ledger.FEE_RECEIVABLE,
    ledger.OFF_BALANCE_INTEREST,
    ledger.OFF_BALANCE_INTEREST_CONTRA,
    ledger.WRITTEN_OFF,
    ledger.WRITTEN_OFF_CONTRA,
)


class Difference(msgspec.Struct, frozen=True):
    loan_id: str
    account: str  # role
    expected: int  # net debit implied by the loan's state
    ledger: int    # net debit of the loan's journal lines


def expected_balances(loan: Loan) -> dict[str, int]:
    """role → net debit (debit − credit) the loan's journal must show."""
    normal, overdue = unpaid_principal_by_class(loan)
    interest = penalty = fee = collected = 0
    for inst in loan.installments:
        interest += inst.interest_recognized - inst.paid_interest
        penalty += inst.penalty - inst.paid_penalty
        fee += inst.fee_recognized - inst.paid_fee
        collected += inst.paid_principal + inst.paid_interest + inst.paid_fee + inst.paid_penalty
    balances = dict.fromkeys(RECONCILED_ROLES, 0)
    balances[ledger.CASH] = collected + loan.prepayment_fees_paid
    if loan.entrusted_clearing:
        balances[ledger.MERCHANT_CLEARING] = -loan.principal
    else:
        balances[ledger.CASH] -= loan.principal
    if loan.written_off_on is None:
        balances[ledger.PRINCIPAL_NORMAL] = normal
        balances[ledger.PRINCIPAL_OVERDUE] = overdue
    else:
        balances[ledger.WRITTEN_OFF] = normal + overdue
        balances[ledger.WRITTEN_OFF_CONTRA] = -(normal + overdue)
    if loan.non_accrual:
        memo = interest + penalty + fee
        balances[ledger.OFF_BALANCE_INTEREST] = memo
        balances[ledger.OFF_BALANCE_INTEREST_CONTRA] = -memo
    else:
        balances[ledger.INTEREST_RECEIVABLE] = interest
        balances[ledger.PENALTY_RECEIVABLE] = penalty
        balances[ledger.FEE_RECEIVABLE] = fee
    if loan.funding is not None and loan.funding.compensated_on is not None:
        # 代偿: the guarantor holds the loan's receivables as its guarantee receivable.
        for role in funding.COMPENSATED_ROLES:
            balances[ledger.GUARANTEE_RECEIVABLE] += balances[role]
            balances[role] = 0
    return balances


def in_book(loan: Loan, book: str | None) -> bool:
    """Whether the loan has lines in `book` (None: any book)."""
    if book is None or loan.book == book:
        return True
    return loan.funding is not None and loan.funding.share_of(book) is not None


def expected_in(loan: Loan, book: str | None) -> dict[str, int]:
    """role → net debit of the loan's lines in `book`, or in all its books (None). A funded
    loan's part in one book is what that book's share holds (lending.funding)."""
    if book is None or loan.funding is None:
        return expected_balances(loan)
    held = funding.expected_in_book(loan.funding, book)
    return {role: held.get(role, 0) for role in RECONCILED_ROLES}


def differences(
    loan: Loan, ledger_net: dict[str, int], book: str | None = None
) -> list[Difference]:
    """Accounts where the loan's ledger (role → net debit, in `book` or in all its books)
    disagrees with its state."""
    expected = expected_in(loan, book)
    return [
        Difference(loan.loan_id, role, expected[role], ledger_net.get(role, 0))
        for role in RECONCILED_ROLES
        if expected[role] != ledger_net.get(role, 0)
    ]
