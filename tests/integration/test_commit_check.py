"""The shard commit updates stored loans with an UPDATE, which would silently skip a row
that is missing; the statement's own check fails it instead, and nothing of the batch
commits (storage/shard_store.py, migration 0013). Real Postgres, no Ray."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import asyncpg
import msgspec
import pytest

from actors.core import SERVING, ShardCore
from cluster.config import load_settings
from cluster.system import risk_policy
from lending.chart import load_chart
from lending.commands import EodStep, SeedLoans
from lending.memory import decode_loan_row
from lending.products import load_catalog
from lending.riskbook import load_risk_book
from lending.shard_state import ApplyContext, eod_cause
from storage import cluster_store
from storage.group_commit import GroupCommitter
from storage.migrate import migrate
from storage.shard_store import ShardStore

BUSINESS_DATE = date(2026, 11, 29)
CODES = load_chart(Path("config/chart_of_accounts.toml")).role_codes()


async def _stored_closed_on(pool: asyncpg.Pool) -> dict[str, date | None]:
    rows = await pool.fetch("SELECT state FROM loans")
    return {(n := decode_loan_row(r["state"])).loan_id: n.last_closed_on for r in rows}


async def _scenario(dsn: str, copy_entries_min: int) -> None:
    settings = load_settings(environ={})
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
        await cluster_store.initialise(conn, 1, BUSINESS_DATE)
    context = ApplyContext(BUSINESS_DATE, load_catalog(Path("config/products")),
                           risk_policy(settings), risk=load_risk_book(Path("config/risk")))
    store = ShardStore(pool, "test", CODES, copy_entries_min=copy_entries_min)
    committer = GroupCommitter(store, 1)
    core = ShardCore(0, store, committer, lambda: context, 100, 10)
    try:
        await core.activate()
        assert (await core.submit(SeedLoans(6, 3, BUSINESS_DATE))).status == 200
        before = await _stored_closed_on(pool)
        lines_before = await pool.fetchval("SELECT count(*) FROM journal_lines")
        gone = min(before)
        await pool.execute("DELETE FROM loans WHERE loan_id = $1", gone)  # behind its back

        refused = await core.submit(EodStep(BUSINESS_DATE, 100))
        assert refused.status == 503 and b"shard_unavailable" in refused.body
        assert await _stored_closed_on(pool) == {k: v for k, v in before.items() if k != gone}
        assert await pool.fetchval("SELECT count(*) FROM journal_lines") == lines_before
        assert await pool.fetchval("SELECT count(*) FROM eod_shard_progress") == 0

        # the shard reloads from Postgres, the truth: the day closes the loans it holds
        done = await core.submit(EodStep(BUSINESS_DATE, 100))
        assert done.status == 200, done.body
        assert core.status == SERVING and gone not in core.state.loans  # type: ignore[union-attr]
        assert msgspec.json.decode(done.body)["remaining"] == 0
        after = await _stored_closed_on(pool)
        assert set(after) == set(before) - {gone}
        assert set(after.values()) == {BUSINESS_DATE}
        accrued = {r[0] for r in await pool.fetch(
            "SELECT DISTINCT loan_id FROM journal_lines WHERE cause = $1",
            eod_cause(BUSINESS_DATE))}
        assert accrued and accrued <= set(after)  # the day's entries, by statement or COPY
    finally:
        await core.stop()
        await committer.close()
        await pool.close()


@pytest.mark.parametrize("copy_entries_min", [1, 10_000], ids=["copy", "statement"])
def test_a_loan_missing_from_postgres_fails_the_whole_commit(
    empty_database: str, copy_entries_min: int
) -> None:
    asyncio.run(_scenario(empty_database, copy_entries_min))
