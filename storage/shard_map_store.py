"""The versioned shard map in Postgres (migration 0018): shard → host actor, node, state.

Every change bumps `shard_map_meta.version` in the same transaction. Gateways load the map
and its version together (one snapshot), route by it, and check the version cheaply to learn
that it changed. The map only says where commands go: who may write a shard is decided by the
lease epoch (shard_lease), which every commit fences on.

States: `serving` (the host named serves it) and `moving` (a move is under way from `host`
to `moving_to`; the old host is releasing it, the new one is about to adopt it). A host
that starts reads the shards mapped to it in state `serving`; a `moving` shard is the
coordinator's to settle.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

SERVING = "serving"
MOVING = "moving"


class ShardPlace(msgspec.Struct, frozen=True):
    shard_id: int
    host: str
    node: str
    state: str
    moving_to: str | None = None
    updated_at: float = 0.0  # seconds since the epoch


class ShardMap(msgspec.Struct, frozen=True):
    version: int
    places: list[ShardPlace]  # index = shard id

    def hosts(self) -> list[str]:
        """Shard → host name, the router's table."""
        return [place.host for place in self.places]

    def shards_of(self, host: str) -> list[int]:
        return [place.shard_id for place in self.places if place.host == host]


class MapConflict(Exception):
    """The map is not in the state the change needs (a move already under way, …)."""


def _place(row: asyncpg.Record) -> ShardPlace:
    updated: datetime = row["updated_at"]
    return ShardPlace(
        int(row["shard_id"]), row["host"], row["node"], row["state"], row["moving_to"],
        updated.timestamp(),
    )


async def load(conn: asyncpg.Connection | asyncpg.Pool) -> ShardMap:
    """The whole map and its version, read in one snapshot."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as own:
            return await load(own)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await conn.fetchval("SELECT version FROM shard_map_meta")
        rows = await conn.fetch("SELECT * FROM shard_map ORDER BY shard_id")
    places = [_place(row) for row in rows]
    if [p.shard_id for p in places] != list(range(len(places))):
        raise MapConflict("the shard map has gaps: is the database initialised?")
    return ShardMap(int(version), places)


async def version(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The map's version alone (the gateways' cheap periodic check)."""
    return int(await conn.fetchval("SELECT version FROM shard_map_meta"))


async def _bump(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(
        "UPDATE shard_map_meta SET version = version + 1, updated_at = now() RETURNING version"
    ))


async def initialise(conn: asyncpg.Connection, placement: list[tuple[str, str]]) -> int:
    """Write `placement` (shard → (host, node)) as the map: the first start inserts every row,
    a later start (whose hosts are new actors: the former ones died with their process)
    rewrites the rows that differ. Returns the version (bumped only when something changed)."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE shard_map IN SHARE ROW EXCLUSIVE MODE")
        changed = await conn.fetchval(
            """
            WITH wanted AS (
              SELECT (ord - 1)::int4 AS shard_id, host, node
              FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(host, node, ord)
            ), written AS (
              INSERT INTO shard_map AS m (shard_id, host, node, state, moving_to, updated_at)
              SELECT shard_id, host, node, 'serving', NULL, now() FROM wanted
              ON CONFLICT (shard_id) DO UPDATE
                SET host = EXCLUDED.host, node = EXCLUDED.node, state = 'serving',
                    moving_to = NULL, updated_at = now()
                WHERE (m.host, m.node, m.state) IS DISTINCT FROM
                      (EXCLUDED.host, EXCLUDED.node, 'serving')
              RETURNING 1
            )
            SELECT count(*) FROM written
            """,
            [host for host, _ in placement], [node for _, node in placement],
        )
        extra = await conn.fetchval(
            "WITH gone AS (DELETE FROM shard_map WHERE shard_id >= $1 RETURNING 1) "
            "SELECT count(*) FROM gone", len(placement))
        if changed or extra:
            return await _bump(conn)
        return await version(conn)


async def serving_shards_of(conn: asyncpg.Connection | asyncpg.Pool, host: str) -> list[int]:
    """The shards a host serves by the map (what it activates when it starts)."""
    rows = await conn.fetch(
        "SELECT shard_id FROM shard_map WHERE host = $1 AND state = 'serving' ORDER BY shard_id",
        host,
    )
    return [int(row["shard_id"]) for row in rows]


async def begin_move(conn: asyncpg.Connection, shard_id: int, to_host: str) -> tuple[
        ShardPlace, int]:
    """serving → moving (to `to_host`). Returns the place before and the new version.
    MapConflict when the shard is moving already or is on `to_host`."""
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM shard_map WHERE shard_id = $1 FOR UPDATE",
                                  shard_id)
        if row is None:
            raise MapConflict(f"shard {shard_id} is not in the shard map")
        before = _place(row)
        if before.state != SERVING:
            raise MapConflict(f"shard {shard_id} is already moving to {before.moving_to}")
        if before.host == to_host:
            raise MapConflict(f"shard {shard_id} is already on {to_host}")
        await conn.execute(
            "UPDATE shard_map SET state = 'moving', moving_to = $2, updated_at = now() "
            "WHERE shard_id = $1", shard_id, to_host)
        return before, await _bump(conn)


async def finish_move(
    conn: asyncpg.Connection, shard_id: int, host: str, node: str,
) -> int:
    """moving → serving on `host` (the new owner, or the old one when a move is rolled
    back). Call inside the caller's transaction to audit in the same one."""
    await conn.execute(
        "UPDATE shard_map SET host = $2, node = $3, state = 'serving', moving_to = NULL, "
        "updated_at = now() WHERE shard_id = $1", shard_id, host, node)
    return await _bump(conn)


def place_view(place: ShardPlace) -> dict[str, Any]:
    return msgspec.structs.asdict(place)
