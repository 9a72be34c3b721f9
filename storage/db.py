"""Connection pools, one way for everyone."""

from __future__ import annotations

import asyncpg

COMMAND_TIMEOUT_S = 30

# What a Postgres that is restarting, failing over or unreachable raises: the caller waits
# and retries (503 with Retry-After), it is not a bug.
DATABASE_DOWN = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError, OSError, TimeoutError,
)


async def _keep_session(_: asyncpg.Connection) -> None:
    """asyncpg's default release runs RESET ALL & co., a round trip per use. Our code sets
    no session state (no SET, LISTEN, advisory locks outside migrate, which unlocks), so a
    pooled connection needs no reset."""


# Every statement of ours is a fixed, index-driven OLTP statement. Two consequences:
# - a generic plan is always right, so the 9-CTE commit statement is planned once per
#   connection instead of on every execution (~0.6 ms each);
# - a plan must never scan a whole table. A connection prepares its statements when the
#   tables may still be empty (a new database): a plan built from those statistics chose
#   sequential scans, and as the cached plan was kept, the prefetch scanned the whole
#   idempotency table on every batch (Postgres CPU per repayment 0.9 → 3.8 ms at 20,000
#   loans). With sequential scans disabled the planner takes the indexes whatever the stats.
# - no JIT: enable_seqscan = off prices any plan with a sequential scan (a small table, a
#   query with no fitting index) far above jit_above_cost, so Postgres JIT-compiled such
#   statements, ~150 ms each, for queries that run in ~10 ms (the dashboard's collections
#   reads on 100,000 loans: 220–790 ms with JIT, 36–53 ms without).
SERVER_SETTINGS = {
    "plan_cache_mode": "force_generic_plan", "enable_seqscan": "off", "jit": "off",
}


async def create_pool(dsn: str, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, command_timeout=COMMAND_TIMEOUT_S, reset=_keep_session,
        server_settings=SERVER_SETTINGS,
    )
