"""The business figures of the operator dashboard (GET /ops/business-summary).

Every figure is one SQL aggregate over an index bounded by what it counts (migration 0015,
the collection queues' partial index, `account_balances`), or a stored end-of-day report:
nothing here reads the whole book, so the summary costs the same on 100 loans as on
millions. The one Python loop decodes the reasons of at most REASON_SAMPLE_MAX of the day's
applications that carry reasons (declined or in review); the answer says how many it read.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg
import msgspec

from lending.chart import Chart
from lending.ledger import DISBURSEMENT
from lending.loans import LOAN_WRITTEN_OFF
from storage import cluster_store

REASON_SAMPLE_MAX = 2000
# Statuses whose applications carry reasons (an approval has none).
STATUSES_WITH_REASONS = ("declined", "manual_review", "awaiting_confirmation")
# The balances the book panel shows, by account role (codes and names come from the chart).
BOOK_ROLES = (
    "principal_receivable_normal", "principal_receivable_overdue", "interest_receivable",
    "penalty_receivable", "fee_receivable", "off_balance_interest", "written_off_loans",
)


# Spelt out in the SQL below (partial indexes need literals); these are the code's names.
assert DISBURSEMENT == "disbursement" and LOAN_WRITTEN_OFF == "written_off"


class _Reasons(msgspec.Struct):
    """The one field of a stored application (lending.shard_state.Application) read here."""

    reasons: list[str]


_REASONS = msgspec.msgpack.Decoder(_Reasons)


async def business_summary(
    pool: asyncpg.Pool, chart: Chart, *, non_accrual_dpd: int, write_off_dpd: int
) -> dict[str, Any]:
    today = await cluster_store.business_date(pool)
    async with pool.acquire() as conn:
        return {
            "business_date": today.isoformat(),
            "applications": await _applications(conn, today),
            "disbursed": await _disbursed(conn, today),
            "repayments": await _repayments(conn, today),
            "book": await _book(conn, chart),
            "delinquency": await _delinquency(conn, non_accrual_dpd, write_off_dpd),
            "last_close": await _last_close(conn),
        }


async def _applications(conn: asyncpg.Connection, day: date) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM applications WHERE created_on = $1 "
        "GROUP BY status ORDER BY status", day)
    by_status = {r["status"]: int(r["n"]) for r in rows}
    states = await conn.fetch(
        "SELECT state FROM applications WHERE created_on = $1 AND status = ANY($2::text[]) "
        "LIMIT $3", day, list(STATUSES_WITH_REASONS), REASON_SAMPLE_MAX)
    by_reason: dict[str, int] = {}
    for row in states:
        for reason in _REASONS.decode(row["state"]).reasons:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        "created_on": day.isoformat(),
        "total": sum(by_status.values()),
        "by_status": by_status,
        "approved": by_status.get("approved", 0),
        # Counted over `reasons_read` of the `with_reasons` applications that carry reasons.
        "by_reason": sorted(
            ({"reason": reason, "applications": n} for reason, n in by_reason.items()),
            key=lambda item: (-item["applications"], item["reason"])),
        "reasons_read": len(states),
        "with_reasons": sum(by_status.get(s, 0) for s in STATUSES_WITH_REASONS),
    }


async def _disbursed(conn: asyncpg.Connection, day: date) -> dict[str, int]:
    # The kind is written out, not a parameter: the partial index's predicate must be
    # provable when the (generic: storage/db.py) plan is made.
    row = await conn.fetchrow(
        "SELECT count(*) AS loans, coalesce(sum(debit), 0)::int8 AS amount FROM journal_lines "
        "WHERE business_date = $1 AND kind = 'disbursement' AND debit > 0", day)
    assert row is not None
    return {"loans": int(row["loans"]), "amount": int(row["amount"])}


async def _repayments(conn: asyncpg.Connection, day: date) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT count(*) AS repayments, coalesce(sum(amount), 0)::int8 AS amount "
        "FROM repayments WHERE value_date = $1", day)
    assert row is not None
    return {"count": int(row["repayments"]), "amount": int(row["amount"])}


async def _book(conn: asyncpg.Connection, chart: Chart) -> list[dict[str, Any]]:
    """Live balances of the book's receivables and memo accounts, all books summed, from the
    running totals (`account_balances`: a few rows per shard), positive on the account's
    normal side as in the trial balance."""
    codes = {chart.code(role): role for role in BOOK_ROLES}
    rows = await conn.fetch(
        "SELECT account, (sum(debit) - sum(credit))::int8 AS net_debit FROM account_balances "
        "WHERE account = ANY($1::text[]) GROUP BY account", list(codes))
    net = {r["account"]: int(r["net_debit"]) for r in rows}
    book = []
    for role in BOOK_ROLES:
        account = chart.by_code(chart.code(role))
        balance = net.get(account.code, 0)
        book.append({"role": role, "code": account.code, "name": account.name,
                     "balance": balance if account.side == "debit" else -balance})
    return book


async def _delinquency(
    conn: asyncpg.Connection, non_accrual_dpd: int, write_off_dpd: int
) -> dict[str, int]:
    """Open collection cases (one per loan past due, DPD as of the last close) and how many
    are past the non-accrual and write-off thresholds; written-off loans by their status."""
    row = await conn.fetchrow(
        "SELECT count(*) AS open_cases, "
        "count(*) FILTER (WHERE dpd > $1) AS past_non_accrual, "
        "count(*) FILTER (WHERE dpd > $2) AS past_write_off "
        "FROM collection_cases WHERE status = 'open'", non_accrual_dpd, write_off_dpd)
    assert row is not None
    written_off = await conn.fetchval(  # a literal, for the partial index (see _disbursed)
        "SELECT count(*) FROM loans WHERE status = 'written_off'")
    return {
        "open_cases": int(row["open_cases"]),
        "past_non_accrual_dpd": int(row["past_non_accrual"]),
        "past_write_off_dpd": int(row["past_write_off"]),
        "written_off_loans": int(written_off),
        "non_accrual_dpd": non_accrual_dpd,
        "write_off_dpd": write_off_dpd,
    }


async def _last_close(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The book as the last finished end of day left it (buckets and five-class
    classification of every open loan; what the day's run did), or None before the first."""
    row = await conn.fetchrow(
        "SELECT business_date, report FROM eod_runs WHERE status = 'done' "
        "ORDER BY business_date DESC LIMIT 1")
    if row is None or row["report"] is None:
        return None
    report = msgspec.json.decode(row["report"])
    return {
        "business_date": row["business_date"].isoformat(),
        "loans_processed": report["loans_processed"],
        "buckets": report["buckets"],
        "classifications": report["classifications"],
        "transitions": report["transitions"],
        "accrued_interest": report["accrued_interest"],
        # Reports of dates closed before collections existed (migration 0008) have none.
        "collections": report.get("collections"),
    }
