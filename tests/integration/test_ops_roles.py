"""Operator roles (docs/operations.md "Operator roles", gateway/ops_access.py): every
route of the operator API called by an operator of each single role. A role the route's
table row lacks gets 403 `forbidden`; one it has gets past the check (the requests are
chosen to stop at validation or an unknown id afterwards, so nothing is written).

Runs against the session's system, with one operator per role added for the test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from factories import assert_error, ops_auth

from gateway.ops_access import ADMIN, OPS_ROUTES, ROLES, OpsRoute
from gateway.ops_api import Operator, OpsApi

TOKENS = {role: f"{role}-{uuid.uuid4().hex}" for role in ROLES}
UNKNOWN_APPLICATION = "AP-0000-9999999999"
UNKNOWN_CASE = "CC-0000-9999999999"
UNKNOWN_LOAN = "LN-0000-9999999999"
UNKNOWN_EVENT = "EV-0000-9999999999"

# One request per route: (path with query, JSON body or None). Writes carry a body the
# handler refuses (400) or name an object that does not exist (404), so an allowed call
# changes nothing.
REQUESTS: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/ops/business-date"): ("/ops/business-date", None),
    ("GET", "/ops/eod"): ("/ops/eod", None),
    ("POST", "/ops/eod"): ("/ops/eod", {"business_date": "not-a-date"}),
    ("POST", "/ops/seed"): ("/ops/seed", {"loans": "many"}),
    ("GET", "/ops/ledger/trial-balance"): ("/ops/ledger/trial-balance", None),
    ("GET", "/ops/ledger/daily-summary"): ("/ops/ledger/daily-summary", None),
    ("GET", "/ops/ledger/reconciliation"): ("/ops/ledger/reconciliation?shard=x", None),
    ("GET", "/ops/settlements"): ("/ops/settlements?business_date=x", None),
    ("GET", "/ops/settlements/{book}/{business_date}"):
        ("/ops/settlements/funder:nobody/2026-11-29", None),
    ("GET", "/ops/cluster"): ("/ops/cluster", None),
    ("POST", "/ops/cluster/shards/{shard_id}/move"): ("/ops/cluster/shards/x/move",
                                                      {"to": "nowhere"}),
    ("POST", "/ops/cluster/nodes/{node_id}/drain"): ("/ops/cluster/nodes/no-such-node/drain",
                                                     None),
    ("GET", "/ops/applications/{application_id}"):
        (f"/ops/applications/{UNKNOWN_APPLICATION}", None),
    ("GET", "/ops/blacklist"): ("/ops/blacklist", None),
    ("POST", "/ops/blacklist"): ("/ops/blacklist", {"kind": "passport", "value": "x",
                                                    "reason": "r"}),
    ("DELETE", "/ops/blacklist/{kind}/{value*}"): ("/ops/blacklist/passport/x", None),
    ("GET", "/ops/reviews"): ("/ops/reviews", None),
    ("POST", "/ops/reviews/{application_id}/claim"):
        (f"/ops/reviews/{UNKNOWN_APPLICATION}/claim", None),
    ("POST", "/ops/reviews/{application_id}/release"):
        (f"/ops/reviews/{UNKNOWN_APPLICATION}/release", None),
    ("POST", "/ops/reviews/{application_id}/decision"):
        (f"/ops/reviews/{UNKNOWN_APPLICATION}/decision", {"decision": "maybe"}),
    ("GET", "/ops/audit"): ("/ops/audit", None),
    ("GET", "/ops/collections/cases"): ("/ops/collections/cases", None),
    ("GET", "/ops/collections/cases/{case_id}"): (f"/ops/collections/cases/{UNKNOWN_CASE}",
                                                  None),
    ("GET", "/ops/collections/summary"): ("/ops/collections/summary", None),
    ("POST", "/ops/collections/cases/{case_id}/assign"):
        (f"/ops/collections/cases/{UNKNOWN_CASE}/assign", {}),
    ("POST", "/ops/collections/cases/{case_id}/notes"):
        (f"/ops/collections/cases/{UNKNOWN_CASE}/notes", {}),
    ("POST", "/ops/collections/cases/{case_id}/contacts"):
        (f"/ops/collections/cases/{UNKNOWN_CASE}/contacts", {}),
    ("POST", "/ops/collections/cases/{case_id}/promises"):
        (f"/ops/collections/cases/{UNKNOWN_CASE}/promises", {}),
    ("GET", "/ops/connector-requests"): ("/ops/connector-requests", None),
    ("POST", "/ops/outbox/drain"): ("/ops/outbox/drain", None),  # the session never ran EOD
    ("GET", "/ops/loans/{loan_id}"): (f"/ops/loans/{UNKNOWN_LOAN}", None),
    ("GET", "/ops/business-summary"): ("/ops/business-summary", None),
    ("GET", "/ops/webhooks/events"): ("/ops/webhooks/events", None),
    ("GET", "/ops/webhooks/events/{event_id}"): (f"/ops/webhooks/events/{UNKNOWN_EVENT}", None),
    ("POST", "/ops/webhooks/events/{event_id}/redeliver"):
        (f"/ops/webhooks/events/{UNKNOWN_EVENT}/redeliver", None),
    ("GET", "/ops/webhooks/endpoints"): ("/ops/webhooks/endpoints", None),
    ("PUT", "/ops/webhooks/endpoints/{partner_id}"):
        ("/ops/webhooks/endpoints/demo", {"url": "ftp://x", "secret": "short"}),
    ("DELETE", "/ops/webhooks/endpoints/{partner_id}"): ("/ops/webhooks/endpoints/nobody", None),
}


@pytest.fixture
def one_role_each(system: Any) -> Iterator[None]:
    app = next(server.config.app for server in system.system._servers
               if isinstance(server.config.app, OpsApi))
    added = [Operator(f"only-{role}", token, [role]) for role, token in TOKENS.items()]
    app.operators.extend(added)
    yield
    for operator in added:
        app.operators.remove(operator)


def test_every_route_has_a_request_here_and_in_the_openapi_document(ops: httpx.Client) -> None:
    """The table, this test and the published API list the same routes."""
    table = {(route.method, route.pattern) for route in OPS_ROUTES}
    assert table == set(REQUESTS)
    published = {
        (method.upper(), path)
        for path, operations in ops.get("/openapi.json").json()["paths"].items()
        if path.startswith("/ops/") for method in operations
    }
    assert {(method, pattern.replace("*}", "}")) for method, pattern in table} == published
    paths = ops.get("/openapi.json").json()["paths"]
    for route in OPS_ROUTES:
        operation = paths[route.pattern.replace("*}", "}")][route.method.lower()]
        assert set(operation["x-roles"]) == route.roles, route
        assert ("403" in operation["responses"]) is (route.roles != set(ROLES)), route


def test_admin_may_call_every_route() -> None:
    assert all(ADMIN in route.roles for route in OPS_ROUTES)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", OPS_ROUTES, ids=lambda r: f"{r.method} {r.pattern}")
def test_each_role_gets_exactly_the_routes_of_its_row(
    ops: httpx.Client, one_role_each: None, route: OpsRoute, role: str
) -> None:
    path, body = REQUESTS[(route.method, route.pattern)]
    response = ops.request(route.method, path, json=body, headers=ops_auth(TOKENS[role]))
    if role in route.roles:
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text
        if response.status_code == 404:  # an unknown object, never an unrouted request
            assert not response.json()["error"]["message"].startswith("no route"), response.text
    else:
        error = assert_error(response, 403, "forbidden")
        assert all(needed in error["message"] for needed in route.roles - {ADMIN})


@pytest.mark.parametrize(("role", "path"), [
    ("collector", "/ops/ledger/trial-balance"), ("collector", "/ops/cluster"),
    ("collector", f"/ops/applications/{UNKNOWN_APPLICATION}"), ("collector", "/ops/reviews"),
    ("collector", "/ops/blacklist"), ("collector", "/ops/audit?target=x"),
    ("viewer", f"/ops/applications/{UNKNOWN_APPLICATION}"), ("viewer", "/ops/blacklist"),
    ("operator", "/ops/ledger/trial-balance"), ("risk_officer", "/ops/cluster"),
])
def test_the_reads_of_issue_12_are_refused(
    ops: httpx.Client, one_role_each: None, role: str, path: str
) -> None:
    assert_error(ops.get(path, headers=ops_auth(TOKENS[role])), 403, "forbidden")


def test_an_unknown_route_is_404_before_the_token_is_looked_at(ops: httpx.Client) -> None:
    assert_error(ops.get("/ops/nothing-here"), 404, "not_found")
    assert_error(ops.put("/ops/blacklist", headers=ops_auth()), 404, "not_found")
