"""Post-loan collections (贷后催收) on the operator port: queues, cases, and what collectors do.

- Reads: the queues and cases come from Postgres (`collection_cases`, through
  partial indexes on open cases) and never touch the shards; so do the end-of-day connector
  requests (SMS reminders, withholdings) and the summary.
- Writes go to the case's shard as a CaseAction command, which applies it and writes the
  case, its event and (for a contact) the contact-log row in one commit: assign (the
  collections team lead, role operator), note, contact with its outcome, promise to pay (a
  collector on the cases assigned to them, checked by the shard; the lead on any case).
- Who may call which route is gateway/ops_access.py's table, checked before this desk runs.
- `POST /ops/outbox/drain` sends the pending connector requests now (end of day
  starts a drain by itself once the date has advanced).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated, Any

import asyncpg
import msgspec

from gateway.http import JSON, HttpError, Receive, Scope
from gateway.ops_api import Operator, _bounded_int, decode_ops_body, read_ops_body
from gateway.router import Overloaded, ShardRouter
from gateway.validation import ascii_int, choice_param, query_params
from lending import collections as coll
from lending.commands import CaseAction, ErrorBody, Reply
from lending.shard_state import REQUEST_SMS, REQUEST_WITHHOLDING, shard_of_id
from storage import cluster_store

PREFIX = "/ops/collections"
REQUESTS_PATH = "/ops/connector-requests"
DRAIN_PATH = "/ops/outbox/drain"
PAGE_DEFAULT = 50
PAGE_MAX = 500
EVENTS_MAX = 500  # most recent events shown with a case
CASE_STATUSES = (coll.CASE_OPEN, coll.CASE_CLOSED)
REQUEST_KINDS = (REQUEST_SMS, REQUEST_WITHHOLDING)
REQUEST_STATUSES = ("pending", "sent", "succeeded", "failed")
LEAD_ROLES = frozenset({"operator", "admin"})  # may act on any case, not only their own
INT4_MAX = 2**31 - 1

Drain = Callable[[], Awaitable[dict[str, dict[str, int]]]]

Text = Annotated[str, msgspec.Meta(max_length=coll.NOTE_MAX_CHARS)]
# Bounded at the edge like every amount (fen): the command must fit the shard's msgpack.
Amount = Annotated[int, msgspec.Meta(ge=1, le=10**12)]


class AssignIn(msgspec.Struct, forbid_unknown_fields=True):
    assignee: Annotated[str, msgspec.Meta(max_length=200)]  # collector:<name> | agency:<id>


class NoteIn(msgspec.Struct, forbid_unknown_fields=True):
    text: Text


class ContactIn(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    outcome: str
    note: Text = ""


class PromiseIn(msgspec.Struct, forbid_unknown_fields=True):
    amount: Amount
    promised_on: date


_ASSIGN = msgspec.json.Decoder(AssignIn)
_NOTE = msgspec.json.Decoder(NoteIn)
_CONTACT = msgspec.json.Decoder(ContactIn)
_PROMISE = msgspec.json.Decoder(PromiseIn)
_ERROR = msgspec.json.Decoder(ErrorBody)

# Open cases: most overdue first; `after` is the last row's (dpd, case_id).
_QUEUE = """
SELECT state FROM collection_cases
WHERE status = $1
  AND ($2::text IS NULL OR bucket = $2)
  AND ($3::text IS NULL OR assignee = $3)
  AND ($4::date IS NULL OR follow_up_on <= $4)
  AND ($5::int IS NULL OR dpd < $5 OR (dpd = $5 AND case_id > $6))
ORDER BY dpd DESC, case_id
LIMIT $7
"""

_REQUESTS = """
SELECT request_id, kind, created_on, send_on, loan_id, customer_id, partner_id, case_id,
       amount, template, status, outcome, repayment_id, attempts
FROM connector_requests
WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR status = $2)
  AND ($3::date IS NULL OR created_on = $3) AND request_id > $4
