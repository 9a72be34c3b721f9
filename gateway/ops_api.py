"""Operator API (port 8081): bearer tokens with roles; reads of the running book.

Reports read Postgres (or actor summaries), never the write path.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import asyncpg
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.antifraud import (
    BLACKLIST_KINDS,
    Blacklist,
    BlacklistValueError,
    blacklist_value_hash,
)
from gateway.http import (
    JSON,
    BodyTooLarge,
    HttpError,
    Receive,
    Scope,
    Send,
    answers_bugs_with_the_envelope,
    header_map,
    lifespan,
    read_body,
    respond,
    respond_error,
)
from gateway.ops_access import ADMIN, ROLES, OpsRoute, may_call, route_for
from gateway.partner_api import LATENCY, REQUESTS
from gateway.pii import PiiVault
from gateway.settlement_desk import Download, SettlementDesk
from gateway.validation import ascii_int, choice_param, decode_json, path_param, query_params
from lending.chart import Chart
from lending.shard_state import shard_of_id
from storage import audit, cluster_store, gl_summary
from storage.applications_store import application_detail
from storage.business_store import business_summary
from storage.db import DATABASE_DOWN
from storage.loans_store import loan_detail

if TYPE_CHECKING:
    from gateway.collections_desk import CollectionsDesk
    from gateway.reviews import ReviewDesk
    from gateway.webhooks_desk import WebhooksDesk


class Dashboard(Protocol):
    """The operator dashboard served under /dashboard/ (gateway/dashboard/app.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class EodService(Protocol):
    """End of day as the operator API uses it (cluster/eod.py EodRunner)."""

    async def run(self, requested: date | None = None, *, actor: str) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...


class SeedService(Protocol):
    """Bulk seeding as the operator API uses it (gateway/seeding.py Seeder)."""

    async def seed(self, loans: int) -> dict[str, Any]: ...


class MoveView(Protocol):
    def view(self) -> dict[str, Any]: ...


class ClusterAdmin(Protocol):
    """Shard moves and node drains (cluster/coordinator.py); errors are HttpErrors."""

    async def move(self, shard_id: int, to: str, actor: str) -> MoveView: ...

    async def drain(self, node: str, actor: str) -> dict[str, Any]: ...


class ShardMoveIn(msgspec.Struct, forbid_unknown_fields=True):
    to: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]  # node id or host name


_SHARD_MOVE_IN = msgspec.json.Decoder(ShardMoveIn)


class DrainIn(msgspec.Struct, forbid_unknown_fields=True):
    pass  # no fields: the body is empty or {}


_DRAIN_IN = msgspec.json.Decoder(DrainIn)
CLUSTER_SHARDS_PREFIX = "/ops/cluster/shards/"
CLUSTER_NODES_PREFIX = "/ops/cluster/nodes/"


class SeedIn(msgspec.Struct, forbid_unknown_fields=True):
    loans: Any = None  # 1..10,000,000; validated by the seeder


_SEED_IN = msgspec.json.Decoder(SeedIn)


T = TypeVar("T")


async def read_ops_body(scope: Scope, receive: Receive) -> bytes:
    """An operator request's body, bounded (413 beyond OPS_BODY_MAX_BYTES)."""
    try:
        return await read_body(scope, receive, OPS_BODY_MAX_BYTES)
    except BodyTooLarge as exc:
        raise HttpError(413, "payload_too_large",
                        f"bodies are limited to {OPS_BODY_MAX_BYTES} bytes") from exc


def decode_ops_body(decoder: msgspec.json.Decoder[T], raw: bytes) -> T:
    """Strict decode of an operator body: 400 invalid_request naming the field (the
    partner API's rules: gateway/validation.py)."""
    return decode_json(decoder, raw)


class EodIn(msgspec.Struct, forbid_unknown_fields=True):
    business_date: Any = None  # "YYYY-MM-DD": the date to run, or a closed date's report


_EOD_IN = msgspec.json.Decoder(EodIn)

log = logging.getLogger("lendcore.ops")

