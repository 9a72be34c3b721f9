"""Partner API v1 (API.md): auth, idempotency, strict decoding, routing to shards.

The path of a POST: read the body (≤ 1 MiB) → verify the HMAC signature → rate limit →
decode and validate (400s here change nothing) → Redis admission (nonce + idempotency, one
round trip) → the shard (micro-batched Ray call; the shard commits before answering) →
store the response in Redis → answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from gateway.guard import RateLimit, RedisGuard
from gateway.http import (
    JSON,
    BodyTooLarge,
    HttpError,
    Receive,
    Scope,
    Send,
    answers_bugs_with_the_envelope,
    header_map,
    lifespan,
    read_body,
    respond,
    respond_error,
)
from gateway.pii import PiiVault
from gateway.router import Overloaded, ShardRouter
from gateway.schemas import (
    ApplicationIn,
    BatchRepaymentItemIn,
    BatchRepaymentsIn,
    BookLoanIn,
    RepaymentIn,
)
from gateway.screening import Screener
from gateway.signing import AuthError, verify_request
from gateway.validation import check_text, decode_json
from lending.commands import (
    BookLoan,
    Command,
    CustomerFacts,
    GetApplication,
    GetCustomer,
    GetLoan,
    GetPayoff,
    Repay,
    Reply,
    SubmitApplication,
)
from lending.identity import (
    IdNumberError,
    is_valid_mobile,
    mask_id_number,
    mask_name,
    mask_phone,
    parse_id_number,
)
from lending.loans import REPAYMENT_KINDS
from lending.products import ProductCatalog
from lending.screening import Screening
from lending.shard_state import shard_of_id

log = logging.getLogger("lendcore.api")
# How often a request whose admission outcome is unknown retries freeing its key.
UNKNOWN_ADMISSION_RETRY_S = 0.25

REQUESTS = Counter(
    "lendcore_http_requests_total", "HTTP requests answered", ["api", "route", "status"]
)
LATENCY = Histogram(
    "lendcore_http_request_seconds", "HTTP request latency", ["api", "route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
# The metric children of each route and status, labelled once: labels() takes a lock and
# builds the label tuple on every call. Routes and statuses are few (the route table's names
# and the HTTP statuses the API answers), so these stay small.
_REQUEST_COUNTERS: dict[tuple[str, int], Any] = {}
_ROUTE_LATENCIES: dict[str, Any] = {}


def _observe(route: str, status: int, seconds: float) -> None:
    counter = _REQUEST_COUNTERS.get((route, status))
    if counter is None:
        counter = _REQUEST_COUNTERS[(route, status)] = REQUESTS.labels(
            "partner", route, str(status))
    counter.inc()
    latency = _ROUTE_LATENCIES.get(route)
    if latency is None:
        latency = _ROUTE_LATENCIES[route] = LATENCY.labels("partner", route)
    latency.observe(seconds)


IDEMPOTENCY_KEY_MAX = 255

_APPLICATION = msgspec.json.Decoder(ApplicationIn)
_BOOK = msgspec.json.Decoder(BookLoanIn)
_REPAYMENT = msgspec.json.Decoder(RepaymentIn)
_BATCH = msgspec.json.Decoder(BatchRepaymentsIn)
_BATCH_ITEM = msgspec.json.Decoder(BatchRepaymentItemIn)


# status, body, extra headers
Response = tuple[int, bytes, list[tuple[bytes, bytes]]]
Handler = Callable[[Any, Any], Awaitable[Response]]


class BatchResult(msgspec.Struct):
    index: int
    status: int
    body: msgspec.Raw


class BatchResponse(msgspec.Struct):
    results: list[BatchResult]


class _Request(msgspec.Struct):
    method: str
    path: str  # with the query string: it is what the partner signed
    route: str
    body: bytes
    headers: dict[str, str]
    partner_id: str = ""


class PartnerApi:
    def __init__(
        self,
        *,
        secrets: dict[str, bytes],
        guard: RedisGuard,
        router: ShardRouter,
        vault: PiiVault,
        screener: Screener,
        catalog: ProductCatalog,
        merchants: dict[str, frozenset[str]],
        body_max_bytes: int,
        clock_skew_max_s: int,
        rate_per_s: float,
        rate_burst: int,
        request_timeout_s: float,
        common: Callable[[Scope, Receive, Send], Awaitable[bool]],
    ) -> None:
        self.secrets = secrets
        self.guard = guard
        self.router = router
        self.vault = vault
        self.screener = screener
        self.catalog = catalog
        # 受托支付: partner → the merchants it may name as payee (partners.toml `merchants`);
        # a partner that lists none may name any merchant (the sandbox's partners).
        self.merchants = merchants
        self.body_max_bytes = body_max_bytes
        self.clock_skew_max_s = clock_skew_max_s
        self.rate = RateLimit(rate_per_s, rate_burst)  # per partner, taken on admission
        self.request_timeout_s = request_timeout_s
        self._releases: set[asyncio.Task[None]] = set()  # keys freed after a timeout
        self.common = common  # /healthz, /readyz, /metrics, /openapi.json

    @answers_bugs_with_the_envelope
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http" or await self.common(scope, receive, send):
            return
        started = time.perf_counter()
        route = "unknown"
        status = 500
        try:
            # The request timeout bounds everything up to the answer: a partner is never
            # left waiting on a sick Redis, Postgres or shard host (faults: issue 12).
            async with asyncio.timeout(self.request_timeout_s):
                route, response = await self._handle(scope, receive)
            status = response[0]
            await respond(send, *response)
        except HttpError as error:
            status = error.status
            await respond_error(send, error)
        except TimeoutError:
            status = 503
            await respond_error(send, HttpError(
                503, "unavailable",
                f"no answer within {self.request_timeout_s:g} s; retry with the same "
                "Idempotency-Key", retry_after_s=1,
            ))
        finally:
            _observe(route, status, time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[str, Response]:
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        path = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        route, handler, ident = self._route(method, scope["path"])
        try:
            body = await read_body(scope, receive, self.body_max_bytes)
        except BodyTooLarge as exc:
            raise HttpError(
                413, "payload_too_large", f"bodies are limited to {self.body_max_bytes} bytes"
            ) from exc
        request = _Request(method, path, route, body, header_map(scope))
        request.partner_id = self._authenticate(request)
        # Every handler admits its request (gateway/guard.py), which also takes the
        # partner's rate-limit token: one Redis round trip for both.
        return route, await handler(request, ident)

    def _route(self, method: str, path: str) -> tuple[str, Handler, Any]:
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "v1":
            raise HttpError(404, "not_found", f"no route {method} {path}")
        key = (method, *parts[1:])
        match key:
            case ("POST", "applications"):
                return "applications.create", self._create_application, ""
            case ("GET", "applications", ident):
                return "applications.get", self._get, ("application", ident)
            case ("POST", "loans"):
                return "loans.create", self._book_loan, ""
            case ("GET", "loans", ident):
                return "loans.get", self._get, ("loan", ident)
            case ("GET", "loans", ident, "payoff"):
                return "loans.payoff", self._get, ("payoff", ident)
            case ("POST", "loans", ident, "repayments"):
                return "repayments.create", self._repay, ident
            case ("POST", "repayments", "batch"):
                return "repayments.batch", self._repay_batch, ""
            case ("GET", "customers", ident):
                return "customers.get", self._get, ("customer", ident)
        raise HttpError(404, "not_found", f"no route {method} {path}")

    def _authenticate(self, request: _Request) -> str:
        try:
            return verify_request(
                request.headers, request.method, request.path, request.body, self.secrets,
                int(time.time()), self.clock_skew_max_s,
            )
        except AuthError as error:
            raise HttpError(401, error.code, error.message) from error

    # ---- GET ------------------------------------------------------------------------------

    async def _get(self, request: _Request, target: tuple[str, str]) -> Response:
        kind, ident = target
        await self._admit(request, None, "")
        command = self._read_command(kind, ident, request.partner_id)
        reply = await self._dispatch(command[0], command[1])
        return reply.status, reply.body, _retry_after(reply.status)

    def _read_command(self, kind: str, ident: str, partner_id: str) -> tuple[int, Command]:
        id_kind = "loan" if kind == "payoff" else kind
        shard = shard_of_id(id_kind, ident)
        if shard is None or shard >= self.router.logical_shards:
            raise HttpError(404, "not_found", f"no {id_kind} {ident}")
        commands: dict[str, Command] = {
            "application": GetApplication(partner_id, ident),
            "loan": GetLoan(partner_id, ident),
            "payoff": GetPayoff(partner_id, ident),
            "customer": GetCustomer(partner_id, ident),
        }
        return shard, commands[kind]

    # ---- POST -----------------------------------------------------------------------------

    async def _create_application(self, request: _Request, _: str) -> Response:
        key = _idempotency_key(request)
        body = _decode(_APPLICATION, request.body)
        shard, facts = self._customer_facts(body)
        self._check_product(body)
        self._check_merchant(request.partner_id, body)
        command = SubmitApplication(
            request.partner_id, key, _request_hash(request), body.partner_application_id,
            body.product_code, body.amount, body.term, facts, body.device.device_id,
            body.device.ip, body.purpose, body.merchant_id,
        )

        async def screened(unscreened: Command) -> Command:
            if facts.id_error is not None:
                return unscreened  # admission declines it (id_checksum): nobody to ask
            screening = await self._screen(request.partner_id, body, facts)
            return msgspec.structs.replace(unscreened, screening=screening)

        return await self._write(request, key, shard, command, prepare=screened)

    async def _screen(
        self, partner_id: str, body: ApplicationIn, facts: CustomerFacts
    ) -> Screening:
        applicant = body.applicant
        return await self.screener.screen(
            partner_id=partner_id, partner_application_id=body.partner_application_id,
            id_hash=facts.id_hash, id_number=applicant.id_number.upper(), name=applicant.name,
            phone=applicant.phone, phone_hash=self.vault.lookup_hash(applicant.phone),
            birth_date=facts.birth_date, amount=body.amount, device_id=body.device.device_id,
            ip=body.device.ip,
        )

    async def _book_loan(self, request: _Request, _: str) -> Response:
        key = _idempotency_key(request)
        body = _decode(_BOOK, request.body)
        shard = self._shard_or_404("application", body.application_id)
        command = BookLoan(request.partner_id, key, _request_hash(request), body.application_id)
        return await self._write(request, key, shard, command)

    async def _repay(self, request: _Request, loan_id: str) -> Response:
        key = _idempotency_key(request)
        body = _decode(_REPAYMENT, request.body)
        _check_kind(body.kind, "kind")
        shard = self._shard_or_404("loan", loan_id)
        command = Repay(
            request.partner_id, key, _request_hash(request), loan_id, body.amount,
            body.external_ref, body.kind,
        )
        return await self._write(request, key, shard, command)

    async def _repay_batch(self, request: _Request, _: str) -> Response:
        """Each item succeeds or fails alone. Item i is deduplicated in its shard under the
        derived key `<key>#<i>`, so a replay after Redis lost the cached response returns
        the same bytes item by item."""
        key = _idempotency_key(request)
        batch = _decode(_BATCH, request.body)
        request_hash = _request_hash(request)
        try:
            self.router.ensure_capacity(len(batch.items))  # all items fit, or none is queued
        except Overloaded as exc:
            raise HttpError(503, "unavailable", str(exc), retry_after_s=1) from exc
        admitted = await self._admit(request, key, request_hash)
        if admitted is not None:
            return admitted
        results: list[BatchResult | None] = [None] * len(batch.items)
        waits: list[tuple[int, asyncio.Future[Reply]]] = []
        for index, raw in enumerate(batch.items):
            try:
                item = _decode(_BATCH_ITEM, bytes(raw))
                _check_kind(item.kind, "kind")
            except HttpError as refused:
                results[index] = BatchResult(index, refused.status, msgspec.Raw(refused.body()))
                continue
            shard = shard_of_id("loan", item.loan_id)
            if shard is None or shard >= self.router.logical_shards:
                missing = HttpError(404, "not_found", f"no loan {item.loan_id}")
                results[index] = BatchResult(index, 404, msgspec.Raw(missing.body()))
                continue
            command = Repay(
                request.partner_id, f"{key}#{index}", hashlib.sha256(bytes(raw)).hexdigest(),
                item.loan_id, item.amount, item.external_ref, item.kind,
            )
            waits.append((index, self.router.call(shard, command, checked=True)))
        final = True
        try:
            for index, future in waits:
                reply: Reply = await future
                final = final and _is_own_outcome(reply)
                results[index] = BatchResult(index, reply.status, msgspec.Raw(reply.body))
        except asyncio.CancelledError:
            self._abandon_later(request, key, request_hash)
            raise
        body = JSON.encode(BatchResponse([r for r in results if r is not None]))
        if final:
            await self._complete(request, key, request_hash, 200, body)
        else:
            # Some item did not happen: free the key so a retry redoes just those items
            # (the others answer from their shards' durable records, byte for byte).
            await self._abandon(request, key, request_hash)
        return 200, body, []

    async def _write(
        self, request: _Request, key: str, shard: int,
        command: SubmitApplication | BookLoan | Repay,
        prepare: Callable[[Command], Awaitable[Command]] | None = None,
    ) -> Response:
        """Admit the key, complete the command with `prepare` (screening: only for admitted
        requests, so a replay is never screened or counted twice), dispatch, record."""
        request_hash = command.request_hash  # _request_hash(request), computed once
        admitted = await self._admit(request, key, request_hash)
        if admitted is not None:
            return admitted
        try:
            prepared = command if prepare is None else await prepare(command)
            reply = await self._dispatch(shard, prepared)
        except asyncio.CancelledError:
            self._abandon_later(request, key, request_hash)
            raise
        except RedisError as exc:
            await self._abandon(request, key, request_hash)
            raise _redis_down(exc) from exc
        except HttpError:
            await self._abandon(request, key, request_hash)
            raise
        if not _is_own_outcome(reply):
            await self._abandon(request, key, request_hash)
            return reply.status, reply.body, _retry_after(reply.status)
        await self._complete(request, key, request_hash, reply.status, reply.body)
        headers = [(b"idempotent-replayed", b"true")] if reply.replayed else []
        return reply.status, reply.body, headers

    # ---- helpers --------------------------------------------------------------------------

    async def _admit(
        self, request: _Request, key: str | None, request_hash: str
    ) -> Response | None:
        """None to proceed, or the full response when the request must not run."""
        try:
            admission = await self.guard.admit(
                request.partner_id, request.headers["x-nonce"], key, request_hash,
                self.rate, int(time.time() * 1000),
            )
        except RedisError as exc:
            if key is not None:
                self._release_after_unknown_admission(request, key, request_hash)
            raise _redis_down(exc) from exc
        except asyncio.CancelledError:  # the request's timeout, during a stalled Redis
            if key is not None:
                self._release_after_unknown_admission(request, key, request_hash)
            raise
        outcome = admission.outcome
        if outcome == "proceed":
            return None
        if outcome == "rate_limited":
            raise HttpError(
                429, "rate_limited", "request rate over the partner's limit",
                retry_after_s=max(1, int(admission.retry_after_s + 0.999)),
            )
        if outcome == "replayed_request":
            raise HttpError(401, "replayed_request", "this nonce was already used")
        if outcome == "in_progress":
            raise HttpError(409, "request_in_progress", "a request with this key is running")
        if outcome == "key_reused":
            raise HttpError(
                409, "idempotency_key_reused", "this Idempotency-Key was used for another request"
            )
        return admission.status, admission.body, [(b"idempotent-replayed", b"true")]

    async def _complete(
        self, request: _Request, key: str, request_hash: str, status: int, body: bytes
    ) -> None:
        try:
            await self.guard.complete(request.partner_id, key, request_hash, status, body)
        except RedisError as exc:
            # The effect is committed and the durable copy is in Postgres: a replay is still
            # answered byte for byte by the shard. Losing the fast copy costs latency only.
            log.warning("could not cache response for %s (%s)", key, exc)

    async def _abandon(self, request: _Request, key: str, request_hash: str) -> None:
        try:
            await self.guard.abandon(request.partner_id, key, request_hash)
        except RedisError as exc:
            log.warning("could not release in-flight key %s (%s); it expires", key, exc)

    def _abandon_later(self, request: _Request, key: str, request_hash: str) -> None:
        """Free the key of a request cut short by its timeout, without delaying its 503:
        its command may still commit (then a retry with the key is answered from the
        shard's durable record) or not (then the retry runs it)."""
        task = asyncio.create_task(self._abandon(request, key, request_hash))
        self._releases.add(task)  # a reference until done (asyncio holds weak ones)
        task.add_done_callback(self._releases.discard)

    def _release_after_unknown_admission(
        self, request: _Request, key: str, request_hash: str
    ) -> None:
        """An admission whose outcome is unknown (Redis failed or stalled past the request's
        timeout) may still set the key's in-flight marker when Redis answers again, and the
        partner's retry would then be refused 409 `request_in_progress` until the marker
        expires. Free it, in the background, as soon as Redis answers: the release queues
        behind the admission, and only ever deletes this request's own in-flight marker."""
        task = asyncio.create_task(self._release_when_redis_answers(request, key, request_hash))
        self._releases.add(task)  # a reference until done (asyncio holds weak ones)
        task.add_done_callback(self._releases.discard)

    async def _release_when_redis_answers(
        self, request: _Request, key: str, request_hash: str
    ) -> None:
        deadline = time.monotonic() + self.request_timeout_s + 1  # the marker's TTL
        while time.monotonic() < deadline:
            try:
                await self.guard.abandon(request.partner_id, key, request_hash)
                return
            except RedisError:
                await asyncio.sleep(UNKNOWN_ADMISSION_RETRY_S)
        log.warning("in-flight key %s not released after Redis failed; it expires", key)

    def _queue(self, shard: int, command: Command) -> asyncio.Future[Reply]:
        try:
            return self.router.call(shard, command)
        except Overloaded as exc:
            raise HttpError(503, "unavailable", str(exc), retry_after_s=1) from exc

    async def _dispatch(self, shard: int, command: Command) -> Reply:
        reply: Reply = await self._queue(shard, command)
        return reply

    def _shard_or_404(self, kind: str, ident: str) -> int:
        shard = shard_of_id(kind, ident)
        if shard is None or shard >= self.router.logical_shards:
            raise HttpError(404, "not_found", f"no {kind} {ident}")
        return shard

    def _customer_facts(self, body: ApplicationIn) -> tuple[int, CustomerFacts]:
        applicant = body.applicant
        try:
            info = parse_id_number(applicant.id_number)
            id_error, birth, sequence = None, info.birth_date, info.sequence
        except IdNumberError as error:
            if error.code != "id_checksum":
                field = "applicant.id_number"
                raise HttpError(400, "invalid_request", str(error), field) from error
            id_error, birth, sequence = "id_checksum", None, 0
        id_number = applicant.id_number.upper()
        if not is_valid_mobile(applicant.phone):
            raise HttpError(
                400, "invalid_request", "phone must be a mainland mobile number", "applicant.phone"
            )
        id_hash = self.vault.lookup_hash(id_number)
        facts = CustomerFacts(
            id_hash=id_hash,
            id_number_enc=self.vault.encrypt(id_number),
            name_enc=self.vault.encrypt(applicant.name),
            phone_enc=self.vault.encrypt(applicant.phone),
            id_number_masked=mask_id_number(id_number),
            name_masked=mask_name(applicant.name),
            phone_masked=mask_phone(applicant.phone),
            id_error=id_error,
            birth_date=birth,
            id_sequence=sequence,
            monthly_income=applicant.monthly_income,
            region_code=applicant.region_code,
        )
        # The customer's shard comes from the ID number, so one person lands on one shard.
        return int(id_hash[:8], 16) % self.router.logical_shards, facts

    def _check_product(self, body: ApplicationIn) -> None:
        try:
            product = self.catalog.get(body.product_code)
        except KeyError as exc:
            raise HttpError(
                400, "invalid_request", f"unknown product {body.product_code}", "product_code"
            ) from exc
        if not product.amount_min <= body.amount <= product.amount_max:
            raise HttpError(
                400, "invalid_request",
                f"amount must be in {product.amount_min}..{product.amount_max} for "
                f"{product.code}", "amount",
            )
        if body.term not in product.terms:
            raise HttpError(
                400, "invalid_request",
                f"term must be one of {list(product.terms)} for {product.code}", "term",
            )
        if product.payment_mode == "entrusted" and body.merchant_id is None:
            raise HttpError(
                400, "invalid_request",
                f"{product.code} pays the merchant: merchant_id is required", "merchant_id",
            )


    def _check_merchant(self, partner_id: str, body: ApplicationIn) -> None:
        """The payee of an entrusted disbursement must be one of the partner's merchants."""
        known = self.merchants.get(partner_id)
        if known is not None and body.merchant_id is not None and body.merchant_id not in known:
            raise HttpError(
                422, "merchant_unknown",
                f"merchant {body.merchant_id} is not one of partner {partner_id}'s merchants",
                "merchant_id",
            )


def _is_own_outcome(reply: Reply) -> bool:
    """Whether a reply is this request's final outcome, to be kept under its key. Not so for
    5xx (nothing happened; the partner may retry the key) nor for the shard's durable
    `idempotency_key_reused` (the key belongs to another request's outcome)."""
    return reply.status < 500 and reply.code != "idempotency_key_reused"


def _retry_after(status: int) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", b"1")] if status in (429, 503) else []


def _redis_down(exc: RedisError) -> HttpError:
    log.warning("redis unavailable: %s", exc)
    return HttpError(503, "unavailable", "coordination service unavailable", retry_after_s=1)


def _idempotency_key(request: _Request) -> str:
    key = request.headers.get("idempotency-key")
    if not key or len(key) > IDEMPOTENCY_KEY_MAX:
        raise HttpError(
            400, "invalid_request", "Idempotency-Key header (1-255 chars) is required on POST",
            "Idempotency-Key",
        )
    return check_text(key, "Idempotency-Key")


def _request_hash(request: _Request) -> str:
    digest = hashlib.sha256(request.method.encode() + b"\n" + request.path.encode() + b"\n")
    digest.update(request.body)
    return digest.hexdigest()


def _decode(decoder: msgspec.json.Decoder, body: bytes):
    return decode_json(decoder, body)  # the gateways' one set of input rules


def _check_kind(kind: str, field: str) -> None:
    if kind not in REPAYMENT_KINDS:
        raise HttpError(
            400, "invalid_request", f"kind must be one of {list(REPAYMENT_KINDS)}", field
        )

