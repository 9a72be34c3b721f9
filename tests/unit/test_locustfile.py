"""The locust load test builds requests the gateway accepts (no network, no locust run)."""

from __future__ import annotations

import importlib
import os
import time
from datetime import date
from types import ModuleType

import msgspec
import pytest

from gateway.signing import AuthError, verify_request
from lending.identity import parse_id_number

NOW_S = 1_795_000_000
SECRET = b"locust-test-secret"


@pytest.fixture(scope="module")
def locustfile() -> ModuleType:
    # Importing locust runs gevent's monkey.patch_all() unless told not to; this process also
    # runs the asyncio tests, so keep it unpatched (only locust reads this variable).
    previous = os.environ.get("LOCUST_SKIP_MONKEY_PATCH")
    os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
    try:
        return importlib.import_module("loadtests.locustfile")
    finally:
        if previous is None:
            del os.environ["LOCUST_SKIP_MONKEY_PATCH"]
        else:
            os.environ["LOCUST_SKIP_MONKEY_PATCH"] = previous


def verify(headers: dict[str, str], method: str, path: str, body: bytes) -> str:
    return verify_request(headers, method, path, body, {"p1": SECRET}, NOW_S)


def test_post_is_signed_and_carries_an_idempotency_key(locustfile: ModuleType) -> None:
    payload = locustfile.application_body(locustfile.ID_NUMBERS.next())
    body, headers = locustfile.build_request(
        "POST", "/v1/applications", payload, partner_id="p1", secret=SECRET, now_s=NOW_S
    )
    assert verify(headers, "POST", "/v1/applications", body) == "p1"
    assert msgspec.json.decode(body) == payload
    assert headers["Idempotency-Key"]


def test_get_is_signed_over_the_empty_body(locustfile: ModuleType) -> None:
    path = "/v1/loans/LN-0003-0000000042/payoff"
    body, headers = locustfile.build_request(
        "GET", path, partner_id="p1", secret=SECRET, now_s=NOW_S
    )
    assert body == b""
    assert "Idempotency-Key" not in headers
    assert verify(headers, "GET", path, body) == "p1"


def test_signature_binds_path_and_body(locustfile: ModuleType) -> None:
    body, headers = locustfile.build_request(
        "POST", "/v1/loans", {"application_id": "AP-0001-0000000001"},
        partner_id="p1", secret=SECRET, now_s=NOW_S,
    )
    with pytest.raises(AuthError):
        verify(headers, "POST", "/v1/loans/x", body)
    with pytest.raises(AuthError):
        verify(headers, "POST", "/v1/loans", body + b" ")


def test_default_timestamp_is_current_and_nonces_and_keys_are_fresh(
    locustfile: ModuleType,
) -> None:
    seen_nonces, seen_keys = set(), set()
    for _ in range(50):
        body, headers = locustfile.build_request("POST", "/v1/loans", {"application_id": "a"})
        # Accepted now (timestamp within the skew) with the configured partner's secret.
        verify_request(
            headers, "POST", "/v1/loans", body,
            {locustfile.PARTNER_ID: locustfile.PARTNER_SECRET}, int(time.time()),
        )
        seen_nonces.add(headers["X-Nonce"])
        seen_keys.add(headers["Idempotency-Key"])
    assert len(seen_nonces) == 50
    assert len(seen_keys) == 50


def test_default_partner_is_the_development_demo(locustfile: ModuleType) -> None:
    if "LENDCORE_LOCUST_PARTNER" not in os.environ:
        assert locustfile.PARTNER_ID == "demo"
    if "LENDCORE_LOCUST_SECRET" not in os.environ:
        assert locustfile.PARTNER_SECRET == b"demo-secret-change-me"


def test_id_numbers_are_valid_unique_and_approvable(locustfile: ModuleType) -> None:
    today = date(2026, 11, 29)
    numbers = locustfile.IdNumbers(today=today)
    produced = [numbers.next() for _ in range(2000)]
    assert len(set(produced)) == len(produced)
    for id_number in produced:
        info = parse_id_number(id_number)  # raises on a bad check digit
        assert 100 <= info.sequence <= 899
        assert 24 <= (today - info.birth_date).days // 365 <= 50


def test_first_installment_budget(locustfile: ModuleType) -> None:
    loan = {"schedule": [{"total": 91680, "penalty": 0,
                          "paid": {"principal": 100, "interest": 0, "penalty": 0, "fee": 0}}]}
    assert locustfile.first_installment_unpaid(loan) == 91580


def test_import_left_this_process_unpatched(locustfile: ModuleType) -> None:
    from gevent import monkey

    assert not monkey.is_module_patched("socket")
