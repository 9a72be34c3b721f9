"""End of day on a schedule (`[eod] schedule_*`; docs/operations.md "End of day on a schedule").

Every day at the cut-off `schedule_at` (wall clock in `schedule_timezone`) the scheduler
closes business dates through the same EodRunner as POST /ops/eod, oldest first, one run at a
time: every date up to the calendar day of the latest cut-off already passed, at most
`catch_up_max_days` per firing. It also fires once at start, so a cut-off passed while the
system was down is caught up at once rather than a day later.

A run refused because another one holds the lock (409 eod_running: an operator, or another
gateway) ends the firing: the next firing tries again. A run that fails ends the attempt and
the firing is retried after RETRY_DELAYS_S, then left to the next firing. The Redis lock of
EodRunner.run is what keeps two dates from running at once, cluster-wide.

The calendar arithmetic is pure functions below; the loop reads time only through `now()`,
so tests drive it with a controlled clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from prometheus_client import Counter, Gauge

from cluster.config import EodSettings
from cluster.eod import EodError

log = logging.getLogger("lendcore.eod.schedule")

DONE = "done"  # the date is closed (by this run, or found closed by another)
BUSY = "busy"  # another run held the lock (409 eod_running): wait for the next firing
FAILED = "failed"  # the run failed; the date did not move
NOTHING_DUE = "nothing_due"  # not a run: the business date is already past the cut-off's day
OUTCOMES = (DONE, BUSY, FAILED)

RETRY_DELAYS_S = (60.0, 300.0, 900.0)  # a failed firing is tried again after these, then left
CLOCK_RECHECK_S = 1.0  # asyncio.sleep follows the monotonic clock, not wall-clock steps

SCHEDULED_RUNS = Counter(
    "lendcore_eod_scheduled_runs_total",
    "End-of-day runs started by the schedule, by outcome (done, busy, failed)",
    ["outcome"],
)
SCHEDULED_LAST_RUN = Gauge(
    "lendcore_eod_scheduled_last_run_timestamp_seconds",
    "Unix time of the last scheduled end-of-day run with this outcome",
    ["outcome"],
)
NEXT_FIRING = Gauge(
    "lendcore_eod_schedule_next_firing_timestamp_seconds",
    "Unix time of the next end-of-day firing (0 while the schedule is off)",
)


# ---- the calendar, pure ------------------------------------------------------------------


def wall_clock() -> datetime:
    """The real time, time-zone aware: the scheduler's default clock."""
    return datetime.now(UTC)


def _instant(moment: datetime) -> datetime:
    """`moment` in UTC. A naive datetime is refused: astimezone() would read it as the
    machine's local time, which is not the schedule's zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone: the scheduler's clock must be aware")
    return moment.astimezone(UTC)


def firing_on(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The firing of calendar day `day`: `at` on that day in `zone`. Its `.date()` is `day`.
    In a zone with daylight saving, a time the change skips fires an hour later, and a time
    it repeats fires at its first occurrence (fold=0, PEP 495)."""
    return datetime.combine(day, at, tzinfo=zone)


