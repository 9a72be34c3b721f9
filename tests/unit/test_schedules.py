"""Repayment schedules: DOMAIN.md §2 properties, a Fraction reference, hand-checked goldens."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lending.calendar import add_months, due_dates, repayment_day
from lending.money import rate_daily, rate_monthly, round_half_up
from lending.schedules import (
    REPAYMENT_METHODS,
    ScheduleLine,
    build_schedule,
    installment_amount,
    schedule_total,
)

DISBURSED = date(2026, 11, 29)
PRODUCT_TERMS = (1, 3, 6, 12, 24)
INTEREST_METHODS = ("equal_installment", "equal_principal", "interest_first", "bullet")

principals = st.integers(min_value=1, max_value=50_000_000)
rates = st.integers(min_value=0, max_value=3600)
# Round principals and rates make exact half-fen amounts (e.g. 1,000,100 × 0.015 = 15001.5)
# common, so the half-up rule is actually exercised.
round_principals = st.integers(min_value=1, max_value=500_000).map(lambda k: k * 100)
tie_prone_principals = st.one_of(principals, round_principals)
tie_prone_rates = st.one_of(rates, st.sampled_from([600, 1200, 1800, 2400, 3600]))
terms = st.one_of(st.integers(min_value=1, max_value=36), st.sampled_from(PRODUCT_TERMS))
disbursement_dates = st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31))
fees = st.integers(min_value=0, max_value=500)


def _build(
    method: str, principal: int, rate: int, term: int, day: date, fee: int
) -> list[ScheduleLine]:
    if method == "installment_fee":
        return build_schedule(method, principal, 0, term, day, fee)
    return build_schedule(method, principal, rate, term, day)


def _months_between(start: date, end: date) -> int:
    return (end.year - start.year) * 12 + end.month - start.month


# --- Reference implementation: the DOMAIN.md §2 table, literally, with Fractions -------------

def _reference(method: str, p: int, bps: int, n: int, fee_bps: int) -> list[tuple[int, int, int]]:
    """(principal, interest, fee) per line, straight from the table with exact Fractions,
    plus the documented cap (never repay more principal than the balance)."""
    r = rate_monthly(bps)
    if method == "bullet":
        return [(p, round_half_up(p * r * n), 0)]
    if method == "interest_first":
        interest = round_half_up(p * r)
        return [(p if k == n else 0, interest, 0) for k in range(1, n + 1)]
    if method == "equal_installment":
        total = round_half_up(Fraction(p, n) if r == 0 else p * r / (1 - (1 + r) ** -n))
    else:
        total = None
    fee = round_half_up(Fraction(p * fee_bps, 10_000)) if method == "installment_fee" else 0
    share = round_half_up(Fraction(p, n))
    balance, lines = p, []
    for _ in range(1, n):
        interest = round_half_up(balance * r) if method != "installment_fee" else 0
        repaid = min((total - interest) if total is not None else share, balance)
        lines.append((repaid, interest, fee))
        balance -= repaid
    last_interest = round_half_up(balance * r) if method != "installment_fee" else 0
    lines.append((balance, last_interest, fee))
    return lines


# --- Properties ------------------------------------------------------------------------------

@settings(max_examples=300)
@given(st.sampled_from(REPAYMENT_METHODS), principals, rates, terms, disbursement_dates, fees)
def test_schedule_invariants(method: str, principal: int, rate: int, term: int, day: date,
                             fee: int) -> None:
    lines = _build(method, principal, rate, term, day, fee)
    assert schedule_total(lines)[0] == principal
    assert all(x >= 0 for line in lines for x in (line.principal, line.interest, line.fee))
    assert [line.period for line in lines] == list(range(1, len(lines) + 1))
    assert len(lines) == (1 if method == "bullet" else term)
    dates = [line.due_date for line in lines]
    assert all(a < b for a, b in pairwise(dates))
    assert all(d.day == repayment_day(day) <= 28 for d in dates)
    assert _months_between(day, dates[-1]) == term
    if method != "bullet":
        assert [_months_between(day, d) for d in dates] == list(range(1, term + 1))


@settings(max_examples=500)
@given(st.sampled_from(REPAYMENT_METHODS), tie_prone_principals, tie_prone_rates, terms, fees)
def test_matches_fraction_reference(method: str, principal: int, rate: int, term: int,
                                    fee: int) -> None:
    """The integer fast path gives exactly the half-up of the true values of the table."""
    lines = _build(method, principal, rate, term, DISBURSED, fee)
    rate_used = 0 if method == "installment_fee" else rate
    fee_used = fee if method == "installment_fee" else 0
    expected = _reference(method, principal, rate_used, term, fee_used)
    assert [(x.principal, x.interest, x.fee) for x in lines] == expected


@given(st.integers(min_value=100_000, max_value=50_000_000), rates, terms)
def test_equal_installment_totals_equal_except_last(principal: int, rate: int, term: int) -> None:
    lines = build_schedule("equal_installment", principal, rate, term, DISBURSED)
    installment = installment_amount(principal, rate, term)
    assert all(line.total == installment for line in lines[:-1])


@given(st.integers(min_value=2, max_value=36).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=n * n, max_value=50_000))), rates)
def test_small_equal_installment_still_level_when_principal_at_least_n_squared(
        term_and_principal: tuple[int, int], rate: int) -> None:
    term, principal = term_and_principal
    lines = build_schedule("equal_installment", principal, rate, term, DISBURSED)
    assert len({line.total for line in lines[:-1]}) == 1


@given(st.integers(min_value=100_000, max_value=50_000_000), rates, terms)
def test_equal_principal_shares_equal_except_last(principal: int, rate: int, term: int) -> None:
    lines = build_schedule("equal_principal", principal, rate, term, DISBURSED)
    assert all(line.principal == round_half_up(Fraction(principal, term)) for line in lines[:-1])
    interests = [line.interest for line in lines]
    assert interests == sorted(interests, reverse=True)


@given(principals, rates, terms)
def test_interest_first_shape(principal: int, rate: int, term: int) -> None:
    lines = build_schedule("interest_first", principal, rate, term, DISBURSED)
    assert len({line.interest for line in lines}) == 1
    assert [line.principal for line in lines] == [0] * (term - 1) + [principal]


@given(principals, rates, terms, disbursement_dates)
def test_bullet_is_one_line_at_maturity(principal: int, rate: int, term: int, day: date) -> None:
    (line,) = build_schedule("bullet", principal, rate, term, day)
    assert line.period == 1
    assert line.due_date == due_dates(day, term)[-1]
    assert line.principal == principal


@given(principals, terms, st.integers(min_value=1, max_value=500))
def test_installment_fee_charges_level_fee_no_interest(principal: int, term: int,
                                                       fee: int) -> None:
    lines = build_schedule("installment_fee", principal, 0, term, DISBURSED, fee)
    assert all(line.interest == 0 for line in lines)
    assert {line.fee for line in lines} == {round_half_up(Fraction(principal * fee, 10_000))}


@given(principals, rates, terms)
def test_tiny_loans_repay_early_and_stay_non_negative(principal: int, rate: int,
                                                      term: int) -> None:
    lines = build_schedule("equal_principal", principal % 40 + 1, rate, term, DISBURSED)
    assert schedule_total(lines)[0] == principal % 40 + 1
    assert all(line.principal >= 0 for line in lines)


# --- Golden, hand-checked figures ------------------------------------------------------------

def test_golden_equal_installment_api_example() -> None:
    """P = 1,000,000 fen, 1800 bps, 12 months, disbursed 2026-11-29.

    r = 0.18 / 12 = 0.015; (1.015)^12 = 1.195618...; 1 - 1.015^-12 = 0.1636125...
    T = round(15000 / 0.1636125...) = round(91679.99...) = 91680.
    Period 1 (due 2026-12-28, day 29 capped at 28): interest = round(1,000,000 × 0.015)
    = 15000, principal = 91680 - 15000 = 76680.
    Period 2: B = 923,320; interest = round(13849.80) = 13850; principal = 77830.
    Period 12: B_12 = 90,326 (what is left); interest = round(1354.89) = 1355; total 91681.
    """
    lines = build_schedule("equal_installment", 1_000_000, 1800, 12, DISBURSED)
    assert lines[0] == ScheduleLine(1, date(2026, 12, 28), 76680, 15000, 0)
    assert lines[0].total == 91680
    assert lines[1] == ScheduleLine(2, date(2027, 1, 28), 77830, 13850, 0)
    assert lines[11] == ScheduleLine(12, date(2027, 11, 28), 90326, 1355, 0)
    assert schedule_total(lines) == (1_000_000, 100_161, 0)


def test_golden_equal_installment_half_fen_rounds_up() -> None:
    """P = 1,000,100 fen, 1800 bps, 12 months: T = round(91689.16) = 91689.
    Period 1 interest = 1,000,100 × 0.015 = 15001.5 exactly → 15002 (half-up, not 15001 or
    banker's 15002/15001); principal = 91689 - 15002 = 76687."""
    lines = build_schedule("equal_installment", 1_000_100, 1800, 12, DISBURSED)
    assert (lines[0].principal, lines[0].interest, lines[0].total) == (76687, 15002, 91689)


def test_golden_equal_installment_zero_rate() -> None:
    """r = 0: T = round(1000 / 3) = 333; residue to the last: 333, 333, 334."""
    lines = build_schedule("equal_installment", 1000, 0, 3, DISBURSED)
    assert [(x.principal, x.interest) for x in lines] == [(333, 0), (333, 0), (334, 0)]


def test_golden_equal_principal_six_months() -> None:
    """P = 1,000,000, 1800 bps (r = 0.015), 6 months.

    Share = round(1,000,000 / 6) = round(166666.67) = 166667; last = 1,000,000 - 5 × 166667
    = 166665. Balances: 1,000,000 / 833,333 / 666,666 / 499,999 / 333,332 / 166,665.
    Interest = round(B × 0.015): 15000, round(12499.995) = 12500 (half-up),
    round(9999.99) = 10000, round(7499.985) = 7500, round(4999.98) = 5000,
    round(2499.975) = 2500.
    """
    lines = build_schedule("equal_principal", 1_000_000, 1800, 6, DISBURSED)
    assert [x.principal for x in lines] == [166667] * 5 + [166665]
    assert [x.interest for x in lines] == [15000, 12500, 10000, 7500, 5000, 2500]
    assert [x.due_date for x in lines][-1] == date(2027, 5, 28)


def test_golden_interest_first() -> None:
    """P = 333,333, 1000 bps: r = 0.10 / 12 = 1/120; interest = round(333,333 / 120)
    = round(2777.775) = 2778 each month; principal 333,333 only in period 3."""
    lines = build_schedule("interest_first", 333_333, 1000, 3, DISBURSED)
    assert [(x.principal, x.interest) for x in lines] == [(0, 2778), (0, 2778), (333_333, 2778)]


def test_golden_bullet_three_months() -> None:
    """P = 1,000,000, 1800 bps, 3 months: interest = round(1,000,000 × 0.015 × 3) = 45000,
    due 3 months after 2026-11-29 on day 28: 2027-02-28.
    P = 123,457: round(123,457 × 0.045) = round(5555.565) = 5556 (half-up)."""
    assert build_schedule("bullet", 1_000_000, 1800, 3, DISBURSED) == [
        ScheduleLine(1, date(2027, 2, 28), 1_000_000, 45000, 0)]
    assert build_schedule("bullet", 123_457, 1800, 3, DISBURSED)[0].interest == 5556


def test_golden_installment_fee() -> None:
    """P = 1,000,000, 12 months, 60 bps a month: fee = round(1,000,000 × 0.006) = 6000 each
    month; principal round(83333.33) = 83333 × 11, last 1,000,000 - 916,663 = 83337.
    P = 100,250: fee = round(601.5) = 602 (half-up)."""
    lines = build_schedule("installment_fee", 1_000_000, 0, 12, DISBURSED, 60)
    assert [x.principal for x in lines] == [83333] * 11 + [83337]
    assert {(x.interest, x.fee) for x in lines} == {(0, 6000)}
    assert schedule_total(lines) == (1_000_000, 0, 72_000)
    assert build_schedule("installment_fee", 100_250, 0, 3, DISBURSED, 60)[0].fee == 602


def test_tiny_equal_principal_is_capped_at_balance() -> None:
    """P = 7, n = 10: round(7/10) = 1 a month would overshoot; the balance runs out after
    7 periods and the rest are zero instead of a negative last principal."""
    lines = build_schedule("equal_principal", 7, 0, 10, DISBURSED)
    assert [x.principal for x in lines] == [1] * 7 + [0] * 3


def test_due_dates_cap_day_and_cross_years() -> None:
    assert due_dates(date(2026, 1, 31), 3) == [date(2026, 2, 28), date(2026, 3, 28),
                                               date(2026, 4, 28)]
    assert due_dates(date(2026, 12, 5), 1) == [date(2027, 1, 5)]
    assert add_months(date(2026, 3, 15), -3, 10) == date(2025, 12, 10)


# --- Refused input ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("equal_installment", 0, 1800, 12), "principal"),
        (("equal_installment", -5, 1800, 12), "principal"),
        (("equal_installment", 1000, 1800, 0), "term"),
        (("equal_installment", 1000, 1800, 361), "term"),
        (("equal_installment", 1000, -1, 12), "annual_rate_bps"),
        (("annuity", 1000, 1800, 12), "unknown repayment method"),
        (("equal_installment", True, 1800, 12), "principal"),
        (("equal_installment", 1000.0, 1800, 12), "principal"),
        (("installment_fee", 1000, 1800, 12), "installment_fee"),
    ],
)
def test_bad_input_is_refused(args: tuple[str, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_schedule(*args, DISBURSED)


@pytest.mark.parametrize("method", ["interest_first", "bullet"])
def test_fee_on_a_feeless_method_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match="monthly_fee_bps"):
        build_schedule(method, 100_000, 1800, 3, DISBURSED, 60)


@pytest.mark.parametrize("method", ["equal_installment", "equal_principal"])
def test_a_guarantee_fee_rides_on_every_installment_and_changes_nothing_else(
    method: str,
) -> None:
    """A monthly fee (the guarantee fee of assisted lending) adds round(P × fee) to each
    installment; principal and interest are those of the same loan without it."""
    plain = build_schedule(method, 1_234_567, 1500, 12, DISBURSED)
    with_fee = build_schedule(method, 1_234_567, 1500, 12, DISBURSED, 20)
    assert [(x.principal, x.interest) for x in with_fee] == [
        (x.principal, x.interest) for x in plain]
    assert {x.fee for x in with_fee} == {2469}  # 1,234,567 × 0.20 % = 2,469.134 → 2,469


def test_longest_term_is_exact() -> None:
    """360 months still matches the Fraction reference (big integers, no precision loss)."""
    lines = build_schedule("equal_installment", 123_456_789, 2399, 360, DISBURSED)
    expected = _reference("equal_installment", 123_456_789, 2399, 360, 0)
    assert [(x.principal, x.interest, x.fee) for x in lines] == expected


# --- Money primitives (lending.money) used by every schedule ---------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(5, 2), 3),
        (Fraction(-5, 2), -3),  # halves away from zero, like Decimal ROUND_HALF_UP
        (Fraction(7, 3), 2),
        (Fraction(-7, 3), -2),
        (Fraction(249_999, 100_000), 2),
        (Decimal("12499.995"), 12500),
        (Decimal("-0.5"), -1),
        (Decimal("0.4999999999999999999999999999999"), 0),
        (Decimal("1E+40"), 10**40),
        (42, 42),
    ],
)
def test_round_half_up(value: Fraction | Decimal | int, expected: int) -> None:
    assert round_half_up(value) == expected


@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=1,
                                                                        max_value=10**6))
def test_round_half_up_agrees_with_decimal(numerator: int, denominator: int) -> None:
    exact = Fraction(numerator, denominator)
    assert round_half_up(exact) == round_half_up(Decimal(numerator) / Decimal(denominator))
    assert abs(exact - round_half_up(exact)) <= Fraction(1, 2)


@pytest.mark.parametrize("bad", [0.5, Decimal("NaN"), Decimal("Infinity"), "1", True])
def test_round_half_up_refuses_inexact_or_non_numbers(bad: object) -> None:
    with pytest.raises(ValueError):
        round_half_up(bad)  # type: ignore[arg-type]


def test_rates() -> None:
    assert rate_monthly(1800) == Fraction(3, 200)
    assert rate_daily(1800) == Fraction(1, 2000)
    with pytest.raises(ValueError):
        rate_monthly(-1)
