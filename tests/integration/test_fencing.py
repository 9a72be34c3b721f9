"""A stale owner of a shard can never commit: Postgres's epoch decides (no Ray, real PG)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import asyncpg
from factories import application_command

from actors.core import LOST, SERVING, ShardCore
from cluster.config import load_settings
from cluster.system import risk_policy
from lending.chart import load_chart
from lending.products import load_catalog
from lending.riskbook import load_risk_book
from lending.shard_state import ApplyContext
from storage import cluster_store
from storage.group_commit import GroupCommitter
from storage.migrate import migrate
from storage.shard_store import ShardStore

BUSINESS_DATE = date(2026, 11, 29)


CODES = load_chart(Path("config/chart_of_accounts.toml")).role_codes()


def _core(store: ShardStore, context: ApplyContext) -> ShardCore:
    return ShardCore(0, store, GroupCommitter(store, 1), lambda: context, 100, 10)


async def _scenario(dsn: str) -> None:
    settings = load_settings(environ={})
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
        await migrate(conn)  # re-running is a no-op
        await cluster_store.initialise(conn, 1, BUSINESS_DATE)
    context = ApplyContext(BUSINESS_DATE, load_catalog(Path("config/products")),
                           risk_policy(settings), risk=load_risk_book(Path("config/risk")))
    old = _core(ShardStore(pool, "old", CODES), context)
    new = _core(ShardStore(pool, "new", CODES), context)
    try:
        await old.activate()
        assert (await old.submit(application_command("A-1"))).status == 201
        await new.activate()  # takes the shard: epoch + 1
        assert new.epoch == old.epoch + 1
        stale = await old.submit(application_command("A-2"))
        assert stale.status == 503 and b"shard_unavailable" in stale.body
        assert old.status == LOST
        lost = await old.submit(application_command("A-3"))
        assert lost.status == 503, "a lost shard stays lost"
        assert (await new.submit(application_command("A-4"))).status == 201
        assert new.status == SERVING
        refs = {r[0] for r in await pool.fetch("SELECT partner_application_id FROM applications")}
        assert refs == {"A-1", "A-4"}, "nothing of the stale owner was committed"
        owner = await pool.fetchval("SELECT owner FROM shard_lease WHERE shard_id = 0")
        assert owner == "new"
    finally:
        for core in (old, new):
            await core.stop()
            await core.committer.close()
        await pool.close()


def test_stale_epoch_owner_cannot_commit(empty_database: str) -> None:
    asyncio.run(_scenario(empty_database))
