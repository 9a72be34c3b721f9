"""Input at the edge (issue 12): control characters are refused (400, the field named) on
both ports, whether in a body, a query parameter or a path segment, before they reach
Postgres; error bodies carry `code`, `message` and `field` in our own words; and a bug is
answered 500 in the error envelope, never as plain text.

Runs against the session's running system."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from factories import app_body, assert_error, ops_auth, submit

from gateway.ops_api import OpsApi
from gateway.partner_api import PartnerApi
from loadtests.client import PartnerClient


def _app(system: Any, kind: type) -> Any:
    return next(server.config.app for server in system.system._servers
                if isinstance(server.config.app, kind))


# ---- control characters: the operator API ----------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "device", "value": "a\u0000b", "reason": "fraud"}, "value"),
    ({"kind": "device", "value": "d-nul-1", "reason": "a\u0000b"}, "reason"),
    ({"kind": "device", "value": "d-ctl-1", "reason": "line\nbreak"}, "reason"),
    ({"kind": "phone", "value": "1380013800\u0000", "reason": "fraud"}, "value"),
])
def test_a_blacklist_body_with_a_control_character_is_400(
    ops: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = ops.post("/ops/blacklist", json=body, headers=ops_auth())
    error = assert_error(response, 400, "invalid_request", field)
    assert error["message"] == f"{field} must not contain control characters"


@pytest.mark.parametrize(("method", "path", "field"), [
    ("DELETE", "/ops/blacklist/device/a%00b", "value"),
    ("DELETE", "/ops/blacklist/dev%00ice/x", "kind"),
    ("GET", "/ops/audit?target=%00", "target"),
    ("GET", "/ops/audit?target=application:AP-0001-0000000001%0A", "target"),
    ("GET", "/ops/connector-requests?after=%00", "after"),
    ("GET", "/ops/ledger/trial-balance?book=%00", "book"),
    ("GET", "/ops/ledger/reconciliation?book=own%01", "book"),
    ("GET", "/ops/ledger/daily-summary?business_date=2026-11-29&book=%00", "book"),
    ("GET", "/ops/blacklist?kind=%00", "kind"),
    ("GET", "/ops/reviews?after=%00", "after"),
    ("GET", "/ops/collections/cases?assignee=collector:%00", "assignee"),
    ("GET", "/ops/collections/cases?after=3:CC-%00", "after"),
])
def test_a_control_character_in_a_query_or_path_is_400(
    ops: httpx.Client, method: str, path: str, field: str
) -> None:
    response = ops.request(method, path, headers=ops_auth())
    assert_error(response, 400, "invalid_request", field)


@pytest.mark.parametrize(("path", "field"), [
    ("/ops/blacklist?limit=" + "9" * 5000, "limit"),  # int() refuses > 4,300 digits
    ("/ops/ledger/reconciliation?shard=" + "1" * 5000, "shard"),
    ("/ops/collections/cases?after=99999999999:CC-0000-0000000001", "after"),  # > int4
])
def test_a_huge_number_in_a_query_is_400(ops: httpx.Client, path: str, field: str) -> None:
    assert_error(ops.get(path, headers=ops_auth()), 400, "invalid_request", field)


def test_a_nul_in_a_collections_note_is_400(ops: httpx.Client) -> None:
    response = ops.post("/ops/collections/cases/CC-0000-9999999999/notes",
                        json={"text": "a\u0000b"}, headers=ops_auth())
    assert_error(response, 400, "invalid_request", "text")


# ---- control characters: the partner API ------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"applicant": {"name": "张\u0000三"}}, "applicant.name"),
    ({"applicant": {"name": "张三\n"}}, "applicant.name"),
    ({"merchant_id": "m\u0000"}, "merchant_id"),
    ({"merchant_id": "m\u0085"}, "merchant_id"),
    ({"purpose": "con\u0007sumption"}, "purpose"),
    ({"device": {"device_id": "d\u0000"}}, "device.device_id"),
    ({"device": {"ip": "10.0.0.1\u0000"}}, "device.ip"),
])
def test_an_application_with_a_control_character_is_400_and_changes_nothing(
    demo: PartnerClient, change: dict[str, Any], field: str
) -> None:
    body = app_body()
    for key, value in change.items():
        body[key] = {**body[key], **value} if isinstance(value, dict) else value
    response = demo.post("/v1/applications", body)
    assert_error(response, 400, "invalid_request", field)
    # Nothing happened: the partner_application_id is still free.
    fixed = app_body()
    fixed["partner_application_id"] = body["partner_application_id"]
    assert submit(demo, fixed)["status"] == "approved"


def test_an_idempotency_key_with_a_control_character_is_400(demo: PartnerClient) -> None:
    response = demo.post("/v1/loans", {"application_id": "AP-0000-0000000001"}, key="k\tx")
    assert_error(response, 400, "invalid_request", "Idempotency-Key")


def test_a_nul_in_a_partner_path_is_not_found(demo: PartnerClient) -> None:
    assert_error(demo.get("/v1/customers/CU-0000-00000000%00"), 404, "not_found")


# ---- the error body: always code, message and field; our words ---------------------------------


@pytest.mark.parametrize(("raw", "field", "message"), [
    (b'{"application_id": ', None, "body is not valid JSON"),
    (b"[]", None, "body must be an object"),
    (b"{}", "application_id", "application_id is required"),
    (b'{"application_id": 7}', "application_id", "application_id must be a string"),
    (b'{"application_id": "AP-0000-0000000001", "amount": 5}', "amount",
     "amount is not allowed"),
])
def test_partner_refusals_are_in_our_words(
    demo: PartnerClient, raw: bytes, field: str | None, message: str
) -> None:
    error = assert_error(demo.request("POST", "/v1/loans", raw=raw), 400, "invalid_request")
    assert (error["field"], error["message"]) == (field, message)


def test_amount_below_one_says_so(demo: PartnerClient) -> None:
    response = demo.post("/v1/loans/LN-0000-0000000001/repayments",
                         {"amount": 0, "external_ref": "R-1"})
    error = assert_error(response, 400, "invalid_request", "amount")
    assert error["message"] == "amount must be ≥ 1"


def test_an_error_without_a_field_has_field_null(
    demo: PartnerClient, ops: httpx.Client
) -> None:
    for response in (demo.get("/v1/loans/LN-0000-9999999999"), ops.get("/ops/nothing"),
                     demo.get("/v1/nothing")):
        assert assert_error(response, 404, "not_found")["field"] is None


# ---- a bug: 500 in the envelope ---------------------------------------------------------------


class _Broken:
    """Stands in for a collaborator and fails the way a bug would."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"bug in {name}")


@pytest.fixture
def broken_collaborators(system: Any) -> Iterator[None]:
    partner, operator = _app(system, PartnerApi), _app(system, OpsApi)
    guard, cluster_view = partner.guard, operator.cluster_view
    partner.guard = _Broken()

    async def failing_view() -> dict[str, Any]:
        raise KeyError("bug")

    operator.cluster_view = failing_view
    yield
    partner.guard, operator.cluster_view = guard, cluster_view


def test_a_bug_is_answered_500_in_the_envelope_on_both_ports(
    demo: PartnerClient, ops: httpx.Client, broken_collaborators: None
) -> None:
    for response in (demo.get("/v1/loans/LN-0000-9999999999"),
                     ops.get("/ops/cluster", headers=ops_auth())):
        error = assert_error(response, 500, "internal_error")
        assert error["field"] is None
        assert "bug" not in error["message"]
