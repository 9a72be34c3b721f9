"""APR disclosure: monthly IRR × 12 in bps, rounded half-up exactly."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lending.apr import _exact_half_up_bps, apr_bps, schedule_payments
from lending.schedules import ScheduleLine, build_schedule

DISBURSED = date(2026, 11, 29)


def _apr_of(method: str, principal: int, rate: int, term: int, fee: int = 0) -> int:
    lines = build_schedule(method, principal, rate, term, DISBURSED, fee)
    return apr_bps(principal, schedule_payments(lines, term))


def _reference_apr(received: int, payments: list[int]) -> int:
    """Slow, independent answer: smallest x >= 0 with NPV((x + 1/2) / 120000) < 0, by
    bisection on Fraction NPVs (no float, no shared code with lending.apr)."""

    def npv(monthly: Fraction) -> Fraction:
        return -received + sum((Fraction(p) / (1 + monthly) ** k
                                for k, p in enumerate(payments, start=1)), Fraction(0))

    def above_half(x: int) -> bool:  # is the IRR >= (x + 1/2) bps a year?
        return npv(Fraction(2 * x + 1, 240_000)) >= 0

    high = 1
    while above_half(high):
        high *= 2
    low = -1  # every x below the answer is above_half; -1 stands for "below 0"
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if above_half(middle) else (low, middle)
    return high


@pytest.mark.parametrize("rate", [0, 1, 1000, 1800, 2400, 3600])
@pytest.mark.parametrize("term", [1, 3, 6, 12, 24, 36])
@pytest.mark.parametrize("principal", [1_000_000, 20_000_000])
def test_equal_installment_apr_equals_nominal(rate: int, term: int, principal: int) -> None:
    assert _apr_of("equal_installment", principal, rate, term) == rate


@given(st.integers(min_value=100_000, max_value=50_000_000),
       st.integers(min_value=0, max_value=3600), st.integers(min_value=1, max_value=36))
def test_equal_installment_apr_within_a_bps_of_nominal(principal: int, rate: int,
                                                       term: int) -> None:
    """Rounding each installment to the fen moves the IRR by well under 1 bps here."""
    assert abs(_apr_of("equal_installment", principal, rate, term) - rate) <= 1


def test_golden_api_example() -> None:
    """API.md: 1,000,000 fen, 1800 bps, 12 months → apr_bps 1800."""
    assert _apr_of("equal_installment", 1_000_000, 1800, 12) == 1800


def test_bullet_apr_is_below_nominal_because_interest_is_simple() -> None:
    """106,000 for 100,000 after 3 months: (1.06)^(1/3) - 1 = 0.0196128 a month
    → 0.0196128 × 120000 = 2353.5... → 2354 bps (vs 2400 nominal)."""
    assert _apr_of("bullet", 100_000, 2400, 3) == 2354
    assert apr_bps(100_000, [0, 0, 106_000]) == 2354
    assert _apr_of("bullet", 100_000, 2400, 1) == 2400


@pytest.mark.parametrize(("term", "expected"), [(3, 1077), (6, 1224), (12, 1303)])
def test_installment_fee_apr(term: int, expected: int) -> None:
    """60 bps a month of the original amount, no interest: a positive APR that grows with
    the term (the fee is charged on a balance that shrinks) and that does not depend on the
    amount beyond fen rounding."""
    small = _apr_of("installment_fee", 100_000, 0, term, 60)
    large = _apr_of("installment_fee", 20_000_000, 0, term, 60)
    assert small == expected
    assert abs(large - small) <= 1
    lines = build_schedule("installment_fee", 100_000, 0, term, DISBURSED, 60)
    assert small == _reference_apr(100_000, schedule_payments(lines, term))


def test_installment_fee_apr_grows_with_fee() -> None:
    aprs = [_apr_of("installment_fee", 1_000_000, 0, 12, fee) for fee in (10, 30, 60, 100)]
    assert aprs == sorted(aprs)
    assert len(set(aprs)) == 4
    assert aprs[0] > 0


payment_lists = st.lists(st.integers(min_value=0, max_value=2_000_000), min_size=1, max_size=12)


@given(st.integers(min_value=1, max_value=1_000_000), payment_lists)
def test_matches_fraction_reference(received: int, payments: list[int]) -> None:
    total = sum(payments)
    if total < received:
        payments = [*payments[:-1], payments[-1] + received - total]
    assert apr_bps(received, payments) == _reference_apr(received, payments)


@given(st.integers(min_value=0, max_value=5_000))
def test_exact_half_boundary_rounds_up(x: int) -> None:
    """Receiving 240,000 and paying 240,000 + (2x + 1) after one month is a monthly IRR of
    exactly (2x + 1) / 240000, i.e. x + 0.5 bps a year: half-up gives x + 1. Two months:
    receive 240000², pay (240000 + 2x + 1)² at month 2, same IRR."""
    assert apr_bps(240_000, [240_000 + 2 * x + 1]) == x + 1
    assert apr_bps(240_000**2, [0, (240_000 + 2 * x + 1) ** 2]) == x + 1


@given(st.integers(min_value=0, max_value=3000), st.integers(min_value=-50, max_value=50))
def test_exact_rounding_recovers_from_a_wrong_float_candidate(x: int, error: int) -> None:
    payments = [240_000 + 2 * x + 1]
    assert _exact_half_up_bps(240_000, payments, max(0, x + error)) == x + 1


@given(st.integers(min_value=100_000, max_value=10_000_000),
       st.lists(st.integers(min_value=0, max_value=3_000_000), min_size=1, max_size=36),
       st.data())
def test_higher_payments_give_higher_apr(received: int, payments: list[int],
                                         data: st.DataObject) -> None:
    if sum(payments) < received:
        payments = [*payments[:-1], payments[-1] + received - sum(payments)]
    base = apr_bps(received, payments)
    index = data.draw(st.integers(min_value=0, max_value=len(payments) - 1))
    bumped = list(payments)
    bumped[index] += data.draw(st.integers(min_value=1, max_value=1_000_000))
    assert apr_bps(received, bumped) >= base
    # 1% more on every payment raises the monthly IRR by about 1% / n: >= 25 bps a year.
    scaled = [-(-p * 101 // 100) for p in payments]
    assert apr_bps(received, scaled) > base


def test_schedule_payments_places_bullet_at_term() -> None:
    lines = build_schedule("bullet", 100_000, 1800, 3, DISBURSED)
    assert schedule_payments(lines, 3) == [0, 0, 104_500]
    monthly = build_schedule("interest_first", 100_000, 1800, 3, DISBURSED)
    assert schedule_payments(monthly, 3) == [1500, 1500, 101_500]


def test_schedule_payments_refuses_shapes_it_cannot_place() -> None:
    lines = build_schedule("equal_principal", 100_000, 1800, 3, DISBURSED)
    with pytest.raises(ValueError, match="does not fit term"):
        schedule_payments(lines, 6)
    with pytest.raises(ValueError, match="no lines"):
        schedule_payments([], 3)
    shuffled = [lines[1], lines[0], lines[2]]
    with pytest.raises(ValueError, match="periods"):
        schedule_payments(shuffled, 3)
    with pytest.raises(ValueError, match="term"):
        schedule_payments([ScheduleLine(1, DISBURSED, 1, 0, 0)], 0)


@pytest.mark.parametrize(
    ("received", "payments", "message"),
    [
        (0, [100], "amount_received"),
        (100, [], "empty"),
        (100, [120, -10], ">= 0"),
        (100, [99], "negative APR"),
        (100, [100.5], "integer"),
        (True, [100], "integer"),
    ],
)
def test_bad_cash_flows_are_refused(received: int, payments: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apr_bps(received, payments)
