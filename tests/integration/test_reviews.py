"""Manual review queue (人工审核) on the operator API: claims, decisions, maker-checker, the
audit trail, and what partners see (API.md "Operator API", DOMAIN.md §6).

One system for the module, with a config file layered over the defaults (like `lendcore up
--config`): two risk officers, a viewer and an operator, a maker-checker amount between the
two review amounts used here, and a small page size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import RunningSystem, fresh_system
from conftest_redis import REDIS_URL
from factories import app_body, application_record, assert_error, book, submit

from loadtests.client import PartnerClient

OFFICER1 = "test-officer1-token"
OFFICER2 = "test-officer2-token"
VIEWER = "test-viewer-token"
OPERATOR = "test-operator-token"
MAKER_CHECKER_OVER = 7_000_000
SMALL = 6_000_000  # in review (> 5,000,000), one decision is final (≤ MAKER_CHECKER_OVER)
LARGE = 8_000_000  # in review, maker-checker
INCOME = 2_000_000  # limit 10,000,000: both amounts fit
PAGE_MAX = 5
CLAIM_TTL_S = 120
CONFIG = f"""
[review]
claim_ttl_s = {CLAIM_TTL_S}
maker_checker_amount_over = {MAKER_CHECKER_OVER}
page_max = {PAGE_MAX}

[[operators]]
name = "officer1"
token = "{OFFICER1}"
roles = ["risk_officer"]

[[operators]]
name = "officer2"
token = "{OFFICER2}"
roles = ["risk_officer"]

[[operators]]
name = "viewer1"
token = "{VIEWER}"
roles = ["viewer"]

