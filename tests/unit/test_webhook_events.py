"""Partner webhook events, the pure parts (lending/events.py, the shard's `_Batch.emit`, the
delivery rules, the signed headers, the partners file's endpoints): which changes make which
events, for whom, in which order, with what payload; retry backoff; endpoint validation."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import msgspec
import pytest
from loan_factory import DISBURSED, make_loan

from cluster.config import ConfigError, load_webhook_endpoints
from cluster.webhooks import delivery_headers
from gateway.signing import AuthError, verify_request
from lending import events, views
from lending.commands import EodStep, Repay
from lending.daily import ServicingPolicy
from lending.decision import RiskPolicy
from lending.loans import LOAN_PAID_OFF, Loan, payoff_quote
from lending.products import ProductCatalog
from lending.shard_state import ApplyContext, Diff, Prefetched, ShardState, apply_batch

LOAN_ID = "LN-0000-0000000001"


def ctx(day: date, *partners: str) -> ApplyContext:
    return ApplyContext(day, ProductCatalog([]), RiskPolicy(2400, 7), ServicingPolicy(),
                        webhook_partners=frozenset(partners))


def shard_with_loan(loan: Loan | None = None) -> ShardState:
    state = ShardState(0, next_seq=1000)
    state.loans[LOAN_ID] = loan or make_loan()
    return state


def repay(amount: int, kind: str = "regular", source: str = "partner", ref: str = "P-1") -> Repay:
    return Repay("demo", f"key-{ref}", f"hash-{ref}", LOAN_ID, amount, ref, kind, source)


def bodies(diff: Diff) -> list[dict]:
    return [json.loads(event.body) for event in diff.webhook_events]


# ---- which changes make which events -----------------------------------------------------------


def test_a_partner_without_an_endpoint_gets_no_event_and_draws_no_id() -> None:
    without = apply_batch(shard_with_loan(), [repay(1000)], Prefetched(), ctx(DISBURSED))[1]
    with_hook = apply_batch(shard_with_loan(), [repay(1000)], Prefetched(),
                            ctx(DISBURSED, "demo"))[1]
    assert without.webhook_events == []
    assert len(with_hook.webhook_events) == 1
    # the only difference is the event: its id is the one more sequence number drawn
    assert with_hook.next_seq == without.next_seq + 1
    other = apply_batch(shard_with_loan(), [repay(1000)], Prefetched(), ctx(DISBURSED, "demo2"))
    assert other[1].webhook_events == []


def test_repayment_applied_carries_the_allocation_and_the_loan_after_it() -> None:
    replies, diff = apply_batch(shard_with_loan(), [repay(20_000, source="withholding")],
                                Prefetched(), ctx(DISBURSED, "demo"))
    assert replies[0].status == 201, replies[0].body
    reply = json.loads(replies[0].body)
    (event,) = diff.webhook_events
    body = json.loads(event.body)
    assert (event.event_type, event.partner_id, event.loan_id) == (
        events.REPAYMENT_APPLIED, "demo", LOAN_ID)
    assert event.order_key == body["application_id"] == "AP-0000-0000000001"
    assert body["type"] == events.REPAYMENT_APPLIED
    assert body["event_id"] == event.event_id and event.event_id.startswith("EV-0000-")
    assert body["sequence"] == int(event.event_id[-10:])
    assert body["occurred_on"] == DISBURSED.isoformat()
    data = body["data"]
    assert data["repayment_id"] == reply["repayment_id"]
    assert data["source"] == "withholding" and data["external_ref"] == "P-1"
    assert data["allocation"] == reply["allocation"]
    assert sum(data["allocation"].values()) == data["amount"] == 20_000
    assert data["loan"]["outstanding"] == reply["loan"]["outstanding"]
    assert data["loan"]["status"] == reply["loan"]["status"]


def test_a_payoff_tells_the_repayment_then_the_paid_off_loan_in_order() -> None:
    state = shard_with_loan()
    total = payoff_quote(state.loan(LOAN_ID), DISBURSED).total  # type: ignore[arg-type]
    replies, diff = apply_batch(state, [repay(total, "payoff")], Prefetched(),
                                ctx(DISBURSED, "demo"))
    assert replies[0].status == 201, replies[0].body
    types = [event.event_type for event in diff.webhook_events]
    assert types == [events.REPAYMENT_APPLIED, events.LOAN_PAID_OFF_EVENT]
    applied, paid_off = bodies(diff)
    assert applied["sequence"] < paid_off["sequence"]
    assert paid_off["data"]["repayment_id"] == applied["data"]["repayment_id"]
    assert paid_off["data"]["loan"]["status"] == LOAN_PAID_OFF
    assert paid_off["data"]["loan"]["outstanding"]["principal"] == 0
    assert paid_off["data"]["principal"] == 1_000_000


def test_overdue_is_told_once_per_bucket_reached_at_end_of_day() -> None:
    """A loan never repaid: C until its first due date (2026-12-28), M1 from the next day
    (one loan.overdue), nothing more while it stays in M1, M2 thirty days later."""
    state = shard_with_loan()
    told: list[tuple[date, dict]] = []
    day = DISBURSED
    while day <= date(2027, 2, 1):
        replies, diff = apply_batch(state, [EodStep(day, 10)], Prefetched(),
                                    ctx(day, "demo"))
        assert replies[0].status == 200
        state.commit(diff)
        told += [(day, body) for body in bodies(diff)]
        day += timedelta(days=1)
    assert [(d, b["type"], b["data"]["bucket"]) for d, b in told] == [
        (date(2026, 12, 28), events.LOAN_OVERDUE, "M1"),
        (date(2027, 1, 27), events.LOAN_OVERDUE, "M2"),
    ]
    first = told[0][1]["data"]
    assert (first["dpd"], first["previous_bucket"]) == (1, "C")
    assert first["oldest_due_date"] == "2026-12-28"
    loan = make_loan()
    assert first["overdue"]["principal"] == loan.installments[0].principal
    assert first["overdue"]["interest"] == loan.installments[0].interest
    assert told[1][1]["data"]["previous_bucket"] == "M1"
    assert told[0][1]["sequence"] < told[1][1]["sequence"]


def test_no_overdue_event_for_a_loan_that_stays_current() -> None:
    before = make_loan()
    after = msgspec.structs.replace(before, dpd=0, bucket="C")
    assert events.day_closed(before, after) == []
    worse = msgspec.structs.replace(before, dpd=31, bucket="M2")
    better = msgspec.structs.replace(before, dpd=5, bucket="M1")
    assert events.day_closed(worse, better) == []  # a cure is told by its repayment


def application_view(status: str, **decision: object) -> views.ApplicationView:
    return views.ApplicationView(
        application_id="AP-0001-0000000002", customer_id="CU-0001-0000000001", status=status,
        decision=views.DecisionView(reasons=list(decision.get("reasons", [])),  # type: ignore
                                    approved_amount=None, annual_rate_bps=None, apr_bps=None,
                                    term=None, credit_limit=None, expires_on=None),
        created_on=DISBURSED, partner_application_id="A-1", product_code="CASH_EI_12",
        amount=1_000_000, term=12, loan_id=None)


@pytest.mark.parametrize("status", ["approved", "declined"])
def test_application_decided_only_once_final(status: str) -> None:
    (draft,) = events.application_decided(application_view(status), events.BY_REVIEW)
    assert draft.event_type == events.APPLICATION_DECIDED
    assert draft.application_id == "AP-0001-0000000002" and draft.loan_id is None
    body = json.loads(events.make_event("EV-0001-0000000009", "demo", DISBURSED, draft).body)
    assert body["data"]["decided_by"] == "review"
    assert body["data"]["application"]["status"] == status
    assert events.application_decided(application_view("manual_review"),
                                      events.BY_PIPELINE) == []


def test_loan_disbursed_carries_the_loan_view_and_no_personal_data() -> None:
    loan = make_loan()
    (draft,) = events.loan_disbursed(loan)
    event = events.make_event("EV-0000-0000000042", "demo", DISBURSED, draft)
    body = json.loads(event.body)
    assert body["sequence"] == 42 and body["loan_id"] == loan.loan_id
    assert body["data"]["amount"] == loan.principal and body["data"]["payee"] == "borrower"
    assert body["data"]["loan"] == json.loads(views.encode(views.loan_view(loan)))
    assert set(body) == {"event_id", "type", "partner_id", "occurred_on", "sequence",
                         "application_id", "loan_id", "data"}
    for word in ("name", "id_number", "phone", "id_hash"):
        assert word not in event.body


# ---- delivery rules --------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_then_gives_up() -> None:
    policy = events.RetryPolicy(max_attempts=5, backoff_initial_s=1.5, backoff_max_s=5)
    assert [policy.delay_s(n) for n in range(1, 5)] == [1.5, 3.0, 5.0, 5.0]
    assert policy.after_failure(1) == (events.PENDING, 1.5)
    assert policy.after_failure(4) == (events.PENDING, 5.0)
    assert policy.after_failure(5) == (events.FAILED, None)
    assert events.RetryPolicy(3, 1, 10).delay_s(10_000) == 10  # no overflow


def test_delivery_headers_verify_with_the_partner_request_scheme() -> None:
    body = b'{"event_id":"EV-0000-0000000001"}'
    url = "http://127.0.0.1:9/hooks/lendcore?tenant=7"
    headers = delivery_headers("demo", b"s3cret-webhook-key", url, body,
                               "EV-0000-0000000001", events.LOAN_OVERDUE, 3, 1_800_000_000)
    assert headers["X-Event-Id"] == "EV-0000-0000000001"
    assert headers["X-Event-Type"] == events.LOAN_OVERDUE
    assert headers["X-Delivery-Attempt"] == "3"
    secrets = {"demo": b"s3cret-webhook-key"}
    path = "/hooks/lendcore?tenant=7"  # the canonical PATH includes the query string
    assert verify_request(headers, "POST", path, body, secrets, 1_800_000_000) == "demo"
    with pytest.raises(AuthError):  # another body, another secret, another path: refused
        verify_request(headers, "POST", path, body + b" ", secrets, 1_800_000_000)
    with pytest.raises(AuthError):
        verify_request(headers, "POST", path, body, {"demo": b"other"}, 1_800_000_000)
    with pytest.raises(AuthError):
        verify_request(headers, "POST", "/hooks/lendcore", body, secrets, 1_800_000_000)
    again = delivery_headers("demo", b"s3cret-webhook-key", url, body,
                             "EV-0000-0000000001", events.LOAN_OVERDUE, 3, 1_800_000_000)
    assert again["X-Nonce"] != headers["X-Nonce"]  # a fresh nonce every attempt


@pytest.mark.parametrize("url", [
    "https://partner.example/lendcore/events", "http://127.0.0.1:8099/h?x=1",
    "https://partner.example",
])
def test_endpoint_urls_accepted(url: str) -> None:
    assert events.endpoint_url_problem(url) is None


@pytest.mark.parametrize(("url", "problem"), [
    ("", "characters"), ("ftp://partner.example/x", "http"), ("partner.example/x", "http"),
    ("https:///path", "host"), ("https://user:pw@partner.example/", "user name"),
    ("https://partner.example/#frag", "fragment"), ("https://partner.example/a b", "spaces"),
    ("https://partner.example:99999/", "valid URL"), ("https://x/" + "a" * 2000, "characters"),
])
def test_endpoint_urls_refused(url: str, problem: str) -> None:
    found = events.endpoint_url_problem(url)
    assert found is not None and problem in found


# ---- the partners file's endpoints (validated at start) ----------------------------------------


def write_partners(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "partners.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_partners_file_endpoints_with_secret_from_the_file_or_the_environment(
    tmp_path: Path,
) -> None:
    path = write_partners(tmp_path, """
