"""End of day on a schedule (cluster/eod_schedule.py): the calendar arithmetic, the config
keys, and the firing loop against a stand-in runner with a controlled clock. The real
system on a schedule is tests/integration/test_eod_on_schedule.py."""

from __future__ import annotations

import asyncio
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cluster import eod_schedule
from cluster.config import ConfigError, EodSettings, load_settings
from cluster.eod import eod_running
from cluster.eod_schedule import (
    BUSY,
    DONE,
    FAILED,
    EodScheduler,
    dates_to_close,
    firing_on,
    last_closable_date,
    next_firing,
)

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
CUT_OFF = time(23, 30)


def shanghai(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


# ---- when the schedule fires -------------------------------------------------------------


@pytest.mark.parametrize(("now", "expected"), [
    ("2026-12-02 23:29:59", "2026-12-02T23:30:00+08:00"),  # just before: today's
    ("2026-12-02 23:30:00", "2026-12-03T23:30:00+08:00"),  # exactly at it: tomorrow's
    ("2026-12-02 23:30:01", "2026-12-03T23:30:00+08:00"),  # just after
    ("2026-12-03 00:00:00", "2026-12-03T23:30:00+08:00"),  # a new day, before its cut-off
    ("2026-12-31 23:45:00", "2027-01-01T23:30:00+08:00"),  # across a year
])
def test_next_firing_in_shanghai(now: str, expected: str) -> None:
    assert next_firing(shanghai(now), CUT_OFF, SHANGHAI).isoformat() == expected


def test_next_firing_reads_the_instant_not_the_utc_date() -> None:
    # 16:00 UTC on the 2nd is already 00:00 on the 3rd in Shanghai
    now = datetime(2026, 12, 2, 16, 0, tzinfo=UTC)
    assert next_firing(now, CUT_OFF, SHANGHAI) == shanghai("2026-12-03 23:30")
    # 15:29:59 UTC is 23:29:59 in Shanghai: today's cut-off is a second away
    now = datetime(2026, 12, 2, 15, 29, 59, tzinfo=UTC)
    firing = next_firing(now, CUT_OFF, SHANGHAI)
    assert firing - now == timedelta(seconds=1) and firing.date() == date(2026, 12, 2)


def test_midnight_cut_off() -> None:
    assert next_firing(shanghai("2026-12-02 23:59:59"), time(0, 0), SHANGHAI) == shanghai(
        "2026-12-03 00:00")
    assert last_closable_date(shanghai("2026-12-03 00:00"), time(0, 0), SHANGHAI) == date(
        2026, 12, 3)


@pytest.mark.parametrize(("now", "expected"), [
    ("2026-12-02 23:29:59", "2026-12-01"),  # before today's cut-off: up to yesterday
    ("2026-12-02 23:30:00", "2026-12-02"),  # at it: today may close
    ("2026-12-02 23:59:59", "2026-12-02"),
    ("2026-12-03 00:10:00", "2026-12-02"),  # a firing that ran late past midnight
    ("2026-12-03 09:00:00", "2026-12-02"),
])
def test_last_closable_date(now: str, expected: str) -> None:
    assert last_closable_date(shanghai(now), CUT_OFF, SHANGHAI) == date.fromisoformat(expected)


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        next_firing(datetime(2026, 12, 2, 12, 0), CUT_OFF, SHANGHAI)


def test_daylight_saving_days_fire_once() -> None:
    """Not our zone, but a configurable one: 02:30 does not exist on 2027-03-14 in New York
    (fires at 03:30 EDT), 01:30 happens twice on 2027-11-07 (fires at the first)."""
    at = time(2, 30)
    gap = next_firing(datetime(2027, 3, 14, 5, 0, tzinfo=UTC), at, NEW_YORK)  # 00:00 EST
    assert gap.astimezone(UTC) == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)
    assert gap.date() == date(2027, 3, 14)
    after_gap = next_firing(gap, at, NEW_YORK)
    assert after_gap.astimezone(UTC) == datetime(2027, 3, 15, 6, 30, tzinfo=UTC)  # 02:30 EDT

    at = time(1, 30)
    first = next_firing(datetime(2027, 11, 7, 4, 0, tzinfo=UTC), at, NEW_YORK)  # 00:00 EDT
    assert first.astimezone(UTC) == datetime(2027, 11, 7, 5, 30, tzinfo=UTC)  # 01:30 EDT
    # 06:00 UTC is 01:00 EST, before the repeated 01:30: the next firing is tomorrow's
    repeated = next_firing(datetime(2027, 11, 7, 6, 0, tzinfo=UTC), at, NEW_YORK)
    assert repeated.astimezone(UTC) == datetime(2027, 11, 8, 6, 30, tzinfo=UTC)
    assert last_closable_date(datetime(2027, 11, 7, 6, 45, tzinfo=UTC), at, NEW_YORK) == date(
        2027, 11, 7)


def test_firing_on_keeps_its_day() -> None:
    assert firing_on(date(2026, 12, 2), CUT_OFF, SHANGHAI).isoformat() == (
        "2026-12-02T23:30:00+08:00")


