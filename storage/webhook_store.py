"""Partner webhooks in Postgres (migration 0016): the outbox `webhook_events` that shards
write in their commits (storage/shard_store.py), and the endpoints registered through the
operator API (`webhook_endpoints`). The delivery worker (cluster/webhooks.py) claims and
records through here; the operator API (gateway/webhooks_desk.py) lists, redelivers and
registers.

Claims. A worker claims a page of events by moving their `next_attempt_at` forward by the
claim time (one statement, `FOR UPDATE SKIP LOCKED`): another worker (or this one, after a
crash) sees them again only once the claim lapsed, so an event is sent at least once and,
while all goes well, once. Only the head of each `order_key` is claimable: an event waits
while an earlier event of its application or loan is still pending.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from storage import audit

# Cluster reference data (like the blacklist) is filed under shard 0.
REFERENCE_SHARD = 0

_CLAIM = """
WITH ready AS (
  SELECT e.shard_id, e.event_id
  FROM webhook_events e
  WHERE e.status = 'pending' AND e.next_attempt_at <= now()
    AND NOT EXISTS (
      SELECT FROM webhook_events p
      WHERE p.status = 'pending' AND p.shard_id = e.shard_id AND p.order_key = e.order_key
        AND p.event_id < e.event_id)
  ORDER BY e.next_attempt_at, e.shard_id, e.event_id
  LIMIT $1
  FOR UPDATE OF e SKIP LOCKED
)
UPDATE webhook_events AS w SET next_attempt_at = now() + make_interval(secs => $2)
FROM ready
WHERE w.shard_id = ready.shard_id AND w.event_id = ready.event_id
RETURNING w.shard_id, w.event_id, w.partner_id, w.event_type, w.order_key, w.body,
          w.attempts
"""

# Each attempt's outcome. A pending event whose attempt failed waits `delay_s`; so do the
# later pending events of its key (they could not go before it anyway), which keeps them
# out of the claim's scan of due events while their head is backing off.
_RECORD = """
WITH r AS (
  SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::float8[], $5::int4[],
                       $6::text[]) AS r(shard_id, event_id, status, delay_s, http_status, error)
),
u AS (
  UPDATE webhook_events AS w SET
    status = r.status,
    attempts = w.attempts + 1,
    last_attempt_at = now(),
    last_status = r.http_status,
    last_error = r.error,
    delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE w.delivered_at END,
    next_attempt_at = CASE WHEN r.delay_s IS NULL THEN now()
                           ELSE now() + make_interval(secs => r.delay_s) END
  FROM r
  WHERE w.shard_id = r.shard_id AND w.event_id = r.event_id AND w.status = 'pending'
  RETURNING w.shard_id, w.order_key, w.event_id, w.status, w.next_attempt_at
)
UPDATE webhook_events AS f SET next_attempt_at = u.next_attempt_at
FROM u
WHERE u.status = 'pending' AND f.status = 'pending' AND f.shard_id = u.shard_id
  AND f.order_key = u.order_key AND f.event_id > u.event_id
  AND f.next_attempt_at < u.next_attempt_at
"""

# The columns operators see (every column but `body`), in each query below as written.
_LIST = """
SELECT shard_id, event_id, id, partner_id, event_type, order_key, loan_id, occurred_on, status,
       attempts, next_attempt_at, last_attempt_at, last_status, last_error, delivered_at,
       created_at
FROM webhook_events
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR partner_id = $2)
  AND ($3::text IS NULL OR loan_id = $3) AND ($4::text IS NULL OR event_type = $4)
  AND ($5::int8 IS NULL OR id < $5)
ORDER BY id DESC
LIMIT $6
"""


_EVENT_COLUMNS = (
    "shard_id, event_id, id, partner_id, event_type, order_key, loan_id, occurred_on, status, "
    "attempts, next_attempt_at, last_attempt_at, last_status, last_error, delivered_at, "
    "created_at"
)
_SELECT_EVENT = "SELECT " + _EVENT_COLUMNS


class Attempt:
    """What one delivery attempt came to, for `record`."""

    __slots__ = ("delay_s", "error", "event_id", "http_status", "shard_id", "status")

    def __init__(
        self, shard_id: int, event_id: str, status: str, delay_s: float | None,
        http_status: int | None, error: str | None,
    ) -> None:
        self.shard_id = shard_id
        self.event_id = event_id
        self.status = status  # delivered | pending (retry after delay_s) | failed
        self.delay_s = delay_s
        self.http_status = http_status
        self.error = error


async def claim(pool: asyncpg.Pool, limit: int, claim_s: float) -> list[asyncpg.Record]:
    """Up to `limit` events to send now, each the oldest pending one of its key, claimed
    for `claim_s` seconds."""
    return list(await pool.fetch(_CLAIM, limit, float(claim_s)))


async def record(pool: asyncpg.Pool, attempts: list[Attempt]) -> None:
    if not attempts:
        return
    await pool.execute(
        _RECORD, [a.shard_id for a in attempts], [a.event_id for a in attempts],
        [a.status for a in attempts], [a.delay_s for a in attempts],
        [a.http_status for a in attempts], [a.error for a in attempts],
    )


async def backlog(pool: asyncpg.Pool) -> tuple[int, float, int]:
    """(pending events, age in seconds of the oldest pending one, failed events)."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM webhook_events WHERE status = 'pending') AS pending, "
        "(SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM webhook_events "
        " WHERE status = 'pending') AS oldest, "
        "(SELECT count(*) FROM webhook_events WHERE status = 'failed') AS failed")
    assert row is not None
    return int(row["pending"]), float(row["oldest"]), int(row["failed"])


# ---- operators: events --------------------------------------------------------------------


