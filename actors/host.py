"""A shard host: the Ray-agnostic owner of several logical shards in one process.

It holds the Postgres pool, the product catalog and one ShardCore per logical shard it
owns. A call carries envelopes for any of its shards; the host hands each command to its
shard's inbox and answers once every shard has committed its part. Activation is lazy and
happens once per process, so a restarted actor rebuilds itself on the first call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.core import COMMIT_S_BOUNDS, LOST, MOVED, ShardCore, moved, unavailable
from actors.heap import release_free_memory
from lending.chart import load_chart
from lending.collections import CollectionsPolicy
from lending.commands import BATCH_DECODER, BATCH_ENCODER, Command, Reply, error_reply
from lending.daily import ServicingPolicy
from lending.decision import RiskPolicy
from lending.products import ProductCatalog, load_catalog
from lending.riskbook import RiskBookReloader
from lending.shard_state import ApplyContext
from storage import cluster_store, shard_map_store, webhook_store
from storage.db import create_pool
from storage.group_commit import GroupCommitter
from storage.shard_store import ShardStore

log = logging.getLogger("lendcore.host")

# A placeholder in a call's list of replies, every slot of which is filled before it is sent.
_NO_REPLY = error_reply(500, "internal_error", "no reply")


class HostConfig(msgspec.Struct, frozen=True):
    host_id: int
    shard_ids: list[int]
    pg_dsn: str
    redis_url: str
    redis_prefix: str
    products_dir: str
    chart_file: str
    pool_size: int
    inbox_max: int
    batch_max: int
    commits_in_flight_max: int
    lease_claim_ttl_ms: int
    policy: RiskPolicy
    servicing: ServicingPolicy
    collections: CollectionsPolicy
    collectors: list[str]  # operators with the collector role
    risk_dir: str = ""  # config/risk: rule sets, scorecard, pricing (hot-reloaded)
    # Partners whose webhook endpoint the partners file declares; those registered through
    # the operator API are read from Postgres at start and on sync_webhooks.
    webhook_partners: list[str] = msgspec.field(default_factory=list)
    # The host actor's Ray name. When set, the shards it activates at start are those the
    # shard map (storage/shard_map_store.py) says it serves, not `shard_ids`: a host that
    # Ray restarts after shards were moved to or from it serves what the map says now.
    name: str = ""


class ShardHostCore:
    def __init__(self, config: HostConfig) -> None:
        self.config = config
        # A fresh owner name per process incarnation: the lease table shows restarts.
        self.owner = f"host-{config.host_id}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.shards: dict[int, ShardCore] = {}
        self.started_at = time.time()
        self._start_task: asyncio.Task[None] | None = None
        self._pool: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        self._context: ApplyContext | None = None
        self._risk: RiskBookReloader | None = None
        self._committer: GroupCommitter | None = None
        self._store: ShardStore | None = None
        self._handoff_locks: dict[int, asyncio.Lock] = {}  # adopt/release of one shard

    async def ensure_started(self) -> None:
        if self._start_task is None:
            self._start_task = asyncio.create_task(self._start())
        await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        cfg = self.config
        catalog: ProductCatalog = load_catalog(Path(cfg.products_dir), cfg.policy.apr_cap_bps)
        self._risk = RiskBookReloader(Path(cfg.risk_dir)) if cfg.risk_dir else None
        self._pool = await create_pool(cfg.pg_dsn, cfg.pool_size)
        self._redis = aioredis.from_url(cfg.redis_url)
        business_date: date = await cluster_store.business_date(self._pool)
        webhook_partners = await self._webhook_partners()
        self._context = ApplyContext(
            business_date, catalog, cfg.policy, cfg.servicing,
            risk=self._risk.book if self._risk is not None else None,
            collections=cfg.collections, collectors=frozenset(cfg.collectors),
            webhook_partners=webhook_partners,
        )
        chart = load_chart(Path(cfg.chart_file))
        store = ShardStore(self._pool, self.owner, chart.role_codes())
        self._store = store
        self._committer = GroupCommitter(store, cfg.commits_in_flight_max)
        shard_ids = (
            await shard_map_store.serving_shards_of(self._pool, cfg.name) if cfg.name
            else cfg.shard_ids
        )
        for shard_id in shard_ids:
            self.shards[shard_id] = self._new_core(shard_id)
        await asyncio.gather(*(self._activate(core) for core in self.shards.values()))

    def _new_core(self, shard_id: int) -> ShardCore:
        assert self._store is not None and self._committer is not None
        cfg = self.config
        return ShardCore(
            shard_id, self._store, self._committer, self.context, cfg.inbox_max, cfg.batch_max
        )

    # ---- handoff: shards taken and given up at run time (cluster/coordinator.py) ----------

    async def adopt(self, shard_id: int) -> dict[str, Any]:
        """Serve `shard_id` from now on: Redis claim, lease epoch + 1 in Postgres, load,
        serve. Idempotent: a shard already serving (or reloading) here is left as it is; one
        this host lost or released is taken again (a new epoch)."""
        await self.start_or_reset()
        async with self._handoff_lock(shard_id):
            core = self.shards.get(shard_id)
            if core is not None and core.status not in (LOST, MOVED):
                return {"shard_id": shard_id, "epoch": core.epoch, "adopted": False,
                        "load_s": 0.0, "loans": len(core.state.loans) if core.state else 0}
            if core is not None:
                await core.release()  # a lost core: stop its loop before replacing it
                del self.shards[shard_id]
            started = time.perf_counter()
            fresh = self._new_core(shard_id)
            await self._activate(fresh)  # raises: nothing is added, the caller retries
            self.shards[shard_id] = fresh
            return {"shard_id": shard_id, "epoch": fresh.epoch, "adopted": True,
                    "load_s": time.perf_counter() - started,
                    "loans": len(fresh.state.loans) if fresh.state else 0}

    async def release(self, shard_id: int) -> dict[str, Any]:
        """Stop serving `shard_id`: new commands for it are answered `shard_moved` (the
        gateway re-reads the map and retries on the new owner), the batch being committed
        finishes and answers, queued commands are bounced, memory is dropped. Idempotent."""
        if self._start_task is not None:  # a start in progress may be activating it
            with contextlib.suppress(Exception):
                await asyncio.shield(self._start_task)
        async with self._handoff_lock(shard_id):
            core = self.shards.get(shard_id)
            if core is None:
                return {"shard_id": shard_id, "released": False, "bounced": 0}
            started = time.perf_counter()
            bounced = await core.release()
            self.shards.pop(shard_id, None)
            release_free_memory()
            return {"shard_id": shard_id, "released": True, "epoch": core.epoch,
                    "bounced": bounced, "release_s": time.perf_counter() - started}

    def _handoff_lock(self, shard_id: int) -> asyncio.Lock:
        lock = self._handoff_locks.get(shard_id)
        if lock is None:
            lock = self._handoff_locks[shard_id] = asyncio.Lock()
        return lock

    async def _reset_after_failed_start(self, failed: asyncio.Task[None] | None) -> None:
        """Undo what a failed start opened, so the next call starts from scratch. Only the
        first caller that saw this start fail resets (a later one must not tear down a
        newer start)."""
        if failed is None or self._start_task is not failed:
            return
        self._start_task = None
        shards, self.shards = self.shards, {}
        await asyncio.gather(*(core.stop() for core in shards.values()))
        await self._close_committer()
        if self._pool is not None:
            self._pool.terminate()  # close() would wait for connections a bug may still hold
            self._pool = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _close_committer(self) -> None:
        if self._committer is not None:
            committer, self._committer = self._committer, None
            await committer.close()

    def context(self) -> ApplyContext:
        assert self._context is not None
        if self._risk is not None:
            # Hot reload: an edited config/risk decides the next batch, no restart.
            book = self._risk.current()
            if book is not self._context.risk:
                self._context = msgspec.structs.replace(self._context, risk=book)
        return self._context

    async def sync_business_date(self) -> str:
        """Read the business date from Postgres (cluster_meta, the truth) into the context
        of the next batches; the EOD orchestrator calls it after it advanced the date and
        before a run (a host it could not reach then reads it here, or on restart)."""
        await self.ensure_started()
        assert self._pool is not None and self._context is not None
        business_date = await cluster_store.business_date(self._pool)
        if business_date != self._context.business_date:
            log.info("host %s: business date %s -> %s", self.config.host_id,
                     self._context.business_date, business_date)
            self._context = msgspec.structs.replace(self._context, business_date=business_date)
        # A batch that started before the swap may still be committing lines dated the old
        # date. Wait for it: when this returns, no shard of this host can write a journal
        # line of the closed date any more (end of day then builds its GL summary).
        await asyncio.gather(*(core.batch_finished() for core in self.shards.values()))
        return business_date.isoformat()

    async def _webhook_partners(self) -> frozenset[str]:
        """Partners with a webhook endpoint: the partners file's and the operator API's."""
        assert self._pool is not None
        registered = await webhook_store.registered_partner_ids(self._pool)
        return frozenset(self.config.webhook_partners) | registered

    async def sync_webhooks(self) -> list[str]:
        """Read the partners with a webhook endpoint from Postgres into the context of the
        next batches (the operator API calls it after it registered or removed one). When
        it returns, every batch that commits from then on writes events for exactly these
        partners: it waits for the batch each shard is applying with the old set."""
        await self.ensure_started()
        assert self._context is not None
        partners = await self._webhook_partners()
        if partners != self._context.webhook_partners:
            log.info("host %s: webhook partners %s", self.config.host_id, sorted(partners))
            self._context = msgspec.structs.replace(self._context, webhook_partners=partners)
        await asyncio.gather(*(core.batch_finished() for core in self.shards.values()))
        return sorted(partners)

    async def _activate(self, core: ShardCore) -> None:
        """Redis serialises contenders for a shard; Postgres's epoch decides who owns it."""
        claim_key = f"{self.config.redis_prefix}lease-claim:{core.shard_id}"
        claimed = await self._claim(claim_key)
        try:
            await core.activate()
        finally:
            if claimed:
                await self._release(claim_key)

    async def _claim(self, key: str) -> bool:
        assert self._redis is not None
        deadline = time.monotonic() + self.config.lease_claim_ttl_ms / 1000
        try:
            while time.monotonic() < deadline:
                if await self._redis.set(
                    key, self.owner, nx=True, px=self.config.lease_claim_ttl_ms
                ):
                    return True
                await asyncio.sleep(0.05)
        except RedisError as exc:
            # Redis only avoids two contenders racing; Postgres's fence keeps us correct.
            log.warning("lease claim via Redis unavailable (%s); relying on Postgres epoch", exc)
        return False

    async def _release(self, key: str) -> None:
        assert self._redis is not None
        try:
            await self._redis.delete(key)
        except RedisError as exc:
            log.warning("could not release lease claim %s (%s); it expires by TTL", key, exc)

    async def start_or_reset(self) -> None:
        """`ensure_started`, but a start that fails is undone (and raises), so that the
        next call starts from scratch: Postgres may be back by then."""
        starting = self._start_task
        try:
            await self.ensure_started()
        except Exception:
            log.exception("shard host %s cannot start", self.config.host_id)
            await self._reset_after_failed_start(starting or self._start_task)
            raise

    async def submit(self, payload: bytes) -> bytes:
        envelopes = BATCH_DECODER.decode(payload)
        try:
            await self.start_or_reset()
        except Exception as exc:  # noqa: BLE001 - whatever stops the start: answer, retry later
            reason = f"shard host {self.config.host_id} cannot start: {exc}"
            return BATCH_ENCODER.encode([unavailable(reason)] * len(envelopes))
        # One submission per shard of the call (its commands in their order), not one per
        # command: the replies are put back in the call's order.
        by_shard: dict[int, tuple[list[int], list[Command]]] = {}
        for index, envelope in enumerate(envelopes):
            part = by_shard.get(envelope.shard_id)
            if part is None:
                part = by_shard[envelope.shard_id] = ([], [])
            part[0].append(index)
            part[1].append(envelope.command)
        replies: list[Reply] = [_NO_REPLY] * len(envelopes)
        submitted: list[tuple[list[int], asyncio.Future[list[Reply]]]] = []
        for shard_id, (indexes, commands) in by_shard.items():
            core = self.shards.get(shard_id)
            if core is None:
                elsewhere = moved(f"shard {shard_id} is not on this host")
                for index in indexes:
                    replies[index] = elsewhere
            else:
                submitted.append((indexes, core.submit_many(commands)))
        for indexes, future in submitted:
            for index, reply in zip(indexes, await future, strict=True):
                replies[index] = reply
        return BATCH_ENCODER.encode(replies)

    def stats(self) -> dict[str, Any]:
        return {
            "host_id": self.config.host_id,
            "name": self.config.name,
            "owner": self.owner,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "group_commit": {} if self._committer is None else dict(self._committer.stats),
            "commit_s_bounds": list(COMMIT_S_BOUNDS),  # of each shard's `commit_s_le`
            "shards": {
                str(shard_id): {
                    "status": core.status,
                    "epoch": core.epoch,
                    "queue_depth": core.queue_depth(),
                    "loans": len(core.state.loans) if core.state else 0,
                    **core.stats,
                    "commit_s_le": list(core.commit_s_le),  # actors.core.COMMIT_S_BOUNDS
                }
                for shard_id, core in self.shards.items()
            },
        }

    async def stop(self) -> None:
        await asyncio.gather(*(core.stop() for core in self.shards.values()))
        await self._close_committer()
        if self._pool is not None:
            await self._pool.close()
        if self._redis is not None:
            await self._redis.aclose()
