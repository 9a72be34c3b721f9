"""Settlement files, the pure part (lending/settlement.py): a loan's row from its lines of
the day, the file's bytes, its totals record and its checksum.

* worked examples for every kind of entry the books other than `own` hold: a disbursement,
  a repayment of every component (after non-accrual and after write-off too), a
  prepayment fee, accruals, the two sides of a guarantee compensation (代偿), a guarantor's
  recovery, an entry of a kind the file does not name;
* properties over random days of balanced entries: every fen of cash is in exactly one
  column (in = the cash debits, out = the cash credits, net_cash = their difference), the
  collected components add up to collected_total, closing = opening + the day's lines;
* the file: header, loan records in loan-id order whatever the input order, a totals
  record that sums them, and a checksum record whose digest is SHA-256 of exactly the bytes
  before it; one changed byte anywhere is detected; the same rows give the same bytes;
* the columns stored by migration 0017 and read back by storage/settlement_store.py are
  the file's.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import Path
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lending import ledger
from lending.settlement import (
    AMOUNT_COLUMNS,
    BALANCE_ROLES,
    CLOSING_COLUMNS,
    HEADER,
    MOVEMENT_COLUMNS,
    NO_BALANCES,
    DayLine,
    SettlementError,
    SettlementRow,
    file_name,
    parse,
    render,
    settle_loan,
    split_checksum,
    totals,
)
from storage import settlement_store

DAY = date(2026, 11, 29)
BOOK = "funder:bank_a"


def entry(entry_id: str, kind: str, *lines: tuple[str, int, int]) -> list[DayLine]:
    built = [DayLine(entry_id, kind, role, debit, credit) for role, debit, credit in lines]
    assert sum(line.debit for line in built) == sum(line.credit for line in built)
    return built


def columns(row: SettlementRow) -> dict[str, int]:
    return dict(zip(AMOUNT_COLUMNS, row.amounts(), strict=True))


def closing(row: SettlementRow) -> dict[str, int]:
    return {role: amount for role, amount in zip(BALANCE_ROLES, row.closing, strict=True)
            if amount}


# ---- worked examples ------------------------------------------------------------------------


def test_a_funder_day_with_a_disbursement_accrual_and_nothing_collected() -> None:
    row = settle_loan("LN-1", [
        *entry("E1", ledger.DISBURSEMENT, (ledger.PRINCIPAL_NORMAL, 700_000, 0),
               (ledger.CASH, 0, 700_000)),
        *entry("E2", ledger.INTEREST_ACCRUAL, (ledger.INTEREST_RECEIVABLE, 350, 0),
               (ledger.INTEREST_INCOME, 0, 350)),
    ])
    got = columns(row)
    assert got["disbursed_principal"] == 700_000
    assert got["net_cash"] == -700_000
    assert {c: v for c, v in got.items() if v and c in MOVEMENT_COLUMNS} == {
        "disbursed_principal": 700_000, "net_cash": -700_000}
    assert closing(row) == {ledger.PRINCIPAL_NORMAL: 700_000, ledger.INTEREST_RECEIVABLE: 350}


def test_a_repayment_of_every_component_and_a_prepayment_fee() -> None:
    opening = dict.fromkeys(BALANCE_ROLES, 0) | {
        ledger.PRINCIPAL_NORMAL: 500_000, ledger.PRINCIPAL_OVERDUE: 40_000,
        ledger.INTEREST_RECEIVABLE: 6_000, ledger.PENALTY_RECEIVABLE: 300,
        ledger.FEE_RECEIVABLE: 1_000}
    row = settle_loan("LN-2", [
        *entry("E1", ledger.REPAYMENT, (ledger.CASH, 100_000 + 40_000 + 6_500 + 300 + 1_000, 0),
               (ledger.PRINCIPAL_NORMAL, 0, 100_000), (ledger.PRINCIPAL_OVERDUE, 0, 40_000),
               (ledger.INTEREST_RECEIVABLE, 0, 6_000), (ledger.INTEREST_INCOME, 0, 500),
               (ledger.PENALTY_RECEIVABLE, 0, 300), (ledger.FEE_RECEIVABLE, 0, 1_000)),
        *entry("E2", ledger.PREPAYMENT_FEE, (ledger.CASH, 2_000, 0),
               (ledger.FEE_INCOME, 0, 2_000)),
    ], tuple(opening.values()))
    got = columns(row)
    assert (got["collected_principal"], got["collected_interest"], got["collected_penalty"],
            got["collected_fee"], got["collected_prepayment_fee"]) == (
        140_000, 6_500, 300, 1_000, 2_000)
    assert got["collected_total"] == got["net_cash"] == 149_800
    assert got["disbursed_principal"] == got["compensation_received"] == 0
    assert closing(row) == {ledger.PRINCIPAL_NORMAL: 400_000}


def test_repayments_after_non_accrual_and_after_write_off() -> None:
    """Interest of a non-accrual loan is income at once (the memo pair moves, no cash);
    principal recovered after write-off credits the credit-loss expense."""
    opening = list(NO_BALANCES)
    opening[BALANCE_ROLES.index(ledger.OFF_BALANCE_INTEREST)] = 900
    opening[BALANCE_ROLES.index(ledger.WRITTEN_OFF)] = 50_000
    row = settle_loan("LN-3", [
        *entry("E1", ledger.REPAYMENT, (ledger.CASH, 900 + 20_000, 0),
               (ledger.INTEREST_INCOME, 0, 900), (ledger.OFF_BALANCE_INTEREST_CONTRA, 900, 0),
               (ledger.OFF_BALANCE_INTEREST, 0, 900), (ledger.CREDIT_LOSS, 0, 20_000),
               (ledger.WRITTEN_OFF_CONTRA, 20_000, 0), (ledger.WRITTEN_OFF, 0, 20_000)),
    ], tuple(opening))
    got = columns(row)
    assert got["collected_interest"] == 900 and got["collected_principal"] == 20_000
    assert got["collected_total"] == got["net_cash"] == 20_900
    assert closing(row) == {ledger.WRITTEN_OFF: 30_000}


def test_compensation_in_the_funder_book_and_in_the_guarantor_book() -> None:
    opening = dict.fromkeys(BALANCE_ROLES, 0) | {
        ledger.PRINCIPAL_NORMAL: 600_000, ledger.PRINCIPAL_OVERDUE: 80_000,
        ledger.INTEREST_RECEIVABLE: 9_000, ledger.PENALTY_RECEIVABLE: 700}
    funder = settle_loan("LN-4", entry(
        "E1", ledger.GUARANTEE_COMPENSATION, (ledger.CASH, 689_700, 0),
        (ledger.PRINCIPAL_NORMAL, 0, 600_000), (ledger.PRINCIPAL_OVERDUE, 0, 80_000),
        (ledger.INTEREST_RECEIVABLE, 0, 9_000), (ledger.PENALTY_RECEIVABLE, 0, 700),
    ), tuple(opening.values()))
    assert columns(funder)["compensation_received"] == columns(funder)["net_cash"] == 689_700
    assert columns(funder)["collected_total"] == 0
    assert closing(funder) == {}
    guarantor = settle_loan("LN-4", entry(
        "E2", ledger.GUARANTEE_COMPENSATION, (ledger.GUARANTEE_RECEIVABLE, 689_700, 0),
        (ledger.CASH, 0, 689_700)))
    assert columns(guarantor)["compensation_paid"] == 689_700
    assert columns(guarantor)["net_cash"] == -689_700
    assert closing(guarantor) == {ledger.GUARANTEE_RECEIVABLE: 689_700}
    # the borrower pays the guarantor later: a recovery of the guarantee receivable
    later = settle_loan("LN-4", entry(
        "E3", ledger.REPAYMENT, (ledger.CASH, 10_000, 0),
        (ledger.GUARANTEE_RECEIVABLE, 0, 10_000)), guarantor.closing)
    assert columns(later)["collected_guarantee_receivable"] == 10_000
    assert closing(later) == {ledger.GUARANTEE_RECEIVABLE: 679_700}


def test_entrusted_disbursement_and_a_kind_the_file_does_not_name() -> None:
    """Paid to a merchant (merchant clearing 2241 is cash too); an entry of another kind
    that moves cash lands in other_cash_in / other_cash_out, never nowhere."""
    row = settle_loan("LN-5", [
        *entry("E1", ledger.DISBURSEMENT, (ledger.PRINCIPAL_NORMAL, 300_000, 0),
               (ledger.MERCHANT_CLEARING, 0, 300_000)),
        *entry("E2", ledger.REVERSAL, (ledger.PRINCIPAL_NORMAL, 5_000, 0),
               (ledger.CASH, 0, 5_000)),
        *entry("E3", "something_new", (ledger.CASH, 70, 0), (ledger.FEE_INCOME, 0, 70)),
    ])
    got = columns(row)
    assert got["disbursed_principal"] == 300_000
    assert got["other_cash_out"] == 5_000 and got["other_cash_in"] == 70
    assert got["net_cash"] == -300_000 - 5_000 + 70
    assert closing(row) == {ledger.PRINCIPAL_NORMAL: 305_000}


def test_lines_the_settlement_cannot_attribute_are_refused() -> None:
    with pytest.raises(SettlementError, match="no repayment component"):
        settle_loan("LN-6", entry("E1", ledger.REPAYMENT, (ledger.CASH, 100, 0),
                                  (ledger.FUNDER_PAYABLE, 0, 100)))
    with pytest.raises(SettlementError, match="brings 100 in cash but pays 60"):
        settle_loan("LN-6", entry("E1", ledger.REPAYMENT, (ledger.CASH, 100, 0),
                                  (ledger.INTEREST_RECEIVABLE, 0, 60),
                                  (ledger.OFF_BALANCE_INTEREST, 0, 40)))
    with pytest.raises(SettlementError, match="kinds"):
        settle_loan("LN-6", [DayLine("E1", ledger.REPAYMENT, ledger.CASH, 5, 0),
                             DayLine("E1", ledger.DISBURSEMENT, ledger.FEE_INCOME, 0, 5)])


# ---- properties -----------------------------------------------------------------------------

amounts = st.integers(min_value=1, max_value=10**9)
receivables = st.sampled_from([
    ledger.PRINCIPAL_NORMAL, ledger.PRINCIPAL_OVERDUE, ledger.INTEREST_RECEIVABLE,
    ledger.INTEREST_INCOME, ledger.PENALTY_RECEIVABLE, ledger.PENALTY_INCOME,
    ledger.FEE_RECEIVABLE, ledger.FEE_INCOME, ledger.CREDIT_LOSS,
    ledger.GUARANTEE_RECEIVABLE])


@st.composite
def day_entries(draw: st.DrawFn) -> list[list[tuple[str, str, int, int]]]:
    """Balanced entries of one loan's day, as the books hold them: (kind, role, Dr, Cr)."""
    entries = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([
            ledger.DISBURSEMENT, ledger.REPAYMENT, ledger.PREPAYMENT_FEE,
            ledger.INTEREST_ACCRUAL, ledger.OVERDUE_RECLASS, ledger.NON_ACCRUAL,
            ledger.WRITE_OFF, ledger.GUARANTEE_COMPENSATION, ledger.REVERSAL]))
        amount = draw(amounts)
        cash = draw(st.sampled_from([ledger.CASH, ledger.MERCHANT_CLEARING]))
        if kind == ledger.DISBURSEMENT:
            lines = [(ledger.PRINCIPAL_NORMAL, amount, 0), (cash, 0, amount)]
        elif kind == ledger.REPAYMENT:
            parts = draw(st.lists(st.tuples(receivables, amounts), min_size=1, max_size=5))
            lines = [(ledger.CASH, sum(a for _, a in parts), 0)]
            lines += [(role, 0, part) for role, part in parts]
            if draw(st.booleans()):  # a memo pair moves with it
                lines += [(ledger.OFF_BALANCE_INTEREST_CONTRA, amount, 0),
                          (ledger.OFF_BALANCE_INTEREST, 0, amount)]
        elif kind == ledger.PREPAYMENT_FEE:
            lines = [(ledger.CASH, amount, 0), (ledger.FEE_INCOME, 0, amount)]
        elif kind == ledger.GUARANTEE_COMPENSATION:
            if draw(st.booleans()):
                lines = [(ledger.CASH, amount, 0), (draw(receivables), 0, amount)]
            else:
                lines = [(ledger.GUARANTEE_RECEIVABLE, amount, 0), (ledger.CASH, 0, amount)]
        elif kind == ledger.REVERSAL:
            lines = draw(st.sampled_from([
                [(ledger.PRINCIPAL_NORMAL, amount, 0), (ledger.CASH, 0, amount)],
                [(ledger.CASH, amount, 0), (ledger.INTEREST_RECEIVABLE, 0, amount)]]))
        else:
            debit, credit = draw(st.permutations([draw(receivables), draw(receivables)]))[:2]
            lines = [(debit, amount, 0), (credit, 0, amount)]
        entries.append([(kind, role, d, c) for role, d, c in lines])
    return entries


