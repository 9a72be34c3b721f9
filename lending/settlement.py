"""Settlement files (清算对账文件, DOMAIN.md §7): what one book other than the lender's own (a
funder's `funder:<id>`, a guarantor's `guarantor:<partner>`) gained and lost on one business
date, loan by loan, as a CSV file with a totals line and a checksum.

Pure code: `settle_loan` turns one loan's journal lines of the day in one book (by account
ROLE) and its balances before the day into a `SettlementRow`; `render` writes the rows of
one book and date as the file's exact bytes; `parse` reads a file back and verifies it.
storage/settlement_store.py reads the lines and stores rows and files; cluster/settlement.py
runs it at end of day. The columns, and what is hashed, are documented in
docs/operations.md ("Settlement files").

What a column holds (all integer fen; "cash" is the book's flow accounts: cash/clearing
1001, and the merchant clearing 2241 of an entrusted disbursement):
* `disbursed_principal`: principal debited by the day's disbursement entries;
* `collected_*`: the day's repayments by component, i.e. what each repayment entry credits
  to the component's accounts (principal: principal receivable normal/overdue, and the
  credit-loss expense a recovery after write-off credits; interest, penalty, fee: the
  receivable and the income account; guarantee receivable: what a guarantor recovers
  after it compensated), and the prepayment fee entries; `collected_total` their sum;
* `compensation_received` / `compensation_paid`: cash of the guarantee compensation (代偿)
  entries: received by a funder's book, paid by the guarantor's;
* `other_cash_in` / `other_cash_out`: cash of any other entry (none today: a correction
  or a kind added later still shows, so that cash always adds up);
* `net_cash`: everything in minus everything out: what the loan's day moved through the
  book's cash, which the file's totals line sums to the book's cash movement of the day;
* `closing_*`: the loan's balances in this book at the end of the day, net debit (debit −
  credit) of principal receivable normal and overdue, interest, penalty and fee
  receivable, guarantee receivable, and the two memo accounts (off-balance interest 9001,
  written-off principal 9011).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from lending import ledger

CHECKSUM_RECORD = "checksum"
CHECKSUM_ALGORITHM = "sha256"
LOAN_RECORD = "loan"
TOTAL_RECORD = "total"

# The flow accounts: money in or out of the book.
FLOW_ROLES = frozenset({ledger.CASH, ledger.MERCHANT_CLEARING})
MEMO_ROLES = frozenset({
    ledger.OFF_BALANCE_INTEREST, ledger.OFF_BALANCE_INTEREST_CONTRA,
    ledger.WRITTEN_OFF, ledger.WRITTEN_OFF_CONTRA,
})
PRINCIPAL_ROLES = frozenset({ledger.PRINCIPAL_NORMAL, ledger.PRINCIPAL_OVERDUE})

# A repayment's components: the accounts each one credits.
COMPONENTS: dict[str, frozenset[str]] = {
    "principal": frozenset({*PRINCIPAL_ROLES, ledger.CREDIT_LOSS}),
    "interest": frozenset({ledger.INTEREST_RECEIVABLE, ledger.INTEREST_INCOME}),
    "fee": frozenset({ledger.FEE_RECEIVABLE, ledger.FEE_INCOME}),
    "penalty": frozenset({ledger.PENALTY_RECEIVABLE, ledger.PENALTY_INCOME}),
    "guarantee_receivable": frozenset({ledger.GUARANTEE_RECEIVABLE}),
}
_COMPONENT_OF = {role: name for name, roles in COMPONENTS.items() for role in roles}

# The per-loan balances the file shows at the end of the day, in column order.
BALANCE_ROLES = (
    ledger.PRINCIPAL_NORMAL,
    ledger.PRINCIPAL_OVERDUE,
    ledger.INTEREST_RECEIVABLE,
    ledger.PENALTY_RECEIVABLE,
    ledger.FEE_RECEIVABLE,
    ledger.GUARANTEE_RECEIVABLE,
    ledger.OFF_BALANCE_INTEREST,
    ledger.WRITTEN_OFF,
)
NO_BALANCES = (0,) * len(BALANCE_ROLES)
_BALANCE_SLOT = {role: slot for slot, role in enumerate(BALANCE_ROLES)}

MOVEMENT_COLUMNS = (
    "disbursed_principal",
    "collected_principal",
    "collected_interest",
    "collected_fee",
    "collected_penalty",
    "collected_prepayment_fee",
    "collected_guarantee_receivable",
    "collected_total",
    "compensation_received",
    "compensation_paid",
    "other_cash_in",
    "other_cash_out",
    "net_cash",
)
CLOSING_COLUMNS = (
    "closing_principal_normal",
    "closing_principal_overdue",
    "closing_interest_receivable",
    "closing_penalty_receivable",
    "closing_fee_receivable",
    "closing_guarantee_receivable",
    "closing_off_balance_interest",
    "closing_written_off_principal",
)
AMOUNT_COLUMNS = MOVEMENT_COLUMNS + CLOSING_COLUMNS
HEADER = ("record_type", "business_date", "book", "loan_id", *AMOUNT_COLUMNS)


class SettlementError(ValueError):
    """A day's lines the settlement cannot attribute (a defect to look into, never a
    business refusal): nothing of the shard's day is stored."""


