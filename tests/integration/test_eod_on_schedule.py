"""End of day on a schedule, on the real system ([eod] schedule_*, cluster/eod_schedule.py).

The system runs with the schedule on (cut-off 23:30 Asia/Shanghai, catch-up bound 2) and a
wall clock the test sets; everything else is real: Postgres, Redis, Ray, the EodRunner and
its lock. The business date moves on its own:
* not at start (the first cut-off is tonight), nor a second before a cut-off;
* three days behind, one firing closes only two dates (the bound), and nothing more runs
  until the next cut-off, which closes the rest;
* while another run holds the Redis lock the firing closes nothing and does not retry; the
  next firing does;
* every date is closed once, in order, by a real run that processed the book's loan; the
  metrics count the runs; GET /ops/eod shows the schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
import redis
from conftest import BUSINESS_DATE, RunningSystem, fresh_system
from conftest_redis import REDIS_URL
from factories import OpsClient, get_loan, new_loan
from prometheus_client.parser import text_string_to_metric_families

SHANGHAI = ZoneInfo("Asia/Shanghai")
SCHEDULE = """
[eod]
chunk_loans = 2
lock_ttl_s = 5
schedule_enabled = true
schedule_at = "23:30"
schedule_timezone = "Asia/Shanghai"
catch_up_max_days = 2
"""
WAIT_S = 90.0  # a few end-of-day runs on a busy 2-core machine
QUIET_S = 2.5  # > the scheduler's 1 s clock re-check: long enough to see a run that should not


def shanghai(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


class Clock:
    """The system's wall clock, set by the test (read from the system's event-loop thread)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class Ops(OpsClient):
    def __init__(self, system: RunningSystem) -> None:
        super().__init__(system.system.ops_url, timeout=30)

    def last_run(self) -> dict[str, Any] | None:
        run: dict[str, Any] | None = self.status()["schedule"]["last_run"]
        return run

    def scheduled_runs(self) -> dict[str, float]:
        text = self.client.get("/metrics").text
        return {
            sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "lendcore_eod_scheduled_runs"
            for sample in family.samples
            if sample.name == "lendcore_eod_scheduled_runs_total"
        }


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.1)


def closed(ops: Ops, day: str, outcome: str = "done") -> Callable[[], bool]:
    """The scheduler's last run was for `day`, with `outcome`."""
    def check() -> bool:
        run = ops.last_run()
        return run is not None and (run["business_date"], run["outcome"]) == (day, outcome)
    return check


@pytest.fixture
def scheduled(ray_cluster: None, tmp_path: Path) -> Iterator[tuple[RunningSystem, Clock]]:
    config = tmp_path / "schedule.toml"
    config.write_text(SCHEDULE)
    clock = Clock(shanghai(f"{BUSINESS_DATE} 12:00"))  # the business date's own noon
    with fresh_system(config, clock=clock) as running:
        yield running, clock


def test_the_business_date_advances_on_its_own(
    scheduled: tuple[RunningSystem, Clock],
) -> None:
    running, clock = scheduled
    ops = Ops(running)
    before = ops.scheduled_runs()
    loan = new_loan(running.client(), amount=1_000_000, product="CASH_EI_12", term=12)

    status = ops.status()
    assert set(status) == {"business_date", "running", "run", "schedule"}
    assert status["schedule"] == {
        "enabled": True, "at": "23:30", "timezone": "Asia/Shanghai", "catch_up_max_days": 2,
        "next_firing": "2026-11-29T23:30:00+08:00", "last_run": None}
    time.sleep(QUIET_S)
    assert ops.business_date() == date(2026, 11, 29)  # the start-up firing had nothing due

    # A second before 11-30's cut-off: 11-29 is closable, 11-30 not yet.
    clock.at = shanghai("2026-11-30 23:29:59")
    wait_until(closed(ops, "2026-11-29"), "11-29 closed")
    time.sleep(QUIET_S)
    assert ops.business_date() == date(2026, 11, 30)
    assert ops.status()["schedule"]["next_firing"] == "2026-11-30T23:30:00+08:00"

    # Down for three days: 11-30, 12-01 and 12-02 are due; one firing closes two.
    clock.at = shanghai("2026-12-03 23:29:59")
    wait_until(closed(ops, "2026-12-01"), "12-01 closed")
    time.sleep(QUIET_S)
    assert ops.business_date() == date(2026, 12, 2)
    assert ops.status()["schedule"]["next_firing"] == "2026-12-03T23:30:00+08:00"

    # The cut-off: 12-02 and 12-03.
    clock.at = shanghai("2026-12-03 23:30:00")
    wait_until(closed(ops, "2026-12-03"), "12-03 closed")
    assert ops.business_date() == date(2026, 12, 4)

    # Another run holds the lock (an operator, another gateway): nothing runs, no retry.
    lock = redis.Redis.from_url(REDIS_URL)
    lock_key = f"{running.system.settings.redis.key_prefix}eod:lock"
    try:
        assert lock.set(lock_key, "2026-12-04:someone-else", nx=True, px=60_000)
        clock.at = shanghai("2026-12-04 23:30:00")
        wait_until(closed(ops, "2026-12-04", "busy"), "12-04 refused: busy")
        assert ops.status()["running"] is True
        lock.delete(lock_key)
        time.sleep(QUIET_S)
        assert ops.business_date() == date(2026, 12, 4)
        assert closed(ops, "2026-12-04", "busy")()
    finally:
        lock.delete(lock_key)
        lock.close()

    # The next firing closes what the busy one could not.
    clock.at = shanghai("2026-12-05 23:30:00")
    wait_until(closed(ops, "2026-12-05"), "12-05 closed")
    assert ops.business_date() == date(2026, 12, 6)

    # Each date closed once, in order, by a real run over the book's loan.
    rows = running.run(running.pg().fetch(
        "SELECT business_date, status, attempts, report FROM eod_runs ORDER BY business_date"))
    assert [r["business_date"].isoformat() for r in rows] == [
        "2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04",
        "2026-12-05"]
    for row in rows:
        report = msgspec.json.decode(row["report"])
        assert (row["status"], row["attempts"], report["loans_processed"]) == ("done", 1, 1)
    accrued = sum(msgspec.json.decode(row["report"])["accrued_interest"] for row in rows)
    outstanding = get_loan(running.client(), loan["loan_id"])["outstanding"]
    assert accrued > 0 and outstanding["interest"] == accrued

    after = ops.scheduled_runs()
    assert after.get("done", 0) - before.get("done", 0) == 7
    assert after.get("busy", 0) - before.get("busy", 0) == 1
    assert after.get("failed", 0) - before.get("failed", 0) == 0
