"""Bulk seeding of active loans (POST /ops/seed, `lendcore seed --loans N`).

Splits N over every logical shard and sends each shard SeedLoans commands of at most
`chunk` loans through the same router and shard inboxes as partner requests; each command is
one fenced commit of customers, approved applications, loans and their disbursement
entries (lending/shard_state.py). A shard's commands go one after another; at most
`concurrency` commands are in flight over the whole cluster. No idempotency key: a seed
is an operator's bulk tool, and a retry after an unknown outcome may seed a chunk twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import asyncpg
import msgspec

from gateway.http import HttpError
from gateway.router import Overloaded, ShardRouter
from gateway.tasks import all_or_cancel
from lending.commands import SeedLoans
from lending.shard_state import SeedResult
from storage import cluster_store

SEED_LOANS_MAX = 10_000_000
SEED_CHUNK_LOANS = 2000
SEED_CONCURRENCY = 8
SEED_PARTNER = "demo"
SAMPLE_IDS = 20

_RESULT = msgspec.json.Decoder(SeedResult)


def split(total: int, shards: int, chunk: int) -> list[list[int]]:
    """Per shard, the sizes of its commands: `total` spread as evenly as possible."""
    plan = []
    for shard in range(shards):
        mine = total // shards + (1 if shard < total % shards else 0)
        plan.append([min(chunk, mine - done) for done in range(0, mine, chunk)])
    return plan


class Seeder:
    def __init__(
        self, *, pool: asyncpg.Pool, router: ShardRouter, chunk: int = SEED_CHUNK_LOANS,
        concurrency: int = SEED_CONCURRENCY,
    ) -> None:
        self.pool = pool
        self.router = router
        self.chunk = chunk
        self.concurrency = concurrency

    async def seed(self, loans: int, partner_id: str = SEED_PARTNER) -> dict[str, Any]:
        if not 1 <= loans <= SEED_LOANS_MAX:
            raise HttpError(400, "invalid_request",
                            f"loans must be an integer in 1..{SEED_LOANS_MAX}", "loans")
        started = time.perf_counter()
        day = await cluster_store.business_date(self.pool)
        slots = asyncio.Semaphore(self.concurrency)
        base = random.SystemRandom().randrange(1 << 31)
        plan = split(loans, self.router.logical_shards, self.chunk)
        seeded = [0]
        sample: list[str] = []

        async def run_shard(shard: int, sizes: list[int]) -> None:
            for n, size in enumerate(sizes):
                command = SeedLoans(size, base + n, day, partner_id)
                async with slots:
                    try:
                        reply = await self.router.call(shard, command)
                    except Overloaded as exc:
                        raise HttpError(503, "unavailable", str(exc), retry_after_s=5) from exc
                if reply.status != 200:
                    raise HttpError(
                        503, "unavailable",
                        f"shard {shard} refused a seed ({reply.code or reply.status}) after "
                        f"{seeded[0]} loans were seeded", retry_after_s=5)
                result = _RESULT.decode(reply.body)
                seeded[0] += result.loans
                if len(sample) < SAMPLE_IDS:
                    sample.extend(result.sample_loan_ids[:1])

        await all_or_cancel(run_shard(s, sizes) for s, sizes in enumerate(plan))
        return {
            "loans": seeded[0],
            "seconds": round(time.perf_counter() - started, 3),
            "business_date": day.isoformat(),
            "partner_id": partner_id,
            "sample_loan_ids": sample,
        }
