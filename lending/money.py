"""Money and rate primitives: integer fen, integer bps, exact rounding.

Money is always an integer number of fen. Intermediate values are exact (`Fraction`, exact
`Decimal`, or integer numerator/denominator pairs) and are rounded exactly once, half-up, to
the fen (DOMAIN.md §1).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

BPS_PER_UNIT = 10_000
MONTHS_PER_YEAR = 12
# Daily rate convention of DOMAIN.md §1: annual / 360 (30/360 day count).
DAYS_PER_YEAR = 360


def round_half_up(value: Fraction | Decimal | int) -> int:
    """Round an exact amount to the nearest integer fen, halves away from zero (ROUND_HALF_UP).

    Floats are refused: they cannot represent fen amounts exactly, so rounding them would
    silently round an already-wrong value.
    """
    if isinstance(value, bool) or not isinstance(value, int | Fraction | Decimal):
        raise ValueError(f"cannot round {type(value).__name__} {value!r}: use int, Fraction "
                         "or Decimal")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"cannot round non-finite Decimal {value}")
    # Fraction(Decimal) is exact, so one code path serves both and never depends on the
    # ambient Decimal context precision.
    exact = Fraction(value)
    return round_ratio_half_up(exact.numerator, exact.denominator)


def round_ratio_half_up(numerator: int, denominator: int) -> int:
    """Round numerator/denominator half-up (away from zero) using integers only.

    This is the hot path of schedule building: it avoids allocating a Fraction per amount.
    """
    if denominator == 0:
        raise ValueError("denominator must not be zero")
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    if numerator >= 0:
        return (2 * numerator + denominator) // (2 * denominator)
    return -((-2 * numerator + denominator) // (2 * denominator))


def _check_rate(annual_rate_bps: int) -> None:
    if isinstance(annual_rate_bps, bool) or not isinstance(annual_rate_bps, int):
        raise ValueError(f"annual_rate_bps must be an int, got {annual_rate_bps!r}")
    if annual_rate_bps < 0:
        raise ValueError(f"annual_rate_bps must be >= 0, got {annual_rate_bps}")


def rate_monthly(annual_rate_bps: int) -> Fraction:
    """Exact monthly rate: bps / 10000 / 12."""
    _check_rate(annual_rate_bps)
    return Fraction(annual_rate_bps, BPS_PER_UNIT * MONTHS_PER_YEAR)


def rate_daily(annual_rate_bps: int) -> Fraction:
    """Exact daily rate: bps / 10000 / 360."""
    _check_rate(annual_rate_bps)
    return Fraction(annual_rate_bps, BPS_PER_UNIT * DAYS_PER_YEAR)
