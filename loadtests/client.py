"""A signed partner client (sync, httpx) for tests, demos and the benchmark's set-up."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import msgspec

from gateway.signing import signed_headers

DEMO_PARTNERS = {"demo": b"demo-secret-change-me", "demo2": b"demo2-secret-change-me"}


class PartnerClient:
    def __init__(
        self, base_url: str, partner_id: str = "demo", secret: bytes | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.partner_id = partner_id
        self.secret = DEMO_PARTNERS[partner_id] if secret is None else secret
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def request(
        self, method: str, path: str, body: Any = None, *, key: str | None = None,
        raw: bytes | None = None, headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        content = raw if raw is not None else (b"" if body is None else msgspec.json.encode(body))
        if method == "POST" and key is None:
            key = uuid.uuid4().hex
        signed = signed_headers(
            self.partner_id, self.secret, method, path, content, int(time.time()),
            idempotency_key=key,
        )
        signed.update(headers or {})
        return self.http.request(method, path, content=content, headers=signed)

    def post(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        return self.request("POST", path, body, key=key)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)
