"""GET /ops/applications/{id}: the decision and the trace that explains it, for operators
(regulators ask why a customer was declined). Never any personal data in clear."""

from __future__ import annotations

import httpx
from factories import app_body, fresh_id, ops_auth, submit

from loadtests.client import PartnerClient

RULE_SETS = {"admission", "anti_fraud", "decision"}


def _detail(ops: httpx.Client, application_id: str) -> dict:
    response = ops.get(f"/ops/applications/{application_id}", headers=ops_auth())
    assert response.status_code == 200, response.text
    return response.json()


def test_an_approval_shows_versions_score_tier_and_no_personal_data(
    demo: PartnerClient, ops: httpx.Client
) -> None:
    body = app_body()
    application = submit(demo, body)
    assert application["status"] == "approved"
    detail = _detail(ops, application["application_id"])
    trace = detail["trace"]
    assert detail["status"] == trace["status"] == "approved"
    assert set(trace["versions"]) >= RULE_SETS
    assert all(isinstance(v, int) and v >= 1 for v in trace["versions"].values())
    assert trace["stopped_at"] is None and trace["reasons"] == []
    assert isinstance(trace["score"], int) and trace["score_breakdown"]
    assert trace["tier"] and trace["annual_rate_bps"] == application["decision"][
        "annual_rate_bps"]
    assert trace["credit_limit"] == application["decision"]["credit_limit"]
    text = str(detail)
    for secret in (body["applicant"]["id_number"], body["applicant"]["phone"],
                   body["applicant"]["name"]):
        assert secret not in text, "the trace must hold no personal data in clear"


def test_a_decline_names_the_rule_that_fired_and_where_it_stopped(
    demo: PartnerClient, ops: httpx.Client
) -> None:
    application = submit(demo, app_body(id_no=fresh_id(sequence=950)))
    assert application["status"] == "declined"
    assert application["decision"]["reasons"] == ["bureau_bad"]
    trace = _detail(ops, application["application_id"])["trace"]
    assert trace["stopped_at"] == "decision"
    fired = {(f["stage"], f["rule_id"], f["reason"], f["action"]) for f in trace["fired"]}
    assert any(stage == "decision" and reason == "bureau_bad" and action == "decline"
               for stage, _, reason, action in fired), fired


def test_the_trace_outlives_later_updates_of_the_application(
    demo: PartnerClient, ops: httpx.Client
) -> None:
    """Shards keep applications without their trace; booking rewrites the application row
    (loan_id) and must leave the stored trace as it was."""
    application = submit(demo, app_body())
    before = _detail(ops, application["application_id"])
    booked = demo.post("/v1/loans", {"application_id": application["application_id"]})
    assert booked.status_code == 201, booked.text
    after = _detail(ops, application["application_id"])
    assert after["loan_id"] == booked.json()["loan_id"]
    assert after["trace"] == before["trace"] and after["trace"] is not None


def test_unknown_malformed_and_unauthenticated(ops: httpx.Client) -> None:
    assert ops.get("/ops/applications/AP-0000-0000000001").status_code == 401
    for missing in ("AP-0000-9999999999", "nonsense", "AP-9999-0000000001", "LN-0000-0000000001"):
        response = ops.get(f"/ops/applications/{missing}", headers=ops_auth())
        assert response.status_code == 404, (missing, response.text)
        assert response.json()["error"]["code"] == "not_found"