@settings(max_examples=300, deadline=None)
@given(day_entries(), st.lists(st.integers(-10**9, 10**9), min_size=len(BALANCE_ROLES),
                               max_size=len(BALANCE_ROLES)))
def test_every_fen_of_cash_is_in_one_column_and_closing_is_opening_plus_the_day(
    entries: list[list[tuple[str, str, int, int]]], opening: list[int]
) -> None:
    lines = [DayLine(f"E{index:03d}", kind, role, debit, credit)
             for index, entry_lines in enumerate(entries)
             for kind, role, debit, credit in entry_lines]
    row = settle_loan("LN-P", reversed(lines), tuple(opening))
    got = columns(row)
    flows = {ledger.CASH, ledger.MERCHANT_CLEARING}
    cash_in = sum(line.debit for line in lines if line.role in flows)
    cash_out = sum(line.credit for line in lines if line.role in flows)
    assert got["collected_total"] + got["compensation_received"] + got["other_cash_in"] == (
        cash_in)
    assert got["disbursed_principal"] + got["compensation_paid"] + got["other_cash_out"] == (
        cash_out)
    assert got["net_cash"] == cash_in - cash_out
    assert got["collected_total"] == sum(
        got[c] for c in MOVEMENT_COLUMNS if c.startswith("collected_") and c != "collected_total")
    for slot, role in enumerate(BALANCE_ROLES):
        moved = sum(line.debit - line.credit for line in lines if line.role == role)
        assert row.closing[slot] == opening[slot] + moved, role
    assert all(got[c] >= 0 for c in MOVEMENT_COLUMNS if c != "net_cash")


