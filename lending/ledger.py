"""Double-entry ledger (会计核算): chart of accounts and balanced journal entries.

An entry is never edited; a correction is a reversing entry. Every entry carries its book
(the lender's own book or a co-lending funder's), the loan, the business date and the id of
the command that caused it, so any figure can be traced back to a request.
"""

from __future__ import annotations

from datetime import date

import msgspec

OWN_BOOK = "own"


class Account(msgspec.Struct, frozen=True):
    code: str
    name: str
    normal_side: str  # "debit" or "credit": the side on which the balance is usually positive


# DOMAIN.md §4 minimum chart. Codes follow the usual PRC layout: 1xxx assets, 2xxx liabilities,
# 6xxx income and expense, 9xxx memo (off-balance) accounts.
CHART: dict[str, Account] = {
    a.code: a
    for a in (
        Account("1001", "cash_clearing", "debit"),
        Account("1101", "principal_receivable_normal", "debit"),
        Account("1102", "principal_receivable_overdue", "debit"),
        Account("1131", "interest_receivable", "debit"),
        Account("1132", "penalty_receivable", "debit"),
        Account("1133", "fee_receivable", "debit"),
        Account("1201", "guarantee_receivable", "debit"),
        Account("2201", "funder_payable", "credit"),
        Account("6011", "interest_income", "credit"),
        Account("6012", "penalty_income", "credit"),
        Account("6021", "fee_income", "credit"),
        Account("6701", "credit_loss_expense", "debit"),
        Account("9001", "off_balance_interest", "debit"),
        Account("9002", "off_balance_interest_contra", "credit"),
    )
}

CASH = "1001"
PRINCIPAL_NORMAL = "1101"
PRINCIPAL_OVERDUE = "1102"
INTEREST_RECEIVABLE = "1131"
PENALTY_RECEIVABLE = "1132"
FEE_RECEIVABLE = "1133"
INTEREST_INCOME = "6011"
PENALTY_INCOME = "6012"
FEE_INCOME = "6021"


class Line(msgspec.Struct, frozen=True, array_like=True):
    account: str
    debit: int
    credit: int


class JournalEntry(msgspec.Struct, frozen=True):
    entry_id: str
    business_date: date
    book: str
    loan_id: str
    cause: str
    kind: str
    lines: tuple[Line, ...]


class UnbalancedEntry(ValueError):
    pass


def make_entry(
    entry_id: str,
    business_date: date,
    book: str,
    loan_id: str,
    cause: str,
    kind: str,
    debits: list[tuple[str, int]],
    credits: list[tuple[str, int]],
) -> JournalEntry:
    """Build an entry, dropping zero lines, and refuse it unless debits equal credits."""
    lines = [Line(acc, amount, 0) for acc, amount in debits if amount] + [
        Line(acc, 0, amount) for acc, amount in credits if amount
    ]
    for line in lines:
        if line.account not in CHART:
            raise UnbalancedEntry(f"{entry_id}: unknown account {line.account}")
        if line.debit < 0 or line.credit < 0:
            raise UnbalancedEntry(f"{entry_id}: negative amount on {line.account}")
    total_debit = sum(line.debit for line in lines)
    total_credit = sum(line.credit for line in lines)
    if total_debit != total_credit:
        raise UnbalancedEntry(f"{entry_id}: debits {total_debit} != credits {total_credit}")
    if not lines:
        raise UnbalancedEntry(f"{entry_id}: empty entry")
    return JournalEntry(entry_id, business_date, book, loan_id, cause, kind, tuple(lines))


def balance_deltas(entries: list[JournalEntry]) -> dict[tuple[str, str], tuple[int, int]]:
    """(book, account) → (debit, credit) totals of the given entries."""
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for entry in entries:
        for line in entry.lines:
            key = (entry.book, line.account)
            debit, credit = totals.get(key, (0, 0))
            totals[key] = (debit + line.debit, credit + line.credit)
    return totals
