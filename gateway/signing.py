"""Partner request signing (API.md, "Partner authentication").

The canonical string is `METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nSHA256HEX(body)`, with METHOD and
PATH (query string included) exactly as they travel on the wire: any normalisation here would
let two different requests share one signature.

Nonce reuse is not checked here: it needs shared state, which lives in Redis (gateway.guard).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as token_source
from collections.abc import Mapping
from typing import Literal

AuthErrorCode = Literal["unauthenticated", "stale_request"]

HEADER_PARTNER_ID = "x-partner-id"
HEADER_TIMESTAMP = "x-timestamp"
HEADER_NONCE = "x-nonce"
HEADER_SIGNATURE = "x-signature"
REQUIRED_HEADERS = (HEADER_PARTNER_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

MAX_SKEW_S_DEFAULT = 300

# fullmatch, not `$`: `$` would also accept a trailing newline.
_NONCE_FORMAT = re.compile(r"[A-Za-z0-9_-]{8,64}")
# ASCII digits only: int() would also accept " 17", "+17", "1_7" and non-ASCII digits.
# 16 digits bounds the work and covers every plausible unix time.
_TIMESTAMP_FORMAT = re.compile(r"[0-9]{1,16}")
_SIGNATURE_FORMAT = re.compile(r"[0-9a-f]{64}")


class AuthError(Exception):
    """A request that must be answered 401 with `code`."""

    def __init__(self, code: AuthErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: AuthErrorCode = code
        self.message = message


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_string(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return "\n".join((method, path, timestamp, nonce, body_digest(body))).encode("utf-8")


def signature(
    secret: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> str:
    message = canonical_string(method, path, timestamp, nonce, body)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    secrets: Mapping[str, bytes],
    now_s: int,
    max_skew_s: int = MAX_SKEW_S_DEFAULT,
) -> str:
    """Return the authenticated partner id, or raise AuthError."""
    # ASGI already lower-cases header names; lower-casing again lets other callers pass any case.
    lowered = {name.lower(): value for name, value in headers.items()}
    partner_id, timestamp, nonce, provided = _required_headers(lowered)
    _check_formats(timestamp, nonce, provided)
    _check_signature(partner_id, secrets, method, path, timestamp, nonce, body, provided)
    # Only after the signature: a stale_request answer to an unsigned request would tell an
    # attacker which partner ids exist and how our clock is set.
    _check_freshness(int(timestamp), now_s, max_skew_s)
    return partner_id


def signed_headers(
    partner_id: str,
    secret: bytes,
    method: str,
    path: str,
    body: bytes,
    now_s: int,
    nonce: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, str]:
    """Headers a client sends. The nonce is not validated, so tests can build bad requests."""
    chosen_nonce = token_source.token_urlsafe(16) if nonce is None else nonce
    timestamp = str(now_s)
    headers = {
        "X-Partner-Id": partner_id,
        "X-Timestamp": timestamp,
        "X-Nonce": chosen_nonce,
        "X-Signature": signature(secret, method, path, timestamp, chosen_nonce, body),
        "Content-Type": "application/json",
    }
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def _required_headers(lowered: Mapping[str, str]) -> tuple[str, str, str, str]:
    for name in REQUIRED_HEADERS:
        if not lowered.get(name):
            raise AuthError("unauthenticated", f"missing header {name}")
    return (
        lowered[HEADER_PARTNER_ID],
        lowered[HEADER_TIMESTAMP],
        lowered[HEADER_NONCE],
        lowered[HEADER_SIGNATURE],
    )


def _check_formats(timestamp: str, nonce: str, provided_signature: str) -> None:
    if not _NONCE_FORMAT.fullmatch(nonce):
        raise AuthError("unauthenticated", "x-nonce must be 8-64 characters of [A-Za-z0-9_-]")
    if not _TIMESTAMP_FORMAT.fullmatch(timestamp):
        raise AuthError("unauthenticated", "x-timestamp must be integer unix seconds")
    # Also makes compare_digest safe: it raises TypeError on non-ASCII str.
    if not _SIGNATURE_FORMAT.fullmatch(provided_signature):
        raise AuthError("unauthenticated", "x-signature must be 64 lowercase hex characters")


def _check_signature(
    partner_id: str,
    secrets: Mapping[str, bytes],
    method: str,
    path: str,
    timestamp: str,
    nonce: str,
    body: bytes,
    provided_signature: str,
) -> None:
    secret = secrets.get(partner_id)
    # One message for unknown partner and bad signature, so partner ids cannot be enumerated.
    if secret is None:
        raise AuthError("unauthenticated", "signature verification failed")
    expected = signature(secret, method, path, timestamp, nonce, body)
    if not hmac.compare_digest(expected, provided_signature):
        raise AuthError("unauthenticated", "signature verification failed")


def _check_freshness(timestamp_s: int, now_s: int, max_skew_s: int) -> None:
    skew_s = abs(now_s - timestamp_s)
    if skew_s > max_skew_s:
        raise AuthError(
            "stale_request", f"x-timestamp is {skew_s} s from server time (max {max_skew_s} s)"
        )
