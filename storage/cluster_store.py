"""Cluster-wide rows: the shard count, the business date, the lease table; ops reads."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg

from lending.ledger import CHART


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


async def trial_balance(pool: asyncpg.Pool, book: str | None) -> dict[str, Any]:
    rows = await pool.fetch(
        "SELECT account, sum(debit)::int8 AS debit, sum(credit)::int8 AS credit "
        "FROM account_balances WHERE ($1::text IS NULL OR book = $1) "
        "GROUP BY account ORDER BY account",
        book,
    )
    accounts = []
    for row in rows:
        account = CHART[row["account"]]
        debit, credit = int(row["debit"]), int(row["credit"])
        balance = debit - credit if account.normal_side == "debit" else credit - debit
        accounts.append({
            "code": account.code, "name": account.name, "debit": debit, "credit": credit,
            "balance": balance,
        })
    return {
        "book": book,
        "accounts": accounts,
        "total_debit": sum(a["debit"] for a in accounts),
        "total_credit": sum(a["credit"] for a in accounts),
    }


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