def next_firing(now: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The first firing strictly after `now`."""
    instant = _instant(now)
    # Start a day early: a firing in a DST gap moves forward an hour, possibly past midnight.
    day = instant.astimezone(zone).date() - timedelta(days=1)
    while _instant(firing_on(day, at, zone)) <= instant:
        day += timedelta(days=1)
    return firing_on(day, at, zone)


def last_closable_date(now: datetime, at: time, zone: ZoneInfo) -> date:
    """The calendar day of the latest firing at or before `now`: business dates up to and
    including it may be closed. Before today's cut-off that is yesterday."""
    instant = _instant(now)
    day = instant.astimezone(zone).date() + timedelta(days=1)
    while _instant(firing_on(day, at, zone)) > instant:
        day -= timedelta(days=1)
    return day


def dates_to_close(business_date: date, last_closable: date, limit: int) -> list[date]:
    """The dates one firing closes, oldest first: from the business date up to
    `last_closable`, at most `limit` of them."""
    behind = (last_closable - business_date).days + 1
    return [business_date + timedelta(days=i) for i in range(max(0, min(behind, limit)))]


# ---- the loop ----------------------------------------------------------------------------


class EodRuns(Protocol):
    """What the scheduler needs of cluster/eod.py EodRunner."""

    async def business_date(self) -> date: ...

    async def run(self, requested: date | None = None) -> dict[str, Any]: ...


class EodScheduler:
    def __init__(
        self,
        runner: EodRuns,
        settings: EodSettings,
        now: Callable[[], datetime] = wall_clock,
        retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
    ) -> None:
        self.runner = runner
        self.enabled = settings.schedule_enabled
        self.at = settings.schedule_time()
        self.zone = settings.schedule_zone()
        self.catch_up_max_days = settings.catch_up_max_days
        self.now = now
        self.retry_delays_s = retry_delays_s
        self.next_at: datetime | None = None
        self.last_run: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- life cycle (cluster/system.py) ---------------------------------------------------

    def start(self) -> None:
        """Start the daily loop if the schedule is on (once the shard hosts serve)."""
        if not self.enabled:
            NEXT_FIRING.set(0)
            return
        log.info("end of day scheduled daily at %s %s (catch-up at most %d dates a firing)",
                 self.at.strftime("%H:%M"), self.zone.key, self.catch_up_max_days)
        self._task = asyncio.create_task(self._loop(), name="eod-scheduler")
        self._task.add_done_callback(_report_unexpected_exit)

    async def stop(self) -> None:
        """Cancel the loop. A run it started stops where it is: the business date has not
        moved, and the next run (scheduled or not) resumes that date (cluster/eod.py)."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def view(self) -> dict[str, Any]:
        """The `schedule` field of GET /ops/eod."""
        return {
            "enabled": self.enabled,
            "at": self.at.strftime("%H:%M"),
            "timezone": self.zone.key,
            "catch_up_max_days": self.catch_up_max_days,
            "next_firing": self.next_at.isoformat() if self.next_at else None,
            "last_run": self.last_run,
        }

    # ---- firing ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:  # the first firing is at start: a cut-off missed while down is not skipped
            upcoming = next_firing(self.now(), self.at, self.zone)
            self._announce(upcoming)
            await self.fire()
            await self._sleep_until(upcoming)  # at once if this firing ran past it

    async def fire(self) -> None:
        """One firing: close what the latest cut-off allows, at most catch_up_max_days dates;
        after a failure, try again (with what is left of the bound) after each retry delay."""
        budget = self.catch_up_max_days
        for delay in (0.0, *self.retry_delays_s):
            if delay:
                log.warning("end of day schedule: trying again in %.0f s", delay)
                await asyncio.sleep(delay)
            outcome, closed = await self._close_due_dates(budget)
            budget -= closed
            if outcome != FAILED:
                return
        log.error("end of day schedule: still failing after %d retries; next firing at %s",
                  len(self.retry_delays_s), self.next_at.isoformat() if self.next_at else "?")

    async def _close_due_dates(self, budget: int) -> tuple[str, int]:
        """Close the due dates, oldest first, until one is not DONE. → (outcome, dates closed)."""
        last_closable = last_closable_date(self.now(), self.at, self.zone)
        try:
            business_date = await self.runner.business_date()
        except Exception as exc:  # Postgres down: nothing ran, the firing is retried
            log.exception("end of day schedule: cannot read the business date")
            self._record(None, FAILED, f"{type(exc).__name__}: {exc}")
            return FAILED, 0
        plan = dates_to_close(business_date, last_closable, budget)
        if not plan:
            log.info("end of day schedule: nothing to close (business date %s, last cut-off "
                     "on %s)", business_date, last_closable)
            return NOTHING_DUE, 0
        behind = (last_closable - business_date).days + 1
        if len(plan) < behind:
            log.warning("end of day schedule: %d dates behind, closing %d now (catch_up_max_"
                        "days); the rest at the next firings", behind, len(plan))
        for closed, day in enumerate(plan):
            outcome = await self._close(day)
            if outcome != DONE:
                return outcome, closed
        return DONE, len(plan)

    async def _close(self, day: date) -> str:
        """One run for `day`. Asking for that date (not "the current one") means a date
        another run closed meanwhile answers its stored report instead of running the next."""
        try:
            report = await self.runner.run(day)
        except EodError as exc:
            outcome = BUSY if exc.code == "eod_running" else FAILED
            log.warning("end of day schedule: %s not closed (%s): %s", day, outcome, exc.message)
            self._record(day, outcome, exc.message)
            return outcome
        except Exception as exc:  # Postgres, Redis or Ray failed: the date did not move
            log.exception("end of day schedule: end of day %s failed", day)
            self._record(day, FAILED, f"{type(exc).__name__}: {exc}")
            return FAILED
        log.info("end of day schedule: closed %s (%s loans), business date now %s",
                 day, report.get("loans_processed"), report.get("next_business_date"))
        self._record(day, DONE, None)
        return DONE

    # ---- bookkeeping ----------------------------------------------------------------------

    def _announce(self, firing: datetime) -> None:
        self.next_at = firing
        NEXT_FIRING.set(firing.timestamp())

    def _record(self, day: date | None, outcome: str, error: str | None) -> None:
        at = self.now()
        SCHEDULED_RUNS.labels(outcome).inc()
        SCHEDULED_LAST_RUN.labels(outcome).set(at.timestamp())
        self.last_run = {
            "business_date": day.isoformat() if day else None,
            "outcome": outcome,
            "at": _instant(at).isoformat(),
            "error": error,
        }

    async def _sleep_until(self, moment: datetime) -> None:
        # Short sleeps, re-reading the clock: a wall-clock step (NTP, a resumed VM, a test's
        # controlled clock) is noticed within CLOCK_RECHECK_S.
        while (left := (_instant(moment) - _instant(self.now())).total_seconds()) > 0:
            await asyncio.sleep(min(left, CLOCK_RECHECK_S))


def _report_unexpected_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:  # a bug: every run's failure is caught in the loop
        log.error("end of day scheduler stopped: %r; scheduled runs are off until a restart",
                  error, exc_info=error)
