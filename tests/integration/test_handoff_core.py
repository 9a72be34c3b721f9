"""Handoff without Ray, on a real Postgres: a shard core's release (the batch in flight
commits and is answered, the queue is bounced `shard_moved`, nothing more is taken), the next
owner's adoption at epoch + 1 answering the bounced commands exactly once, and the shard map
store (versions, states, refusals)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import asyncpg
import pytest
from factories import application_command

from actors.core import MOVED, SERVING, ShardCore
from cluster.config import load_settings
from cluster.system import risk_policy
from lending.chart import load_chart
from lending.products import load_catalog
from lending.riskbook import load_risk_book
from lending.shard_state import ApplyContext
from storage import cluster_store, shard_map_store
from storage.group_commit import GroupCommitter
from storage.migrate import migrate
from storage.shard_map_store import MapConflict
from storage.shard_store import ShardStore

BUSINESS_DATE = date(2026, 11, 29)
CODES = load_chart(Path("config/chart_of_accounts.toml")).role_codes()


async def _pool(dsn: str, shards: int = 1) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
        await cluster_store.initialise(conn, shards, BUSINESS_DATE)
    return pool


def _context() -> ApplyContext:
    return ApplyContext(BUSINESS_DATE, load_catalog(Path("config/products")),
                        risk_policy(load_settings(environ={})),
                        risk=load_risk_book(Path("config/risk")))


def _core(pool: asyncpg.Pool, owner: str, context: ApplyContext) -> ShardCore:
    store = ShardStore(pool, owner, CODES)
    return ShardCore(0, store, GroupCommitter(store, 1), lambda: context, 100, 10)


async def _release_scenario(dsn: str) -> None:
    pool = await _pool(dsn)
    context = _context()
    old, new = _core(pool, "old", context), _core(pool, "new", context)
    try:
        await old.activate()
        commands = [application_command(f"R-{i}") for i in range(30)]
        futures = [old.submit(c) for c in commands]
        for _ in range(200):  # the first batch (10) is taken: it is being committed
            if old.queue_depth() == 20:
                break
            await asyncio.sleep(0.001)
        assert old.queue_depth() == 20
        bounced = await old.release()
        replies = [await f for f in futures]
        assert [r.status for r in replies[:10]] == [201] * 10, "the batch in flight commits"
        assert all(r.status == 503 and r.code == "shard_moved" for r in replies[10:])
        assert bounced == 20 and old.status == MOVED and old.state is None
        late = await old.submit(application_command("R-late"))
        assert late.status == 503 and late.code == "shard_moved"
        assert await old.release() == 0, "idempotent"
        # The next owner: epoch + 1, answers every command once (retried with its key).
        await new.activate()
        assert new.epoch == old.epoch + 1 and new.status == SERVING
        again = [await new.submit(c) for c in commands]
        assert all(r.status == 201 for r in again)
        assert [r.body for r in again[:10]] == [r.body for r in replies[:10]], "replays"
        stored = await pool.fetchval(
            "SELECT count(*) FROM applications WHERE partner_application_id LIKE 'R-%'")
        assert stored == 30, "each command committed exactly once"
    finally:
        for core in (old, new):
            await core.stop()
            await core.committer.close()
        await pool.close()


def test_release_commits_the_batch_in_flight_and_bounces_the_queue(empty_database: str) -> None:
    asyncio.run(_release_scenario(empty_database))


async def _map_scenario(dsn: str) -> None:
    pool = await _pool(dsn, shards=4)
    try:
        async with pool.acquire() as conn:
            first = await shard_map_store.initialise(conn, [("h0", "n0"), ("h1", "n1")] * 2)
            assert first == 1
            # The same placement again: nothing changes, no new version.
            assert await shard_map_store.initialise(
                conn, [("h0", "n0"), ("h1", "n1")] * 2) == 1
            loaded = await shard_map_store.load(conn)
            assert loaded.version == 1 and loaded.hosts() == ["h0", "h1", "h0", "h1"]
            assert await shard_map_store.serving_shards_of(conn, "h0") == [0, 2]
            before, version = await shard_map_store.begin_move(conn, 2, "h1")
            assert before.host == "h0" and version == 2
            with pytest.raises(MapConflict):
                await shard_map_store.begin_move(conn, 2, "h1")  # moving already
            with pytest.raises(MapConflict):
                await shard_map_store.begin_move(conn, 1, "h1")  # there already
            with pytest.raises(MapConflict):
                await shard_map_store.begin_move(conn, 9, "h1")  # no such shard
            moving = (await shard_map_store.load(conn)).places[2]
            assert moving.state == "moving" and moving.moving_to == "h1"
            # A host starting now does not take a moving shard.
            assert await shard_map_store.serving_shards_of(conn, "h0") == [0]
            async with conn.transaction():
                assert await shard_map_store.finish_move(conn, 2, "h1", "n1") == 3
            done = await shard_map_store.load(conn)
            assert done.version == 3 and done.hosts() == ["h0", "h1", "h1", "h1"]
            assert done.places[2].state == "serving" and done.places[2].moving_to is None
            assert await shard_map_store.version(conn) == 3
            # A later start rewrites the rows for its own (new) hosts: one new version.
            assert await shard_map_store.initialise(
                conn, [("k0", "n0"), ("k1", "n1")] * 2) == 4
            with pytest.raises(asyncpg.CheckViolationError):  # moving needs its target
                await conn.execute("UPDATE shard_map SET state = 'moving' WHERE shard_id = 0")
    finally:
        await pool.close()


def test_shard_map_versions_states_and_refusals(empty_database: str) -> None:
    asyncio.run(_map_scenario(empty_database))
