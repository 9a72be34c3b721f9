"""The shards of a host commit their ready batches together, in one fenced statement
(storage/group_commit.py); a group that Postgres refuses is committed again one shard at a
time, so each shard gets its own outcome. Real Postgres, no Ray."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from factories import application_command

from actors.core import LOST, SERVING, ShardCore
from cluster.config import load_settings
from cluster.system import risk_policy
from lending.chart import load_chart
from lending.commands import Repay, Reply, SeedLoans
from lending.products import load_catalog
from lending.riskbook import load_risk_book
from lending.shard_state import ApplyContext
from storage import cluster_store
from storage.group_commit import GroupCommitter
from storage.migrate import migrate
from storage.shard_store import ShardStore

BUSINESS_DATE = date(2026, 11, 29)
SHARDS = 3
CODES = load_chart(Path("config/chart_of_accounts.toml")).role_codes()


class Host:
    """SHARDS shard cores of one owner sharing one store and one group committer, as a
    shard host has them."""

    def __init__(self, pool: asyncpg.Pool, context: ApplyContext, copy_entries_min: int) -> None:
        self.pool = pool
        store = ShardStore(pool, "host", CODES, copy_entries_min=copy_entries_min)
        self.committer = GroupCommitter(store, in_flight_max=1)
        self.cores = [ShardCore(s, store, self.committer, lambda: context, 100, 10)
                      for s in range(SHARDS)]

    async def submit_to_each(self, refs: list[str]) -> list[Reply]:
        """One application to each shard in the same loop tick: their batches are ready
        together, so they meet in the committer's queue."""
        futures = [core.submit(application_command(ref)) for core, ref in zip(self.cores, refs,
                                                                         strict=True)]
        return list(await asyncio.wait_for(asyncio.gather(*futures), 30))

    async def stored_refs(self) -> set[str]:
        rows = await self.pool.fetch("SELECT partner_application_id FROM applications")
        return {r[0] for r in rows}


# Every test both ways: the group's journal lines in its statement, and by COPY after it in
# the same transaction (a group of big batches, storage/shard_store.py ShardStore._write).
@pytest_asyncio.fixture(params=[10_000, 0], ids=["statement", "copy"])
async def host(empty_database: str, request: pytest.FixtureRequest) -> AsyncIterator[Host]:
    settings = load_settings(environ={})
    pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await migrate(conn)
        await cluster_store.initialise(conn, SHARDS, BUSINESS_DATE)
    context = ApplyContext(BUSINESS_DATE, load_catalog(Path("config/products")),
                           risk_policy(settings), risk=load_risk_book(Path("config/risk")))
    running = Host(pool, context, request.param)
    for core in running.cores:
        await core.activate()
    try:
        yield running
    finally:
        for core in running.cores:
            await core.stop()
        await running.committer.close()
        await pool.close()


@pytest.mark.asyncio
async def test_ready_batches_of_several_shards_commit_as_one_group(host: Host) -> None:
    replies = await host.submit_to_each(["A-0", "A-1", "A-2"])
    assert [r.status for r in replies] == [201] * SHARDS
    assert host.committer.stats == {"groups": 1, "batches": SHARDS, "split_groups": 0}
    assert await host.stored_refs() == {"A-0", "A-1", "A-2"}
    shards = {msgspec.json.decode(r.body)["application_id"][3:7] for r in replies}
    assert shards == {"0000", "0001", "0002"}, "each shard wrote its own, under its own id"
    seqs = await host.pool.fetch("SELECT shard_id, next_seq FROM shard_lease ORDER BY 1")
    assert all(row["next_seq"] > 1 for row in seqs), "each shard's id counter advanced"


@pytest.mark.asyncio
async def test_a_shard_with_a_newer_owner_fails_alone(host: Host) -> None:
    thief = ShardStore(host.pool, "thief", CODES)
    await thief.acquire_lease(1)  # a newer owner of shard 1: epoch + 1
    replies = await host.submit_to_each(["B-0", "B-1", "B-2"])
    assert [r.status for r in replies] == [201, 503, 201]
    assert b"shard_unavailable" in replies[1].body
    assert [c.status for c in host.cores] == [SERVING, LOST, SERVING]
    assert host.committer.stats["split_groups"] == 1
    assert await host.stored_refs() == {"B-0", "B-2"}, "nothing of the deposed owner"


@pytest.mark.asyncio
async def test_a_reference_already_used_costs_only_its_own_shard_a_409(host: Host) -> None:
    first = await host.submit_to_each(["C-0", "C-1", "C-2"])
    assert [r.status for r in first] == [201] * SHARDS
    # shard 1 takes a reference shard 0 already used: its optimistic batch hits the
    # unique index, which refuses the whole group; alone, shard 1 prefetches and answers 409
    replies = await host.submit_to_each(["D-0", "C-0", "D-2"])
    assert [r.status for r in replies] == [201, 409, 201]
    assert host.committer.stats["split_groups"] == 1
    # only the shard whose reference was used prefetched; the others committed at once
    assert [c.stats["prefetched_batches"] for c in host.cores] == [0, 1, 0]
    assert [c.status for c in host.cores] == [SERVING] * SHARDS
    assert await host.stored_refs() == {"C-0", "C-1", "C-2", "D-0", "D-2"}


