"""Repayment calendar: which day of month installments fall due (DOMAIN.md §1).

The repayment day is the disbursement day of month capped at 28, so that every month has it
and no end-of-month rule is needed.
"""

from __future__ import annotations

from datetime import date

MAX_REPAYMENT_DAY = 28
MAX_TERM_MONTHS = 360


def repayment_day(disbursed_on: date) -> int:
    """Day of month on which installments fall due: the disbursement day, capped at 28."""
    return min(disbursed_on.day, MAX_REPAYMENT_DAY)


def add_months(d: date, months: int, day: int) -> date:
    """The date `months` months after `d` (negative goes back), on day-of-month `day`."""
    if not 1 <= day <= MAX_REPAYMENT_DAY:
        raise ValueError(f"day must be in 1..{MAX_REPAYMENT_DAY}, got {day}")
    year_offset, month_index = divmod(d.month - 1 + months, 12)
    return date(d.year + year_offset, month_index + 1, day)


def due_dates(disbursed_on: date, term: int) -> list[date]:
    """Due dates of periods 1..term: the repayment day, k months after disbursement."""
    if not 1 <= term <= MAX_TERM_MONTHS:
        raise ValueError(f"term must be in 1..{MAX_TERM_MONTHS}, got {term}")
    day = repayment_day(disbursed_on)
    year, month = disbursed_on.year, disbursed_on.month
    dates = []
    # Stepping month by month instead of calling add_months k times: schedule building is a
    # hot path (tens of thousands per second) and this halves its date cost.
    for _ in range(term):
        month += 1
        if month == 13:
            year, month = year + 1, 1
        dates.append(date(year, month, day))
    return dates