# ---- how many dates one firing closes ----------------------------------------------------


def test_dates_to_close() -> None:
    d = date(2026, 11, 29)
    assert dates_to_close(d, d - timedelta(days=1), 7) == []  # already past the cut-off's day
    assert dates_to_close(d, d - timedelta(days=30), 7) == []
    assert dates_to_close(d, d, 7) == [d]
    assert dates_to_close(d, d + timedelta(days=2), 7) == [d + timedelta(days=i) for i in range(3)]
    # ten days behind, bound 7: the oldest seven, in order
    assert dates_to_close(d, d + timedelta(days=9), 7) == [
        d + timedelta(days=i) for i in range(7)]
    assert dates_to_close(d, d + timedelta(days=9), 1) == [d]


# ---- the config keys ---------------------------------------------------------------------


def write_eod(tmp_path: Path, lines: str) -> Path:
    config = tmp_path / "eod.toml"
    config.write_text("[eod]\n" + lines + "\n")
    return config


def test_defaults_are_off_at_23_30_in_shanghai() -> None:
    eod = load_settings(environ={}).eod
    assert eod.schedule_enabled is False
    assert eod.schedule_time() == CUT_OFF
    assert eod.schedule_zone().key == "Asia/Shanghai"
    assert eod.catch_up_max_days == 7


@pytest.mark.parametrize(("line", "message"), [
    ('schedule_at = "24:00"', "eod.schedule_at must be a wall-clock time HH:MM .*'24:00'"),
    ('schedule_at = "23:60"', "eod.schedule_at must be .*'23:60'"),
    ('schedule_at = "7:30"', "eod.schedule_at must be .*'7:30'"),
    ('schedule_at = "23:30:00"', "eod.schedule_at must be .*'23:30:00'"),
    ('schedule_at = "2330"', "eod.schedule_at must be .*'2330'"),
    ('schedule_at = ""', "eod.schedule_at must be .*''"),
    ('schedule_timezone = "Mars/Olympus"', "eod.schedule_timezone must be an IANA .*Mars"),
    ('schedule_timezone = "asia/shanghai"', "eod.schedule_timezone must be .*asia/shanghai"),
    ('schedule_timezone = "../etc/passwd"', "eod.schedule_timezone must be .*passwd"),
    ('schedule_timezone = ""', "eod.schedule_timezone must be"),
    ("catch_up_max_days = 0", "eod.catch_up_max_days must be in 1..366"),
    ('schedule_enabled = "yes"', "Expected `bool`, got `str` - at `\\$.eod.schedule_enabled`"),
])
def test_bad_schedule_keys_are_one_line_config_errors(
    tmp_path: Path, line: str, message: str
) -> None:
    # checked with the schedule off too: a typo must not wait for the day it is switched on
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(write_eod(tmp_path, line), environ={})
    assert "\n" not in str(caught.value)


def test_good_schedule_keys(tmp_path: Path) -> None:
    config = write_eod(tmp_path, 'schedule_enabled = true\nschedule_at = "00:05"\n'
                                 'schedule_timezone = "Europe/Paris"\ncatch_up_max_days = 1')
    eod = load_settings(config, environ={}).eod
    assert (eod.schedule_enabled, eod.schedule_time(), eod.schedule_zone().key,
            eod.catch_up_max_days) == (True, time(0, 5), "Europe/Paris", 1)


@pytest.fixture
def no_system_zones() -> Iterator[None]:
    """A machine with only Python: no /usr/share/zoneinfo."""
    zoneinfo.reset_tzpath(to=[])
    try:
        yield
    finally:
        zoneinfo.reset_tzpath()


def test_zones_load_without_a_system_tz_database(no_system_zones: None) -> None:
    # from the pinned tzdata package (pyproject.toml)
    zone = zoneinfo.ZoneInfo.no_cache("Asia/Shanghai")
    assert datetime(2026, 7, 1, tzinfo=zone).utcoffset() == timedelta(hours=8)


# ---- the firing loop ---------------------------------------------------------------------


class StandInRunner:
    """EodRunner's contract in memory: run(D) closes D when D is the business date, answers
    a closed date's report, and raises the errors queued in `errors` (None = succeed)."""

    def __init__(self, business_date: date, errors: list[BaseException | None] | None = None):
        self.current = business_date
        self.errors = list(errors or [])
        self.calls: list[date | None] = []
        self.block: asyncio.Event | None = None  # when set, runs wait for it

    async def business_date(self) -> date:
        return self.current

    async def run(self, requested: date | None = None) -> dict[str, Any]:
        self.calls.append(requested)
        if self.block is not None:
            await self.block.wait()
        if self.errors and (error := self.errors.pop(0)) is not None:
            raise error
        day = self.current if requested is None else requested
        assert day == self.current, f"asked {day}, business date {self.current}"
        self.current = day + timedelta(days=1)
        return {"business_date": day.isoformat(),
                "next_business_date": self.current.isoformat(), "loans_processed": 0}


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def scheduler(
    runner: StandInRunner, clock: Clock, *, catch_up: int = 7, enabled: bool = True
) -> EodScheduler:
    settings = EodSettings(schedule_enabled=enabled, catch_up_max_days=catch_up)
    return EodScheduler(runner, settings, now=clock, retry_delays_s=(0.0, 0.0))


