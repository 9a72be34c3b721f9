"""Partner authentication, idempotency and transport limits over HTTP (API.md)."""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import fresh_system
from factories import app_body, assert_error, get_loan, new_loan, ref

from gateway.signing import signed_headers
from loadtests.client import PartnerClient

P = 1_000_000
FIRST_PRINCIPAL = 76_680
FIRST_TOTAL = 91_680
DEMO_SECRET = b"demo-secret-change-me"


# ---- helpers --------------------------------------------------------------------------------


def _seconds_away(offset_s: int) -> int:
    """A whole-second timestamp at least `offset_s` seconds from now, whatever the fraction of
    the current second: int(time.time()) + 301 is only 300.01 s ahead at x.99 s, and the
    server, a few ms later in the next second, rightly accepts it (|now - ts| <= 300)."""
    now = time.time()
    return math.ceil(now) + offset_s if offset_s > 0 else math.floor(now) + offset_s


def outstanding_principal(client: PartnerClient, loan_id: str) -> int:
    return int(get_loan(client, loan_id)["outstanding"]["principal"])


def send(
    client: PartnerClient, method: str, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    """Send exactly these headers (no signing done for us)."""
    return client.http.request(method, path, content=body, headers=headers)


@pytest.fixture(scope="module")
def module_loan(system: Any) -> dict[str, Any]:
    client = system.client("demo")
    try:
        return new_loan(client)
    finally:
        client.close()


# ---- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["X-Partner-Id", "X-Timestamp", "X-Nonce", "X-Signature"])
def test_each_missing_auth_header_is_401(
    demo: PartnerClient, module_loan: dict[str, Any], missing: str
) -> None:
    path = f"/v1/loans/{module_loan['loan_id']}"
    headers = signed_headers("demo", DEMO_SECRET, "GET", path, b"", int(time.time()))
    assert send(demo, "GET", path, b"", headers).status_code == 200  # the control

    headers = signed_headers("demo", DEMO_SECRET, "GET", path, b"", int(time.time()))
    del headers[missing]
    assert_error(send(demo, "GET", path, b"", headers), 401, "unauthenticated")


def test_missing_auth_on_a_post_is_401_and_has_no_effect(
    demo: PartnerClient, module_loan: dict[str, Any]
) -> None:
    path = f"/v1/loans/{module_loan['loan_id']}/repayments"
    before = outstanding_principal(demo, module_loan["loan_id"])
    body = msgspec.json.encode({"amount": 50_000, "external_ref": ref()})
    response = demo.http.post(path, content=body, headers={"Idempotency-Key": "k-unauth",
                                                             "Content-Type": "application/json"})
    assert_error(response, 401, "unauthenticated")
    assert outstanding_principal(demo, module_loan["loan_id"]) == before


def test_wrong_secret_or_unknown_partner_is_401(
    system: Any, module_loan: dict[str, Any]
) -> None:
    path = f"/v1/loans/{module_loan['loan_id']}"
    for partner, secret in (("demo", b"not-the-secret"), ("demo", b"demo2-secret-change-me"),
                            ("nobody", DEMO_SECRET)):
        client = PartnerClient(system.system.api_url, partner, secret=secret)
        try:
            assert_error(client.get(path), 401, "unauthenticated")
        finally:
            client.close()


def test_signature_covers_method_path_query_and_body(
    demo: PartnerClient, module_loan: dict[str, Any]
) -> None:
    loan_path = f"/v1/loans/{module_loan['loan_id']}"
    now = int(time.time())
    # Signed for another path.
    headers = signed_headers("demo", DEMO_SECRET, "GET", loan_path + "/payoff", b"", now)
    assert_error(send(demo, "GET", loan_path, b"", headers), 401, "unauthenticated")
    # Signed without the query string.
    headers = signed_headers("demo", DEMO_SECRET, "GET", loan_path, b"", now)
    assert_error(send(demo, "GET", loan_path + "?x=1", b"", headers), 401, "unauthenticated")
    # Signed with the query string: accepted.
    headers = signed_headers("demo", DEMO_SECRET, "GET", loan_path + "?x=1", b"", now)
    assert send(demo, "GET", loan_path + "?x=1", b"", headers).status_code == 200
    # Body changed after signing.
    path = loan_path + "/repayments"
    signed_body = b'{"amount":1,"external_ref":"R-sig-1"}'
    headers = signed_headers("demo", DEMO_SECRET, "POST", path, signed_body, now,
                             idempotency_key=uuid.uuid4().hex)
    tampered = b'{"amount":9,"external_ref":"R-sig-1"}'
    assert_error(send(demo, "POST", path, tampered, headers), 401, "unauthenticated")
    # One character of the signature flipped.
    headers = signed_headers("demo", DEMO_SECRET, "GET", loan_path, b"", now)
    sig = headers["X-Signature"]
    headers["X-Signature"] = ("1" if sig[0] != "1" else "2") + sig[1:]
    assert_error(send(demo, "GET", loan_path, b"", headers), 401, "unauthenticated")


@pytest.mark.parametrize(("offset", "code"), [(-301, "stale_request"), (301, "stale_request"),
                                              (-400, "stale_request"), (-290, None), (290, None)])
def test_timestamp_more_than_300_s_away_is_stale(
    demo: PartnerClient, module_loan: dict[str, Any], offset: int, code: str | None
) -> None:
    path = f"/v1/loans/{module_loan['loan_id']}"
    headers = signed_headers("demo", DEMO_SECRET, "GET", path, b"", _seconds_away(offset))
    response = send(demo, "GET", path, b"", headers)
    if code is None:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, 401, code)


