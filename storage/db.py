"""Connection pools, one way for everyone."""

from __future__ import annotations

import asyncpg

COMMAND_TIMEOUT_S = 30


async def _keep_session(_: asyncpg.Connection) -> None:
    """asyncpg's default release runs RESET ALL & co., a round trip per use. Our code sets
    no session state (no SET, LISTEN, advisory locks outside migrate, which unlocks), so a
    pooled connection needs no reset."""


# Our statements are fixed and index-driven, so a generic plan is always right; without
# this, Postgres may re-plan the 9-CTE commit statement on every execution (~0.6 ms).
SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


async def create_pool(dsn: str, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, command_timeout=COMMAND_TIMEOUT_S, reset=_keep_session,
        server_settings=SERVER_SETTINGS,
    )