ORDER BY request_id
LIMIT $5
"""


class CollectionsDesk:
    def __init__(self, *, pool: asyncpg.Pool, router: ShardRouter, drain: Drain) -> None:
        self.pool = pool
        self.router = router
        self.drain = drain

    @staticmethod
    def owns(path: str) -> bool:
        return (path == PREFIX or path.startswith(PREFIX + "/")
                or path in (REQUESTS_PATH, DRAIN_PATH))

    async def handle(
        self, scope: Scope, receive: Receive, operator: Operator
    ) -> tuple[str, bytes]:
        """A request whose route and roles gateway/ops_access.py has already checked."""
        method, path = scope["method"], scope["path"]
        if path == DRAIN_PATH and method == "POST":
            return "outbox.drain", JSON.encode({"sent": await self.drain()})
        if path == REQUESTS_PATH and method == "GET":
            return "connector_requests", JSON.encode(await self._requests(scope))
        parts = path.strip("/").split("/")[2:]  # after ops, collections
        match (method, *parts):
            case ("GET", "cases"):
                return "collections.cases", JSON.encode(await self._queue(scope))
            case ("GET", "summary"):
                return "collections.summary", JSON.encode(await self._summary())
            case ("GET", "cases", case_id):
                return "collections.case", JSON.encode(await self._case(case_id))
            case ("POST", "cases", case_id, action):
                return f"collections.{action}", await self._act(
                    scope, receive, operator, case_id, action)
        raise HttpError(404, "not_found", f"no route {method} {path}")

    # ---- reads ----------------------------------------------------------------------------

    async def _queue(self, scope: Scope) -> dict[str, Any]:
        query = query_params(scope)
        status = choice_param(query, "status", CASE_STATUSES) or coll.CASE_OPEN
        bucket = choice_param(query, "bucket", coll.BUCKET_ORDER[1:])
        assignee = query.get("assignee", [""])[0] or None
        follow_up = choice_param(query, "follow_up", ("due",))
        limit = _bounded_int(query.get("limit", [None])[0], "limit", PAGE_DEFAULT, PAGE_MAX)
        after_dpd, after_id = _cursor(query.get("after", [""])[0])
        today = await cluster_store.business_date(self.pool) if follow_up else None
        rows = await self.pool.fetch(
            _QUEUE, status, bucket, assignee, today, after_dpd, after_id, limit)
        cases = [msgspec.json.decode(row["state"]) for row in rows]
        last = cases[-1] if len(cases) == limit else None
        return {
            "cases": cases,
            "next_after": f"{last['dpd']}:{last['case_id']}" if last else None,
        }

    async def _case(self, case_id: str) -> dict[str, Any]:
        shard = shard_of_id("case", case_id)
        row = None if shard is None else await self.pool.fetchrow(
            "SELECT state FROM collection_cases WHERE shard_id = $1 AND case_id = $2",
            shard, case_id)
        if row is None:
            raise HttpError(404, "not_found", f"no case {case_id}")
        events = await self.pool.fetch(
            "SELECT business_date, kind, actor, detail, created_at FROM ("
            "  SELECT * FROM collection_events WHERE case_id = $1"
            "  ORDER BY event_id DESC LIMIT $2) e ORDER BY event_id", case_id, EVENTS_MAX)
        return {
            "case": msgspec.json.decode(row["state"]),
            "events": [
                {"business_date": e["business_date"].isoformat(), "kind": e["kind"],
                 "actor": e["actor"], "detail": msgspec.json.decode(e["detail"]),
                 "at": e["created_at"].isoformat()}
                for e in events
            ],
        }

    async def _summary(self) -> dict[str, Any]:
        today = await cluster_store.business_date(self.pool)
        buckets = await self.pool.fetch(
            "SELECT bucket, count(*) AS cases, sum((state->>'overdue_amount')::int8) AS amount "
            "FROM collection_cases WHERE status = 'open' GROUP BY bucket")
        holders = await self.pool.fetch(
            "SELECT coalesce(assignee, 'unassigned') AS assignee, count(*) AS cases "
            "FROM collection_cases WHERE status = 'open' GROUP BY 1 ORDER BY 1")
        promises = await self.pool.fetch(
            "SELECT state->'promise'->>'status' AS status, count(*) AS cases "
            "FROM collection_cases WHERE jsonb_typeof(state->'promise') = 'object' GROUP BY 1")
        follow_ups = await self.pool.fetchval(
            "SELECT count(*) FROM collection_cases WHERE status = 'open' AND follow_up_on <= $1",
            today)
        closed = await self.pool.fetch(
            "SELECT state->>'close_reason' AS reason, count(*) AS cases FROM collection_cases "
            "WHERE status = 'closed' GROUP BY 1")
        order = {bucket: n for n, bucket in enumerate(coll.BUCKET_ORDER)}
        return {
            "business_date": today.isoformat(),
            "open_by_bucket": [
                {"bucket": r["bucket"], "cases": int(r["cases"]),
                 "overdue_amount": int(r["amount"])}
                for r in sorted(buckets, key=lambda r: order[r["bucket"]])
            ],
            "open_by_assignee": {r["assignee"]: int(r["cases"]) for r in holders},
            "promises": {r["status"]: int(r["cases"]) for r in promises},
            "follow_ups_due": int(follow_ups),
            "closed_by_reason": {r["reason"]: int(r["cases"]) for r in closed},
        }

    async def _requests(self, scope: Scope) -> dict[str, Any]:
        query = query_params(scope)
        kind = choice_param(query, "kind", REQUEST_KINDS)
        status = choice_param(query, "status", REQUEST_STATUSES)
        created_on = _date_param(query.get("created_on", [""])[0] or None, "created_on")
        limit = _bounded_int(query.get("limit", [None])[0], "limit", PAGE_DEFAULT, PAGE_MAX)
        after = query.get("after", [""])[0]
        rows = await self.pool.fetch(_REQUESTS, kind, status, created_on, after, limit)
        counts = await self.pool.fetch(
            "SELECT kind, status, count(*) AS n, sum(amount) AS amount FROM connector_requests "
            "WHERE ($1::date IS NULL OR created_on = $1) GROUP BY kind, status ORDER BY 1, 2",
            created_on)
        items = [
            {**dict(r), "created_on": r["created_on"].isoformat(),
             "send_on": r["send_on"].isoformat()}
            for r in rows
        ]
        return {
            "requests": items,
            "next_after": items[-1]["request_id"] if len(items) == limit else None,
            "counts": [
                {"kind": c["kind"], "status": c["status"], "requests": int(c["n"]),
                 "amount": int(c["amount"])}
                for c in counts
            ],
        }

    # ---- writes (through the case's shard) -----------------------------------------------

    async def _act(
        self, scope: Scope, receive: Receive, operator: Operator, case_id: str, action: str
    ) -> bytes:
        lead = bool(operator.roles & LEAD_ROLES)
        command = _command(action, await read_ops_body(scope, receive), case_id,
                           operator.name, lead)
        shard = shard_of_id("case", case_id)
        if shard is None or shard >= self.router.logical_shards:
            raise HttpError(404, "not_found", f"no open case {case_id}")
        try:
            reply: Reply = await self.router.call(shard, command)
        except Overloaded as exc:
            raise HttpError(503, "unavailable", "the gateway is saturated",
                            retry_after_s=1) from exc
        if reply.status != 200:
            detail = _ERROR.decode(reply.body).error
            retry = 1 if reply.status == 503 else None
            raise HttpError(reply.status, detail.code, detail.message, detail.field, retry)
        return reply.body


def _command(action: str, raw: bytes, case_id: str, actor: str, lead: bool) -> CaseAction:
    def make(kind: str, **fields: Any) -> CaseAction:
        return CaseAction(case_id=case_id, actor=actor, action=kind, any_case=lead, **fields)

    if action == "assign":
        return make("assign", assignee=decode_ops_body(_ASSIGN, raw).assignee)
    if action == "notes":
        return make("note", text=decode_ops_body(_NOTE, raw).text)
    if action == "contacts":
        contact = decode_ops_body(_CONTACT, raw)
        return make("contact", channel=contact.channel, outcome=contact.outcome,
                    text=contact.note)
    if action == "promises":
        promise = decode_ops_body(_PROMISE, raw)
        return make("promise", amount=promise.amount, promised_on=promise.promised_on)
    raise HttpError(404, "not_found", f"no case action {action}")


def _cursor(value: str) -> tuple[int | None, str]:
    if not value:
        return None, ""
    dpd_text, _, case_id = value.partition(":")
    dpd = ascii_int(dpd_text, INT4_MAX)  # compared with an int column
    if dpd is None or not case_id:
        raise HttpError(400, "invalid_request", "after must be <dpd>:<case_id> (next_after)",
                        "after")
    return dpd, case_id


def _date_param(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise HttpError(400, "invalid_request", f"{name} must be a YYYY-MM-DD date",
                        name) from exc
