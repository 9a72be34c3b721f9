"""One Postgres transaction for the ready batches of all the shards of a host.

Each logical shard applies its own batch; committing each alone cost a whole statement,
transaction and round trip for a few commands (64 clients over 16 shards: 1.7 commands a
commit). The shards of a host hand their diffs here instead. While `in_flight_max` group
commits are running, diffs queue; the next group takes every queued one, so a group grows
by itself with the load and a lone batch still leaves at once (no timer). A group holds at
most one batch per shard (a shard waits for its commit before its next batch), so its size
is bounded by the host's shard count.

All or nothing, then one by one: the group statement commits every shard's batch or none
(storage.shard_store.ShardStore.commit_group). When it fails with an error Postgres reports
for the statement (a newer owner of one shard, an idempotency key or reference already
used, a failed check), nothing was written and each batch is committed again alone, so
every shard gets the outcome that is its own: LeaseLost, UniqueViolationError (the shard
prefetches and applies again), or success. When the outcome is unknown (the connection
broke, a timeout), every shard of the group gets that error and reloads from Postgres, as
a shard committing alone would.

A batch of many journal entries (end of day, seeding) is committed alone on a connection
of its own: its lines go by COPY, and it is large enough to pay its own round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from lending.shard_state import Diff
from storage.shard_store import GroupNotFenced, LeaseLost, ShardCommit, ShardStore

log = logging.getLogger("lendcore.group_commit")

# Errors after which the outcome of a statement is unknown (the connection broke, the server
# went away or cancelled, a timeout): its connection is not reused, its shards reload.
UNKNOWN_OUTCOME_ERRORS = (
    asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, OSError, asyncio.TimeoutError,
)


class _Waiting:
    __slots__ = ("future", "part")

    def __init__(self, part: ShardCommit, future: asyncio.Future[None]) -> None:
        self.part = part
        self.future = future


class GroupCommitter:
    def __init__(self, store: ShardStore, in_flight_max: int) -> None:
        if in_flight_max < 1:
            raise ValueError("in_flight_max must be at least 1")
        self.store = store
        self._slots = asyncio.Semaphore(in_flight_max)
        self._queue: deque[_Waiting] = deque()
        self._idle: list[asyncpg.Connection] = []  # connections of finished group commits
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self.stats = {"groups": 0, "batches": 0, "split_groups": 0}

    async def commit(self, shard_id: int, epoch: int, diff: Diff) -> None:
        """Commit one shard's batch, fenced at `epoch`; raises as ShardStore.commit does."""
        if self.store.is_bulk(diff):
            async with pooled(self.store.pool) as conn:
                await _alone(self.store, conn, ShardCommit(shard_id, epoch, diff))
            return
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name="group-commit")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(ShardCommit(shard_id, epoch, diff), future))
        self._wake.set()
        await future

    async def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
            self._pump_task = None
        await asyncio.gather(*self._commits, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(asyncpg.InterfaceError):  # Postgres closed it already
                await self.store.pool.release(conn)

    async def _pump(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._slots.acquire()
            await asyncio.sleep(0)  # shards finishing their apply in this tick join
            group = list(self._queue)
            self._queue.clear()
            if not group:
                self._slots.release()
                continue
            task = asyncio.create_task(self._commit_group(group))
            self._commits.add(task)  # a reference until done (asyncio holds weak ones)
            task.add_done_callback(self._commits.discard)

    async def _commit_group(self, group: list[_Waiting]) -> None:
        conn: asyncpg.Connection | None = None
        reusable = False
        try:
            conn = await self._connection()
            await self._commit_on(conn, group)
            reusable = True
        except UNKNOWN_OUTCOME_ERRORS as exc:
            _fail(group, exc)  # first: nothing below may keep a shard waiting
        except asyncio.CancelledError:
            # the loop is going away: to the shards, an unknown outcome (they reload)
            _fail(group, ConnectionAbortedError("group commit cancelled"))
            raise
        except Exception as exc:  # a bug: its shards get the error, never a hang
            _fail(group, exc)
            log.exception("group commit of %d batches failed", len(group))
        finally:
            self._slots.release()
            if conn is not None:
                if reusable:
                    self._idle.append(conn)
                else:
                    # After any failure its protocol state is unknown (an operation may
                    # still be in progress): never hand it to the next group.
                    await _discard(self.store.pool, conn)

    async def _connection(self) -> asyncpg.Connection:
        """A kept connection that is still open (Postgres may have dropped it while it was
        idle: a restart, a failover), else one from the pool."""
        while self._idle:
            conn = self._idle.pop()
            try:
                if not conn.is_closed():
                    return conn
            except asyncpg.InterfaceError:
                continue  # the pool took it back already, when Postgres closed it
            await _discard(self.store.pool, conn)
        return await self.store.pool.acquire()

    async def _commit_on(self, conn: asyncpg.Connection, group: list[_Waiting]) -> None:
        self.stats["groups"] += 1
        self.stats["batches"] += len(group)
        if len(group) > 1:
            try:
                await self.store.commit_group(conn, [w.part for w in group])
            except UNKNOWN_OUTCOME_ERRORS:
                raise
            except (GroupNotFenced, asyncpg.PostgresError) as exc:
                # Postgres refused the statement as a whole: nothing of it was written.
                log.info("group of %d batches refused (%s); committing them one by one",
                         len(group), exc)
                self.stats["split_groups"] += 1
            else:
                for waiting in group:
                    if not waiting.future.done():
                        waiting.future.set_result(None)
                return
        for waiting in group:
            await self._commit_alone(conn, waiting)

    async def _commit_alone(self, conn: asyncpg.Connection, waiting: _Waiting) -> None:
        """One shard's own commit, its outcome handed to that shard. An unknown outcome
        propagates: the connection is broken, the rest of the group cannot go on it."""
        try:
            await _alone(self.store, conn, waiting.part)
        except UNKNOWN_OUTCOME_ERRORS:
            raise
        except (LeaseLost, asyncpg.PostgresError) as exc:  # that shard's own outcome
            if not waiting.future.done():
                waiting.future.set_exception(exc)
            return
        if not waiting.future.done():
            waiting.future.set_result(None)


@asynccontextmanager
async def pooled(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the pool for one use; after an unknown outcome it is terminated, not
    handed to the next user."""
    conn = await pool.acquire()
    try:
        yield conn
    except BaseException:
        # Whatever failed, the connection's state is unknown: it is not reused.
        await _discard(pool, conn)
        raise
    await pool.release(conn)


async def _discard(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Close a connection whose state is unknown and give its slot back to the pool. When
    Postgres closed it, asyncpg has already taken it back (the proxy is detached and
    refuses every call): there is nothing left to do then."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()
    with contextlib.suppress(asyncpg.InterfaceError):
        await pool.release(conn)


async def _alone(store: ShardStore, conn: asyncpg.Connection, part: ShardCommit) -> None:
    await store.commit(conn, part.shard_id, part.epoch, part.diff)


def _fail(group: list[_Waiting], exc: BaseException) -> None:
    for waiting in group:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