def runs(outcome: str) -> float:
    return REGISTRY.get_sample_value(
        "lendcore_eod_scheduled_runs_total", {"outcome": outcome}) or 0.0


D = date(2026, 11, 29)


@pytest.mark.asyncio
async def test_a_firing_catches_up_at_most_the_bound() -> None:
    runner = StandInRunner(D)
    clock = Clock(shanghai("2026-12-03 23:29:59"))  # closable: up to 12-02, four dates
    done_before = runs(DONE)
    await scheduler(runner, clock, catch_up=2).fire()
    assert runner.calls == [D, D + timedelta(days=1)]
    assert runner.current == date(2026, 12, 1)
    assert runs(DONE) - done_before == 2

    clock.at = shanghai("2026-12-03 23:30:00")  # today's cut-off: up to 12-03, three dates
    sched = scheduler(runner, clock, catch_up=7)
    await sched.fire()
    assert runner.current == date(2026, 12, 4)
    assert sched.view()["last_run"] == {
        "business_date": "2026-12-03", "outcome": DONE, "at": "2026-12-03T15:30:00+00:00",
        "error": None}

    await sched.fire()  # nothing left before the next cut-off: no run
    assert runner.current == date(2026, 12, 4) and len(runner.calls) == 5


@pytest.mark.asyncio
async def test_busy_waits_for_the_next_firing() -> None:
    runner = StandInRunner(D, errors=[eod_running("2026-11-29:abc")])
    busy_before = runs(BUSY)
    sched = scheduler(runner, Clock(shanghai("2026-11-30 08:00")))
    await sched.fire()
    assert runner.calls == [D] and runner.current == D  # no retry within the firing
    assert runs(BUSY) - busy_before == 1
    assert sched.view()["last_run"]["outcome"] == BUSY
    assert "in progress" in sched.view()["last_run"]["error"]


@pytest.mark.asyncio
async def test_a_failure_is_retried_with_what_is_left_of_the_bound() -> None:
    # five dates due, bound 3: closes one, fails, the retry closes two more
    runner = StandInRunner(D, errors=[None, RuntimeError("postgres went away")])
    failed_before = runs(FAILED)
    await scheduler(runner, Clock(shanghai("2026-12-04 09:00")), catch_up=3).fire()
    assert runner.calls == [D, D + timedelta(days=1), D + timedelta(days=1),
                            D + timedelta(days=2)]
    assert runner.current == D + timedelta(days=3)
    assert runs(FAILED) - failed_before == 1


@pytest.mark.asyncio
async def test_a_firing_gives_up_after_its_retries() -> None:
    runner = StandInRunner(D, errors=[RuntimeError("down")] * 5)
    sched = scheduler(runner, Clock(shanghai("2026-11-30 08:00")))
    await sched.fire()
    assert runner.calls == [D, D, D]  # the attempt and its two retries (retry_delays_s)
    assert runner.current == D
    assert sched.view()["last_run"]["error"] == "RuntimeError: down"


@pytest.mark.asyncio
async def test_the_loop_fires_at_start_and_at_the_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eod_schedule, "CLOCK_RECHECK_S", 0.01)
    runner = StandInRunner(D)
    clock = Clock(shanghai("2026-11-30 12:00"))  # 11-29's cut-off passed while "down"
    sched = scheduler(runner, clock)
    sched.start()
    try:
        await wait_for(lambda: runner.current == D + timedelta(days=1))
        assert sched.view()["next_firing"] == "2026-11-30T23:30:00+08:00"
        clock.at = shanghai("2026-11-30 23:29:59")
        await asyncio.sleep(0.1)
        assert runner.current == D + timedelta(days=1)  # a second early: nothing
        clock.at = shanghai("2026-11-30 23:30:00")
        await wait_for(lambda: runner.current == D + timedelta(days=2))
        assert sched.view()["next_firing"] == "2026-12-01T23:30:00+08:00"
    finally:
        await sched.stop()
    assert runner.calls == [D, D + timedelta(days=1)]


@pytest.mark.asyncio
async def test_stop_cancels_a_run_in_progress() -> None:
    runner = StandInRunner(D)
    runner.block = asyncio.Event()
    sched = scheduler(runner, Clock(shanghai("2026-11-30 12:00")))
    sched.start()
    await wait_for(lambda: runner.calls == [D])
    await asyncio.wait_for(sched.stop(), 1)
    assert runner.current == D  # cut off before it closed: the next run resumes D


@pytest.mark.asyncio
async def test_disabled_never_runs() -> None:
    runner = StandInRunner(D)
    sched = scheduler(runner, Clock(shanghai("2026-12-30 12:00")), enabled=False)
    sched.start()
    await asyncio.sleep(0.05)
    await sched.stop()
    assert runner.calls == []
    assert sched.view() == {"enabled": False, "at": "23:30", "timezone": "Asia/Shanghai",
                            "catch_up_max_days": 7, "next_firing": None, "last_run": None}


async def wait_for(condition: Any, timeout_s: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
