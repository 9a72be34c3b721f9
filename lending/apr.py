"""APR disclosure (年化利率): monthly IRR of the borrower's cash flows × 12, in bps.

The borrower receives `amount_received` at month 0 and pays `payments[k-1]` at month k.
The monthly IRR i solves NPV(i) = -amount_received + sum(p_k / (1+i)^k) = 0.

A float Newton iteration finds i quickly, but a float can be wrong in the last bits, and the
disclosed figure is round_half_up(i × 120000): a value within 1e-9 bps of a .5 boundary
could round the wrong way. So the float only gives a candidate; the rounding itself is
decided exactly. With payments >= 0, NPV is strictly decreasing in i, hence
"i × 120000 >= c / 2" holds iff NPV(c / 240000) >= 0, and that sign is computed on
integers (no precision limit). The answer is the smallest x >= 0 such that
i × 120000 < x + 1/2, found by a search around the candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

from lending.money import BPS_PER_UNIT, MONTHS_PER_YEAR
from lending.schedules import ScheduleLine

_BPS_PER_MONTH_UNIT = BPS_PER_UNIT * MONTHS_PER_YEAR  # annual bps = monthly rate × 120000
_NEWTON_MAX_STEPS = 200
_NEWTON_TOLERANCE = 1e-15


def apr_bps(amount_received: int, payments: Sequence[int]) -> int:
    """APR in bps, rounded half-up, of receiving `amount_received` now and paying
    `payments[k-1]` at month k (a bullet loan of n months: n-1 zeros then the payment).

    Raises ValueError if the amounts are not integers, any payment is negative, nothing is
    received, or the payments total less than was received (a negative APR is not a loan).
    """
    _validate(amount_received, payments)
    candidate = max(0, round(_float_irr(amount_received, payments) * _BPS_PER_MONTH_UNIT))
    return _exact_half_up_bps(amount_received, payments, candidate)


def schedule_payments(lines: Sequence[ScheduleLine], term: int) -> list[int]:
    """Monthly payments (principal + interest + fee) of a schedule, for `apr_bps`.

    Signature: `schedule_payments(lines, term)`. `term` is required because a bullet
    schedule has one line (period 1) that falls due at month `term`, which the lines alone
    cannot tell. Accepted shapes, anything else raises ValueError:
    * `term` lines with periods 1..term: line k is paid at month k;
    * one line with `term` > 1 (bullet): paid at month `term`, zeros before.
    """
    if not lines:
        raise ValueError("schedule has no lines")
    if term < 1:
        raise ValueError(f"term must be >= 1, got {term}")
    periods = [line.period for line in lines]
    if periods != list(range(1, len(lines) + 1)):
        raise ValueError(f"schedule periods must be 1..{len(lines)} in order, got {periods}")
    totals = [line.principal + line.interest + line.fee for line in lines]
    if len(lines) == term:
        return totals
    if len(lines) == 1:
        return [0] * (term - 1) + totals
    raise ValueError(f"schedule of {len(lines)} lines does not fit term {term}: expected "
                     f"{term} lines, or one bullet line")


def _validate(amount_received: int, payments: Sequence[int]) -> None:
    values = [amount_received, *payments]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError("amount_received and payments must be integer fen")
    if amount_received <= 0:
        raise ValueError(f"amount_received must be > 0 fen, got {amount_received}")
    if not payments:
        raise ValueError("payments must not be empty")
    if any(p < 0 for p in payments):
        raise ValueError("payments must be >= 0 fen")
    if sum(payments) < amount_received:
        raise ValueError(f"payments total {sum(payments)} fen is less than the "
                         f"{amount_received} fen received: negative APR")


def _float_irr(amount_received: int, payments: Sequence[int]) -> float:
    """Monthly IRR estimate by Newton's method from i = 0.

    NPV is convex and decreasing and NPV(0) = sum(payments) - received >= 0, so Newton
    started at 0 approaches the root from below without overshooting.
    """
    rate = 0.0
    for _ in range(_NEWTON_MAX_STEPS):
        npv, slope = _npv_and_slope(amount_received, payments, rate)
        if npv <= 0 or slope == 0:
            return rate
        step = npv / -slope
        rate += step
        if step <= _NEWTON_TOLERANCE * max(1.0, rate):
            return rate
    return rate  # still a valid lower candidate: the exact search below corrects it


def _npv_and_slope(
    amount_received: int, payments: Sequence[int], rate: float
) -> tuple[float, float]:
    discount = 1.0 / (1.0 + rate)
    factor = 1.0
    npv = -float(amount_received)
    slope = 0.0
    for month, payment in enumerate(payments, start=1):
        factor *= discount
        npv += payment * factor
        slope -= month * payment * factor * discount
    return npv, slope


def _irr_at_least(amount_received: int, payments: Sequence[int], doubled_bps: int) -> bool:
    """Exactly: is the monthly IRR >= doubled_bps / 240000, i.e. is the NPV there >= 0?

    With q = u/w, NPV(q) * (w+u)^n = -A*(w+u)^n + sum(p_k * w^k * (w+u)^(n-k)), whose
    sign is the sign of NPV because w+u > 0 (rates stay above -100%).
    """
    u, w = doubled_bps, 2 * _BPS_PER_MONTH_UNIT
    grown = w + u
    # Horner: after month k, acc = sum over j <= k of p_j * w^j * grown^(k-j).
    acc = 0
    w_power = 1
    for payment in payments:
        w_power *= w
        acc = acc * grown + payment * w_power
    return acc - amount_received * grown ** len(payments) >= 0


def _exact_half_up_bps(amount_received: int, payments: Sequence[int], candidate: int) -> int:
    """Smallest x >= 0 with IRR × 120000 < x + 1/2 (then x - 1/2 <= IRR × 120000 too)."""

    def below_upper_half(x: int) -> bool:
        return not _irr_at_least(amount_received, payments, 2 * x + 1)

    # Gallop to bracket the answer between `low` (too small, or -1) and `high` (big enough).
    step = 1
    if below_upper_half(candidate):
        high, low = candidate, candidate - 1
        while low >= 0 and below_upper_half(low):
            high, low, step = low, low - step, step * 2
        low = max(low, -1)
    else:
        low, high = candidate, candidate + 1
        while not below_upper_half(high):
            low, high, step = high, high + step, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if below_upper_half(middle):
            high = middle
        else:
            low = middle
    return high