rows = st.lists(
    st.builds(
        SettlementRow,
        st.from_regex(r"LN-[0-9]{4}-[0-9]{10}", fullmatch=True),
        st.tuples(*[st.integers(-10**12, 10**12)] * len(MOVEMENT_COLUMNS)),
        st.tuples(*[st.integers(-10**12, 10**12)] * len(CLOSING_COLUMNS)),
    ),
    max_size=30, unique_by=lambda row: row.loan_id)


@settings(max_examples=200, deadline=None)
@given(rows, st.randoms())
def test_the_file_reads_back_totals_its_records_and_its_checksum_verifies(
    settlement_rows: list[SettlementRow], rng: Random
) -> None:
    content = render(DAY, BOOK, settlement_rows)
    shuffled = list(settlement_rows)
    rng.shuffle(shuffled)
    assert render(DAY, BOOK, shuffled) == content  # the same rows, the same bytes
    parsed = parse(content)
    assert parsed.business_date == DAY and parsed.book == BOOK
    assert parsed.rows == tuple(sorted(settlement_rows, key=lambda row: row.loan_id))
    assert tuple(parsed.totals.values()) == totals(settlement_rows)
    assert parsed.loans == len(settlement_rows)
    # the checksum: SHA-256 of every byte before the last record
    hashed, digest = split_checksum(content)
    assert content == hashed + f"checksum,sha256,{digest}\n".encode()
    assert digest == hashlib.sha256(hashed).hexdigest() == parsed.sha256
    records = content.decode().split("\n")
    assert records[0] == ",".join(HEADER) and records[-1] == ""
    assert records[-2].startswith("checksum,sha256,")
    total = records[-3].split(",")
    assert total[:4] == ["total", "2026-11-29", BOOK, str(len(settlement_rows))]


