from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from gateway.signing import (
    AuthError,
    body_digest,
    signature,
    signed_headers,
    verify_request,
)

PARTNER = "demo"
SECRET = b"demo-secret-change-me"
SECRETS = {PARTNER: SECRET, "demo2": b"demo2-secret-change-me"}
NOW_S = 1_795_000_000
METHOD = "POST"
PATH = "/v1/loans?dry_run=1"
BODY = '{"application_id": "A-1", "name": "张三"}'.encode()
NONCE = "nonce-1234_ABCD"


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def good_headers(**overrides: str) -> dict[str, str]:
    headers = lowered(signed_headers(PARTNER, SECRET, METHOD, PATH, BODY, NOW_S, nonce=NONCE))
    headers.update(overrides)
    return headers


def verify(
    headers: dict[str, str],
    method: str = METHOD,
    path: str = PATH,
    body: bytes = BODY,
    now_s: int = NOW_S,
) -> str:
    return verify_request(headers, method, path, body, SECRETS, now_s)


def expect_auth_error(
    code: str,
    headers: dict[str, str],
    method: str = METHOD,
    path: str = PATH,
    body: bytes = BODY,
    now_s: int = NOW_S,
) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verify(headers, method, path, body, now_s)
    assert caught.value.code == code
    assert caught.value.message
    return caught.value


