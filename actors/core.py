"""The core of one logical shard: bounded inbox → batch → pure apply → group commit → reply.

No Ray here, so the core can run in a plain event loop (tests, simulation). The rules:
- one batch at a time per shard, in arrival order, at most `batch_max` commands;
- the batch is applied to copies (lending.shard_state) and committed in ONE statement (one
  transaction) whose first part is the lease fence (storage.shard_store), together with the
  ready batches of the host's other shards (storage.group_commit); only after it has
  committed is memory updated and are the replies released;
- a storage failure replies `shard_unavailable` (the gateway retries with the same
  idempotency key; dedupe happens inside the commit) and, since the commit outcome may be
  unknown, the shard rebuilds its memory from Postgres before the next batch;
- a bug replays the batch one command at a time, so only the faulty command gets a 500;
- a lost lease (fence touched zero rows) stops the shard for good in this process.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import asyncpg

from actors.heap import is_bulk, release_free_memory
from lending.commands import WRITE_COMMANDS, Command, Reply, error_reply, is_write
from lending.shard_state import ApplyContext, Prefetched, ShardState, apply_batch, wanted_refs
from storage.group_commit import GroupCommitter, pooled
from storage.shard_store import LeaseLost, ShardStore

log = logging.getLogger("lendcore.shard")

INACTIVE = "inactive"
SERVING = "serving"
RELOADING = "reloading"
LOST = "lost"
MOVED = "moved"  # released to another host (actors.host.ShardHostCore.release)

RELOAD_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
RELOAD_RETRY_S = 1.0  # while Postgres stays away, a reloading shard tries again this often
# Upper bounds (s) of the histogram of a batch's apply + commit time: `commit_s_le[i]` counts
# the batches that took at most COMMIT_S_BOUNDS[i] (cumulative, like Prometheus buckets; the
# +Inf bucket is `stats["batches"]`). The dashboard turns two readings into p50 and p99.
COMMIT_S_BOUNDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# Errors after which the commit outcome is unknown; anything else is a bug and propagates.
STORAGE_ERRORS = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
    asyncio.TimeoutError,
)


def unavailable(reason: str) -> Reply:
    return error_reply(503, "shard_unavailable", reason)


def moved(reason: str) -> Reply:
    """The shard is not (or no longer) served here: the gateway re-reads the shard map and
    sends the same command (same idempotency key) to the shard's owner now."""
    return error_reply(503, "shard_moved", reason)


class _Replies:
    """The replies to the commands of one submission, and the future that gets them all. A
    host call's commands for one shard share one (not a future and a gather slot each: per
    command, that machinery cost as much as a tenth of a batched repayment's host CPU)."""

    __slots__ = ("future", "missing", "replies")

    def __init__(self, count: int) -> None:
        self.future: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()
        self.replies: list[Reply | None] = [None] * count
        self.missing = count
        if count == 0:
            self.future.set_result([])

    def put(self, index: int, reply: Reply) -> None:
        """The reply to the submission's `index`th command (the first one given counts)."""
        if self.replies[index] is not None:
            return
        self.replies[index] = reply
        self.missing -= 1
        if self.missing == 0 and not self.future.done():
            self.future.set_result(cast(list[Reply], self.replies))


# A queued command, where its reply goes, and its place in its submission.
_Queued = tuple[Command, _Replies, int]


