"""A shard host's business-date sync returns only once no batch of the old date can still
commit (actors/host.py, actors/core.py; no Ray, real Postgres and Redis).

End of day relies on it: after `sync_hosts` it sums the journal lines of the closed date
into the daily GL summary, which a line committing later would miss.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta

import asyncpg
import pytest
from conftest import create_database, drop_database, system_settings
from conftest_redis import REDIS_URL, delete_keys_with_prefix
from factories import application_command

from actors.host import ShardHostCore
from cluster.system import System
from storage import cluster_store
from storage.migrate import migrate

OLD_DATE = date(2026, 11, 29)
NEW_DATE = OLD_DATE + timedelta(days=1)


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    name, dsn = create_database()
    prefix = f"lendcore-test-{uuid.uuid4().hex}:"
    yield dsn, prefix
    drop_database(name)
    delete_keys_with_prefix(prefix)


async def _until(condition_met: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition_met():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _scenario(dsn: str, prefix: str) -> None:
    settings = system_settings(dsn, prefix)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    async with pool.acquire() as conn:
        await migrate(conn)
        await cluster_store.initialise(conn, 1, OLD_DATE)
    host = ShardHostCore(System(settings, dsn, REDIS_URL).host_config(0, [0]))
    blocker = await pool.acquire()
    try:
        await host.ensure_started()
        core = host.shards[0]
        # Hold the shard's lease row: its next commit (whose fence updates that row)
        # waits, as a slow commit would.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM shard_lease WHERE shard_id = 0 FOR UPDATE")
        reply = core.submit(application_command("A-1"))
        await _until(lambda: core.queue_depth() == 0)  # the batch is being applied
        await pool.execute(
            "UPDATE cluster_meta SET value = $1 WHERE key = 'business_date'",
            NEW_DATE.isoformat())
        sync = asyncio.create_task(host.sync_business_date())
        await asyncio.sleep(0.5)
        assert not sync.done(), "the sync returned while a batch of the old date was committing"
        assert not reply.done()
        await transaction.rollback()
        assert await asyncio.wait_for(sync, 10) == NEW_DATE.isoformat()
        assert reply.done() and reply.result().status == 201
        created_on = await pool.fetchval("SELECT created_on FROM applications")
        assert created_on == OLD_DATE, "the batch that was waited for was of the old date"
        # The next batch reads the new date.
        assert (await core.submit(application_command("A-2"))).status == 201
        assert await pool.fetchval(
            "SELECT created_on FROM applications WHERE partner_application_id = 'A-2'"
        ) == NEW_DATE
    finally:
        await pool.release(blocker)
        await host.stop()
        await pool.close()


def test_sync_waits_for_the_batch_of_the_old_date(database: tuple[str, str]) -> None:
    asyncio.run(_scenario(*database))