@dataclass(frozen=True, slots=True)
class DayLine:
    """One journal line of the day, its account given by role."""

    entry_id: str
    kind: str
    role: str
    debit: int
    credit: int


@dataclass(frozen=True, slots=True)
class SettlementRow:
    loan_id: str
    movements: tuple[int, ...]  # per MOVEMENT_COLUMNS
    closing: tuple[int, ...]  # per BALANCE_ROLES (CLOSING_COLUMNS), net debit

    def amounts(self) -> tuple[int, ...]:
        return self.movements + self.closing

    def movement(self, column: str) -> int:
        return self.movements[MOVEMENT_COLUMNS.index(column)]


def settle_loan(
    loan_id: str, lines: Iterable[DayLine], opening: Sequence[int] = NO_BALANCES
) -> SettlementRow:
    """One loan's row: the day's lines of the loan in one book and its balances before the
    day (net debit per BALANCE_ROLES)."""
    entries: dict[str, list[DayLine]] = {}
    for line in lines:
        entries.setdefault(line.entry_id, []).append(line)
    column = dict.fromkeys(MOVEMENT_COLUMNS, 0)
    closing = list(opening)
    if len(closing) != len(BALANCE_ROLES):
        raise SettlementError(f"{loan_id}: {len(closing)} opening balances, "
                              f"not {len(BALANCE_ROLES)}")
    for entry_id in sorted(entries):
        entry = entries[entry_id]
        kinds = {line.kind for line in entry}
        if len(kinds) != 1:
            raise SettlementError(f"{loan_id}: entry {entry_id} has lines of kinds "
                                  f"{sorted(kinds)}")
        _attribute(loan_id, entry_id, kinds.pop(), entry, column)
        for line in entry:
            slot = _BALANCE_SLOT.get(line.role)
            if slot is not None:
                closing[slot] += line.debit - line.credit
    column["collected_total"] = sum(
        column[name] for name in MOVEMENT_COLUMNS if name.startswith("collected_")
        and name != "collected_total")
    column["net_cash"] = (
        column["collected_total"] + column["compensation_received"] + column["other_cash_in"]
        - column["disbursed_principal"] - column["compensation_paid"] - column["other_cash_out"])
    return SettlementRow(loan_id, tuple(column[name] for name in MOVEMENT_COLUMNS),
                         tuple(closing))


def _attribute(
    loan_id: str, entry_id: str, kind: str, entry: list[DayLine], column: dict[str, int]
) -> None:
    """Add one entry's cash to the columns of its kind."""
    flow = sum(line.debit - line.credit for line in entry if line.role in FLOW_ROLES)
    if kind == ledger.DISBURSEMENT:
        principal = sum(line.debit - line.credit for line in entry
                        if line.role in PRINCIPAL_ROLES)
        column["disbursed_principal"] += principal
        _other_cash(column, flow + principal)  # cash not paid out as principal (none today)
    elif kind == ledger.REPAYMENT:
        paid = dict.fromkeys(COMPONENTS, 0)
        for line in entry:
            if line.role in FLOW_ROLES or line.role in MEMO_ROLES:
                continue
            component = _COMPONENT_OF.get(line.role)
            if component is None:
                raise SettlementError(f"{loan_id}: repayment entry {entry_id} moves "
                                      f"{line.role}, which is no repayment component")
            paid[component] += line.credit - line.debit
        if sum(paid.values()) != flow:
            raise SettlementError(f"{loan_id}: repayment entry {entry_id} brings {flow} in "
                                  f"cash but pays {sum(paid.values())} of components")
        for component, amount in paid.items():
            column[f"collected_{component}"] += amount
    elif kind == ledger.PREPAYMENT_FEE:
        column["collected_prepayment_fee"] += flow
    elif kind == ledger.GUARANTEE_COMPENSATION:
        if flow >= 0:
            column["compensation_received"] += flow
        else:
            column["compensation_paid"] -= flow
    else:
        _other_cash(column, flow)


def _other_cash(column: dict[str, int], flow: int) -> None:
    if flow > 0:
        column["other_cash_in"] += flow
    elif flow < 0:
        column["other_cash_out"] -= flow