APPLICATIONS_PREFIX = "/ops/applications/"
LOANS_PREFIX = "/ops/loans/"
DASHBOARD_PREFIX = "/dashboard"
OPS_BODY_MAX_BYTES = 65536
READ_RETRY_PAUSE_S = 0.05  # before a read runs again after its connection broke
BLACKLIST_LIST_MAX = 1000
BLACKLIST_LIST_DEFAULT = 100
AUDIT_LIST_MAX = 1000
AUDIT_LIST_DEFAULT = 100


class BlacklistIn(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


_BLACKLIST_IN = msgspec.json.Decoder(BlacklistIn)


class Operator:
    def __init__(self, name: str, token: str, roles: list[str]) -> None:
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"operator {name}: unknown roles {sorted(unknown)}")
        self.name = name
        self.token = token
        self.roles = frozenset(roles)


def common_endpoints(
    is_ready: Callable[[], bool], readiness_body: Callable[[], bytes],
    openapi: Callable[[], bytes],
) -> Callable[[Scope, Receive, Send], Awaitable[bool]]:
    """/healthz, /readyz, /metrics, /openapi.json on both ports. True when answered."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> bool:
        if scope["method"] != "GET":
            return False
        path = scope["path"]
        if path == "/healthz":
            await respond(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            # Not ready: 503 with the failing checks (gateway.readiness), no auth needed.
            ready = is_ready()
            headers = [] if ready else [(b"retry-after", b"1")]
            await respond(send, 200 if ready else 503, readiness_body(), headers)
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
        product_books: frozenset[str],
        cluster_view: Callable[[], Awaitable[dict[str, Any]]],
        common: Callable[[Scope, Receive, Send], Awaitable[bool]],
        vault: PiiVault,
        blacklist: Blacklist,
        reviews: ReviewDesk,
        eod: EodService,
        eod_schedule: Callable[[], dict[str, Any]],
        seeder: SeedService,
        collections: CollectionsDesk,
        non_accrual_dpd: int,
        write_off_dpd: int,
        webhooks: WebhooksDesk | None = None,
        cluster_admin: Callable[[], ClusterAdmin | None] | None = None,
    ) -> None:
        self.eod = eod
        # The coordinator of shard moves, when this process runs one (`lendcore up` does).
        self.cluster_admin = cluster_admin
        self.non_accrual_dpd = non_accrual_dpd  # [servicing], for the business summary
        self.write_off_dpd = write_off_dpd
        # Served under /dashboard/ when set (System sets it: the dashboard calls back here).
        self.dashboard: Dashboard | None = None
        self.collections = collections
        self.settlements = SettlementDesk(pool)  # settlement files (reads)
        self.webhooks = webhooks  # partner webhooks: events and endpoints (/ops/webhooks/…)
        self.eod_schedule = eod_schedule  # the daily schedule's view (cluster/eod_schedule.py)
        self.seeder = seeder
        self.operators = operators
        self.reviews = reviews
        self.vault = vault
        self.blacklist = blacklist
        self.pool = pool
        self.chart = chart
        self.product_books = product_books  # books known before anything posts to them
        self.cluster_view = cluster_view
        self.common = common

    @answers_bugs_with_the_envelope
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http" or await self.common(scope, receive, send):
            return
        if self.dashboard is not None and _is_dashboard(scope["path"]):
            await self._serve_dashboard(self.dashboard, scope, receive, send)
            return
        started = time.perf_counter()
        route, status = "unknown", 500
        try:
            route, body = await self._handle(scope, receive)
            status = 200
            if isinstance(body, Download):  # a file (text/csv), not JSON
                await respond(send, 200, body, body.headers, body.content_type)
            else:
                await respond(send, 200, body)
        except HttpError as error:
            status = error.status
            await respond_error(send, error)
        except DATABASE_DOWN as exc:
            # Postgres restarting, failing over or unreachable: not a bug, a wait.
            log.warning("ops %s: database unavailable (%s)", route, type(exc).__name__)
            status = 503
            await respond_error(send, HttpError(
                503, "unavailable", "database unavailable; retry later", retry_after_s=1
            ))
        finally:
            REQUESTS.labels("ops", route, str(status)).inc()
            LATENCY.labels("ops", route).observe(time.perf_counter() - started)

    async def _serve_dashboard(
        self, dashboard: Dashboard, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The dashboard's requests, counted in the same metrics as the API's (one route
        label for all of them: its paths carry ids)."""
        started = time.perf_counter()
        status = 500
        original_send = send

        async def counting_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await original_send(message)

        try:
            await dashboard(scope, receive, counting_send)
        finally:
            REQUESTS.labels("ops", "dashboard", str(status)).inc()
            LATENCY.labels("ops", "dashboard").observe(time.perf_counter() - started)

    def _authorise(self, scope: Scope, route: OpsRoute) -> Operator:
        """The operator of the bearer token (401), if one of its roles may call `route`
        (403): the one place roles are checked (gateway/ops_access.py)."""
        operator = self._authenticate(scope)
        check_roles(operator, route)
        return operator

    def _authenticate(self, scope: Scope) -> Operator:
        header = header_map(scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "unauthenticated", "Authorization: Bearer <token> required")
        operator = self.operator_of_token(token)
        if operator is None:
            raise HttpError(401, "unauthenticated", "unknown token")
        return operator

    def operator_of_token(self, token: str) -> Operator | None:
        """The operator whose token this is (compared in constant time), or None."""
        found = None
        for operator in self.operators:  # every token compared: the time says nothing
            matches = hmac.compare_digest(operator.token.encode(), token.encode())
            if matches and found is None:
                found = operator
        return found

    def operator_named(self, name: str) -> Operator | None:
        """The configured operator of that name (a dashboard session names its operator)."""
        return next((operator for operator in self.operators if operator.name == name), None)

    async def call_as(
        self, operator: Operator, method: str, path: str, *, query: str = "",
        body: bytes = b"",
    ) -> Any:
        """What the operator API answers `operator`'s `method path?query` with `body`,
        decoded, without HTTP: the dashboard's one way to read and write. The same route
        table and role check (403) and the same handler as a bearer request; an error is
        raised as the HttpError the API would answer."""
        route = route_for(method, path)
        if route is None:
            raise HttpError(404, "not_found", f"no route {method} {path}")
        check_roles(operator, route)
        scope: Scope = {
            "type": "http", "method": method, "path": path,
            "query_string": query.encode(),
            "headers": [(b"content-length", str(len(body)).encode())],
        }
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:  # a handler never reads past the one body message
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        _, answer = await self._dispatch(scope, receive, operator)
        return msgspec.json.decode(answer)

    async def _shards(self, requested: str | None) -> list[int]:
        """All logical shards, or the one named by ?shard=N (validated)."""
        count = await cluster_store.logical_shards(self.pool)
        if requested is None:
            return list(range(count))
        shard = ascii_int(requested, count - 1)
        if shard is None:
            raise HttpError(400, "invalid_request", f"shard must be an integer in 0..{count - 1}",
                            "shard")
        return [shard]

    async def _application(self, path: str) -> dict[str, Any]:
        """An application with its decision trace: which rule-set versions ran, which rules
        fired, the score and its breakdown (regulators ask why a customer was declined)."""
        application_id = path[len(APPLICATIONS_PREFIX):]
        shard = shard_of_id("application", application_id)
        if shard is None or shard >= await cluster_store.logical_shards(self.pool):
            raise HttpError(404, "not_found", f"no application {application_id}")
        detail = await application_detail(self.pool, shard, application_id)
        if detail is None:
            raise HttpError(404, "not_found", f"no application {application_id}")
        return detail

    async def _loan(self, path: str) -> dict[str, Any]:
        """A loan with its schedule, repayments and journal lines, from Postgres."""
        loan_id = path[len(LOANS_PREFIX):]
        shard = shard_of_id("loan", loan_id)
        if shard is None or shard >= await cluster_store.logical_shards(self.pool):
            raise HttpError(404, "not_found", f"no loan {loan_id}")
        detail = await loan_detail(self.pool, self.chart, shard, loan_id)
        if detail is None:
            raise HttpError(404, "not_found", f"no loan {loan_id}")
        return detail

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[str, bytes]:
        method, path = scope["method"], scope["path"]
        route = route_for(method, path)
        if route is None:
            raise HttpError(404, "not_found", f"no route {method} {path}")
        operator = self._authorise(scope, route)
        if method != "GET":
            return await self._dispatch(scope, receive, operator)
        try:
            return await self._dispatch(scope, receive, operator)
        except DATABASE_DOWN:
            # A pooled connection that Postgres closed a moment ago (a restart, a failover)
            # fails its first query; a read is safe to run again, once, on a fresh one.
            await asyncio.sleep(READ_RETRY_PAUSE_S)
            return await self._dispatch(scope, receive, operator)

    async def _dispatch(
        self, scope: Scope, receive: Receive, operator: Operator
    ) -> tuple[str, bytes]:
        """The handler of a request whose route and roles have been checked."""
        method, path = scope["method"], scope["path"]
        if path == "/ops/blacklist" or path.startswith("/ops/blacklist/"):
            return await self._blacklist(scope, receive, operator, method, path)
        if self.reviews.owns(path):
            return await self.reviews.handle(scope, receive, operator)
        if self.settlements.owns(path):
            return await self.settlements.handle(scope)
        if self.collections.owns(path):
            return await self.collections.handle(scope, receive, operator)
        if self.webhooks is not None and self.webhooks.owns(path):
            return await self.webhooks.handle(scope, receive, operator)
        if path == "/ops/eod":
            return await self._eod(scope, receive, operator, method)
        if path == "/ops/seed" and method == "POST":
            return await self._seed(scope, receive, operator)
        if method == "POST" and path.startswith(("/ops/cluster/shards/", "/ops/cluster/nodes/")):
            return await self._cluster_action(scope, receive, operator, path)
        if method != "GET":
            raise HttpError(404, "not_found", f"no route {method} {path}")
        query = query_params(scope)
        if path == "/ops/business-date":
            value = await cluster_store.business_date(self.pool)
            return "business_date", JSON.encode({"business_date": value.isoformat()})
        if path == "/ops/ledger/trial-balance":
            book = await self._book(query)
            report = await cluster_store.trial_balance(self.pool, self.chart, book)
            return "trial_balance", JSON.encode(report)
        if path == "/ops/ledger/daily-summary":
            return "daily_summary", JSON.encode(await self._daily_summary(query))
        if path == "/ops/ledger/reconciliation":
            book = await self._book(query)
            shards = await self._shards(query.get("shard", [None])[0])
            report = await cluster_store.reconciliation(self.pool, self.chart, book, shards)
            return "reconciliation", JSON.encode(report)
        if path == "/ops/cluster":
            return "cluster", JSON.encode(await self.cluster_view())
        if path.startswith(APPLICATIONS_PREFIX):
            return "application", JSON.encode(await self._application(path))
        if path.startswith(LOANS_PREFIX):
            return "loan", JSON.encode(await self._loan(path))
        if path == "/ops/business-summary":
            return "business_summary", JSON.encode(await business_summary(
                self.pool, self.chart, non_accrual_dpd=self.non_accrual_dpd,
                write_off_dpd=self.write_off_dpd))
        if path == "/ops/audit":
            target = query.get("target", [""])[0]
            if not target:
                raise HttpError(400, "invalid_request", "target is required", "target")
            limit = _bounded_int(query.get("limit", [None])[0], "limit",
                                 AUDIT_LIST_DEFAULT, AUDIT_LIST_MAX)
            return "audit", JSON.encode(
                {"target": target, "entries": await audit.history(self.pool, target, limit)})
        raise HttpError(404, "not_found", f"no route {method} {path}")

    async def _daily_summary(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """总账日汇总 of one closed business date (DOMAIN.md §5), one book or all."""
        day = gl_summary.parse_business_date(query.get("business_date", [""])[0])
        if day is None:
            raise HttpError(400, "invalid_request", "business_date must be a YYYY-MM-DD date",
                            "business_date")
        book = await self._book(query)
        if not await gl_summary.is_built(self.pool, day):
            raise HttpError(404, "not_found",
                            f"no daily GL summary of {day}: end of day builds it once the "
                            "date is closed", "business_date")
        return await gl_summary.daily_summary(self.pool, self.chart, book, day)

    async def _book(self, query: dict[str, list[str]]) -> str | None:
        """`?book=` of a ledger report: None (all books) when absent or blank; a book that is
        neither defined nor posted to is 404, not an empty (hence balanced) report."""
        book = query.get("book", [None])[0] or None
        if book is not None:
            books = await gl_summary.known_books(self.pool, self.product_books)
            if book not in books:
                raise HttpError(404, "not_found",
                                f"no book {book!r}; books: {', '.join(books)}", "book")
        return book

    # ---- end of day (admin runs, viewers watch) -----------------------------------------

    async def _eod(
        self, scope: Scope, receive: Receive, operator: Operator, method: str
    ) -> tuple[str, bytes]:
        if method == "GET":
            status = await self.eod.status()
            status["schedule"] = self.eod_schedule()
            return "eod_status", JSON.encode(status)
        if method != "POST":
            raise HttpError(404, "not_found", f"no route {method} /ops/eod")
        raw = await read_ops_body(scope, receive)
        requested = None
        if raw.strip():
            body = decode_ops_body(_EOD_IN, raw)
            if body.business_date is not None:
                requested = _iso_date(body.business_date)
        try:
            report = await self.eod.run(requested, actor=operator.name)
        except HttpError:
            raise
        except Exception as exc:  # Postgres, Redis or a host down: the date did not move
            log.exception("end of day failed")
            raise HttpError(503, "unavailable",
                            f"end of day failed ({type(exc).__name__}); run it again",
                            retry_after_s=5) from exc
        return "eod_run", JSON.encode(report)

    # ---- shard moves and node drains (admin; the coordinator audits each) ----------------

    async def _cluster_action(
        self, scope: Scope, receive: Receive, operator: Operator, path: str
    ) -> tuple[str, bytes]:
        raw = await read_ops_body(scope, receive)
        if path.startswith(CLUSTER_SHARDS_PREFIX) and path.endswith("/move"):
            text = path[len(CLUSTER_SHARDS_PREFIX):-len("/move")]
            count = await cluster_store.logical_shards(self.pool)
            shard = ascii_int(text, count - 1)
            if shard is None:
                raise HttpError(400, "invalid_request",
                                f"shard_id must be an integer in 0..{count - 1}", "shard_id")
            body = decode_ops_body(_SHARD_MOVE_IN, raw)
            path_param(body.to, "to")
            if not body.to.strip():
                raise HttpError(400, "invalid_request", "to must not be blank", "to")
            admin = self._admin()
            log.info("move of shard %s to %s by %s", shard, body.to, operator.name)
            result = await admin.move(shard, body.to.strip(), operator.name)
            return "cluster_move", JSON.encode(result.view())
        if path.startswith(CLUSTER_NODES_PREFIX) and path.endswith("/drain"):
            node = path[len(CLUSTER_NODES_PREFIX):-len("/drain")]
            path_param(node, "node_id")
            if not node or "/" in node:
                raise HttpError(400, "invalid_request", "node_id is required", "node_id")
            if raw.strip():
                decode_ops_body(_DRAIN_IN, raw)  # {} only: an unknown field is a 400
            admin = self._admin()
            log.info("drain of node %s by %s", node, operator.name)
            return "cluster_drain", JSON.encode(await admin.drain(node, operator.name))
        raise HttpError(404, "not_found", f"no route POST {path}")

    def _admin(self) -> ClusterAdmin:
        admin = self.cluster_admin() if self.cluster_admin is not None else None
        if admin is None:
            raise HttpError(503, "unavailable", "shard moves are run by the `lendcore up` "
                            "process's coordinator, which is not running here",
                            retry_after_s=5)
        return admin

    # ---- seeding (admin only: an operator's bulk tool for benchmarks and demos) ----------

    async def _seed(
        self, scope: Scope, receive: Receive, operator: Operator
    ) -> tuple[str, bytes]:
        body = decode_ops_body(_SEED_IN, await read_ops_body(scope, receive))
        if isinstance(body.loans, bool) or not isinstance(body.loans, int):
            raise HttpError(400, "invalid_request", "loans must be an integer", "loans")
        log.info("seed of %s loans by %s", body.loans, operator.name)
        try:
            result = await self.seeder.seed(body.loans)
        except HttpError:
            raise
        except Exception as exc:  # Postgres or a host down: part of the seed may be in
            log.exception("seed failed")
            raise HttpError(503, "unavailable", f"seed failed ({type(exc).__name__})",
                            retry_after_s=5) from exc
        return "seed", JSON.encode(result)

    # ---- blacklists (risk officers; each write audited) ----------------------------------

    async def _blacklist(
        self, scope: Scope, receive: Receive, operator: Operator, method: str, path: str
    ) -> tuple[str, bytes]:
        if path == "/ops/blacklist" and method == "GET":
            query = query_params(scope)
            kind = choice_param(query, "kind", BLACKLIST_KINDS)
            limit = _bounded_int(query.get("limit", [None])[0], "limit",
                                 BLACKLIST_LIST_DEFAULT, BLACKLIST_LIST_MAX)
            entries, total = await self.blacklist.entries(kind, limit)
            return "blacklist_list", JSON.encode(
                {"entries": [e.masked() for e in entries], "total": total})
        if path == "/ops/blacklist" and method == "POST":
            body = decode_ops_body(_BLACKLIST_IN, await read_ops_body(scope, receive))
            if not body.reason.strip():
                raise HttpError(400, "invalid_request", "reason must not be blank", "reason")
            value_hash = self._blacklist_value(body.kind, body.value)
            entry, created = await self.blacklist.add(
                body.kind, value_hash, body.reason, operator.name)
            return "blacklist_add", JSON.encode({"created": created, "entry": entry.masked()})
        if path.startswith("/ops/blacklist/") and method == "DELETE":
            kind, _, value = path[len("/ops/blacklist/"):].partition("/")
            path_param(kind, "kind")
            path_param(value, "value")
            if not value:
                raise HttpError(400, "invalid_request", "DELETE /ops/blacklist/{kind}/{value}",
                                "value")
            value_hash = self._blacklist_value(kind, value)
            removed = await self.blacklist.remove(kind, value_hash, operator.name)
            if removed is None:
                raise HttpError(404, "not_found", f"no {kind} blacklist entry for this value")
            return "blacklist_remove", JSON.encode({"deleted": removed.masked()})
        raise HttpError(404, "not_found", f"no route {method} {path}")

    def _blacklist_value(self, kind: str, value: str) -> str:
        try:
            return blacklist_value_hash(self.vault, kind, value)
        except BlacklistValueError as exc:
            raise HttpError(400, "invalid_request", str(exc), exc.field) from exc


def check_roles(operator: Operator, route: OpsRoute) -> None:
    """403 unless one of the operator's roles may call `route` (gateway/ops_access.py)."""
    if not may_call(operator.roles, route):
        needed = ", ".join(sorted(route.roles - {ADMIN})) or ADMIN
        raise HttpError(403, "forbidden", f"this needs one of the roles: {needed}")


def _is_dashboard(path: str) -> bool:
    return path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")


def _iso_date(value: Any) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise HttpError(400, "invalid_request", "business_date must be a YYYY-MM-DD date",
                    "business_date")


def _bounded_int(text: str | None, field: str, default: int, maximum: int) -> int:
    if text is None:
        return default
    value = ascii_int(text, maximum)
    if value is None or value < 1:
        raise HttpError(400, "invalid_request", f"{field} must be an integer in 1..{maximum}",
                        field)
    return value
