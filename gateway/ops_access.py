"""Who may call what on the operator API: the one route → roles table (least privilege).

`OpsApi` looks every request up here before any handler runs: an unknown route is 404, an
operator with none of the route's roles (and not `admin`) is 403 `forbidden`. Handlers do no
role checks of their own; the only finer rule left to them is data-dependent (a collector
acts only on the cases assigned to them, checked by the case's shard). docs/operations.md
("Operator roles") shows this table; tests/integration/test_ops_roles.py calls every route
with every role.
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
        if method != self.method:
            return False
        wanted, parts = _segments(self.pattern), _segments(path)
        if wanted and wanted[-1].endswith("*}"):
            fixed = wanted[:-1]
            return len(parts) >= len(fixed) and _same(fixed, parts[:len(fixed)])
        return len(parts) == len(wanted) and _same(wanted, parts)


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
    _route("GET", "/ops/cluster", VIEWER),
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
)


def route_for(method: str, path: str) -> OpsRoute | None:
    """The route a request is for, or None (404)."""
    return next((route for route in OPS_ROUTES if route.matches(method, path)), None)


def may_call(roles: frozenset[str], route: OpsRoute) -> bool:
    return not roles.isdisjoint(route.roles)


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _same(pattern: list[str], parts: list[str]) -> bool:
    return all(p.startswith("{") or p == part for p, part in zip(pattern, parts, strict=True))
