"""Cluster-wide rows: the shard count, the business date, the lease table; ops reads."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg

from lending import reconcile
from lending.chart import Chart
from lending.memory import decode_loan_row


class ClusterMismatch(RuntimeError):
    pass


async def initialise(conn: asyncpg.Connection, logical_shards: int, business_date: date) -> None:
    """First start of a database fixes the shard count and the business date; later starts
    check the shard count (keys are never re-hashed) and keep the stored date."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO cluster_meta (key, value) VALUES ('logical_shards', $1), "
            "('business_date', $2) ON CONFLICT (key) DO NOTHING",
            str(logical_shards), business_date.isoformat(),
        )
        stored = int(await conn.fetchval(
            "SELECT value FROM cluster_meta WHERE key = 'logical_shards'"
        ))
        if stored != logical_shards:
            raise ClusterMismatch(
                f"this database was created with {stored} logical shards; config says "
                f"{logical_shards}. Set cluster.logical_shards = {stored}."
            )
        await conn.execute(
            "INSERT INTO shard_lease (shard_id) SELECT generate_series(0, $1 - 1) "
            "ON CONFLICT (shard_id) DO NOTHING",
            logical_shards,
        )


async def business_date(conn: asyncpg.Connection | asyncpg.Pool) -> date:
    value = await conn.fetchval("SELECT value FROM cluster_meta WHERE key = 'business_date'")
    if value is None:
        raise ClusterMismatch("cluster_meta has no business_date: database not initialised")
    return date.fromisoformat(value)


async def logical_shards(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    value = await conn.fetchval("SELECT value FROM cluster_meta WHERE key = 'logical_shards'")
    if value is None:
        raise ClusterMismatch("cluster_meta has no logical_shards: database not initialised")
    return int(value)


async def trial_balance(pool: asyncpg.Pool, chart: Chart, book: str | None) -> dict[str, Any]:
    """试算平衡 from the running totals (account_balances), per book or over all books."""
    rows = await pool.fetch(
        "SELECT account, sum(debit)::int8 AS debit, sum(credit)::int8 AS credit "
        "FROM account_balances WHERE ($1::text IS NULL OR book = $1) "
        "GROUP BY account ORDER BY account",
        book,
    )
    accounts: list[dict[str, Any]] = []
    for row in rows:
        account = chart.by_code(row["account"])
        debit, credit = int(row["debit"]), int(row["credit"])
        balance = debit - credit if account.side == "debit" else credit - debit
        accounts.append({
            "code": account.code, "name": account.name, "role": account.role,
            "debit": debit, "credit": credit, "balance": balance,
        })
    total_debit = sum(int(a["debit"]) for a in accounts)
    total_credit = sum(int(a["credit"]) for a in accounts)
    books = [r["book"] for r in await pool.fetch(
        "SELECT DISTINCT book FROM account_balances ORDER BY book")]
    return {
        "book": book,
        "books": books,
        "accounts": accounts,
        "total_debit": total_debit,
        "total_credit": total_credit,
        "balanced": total_debit == total_credit,
    }


DIFFERENCES_SHOWN_MAX = 100  # a report lists at most this many; the counts cover all


async def reconciliation(
    pool: asyncpg.Pool, chart: Chart, book: str | None, shard_ids: list[int]
) -> dict[str, Any]:
    """对账: every loan's state against its journal lines (durable truth on both sides).

    Reads one shard at a time: the loans' stored state and the journal summed per loan and
    account. Journal lines of a loan that does not exist count as differences too.
    """
    checked = 0
    loans_with_differences: set[str] = set()
    shown: list[dict[str, Any]] = []
    role_of = {code: role for role, code in chart.role_codes().items()}
    for shard_id in shard_ids:
        # One snapshot per shard: a commit between the two reads would look like a difference.
        async with pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            journal = await conn.fetch(
                "SELECT loan_id, account, (sum(debit) - sum(credit))::int8 AS net "
                "FROM journal_lines WHERE shard_id = $1 AND ($2::text IS NULL OR book = $2) "
                "GROUP BY loan_id, account", shard_id, book,
            )
            states = await conn.fetch("SELECT state FROM loans WHERE shard_id = $1", shard_id)
        ledger_net: dict[str, dict[str, int]] = {}
        for row in journal:
            ledger_net.setdefault(row["loan_id"], {})[role_of[row["account"]]] = int(row["net"])
        for row in states:
            loan = decode_loan_row(row["state"])
            if not reconcile.in_book(loan, book):
                continue
            checked += 1
            lines = ledger_net.pop(loan.loan_id, {})
            for difference in reconcile.differences(loan, lines, book):
                loans_with_differences.add(loan.loan_id)
                if len(shown) < DIFFERENCES_SHOWN_MAX:
                    shown.append(_difference_row(chart, difference))
        for orphan, balances in ledger_net.items():  # lines whose loan has no state
            for role, net in balances.items():
                if net:
                    loans_with_differences.add(orphan)
                    if len(shown) < DIFFERENCES_SHOWN_MAX:
                        shown.append(_difference_row(
                            chart, reconcile.Difference(orphan, role, 0, net)))
    return {
        "book": book,
        "shards": shard_ids,
        "loans_checked": checked,
        "loans_with_differences": len(loans_with_differences),
        "differences": shown,
        "reconciled": not loans_with_differences,
    }


def _difference_row(chart: Chart, difference: reconcile.Difference) -> dict[str, Any]:
    return {
        "loan_id": difference.loan_id,
        "account": chart.code(difference.account),
        "role": difference.account,
        "expected": difference.expected,
        "ledger": difference.ledger,
    }


async def check_chart_covers_ledger(conn: asyncpg.Connection, chart: Chart) -> None:
    """Refuse to start when the ledger holds an account code the chart no longer has: every
    report would fail on it, and a code must never change once entries exist."""
    known = {account.code for account in chart.accounts}
    stored = {r["account"] for r in await conn.fetch(
        "SELECT DISTINCT account FROM account_balances")}
    unknown = sorted(stored - known)
    if unknown:
        raise ClusterMismatch(
            f"the ledger holds account codes {unknown} that the chart of accounts does not "
            "define; restore them in the chart file (codes must never change once used)"
        )


async def shard_leases(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT shard_id, owner, epoch, renewed_at FROM shard_lease ORDER BY shard_id"
    )
    return [
        {
            "shard_id": row["shard_id"],
            "owner": row["owner"],
            "epoch": int(row["epoch"]),
            "renewed_at": row["renewed_at"].isoformat() if row["renewed_at"] else None,
        }
        for row in rows
    ]