def test_body_digest_is_lowercase_hex_sha256() -> None:
    assert body_digest(b"") == hashlib.sha256(b"").hexdigest()
    assert body_digest(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert body_digest(BODY) == hashlib.sha256(BODY).hexdigest()


def test_signature_matches_known_vector() -> None:
    message = f"POST\n{PATH}\n{NOW_S}\n{NONCE}\n{hashlib.sha256(BODY).hexdigest()}".encode()
    expected = hmac.new(SECRET, message, hashlib.sha256).hexdigest()
    assert signature(SECRET, "POST", PATH, str(NOW_S), NONCE, BODY) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


def test_signature_of_empty_body_hashes_empty_string() -> None:
    message = f"GET\n/v1/loans/L-1\n{NOW_S}\n{NONCE}\n{hashlib.sha256(b'').hexdigest()}".encode()
    expected = hmac.new(SECRET, message, hashlib.sha256).hexdigest()
    assert signature(SECRET, "GET", "/v1/loans/L-1", str(NOW_S), NONCE, b"") == expected


def test_signed_headers_carry_everything_a_client_sends() -> None:
    headers = signed_headers(
        PARTNER, SECRET, METHOD, PATH, BODY, NOW_S, nonce=NONCE, idempotency_key="key-1"
    )
    assert headers == {
        "X-Partner-Id": PARTNER,
        "X-Timestamp": str(NOW_S),
        "X-Nonce": NONCE,
        "X-Signature": signature(SECRET, METHOD, PATH, str(NOW_S), NONCE, BODY),
        "Content-Type": "application/json",
        "Idempotency-Key": "key-1",
    }


def test_signed_headers_without_idempotency_key_omit_it() -> None:
    headers = signed_headers(PARTNER, SECRET, "GET", "/v1/loans/L-1", b"", NOW_S)
    assert "Idempotency-Key" not in headers


def test_signed_headers_pick_fresh_valid_nonces() -> None:
    nonces = {signed_headers(PARTNER, SECRET, "GET", "/", b"", NOW_S)["X-Nonce"] for _ in range(20)}
    assert len(nonces) == 20
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{8,64}", nonce) for nonce in nonces)


def test_valid_request_returns_partner_id() -> None:
    assert verify(good_headers()) == PARTNER


def test_second_partner_verifies_with_its_own_secret() -> None:
    headers = signed_headers("demo2", SECRETS["demo2"], METHOD, PATH, BODY, NOW_S)
    assert verify(lowered(headers)) == "demo2"


def test_lower_case_header_names_as_given_by_asgi() -> None:
    headers = good_headers()
    assert all(name == name.lower() for name in headers)
    assert verify(headers) == PARTNER


def test_header_names_in_any_case_are_accepted() -> None:
    headers = signed_headers(PARTNER, SECRET, METHOD, PATH, BODY, NOW_S, nonce=NONCE)
    assert verify(headers) == PARTNER
    assert verify({name.upper(): value for name, value in headers.items()}) == PARTNER


@pytest.mark.parametrize("missing", ["x-partner-id", "x-timestamp", "x-nonce", "x-signature"])
def test_each_missing_header_is_unauthenticated(missing: str) -> None:
    headers = good_headers()
    del headers[missing]
    error = expect_auth_error("unauthenticated", headers)
    assert missing in error.message


@pytest.mark.parametrize("empty", ["x-partner-id", "x-timestamp", "x-nonce", "x-signature"])
def test_each_empty_header_is_unauthenticated(empty: str) -> None:
    expect_auth_error("unauthenticated", good_headers(**{empty: ""}))


def test_unknown_partner_is_unauthenticated() -> None:
    headers = lowered(signed_headers("stranger", SECRET, METHOD, PATH, BODY, NOW_S))
    expect_auth_error("unauthenticated", headers)


def test_unknown_partner_and_bad_signature_look_the_same() -> None:
    unknown = lowered(signed_headers("stranger", SECRET, METHOD, PATH, BODY, NOW_S))
    wrong = lowered(signed_headers(PARTNER, b"wrong", METHOD, PATH, BODY, NOW_S))
    assert (
        expect_auth_error("unauthenticated", unknown).message
        == expect_auth_error("unauthenticated", wrong).message
    )


def test_wrong_secret_is_unauthenticated() -> None:
    headers = lowered(signed_headers(PARTNER, b"demo2-secret-change-me", METHOD, PATH, BODY, NOW_S))
    expect_auth_error("unauthenticated", headers)


def test_tampered_body_is_unauthenticated() -> None:
    expect_auth_error("unauthenticated", good_headers(), body=BODY + b" ")


def test_tampered_path_is_unauthenticated() -> None:
    expect_auth_error("unauthenticated", good_headers(), path="/v1/loans?dry_run=0")


def test_query_string_is_part_of_signed_path() -> None:
    expect_auth_error("unauthenticated", good_headers(), path="/v1/loans")


def test_tampered_method_is_unauthenticated() -> None:
    expect_auth_error("unauthenticated", good_headers(), method="PUT")


def test_tampered_timestamp_is_unauthenticated() -> None:
    expect_auth_error("unauthenticated", good_headers(**{"x-timestamp": str(NOW_S + 1)}))


def test_tampered_nonce_is_unauthenticated() -> None:
    expect_auth_error("unauthenticated", good_headers(**{"x-nonce": NONCE + "x"}))


def test_uppercase_hex_signature_is_unauthenticated() -> None:
    headers = good_headers()
    headers["x-signature"] = headers["x-signature"].upper()
    expect_auth_error("unauthenticated", headers)


@pytest.mark.parametrize("provided", ["", "not-hex", "ab" * 31, "ab" * 33, "é" * 64, "\x00" * 64])
def test_malformed_signature_is_unauthenticated(provided: str) -> None:
    expect_auth_error("unauthenticated", good_headers(**{"x-signature": provided}))


@pytest.mark.parametrize(
    "bad_nonce",
    [
        "short-7",  # 7 chars
        "a" * 65,
        "has space1",
        "dot.dot.dot",
        "slash/slash",
        "plus+plus+",
        "équipe-nonce",
        "nonce-ok-1\n",
    ],
)
def test_bad_nonce_is_unauthenticated_even_when_signed(bad_nonce: str) -> None:
    headers = lowered(signed_headers(PARTNER, SECRET, METHOD, PATH, BODY, NOW_S, nonce=bad_nonce))
    error = expect_auth_error("unauthenticated", headers)
    assert "nonce" in error.message


@pytest.mark.parametrize("good_nonce", ["a" * 8, "Z" * 64, "Ab0_-xyZ"])
def test_nonce_length_and_charset_bounds_are_accepted(good_nonce: str) -> None:
    headers = lowered(signed_headers(PARTNER, SECRET, METHOD, PATH, BODY, NOW_S, nonce=good_nonce))
    assert verify(headers) == PARTNER


@pytest.mark.parametrize(
    "bad_timestamp", ["abc", "1795000000.5", "-1795000000", "+1795000000", " 1795000000", "١٢"]
)
def test_non_integer_timestamp_is_unauthenticated_even_when_signed(bad_timestamp: str) -> None:
    headers = good_headers(
        **{
            "x-timestamp": bad_timestamp,
            "x-signature": signature(SECRET, METHOD, PATH, bad_timestamp, NONCE, BODY),
        }
    )
    error = expect_auth_error("unauthenticated", headers)
    assert "timestamp" in error.message


@pytest.mark.parametrize("skew_s", [300, -300, 0, 1, -1])
def test_skew_up_to_300_s_is_accepted(skew_s: int) -> None:
    assert verify(good_headers(), now_s=NOW_S + skew_s) == PARTNER


@pytest.mark.parametrize("skew_s", [301, -301, 86400])
def test_skew_beyond_300_s_is_stale(skew_s: int) -> None:
    expect_auth_error("stale_request", good_headers(), now_s=NOW_S + skew_s)


def test_max_skew_is_configurable() -> None:
    headers = good_headers()
    assert verify_request(headers, METHOD, PATH, BODY, SECRETS, NOW_S + 10, max_skew_s=10)
    with pytest.raises(AuthError) as caught:
        verify_request(headers, METHOD, PATH, BODY, SECRETS, NOW_S + 11, max_skew_s=10)
    assert caught.value.code == "stale_request"


def test_stale_and_badly_signed_is_unauthenticated_not_stale() -> None:
    # Skew is judged only after the signature, so unsigned probes learn nothing about the clock.
    headers = lowered(signed_headers(PARTNER, b"wrong", METHOD, PATH, BODY, NOW_S))
    expect_auth_error("unauthenticated", headers, now_s=NOW_S + 10_000)


def test_auth_error_carries_code_and_message() -> None:
    error = AuthError("stale_request", "too old")
    assert (error.code, error.message) == ("stale_request", "too old")
    assert isinstance(error, Exception)