@settings(max_examples=100, deadline=None)
@given(rows.filter(bool), st.data())
def test_one_changed_byte_is_detected(
    settlement_rows: list[SettlementRow], data: st.DataObject
) -> None:
    content = render(DAY, BOOK, settlement_rows)
    at = data.draw(st.integers(0, len(content) - 1))
    replacement = data.draw(st.sampled_from(b"0123456789,-abcdefLN\n"))
    if content[at] == replacement:
        return
    tampered = content[:at] + bytes([replacement]) + content[at + 1:]
    with pytest.raises((SettlementError, ValueError)):
        parse(tampered)


def test_an_empty_day_is_a_header_a_zero_total_and_a_checksum() -> None:
    content = render(DAY, "guarantor:demo", [])
    records = content.decode().split("\n")
    assert len(records) == 4 and records[-1] == ""
    assert records[1] == "total,2026-11-29,guarantor:demo,0," + ",".join(
        ["0"] * len(AMOUNT_COLUMNS))
    assert parse(content).loans == 0


def test_a_loan_twice_is_refused() -> None:
    row = SettlementRow("LN-1", (0,) * len(MOVEMENT_COLUMNS), NO_BALANCES)
    with pytest.raises(SettlementError, match="twice"):
        render(DAY, BOOK, [row, row])