[[operators]]
name = "operator1"
token = "{OPERATOR}"
roles = ["operator"]
"""


@pytest.fixture(scope="module")
def review_system(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    config: Path = tmp_path_factory.mktemp("review") / "review.toml"
    config.write_text(CONFIG, encoding="utf-8")
    with fresh_system(config) as running:
        yield running


@pytest.fixture
def ops(review_system: RunningSystem) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=review_system.system.ops_url, timeout=30)
    yield client
    client.close()


@pytest.fixture
def partner(review_system: RunningSystem) -> Iterator[PartnerClient]:
    client = review_system.client("demo")
    yield client
    client.close()


@pytest.fixture
def claims(review_system: RunningSystem) -> Iterator[redis.Redis]:
    """The shared Redis, to reach a claim key directly (this system's own prefix)."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claim_key(system: RunningSystem, application_id: str) -> str:
    return f"{system.system.settings.redis.key_prefix}review-claim:{application_id}"


def in_review(partner: PartnerClient, amount: int) -> dict[str, Any]:
    app = submit(partner, app_body(amount=amount, income=INCOME))
    assert app["status"] == "manual_review", app
    assert app["decision"]["reasons"] == ["amount_review"], app
    return app


def claim(ops: httpx.Client, application_id: str, token: str) -> httpx.Response:
    return ops.post(f"/ops/reviews/{application_id}/claim", headers=auth(token))


def claimed(ops: httpx.Client, application_id: str, token: str) -> dict[str, Any]:
    response = claim(ops, application_id, token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def decide(
    ops: httpx.Client, application_id: str, token: str, decision: str,
    reasons: list[str] | None = None, note: str = "",
) -> httpx.Response:
    body: dict[str, Any] = {"decision": decision, "note": note}
    if reasons is not None:
        body["reasons"] = reasons
    return ops.post(f"/ops/reviews/{application_id}/decision", json=body, headers=auth(token))


def decided(
    ops: httpx.Client, application_id: str, token: str, decision: str,
    reasons: list[str] | None = None, note: str = "",
) -> dict[str, Any]:
    response = decide(ops, application_id, token, decision, reasons, note)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def partner_view(partner: PartnerClient, application_id: str) -> dict[str, Any]:
    response = partner.get(f"/v1/applications/{application_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def queue(ops: httpx.Client, query: str = "") -> dict[str, Any]:
    response = ops.get(f"/ops/reviews{query}", headers=auth(OFFICER2))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def all_reviews(ops: httpx.Client, query: str = "") -> list[dict[str, Any]]:
    """Every page of the queue, following next_after."""
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        sep = "&" if query else ""
        page = queue(ops, f"?{query}{sep}limit=2{after}")
        assert len(page["reviews"]) <= 2
        items.extend(page["reviews"])
        if page["next_after"] is None:
            return items
        assert page["next_after"] == page["reviews"][-1]["application_id"]
        after = f"&after={page['next_after']}"


def queued(ops: httpx.Client, application_id: str) -> dict[str, Any] | None:
    return next((r for r in all_reviews(ops) if r["application_id"] == application_id), None)


def audit_trail(ops: httpx.Client, application_id: str) -> list[dict[str, Any]]:
    response = ops.get(f"/ops/audit?target=application:{application_id}", headers=auth(VIEWER))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"] == f"application:{application_id}"
    entries: list[dict[str, Any]] = body["entries"]
    return entries


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---- claims ---------------------------------------------------------------------------------


def test_two_officers_claiming_at_once_get_exactly_one_claim(
    ops: httpx.Client, partner: PartnerClient, review_system: RunningSystem
) -> None:
    for _ in range(5):
        app_id = in_review(partner, SMALL)["application_id"]
        barrier = threading.Barrier(2)
        results: dict[str, httpx.Response] = {}

        def race(token: str, app_id: str = app_id, barrier: threading.Barrier = barrier,
                 results: dict[str, httpx.Response] = results) -> None:
            with httpx.Client(base_url=review_system.system.ops_url, timeout=30) as client:
                barrier.wait()
                results[token] = claim(client, app_id, token)

        threads = [threading.Thread(target=race, args=(t,)) for t in (OFFICER1, OFFICER2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        statuses = sorted(r.status_code for r in results.values())
        assert statuses == [200, 409], {t: r.text for t, r in results.items()}
        winner_token = next(t for t, r in results.items() if r.status_code == 200)
        loser = next(r for r in results.values() if r.status_code == 409)
        winner = results[winner_token].json()["claimed_by"]
        assert winner == ("officer1" if winner_token == OFFICER1 else "officer2")
        error = assert_error(loser, 409, "already_claimed")
        assert winner in error["message"]  # who holds it, and until when
        listed = queued(ops, app_id)
        assert listed is not None and listed["claim"]["claimed_by"] == winner


def test_claim_answers_who_until_when_and_reclaiming_extends_it(
    ops: httpx.Client, partner: PartnerClient, review_system: RunningSystem,
    claims: redis.Redis,
) -> None:
    app_id = in_review(partner, SMALL)["application_id"]
    started = datetime.now(UTC)
    first = claimed(ops, app_id, OFFICER1)
    assert set(first) == {"application_id", "claimed_by", "expires_at"}
    assert (first["application_id"], first["claimed_by"]) == (app_id, "officer1")
    expires = parse_time(first["expires_at"])
    assert CLAIM_TTL_S - 5 <= (expires - started).total_seconds() <= CLAIM_TTL_S + 5

    claims.pexpire(claim_key(review_system, app_id), 5000)  # nearly over
    again = claimed(ops, app_id, OFFICER1)
    assert (parse_time(again["expires_at"]) - datetime.now(UTC)).total_seconds() > 100
    assert claims.pttl(claim_key(review_system, app_id)) > 100_000

    taken = claim(ops, app_id, OFFICER2)
    error = assert_error(taken, 409, "already_claimed")
    assert "officer1 until 20" in error["message"]

    rows = [r for r in audit_trail(ops, app_id) if r["action"] == "review.claim"]
    assert [r["actor"] for r in rows] == ["officer1", "officer1"]
    assert rows[0]["before"] is None
    assert rows[0]["after"] == first
    assert rows[1]["before"]["claimed_by"] == "officer1"  # an extension: there was a claim
    assert rows[1]["after"] == again


def test_an_expired_claim_frees_the_application(
    ops: httpx.Client, partner: PartnerClient, review_system: RunningSystem,
    claims: redis.Redis,
) -> None:
    app_id = in_review(partner, SMALL)["application_id"]
    claimed(ops, app_id, OFFICER1)
    assert_error(claim(ops, app_id, OFFICER2), 409, "already_claimed")

    claims.pexpire(claim_key(review_system, app_id), 1)
    time.sleep(0.05)
    listed = queued(ops, app_id)
    assert listed is not None and listed["claim"] is None

    assert claimed(ops, app_id, OFFICER2)["claimed_by"] == "officer2"
    # The first officer's claim is gone: he may not decide any more.
    assert_error(decide(ops, app_id, OFFICER1, "approve"), 409, "claim_required")


def test_release(ops: httpx.Client, partner: PartnerClient) -> None:
    app_id = in_review(partner, SMALL)["application_id"]
    claimed(ops, app_id, OFFICER1)
    # Another officer's claim is not yours to release.
    assert_error(ops.post(f"/ops/reviews/{app_id}/release", headers=auth(OFFICER2)),
                 409, "already_claimed")
    released = ops.post(f"/ops/reviews/{app_id}/release", headers=auth(OFFICER1))
    assert released.status_code == 200, released.text
    assert released.json() == {"application_id": app_id, "released": True}
    again = ops.post(f"/ops/reviews/{app_id}/release", headers=auth(OFFICER1))
    assert again.json() == {"application_id": app_id, "released": False}
    assert claimed(ops, app_id, OFFICER2)["claimed_by"] == "officer2"
    rows = audit_trail(ops, app_id)
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("review.claim", "officer1"), ("review.release", "officer1"),
        ("review.claim", "officer2"),
    ]
    assert rows[1]["before"]["claimed_by"] == "officer1" and rows[1]["after"] is None


def test_claiming_an_application_not_in_review_is_409(
    ops: httpx.Client, partner: PartnerClient
) -> None:
    app = submit(partner, app_body(amount=1_000_000, income=INCOME))
    assert app["status"] == "approved", app
    assert_error(claim(ops, app["application_id"], OFFICER1), 409, "invalid_state")
    assert_error(decide(ops, app["application_id"], OFFICER1, "approve"), 409, "invalid_state")


@pytest.mark.parametrize(
    "app_id", ["AP-0001-9999999999", "AP-0099-0000000001", "nope", "LN-0001-0000000001"]
)
@pytest.mark.parametrize("action", ["claim", "release", "decision"])
def test_unknown_application_is_404(ops: httpx.Client, app_id: str, action: str) -> None:
    response = ops.post(f"/ops/reviews/{app_id}/{action}", json={"decision": "approve"},
                        headers=auth(OFFICER1))
    assert_error(response, 404, "not_found")


# ---- decisions ------------------------------------------------------------------------------


def test_a_decision_needs_the_officers_claim(ops: httpx.Client, partner: PartnerClient) -> None:
    app_id = in_review(partner, SMALL)["application_id"]
    error = assert_error(decide(ops, app_id, OFFICER1, "approve"), 409, "claim_required")
    assert "nobody" in error["message"]
    claimed(ops, app_id, OFFICER2)
    error = assert_error(decide(ops, app_id, OFFICER1, "approve"), 409, "claim_required")
    assert "officer2" in error["message"]
    assert partner_view(partner, app_id)["status"] == "manual_review"
    assert [r["action"] for r in audit_trail(ops, app_id)] == ["review.claim"]


def test_below_the_threshold_one_approval_is_final_and_bookable(
    ops: httpx.Client, partner: PartnerClient, review_system: RunningSystem,
    claims: redis.Redis,
) -> None:
    app = in_review(partner, SMALL)
    app_id = app["application_id"]
    listed = queued(ops, app_id)
    assert listed is not None and listed["needs_checker"] is False
    claimed(ops, app_id, OFFICER1)

    result = decided(ops, app_id, OFFICER1, "approve", ["income_verified"], "payslips ok")

    assert result["application_id"] == app_id
    assert (result["status"], result["final"], result["proposal"]) == ("approved", True, None)
    assert result["step"] == {
        "stage": "maker", "officer": "officer1", "decision": "approve",
        "reasons": ["income_verified"], "note": "payslips ok", "decided_on": "2026-11-29",
        "outcome": "approved",
    }
    offer = result["decision"]
    assert offer["reasons"] == []
    assert offer["approved_amount"] == SMALL and offer["term"] == 12
    # The offer the pipeline proposed (stored, shown to operators, not to the partner while
    # in review) is the one confirmed.
    proposed = application_record(review_system, app_id)
    assert offer["annual_rate_bps"] == proposed["annual_rate_bps"]
    assert offer["apr_bps"] == proposed["apr_bps"]
    assert offer["credit_limit"] == proposed["credit_limit"] == INCOME * 5
    assert offer["expires_on"] == "2026-12-06"  # business date + offer_valid_days

    seen = partner_view(partner, app_id)
    assert seen["status"] == "approved"
    assert seen["decision"] == offer
    assert claims.exists(claim_key(review_system, app_id)) == 0  # the decision released it
    assert queued(ops, app_id) is None

    loan = book(partner, app_id)
    assert loan.status_code == 201, loan.text
    assert loan.json()["principal"] == SMALL
    customer = partner.get(f"/v1/customers/{app['customer_id']}").json()
    assert customer["credit_limit"] == INCOME * 5
    assert customer["available_limit"] == INCOME * 5 - SMALL

    # Deciding again (a retry, a second click) changes nothing: 409 invalid_state.
    assert_error(decide(ops, app_id, OFFICER1, "approve"), 409, "invalid_state")
    assert_error(claim(ops, app_id, OFFICER1), 409, "invalid_state")


def test_below_the_threshold_one_decline_is_final(
    ops: httpx.Client, partner: PartnerClient
) -> None:
    app_id = in_review(partner, SMALL)["application_id"]
    claimed(ops, app_id, OFFICER2)
    assert_error(decide(ops, app_id, OFFICER2, "decline"), 400, "invalid_request", "reasons")

    result = decided(ops, app_id, OFFICER2, "decline", ["income_unverified"])

    assert (result["status"], result["final"]) == ("declined", True)
    seen = partner_view(partner, app_id)
    assert seen["status"] == "declined"
    assert seen["decision"]["reasons"] == ["income_unverified"]
    assert seen["decision"]["approved_amount"] is None
    assert seen["decision"]["expires_on"] is None
    assert_error(book(partner, app_id), 409, "invalid_state")


def test_above_the_threshold_a_maker_proposes_and_another_officer_confirms(
    ops: httpx.Client, partner: PartnerClient
) -> None:
    app = in_review(partner, LARGE)
    app_id = app["application_id"]
    claimed(ops, app_id, OFFICER1)

    proposal = decided(ops, app_id, OFFICER1, "approve", [], "maker ok")

    assert (proposal["status"], proposal["final"]) == ("awaiting_confirmation", False)
    assert proposal["proposal"] == proposal["step"]
    assert proposal["step"]["outcome"] == "proposed"
    # Partners see only API.md's statuses; nothing is bookable yet.
    seen = partner_view(partner, app_id)
    assert seen["status"] == "manual_review"
    assert seen["decision"] == app["decision"]
    refused = assert_error(book(partner, app_id), 409, "invalid_state")
    assert "awaiting" not in refused["message"]
    listed = queued(ops, app_id)
    assert listed is not None
    assert (listed["status"], listed["needs_checker"], listed["claim"]) == (
        "awaiting_confirmation", True, None)
    assert listed["proposal"]["officer"] == "officer1"
    assert listed["proposal"]["decision"] == "approve"
    awaiting = [r["application_id"] for r in all_reviews(ops, "status=awaiting_confirmation")]
    assert app_id in awaiting

    # The maker can neither take the checker's part nor confirm himself.
    assert_error(claim(ops, app_id, OFFICER1), 403, "maker_checker")
    assert_error(decide(ops, app_id, OFFICER1, "approve"), 403, "maker_checker")
    # The checker must claim it too.
    assert_error(decide(ops, app_id, OFFICER2, "approve"), 409, "claim_required")
    claimed(ops, app_id, OFFICER2)

    confirmed = decided(ops, app_id, OFFICER2, "approve", [], "checker ok")

    assert (confirmed["status"], confirmed["final"], confirmed["proposal"]) == (
        "approved", True, None)
    assert confirmed["step"]["stage"] == "checker"
    assert confirmed["decision"]["approved_amount"] == LARGE
    assert partner_view(partner, app_id)["status"] == "approved"
    loan = book(partner, app_id)
    assert loan.status_code == 201, loan.text
    assert loan.json()["principal"] == LARGE


def test_a_checker_who_disagrees_sends_the_proposal_back_to_the_queue(
    ops: httpx.Client, partner: PartnerClient
) -> None:
    app_id = in_review(partner, LARGE)["application_id"]
    claimed(ops, app_id, OFFICER1)
    decided(ops, app_id, OFFICER1, "approve")
    claimed(ops, app_id, OFFICER2)

    rejected = decided(ops, app_id, OFFICER2, "decline", ["bureau_thin_file"])

    assert (rejected["status"], rejected["final"], rejected["proposal"]) == (
        "manual_review", False, None)
    assert rejected["step"]["outcome"] == "rejected"
    listed = queued(ops, app_id)
    assert listed is not None
    assert (listed["status"], listed["proposal"], listed["claim"]) == (
        "manual_review", None, None)
    assert partner_view(partner, app_id)["status"] == "manual_review"

    # A new round: officer2 is the maker now, officer1 may check (and confirms a decline).
    claimed(ops, app_id, OFFICER2)
    decided(ops, app_id, OFFICER2, "decline", ["bureau_thin_file"], "second look")
    claimed(ops, app_id, OFFICER1)
    final = decided(ops, app_id, OFFICER1, "decline", ["agree"])

    assert (final["status"], final["final"]) == ("declined", True)
    seen = partner_view(partner, app_id)
    # Confirmed as proposed: the maker's reasons are the partner's.
    assert (seen["status"], seen["decision"]["reasons"]) == ("declined", ["bureau_thin_file"])
    assert_error(book(partner, app_id), 409, "invalid_state")


def test_every_review_action_is_audited_with_before_and_after(
    ops: httpx.Client, partner: PartnerClient, review_system: RunningSystem
) -> None:
    app = in_review(partner, LARGE)
    app_id = app["application_id"]
    claimed(ops, app_id, OFFICER1)
    ops.post(f"/ops/reviews/{app_id}/release", headers=auth(OFFICER1))
    claimed(ops, app_id, OFFICER1)
    decided(ops, app_id, OFFICER1, "approve", ["income_verified"], "maker note")
    claimed(ops, app_id, OFFICER2)
    decided(ops, app_id, OFFICER2, "approve", [], "checker note")

    rows = audit_trail(ops, app_id)

    assert [(r["action"], r["actor"]) for r in rows] == [
        ("review.claim", "officer1"), ("review.release", "officer1"),
        ("review.claim", "officer1"), ("review.maker_decision", "officer1"),
        ("review.claim", "officer2"), ("review.checker_decision", "officer2"),
    ]
    shard = int(app_id.split("-")[1])
    for row in rows:
        assert set(row) == {"shard_id", "audit_id", "at", "actor", "action", "target",
                            "before", "after"}
        assert row["shard_id"] == shard and row["target"] == f"application:{app_id}"
        assert parse_time(row["at"]).tzinfo is not None
    assert [r["audit_id"] for r in rows] == sorted(r["audit_id"] for r in rows)

    maker, checker = rows[3], rows[5]
    assert maker["before"]["status"] == "manual_review"
    assert maker["before"]["proposal"] is None
    assert maker["after"]["status"] == "awaiting_confirmation"
    assert maker["after"]["proposal"]["officer"] == "officer1"
    assert maker["after"]["step"]["note"] == "maker note"
    assert maker["after"]["step"]["reasons"] == ["income_verified"]
    assert checker["before"]["status"] == "awaiting_confirmation"
    assert checker["before"]["proposal"]["officer"] == "officer1"
    assert checker["after"]["status"] == "approved"
    assert checker["after"]["proposal"] is None
    assert checker["after"]["approved_amount"] == LARGE
    assert checker["after"]["expires_on"] == "2026-12-06"
    assert checker["after"]["customer_credit_limit"] == INCOME * 5
    assert checker["after"]["step"] == {
        "stage": "checker", "officer": "officer2", "decision": "approve", "reasons": [],
        "note": "checker note", "decided_on": "2026-11-29", "outcome": "approved",
    }
    # The decision rows were written in the shard's commit, with the state they describe.
    stored = review_system.run(review_system.pg().fetchval(
        "SELECT status FROM applications WHERE shard_id = $1 AND application_id = $2",
        shard, app_id))
    assert stored == "approved"


def test_a_refused_decision_writes_no_audit_row(
    ops: httpx.Client, partner: PartnerClient
) -> None:
    app_id = in_review(partner, LARGE)["application_id"]
    claimed(ops, app_id, OFFICER1)
    decided(ops, app_id, OFFICER1, "approve")
    assert_error(decide(ops, app_id, OFFICER1, "approve"), 403, "maker_checker")
    assert_error(decide(ops, app_id, OFFICER2, "approve"), 409, "claim_required")
    assert [r["action"] for r in audit_trail(ops, app_id)] == [
        "review.claim", "review.maker_decision"]


@pytest.mark.parametrize(
    "body",
    [{}, {"decision": "maybe"}, {"decision": "approve", "extra": 1},
     {"decision": "decline", "reasons": ["Not A Code"]},
     {"decision": "decline", "reasons": "income"},
     {"decision": "approve", "note": "x" * 2001}],
)
def test_a_malformed_decision_is_400(
    ops: httpx.Client, partner: PartnerClient, body: dict[str, Any]
) -> None:
    app_id = in_review(partner, SMALL)["application_id"]
    claimed(ops, app_id, OFFICER1)
    response = ops.post(f"/ops/reviews/{app_id}/decision", json=body, headers=auth(OFFICER1))
    assert_error(response, 400, "invalid_request")
    bad_json = ops.post(f"/ops/reviews/{app_id}/decision", content=b"{",
                        headers=auth(OFFICER1))
    assert_error(bad_json, 400, "invalid_request")
    assert partner_view(partner, app_id)["status"] == "manual_review"


# ---- roles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [VIEWER, OPERATOR])
@pytest.mark.parametrize("action", ["claim", "release", "decision"])
def test_writes_need_the_risk_officer_role(
    ops: httpx.Client, partner: PartnerClient, token: str, action: str
) -> None:
    app_id = in_review(partner, SMALL)["application_id"]
    response = ops.post(f"/ops/reviews/{app_id}/{action}", json={"decision": "approve"},
                        headers=auth(token))
    assert_error(response, 403, "forbidden")
    assert audit_trail(ops, app_id) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/ops/reviews"), ("GET", "/ops/audit?target=application:AP-0001-0000000001"),
     ("POST", "/ops/reviews/AP-0001-0000000001/claim"),
     ("POST", "/ops/reviews/AP-0001-0000000001/release"),
     ("POST", "/ops/reviews/AP-0001-0000000001/decision")],
)
@pytest.mark.parametrize("headers", [{}, auth("wrong-token"), {"Authorization": OFFICER1}])
def test_without_a_valid_token_is_401(
    ops: httpx.Client, method: str, path: str, headers: dict[str, str]
) -> None:
    response = ops.request(method, path, json={"decision": "approve"}, headers=headers)
    assert_error(response, 401, "unauthenticated")


@pytest.mark.parametrize("token", [VIEWER, OPERATOR, OFFICER1])
def test_the_queue_is_for_risk_officers_the_audit_for_more(
    ops: httpx.Client, token: str
) -> None:
    """docs/operations.md "Operator roles": the queue (partner data) only for risk officers;
    the audit trail for viewers, collection leads and risk officers too."""
    queue = ops.get("/ops/reviews", headers=auth(token))
    if token == OFFICER1:
        assert queue.status_code == 200, queue.text
    else:
        assert_error(queue, 403, "forbidden")
    response = ops.get("/ops/audit?target=application:AP-0001-0000000001", headers=auth(token))
    assert response.status_code == 200, response.text
    assert response.json()["entries"] == []


# ---- the queue ------------------------------------------------------------------------------


def test_the_queue_lists_and_paginates(ops: httpx.Client, partner: PartnerClient) -> None:
    # More than a page of its own, whatever else the queue holds.
    mine = [in_review(partner, amount) for amount in (SMALL, SMALL, LARGE, *[SMALL] * PAGE_MAX)]
    ids = [app["application_id"] for app in mine]
    claimed(ops, ids[0], OFFICER1)

    items = all_reviews(ops)

    listed = [item["application_id"] for item in items]
    assert len(listed) == len(set(listed))
    assert listed == sorted(listed)  # one business date: by application id
    by_id = {item["application_id"]: item for item in items}
    assert set(ids) <= set(by_id)
    first = by_id[ids[0]]
    assert set(first) == {
        "application_id", "status", "partner_id", "partner_application_id", "customer_id",
        "product_code", "amount", "term", "reasons", "created_on", "needs_checker", "claim",
        "proposal"}
    assert (first["status"], first["partner_id"], first["product_code"]) == (
        "manual_review", "demo", "CASH_EI_12")
    assert (first["amount"], first["term"], first["reasons"]) == (SMALL, 12, ["amount_review"])
    assert first["partner_application_id"] == mine[0]["partner_application_id"]
    assert first["customer_id"] == mine[0]["customer_id"]
    assert first["created_on"] == "2026-11-29"
    assert first["claim"]["claimed_by"] == "officer1"
    assert first["proposal"] is None
    assert by_id[ids[1]]["claim"] is None
    assert by_id[ids[2]]["needs_checker"] is True

    # The default page is bounded by page_max; a full page points to the next one.
    page = queue(ops)
    assert [i["application_id"] for i in page["reviews"]] == listed[:PAGE_MAX]
    assert page["next_after"] == listed[PAGE_MAX - 1]
    only_review = all_reviews(ops, "status=manual_review")
    assert {i["status"] for i in only_review} <= {"manual_review"}
    assert set(ids) <= {i["application_id"] for i in only_review}


@pytest.mark.parametrize(
    ("query", "field"),
    [("?status=approved", "status"), ("?limit=0", "limit"), (f"?limit={PAGE_MAX + 1}", "limit"),
     ("?limit=x", "limit"), ("?after=AP-0001-9999999999", "after"), ("?after=nope", "after")],
)
def test_a_bad_queue_query_is_400(ops: httpx.Client, query: str, field: str) -> None:
    response = ops.get(f"/ops/reviews{query}", headers=auth(OFFICER2))
    assert_error(response, 400, "invalid_request", field)


def test_audit_needs_a_target(ops: httpx.Client) -> None:
    assert_error(ops.get("/ops/audit", headers=auth(VIEWER)), 400, "invalid_request", "target")


def test_the_review_endpoints_are_published(ops: httpx.Client) -> None:
    paths = ops.get("/openapi.json").json()["paths"]
    assert {"/ops/reviews", "/ops/reviews/{application_id}/claim",
            "/ops/reviews/{application_id}/release", "/ops/reviews/{application_id}/decision",
            "/ops/audit"} <= set(paths)
