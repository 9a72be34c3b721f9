"""Ledger primitives (lending/ledger.py) and the chart of accounts (lending/chart.py)."""

from __future__ import annotations

import json
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lending import ledger
from lending.chart import Account, Chart, ChartError, load_chart
from lending.ledger import Line, PostingBuilder, UnbalancedEntry, make_posting

CHART_FILE = Path(__file__).resolve().parents[2] / "config" / "chart_of_accounts.toml"
ROLES = sorted(ledger.ROLE_SIDES)


def shipped_accounts() -> list[dict[str, Any]]:
    with CHART_FILE.open("rb") as handle:
        accounts: list[dict[str, Any]] = tomllib.load(handle)["accounts"]
    return accounts


def write_chart(directory: Path, accounts: list[dict[str, Any]]) -> Path:
    """A chart file: JSON string escapes are valid TOML basic strings."""
    blocks = []
    for account in accounts:
        body = "\n".join(f"{key} = {json.dumps(value, ensure_ascii=False)}"
                         for key, value in account.items())
        blocks.append(f"[[accounts]]\n{body}\n")
    path = directory / "chart.toml"
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# Chart of accounts


def test_shipped_chart_loads_with_every_role_once() -> None:
    chart = load_chart(CHART_FILE)
    codes = chart.role_codes()
    assert sorted(codes) == ROLES
    assert len(set(codes.values())) == len(codes)
    assert codes[ledger.CASH] == "1001"
    assert codes[ledger.INTEREST_INCOME] == "6011"
    assert codes[ledger.WRITTEN_OFF] == "9011"
    for account in chart.accounts:
        assert chart.by_code(account.code).role == account.role
        assert account.side == ledger.ROLE_SIDES[account.role]
    assert [a.code for a in chart.accounts] == sorted(codes.values())


def test_written_chart_round_trips(tmp_path: Path) -> None:
    """The helper that writes broken charts below writes a valid one when left alone."""
    chart = load_chart(write_chart(tmp_path, shipped_accounts()))
    assert chart.role_codes() == load_chart(CHART_FILE).role_codes()


def test_unknown_code_lookup_names_the_code() -> None:
    with pytest.raises(ChartError, match="account code '4242' is not in the chart"):
        load_chart(CHART_FILE).by_code("4242")


def _broken(tmp_path: Path, change: str) -> Path:
    accounts = shipped_accounts()
    by_role = {a["role"]: a for a in accounts}
    if change == "missing_role":
        accounts.remove(by_role[ledger.FEE_RECEIVABLE])
    elif change == "duplicate_code":
        by_role[ledger.FEE_INCOME]["code"] = by_role[ledger.INTEREST_INCOME]["code"]
    elif change == "wrong_side":
        by_role[ledger.CASH]["side"] = "credit"
    elif change == "unknown_role":
        accounts.append({"code": "1002", "role": "petty_cash", "name": "Petty cash",
                         "side": "debit"})
    elif change == "role_twice":
        accounts.append({"code": "1003", "role": ledger.CASH, "name": "Second cash",
                         "side": "debit"})
    elif change == "non_digit_code":
        by_role[ledger.CASH]["code"] = "10A1"
    elif change == "empty_name":
        by_role[ledger.CASH]["name"] = "  "
    elif change == "unknown_field":
        by_role[ledger.CASH]["currency"] = "CNY"
    elif change == "wrong_type":
        by_role[ledger.CASH]["code"] = 1001
    return write_chart(tmp_path, accounts)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing_role", "missing roles: fee_receivable"),
        ("duplicate_code", "account '6011': duplicate code"),
        ("wrong_side", "side must be debit for role cash_clearing, got 'credit'"),
        ("unknown_role", "unknown role 'petty_cash'"),
        ("role_twice", "role cash_clearing appears twice"),
        ("non_digit_code", "account '10A1': code must be digits"),
        ("empty_name", "name must not be empty"),
        ("unknown_field", "currency"),
        ("wrong_type", "code"),
    ],
)
def test_invalid_chart_is_refused_naming_the_problem(
    tmp_path: Path, change: str, message: str
) -> None:
    path = _broken(tmp_path, change)
    with pytest.raises(ChartError) as caught:
        load_chart(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value), "the error names the file"


def test_every_problem_is_reported_at_once() -> None:
    accounts = [Account("1001", ledger.CASH, "Cash", "credit"),
                Account("1001", "petty_cash", "Petty", "debit")]
    with pytest.raises(ChartError) as caught:
        Chart(accounts)
    text = str(caught.value)
    for part in ("side must be debit", "duplicate code", "unknown role 'petty_cash'",
                 "missing roles: "):
        assert part in text


def test_bad_toml_and_missing_file_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "chart.toml"
    broken.write_text("[[accounts]]\ncode = \n", encoding="utf-8")
    with pytest.raises(ChartError, match="invalid TOML"):
        load_chart(broken)
    with pytest.raises(ChartError, match="not found"):
        load_chart(tmp_path / "nope.toml")


# ---------------------------------------------------------------------------------------
# Postings


