"""Repayment schedules (还款计划) for the five repayment methods of DOMAIN.md §2.

All arithmetic is on integers. The monthly rate r = bps / 120000 is kept as a reduced
integer ratio a/b, and each amount is rounded half-up exactly once from its exact rational
value, so there is no precision to argue about:

* interest_k = round(B_k * a / b) is one integer division;
* the equal-installment total T = P*r / (1 - (1+r)^-n) equals, with r = a/b,
  P * a * (a+b)^n / (b * ((a+b)^n - b^n)), a ratio of two exact integers. Python integers
  are unbounded, so even n = 360 is exact (about 6,000-bit numbers); the factor depends only
  on (rate, term) and is cached.

Rule added where the table of DOMAIN.md §2 is silent: a period never repays more principal
than the balance left. The table as written is applied unchanged whenever it gives
non-negative amounts. Only tiny loans are affected: for equal_principal the table is safe
once P >= n(n-1)/2 (646.20 CNY at 360 months), and for equal_installment the tests check
that no cap happens once P >= n² (n <= 36); but P = 7 fen over 10 months would make
"round(P/n) per period, remainder last" a negative last principal. With the cap, such a
schedule repays its balance early and the remaining periods are zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from functools import lru_cache
from math import gcd

import msgspec

from lending.calendar import MAX_TERM_MONTHS, due_dates
from lending.money import BPS_PER_UNIT, MONTHS_PER_YEAR

REPAYMENT_METHODS = (
    "equal_installment",
    "equal_principal",
    "interest_first",
    "bullet",
    "installment_fee",
)

_BPS_PER_MONTH_UNIT = BPS_PER_UNIT * MONTHS_PER_YEAR  # monthly rate r = bps / 120000


class ScheduleLine(msgspec.Struct, frozen=True):
    """One installment: what falls due on `due_date`, in fen."""

    period: int
    due_date: date
    principal: int
    interest: int
    fee: int

    @property
    def total(self) -> int:
        return self.principal + self.interest + self.fee


# Methods that charge no monthly fee: their installments are not monthly payments of principal.
FEELESS_METHODS = ("interest_first", "bullet")


def build_schedule(
    method: str,
    principal: int,
    annual_rate_bps: int,
    term: int,
    disbursed_on: date,
    monthly_fee_bps: int = 0,
) -> list[ScheduleLine]:
    """Build the repayment schedule of a loan (DOMAIN.md §2).

    `bullet` yields ONE line (period 1) due `term` months after disbursement; the other
    methods yield `term` lines, line k due k months after disbursement.
    `monthly_fee_bps` is a fee of round(P × fee) charged with every installment: the fee of
    `installment_fee` (which charges no interest), or a guarantee fee (担保费) on
    `equal_installment` and `equal_principal`. Passing a fee to `interest_first` or `bullet`,
    or a rate to `installment_fee`, is refused rather than ignored.
    """
    _validate(method, principal, annual_rate_bps, term, monthly_fee_bps)
    dates = due_dates(disbursed_on, term)
    fee = _round_ratio(principal * monthly_fee_bps, BPS_PER_UNIT)
    if method == "equal_installment":
        lines = _equal_installment(principal, annual_rate_bps, term, dates)
        if fee:
            lines = [ScheduleLine(line.period, line.due_date, line.principal, line.interest,
                                  fee) for line in lines]
        return lines
    if method == "equal_principal":
        return _equal_principal(principal, annual_rate_bps, term, dates, fee=fee)
    if method == "interest_first":
        return _interest_first(principal, annual_rate_bps, term, dates)
    if method == "bullet":
        return _bullet(principal, annual_rate_bps, term, dates)
    return _equal_principal(principal, 0, term, dates, fee=fee)


def schedule_total(lines: Iterable[ScheduleLine]) -> tuple[int, int, int]:
    """Sums of (principal, interest, fee) over the lines."""
    principal = interest = fee = 0
    for line in lines:
        principal += line.principal
        interest += line.interest
        fee += line.fee
    return principal, interest, fee


def _is_int(value: object) -> bool:
    # bool is an int subclass; True fen or True months is always a caller bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(
    method: str, principal: int, annual_rate_bps: int, term: int, monthly_fee_bps: int
) -> None:
    if method not in REPAYMENT_METHODS:
        raise ValueError(f"unknown repayment method {method!r}; expected one of "
                         f"{', '.join(REPAYMENT_METHODS)}")
    for name, value in (("principal", principal), ("annual_rate_bps", annual_rate_bps),
                        ("term", term), ("monthly_fee_bps", monthly_fee_bps)):
        if not _is_int(value):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if principal <= 0:
        raise ValueError(f"principal must be > 0 fen, got {principal}")
    if not 1 <= term <= MAX_TERM_MONTHS:
        raise ValueError(f"term must be in 1..{MAX_TERM_MONTHS}, got {term}")
    if annual_rate_bps < 0:
        raise ValueError(f"annual_rate_bps must be >= 0, got {annual_rate_bps}")
    if monthly_fee_bps < 0:
        raise ValueError(f"monthly_fee_bps must be >= 0, got {monthly_fee_bps}")
    if method in FEELESS_METHODS and monthly_fee_bps:
        raise ValueError(f"monthly_fee_bps does not apply to {method}")
    if method == "installment_fee" and annual_rate_bps:
        raise ValueError("installment_fee charges no interest: annual_rate_bps must be 0, "
                         f"got {annual_rate_bps}")


def _round_ratio(numerator: int, denominator: int) -> int:
    """Half-up rounding of a non-negative ratio (inlined variant of money.round_ratio_half_up,
    kept separate because every amount here is non-negative and this is the hot path)."""
    return (2 * numerator + denominator) // (2 * denominator)


def _monthly_ratio(annual_rate_bps: int) -> tuple[int, int]:
    """Monthly rate as a reduced ratio a/b, to keep the integers small."""
    divisor = gcd(annual_rate_bps, _BPS_PER_MONTH_UNIT)
    return annual_rate_bps // divisor, _BPS_PER_MONTH_UNIT // divisor


@lru_cache(maxsize=4096)
def _installment_factor(annual_rate_bps: int, term: int) -> tuple[int, int]:
    """(num, den) with T = round(P * num / den) exactly; see the module docstring."""
    a, b = _monthly_ratio(annual_rate_bps)
    grown = (a + b) ** term
    return a * grown, b * (grown - b**term)


def installment_amount(principal: int, annual_rate_bps: int, term: int) -> int:
    """Equal-installment total T (for r = 0: round(P/n)), in fen."""
    if annual_rate_bps == 0:
        return _round_ratio(principal, term)
    numerator, denominator = _installment_factor(annual_rate_bps, term)
    return _round_ratio(principal * numerator, denominator)


def _equal_installment(
    principal: int, annual_rate_bps: int, term: int, dates: list[date]
) -> list[ScheduleLine]:
    a, b = _monthly_ratio(annual_rate_bps)
    installment = installment_amount(principal, annual_rate_bps, term)
    two_b = 2 * b
    balance = principal
    lines = []
    for k in range(1, term):
        interest = (2 * balance * a + b) // two_b
        # T >= round(P*r) >= interest, so this is never negative; cap: module docstring.
        repaid = min(installment - interest, balance)
        lines.append(ScheduleLine(k, dates[k - 1], repaid, interest, 0))
        balance -= repaid
    last_interest = (2 * balance * a + b) // two_b
    lines.append(ScheduleLine(term, dates[term - 1], balance, last_interest, 0))
    return lines


def _equal_principal(
    principal: int, annual_rate_bps: int, term: int, dates: list[date], fee: int
) -> list[ScheduleLine]:
    a, b = _monthly_ratio(annual_rate_bps)
    two_b = 2 * b
    share = _round_ratio(principal, term)
    balance = principal
    lines = []
    for k in range(1, term):
        interest = (2 * balance * a + b) // two_b
        repaid = min(share, balance)  # cap: see module docstring
        lines.append(ScheduleLine(k, dates[k - 1], repaid, interest, fee))
        balance -= repaid
    last_interest = (2 * balance * a + b) // two_b
    lines.append(ScheduleLine(term, dates[term - 1], balance, last_interest, fee))
    return lines


def _interest_first(
    principal: int, annual_rate_bps: int, term: int, dates: list[date]
) -> list[ScheduleLine]:
    interest = _round_ratio(principal * annual_rate_bps, _BPS_PER_MONTH_UNIT)
    lines = [ScheduleLine(k, dates[k - 1], 0, interest, 0) for k in range(1, term)]
    lines.append(ScheduleLine(term, dates[term - 1], principal, interest, 0))
    return lines


def _bullet(
    principal: int, annual_rate_bps: int, term: int, dates: list[date]
) -> list[ScheduleLine]:
    interest = _round_ratio(principal * annual_rate_bps * term, _BPS_PER_MONTH_UNIT)
    return [ScheduleLine(1, dates[term - 1], principal, interest, 0)]
