"""Delivering partner webhook events (issue 14), from the gateway process (`lendcore up`).

Shards write each event into the outbox `webhook_events` in the commit of the change it
tells of (lending/events.py, storage/shard_store.py). `WebhookDispatcher` is one asyncio
task of the gateway that, round after round:

1. claims up to `[webhooks] batch_max` due events, each the oldest pending event of its
   application/loan (`order_key`): an event is never sent while an earlier one of the same
   loan is pending, i.e. before those were delivered or given up (storage/webhook_store.py);
2. POSTs them, at most `concurrency` at once, each within `timeout_s`, to the partner's
   endpoint, signed with the partner API's HMAC scheme (API.md, gateway/signing.py) under
   the endpoint's secret, with headers naming the event (receivers dedupe by X-Event-Id);
3. records every outcome in one statement: a 2xx answer → `delivered`; anything else
   (another status, a timeout, a refused connection, no endpoint registered) → pending again
   after an exponential backoff (`backoff_initial_s` × 2^(attempt − 1), at most
   `backoff_max_s`), until `max_attempts`, then `failed`. Operators see them all and may
   redeliver one (gateway/webhooks_desk.py).

At least once: an event is marked delivered only after its 2xx; a gateway that dies between
the two sends it again once its claim (`claim_s`) has lapsed. Redirects are not followed
(a 3xx is a failed attempt), and the response body is never read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg
import httpx
import msgspec
from prometheus_client import Counter, Gauge, Histogram

from cluster.config import WebhookEndpoint, WebhookSettings
from gateway.pii import PiiVault
from gateway.signing import signed_headers
from lending.events import DELIVERED, RetryPolicy
from storage import webhook_store
from storage.db import DATABASE_DOWN

log = logging.getLogger("lendcore.webhooks")

USER_AGENT = "lendcore-webhooks/1"
HEADER_EVENT_ID = "X-Event-Id"
HEADER_EVENT_TYPE = "X-Event-Type"
HEADER_ATTEMPT = "X-Delivery-Attempt"
REGISTRY_REFRESH_S = 10.0  # endpoints are re-read at least this often (and on every change)
BACKLOG_REFRESH_S = 5.0  # the backlog gauges are refreshed this often
ERROR_MAX_CHARS = 300

ATTEMPTS = Counter(
    "lendcore_webhook_attempts_total",
    "Webhook delivery attempts, by partner, event type and result (delivered, retry: "
    "failed and pending again, failed: given up)",
    ["partner", "event_type", "result"],
)
POST_SECONDS = Histogram(
    "lendcore_webhook_post_seconds", "Time of one webhook POST, until its answer or failure",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
PENDING = Gauge("lendcore_webhook_pending_events", "Webhook events not yet delivered nor failed")
OLDEST_PENDING = Gauge("lendcore_webhook_oldest_pending_seconds",
                       "Age of the oldest pending webhook event (0 when none)")
FAILED = Gauge("lendcore_webhook_failed_events",
               "Webhook events given up after max_attempts (until redelivered)")


class Target(msgspec.Struct, frozen=True):
    """Where a partner's events go and what signs them."""

    url: str
    secret: bytes
    source: str  # config | ops


def delivery_headers(
    partner_id: str, secret: bytes, url: str, body: bytes, event_id: str, event_type: str,
    attempt: int, now_s: int, nonce: str | None = None,
) -> dict[str, str]:
    """The headers of one POST: the partner API's four signing headers (the canonical
    string's PATH is the endpoint URL's path with its query, as sent), plus the event's."""
    path = httpx.URL(url).raw_path.decode("ascii")
    headers = signed_headers(partner_id, secret, "POST", path, body, now_s, nonce)
    headers["User-Agent"] = USER_AGENT
    headers[HEADER_EVENT_ID] = event_id
    headers[HEADER_EVENT_TYPE] = event_type
    headers[HEADER_ATTEMPT] = str(attempt)
    return headers