def test_file_names() -> None:
    assert file_name("funder:bank_a", DAY) == "settlement_funder_bank_a_2026-11-29.csv"
    assert file_name('x"/y', DAY) == "settlement_x__y_2026-11-29.csv"


# ---- the stored columns are the file's ------------------------------------------------------


def test_the_table_and_the_store_hold_the_file_columns_in_order() -> None:
    migration = (Path(__file__).parents[2] / "storage" / "migrations"
                 / "0017_settlement.sql").read_text()
    table = re.search(r"CREATE TABLE settlement_lines \((.*?)\n\);", migration, re.S)
    assert table is not None
    declared = [line.split()[0] for line in table.group(1).strip().splitlines()
                if not line.strip().startswith("PRIMARY")]
    assert declared == ["shard_id", "book", "loan_id", "business_date", *AMOUNT_COLUMNS]
    assert tuple(declared) == settlement_store.LINE_COLUMNS
    read = re.findall(r"[a-z_]+", settlement_store._FILE_ROWS.split("FROM")[0])
    assert read == ["loan_id", *AMOUNT_COLUMNS]
    previous = re.findall(r"p\.([a-z_]+)", settlement_store._PREVIOUS)
    assert tuple(previous) == CLOSING_COLUMNS


def test_a_shard_day_that_disagrees_with_its_movements_is_refused() -> None:
    """storage/settlement_store.check_against_movements: the rows' net cash and balance
    changes per book against gl_daily_movements (codes of the dev chart)."""
    role_of = {"1001": ledger.CASH, "1101": ledger.PRINCIPAL_NORMAL,
               "1131": ledger.INTEREST_RECEIVABLE, "6011": ledger.INTEREST_INCOME}
    row = settle_loan("LN-1", [
        *entry("E1", ledger.DISBURSEMENT, (ledger.PRINCIPAL_NORMAL, 700, 0),
               (ledger.CASH, 0, 700)),
        *entry("E2", ledger.INTEREST_ACCRUAL, (ledger.INTEREST_RECEIVABLE, 3, 0),
               (ledger.INTEREST_INCOME, 0, 3))])
    rows, openings = {(BOOK, "LN-1"): row}, {(BOOK, "LN-1"): NO_BALANCES}
    movements = [{"book": BOOK, "account": "1001", "debit": 0, "credit": 700},
                 {"book": BOOK, "account": "1101", "debit": 700, "credit": 0},
                 {"book": BOOK, "account": "1131", "debit": 3, "credit": 0},
                 {"book": BOOK, "account": "6011", "debit": 0, "credit": 3}]
    settlement_store.check_against_movements(0, DAY, rows, openings, role_of, movements)
    for changed in ({**movements[2], "debit": 4}, {**movements[2], "book": "funder:x"}):
        with pytest.raises(settlement_store.SettlementMismatch, match="disagree"):
            settlement_store.check_against_movements(
                0, DAY, rows, openings, role_of, [*movements[:2], changed, movements[3]])
    with pytest.raises(settlement_store.SettlementMismatch, match="net_cash"):
        settlement_store.check_against_movements(
            0, DAY, rows, openings, role_of, [*movements[1:],
                                              {**movements[0], "credit": 701}])