@pytest.mark.parametrize("nonce", ["short", "x" * 65, "has space!", "dots.and.more"])
def test_malformed_nonce_is_401(
    demo: PartnerClient, module_loan: dict[str, Any], nonce: str
) -> None:
    path = f"/v1/loans/{module_loan['loan_id']}"
    headers = signed_headers("demo", DEMO_SECRET, "GET", path, b"", int(time.time()),
                             nonce=nonce)
    response = send(demo, "GET", path, b"", headers)
    assert_error(response, 401, "unauthenticated")


def test_same_nonce_twice_is_replayed_request(
    demo: PartnerClient, module_loan: dict[str, Any]
) -> None:
    path = f"/v1/loans/{module_loan['loan_id']}"
    nonce = f"n-{uuid.uuid4().hex}"
    first = signed_headers("demo", DEMO_SECRET, "GET", path, b"", int(time.time()), nonce=nonce)
    assert send(demo, "GET", path, b"", first).status_code == 200
    second = signed_headers("demo", DEMO_SECRET, "GET", path, b"", int(time.time()), nonce=nonce)
    assert_error(send(demo, "GET", path, b"", second), 401, "replayed_request")


def test_reused_nonce_on_a_post_has_no_effect(
    demo: PartnerClient, module_loan: dict[str, Any]
) -> None:
    loan_id = module_loan["loan_id"]
    path = f"/v1/loans/{loan_id}/repayments"
    nonce = f"n-{uuid.uuid4().hex}"
    body1 = f'{{"amount":1000,"external_ref":"{ref()}"}}'.encode()
    h1 = signed_headers("demo", DEMO_SECRET, "POST", path, body1, int(time.time()), nonce=nonce,
                        idempotency_key=uuid.uuid4().hex)
    before = demo.get(f"/v1/loans/{loan_id}").json()
    assert send(demo, "POST", path, body1, h1).status_code == 201
    body2 = f'{{"amount":2000,"external_ref":"{ref()}"}}'.encode()
    h2 = signed_headers("demo", DEMO_SECRET, "POST", path, body2, int(time.time()), nonce=nonce,
                        idempotency_key=uuid.uuid4().hex)
    assert_error(send(demo, "POST", path, body2, h2), 401, "replayed_request")
    after = demo.get(f"/v1/loans/{loan_id}").json()
    paid_before = sum(line["paid"]["interest"] for line in before["schedule"])
    paid_after = sum(line["paid"]["interest"] for line in after["schedule"])
    assert paid_after - paid_before == 1000


# ---- Idempotency-Key ------------------------------------------------------------------------


def test_post_without_idempotency_key_is_400(demo: PartnerClient) -> None:
    body = msgspec.json.encode(app_body())
    headers = signed_headers("demo", DEMO_SECRET, "POST", "/v1/applications", body,
                             int(time.time()))
    assert "Idempotency-Key" not in headers
    assert_error(send(demo, "POST", "/v1/applications", body, headers), 400, "invalid_request")


