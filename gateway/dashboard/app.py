"""The operator dashboard: server-rendered HTML under /dashboard/ on the operator port.

- Pages are Jinja2 templates (autoescaped: nothing an operator or a partner typed is ever
  marked safe); panels are HTML fragments that htmx (static/htmx.min.js, vendored) fetches
  and refreshes every few seconds; charts are drawn by uPlot (vendored) from the sampler's
  ring buffer (gateway/dashboard/sampler.py). No CDN, no build step, no inline script.
- Sign-in: a form POST of the operator's token → a server-side session (sessions.py); the
  browser holds only the session id (HttpOnly, SameSite=Strict cookie). Every POST must
  carry the session's CSRF token (header X-CSRF-Token, sent by dashboard.js, or the form's
  `csrf` field) and, when the browser sends one, an Origin of this host.
- Authorisation: every route is a row of gateway/ops_access.py DASHBOARD_ROUTES, which
  takes its roles from the operator API route it mirrors; every read and write goes through
  OpsApi.call_as, i.e. that route's own role check and handler. What a role may not call
  is neither shown to it nor answered (403).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from gateway.dashboard import health
from gateway.dashboard.sampler import MetricsSampler
from gateway.dashboard.sessions import SESSION_COOKIE, Session, SessionStore
from gateway.http import JSON, BodyTooLarge, HttpError, Receive, Scope, Send, read_body
from gateway.ops_access import (
    DASHBOARD_ROUTES,
    PUBLIC,
    SIGNED_IN,
    DashboardRoute,
    dashboard_route_for,
    may_call,
)
from gateway.ops_api import Operator, OpsApi, check_roles
from gateway.validation import check_text
from lending.shard_state import shard_of_id
from storage.db import DATABASE_DOWN

log = logging.getLogger("lendcore.dashboard")

HERE = Path(__file__).parent
FORM_BODY_MAX_BYTES = 65536
FORM_FIELDS_MAX = 20
LOGIN_FAILURE_DELAY_S = 0.5  # slows a token guesser down; a person does not notice
REVIEWS_SHOWN = 20
CASES_SHOWN = 10
BLACKLIST_SHOWN = 20
REASONS_SHOWN = 12
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".txt": "text/plain; charset=utf-8"}
# No inline script or style anywhere: the policy can forbid them outright.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on a
    # form POST, and _same_origin needs the real one.
    (b"referrer-policy", b"same-origin"),
]

# What the page shows to whom: each name is a dashboard route, whose row decides.
ABILITIES = {
    "cluster": ("GET", "/dashboard/panels/cluster"),
    "business": ("GET", "/dashboard/panels/business"),
    "eod": ("GET", "/dashboard/panels/eod"),
    "run_eod": ("POST", "/dashboard/eod/run"),
    "collections": ("GET", "/dashboard/panels/collections"),
    "cases": ("GET", "/dashboard/panels/cases"),
    "reviews": ("GET", "/dashboard/panels/reviews"),
    "claim": ("POST", "/dashboard/reviews/{application_id}/claim"),
    "release": ("POST", "/dashboard/reviews/{application_id}/release"),
    "decide": ("POST", "/dashboard/reviews/{application_id}/decision"),
    "blacklist": ("GET", "/dashboard/panels/blacklist"),
    "blacklist_add": ("POST", "/dashboard/blacklist"),
    "loans": ("GET", "/dashboard/loans/{loan_id}"),
    "applications": ("GET", "/dashboard/applications/{application_id}"),
}


@dataclass
class Request:
    scope: Scope
    route: DashboardRoute
    path_values: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    session: Session | None = None
    operator: Operator | None = None

    @property
    def from_htmx(self) -> bool:
        return self.headers.get("hx-request") == "true"

    def signed_in(self) -> tuple[Session, Operator]:
        assert self.session is not None and self.operator is not None  # checked before
        return self.session, self.operator


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: bytes = b"text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class EodLaunch:
    """The last end of day started from the dashboard (one at a time)."""

    operator: str
    business_date: str
    started_at: float
    outcome: str | None = None  # None while it runs; then "done" or why it failed
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


Handler = Callable[[Request], Awaitable[Answer]]


class Dashboard:
    def __init__(
        self, *, ops: OpsApi, sampler: MetricsSampler, readiness: health.ReadinessView,
        limits: health.QueueLimits, sessions: SessionStore | None = None,
    ) -> None:
        self.ops = ops
        self.sampler = sampler
        self.readiness = readiness
        self.limits = limits
        self.sessions = sessions or SessionStore()
        self.eod_launch: EodLaunch | None = None
        self.templates = _environment()
        self.static = _static_files(HERE / "static")
        self._handlers: dict[tuple[str, str], Handler] = {
            ("GET", "/dashboard/login"): self._login_form,
            ("POST", "/dashboard/login"): self._login,
            ("GET", "/dashboard/static/{file}"): self._static_file,
            ("GET", "/dashboard/"): self._index,
            ("POST", "/dashboard/logout"): self._logout,
            ("GET", "/dashboard/search"): self._search,
            ("GET", "/dashboard/panels/header"): self._header_panel,
            ("GET", "/dashboard/panels/cluster"): self._cluster_panel,
            ("GET", "/dashboard/charts"): self._chart_data,
            ("GET", "/dashboard/panels/business"): self._business_panel,
            ("GET", "/dashboard/panels/eod"): self._eod_panel,
            ("POST", "/dashboard/eod/run"): self._run_eod,
            ("GET", "/dashboard/panels/collections"): self._collections_panel,
            ("GET", "/dashboard/panels/cases"): self._cases_panel,
            ("GET", "/dashboard/panels/reviews"): self._reviews_panel,
            ("POST", "/dashboard/reviews/{application_id}/claim"): self._claim,
            ("POST", "/dashboard/reviews/{application_id}/release"): self._release,
            ("POST", "/dashboard/reviews/{application_id}/decision"): self._decide,
            ("GET", "/dashboard/panels/blacklist"): self._blacklist_panel,
            ("POST", "/dashboard/blacklist"): self._blacklist_add,
            ("GET", "/dashboard/loans/{loan_id}"): self._loan_page,
            ("GET", "/dashboard/applications/{application_id}"): self._application_page,
        }
        table = {(route.method, route.pattern) for route in DASHBOARD_ROUTES}
        if table != set(self._handlers):  # a route without a handler, or the reverse
            raise RuntimeError(f"dashboard routes and handlers differ: "
                               f"{sorted(table ^ set(self._handlers))}")

    # ---- HTTP -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self._answer(scope, receive)
        headers = [(b"content-type", answer.content_type),
                   (b"content-length", str(len(answer.body)).encode()), *answer.headers]
        if answer.content_type.startswith(b"text/html"):
            headers += [*SECURITY_HEADERS, (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        method, path = scope["method"], scope["path"]
        route = dashboard_route_for(method, path)
        if route is None:
            return self._error(404, "not_found", f"no page {method} {path}", page=True)
        request = Request(scope, route, _path_values(route.pattern, path), {},
                          _headers(scope))
        try:
            request.query = _query(scope)  # 400 for a control character, like the API's
            refusal = await self._admit(request, receive)
            if refusal is not None:
                return refusal
            return await self._handlers[(route.method, route.pattern)](request)
        except HttpError as error:
            return self._error(error.status, error.code, error.message,
                               page=not request.from_htmx)

    async def _admit(self, request: Request, receive: Receive) -> Answer | None:
        """Who is asking and whether they may: None to go on, else the refusal."""
        if request.route.method == "POST":
            request.form = await _read_form(request.scope, receive)
            if not _same_origin(request):
                raise HttpError(403, "forbidden", "cross-site request refused")
        if request.route.mirrors == PUBLIC:
            return None
        session = self.sessions.get(_cookie(request.headers, SESSION_COOKIE) or "")
        operator = None if session is None else self.ops.operator_named(session.operator)
        if session is None or operator is None:
            if session is not None:  # the operator is no longer configured
                self.sessions.end_all_of(session.operator)
            return _to_sign_in(request)
        request.session, request.operator = session, operator
        if request.route.method == "POST" and not SessionStore.csrf_ok(
                session, request.headers.get("x-csrf-token") or request.form.get("csrf")):
            raise HttpError(403, "forbidden", "missing or wrong CSRF token: reload the page")
        if request.route.mirrors != SIGNED_IN:
            assert not isinstance(request.route.mirrors, str)
            check_roles(operator, request.route.mirrors)  # the operator API's own check
        return None

    async def _ask(self, request: Request, method: str, path: str, *, query: str = "",
                   body: Any = None) -> Any:
        """The operator API's answer to this operator (see OpsApi.call_as)."""
        _, operator = request.signed_in()
        raw = b"" if body is None else JSON.encode(body)
        try:
            return await self.ops.call_as(operator, method, path, query=query, body=raw)
        except DATABASE_DOWN as exc:
            log.warning("dashboard %s %s: database unavailable (%s)", method,
                        path.split("/")[2] if path.count("/") > 1 else path,
                        type(exc).__name__)
            raise HttpError(503, "unavailable", "database unavailable; retry later") from exc

    # ---- rendering --------------------------------------------------------------------------

    def _render(self, template: str, status: int = 200, **context: Any) -> Answer:
        body = self.templates.get_template(template).render(**context).encode()
        return Answer(status, body)

    def _page(self, template: str, request: Request, status: int = 200,
              **context: Any) -> Answer:
        session, operator = request.signed_in()
        return self._render(template, status, operator=operator, csrf=session.csrf_token,
                            can=self._abilities(operator), **context)

    def _error(self, status: int, code: str, message: str, *, page: bool) -> Answer:
        template = "error_page.html" if page else "error.html"
        return self._render(template, status, status_code=status, code=code, message=message)

    @staticmethod
    def _abilities(operator: Operator) -> dict[str, bool]:
        """Which panels and buttons the page shows: exactly the routes it may call."""
        routes = {(r.method, r.pattern): r for r in DASHBOARD_ROUTES}
        return {name: may_call(operator.roles, routes[key]) for name, key in ABILITIES.items()}

    # ---- sign-in, sign-out, static files ----------------------------------------------------

    async def _login_form(self, request: Request) -> Answer:
        return self._render("login.html", message=None)

    async def _login(self, request: Request) -> Answer:
        token = request.form.get("token", "")
        operator = self.ops.operator_of_token(token) if token else None
        if operator is None:
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
            return self._render("login.html", 401, message="unknown token")
        session = self.sessions.create(operator.name)
        log.info("dashboard sign-in of %s", operator.name)
        return Answer(303, b"", headers=[
            (b"location", b"/dashboard/"),
            (b"set-cookie", _session_cookie(request, session.session_id)),
        ])

    async def _logout(self, request: Request) -> Answer:
        session, _ = request.signed_in()
        self.sessions.end(session.session_id)
        return Answer(303, b"", headers=[
            (b"location", b"/dashboard/login"),
            (b"set-cookie", _session_cookie(request, "", expire=True)),
        ])

    async def _static_file(self, request: Request) -> Answer:
        found = self.static.get(request.path_values["file"])
        if found is None:
            raise HttpError(404, "not_found", "no such file")
        body, content_type = found
        return Answer(200, body, content_type, [(b"cache-control", b"public, max-age=300"),
                                                (b"x-content-type-options", b"nosniff")])

    # ---- pages ------------------------------------------------------------------------------

    async def _index(self, request: Request) -> Answer:
        return self._page("index.html", request)

    async def _search(self, request: Request) -> Answer:
        """An id typed in the search box → its loan's or application's page."""
        wanted = request.query.get("id", "").strip()
        for kind, prefix in (("loan", "/dashboard/loans/"),
                             ("application", "/dashboard/applications/")):
            if shard_of_id(kind, wanted) is not None:
                location = prefix + urllib.parse.quote(wanted, safe="")
                return Answer(303, b"", headers=[(b"location", location.encode())])
        raise HttpError(400, "invalid_request",
                        "type a loan id (LN-0000-0000000000) or an application id (AP-…)")

    async def _loan_page(self, request: Request) -> Answer:
        loan_id = request.path_values["loan_id"]
        check_text(loan_id, "loan_id")
        detail = await self._ask(request, "GET", f"/ops/loans/{loan_id}")
        application = None
        _, operator = request.signed_in()
        if self._abilities(operator)["applications"]:
            application = await self._ask(
                request, "GET", f"/ops/applications/{detail['loan']['application_id']}")
        return self._page("loan.html", request, detail=detail, application=application)

    async def _application_page(self, request: Request) -> Answer:
        application_id = request.path_values["application_id"]
        check_text(application_id, "application_id")
        application = await self._ask(request, "GET", f"/ops/applications/{application_id}")
        return self._page("application.html", request, application=application)

    # ---- panels -----------------------------------------------------------------------------

    async def _header_panel(self, request: Request) -> Answer:
        answer = await self._ask(request, "GET", "/ops/business-date")
        return self._render("panels/header.html", business_date=answer["business_date"],
                            ready=self.readiness.is_ready())

    async def _cluster_panel(self, request: Request) -> Answer:
        view = await self._ask(request, "GET", "/ops/cluster")
        shards = health.shard_rows(view, self.sampler)
        dependencies = health.dependency_health(self.readiness)
        latest = self.sampler.latest()
        return self._render(
            "panels/cluster.html", view=view, shards=shards, hosts=health.host_rows(view),
            dependencies=dependencies, limits=self.limits,
            alerts=health.alerts(view, shards, dependencies, self.limits),
            routes=sorted(latest.routes.items()) if latest else [],
            ray_call=latest, sample_every_s=self.sampler.every_s)

    async def _chart_data(self, request: Request) -> Answer:
        await self._ask(request, "GET", "/ops/business-date")  # the session still works
        return Answer(200, JSON.encode(self.sampler.chart_data()), b"application/json",
                      [(b"cache-control", b"no-store")])

    async def _business_panel(self, request: Request) -> Answer:
        summary = await self._ask(request, "GET", "/ops/business-summary")
        return self._render("panels/business.html", s=summary, reasons_shown=REASONS_SHOWN)

    async def _eod_panel(self, request: Request, message: str | None = None,
                         status: int = 200) -> Answer:
        eod = await self._ask(request, "GET", "/ops/eod")
        return self._page("panels/eod.html", request, status, eod=eod,
                          launch=self.eod_launch, message=message)

    async def _run_eod(self, request: Request) -> Answer:
        """Start the end of day the operator confirmed (of the date the page showed) and
        answer at once with the panel; its progress then shows as the panel refreshes."""
        _, operator = request.signed_in()
        business_date = request.form.get("business_date", "")
        try:
            date.fromisoformat(business_date)
        except ValueError as exc:
            raise HttpError(400, "invalid_request", "business_date must be a YYYY-MM-DD date",
                            "business_date") from exc
        if self.eod_launch is not None and self.eod_launch.running:
            return await self._eod_panel(
                request, "an end of day started from the dashboard is still running", 409)
        status = await self._ask(request, "GET", "/ops/eod")
        if status["running"]:
            return await self._eod_panel(request, "an end of day is already running", 409)
        launch = EodLaunch(operator.name, business_date, time.time())
        launch.task = asyncio.create_task(self._eod_run(request, launch))
        self.eod_launch = launch
        log.info("end of day of %s started from the dashboard by %s", business_date,
                 operator.name)
        await asyncio.sleep(0)  # let the run take its lock before the panel reads it
        return await self._eod_panel(request, f"end of day of {business_date} started")

    async def _eod_run(self, request: Request, launch: EodLaunch) -> None:
        try:
            report = await self._ask(request, "POST", "/ops/eod",
                                     body={"business_date": launch.business_date})
            launch.outcome = (f"done: {report['loans_processed']} loans, business date now "
                              f"{report['next_business_date']}")
        except HttpError as error:
            launch.outcome = f"failed: {error.status} {error.code}: {error.message}"
        except Exception:  # a background task: nobody else would see a bug
            log.exception("end of day from the dashboard failed on a bug")
            launch.outcome = "failed: internal error (see the gateway's log)"

    async def _collections_panel(self, request: Request) -> Answer:
        summary = await self._ask(request, "GET", "/ops/collections/summary")
        return self._render("panels/collections.html", summary=summary)

    async def _cases_panel(self, request: Request) -> Answer:
        _, operator = request.signed_in()
        query = {"limit": str(CASES_SHOWN)}
        own_only = not self._abilities(operator)["collections"]  # a collector: their cases
        if own_only:
            query["assignee"] = f"collector:{operator.name}"
        cases = await self._ask(request, "GET", "/ops/collections/cases",
                                query=urllib.parse.urlencode(query))
        return self._page("panels/cases.html", request, cases=cases["cases"],
                          own_only=own_only)

    async def _reviews_panel(self, request: Request, message: str | None = None,
                             status: int = 200) -> Answer:
        page = await self._ask(request, "GET", "/ops/reviews", query=f"limit={REVIEWS_SHOWN}")
        return self._page("panels/reviews.html", request, status, reviews=page["reviews"],
                          more=page["next_after"] is not None, message=message)

    async def _review_action(self, request: Request, action: str, body: Any) -> Answer:
        application_id = request.path_values["application_id"]
        try:
            answer = await self._ask(request, "POST",
                                     f"/ops/reviews/{application_id}/{action}", body=body)
        except HttpError as error:
            if error.status in (401, 403) and error.code == "forbidden":
                raise  # a role refusal is the route's answer, not a message in the panel
            return await self._reviews_panel(
                request, f"{application_id}: {error.code}: {error.message}", error.status)
        return await self._reviews_panel(request, _review_message(action, application_id,
                                                                  answer))

    async def _claim(self, request: Request) -> Answer:
        return await self._review_action(request, "claim", None)

    async def _release(self, request: Request) -> Answer:
        return await self._review_action(request, "release", None)

    async def _decide(self, request: Request) -> Answer:
        reasons = [r for r in request.form.get("reasons", "").replace(",", " ").split() if r]
        body = {"decision": request.form.get("decision", ""), "reasons": reasons,
                "note": request.form.get("note", "")}
        return await self._review_action(request, "decision", body)

    async def _blacklist_panel(self, request: Request, message: str | None = None,
                               status: int = 200) -> Answer:
        page = await self._ask(request, "GET", "/ops/blacklist",
                               query=f"limit={BLACKLIST_SHOWN}")
        return self._page("panels/blacklist.html", request, status, page=page,
                          message=message)

    async def _blacklist_add(self, request: Request) -> Answer:
        body = {name: request.form.get(name, "") for name in ("kind", "value", "reason")}
        try:
            answer = await self._ask(request, "POST", "/ops/blacklist", body=body)
        except HttpError as error:
            if error.code == "forbidden":
                raise
            return await self._blacklist_panel(request, f"{error.code}: {error.message}",
                                               error.status)
        done = "added" if answer["created"] else "reason replaced"
        entry = answer["entry"]
        return await self._blacklist_panel(request, f"{entry['kind']} {entry['value']}: {done}")