def test_make_posting_keeps_balanced_lines_and_drops_zero_ones() -> None:
    posting = make_posting(ledger.REPAYMENT, [
        Line(ledger.CASH, 100, 0), Line(ledger.INTEREST_INCOME, 0, 0),
        Line(ledger.INTEREST_RECEIVABLE, 0, 60), Line(ledger.PRINCIPAL_NORMAL, 0, 40)])
    assert posting.kind == ledger.REPAYMENT
    assert posting.lines == (Line(ledger.CASH, 100, 0), Line(ledger.INTEREST_RECEIVABLE, 0, 60),
                             Line(ledger.PRINCIPAL_NORMAL, 0, 40))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([Line(ledger.CASH, 10, 0), Line(ledger.INTEREST_INCOME, 0, 9)],
         "debits 10 != credits 9"),
        ([Line(ledger.CASH, -5, 0), Line(ledger.INTEREST_INCOME, 0, -5)], "negative amount"),
        ([Line(ledger.CASH, 5, -5)], "negative amount"),
        ([Line("petty_cash", 5, 0), Line(ledger.INTEREST_INCOME, 0, 5)],
         "unknown account role 'petty_cash'"),
        ([], "empty posting"),
        ([Line(ledger.CASH, 0, 0)], "empty posting"),
    ],
)
def test_make_posting_refuses(lines: list[Line], message: str) -> None:
    with pytest.raises(UnbalancedEntry, match=message):
        make_posting(ledger.REPAYMENT, lines)


def test_builder_merges_lines_of_the_same_role_on_a_side() -> None:
    builder = PostingBuilder(ledger.REPAYMENT)
    assert builder.is_empty()
    builder.move(ledger.CASH, ledger.INTEREST_RECEIVABLE, 0)
    builder.debit(ledger.CASH, 0)
    assert builder.is_empty(), "zero amounts add nothing"
    builder.debit(ledger.CASH, 70)
    builder.move(ledger.CASH, ledger.INTEREST_INCOME, 30)
    builder.credit(ledger.INTEREST_INCOME, 20)
    builder.credit(ledger.PRINCIPAL_NORMAL, 50)
    posting = builder.build()
    assert posting.lines == (Line(ledger.CASH, 100, 0), Line(ledger.INTEREST_INCOME, 0, 50),
                             Line(ledger.PRINCIPAL_NORMAL, 0, 50))


def test_builder_refuses_to_build_an_unbalanced_or_empty_posting() -> None:
    builder = PostingBuilder(ledger.FEE_CHARGE)
    with pytest.raises(UnbalancedEntry, match="empty posting"):
        builder.build()
    builder.debit(ledger.FEE_RECEIVABLE, 5)
    with pytest.raises(UnbalancedEntry, match="debits 5 != credits 0"):
        builder.build()


balanced_postings = st.lists(
    st.tuples(st.sampled_from(ROLES), st.sampled_from(ROLES), st.integers(1, 10**9)),
    min_size=1, max_size=12,
)


def _posting(moves: list[tuple[str, str, int]]) -> ledger.Posting:
    builder = PostingBuilder(ledger.REPAYMENT)
    for debit_role, credit_role, amount in moves:
        builder.move(debit_role, credit_role, amount)
    return builder.build()


@settings(max_examples=200, deadline=None)
@given(balanced_postings)
def test_reversal_nets_every_account_to_zero(moves: list[tuple[str, str, int]]) -> None:
    original = ledger.make_entry("JE-1", date(2026, 12, 1), "funder-a", "LN-1", "RP-1",
                                 _posting(moves))
    reversal = ledger.reversal_of(original, "JE-2", date(2026, 12, 5), "fix-1")
    assert (reversal.entry_id, reversal.business_date, reversal.cause, reversal.kind) == (
        "JE-2", date(2026, 12, 5), "fix-1", ledger.REVERSAL)
    assert (reversal.book, reversal.loan_id) == (original.book, original.loan_id)
    assert all(line.debit >= 0 and line.credit >= 0 for line in reversal.lines)
    assert all(net == 0 for net in ledger.net_debits([original, reversal]).values())
    for debit, credit in ledger.balance_deltas([original, reversal]).values():
        assert debit == credit
    # The original stays as it was (entries are never edited).
    assert original.kind == ledger.REPAYMENT and original.entry_id == "JE-1"


def test_make_entry_carries_date_book_loan_and_cause() -> None:
    posting = _posting([(ledger.PRINCIPAL_NORMAL, ledger.CASH, 500)])
    entry = ledger.make_entry("JE-9", date(2026, 11, 29), ledger.OWN_BOOK, "LN-1", "BK-1",
                              posting)
    assert (entry.entry_id, entry.business_date, entry.book, entry.loan_id, entry.cause,
            entry.kind, entry.lines) == ("JE-9", date(2026, 11, 29), ledger.OWN_BOOK, "LN-1",
                                         "BK-1", ledger.REPAYMENT, posting.lines)


def test_balances_are_kept_per_book_and_role() -> None:
    posting = _posting([(ledger.PRINCIPAL_NORMAL, ledger.CASH, 500)])
    own = ledger.make_entry("JE-1", date(2026, 11, 29), "own", "LN-1", "c", posting)
    funder = ledger.make_entry("JE-2", date(2026, 11, 29), "funder-a", "LN-1", "c", posting)
    deltas = ledger.balance_deltas([own, funder, own])
    assert deltas[("own", ledger.CASH)] == (0, 1000)
    assert deltas[("funder-a", ledger.PRINCIPAL_NORMAL)] == (500, 0)
    assert ledger.net_debits([own, funder]) == {ledger.PRINCIPAL_NORMAL: 1000,
                                                ledger.CASH: -1000}


def test_every_role_has_a_side() -> None:
    assert set(ledger.ROLE_SIDES.values()) == {"debit", "credit"}
    for role in (ledger.CASH, ledger.PRINCIPAL_NORMAL, ledger.CREDIT_LOSS,
                 ledger.OFF_BALANCE_INTEREST, ledger.WRITTEN_OFF):
        assert ledger.ROLE_SIDES[role] == "debit"
    for role in (ledger.INTEREST_INCOME, ledger.FUNDER_PAYABLE,
                 ledger.OFF_BALANCE_INTEREST_CONTRA, ledger.WRITTEN_OFF_CONTRA):
        assert ledger.ROLE_SIDES[role] == "credit"
