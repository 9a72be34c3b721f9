"""The audit trail of operator writes (API.md: who, what, when, before/after).

Call `record` inside the transaction of the write it describes, on the same shard, so that
the write and its audit row commit or fail together.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

_JSON = msgspec.json.Encoder()


async def record(
    conn: asyncpg.Connection,
    *,
    shard_id: int,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
) -> int:
    """Insert one audit row; returns its audit_id. `before`/`after`: JSON-encodable views of
    the object (msgspec types allowed), or None when it did not / does not exist."""
    audit_id: int = await conn.fetchval(
        "INSERT INTO audit_log (shard_id, actor, action, target, before, after) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb) RETURNING audit_id",
        shard_id, actor, action, target, _encode(before), _encode(after),
    )
    return audit_id


async def history(
    conn: asyncpg.Connection | asyncpg.Pool, target: str, limit: int = 100
) -> list[dict[str, Any]]:
    """The audit rows of one target, oldest first."""
    rows = await conn.fetch(
        "SELECT shard_id, audit_id, at, actor, action, target, before::text AS before, "
        "after::text AS after FROM audit_log WHERE target = $1 ORDER BY audit_id LIMIT $2",
        target, limit,
    )
    return [
        {
            "shard_id": row["shard_id"],
            "audit_id": row["audit_id"],
            "at": row["at"].isoformat(),
            "actor": row["actor"],
            "action": row["action"],
            "target": row["target"],
            "before": None if row["before"] is None else msgspec.json.decode(row["before"]),
            "after": None if row["after"] is None else msgspec.json.decode(row["after"]),
        }
        for row in rows
    ]


def _encode(value: Any) -> str | None:
    return None if value is None else _JSON.encode(value).decode()