# ---- helpers ----------------------------------------------------------------------------------


def _environment() -> Environment:
    env = Environment(  # autoescape on: every value is escaped unless a template says not
        loader=FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(fen=_fen, num=_num, ms=_ms, mib=_mib, utc=_utc, pct=_pct)
    return env


def _static_files(directory: Path) -> dict[str, tuple[bytes, bytes]]:
    """Every file of the directory, read once: the only names /dashboard/static/ serves."""
    return {
        path.name: (path.read_bytes(), STATIC_TYPES[path.suffix].encode())
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix in STATIC_TYPES
    }


def _path_values(pattern: str, path: str) -> dict[str, str]:
    wanted, parts = pattern.strip("/").split("/"), path.strip("/").split("/")
    return {w[1:-1]: part for w, part in zip(wanted, parts, strict=False) if w.startswith("{")}


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    parsed = urllib.parse.parse_qs(raw, max_num_fields=FORM_FIELDS_MAX)
    values = {name: found[0] for name, found in parsed.items()}
    for name, value in values.items():
        check_text(value, name)
    return values


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def _read_form(scope: Scope, receive: Receive) -> dict[str, str]:
    try:
        raw = await read_body(scope, receive, FORM_BODY_MAX_BYTES)
    except BodyTooLarge as exc:
        raise HttpError(413, "payload_too_large",
                        f"forms are limited to {FORM_BODY_MAX_BYTES} bytes") from exc
    try:
        text = raw.decode("utf-8")
        parsed = urllib.parse.parse_qs(text, keep_blank_values=True,
                                       max_num_fields=FORM_FIELDS_MAX, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, "invalid_request", "the form is not valid") from exc
    return {name: values[0] for name, values in parsed.items()}


def _same_origin(request: Request) -> bool:
    """A browser names the page a POST comes from; it must be this host (a request without
    Origin is not a cross-site browser request: curl, or an old browser's same-origin)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return urllib.parse.urlsplit(origin).netloc == host and host != ""


def _cookie(headers: dict[str, str], name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _session_cookie(request: Request, value: str, *, expire: bool = False) -> bytes:
    attributes = [f"{SESSION_COOKIE}={value}", "Path=/dashboard", "HttpOnly", "SameSite=Strict"]
    if request.scope.get("scheme") == "https":
        attributes.append("Secure")
    if expire:
        attributes.append("Max-Age=0")
    return "; ".join(attributes).encode()


def _to_sign_in(request: Request) -> Answer:
    if request.from_htmx:  # htmx follows this header with a full page load
        return Answer(401, b"", headers=[(b"hx-redirect", b"/dashboard/login")])
    return Answer(303, b"", headers=[(b"location", b"/dashboard/login")])


def _review_message(action: str, application_id: str, answer: dict[str, Any]) -> str:
    if action == "claim":
        return f"{application_id}: claimed until {answer['expires_at']}"
    if action == "release":
        return f"{application_id}: " + ("released" if answer["released"] else "was not yours")
    if answer["final"]:
        return f"{application_id}: {answer['status']} (final)"
    return f"{application_id}: proposal recorded; another officer must confirm it"


def _fen(value: int | None) -> str:
    """Integer fen as yuan with thousands separators: 123456789 → 1,234,567.89."""
    if value is None:
        return "–"
    sign = "-" if value < 0 else ""
    yuan, fen = divmod(abs(int(value)), 100)
    return f"{sign}{yuan:,}.{fen:02d}"


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f} ms"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} %"


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f} MiB"


def _utc(value: float | str | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
