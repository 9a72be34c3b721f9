"""Operator reads of applications: the decision and the trace that explains it.

Reads the durable row (Postgres is the truth); the shard's memory is not asked, so a report
never queues behind partner traffic.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from lending.origination import DecisionTrace
from lending.shard_state import Application

_APPLICATION = msgspec.msgpack.Decoder(Application)
_TRACE = msgspec.msgpack.Decoder(DecisionTrace)


async def application_detail(
    pool: asyncpg.Pool, shard_id: int, application_id: str
) -> dict[str, Any] | None:
    """The application with its decision trace (rule-set versions, every rule fired, score
    and breakdown, tier, limit), or None. Holds no personal data: the customer is an id."""
    row = await pool.fetchrow(
        "SELECT state, trace FROM applications WHERE shard_id = $1 AND application_id = $2",
        shard_id, application_id,
    )
    if row is None:
        return None
    application = _APPLICATION.decode(row["state"])
    if row["trace"] is not None:
        application = msgspec.structs.replace(application, trace=_TRACE.decode(row["trace"]))
    detail: dict[str, Any] = msgspec.to_builtins(application)
    return detail