class ShardCore:
    def __init__(
        self,
        shard_id: int,
        store: ShardStore,
        committer: GroupCommitter,
        context: Callable[[], ApplyContext],
        inbox_max: int,
        batch_max: int,
    ) -> None:
        self.shard_id = shard_id
        self.store = store
        self.committer = committer
        self.context = context
        self.inbox_max = inbox_max
        self.batch_max = batch_max
        self.status = INACTIVE
        self.epoch = 0
        self.state: ShardState | None = None
        self._inbox: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._batch_done = asyncio.Event()  # clear while a batch is applied and committed
        self._batch_done.set()
        self._loop_task: asyncio.Task[None] | None = None
        self.stats = {
            "batches": 0, "commands": 0, "commit_s": 0.0, "failures": 0, "reloads": 0,
            "prefetched_batches": 0,  # optimistic commits that met a used key or reference
        }
        self.commit_s_le = [0] * len(COMMIT_S_BOUNDS)

    async def activate(self) -> None:
        """Take the lease (epoch + 1) and rebuild memory from Postgres."""
        self.epoch, next_seq = await self.store.acquire_lease(self.shard_id)
        self.state = await self.store.load(self.shard_id, next_seq)
        release_free_memory()  # what decoding the rows used
        self.status = SERVING
        self._loop_task = asyncio.create_task(self._run(), name=f"shard-{self.shard_id}")
        log.info("shard %s serving at epoch %s", self.shard_id, self.epoch)

    def submit(self, command: Command) -> asyncio.Future[Reply]:
        """One command: a future of its reply."""
        one: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def settle(many: asyncio.Future[list[Reply]]) -> None:
            if not one.done():
                one.set_result(many.result()[0])

        self.submit_many([command]).add_done_callback(settle)
        return one

    def submit_many(self, commands: list[Command]) -> asyncio.Future[list[Reply]]:
        """Queue `commands` in their order: a future of their replies, in the same order. The
        commands that find the inbox full are answered `shard_busy` (not retried by the
        gateway: a full inbox needs the client to slow down); those before them are queued."""
        replies = _Replies(len(commands))
        if self.status in (LOST, MOVED):
            refusal = (unavailable(f"shard {self.shard_id} moved to another owner")
                       if self.status == LOST
                       else moved(f"shard {self.shard_id} was released by this host"))
            for index in range(len(commands)):
                replies.put(index, refusal)
            return replies.future
        queued = min(len(commands), max(0, self.inbox_max - len(self._inbox)))
        self._inbox.extend((commands[index], replies, index) for index in range(queued))
        if queued:
            self._wake.set()
        if queued < len(commands):
            busy = error_reply(503, "shard_busy", f"shard {self.shard_id} is full")
            for index in range(queued, len(commands)):
                replies.put(index, busy)
        return replies.future

    async def batch_finished(self) -> None:
        """Return once the batch being applied now, if any, has committed or failed. A
        batch reads the host's context (business date) when it starts, so after this no
        batch that read the previous context can still commit."""
        await self._batch_done.wait()

    def queue_depth(self) -> int:
        return len(self._inbox)

    async def stop(self) -> None:
        """Finish what is queued, then stop the loop."""
        while self._inbox and self.status in (SERVING, RELOADING):
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    async def release(self) -> int:
        """Hand the shard over: stop taking commands (they are answered `shard_moved`, which
        the gateway retries on the new owner), let the batch being applied commit and
        answer, bounce what is queued, stop the loop and drop the shard's memory. Returns
        how many queued commands were bounced. Idempotent. The lease is not touched: the
        new owner takes epoch + 1, which fences this owner out for good anyway."""
        if self.status == MOVED:
            return 0
        self.status = MOVED
        bounced = len(self._inbox)  # from now on nothing more is queued
        await self._batch_done.wait()  # the batch in flight commits (or fails) and answers
        self.status = MOVED  # a failing batch may have set RELOADING or LOST meanwhile
        self._fail_queued(f"shard {self.shard_id} moved", moved)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        self._fail_queued(f"shard {self.shard_id} moved", moved)
        self.state = None
        release_free_memory()
        return bounced

    async def _run(self) -> None:
        while self.status not in (LOST, MOVED):
            if self.status == RELOADING:
                await self._reload()
                if self.status == RELOADING:
                    # Postgres is still away. Try again soon even without traffic: the
                    # shard must come back by itself (readiness waits for it, so a load
                    # balancer may send nothing until then).
                    await self._wait_for_work(RELOAD_RETRY_S)
                continue
            if not self._inbox:
                await self._wait_for_work(None)
                continue
            batch = [self._inbox.popleft() for _ in range(min(self.batch_max, len(self._inbox)))]
            self._batch_done.clear()
            try:
                await self._process(batch)
            finally:
                self._batch_done.set()
        if self.status == MOVED:
            self._fail_queued(f"shard {self.shard_id} moved", moved)
        else:
            self._fail_queued(f"shard {self.shard_id} moved to another owner")

    async def _process(self, batch: list[_Queued]) -> None:
        commands = [command for command, _, _ in batch]
        started = time.perf_counter()
        try:
            replies = await self._apply_and_commit(commands)
        except LeaseLost as lost:
            log.warning("%s", lost)
            self.status = LOST
            replies = [unavailable(str(lost))] * len(batch)
        except STORAGE_ERRORS as exc:
            log.warning("shard %s: commit failed (%s: %s)", self.shard_id, type(exc).__name__, exc)
            self.stats["failures"] += 1
            self.status = RELOADING
            replies = [unavailable("storage unavailable, retry")] * len(batch)
        except Exception:  # a bug must fail only its own command, never stall the shard
            # Nothing was committed (the commit statement never ran, or failed as a whole) and
            # memory is untouched (apply works on copies): replay one command at a time.
            log.exception("shard %s: batch failed on a bug; replaying one by one", self.shard_id)
            self.stats["failures"] += 1
            replies = [await self._apply_alone(command) for command in commands]
        self.stats["batches"] += 1
        self.stats["commands"] += len(batch)
        elapsed = time.perf_counter() - started
        self.stats["commit_s"] += elapsed
        for bucket in range(bisect.bisect_left(COMMIT_S_BOUNDS, elapsed), len(COMMIT_S_BOUNDS)):
            self.commit_s_le[bucket] += 1
        for (_, sink, index), reply in zip(batch, replies, strict=True):
            sink.put(index, reply)
        eod_done = self.state is None or self.state.eod_worklist is None
        if is_bulk(commands, eod_done):
            release_free_memory()  # what the batch's Diff and rows used (actors/heap.py)

    async def _apply_alone(self, command: Command) -> Reply:
        if self.status != SERVING:
            return unavailable(f"shard {self.shard_id} is {self.status}")
        try:
            return (await self._apply_and_commit([command]))[0]
        except LeaseLost as lost:
            self.status = LOST
            return unavailable(str(lost))
        except STORAGE_ERRORS:
            self.status = RELOADING
            return unavailable("storage unavailable, retry")
        except Exception:  # the bug is this command's: it alone gets the 500
            log.exception("shard %s: command %s failed", self.shard_id, type(command).__name__)
            return error_reply(500, "internal_error", "internal error")

    async def _apply_and_commit(self, commands: list[Command]) -> list[Reply]:
        state = self.state
        assert state is not None
        ctx = self.context()
        if not any(is_write(c) for c in commands):
            replies, _ = apply_batch(state, commands, Prefetched(), ctx)
            return replies
        # Optimistic first: assume no key or reference of the batch was used before, which
        # is the normal case, and commit in one round trip. If one was, the commit statement
        # hits a unique index and writes nothing; the batch is then redone with the durable
        # facts prefetched (a replay answers its stored response, a reused reference 409s).
        replies, diff = apply_batch(state, commands, Prefetched(), ctx)
        try:
            await self.committer.commit(self.shard_id, self.epoch, diff)
        except asyncpg.UniqueViolationError:
            self.stats["prefetched_batches"] += 1
            idem_keys = [
                (c.partner_id, c.idem_key) for c in commands if isinstance(c, WRITE_COMMANDS)
            ]
            refs = [ref for c in commands if (ref := wanted_refs(c)) is not None]
            async with pooled(self.store.pool) as conn:
                prefetched = await self.store.prefetch(conn, self.shard_id, idem_keys, refs)
            replies, diff = apply_batch(state, commands, prefetched, ctx)
            if not diff.is_empty():
                # A unique violation here is a race with another shard for a reference:
                # a storage error for this batch, retried by the gateway, then a 409.
                await self.committer.commit(self.shard_id, self.epoch, diff)
        state.commit(diff)  # only after COMMIT: a failed commit leaves memory as it was
        return replies

    async def _wait_for_work(self, timeout_s: float | None) -> None:
        """Until a command arrives (or `timeout_s` passes)."""
        if self._inbox:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    async def _reload(self) -> None:
        """After an unknown commit outcome, Postgres is the truth: rebuild from it."""
        for delay in RELOAD_BACKOFF_S:
            try:
                next_seq = await self._stored_next_seq()
                self.state = await self.store.load(self.shard_id, next_seq)
                release_free_memory()
            except LeaseLost as lost:
                log.warning("%s", lost)
                return
            except STORAGE_ERRORS as exc:
                log.warning("shard %s: reload failed (%s), retrying", self.shard_id, exc)
                await asyncio.sleep(delay)
                continue
            self.status = SERVING
            self.stats["reloads"] += 1
            return
        # Still failing: answer what is queued and stay RELOADING (`_run` tries again).
        self._fail_queued("storage unavailable, retry")

    async def _stored_next_seq(self) -> int:
        value = await self.store.pool.fetchval(
            "SELECT next_seq FROM shard_lease WHERE shard_id = $1 AND epoch = $2",
            self.shard_id, self.epoch,
        )
        if value is None:
            self.status = LOST
            raise LeaseLost(f"shard {self.shard_id}: epoch {self.epoch} is no longer the owner")
        return int(value)

    def _fail_queued(
        self, reason: str, reply: Callable[[str], Reply] = unavailable,
    ) -> None:
        while self._inbox:
            _, sink, index = self._inbox.popleft()
            sink.put(index, reply(reason))