@pytest.mark.asyncio
async def test_after_postgres_dropped_every_connection_the_next_group_commits(
    host: Host,
) -> None:
    assert [r.status for r in await host.submit_to_each(["E-0", "E-1", "E-2"])] == [201] * 3
    # what a Postgres restart or failover does to the committer's kept connection
    async with host.pool.acquire() as conn:
        dropped = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert dropped >= 1
    await asyncio.sleep(1.0)  # the client sees the connections close (EOF within ms)
    replies = await host.submit_to_each(["F-0", "F-1", "F-2"])
    assert [r.status for r in replies] == [201] * SHARDS, [r.body for r in replies]
    assert [c.status for c in host.cores] == [SERVING] * SHARDS
    assert {"E-0", "F-0", "F-1", "F-2"} <= await host.stored_refs()


@pytest.mark.asyncio
async def test_a_submission_of_many_commands_is_answered_in_its_order(host: Host) -> None:
    # 25 commands for one shard (batches of at most 10), one of them a repeat of an earlier
    # one of the same submission (same key): each reply lands in its command's place.
    refs = [f"G-{i}" for i in range(25)]
    refs[17] = "G-3"
    replies = await asyncio.wait_for(
        host.cores[0].submit_many([application_command(ref) for ref in refs]), 30)
    assert [r.status for r in replies] == [201] * 25
    shown = [msgspec.json.decode(r.body)["partner_application_id"] for r in replies]
    assert shown == refs
    assert [i for i, r in enumerate(replies) if r.replayed] == [17]
    assert replies[17].body == replies[3].body
    assert await asyncio.wait_for(host.cores[0].submit_many([]), 1) == []


@pytest.mark.asyncio
async def test_the_commands_that_find_the_inbox_full_are_answered_shard_busy(
    host: Host,
) -> None:
    core = host.cores[2]  # inbox_max 100
    replies = await asyncio.wait_for(
        core.submit_many([application_command(f"H-{i}") for i in range(130)]), 60)
    assert [r.status for r in replies[:100]] == [201] * 100
    assert {(r.status, r.code) for r in replies[100:]} == {(503, "shard_busy")}
    assert await host.stored_refs() >= {f"H-{i}" for i in range(100)}
    assert not await host.stored_refs() & {f"H-{i}" for i in range(100, 130)}


async def _seeded_loan(core: ShardCore) -> str:
    reply = await asyncio.wait_for(core.submit(SeedLoans(1, core.shard_id, BUSINESS_DATE)), 30)
    assert reply.status == 200, reply.body
    assert core.state is not None
    return next(iter(core.state.loans))


@pytest.mark.asyncio
async def test_a_group_of_repayments_writes_each_shards_journal_lines(host: Host) -> None:
    loans = [await _seeded_loan(core) for core in host.cores]
    groups_before = host.committer.stats["groups"]
    thief = ShardStore(host.pool, "thief", CODES)
    await thief.acquire_lease(1)  # shard 1's batch is refused; the others' lines are written
    futures = [core.submit(Repay("demo", f"key-J-{n}", f"hash-J-{n}", loan, 100, f"J-{n}",
                                 "regular"))
               for n, (core, loan) in enumerate(zip(host.cores, loans, strict=True))]
    replies = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert [r.status for r in replies] == [201, 503, 201]
    assert host.committer.stats["groups"] == groups_before + 1
    assert host.committer.stats["split_groups"] == 1
    causes = {msgspec.json.decode(r.body)["repayment_id"] for r in (replies[0], replies[2])}
    lines = await host.pool.fetch(
        "SELECT shard_id, loan_id, cause, debit, credit FROM journal_lines "
        "WHERE kind = 'repayment' ORDER BY shard_id, line_no")
    assert {row["cause"] for row in lines} == causes
    assert {(row["shard_id"], row["loan_id"]) for row in lines} == {(0, loans[0]), (2, loans[2])}
    assert sum(row["debit"] for row in lines) == sum(row["credit"] for row in lines) == 200


@pytest.mark.asyncio
async def test_a_key_used_in_an_earlier_commit_replays_its_stored_reply(host: Host) -> None:
    first = await host.submit_to_each(["K-0", "K-1", "K-2"])
    # The same three commands again (same keys): each shard's optimistic commit meets its
    # stored response in the idempotency index, so the shard prefetches and replays it.
    again = await host.submit_to_each(["K-0", "K-1", "K-2"])
    assert [r.status for r in again] == [201] * SHARDS
    assert all(r.replayed for r in again)
    assert [r.body for r in again] == [r.body for r in first]
    assert [c.stats["prefetched_batches"] for c in host.cores] == [1, 1, 1]
    assert await host.stored_refs() == {"K-0", "K-1", "K-2"}
