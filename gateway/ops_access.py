"""Who may call what on the operator API: the one route → roles table (least privilege).

`OpsApi` looks every request up here before any handler runs: an unknown route is 404, an
operator with none of the route's roles (and not `admin`) is 403 `forbidden`. Handlers do no
role checks of their own; the only finer rule left to them is data-dependent (a collector
acts only on the cases assigned to them, checked by the case's shard). docs/operations.md
("Operator roles") shows this table; tests/integration/test_ops_roles.py calls every route
with every role.

The operator dashboard's routes (DASHBOARD_ROUTES, below) are a second table with no roles
of its own: each row names the operator API route it mirrors and takes that route's roles;
tests/integration/test_dashboard.py calls every one with every role.
"""

from __future__ import annotations

from dataclasses import dataclass

VIEWER = "viewer"  # finance, audit, on-call: the books, the system, the audit trail
OPERATOR = "operator"  # the collections team lead
RISK_OFFICER = "risk_officer"  # decisions, reviews, blacklists
COLLECTOR = "collector"  # works the collection cases assigned to them
ADMIN = "admin"  # everything
ROLES = (VIEWER, OPERATOR, RISK_OFFICER, COLLECTOR, ADMIN)


@dataclass(frozen=True)
class OpsRoute:
    method: str
    # "/ops/blacklist/{kind}/{value*}": `{name}` matches one segment, a last `{name*}` the
    # rest of the path (zero or more segments; a device id may hold "/", sent as %2F).
    pattern: str
    roles: frozenset[str]

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and _path_matches(self.pattern, path)


def _route(method: str, pattern: str, *roles: str) -> OpsRoute:
    return OpsRoute(method, pattern, frozenset((*roles, ADMIN)))


# admin is added to every route by _route.
OPS_ROUTES = (
    _route("GET", "/ops/business-date", VIEWER, OPERATOR, RISK_OFFICER, COLLECTOR),
    _route("GET", "/ops/eod", VIEWER),
    _route("POST", "/ops/eod"),
    _route("POST", "/ops/seed"),
    _route("GET", "/ops/ledger/trial-balance", VIEWER),
    _route("GET", "/ops/ledger/daily-summary", VIEWER),
    _route("GET", "/ops/ledger/reconciliation", VIEWER),
    _route("GET", "/ops/settlements", VIEWER),
    _route("GET", "/ops/settlements/{book}/{business_date}", VIEWER),
    _route("GET", "/ops/cluster", VIEWER),
    # shard handoff (cluster/coordinator.py): admin only, audited as shard.move / node.drain
    _route("POST", "/ops/cluster/shards/{shard_id}/move"),
    _route("POST", "/ops/cluster/nodes/{node_id}/drain"),
    _route("GET", "/ops/applications/{application_id}", RISK_OFFICER),
    _route("GET", "/ops/blacklist", RISK_OFFICER),
    _route("POST", "/ops/blacklist", RISK_OFFICER),
    _route("DELETE", "/ops/blacklist/{kind}/{value*}", RISK_OFFICER),
    _route("GET", "/ops/reviews", RISK_OFFICER),
    _route("POST", "/ops/reviews/{application_id}/claim", RISK_OFFICER),
    _route("POST", "/ops/reviews/{application_id}/release", RISK_OFFICER),
    _route("POST", "/ops/reviews/{application_id}/decision", RISK_OFFICER),
    _route("GET", "/ops/audit", VIEWER, OPERATOR, RISK_OFFICER),
    _route("GET", "/ops/collections/cases", OPERATOR, COLLECTOR),
    _route("GET", "/ops/collections/cases/{case_id}", OPERATOR, COLLECTOR),
    _route("GET", "/ops/collections/summary", OPERATOR),
    _route("POST", "/ops/collections/cases/{case_id}/assign", OPERATOR),
    _route("POST", "/ops/collections/cases/{case_id}/notes", OPERATOR, COLLECTOR),
    _route("POST", "/ops/collections/cases/{case_id}/contacts", OPERATOR, COLLECTOR),
    _route("POST", "/ops/collections/cases/{case_id}/promises", OPERATOR, COLLECTOR),
    _route("GET", "/ops/connector-requests", OPERATOR),
    _route("POST", "/ops/outbox/drain"),
    _route("GET", "/ops/loans/{loan_id}", VIEWER, OPERATOR, RISK_OFFICER),
    _route("GET", "/ops/business-summary", VIEWER, RISK_OFFICER),
    # partner webhooks (gateway/webhooks_desk.py): operators watch and redeliver events;
    # endpoints (URLs and secrets) are an admin's
    _route("GET", "/ops/webhooks/events", VIEWER, OPERATOR),
    _route("GET", "/ops/webhooks/events/{event_id}", VIEWER, OPERATOR),
    _route("POST", "/ops/webhooks/events/{event_id}/redeliver", OPERATOR),
    _route("GET", "/ops/webhooks/endpoints", VIEWER, OPERATOR),
    _route("PUT", "/ops/webhooks/endpoints/{partner_id}"),
    _route("DELETE", "/ops/webhooks/endpoints/{partner_id}"),
)