@pytest.mark.parametrize(("length", "status"), [(256, 400), (1000, 400), (255, 201), (1, 201)])
def test_idempotency_key_length_is_1_to_255(
    demo: PartnerClient, length: int, status: int
) -> None:
    key = uuid.uuid4().hex + "k" * (length - 32) if length >= 32 else uuid.uuid4().hex[:length]
    assert len(key) == length
    response = demo.post("/v1/applications", app_body(), key=key)
    if status == 400:
        assert_error(response, 400, "invalid_request")
    else:
        assert response.status_code == status, response.text


def test_replay_returns_the_first_response_byte_for_byte_once(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    key = uuid.uuid4().hex
    body = {"amount": FIRST_TOTAL, "external_ref": ref(), "kind": "regular"}
    path = f"/v1/loans/{loan['loan_id']}/repayments"

    first = demo.post(path, body, key=key)
    assert first.status_code == 201, first.text
    assert first.headers.get("idempotent-replayed") is None

    for _ in range(2):
        again = demo.post(path, body, key=key)  # a new nonce and timestamp every time
        assert again.status_code == 201
        assert again.content == first.content
        assert again.headers.get("idempotent-replayed") == "true"

    assert outstanding_principal(demo, loan["loan_id"]) == P - FIRST_PRINCIPAL


def test_replay_of_an_application_and_a_booking(demo: PartnerClient) -> None:
    body = app_body()
    key = uuid.uuid4().hex
    first = demo.post("/v1/applications", body, key=key)
    again = demo.post("/v1/applications", body, key=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers.get("idempotent-replayed") == "true"

    app_id = first.json()["application_id"]
    book_key = uuid.uuid4().hex
    booked = demo.post("/v1/loans", {"application_id": app_id}, key=book_key)
    rebooked = demo.post("/v1/loans", {"application_id": app_id}, key=book_key)
    assert (booked.status_code, rebooked.status_code) == (201, 201)
    assert rebooked.content == booked.content
    assert rebooked.headers.get("idempotent-replayed") == "true"
    customer = demo.get(f"/v1/customers/{first.json()['customer_id']}").json()
    assert customer["loan_ids"] == [booked.json()["loan_id"]]


def test_replay_of_a_refused_request_is_the_same_refusal(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    key = uuid.uuid4().hex
    body = {"amount": 10 * P, "external_ref": ref(), "kind": "regular"}
    path = f"/v1/loans/{loan['loan_id']}/repayments"
    first = demo.post(path, body, key=key)
    assert_error(first, 422, "amount_exceeds_due")
    again = demo.post(path, body, key=key)
    assert again.status_code == 422
    assert again.content == first.content
    assert outstanding_principal(demo, loan["loan_id"]) == P


def test_same_key_with_another_body_is_409_and_has_no_effect(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    key = uuid.uuid4().hex
    path = f"/v1/loans/{loan['loan_id']}/repayments"
    first = demo.post(path, {"amount": FIRST_TOTAL, "external_ref": ref()}, key=key)
    assert first.status_code == 201, first.text

    other = demo.post(path, {"amount": 5_000, "external_ref": ref()}, key=key)
    assert_error(other, 409, "idempotency_key_reused")
    # The same key on another endpoint is another request too.
    elsewhere = demo.post("/v1/applications", app_body(), key=key)
    assert_error(elsewhere, 409, "idempotency_key_reused")

    after = demo.get(f"/v1/loans/{loan['loan_id']}").json()
    assert after["outstanding"]["principal"] == P - FIRST_PRINCIPAL
    assert after["schedule"][1]["paid"]["interest"] == 0


def test_keys_are_scoped_to_the_partner(demo: PartnerClient, demo2: PartnerClient) -> None:
    mine, theirs = new_loan(demo), new_loan(demo2)
    key = uuid.uuid4().hex
    a = demo.post(f"/v1/loans/{mine['loan_id']}/repayments",
                  {"amount": FIRST_TOTAL, "external_ref": ref()}, key=key)
    b = demo2.post(f"/v1/loans/{theirs['loan_id']}/repayments",
                   {"amount": FIRST_TOTAL, "external_ref": ref()}, key=key)
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert b.headers.get("idempotent-replayed") is None
    assert outstanding_principal(demo2, theirs["loan_id"]) == P - FIRST_PRINCIPAL


def test_concurrent_identical_posts_have_exactly_one_effect(system: Any) -> None:
    setup = system.client("demo")
    try:
        loan = new_loan(setup)
    finally:
        setup.close()
    path = f"/v1/loans/{loan['loan_id']}/repayments"
    body = {"amount": FIRST_TOTAL, "external_ref": ref(), "kind": "regular"}
    key = uuid.uuid4().hex
    threads_n = 20
    clients = [system.client("demo") for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)
    answers: list[Any] = [None] * threads_n

    def worker(i: int) -> None:
        try:
            barrier.wait(10)
            response = clients[i].post(path, body, key=key)
            answers[i] = (response.status_code, response.content)
        except BaseException as exc:  # noqa: BLE001 - reported below
            answers[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client in clients:
        client.close()

    assert all(isinstance(a, tuple) for a in answers), answers
    done = [content for status, content in answers if status == 201]
    busy = [content for status, content in answers if status == 409]
    assert len(done) + len(busy) == threads_n, answers
    assert done, answers
    assert len(set(done)) == 1, "every successful answer must be the same bytes"
    for content in busy:
        assert httpx.Response(409, content=content).json()["error"]["code"] == (
            "request_in_progress"
        )

    check = system.client("demo")
    try:
        assert outstanding_principal(check, loan["loan_id"]) == P - FIRST_PRINCIPAL
        final = check.post(path, body, key=key)
        assert final.status_code == 201
        assert final.content == done[0]
        loan_after = check.get(f"/v1/loans/{loan['loan_id']}").json()
        assert loan_after["schedule"][0]["paid"]["interest"] == 15_000
        assert loan_after["schedule"][1]["paid"]["interest"] == 0
    finally:
        check.close()


# ---- transport ------------------------------------------------------------------------------


def test_body_over_1_mib_is_413(demo: PartnerClient, module_loan: dict[str, Any]) -> None:
    path = f"/v1/loans/{module_loan['loan_id']}/repayments"
    before = outstanding_principal(demo, module_loan["loan_id"])
    raw = b'{"amount":1000,"external_ref":"R-big","kind":"regular"}'
    raw = raw + b" " * (1024 * 1024 + 1 - len(raw))
    assert len(raw) == 1024 * 1024 + 1
    assert_error(demo.request("POST", path, raw=raw), 413, "payload_too_large")
    assert outstanding_principal(demo, module_loan["loan_id"]) == before


def test_body_of_exactly_1_mib_is_read(demo: PartnerClient) -> None:
    raw = b'{"application_id":"AP-0000-9999999999"}'
    raw = raw + b" " * (1024 * 1024 - len(raw))
    assert_error(demo.request("POST", "/v1/loans", raw=raw), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nothing"), ("GET", "/v2/loans/LN-0000-0000000001"), ("GET", "/"),
     ("DELETE", "/v1/loans/LN-0000-0000000001"), ("POST", "/v1/customers/CU-0000-0000000001"),
     ("GET", "/v1/loans/LN-0000-0000000001/payoff/extra"), ("GET", "/v1/repayments/batch")],
)
def test_unknown_route_is_404(demo: PartnerClient, method: str, path: str) -> None:
    body: dict[str, Any] | None = {} if method == "POST" else None
    assert_error(demo.request(method, path, body), 404, "not_found")


def test_over_the_partners_rate_the_api_answers_429_and_the_same_request_runs_later(
    ray_cluster: None, tmp_path: Path,
) -> None:
    """The token is taken in the admission round trip (gateway/guard.py): past the burst a
    request is refused 429 with Retry-After, having used neither its nonce nor its key, so
    the partner sends it again unchanged once a token is back."""
    config = tmp_path / "rate.toml"
    config.write_text("[gateway]\nrate_per_partner_s = 1.0\nrate_burst = 2\n")
    with fresh_system(config) as running:
        client = running.client()
        assert client.get("/v1/customers/CU-0000-0000000001").status_code == 404
        assert client.get("/v1/customers/CU-0000-0000000001").status_code == 404
        content = msgspec.json.encode(app_body())
        headers = signed_headers(client.partner_id, client.secret, "POST", "/v1/applications",
                                 content, int(time.time()), nonce=f"n-{uuid.uuid4().hex}",
                                 idempotency_key=f"k-{uuid.uuid4().hex}")
        refused = client.http.post("/v1/applications", content=content, headers=headers)
        assert_error(refused, 429, "rate_limited", None)
        assert int(refused.headers["retry-after"]) >= 1
        time.sleep(1.1)
        accepted = client.http.post("/v1/applications", content=content, headers=headers)
        assert accepted.status_code == 201, accepted.text