def totals(rows: Iterable[SettlementRow]) -> tuple[int, ...]:
    """Column sums of AMOUNT_COLUMNS."""
    sums = [0] * len(AMOUNT_COLUMNS)
    for row in rows:
        for index, amount in enumerate(row.amounts()):
            sums[index] += amount
    return tuple(sums)


def totals_by_column(rows: Iterable[SettlementRow]) -> dict[str, int]:
    return dict(zip(AMOUNT_COLUMNS, totals(rows), strict=True))


# ---- the file ------------------------------------------------------------------------------


def file_name(book: str, business_date: date) -> str:
    """settlement_<book>_<YYYY-MM-DD>.csv, every character of the book but ASCII letters,
    digits, '-' and '.' written '_' (funder:bank_a → funder_bank_a)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "_" for c in book)
    return f"settlement_{safe}_{business_date.isoformat()}.csv"


def render(business_date: date, book: str, rows: Iterable[SettlementRow]) -> bytes:
    """The file: the header, one `loan` record per row in loan-id order (code points), the
    `total` record (its loan_id field holds the number of loan records), then the checksum
    record `checksum,sha256,<hex>`: SHA-256 of every byte before it (the header through the
    newline ending the total record). UTF-8, LF line ends, fields quoted only when they must
    be (csv.QUOTE_MINIMAL)."""
    ordered = sorted(rows, key=lambda row: row.loan_id)
    if len({row.loan_id for row in ordered}) != len(ordered):
        raise SettlementError(f"{book} {business_date}: a loan appears twice")
    day = business_date.isoformat()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for row in ordered:
        writer.writerow((LOAN_RECORD, day, book, row.loan_id, *row.amounts()))
    writer.writerow((TOTAL_RECORD, day, book, len(ordered), *totals(ordered)))
    content = buffer.getvalue().encode("utf-8")
    return content + checksum_record(checksum(content))


def checksum(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def checksum_record(digest: str) -> bytes:
    return f"{CHECKSUM_RECORD},{CHECKSUM_ALGORITHM},{digest}\n".encode("ascii")


def split_checksum(data: bytes) -> tuple[bytes, str]:
    """(the hashed content, the stated hex digest); SettlementError when the file does not
    end with a well-formed checksum record or the digest is not that of the content."""
    if not data.endswith(b"\n"):
        raise SettlementError("a settlement file ends with a newline")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    content, last = data[:cut], data[cut:-1]
    prefix = f"{CHECKSUM_RECORD},{CHECKSUM_ALGORITHM},".encode("ascii")
    digest = last[len(prefix):].decode("ascii", "replace")
    if not last.startswith(prefix) or len(digest) != 64 or not all(
            c in "0123456789abcdef" for c in digest):
        raise SettlementError("the last record is not checksum,sha256,<64 lowercase hex>")
    if checksum(content) != digest:
        raise SettlementError("the checksum does not match the content")
    return content, digest


@dataclass(frozen=True, slots=True)
class ParsedFile:
    business_date: date
    book: str
    rows: tuple[SettlementRow, ...]
    totals: dict[str, int]
    loans: int
    sha256: str


def parse(data: bytes) -> ParsedFile:
    """Read a settlement file back, checking its checksum, its header, that every record
    is of its date and book, and that the totals record sums the loan records."""
    content, digest = split_checksum(data)
    records = list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))
    if not records or tuple(records[0]) != HEADER:
        raise SettlementError("the first record is not the header")
    body, last = records[1:-1], records[-1] if len(records) > 1 else []
    if len(last) != len(HEADER) or last[0] != TOTAL_RECORD:
        raise SettlementError("the record before the checksum is not the total")
    business_date, book = date.fromisoformat(last[1]), last[2]
    rows = []
    for record in body:
        if len(record) != len(HEADER) or record[0] != LOAN_RECORD:
            raise SettlementError(f"not a loan record: {record[:4]}")
        if (record[1], record[2]) != (last[1], last[2]):
            raise SettlementError(f"record of another date or book: {record[:4]}")
        amounts = tuple(int(value) for value in record[4:])
        rows.append(SettlementRow(record[3], amounts[:len(MOVEMENT_COLUMNS)],
                                  amounts[len(MOVEMENT_COLUMNS):]))
    stated = tuple(int(value) for value in last[4:])
    if int(last[3]) != len(rows) or stated != totals(rows):
        raise SettlementError("the total record is not the sum of the loan records")
    return ParsedFile(business_date, book, tuple(rows),
                      dict(zip(AMOUNT_COLUMNS, stated, strict=True)), len(rows), digest)