# ---- the operator dashboard (/dashboard/, gateway/dashboard) ------------------------------
#
# The dashboard is the operator API in a browser: each of its panels and actions shows or
# does what ONE operator API route does, through that route's handler, and takes its roles
# from that route's row above, so the two can never disagree. A role that may not call the
# route neither sees the panel or button (the page is rendered from this table) nor gets
# past the dashboard route (403). The session pages (sign-in, the page shell, sign-out)
# need only a signed-in operator; the sign-in form and the static files need nobody.
PUBLIC = "public"  # anyone: the sign-in form and its POST, static files
SIGNED_IN = "signed_in"  # any operator with a session, whatever its roles


@dataclass(frozen=True)
class DashboardRoute:
    method: str
    pattern: str  # same pattern syntax as OpsRoute
    # The operator API route whose roles apply (and whose handler answers); or PUBLIC /
    # SIGNED_IN for the session pages, which show nothing of the book by themselves.
    mirrors: OpsRoute | str

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and _path_matches(self.pattern, path)

    @property
    def roles(self) -> frozenset[str]:
        """The roles that may call it (every role for the session pages)."""
        return self.mirrors.roles if isinstance(self.mirrors, OpsRoute) else frozenset(ROLES)


def ops_route(method: str, pattern: str) -> OpsRoute:
    """The row of OPS_ROUTES for `method` `pattern` (exactly as written there)."""
    for route in OPS_ROUTES:
        if (route.method, route.pattern) == (method, pattern):
            return route
    raise KeyError(f"no operator route {method} {pattern}")


def _panel(method: str, pattern: str, mirrors: tuple[str, str]) -> DashboardRoute:
    return DashboardRoute(method, pattern, ops_route(*mirrors))


DASHBOARD_ROUTES = (
    DashboardRoute("GET", "/dashboard/login", PUBLIC),
    DashboardRoute("POST", "/dashboard/login", PUBLIC),
    DashboardRoute("GET", "/dashboard/static/{file}", PUBLIC),
    DashboardRoute("GET", "/dashboard/", SIGNED_IN),
    DashboardRoute("POST", "/dashboard/logout", SIGNED_IN),
    # Only redirects to the loan's or application's page, whose own row decides.
    DashboardRoute("GET", "/dashboard/search", SIGNED_IN),
    _panel("GET", "/dashboard/panels/header", ("GET", "/ops/business-date")),
    _panel("GET", "/dashboard/panels/cluster", ("GET", "/ops/cluster")),
    _panel("GET", "/dashboard/charts", ("GET", "/ops/cluster")),
    _panel("GET", "/dashboard/panels/business", ("GET", "/ops/business-summary")),
    _panel("GET", "/dashboard/panels/eod", ("GET", "/ops/eod")),
    _panel("POST", "/dashboard/eod/run", ("POST", "/ops/eod")),
    _panel("GET", "/dashboard/panels/collections", ("GET", "/ops/collections/summary")),
    _panel("GET", "/dashboard/panels/cases", ("GET", "/ops/collections/cases")),
    _panel("GET", "/dashboard/panels/reviews", ("GET", "/ops/reviews")),
    _panel("POST", "/dashboard/reviews/{application_id}/claim",
           ("POST", "/ops/reviews/{application_id}/claim")),
    _panel("POST", "/dashboard/reviews/{application_id}/release",
           ("POST", "/ops/reviews/{application_id}/release")),
    _panel("POST", "/dashboard/reviews/{application_id}/decision",
           ("POST", "/ops/reviews/{application_id}/decision")),
    _panel("GET", "/dashboard/panels/blacklist", ("GET", "/ops/blacklist")),
    _panel("POST", "/dashboard/blacklist", ("POST", "/ops/blacklist")),
    _panel("GET", "/dashboard/loans/{loan_id}", ("GET", "/ops/loans/{loan_id}")),
    _panel("GET", "/dashboard/applications/{application_id}",
           ("GET", "/ops/applications/{application_id}")),
)


def dashboard_route_for(method: str, path: str) -> DashboardRoute | None:
    """The dashboard route a request is for, or None (404)."""
    return next((route for route in DASHBOARD_ROUTES if route.matches(method, path)), None)


def route_for(method: str, path: str) -> OpsRoute | None:
    """The route a request is for, or None (404)."""
    return next((route for route in OPS_ROUTES if route.matches(method, path)), None)


def may_call(roles: frozenset[str], route: OpsRoute | DashboardRoute) -> bool:
    return not roles.isdisjoint(route.roles)


def _path_matches(pattern: str, path: str) -> bool:
    wanted, parts = _segments(pattern), _segments(path)
    if wanted and wanted[-1].endswith("*}"):
        fixed = wanted[:-1]
        return len(parts) >= len(fixed) and _same(fixed, parts[:len(fixed)])
    return len(parts) == len(wanted) and _same(wanted, parts)


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _same(pattern: list[str], parts: list[str]) -> bool:
    return all(p.startswith("{") or p == part for p, part in zip(pattern, parts, strict=True))
