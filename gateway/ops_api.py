"""Operator API (port 8081): bearer tokens with roles; reads of the running book.

Reports read Postgres (or actor summaries), never the write path.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http import (
    JSON,
    HttpError,
    Receive,
    Scope,
    Send,
    header_map,
    lifespan,
    respond,
    respond_error,
)
from gateway.partner_api import LATENCY, REQUESTS
from lending.chart import Chart
from storage import cluster_store

ROLES = ("viewer", "operator", "risk_officer", "admin")


class Operator:
    def __init__(self, name: str, token: str, roles: list[str]) -> None:
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"operator {name}: unknown roles {sorted(unknown)}")
        self.name = name
        self.token = token
        self.roles = frozenset(roles)


def common_endpoints(
    is_ready: Callable[[], bool], openapi: Callable[[], bytes]
) -> Callable[[Scope, Receive, Send], Awaitable[bool]]:
    """/healthz, /readyz, /metrics, /openapi.json on both ports. True when answered."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> bool:
        if scope["method"] != "GET":
            return False
        path = scope["path"]
        if path == "/healthz":
            await respond(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            ready = is_ready()
            await respond(
                send, 200 if ready else 503,
                b'{"status":"ready"}' if ready else b'{"status":"starting"}',
            )
        elif path == "/metrics":
            await respond(send, 200, generate_latest(), content_type=CONTENT_TYPE_LATEST.encode())
        elif path == "/openapi.json":
            await respond(send, 200, openapi())
        else:
            return False
        return True

    return handle


class OpsApi:
    def __init__(
        self,
        *,
        operators: list[Operator],
        pool: asyncpg.Pool,
        chart: Chart,
        cluster_view: Callable[[], Awaitable[dict[str, Any]]],
        common: Callable[[Scope, Receive, Send], Awaitable[bool]],
    ) -> None:
        self.operators = operators
        self.pool = pool
        self.chart = chart
        self.cluster_view = cluster_view
        self.common = common

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http" or await self.common(scope, receive, send):
            return
        started = time.perf_counter()
        route, status = "unknown", 500
        try:
            route, body = await self._handle(scope)
            status = 200
            await respond(send, 200, body)
        except HttpError as error:
            status = error.status
            await respond_error(send, error)
        finally:
            REQUESTS.labels("ops", route, str(status)).inc()
            LATENCY.labels("ops", route).observe(time.perf_counter() - started)

    def _authorise(self, scope: Scope, role: str) -> Operator:
        header = header_map(scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "unauthenticated", "Authorization: Bearer <token> required")
        for operator in self.operators:
            if hmac.compare_digest(operator.token.encode(), token.encode()):
                # Every role may read (viewer); admin may do everything.
                granted = operator.roles | {"viewer"}
                if role not in granted and "admin" not in operator.roles:
                    raise HttpError(403, "forbidden", f"role {role} required")
                return operator
        raise HttpError(401, "unauthenticated", "unknown token")

    async def _shards(self, requested: str | None) -> list[int]:
        """All logical shards, or the one named by ?shard=N (validated)."""
        count = await cluster_store.logical_shards(self.pool)
        if requested is None:
            return list(range(count))
        # isascii: str.isdigit() also accepts "²" or "٣", which int() rejects or reads.
        if not (requested.isascii() and requested.isdigit()) or int(requested) >= count:
            raise HttpError(400, "invalid_request", f"shard must be an integer in 0..{count - 1}",
                            "shard")
        return [int(requested)]

    async def _handle(self, scope: Scope) -> tuple[str, bytes]:
        method, path = scope["method"], scope["path"]
        if method != "GET":
            raise HttpError(404, "not_found", f"no route {method} {path}")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"),
                         keep_blank_values=True)
        if path == "/ops/business-date":
            self._authorise(scope, "viewer")
            value = await cluster_store.business_date(self.pool)
            return "business_date", JSON.encode({"business_date": value.isoformat()})
        if path == "/ops/ledger/trial-balance":
            self._authorise(scope, "viewer")
            book = query.get("book", [None])[0] or None
            report = await cluster_store.trial_balance(self.pool, self.chart, book)
            return "trial_balance", JSON.encode(report)
        if path == "/ops/ledger/reconciliation":
            self._authorise(scope, "viewer")
            book = query.get("book", [None])[0] or None
            shards = await self._shards(query.get("shard", [None])[0])
            report = await cluster_store.reconciliation(self.pool, self.chart, book, shards)
            return "reconciliation", JSON.encode(report)
        if path == "/ops/cluster":
            self._authorise(scope, "viewer")
            return "cluster", JSON.encode(await self.cluster_view())
        raise HttpError(404, "not_found", f"no route {method} {path}")