class WebhookDispatcher:
    def __init__(
        self, *, pool: asyncpg.Pool, vault: PiiVault, settings: WebhookSettings,
        config_endpoints: dict[str, WebhookEndpoint],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.vault = vault
        self.settings = settings
        self.config_endpoints = config_endpoints
        self.clock = clock
        self.policy = RetryPolicy(settings.max_attempts, settings.backoff_initial_s,
                                  settings.backoff_max_s)
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._targets: dict[str, Target] = {}
        self._targets_at = float("-inf")  # monotonic time they were read; -inf: read again
        self._backlog_at = float("-inf")

    # ---- life -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.timeout_s, follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=self.settings.concurrency,
                                    max_keepalive_connections=self.settings.concurrency),
            )
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def endpoints_changed(self) -> None:
        """An endpoint was registered, replaced or removed: read them again, and look for
        events now (those waiting on a missing endpoint are due again only after their
        backoff)."""
        self._targets_at = float("-inf")
        self._wake.set()

    def wake(self) -> None:
        """Look for due events now (e.g. after an operator's redelivery)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            sent = 0
            try:
                await self._refresh_backlog()
                sent = await self.run_once()
            except DATABASE_DOWN as exc:
                log.warning("webhooks: database unavailable (%s); trying again",
                            type(exc).__name__)
            except asyncpg.PostgresError as exc:
                log.error("webhooks: %s; trying again", exc)
            except Exception:  # a background task: nobody else would see a bug
                log.exception("webhooks: round failed on a bug; trying again")
            if sent < self.settings.batch_max:  # a full page: more may be due at once
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.settings.poll_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    # ---- one round --------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim, send and record one page of due events; how many it sent."""
        targets = await self.targets()
        rows = await webhook_store.claim(self.pool, self.settings.batch_max,
                                         self.settings.claim_s)
        if not rows:
            return 0
        slots = asyncio.Semaphore(self.settings.concurrency)

        async def one(row: asyncpg.Record) -> webhook_store.Attempt:
            async with slots:
                return await self._deliver(row, targets.get(row["partner_id"]))

        attempts = list(await asyncio.gather(*(one(row) for row in rows)))
        await webhook_store.record(self.pool, attempts)
        for row, attempt in zip(rows, attempts, strict=True):
            result = attempt.status if attempt.status != "pending" else "retry"
            ATTEMPTS.labels(row["partner_id"], row["event_type"], result).inc()
        return len(rows)

    async def _deliver(
        self, row: asyncpg.Record, target: Target | None
    ) -> webhook_store.Attempt:
        attempt = int(row["attempts"]) + 1
        if target is None:
            return self._failed(row, attempt, None, "no webhook endpoint registered")
        body = row["body"].encode()
        headers = delivery_headers(
            row["partner_id"], target.secret, target.url, body, row["event_id"],
            row["event_type"], attempt, int(self.clock()))
        assert self._client is not None, "start() opens the client"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                async with self._client.stream("POST", target.url, content=body,
                                               headers=headers) as response:
                    status = response.status_code  # the body is never read
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return self._failed(row, attempt, None, error[:ERROR_MAX_CHARS])
        finally:
            POST_SECONDS.observe(time.perf_counter() - started)
        if 200 <= status < 300:
            return webhook_store.Attempt(row["shard_id"], row["event_id"], DELIVERED, None,
                                         status, None)
        return self._failed(row, attempt, status, f"HTTP {status}")

    def _failed(
        self, row: asyncpg.Record, attempt: int, http_status: int | None, error: str
    ) -> webhook_store.Attempt:
        status, delay_s = self.policy.after_failure(attempt)
        log.info("webhook %s to %s: attempt %s failed (%s); %s", row["event_id"],
                 row["partner_id"], attempt, error,
                 "given up" if delay_s is None else f"next in {delay_s:g} s")
        return webhook_store.Attempt(row["shard_id"], row["event_id"], status, delay_s,
                                     http_status, error)

    # ---- endpoints and gauges ---------------------------------------------------------------

    async def targets(self) -> dict[str, Target]:
        """Partner → endpoint: the partners file's, then the operator API's (the file wins:
        the operator API refuses to change an endpoint the file declares)."""
        now = time.monotonic()
        if now - self._targets_at < REGISTRY_REFRESH_S:
            return self._targets
        targets: dict[str, Target] = {}
        for row in await webhook_store.endpoints(self.pool):
            secret = self.vault.decrypt(bytes(row["secret_enc"])).encode()
            targets[row["partner_id"]] = Target(row["url"], secret, "ops")
        for partner_id, endpoint in self.config_endpoints.items():
            targets[partner_id] = Target(endpoint.url, endpoint.secret, "config")
        self._targets, self._targets_at = targets, now
        return targets

    async def _refresh_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_at < BACKLOG_REFRESH_S:
            return
        self._backlog_at = now
        pending, oldest_s, failed = await webhook_store.backlog(self.pool)
        PENDING.set(pending)
        OLDEST_PENDING.set(oldest_s)
        FAILED.set(failed)
