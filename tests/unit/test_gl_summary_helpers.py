"""The pure parts of the daily GL summary (storage/gl_summary.py): the sign convention of
its balances, the per-book totals of the run report, the strict date of the read API."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from lending.chart import ChartError, load_chart
from storage.gl_summary import (
    normal_side_balance,
    parse_business_date,
    summary_account,
    totals_per_book,
)

CHART = load_chart(Path(__file__).resolve().parents[2] / "config" / "chart_of_accounts.toml")


def test_balances_are_positive_on_the_normal_side_like_the_trial_balance() -> None:
    assert normal_side_balance("debit", 500) == 500
    assert normal_side_balance("debit", -7) == -7
    assert normal_side_balance("credit", -500) == 500  # more credits than debits
    assert normal_side_balance("credit", 7) == -7
    with pytest.raises(ValueError, match="debit or credit"):
        normal_side_balance("memo", 1)


def test_an_account_row_names_the_account_and_flips_credit_side_balances() -> None:
    cash = summary_account(CHART, "1001", opening_net_debit=1000, debit=300, credit=200,
                           closing_net_debit=1100)
    assert cash == {"code": "1001", "name": CHART.by_code("1001").name,
                    "role": "cash_clearing", "opening": 1000, "debit": 300, "credit": 200,
                    "closing": 1100}
    income = summary_account(CHART, "6011", opening_net_debit=-40, debit=0, credit=15,
                             closing_net_debit=-55)
    assert (income["role"], income["opening"], income["closing"]) == ("interest_income", 40, 55)
    with pytest.raises(ChartError):
        summary_account(CHART, "9999", 0, 0, 0, 0)


def test_totals_per_book_say_whether_each_book_balances() -> None:
    assert totals_per_book([("funder-a", 10, 9), ("own", 250, 250)]) == {
        "funder-a": {"total_debit": 10, "total_credit": 9, "balanced": False},
        "own": {"total_debit": 250, "total_credit": 250, "balanced": True},
    }
    assert totals_per_book([]) == {}


@pytest.mark.parametrize("text, expected", [
    ("2026-11-29", date(2026, 11, 29)),
    ("2028-02-29", date(2028, 2, 29)),
    ("2027-02-29", None),            # not a day
    ("2026-13-01", None),
    ("20261129", None),              # fromisoformat's other shapes are refused
    ("2026-W48-1", None),
    ("2026-11-29T00:00", None),
    (" 2026-11-29", None),
    ("2026-11-29\n", None),
    ("٢٠٢٦-١١-٢٩", None),            # digits, but not ASCII ones
    ("", None),
])
def test_business_dates_are_strictly_yyyy_mm_dd(text: str, expected: date | None) -> None:
    assert parse_business_date(text) == expected