def event_view(row: asyncpg.Record) -> dict[str, Any]:
    """An event row as the operator API shows it (JSON-ready)."""
    view: dict[str, Any] = {}
    for key, value in row.items():
        if key == "body":
            continue
        view[key] = value.isoformat() if hasattr(value, "isoformat") else value
    return view


async def list_events(
    pool: asyncpg.Pool, *, status: str | None, partner_id: str | None, loan_id: str | None,
    event_type: str | None, before_id: int | None, limit: int,
) -> list[asyncpg.Record]:
    """Newest first; `before_id` is the `id` of the last event of the previous page."""
    return list(await pool.fetch(_LIST, status, partner_id, loan_id, event_type, before_id,
                                 limit))


async def status_counts(pool: asyncpg.Pool) -> dict[str, int]:
    """Pending and failed events (each through its index; delivered ones are not counted:
    that would read every event ever sent)."""
    pending, _, failed = await backlog(pool)
    return {"pending": pending, "failed": failed}


async def event(pool: asyncpg.Pool, shard_id: int, event_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        _SELECT_EVENT + ", body FROM webhook_events WHERE shard_id = $1 AND event_id = $2",
        shard_id, event_id)
    return row


class NotRedeliverable(Exception):
    """The event is pending: it will be sent (or is being sent) anyway."""


async def redeliver(
    pool: asyncpg.Pool, shard_id: int, event_id: str, actor: str
) -> asyncpg.Record | None:
    """Make a delivered or failed event pending again, due now, with its attempts reset
    (audited as webhook.redeliver). None when there is no such event; NotRedeliverable when
    it is pending."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(
            _SELECT_EVENT + " FROM webhook_events WHERE shard_id = $1 AND event_id = $2 "
            "FOR UPDATE", shard_id, event_id)
        if before is None:
            return None
        if before["status"] == "pending":
            raise NotRedeliverable(event_id)
        after = await conn.fetchrow(
            "UPDATE webhook_events SET status = 'pending', attempts = 0, next_attempt_at = now() "
            "WHERE shard_id = $1 AND event_id = $2 RETURNING shard_id, event_id, id, partner_id, "
            "event_type, order_key, loan_id, occurred_on, status, attempts, next_attempt_at, "
            "last_attempt_at, last_status, last_error, delivered_at, created_at",
            shard_id, event_id)
        assert after is not None
        await audit.record(
            conn, shard_id=shard_id, actor=actor, action="webhook.redeliver",
            target=event_target(event_id), before=_audited(before), after=_audited(after))
        return after


def event_target(event_id: str) -> str:
    """audit_log.target of an event (migration 0004's naming: "kind:id")."""
    return f"webhook_event:{event_id}"


def endpoint_target(partner_id: str) -> str:
    return f"webhook_endpoint:{partner_id}"


def _audited(row: asyncpg.Record) -> dict[str, Any]:
    return {key: row[key] for key in ("status", "attempts", "last_status", "last_error")}


# ---- endpoints registered through the operator API ------------------------------------------


async def endpoints(conn: asyncpg.Pool | asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        "SELECT partner_id, url, secret_enc, updated_by, updated_at FROM webhook_endpoints "
        "WHERE shard_id = $1 ORDER BY partner_id", REFERENCE_SHARD))


async def registered_partner_ids(conn: asyncpg.Pool | asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT partner_id FROM webhook_endpoints WHERE shard_id = $1",
                            REFERENCE_SHARD)
    return {row["partner_id"] for row in rows}


def endpoint_view(url: str, updated_by: str | None, updated_at: datetime | None,
                  source: str, partner_id: str) -> dict[str, Any]:
    """An endpoint as operators see it: never its secret."""
    return {
        "partner_id": partner_id, "url": url, "source": source,
        "updated_by": updated_by,
        "updated_at": None if updated_at is None else updated_at.isoformat(),
    }


async def put_endpoint(
    pool: asyncpg.Pool, partner_id: str, url: str, secret_enc: bytes, actor: str
) -> bool:
    """Register or replace a partner's endpoint (audited as webhook.endpoint_put, without
    the secret). True when it is new."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(
            "SELECT url, updated_by FROM webhook_endpoints WHERE shard_id = $1 "
            "AND partner_id = $2 FOR UPDATE", REFERENCE_SHARD, partner_id)
        await conn.execute(
            "INSERT INTO webhook_endpoints (shard_id, partner_id, url, secret_enc, updated_by) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (shard_id, partner_id) DO UPDATE SET "
            "url = EXCLUDED.url, secret_enc = EXCLUDED.secret_enc, "
            "updated_by = EXCLUDED.updated_by, updated_at = now()",
            REFERENCE_SHARD, partner_id, url, secret_enc, actor)
        await audit.record(
            conn, shard_id=REFERENCE_SHARD, actor=actor, action="webhook.endpoint_put",
            target=endpoint_target(partner_id),
            before=None if before is None else {"url": before["url"]},
            after={"url": url, "signing_key": "replaced"})
        return before is None


async def delete_endpoint(pool: asyncpg.Pool, partner_id: str, actor: str) -> str | None:
    """Remove a partner's endpoint (audited as webhook.endpoint_delete); its URL, or None
    when there was none."""
    async with pool.acquire() as conn, conn.transaction():
        url: str | None = await conn.fetchval(
            "DELETE FROM webhook_endpoints WHERE shard_id = $1 AND partner_id = $2 "
            "RETURNING url", REFERENCE_SHARD, partner_id)
        if url is not None:
            await audit.record(
                conn, shard_id=REFERENCE_SHARD, actor=actor, action="webhook.endpoint_delete",
                target=endpoint_target(partner_id), before={"url": url}, after=None)
        return url
