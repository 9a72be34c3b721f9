"""Partner webhooks end to end (issue 14): a real system, and a test receiver, a small real
HTTP server started here, that verifies every request's signature with the partner API's
scheme (gateway.signing.verify_request) and records what arrives.

- every event type is delivered, signed, with its event id in a header, in order per loan
  (application.decided and loan.disbursed, repayments and payoff from the partner API,
  a withholding (代扣) applied by end of day, a loan gone overdue, a review's decision);
- a partner without an endpoint gets no event; one registered through the operator API gets
  them from the next change on, signed with its own secret; removed, none again;
- the receiver stopped while changes are made: once it is back, every event arrives, in
  order per loan, after the failed attempts the operator API showed;
- an event the receiver refuses is retried until max_attempts, then failed; the loan's next
  event waits for it until then; an operator redelivers it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import BUSINESS_DATE, RunningSystem, fresh_system
from factories import (
    OpsClient,
    app_body,
    book,
    fresh_id,
    new_loan,
    ops_auth,
    payoff_quote,
    repay,
    submit,
)

from cluster.outbox import PaymentChannel
from gateway.signing import AuthError, verify_request
from lending import events

DEMO_HOOK_SECRET = b"demo-webhook-secret-for-tests"
DEMO2_HOOK_SECRET = "demo2-webhook-secret-from-ops"
MAX_ATTEMPTS = 10  # backoff 0.1 s doubling to 1 s: an event is given up after ~6.5 s
WAIT_S = 60.0


# ---- the test receiver ------------------------------------------------------------------------


class Received:
    def __init__(self, path: str, headers: dict[str, str], body: bytes, partner: str | None,
                 answered: int) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.event: dict[str, Any] = json.loads(body)
        self.partner = partner  # who the signature verified as; None: it did not verify
        self.answered = answered


class Receiver:
    """A partner's webhook endpoint: verifies each POST's signature under the partner's
    webhook secret, answers 200 (500 for the event ids or repayment references in
    `refuse`), remembers everything.
    stop() closes its port (connections are refused); start() opens the same port again."""

    def __init__(self) -> None:
        self.secrets: dict[str, bytes] = {"demo": DEMO_HOOK_SECRET}
        self.refuse: set[str] = set()  # event ids, or repayments' external_refs
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), partial(_Handler, self))
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def url(self, partner: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{partner}?via=lendcore"

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def accepted(self, order_key: str) -> list[dict[str, Any]]:
        """The events of one application/loan the receiver took (answered 200), in the order
        they first arrived (an event may come more than once: receivers dedupe by id)."""
        seen: dict[str, dict[str, Any]] = {}
        for got in self.all():
            if got.answered == 200 and got.event["application_id"] == order_key:
                seen.setdefault(got.event["event_id"], got.event)
        return list(seen.values())

    def wait_for(self, order_key: str, count: int, timeout_s: float = WAIT_S
                 ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.accepted(order_key)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{order_key}: {len(found)} of {count} events arrived: "
                             f"{[e['type'] for e in found]}")


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, receiver: Receiver, *args: Any) -> None:
        self.receiver = receiver
        super().__init__(*args)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = dict(self.headers.items())
        try:
            partner: str | None = verify_request(
                headers, "POST", self.path, body, self.receiver.secrets, int(time.time()))
        except AuthError:
            partner = None
        event = json.loads(body)
        keys = {event["event_id"], event["data"].get("external_ref")}
        status = 500 if keys & self.receiver.refuse or partner is None else 200
        with self.receiver.lock:
            self.receiver.received.append(Received(self.path, headers, body, partner, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class DeclineFor(PaymentChannel):
    """The payment channel of withholdings (代扣) for this test: declines the customers named,
    debits everyone else (the development simulator draws by request id instead)."""

    def __init__(self, customers: set[str]) -> None:
        self.customers = customers

    async def debit(self, request_id: str, customer_id: str, amount: int) -> str:
        return "declined" if customer_id in self.customers else "debited"


# ---- the system --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hooks = Receiver()
    hooks.start()
    yield hooks
    if hooks._server is not None:
        hooks.stop()


@pytest.fixture(scope="module")
def hooked(ray_cluster: None, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningSystem]:
    directory = tmp_path_factory.mktemp("webhooks")
    partners = directory / "partners.toml"
    partners.write_text(
        '[[partners]]\nid = "demo"\nsecret = "demo-secret-change-me"\n'
        f'webhook_url = "{receiver.url("demo")}"\n'
        f'webhook_secret = "{DEMO_HOOK_SECRET.decode()}"\n\n'
        '[[partners]]\nid = "demo2"\nsecret = "demo2-secret-change-me"\n', encoding="utf-8")
    config = directory / "webhooks.toml"
    config.write_text(
        f'[paths]\npartners_file = "{partners}"\n\n'
        "[webhooks]\npoll_interval_s = 0.05\nbatch_max = 20\nconcurrency = 4\n"
        f"timeout_s = 2.0\nmax_attempts = {MAX_ATTEMPTS}\nbackoff_initial_s = 0.1\n"
        "backoff_max_s = 1.0\nclaim_s = 10\n\n"
        "[review]\nmaker_checker_amount_over = 10000000\n", encoding="utf-8")
    with fresh_system(config) as running:
        yield running


@pytest.fixture
def ops(hooked: RunningSystem) -> Iterator[OpsClient]:
    client = OpsClient(hooked.system.ops_url, timeout=300)
    yield client
    client.client.close()


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stored(ops: OpsClient, **query: Any) -> list[dict[str, Any]]:
    events_: list[dict[str, Any]] = ops.get("/ops/webhooks/events", limit=500,
                                            **query)["events"]
    return events_


def types(found: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in found]


def assert_in_order(found: list[dict[str, Any]]) -> None:
    sequences = [event["sequence"] for event in found]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences), found


# ---- every event type, signed, in order per loan ----------------------------------------------


def test_every_event_type_is_delivered_signed_and_in_order_per_loan(
    hooked: RunningSystem, receiver: Receiver, ops: OpsClient,
) -> None:
    client = hooked.client("demo")
    # paid off on its first day: decided, disbursed, a regular repayment, the payoff
    paid = new_loan(client)
    assert repay(client, paid["loan_id"], 50_000).status_code == 201
    quote = payoff_quote(client, paid["loan_id"])
    assert repay(client, paid["loan_id"], quote["total"], "payoff").status_code == 201
    # collected by end of day's withholding on its due date, and declined so gone overdue
    withheld = new_loan(client)
    late = new_loan(client)
    hooked.system.outbox.payments = DeclineFor({late["customer_id"]})  # type: ignore[union-attr]
    declined = submit(client, app_body(id_no=fresh_id(sequence=950)))  # bad credit file
    assert declined["status"] == "declined", declined
    review = submit(client, app_body(amount=6_000_000, income=2_000_000))
    assert review["status"] == "manual_review", review
    claim = ops.client.post(f"/ops/reviews/{review['application_id']}/claim",
                            headers=ops_auth())
    assert claim.status_code == 200, claim.text
    decision = ops.post(f"/ops/reviews/{review['application_id']}/decision",
                        {"decision": "approve", "note": "ok"})
    assert decision.status_code == 200 and decision.json()["final"], decision.text

    # end of day up to the first due date (2026-12-28), sending what each one planned
    day = date.fromisoformat(BUSINESS_DATE)
    while day <= date(2026, 12, 28):
        response = ops.eod()
        assert response.status_code == 200, response.text
        assert ops.post("/ops/outbox/drain", None).status_code == 200
        day = ops.business_date()

    got = {
        "paid": receiver.wait_for(paid["application_id"], 5),
        "withheld": receiver.wait_for(withheld["application_id"], 3),
        "late": receiver.wait_for(late["application_id"], 3),
        "declined": receiver.wait_for(declined["application_id"], 1),
        "review": receiver.wait_for(review["application_id"], 1),
    }
    assert types(got["paid"]) == [
        events.APPLICATION_DECIDED, events.LOAN_DISBURSED, events.REPAYMENT_APPLIED,
        events.REPAYMENT_APPLIED, events.LOAN_PAID_OFF_EVENT]
    assert types(got["withheld"]) == [
        events.APPLICATION_DECIDED, events.LOAN_DISBURSED, events.REPAYMENT_APPLIED]
    assert types(got["late"]) == [
        events.APPLICATION_DECIDED, events.LOAN_DISBURSED, events.LOAN_OVERDUE]
    assert types(got["declined"]) == types(got["review"]) == [events.APPLICATION_DECIDED]
    assert {t for found in got.values() for t in types(found)} == set(events.EVENT_TYPES)
    for found in got.values():
        assert_in_order(found)

    decided, disbursed, regular, payoff, paid_off = got["paid"]
    assert decided["data"]["decided_by"] == "pipeline"
    assert decided["data"]["application"]["status"] == "approved"
    assert disbursed["loan_id"] == paid["loan_id"] == disbursed["data"]["loan"]["loan_id"]
    assert disbursed["data"]["amount"] == paid["principal"]
    assert disbursed["data"]["loan"]["schedule"] == paid["schedule"]
    assert (regular["data"]["kind"], regular["data"]["amount"]) == ("regular", 50_000)
    assert regular["data"]["source"] == "partner"
    assert payoff["data"]["kind"] == "payoff" and payoff["data"]["amount"] == quote["total"]
    assert paid_off["data"]["repayment_id"] == payoff["data"]["repayment_id"]
    assert paid_off["data"]["loan"]["status"] == "paid_off"
    collected = got["withheld"][2]
    assert collected["data"]["source"] == "withholding"
    assert collected["data"]["external_ref"].startswith("RQ-")
    assert collected["occurred_on"] == "2026-12-28"
    assert collected["data"]["amount"] == withheld["schedule"][0]["total"]
    overdue = got["late"][2]
    assert (overdue["occurred_on"], overdue["data"]["bucket"], overdue["data"]["dpd"]) == (
        "2026-12-28", "M1", 1)
    assert overdue["data"]["overdue"]["principal"] == late["schedule"][0]["principal"]
    assert got["declined"][0]["data"]["application"]["status"] == "declined"
    assert "bureau_bad" in got["declined"][0]["data"]["application"]["decision"]["reasons"]
    assert got["review"][0]["data"]["decided_by"] == "review"
    assert got["review"][0]["data"]["application"]["status"] == "approved"

    # every request was signed right, named its event, came to the configured URL path
    mine = {e["event_id"] for found in got.values() for e in found}
    requests = [r for r in receiver.all() if r.event["event_id"] in mine]
    assert requests and all(r.partner == "demo" for r in requests)
    for r in requests:
        assert r.path == "/hooks/demo?via=lendcore"
        assert r.headers["X-Event-Id"] == r.event["event_id"]
        assert r.headers["X-Event-Type"] == r.event["type"]
        assert r.headers["X-Partner-Id"] == r.event["partner_id"] == "demo"
        assert r.headers["Content-Type"] == "application/json"
    nonces = [r.headers["X-Nonce"] for r in requests]
    assert len(set(nonces)) == len(nonces)
    # no personal data: the applicants' masks and ciphertexts never travel
    assert not any(word in r.body.decode() for r in requests
                   for word in ("name_masked", "id_number", "phone", "id_hash"))

    # what operators see: delivered, one attempt each, nothing pending of these loans. The
    # sender records a delivery once the receiver's 200 is back, a moment after the receiver
    # has the request: wait for that, not for the receiver.
    def all_delivered() -> dict[str, dict[str, Any]] | None:
        listed = {e["event_id"]: e for e in stored(ops, partner_id="demo")}
        return listed if all(listed[e]["status"] == "delivered" for e in mine) else None

    listed = wait_until(all_delivered, "every event recorded as delivered")
    for event_id in mine:
        assert listed[event_id]["status"] == "delivered", listed[event_id]
        assert listed[event_id]["last_status"] == 200
    one = ops.get(f"/ops/webhooks/events/{overdue['event_id']}")
    assert one["payload"] == overdue and one["status"] == "delivered"
    by_loan = stored(ops, loan_id=late["loan_id"])  # newest first; decided has no loan yet
    assert [e["event_id"] for e in by_loan] == [got["late"][2]["event_id"],
                                                 got["late"][1]["event_id"]]


# ---- endpoints registered through the operator API --------------------------------------------


def test_an_endpoint_registered_by_an_operator_gets_the_next_changes(
    hooked: RunningSystem, receiver: Receiver, ops: OpsClient,
) -> None:
    client = hooked.client("demo2")
    before = new_loan(client)
    assert repay(client, before["loan_id"], 10_000).status_code == 201
    assert stored(ops, partner_id="demo2") == []  # no endpoint, no event: nothing written

    receiver.secrets["demo2"] = DEMO2_HOOK_SECRET.encode()
    url = receiver.url("demo2")
    viewer = ops_auth("dev-collector1-token-change-me")  # no role for it
    refused = ops.client.put("/ops/webhooks/endpoints/demo2", headers=viewer,
                             json={"url": url, "secret": DEMO2_HOOK_SECRET})
    assert refused.status_code == 403, refused.text
    bad = ops.client.put("/ops/webhooks/endpoints/demo2", headers=ops_auth(),
                         json={"url": "ftp://x/y", "secret": DEMO2_HOOK_SECRET})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "url", bad.text
    config_managed = ops.client.put("/ops/webhooks/endpoints/demo", headers=ops_auth(),
                                    json={"url": url, "secret": DEMO2_HOOK_SECRET})
    assert config_managed.status_code == 409, config_managed.text
    unknown = ops.client.put("/ops/webhooks/endpoints/nobody", headers=ops_auth(),
                             json={"url": url, "secret": DEMO2_HOOK_SECRET})
    assert unknown.status_code == 404, unknown.text
    put = ops.client.put("/ops/webhooks/endpoints/demo2", headers=ops_auth(),
                         json={"url": url, "secret": DEMO2_HOOK_SECRET})
    assert put.status_code == 200, put.text
    assert put.json()["created"] is True
    assert put.json()["endpoint"]["url"] == url
    listed = {e["partner_id"]: e for e in ops.get("/ops/webhooks/endpoints")["endpoints"]}
    assert listed["demo2"]["source"] == "ops" and listed["demo"]["source"] == "config"
    assert all("secret" not in str(e).lower() for e in listed.values())
    audit = ops.get("/ops/audit", target="webhook_endpoint:demo2")["entries"]
    assert [a["action"] for a in audit] == ["webhook.endpoint_put"]
    assert DEMO2_HOOK_SECRET not in json.dumps(audit)

    # the endpoint is live on every shard when the PUT answered: the next change is told
    response = repay(client, before["loan_id"], 20_000)
    assert response.status_code == 201
    (told,) = receiver.wait_for(before["application_id"], 1)
    assert told["type"] == events.REPAYMENT_APPLIED and told["partner_id"] == "demo2"
    assert told["data"]["repayment_id"] == response.json()["repayment_id"]
    arrived = [r for r in receiver.all() if r.event["event_id"] == told["event_id"]]
    assert arrived[0].partner == "demo2" and arrived[0].path == "/hooks/demo2?via=lendcore"

    deleted = ops.client.delete("/ops/webhooks/endpoints/demo2", headers=ops_auth())
    assert deleted.status_code == 200, deleted.text
    assert repay(client, before["loan_id"], 30_000).status_code == 201
    assert [e["event_id"] for e in stored(ops, partner_id="demo2")] == [told["event_id"]]
    again = ops.client.delete("/ops/webhooks/endpoints/demo2", headers=ops_auth())
    assert again.status_code == 404, again.text


# ---- the receiver down, then back ----------------------------------------------------------------


def test_every_event_arrives_once_the_receiver_is_back(
    hooked: RunningSystem, receiver: Receiver, ops: OpsClient,
) -> None:
    client = hooked.client("demo")
    first = new_loan(client)
    second = new_loan(client)
    receiver.wait_for(first["application_id"], 2)
    receiver.wait_for(second["application_id"], 2)

    receiver.stop()
    try:
        refs = []
        for loan, amounts in ((first, (1_000, 2_000, 3_000)), (second, (4_000,))):
            for amount in amounts:
                response = repay(client, loan["loan_id"], amount)
                assert response.status_code == 201, response.text
                refs.append((loan["application_id"], response.json()["repayment_id"]))
        # the worker tried while the receiver was away: connection refused, pending again
        wait_until(lambda: [e for e in stored(ops, loan_id=first["loan_id"], status="pending")
                            if e["attempts"] >= 1 and e["last_error"]],
                   "a failed attempt while the receiver is down")
    finally:
        receiver.start()

    got_first = receiver.wait_for(first["application_id"], 5)
    got_second = receiver.wait_for(second["application_id"], 3)
    for found in (got_first, got_second):
        assert_in_order(found)
    assert [e["data"]["repayment_id"] for e in got_first[2:]] == [
        r for key, r in refs if key == first["application_id"]]
    assert [e["data"]["amount"] for e in got_first[2:]] == [1_000, 2_000, 3_000]
    assert got_second[2]["data"]["amount"] == 4_000
    for event in got_first[2:] + got_second[2:]:
        row = wait_until(lambda event=event: next(
            (e for e in stored(ops, loan_id=event["loan_id"])
             if e["event_id"] == event["event_id"] and e["status"] == "delivered"), None),
            f"{event['event_id']} delivered")
        assert row["last_status"] == 200
    retried = [e for e in stored(ops, loan_id=first["loan_id"]) if e["attempts"] >= 2]
    assert retried, "the first loan's head event was retried after the outage"


# ---- given up, then redelivered ------------------------------------------------------------------


def test_a_refused_event_is_given_up_then_an_operator_redelivers_it(
    hooked: RunningSystem, receiver: Receiver, ops: OpsClient,
) -> None:
    client = hooked.client("demo")
    loan = new_loan(client)
    key = loan["application_id"]
    receiver.wait_for(key, 2)
    refused_ref = f"P-refused-{loan['loan_id']}"
    receiver.refuse.add(refused_ref)  # the receiver answers 500 to this repayment's event
    response = repay(client, loan["loan_id"], 5_000, external_ref=refused_ref)
    assert response.status_code == 201
    (refused,) = [e for e in stored(ops, loan_id=loan["loan_id"])
                  if e["event_type"] == events.REPAYMENT_APPLIED]
    later = repay(client, loan["loan_id"], 6_000)
    assert later.status_code == 201

    failed = wait_until(lambda: next(
        (e for e in stored(ops, loan_id=loan["loan_id"], status="failed")
         if e["event_id"] == refused["event_id"]), None), "the refused event failed")
    assert failed["attempts"] == MAX_ATTEMPTS and failed["last_status"] == 500
    assert failed["last_error"] == "HTTP 500"
    tries = [r for r in receiver.all() if r.event["event_id"] == refused["event_id"]]
    assert [r.headers["X-Delivery-Attempt"] for r in tries] == [
        str(n) for n in range(1, MAX_ATTEMPTS + 1)]
    # the loan's next event waited until the refused one was given up, then went
    got = receiver.wait_for(key, 3)
    assert got[2]["data"]["repayment_id"] == later.json()["repayment_id"]
    next_arrival = min(n for n, r in enumerate(receiver.all())
                       if r.event["event_id"] == got[2]["event_id"])
    last_try = max(n for n, r in enumerate(receiver.all())
                   if r.event["event_id"] == refused["event_id"])
    assert next_arrival > last_try
    counts = ops.get("/ops/webhooks/events", status="failed")["counts"]
    assert counts["failed"] >= 1

    # an operator without the role may not; a pending event is not redelivered
    viewer_try = ops.client.post(f"/ops/webhooks/events/{refused['event_id']}/redeliver",
                                 headers=ops_auth("dev-collector1-token-change-me"))
    assert viewer_try.status_code == 403
    receiver.refuse.discard(refused_ref)
    redelivered = ops.post(f"/ops/webhooks/events/{refused['event_id']}/redeliver", None)
    assert redelivered.status_code == 200, redelivered.text
    assert redelivered.json()["event"]["status"] in ("pending", "delivered")
    wait_until(lambda: refused["event_id"] in {e["event_id"] for e in receiver.accepted(key)},
               "the redelivered event")
    row = wait_until(lambda: next(
        (e for e in stored(ops, loan_id=loan["loan_id"], status="delivered")
         if e["event_id"] == refused["event_id"]), None), "delivered after redelivery")
    assert row["attempts"] == 1  # counted afresh from the redelivery
    audit = ops.get("/ops/audit", target=f"webhook_event:{refused['event_id']}")["entries"]
    assert [a["action"] for a in audit] == ["webhook.redeliver"]
    assert audit[0]["before"]["status"] == "failed"
    again = ops.post(f"/ops/webhooks/events/{refused['event_id']}/redeliver", None)
    assert again.status_code == 200  # delivered events may be sent again too
    unknown = ops.post("/ops/webhooks/events/EV-0000-9999999999/redeliver", None)
    assert unknown.status_code == 404


def test_pages_and_filters(hooked: RunningSystem, ops: OpsClient) -> None:
    whole = stored(ops, partner_id="demo")
    assert len(whole) >= 4
    first = ops.get("/ops/webhooks/events", partner_id="demo", limit=2)
    assert [e["event_id"] for e in first["events"]] == [e["event_id"] for e in whole[:2]]
    second = ops.get("/ops/webhooks/events", partner_id="demo", limit=2,
                     after=first["next_after"])
    assert [e["event_id"] for e in second["events"]] == [e["event_id"] for e in whole[2:4]]
    ids = [e["id"] for e in whole]
    assert ids == sorted(ids, reverse=True)  # newest first
    disbursed = stored(ops, event_type=events.LOAN_DISBURSED)
    assert disbursed and all(e["event_type"] == events.LOAN_DISBURSED for e in disbursed)
    bad = ops.client.get("/ops/webhooks/events", params={"status": "lost"},
                         headers=ops_auth())
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "status"
    bad_after = ops.client.get("/ops/webhooks/events", params={"after": "x"},
                               headers=ops_auth())
    assert bad_after.status_code == 400
    assert ops.client.get("/ops/webhooks/events/EV-0000-9999999999",
                          headers=ops_auth()).status_code == 404


def test_book_without_endpoint_costs_no_event(hooked: RunningSystem, ops: OpsClient) -> None:
    """demo2 (no endpoint unless the test above registered one, and it removed it): its
    application, loan and repayment write no event row at all."""
    client = hooked.client("demo2")
    app = submit(client, app_body())
    booked = book(client, app["application_id"])
    assert booked.status_code == 201
    assert repay(client, booked.json()["loan_id"], 1_000).status_code == 201
    assert stored(ops, loan_id=booked.json()["loan_id"]) == []