[[partners]]
id = "demo"
secret = "s"
webhook_url = "https://demo.example/hooks"
webhook_secret = "from-the-file"

[[partners]]
id = "demo2"
secret = "s2"
webhook_url = "http://127.0.0.1:9000/h"

[[partners]]
id = "quiet"
secret = "s3"
""")
    found = load_webhook_endpoints(path, {"LENDCORE_WEBHOOK_SECRET_DEMO2": "from-the-env"})
    assert sorted(found) == ["demo", "demo2"]
    assert found["demo"].secret == b"from-the-file"
    assert found["demo2"].secret == b"from-the-env"
    overridden = load_webhook_endpoints(path, {"LENDCORE_WEBHOOK_SECRET_DEMO": "env-wins",
                                               "LENDCORE_WEBHOOK_SECRET_DEMO2": "x"})
    assert overridden["demo"].secret == b"env-wins"


@pytest.mark.parametrize(("entry", "problem"), [
    ('webhook_url = "https://demo.example/h"', "needs a secret"),
    ('webhook_url = "ftp://demo.example/h"\nwebhook_secret = "k"', "http"),
    ('webhook_secret = "k"', "without webhook_url"),
])
def test_partners_file_endpoint_refused_at_start(
    tmp_path: Path, entry: str, problem: str
) -> None:
    path = write_partners(tmp_path, f'[[partners]]\nid = "demo"\nsecret = "s"\n{entry}\n')
    with pytest.raises(ConfigError, match=problem):
        load_webhook_endpoints(path, {})
