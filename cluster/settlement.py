"""Settlement files at end of day (DOMAIN.md §7; cluster/eod.py calls `settle` after the
daily GL summary, once no journal line dated D can commit any more).

`settle(D)` builds the files of every closed date up to D that has none yet, oldest first
(a loan's balances chain from one date to the next, so no date may be skipped; on a
database that ran before settlement files existed, the first call walks every closed date
once, each costing a few index probes when no book but `own` moved), and records in each
date's stored run report, under "settlements", the summary of each file (book, loans,
net cash, sha256). A date whose report has it is settled; asking again changes nothing.
A crash anywhere in between leaves either claimed shards (skipped on the rerun, their rows
committed) or stored files (kept): the rerun yields the same bytes.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import asyncpg
import msgspec

from lending.chart import Chart
from lending.settlement import SettlementError
from storage import settlement_store
from storage.settlement_store import REPORT_KEY, SettlementMismatch, is_settled

__all__ = ["REPORT_KEY", "SettlementError", "SettlementMismatch", "is_settled", "settle"]

STEP_KEY = "settlement_s"


async def settle(
    pool: asyncpg.Pool, chart: Chart, logical_shards: int, day: date, report: dict[str, Any]
) -> dict[str, Any]:
    """Settle every closed date up to `day` that is not yet, then `day` (whose stored run
    report is `report`); returns `day`'s report as stored."""
    if REPORT_KEY in report:
        return report
    # A date is settled only after every earlier one: when the day before is, all are.
    previous_settled = await pool.fetchval(
        "SELECT report ? $2 FROM eod_runs WHERE business_date = $1 AND status = 'done'",
        day - timedelta(days=1), REPORT_KEY)
    if previous_settled is False:
        for earlier in await _unsettled_before(pool, day):
            await settle_date(pool, chart, logical_shards, earlier)
    stored = await settle_date(pool, chart, logical_shards, day)
    return report if stored is None else stored


async def settle_date(
    pool: asyncpg.Pool, chart: Chart, logical_shards: int, day: date
) -> dict[str, Any] | None:
    """Build the files of the closed date `day` and record them in its run report;
    returns that report as stored (None when `day` has no finished run)."""
    started = time.perf_counter()
    shards = await settlement_store.shards_moved(pool, day, logical_shards)
    await settlement_store.build_shards(pool, chart, shards, day)
    files = {}
    for book in await settlement_store.books_of(pool, day, shards):
        summary = await settlement_store.store_file(pool, day, book)
        files[book] = {"loans": summary["loans"], "net_cash": summary["totals"]["net_cash"],
                       "sha256": summary["sha256"]}
    seconds = round(time.perf_counter() - started, 3)
    stored = await pool.fetchval(
        "UPDATE eod_runs SET report = jsonb_set(report || jsonb_build_object($2::text, "
        "$3::jsonb), '{steps}', coalesce(report->'steps', '{}') || "
        "jsonb_build_object($4::text, $5::float8)) "
        "WHERE business_date = $1 AND status = 'done' AND NOT report ? $2 RETURNING report",
        day, REPORT_KEY, msgspec.json.encode(files).decode(), STEP_KEY, seconds)
    if stored is None:  # settled meanwhile by another caller, or not a closed date
        stored = await pool.fetchval(
            "SELECT report FROM eod_runs WHERE business_date = $1 AND status = 'done'", day)
    if stored is None:
        return None
    result: dict[str, Any] = msgspec.json.decode(stored)
    return result


async def _unsettled_before(pool: asyncpg.Pool, day: date) -> list[date]:
    rows = await pool.fetch(
        "SELECT business_date FROM eod_runs WHERE business_date < $1 AND status = 'done' "
        "AND NOT report ? $2 ORDER BY business_date", day, REPORT_KEY)
    return [r["business_date"] for r in rows]
