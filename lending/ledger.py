"""Double-entry ledger (会计核算): postings, balanced journal entries, reversals.

The domain names accounts by ROLE (`interest_receivable`, ...), a stable identifier that
servicing code can rely on; the chart of accounts (`config/chart_of_accounts.toml`, loaded by
`lending.chart`) gives each role its code and name, and journal lines are stored under the
code. An entry is never edited: a correction is a reversing entry (`reversal_of`). Every
entry carries its book (the lender's own book or a co-lending funder's), the loan, the
business date and the id of the command that caused it, so any figure traces to a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import msgspec

OWN_BOOK = "own"

# Roles of DOMAIN.md §4 (minimum chart) plus the memo pair for written-off loans.
CASH = "cash_clearing"
PRINCIPAL_NORMAL = "principal_receivable_normal"
PRINCIPAL_OVERDUE = "principal_receivable_overdue"
INTEREST_RECEIVABLE = "interest_receivable"
PENALTY_RECEIVABLE = "penalty_receivable"
FEE_RECEIVABLE = "fee_receivable"
GUARANTEE_RECEIVABLE = "guarantee_receivable"
MERCHANT_CLEARING = "merchant_clearing"  # entrusted payment (受托支付): paid to a merchant
FUNDER_PAYABLE = "funder_payable"
INTEREST_INCOME = "interest_income"
PENALTY_INCOME = "penalty_income"
FEE_INCOME = "fee_income"
CREDIT_LOSS = "credit_loss_expense"
OFF_BALANCE_INTEREST = "off_balance_interest"            # memo: accrued, not recognised
OFF_BALANCE_INTEREST_CONTRA = "off_balance_interest_contra"
WRITTEN_OFF = "written_off_loans"                         # memo: principal written off
WRITTEN_OFF_CONTRA = "written_off_loans_contra"

# role → the side on which its balance is normally positive
ROLE_SIDES: dict[str, str] = {
    CASH: "debit",
    PRINCIPAL_NORMAL: "debit",
    PRINCIPAL_OVERDUE: "debit",
    INTEREST_RECEIVABLE: "debit",
    PENALTY_RECEIVABLE: "debit",
    FEE_RECEIVABLE: "debit",
    GUARANTEE_RECEIVABLE: "debit",
    MERCHANT_CLEARING: "credit",
    FUNDER_PAYABLE: "credit",
    INTEREST_INCOME: "credit",
    PENALTY_INCOME: "credit",
    FEE_INCOME: "credit",
    CREDIT_LOSS: "debit",
    OFF_BALANCE_INTEREST: "debit",
    OFF_BALANCE_INTEREST_CONTRA: "credit",
    WRITTEN_OFF: "debit",
    WRITTEN_OFF_CONTRA: "credit",
}

# Entry kinds (the GL summary groups by them)
DISBURSEMENT = "disbursement"
REPAYMENT = "repayment"
PREPAYMENT_FEE = "prepayment_fee"
INTEREST_ACCRUAL = "interest_accrual"
FEE_CHARGE = "fee_charge"
OVERDUE_RECLASS = "overdue_reclass"
PENALTY_ACCRUAL = "penalty_accrual"
NON_ACCRUAL = "non_accrual"
ACCRUAL_RESUMED = "accrual_resumed"
WRITE_OFF = "write_off"
INTEREST_ADJUSTMENT = "interest_adjustment"
REVERSAL = "reversal"
GUARANTEE_COMPENSATION = "guarantee_compensation"


class Line(msgspec.Struct, frozen=True, array_like=True):
    account: str  # a role (see ROLE_SIDES); the chart maps it to a code when stored
    debit: int
    credit: int


class Move(msgspec.Struct, frozen=True, array_like=True):
    """One amount moved from a credit role to a debit role: the unit a posting is split in
    when a loan is funded by several books (lending.funding). A posting's moves add up to
    its lines."""

    debit: str
    credit: str
    amount: int


class Posting(msgspec.Struct, frozen=True, array_like=True):
    """A balanced set of lines of one kind, before it gets its id, date, book and cause.
    `moves` pairs its debits with its credits (empty for a posting built from lines)."""

    kind: str
    lines: tuple[Line, ...]
    moves: tuple[Move, ...] = ()


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


class PostingBuilder:
    """Collects debits and credits of one posting; same-role lines on a side are merged.

    It also keeps which debit each credit pays for (the posting's moves): `move` records
    its pair as it is; the legs of `debit` and `credit` calls are paired in the order they
    were made when the posting is built (a repayment's one cash debit against each of its
    credits, a write-off's loss against each principal class)."""

    __slots__ = ("_credits", "_debits", "_lone_credits", "_lone_debits", "_moves", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._debits: dict[str, int] = {}
        self._credits: dict[str, int] = {}
        self._moves: list[Move] = []
        self._lone_debits: list[tuple[str, int]] = []
        self._lone_credits: list[tuple[str, int]] = []

    def debit(self, role: str, amount: int) -> None:
        if amount:
            self._debits[role] = self._debits.get(role, 0) + amount
            self._lone_debits.append((role, amount))

    def credit(self, role: str, amount: int) -> None:
        if amount:
            self._credits[role] = self._credits.get(role, 0) + amount
            self._lone_credits.append((role, amount))

    def move(self, debit_role: str, credit_role: str, amount: int) -> None:
        """Dr debit_role / Cr credit_role for amount (nothing when amount is 0)."""
        if amount:
            self._debits[debit_role] = self._debits.get(debit_role, 0) + amount
            self._credits[credit_role] = self._credits.get(credit_role, 0) + amount
            self._moves.append(Move(debit_role, credit_role, amount))

    def is_empty(self) -> bool:
        return not self._debits and not self._credits

    def build(self) -> Posting:
        lines = tuple(
            [Line(role, amount, 0) for role, amount in self._debits.items()]
            + [Line(role, 0, amount) for role, amount in self._credits.items()]
        )
        posting = make_posting(self.kind, lines)
        moves = self._moves + _paired(self._lone_debits, self._lone_credits)
        return Posting(posting.kind, posting.lines, tuple(moves))


def _paired(debits: list[tuple[str, int]], credits: list[tuple[str, int]]) -> list[Move]:
    """Lone debit and credit legs matched in order (they balance: make_posting checked)."""
    moves: list[Move] = []
    d = c = 0
    debit_left = debits[0][1] if debits else 0
    credit_left = credits[0][1] if credits else 0
    while d < len(debits) and c < len(credits):
        amount = min(debit_left, credit_left)
        moves.append(Move(debits[d][0], credits[c][0], amount))
        debit_left -= amount
        credit_left -= amount
        if not debit_left:
            d += 1
            debit_left = debits[d][1] if d < len(debits) else 0
        if not credit_left:
            c += 1
            credit_left = credits[c][1] if c < len(credits) else 0
    return moves


def make_posting(kind: str, lines: Iterable[Line]) -> Posting:
    """A posting, refused unless every line is a known role, non-negative, and it balances."""
    kept = tuple(line for line in lines if line.debit or line.credit)
    if not kept:
        raise UnbalancedEntry(f"{kind}: empty posting")
    total_debit = total_credit = 0
    for line in kept:
        if line.account not in ROLE_SIDES:
            raise UnbalancedEntry(f"{kind}: unknown account role {line.account!r}")
        if line.debit < 0 or line.credit < 0:
            raise UnbalancedEntry(f"{kind}: negative amount on {line.account}")
        total_debit += line.debit
        total_credit += line.credit
    if total_debit != total_credit:
        raise UnbalancedEntry(f"{kind}: debits {total_debit} != credits {total_credit}")
    return Posting(kind, kept)


def make_entry(
    entry_id: str, business_date: date, book: str, loan_id: str, cause: str, posting: Posting
) -> JournalEntry:
    return JournalEntry(entry_id, business_date, book, loan_id, cause, posting.kind,
                        posting.lines)


def reversal_of(entry: JournalEntry, entry_id: str, business_date: date,
                cause: str) -> JournalEntry:
    """The entry that cancels `entry`: every line with its sides swapped (红字冲正 without
    negative amounts). The original stays; the pair nets to zero on every account."""
    lines = tuple(Line(line.account, line.credit, line.debit) for line in entry.lines)
    return JournalEntry(entry_id, business_date, entry.book, entry.loan_id, cause, REVERSAL,
                        lines)


def daily_deltas(
    entries: Iterable[JournalEntry],
) -> dict[tuple[date, str, str], tuple[int, int]]:
    """(business date, book, role) → (debit, credit) totals of the given entries: the day's
    movements per account that the daily GL summary is built from."""
    totals: dict[tuple[date, str, str], tuple[int, int]] = {}
    for entry in entries:
        for line in entry.lines:
            key = (entry.business_date, entry.book, line.account)
            debit, credit = totals.get(key, (0, 0))
            totals[key] = (debit + line.debit, credit + line.credit)
    return totals


def balances_of(
    daily: dict[tuple[date, str, str], tuple[int, int]],
) -> dict[tuple[str, str], tuple[int, int]]:
    """(book, role) → (debit, credit): daily deltas summed over their dates."""
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for (_, book, role), (debit, credit) in daily.items():
        before_debit, before_credit = totals.get((book, role), (0, 0))
        totals[(book, role)] = (before_debit + debit, before_credit + credit)
    return totals


def balance_deltas(entries: Iterable[JournalEntry]) -> dict[tuple[str, str], tuple[int, int]]:
    """(book, role) → (debit, credit) totals of the given entries."""
    return balances_of(daily_deltas(entries))


def net_debits(entries: Iterable[JournalEntry]) -> dict[str, int]:
    """role → debit − credit over the entries (one loan's ledger balances, for instance)."""
    totals: dict[str, int] = {}
    for entry in entries:
        for line in entry.lines:
            totals[line.account] = totals.get(line.account, 0) + line.debit - line.credit
    return totals
