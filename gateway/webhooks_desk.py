"""Partner webhooks on the operator port (issue 14): the events and the endpoints.

- `GET /ops/webhooks/events`: events newest first, by status (pending, delivered, failed),
  partner, loan or type, with attempts and the last error; `GET …/events/{event_id}` one
  event with the JSON document it delivers; `POST …/events/{event_id}/redeliver` makes a
  delivered or failed event pending again (attempts reset; audited).
- `GET /ops/webhooks/endpoints`: every partner's endpoint, from the partners file
  (`source: config`) or registered here (`source: ops`), never the secret;
  `PUT /ops/webhooks/endpoints/{partner_id}` `{"url", "secret"}` registers or replaces one,
  `DELETE` removes it (both admin, audited). The partners file's endpoints are changed in
  the file (409 `config_managed` here). Once stored, every shard host is told to re-read the
  partners with an endpoint (`on_change`): when the answer comes back, every change that
  commits from then on writes events for that partner (or, after a DELETE, none).
Who may call which route is gateway/ops_access.py's table, checked before this desk runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
import msgspec

from gateway.http import JSON, HttpError, Receive, Scope
from gateway.ops_api import Operator, _bounded_int, decode_ops_body, read_ops_body
from gateway.pii import PiiVault
from gateway.validation import ascii_int, choice_param, path_param, query_params
from lending.events import EVENT_TYPES, STATUSES, endpoint_url_problem
from lending.shard_state import shard_of_id
from storage import webhook_store

PREFIX = "/ops/webhooks"
EVENTS = PREFIX + "/events"
ENDPOINTS = PREFIX + "/endpoints"
PAGE_DEFAULT = 50
PAGE_MAX = 500
ID_MAX = 2**63 - 1
SECRET_MIN_CHARS = 16

OnChange = Callable[[], Awaitable[None]]


class EndpointIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    secret: Annotated[str, msgspec.Meta(min_length=SECRET_MIN_CHARS, max_length=256)]


_ENDPOINT_IN = msgspec.json.Decoder(EndpointIn)


class WebhooksDesk:
    def __init__(
        self, *, pool: asyncpg.Pool, vault: PiiVault, partners: frozenset[str],
        config_urls: dict[str, str], on_change: OnChange,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.vault = vault
        self.partners = partners  # every partner of the partners file
        self.config_urls = config_urls  # partner → URL of the partners file's endpoints
        self.on_change = on_change  # tell the shard hosts and the dispatcher
        self.wake = wake  # the dispatcher: look for due events now

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def handle(
        self, scope: Scope, receive: Receive, operator: Operator
    ) -> tuple[str, bytes]:
        """A request whose route and roles gateway/ops_access.py has already checked."""
        method, path = scope["method"], scope["path"]
        parts = path.strip("/").split("/")[2:]  # after ops, webhooks
        match (method, *parts):
            case ("GET", "events"):
                return "webhooks.events", JSON.encode(await self._events(scope))
            case ("GET", "events", event_id):
                return "webhooks.event", JSON.encode(await self._event(event_id))
            case ("POST", "events", event_id, "redeliver"):
                return "webhooks.redeliver", JSON.encode(
                    await self._redeliver(event_id, operator))
            case ("GET", "endpoints"):
                return "webhooks.endpoints", JSON.encode(await self._endpoints())
            case ("PUT", "endpoints", partner_id):
                return "webhooks.endpoint_put", JSON.encode(
                    await self._put(scope, receive, operator, partner_id))
            case ("DELETE", "endpoints", partner_id):
                return "webhooks.endpoint_delete", JSON.encode(
                    await self._delete(operator, partner_id))
        raise HttpError(404, "not_found", f"no route {method} {path}")

    # ---- events -----------------------------------------------------------------------------

    async def _events(self, scope: Scope) -> dict[str, Any]:
        query = query_params(scope)
        status = choice_param(query, "status", STATUSES)
        event_type = choice_param(query, "event_type", EVENT_TYPES)
        partner_id = query.get("partner_id", [""])[0] or None
        loan_id = query.get("loan_id", [""])[0] or None
        limit = _bounded_int(query.get("limit", [None])[0], "limit", PAGE_DEFAULT, PAGE_MAX)
        after_text = query.get("after", [""])[0]
        after = None
        if after_text:
            after = ascii_int(after_text, ID_MAX)
            if after is None:
                raise HttpError(400, "invalid_request",
                                "after must be the next_after of the previous page", "after")
        rows = await webhook_store.list_events(
            self.pool, status=status, partner_id=partner_id, loan_id=loan_id,
            event_type=event_type, before_id=after, limit=limit)
        events = [webhook_store.event_view(row) for row in rows]
        return {
            "events": events,
            "next_after": str(events[-1]["id"]) if len(events) == limit else None,
            "counts": await webhook_store.status_counts(self.pool),
        }

    async def _event_row(self, event_id: str) -> tuple[int, asyncpg.Record]:
        path_param(event_id, "event_id")
        shard = shard_of_id("event", event_id)
        row = None if shard is None else await webhook_store.event(self.pool, shard, event_id)
        if shard is None or row is None:
            raise HttpError(404, "not_found", f"no webhook event {event_id}")
        return shard, row

    async def _event(self, event_id: str) -> dict[str, Any]:
        _, row = await self._event_row(event_id)
        return {**webhook_store.event_view(row), "payload": msgspec.json.decode(row["body"])}

    async def _redeliver(self, event_id: str, operator: Operator) -> dict[str, Any]:
        shard, _ = await self._event_row(event_id)
        try:
            row = await webhook_store.redeliver(self.pool, shard, event_id, operator.name)
        except webhook_store.NotRedeliverable as exc:
            raise HttpError(409, "invalid_state",
                            f"webhook event {event_id} is pending: it is sent when due") from exc
        if row is None:
            raise HttpError(404, "not_found", f"no webhook event {event_id}")
        self.wake()
        return {"event": webhook_store.event_view(row)}

    # ---- endpoints --------------------------------------------------------------------------

    async def _endpoints(self) -> dict[str, Any]:
        views = {
            row["partner_id"]: webhook_store.endpoint_view(
                row["url"], row["updated_by"], row["updated_at"], "ops", row["partner_id"])
            for row in await webhook_store.endpoints(self.pool)
        }
        for partner_id, url in self.config_urls.items():  # the file wins (see _partner)
            views[partner_id] = webhook_store.endpoint_view(url, None, None, "config",
                                                            partner_id)
        return {"endpoints": [views[p] for p in sorted(views)]}

    def _partner(self, partner_id: str) -> str:
        path_param(partner_id, "partner_id")
        if partner_id not in self.partners:
            raise HttpError(404, "not_found", f"no partner {partner_id}")
        if partner_id in self.config_urls:
            raise HttpError(409, "config_managed",
                            f"partner {partner_id}'s webhook endpoint is declared in the "
                            "partners file: change it there")
        return partner_id

    async def _put(
        self, scope: Scope, receive: Receive, operator: Operator, partner_id: str
    ) -> dict[str, Any]:
        partner_id = self._partner(partner_id)
        body = decode_ops_body(_ENDPOINT_IN, await read_ops_body(scope, receive))
        problem = endpoint_url_problem(body.url)
        if problem is not None:
            raise HttpError(400, "invalid_request", f"url {problem}", "url")
        created = await webhook_store.put_endpoint(
            self.pool, partner_id, body.url, self.vault.encrypt(body.secret), operator.name)
        await self._tell_hosts()
        rows = {row["partner_id"]: row for row in await webhook_store.endpoints(self.pool)}
        row = rows.get(partner_id)
        view = (None if row is None else webhook_store.endpoint_view(
            row["url"], row["updated_by"], row["updated_at"], "ops", partner_id))
        return {"created": created, "endpoint": view}

    async def _delete(self, operator: Operator, partner_id: str) -> dict[str, Any]:
        partner_id = self._partner(partner_id)
        url = await webhook_store.delete_endpoint(self.pool, partner_id, operator.name)
        if url is None:
            raise HttpError(404, "not_found", f"partner {partner_id} has no webhook endpoint")
        await self._tell_hosts()
        return {"deleted": {"partner_id": partner_id, "url": url}}

    async def _tell_hosts(self) -> None:
        try:
            await self.on_change()
        except Exception as exc:  # a host restarting past the deadline, Ray trouble
            raise HttpError(
                503, "unavailable",
                "the change is stored, but not every shard host confirmed it "
                f"({type(exc).__name__}): send the same request again", retry_after_s=1,
            ) from exc
