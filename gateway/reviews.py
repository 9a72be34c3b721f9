"""Manual review queue (人工审核) on the operator port: list, claim, release, decide.

- The queue is read from Postgres (applications in `manual_review` or
  `awaiting_confirmation`, through a partial index) and the claims from Redis; listing
  never touches the shards.
- A claim is Redis only: `{prefix}review-claim:{application_id}` = officer, with a TTL
  (`[review] claim_ttl_s`). One Lua script claims a free application or extends the
  officer's own claim, atomically, so two officers racing for one application get exactly
  one claim. Being a Redis-only fact, a claim (or release) writes its audit row here, on
  the gateway's pool; if that insert fails, the claim is undone and the answer is 503.
- A decision needs the officer's claim. It goes to the application's shard as a
  ReviewDecision command (lending/shard_state.py applies it and writes its audit row in the
  same commit), then the officer's claim is released: a maker's proposal waits for a
  different officer, anything else is done.
- Maker-checker: above `[review] maker_checker_amount_over` the first decision is a
  proposal (`awaiting_confirmation`); its maker can neither claim nor decide it again
  (403 `maker_checker`); another officer confirms it (final as proposed) or rejects it
  (back to `manual_review`).
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal, Protocol

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.http import JSON, HttpError, Receive, Scope
from gateway.ops_api import _bounded_int, decode_ops_body, read_ops_body
from gateway.router import Overloaded, ShardRouter
from gateway.validation import choice_param, query_params
from lending.commands import ErrorBody, Reply, ReviewDecision
from lending.shard_state import (
    AWAITING_CONFIRMATION,
    REVIEW_DECLINE,
    REVIEW_STATUSES,
    STAGE_CHECKER,
    STAGE_MAKER,
    Application,
    ReviewStep,
    audit_target,
    shard_of_id,
)
from storage import audit

REVIEW_PAGE_DEFAULT = 50
REASONS_MAX = 20
AUDIT_CLAIM = "review.claim"
AUDIT_RELEASE = "review.release"

# A reason is a stable code, like the decision's own (`amount_review`, `score_low`, ...).
ReasonCode = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,64}$")]


class ReviewDecisionIn(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /ops/reviews/{application_id}/decision. `reasons` are required to
    decline (they become the application's decline reasons when it is final)."""

    decision: Literal["approve", "decline"]
    reasons: Annotated[list[ReasonCode], msgspec.Meta(max_length=REASONS_MAX)] = []
    note: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class ClaimView(msgspec.Struct, frozen=True):
    """Who holds the claim on an application and until when (UTC)."""

    application_id: str
    claimed_by: str
    expires_at: datetime


class ReleaseView(msgspec.Struct, frozen=True):
    """`released` is false when the officer held no claim (nothing changed)."""

    application_id: str
    released: bool


class ReviewItem(msgspec.Struct, frozen=True):
    """An application in the queue. `status`: manual_review (a first decision is needed)
    or awaiting_confirmation (a maker's `proposal` waits for another officer).
    `needs_checker`: its amount is above maker_checker_amount_over."""

    application_id: str
    status: str
    partner_id: str
    partner_application_id: str
    customer_id: str
    product_code: str
    amount: int
    term: int
    reasons: list[str]
    created_on: date
    needs_checker: bool
    claim: ClaimView | None
    proposal: ReviewStep | None


class ReviewPage(msgspec.Struct, frozen=True):
    """Oldest first (created_on, application_id). `next_after`: pass it as `after` for the
    next page; null on the last page."""

    reviews: list[ReviewItem]
    next_after: str | None


class Officer(Protocol):
    name: str


_DECISION_IN = msgspec.json.Decoder(ReviewDecisionIn)
_APPLICATION = msgspec.msgpack.Decoder(Application)
_PROPOSAL = msgspec.json.Decoder(ReviewStep | None)
_ERROR = msgspec.json.Decoder(ErrorBody)

# Claim a free application, or extend one's own claim. → {1, officer, previous pttl (-2:
# there was none)} or {0, holder, pttl} when another officer holds it.
_CLAIM_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, holder, redis.call('PTTL', KEYS[1])}
end
local previous = -2
if holder then previous = redis.call('PTTL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1], previous}
"""

# Release one's own claim. → {1, officer, pttl it had}, {0, '', -2} when there was none,
# {-1, holder, pttl} when another officer holds it (left alone).
_RELEASE_LUA = """
local holder = redis.call('GET', KEYS[1])
if not holder then return {0, '', -2} end
local ttl = redis.call('PTTL', KEYS[1])
if holder ~= ARGV[1] then return {-1, holder, ttl} end
redis.call('DEL', KEYS[1])
return {1, holder, ttl}
"""

_REVIEW_STATE = """
SELECT a.status, r.state->'proposal'->>'officer' AS maker
FROM applications a
LEFT JOIN application_reviews r
  ON r.shard_id = a.shard_id AND r.application_id = a.application_id
WHERE a.shard_id = $1 AND a.application_id = $2
"""

# The status conditions repeat the partial index's predicate so the planner can use it.
_QUEUE = """
SELECT a.application_id, a.status, a.state, r.state->'proposal' AS proposal
FROM applications a
LEFT JOIN application_reviews r
  ON r.shard_id = a.shard_id AND r.application_id = a.application_id
WHERE a.status IN ('manual_review', 'awaiting_confirmation')
  AND ($1::text IS NULL OR a.status = $1)
  AND ($2::date IS NULL OR (a.created_on, a.application_id) > ($2::date, $3::text))
ORDER BY a.created_on, a.application_id
LIMIT $4
"""


class ReviewDesk:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        prefix: str,
        router: ShardRouter,
        claim_ttl_s: int,
        maker_checker_amount_over: int,
        page_max: int,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.prefix = prefix
        self.router = router
        self.claim_ttl_ms = claim_ttl_s * 1000
        self.maker_checker_amount_over = maker_checker_amount_over
        self.page_max = page_max
        self._claim_script = redis.register_script(_CLAIM_LUA)
        self._release_script = redis.register_script(_RELEASE_LUA)

    @staticmethod
    def owns(path: str) -> bool:
        return path == "/ops/reviews" or path.startswith("/ops/reviews/")

    async def handle(
        self, scope: Scope, receive: Receive, officer: Officer
    ) -> tuple[str, bytes]:
        """A request whose route and roles gateway/ops_access.py has already checked."""
        method, path = scope["method"], scope["path"]
        parts = path.strip("/").split("/")  # ops, reviews[, id, action]
        try:
            match (method, *parts[2:]):
                case ("GET",):
                    return "reviews.list", JSON.encode(await self._list(scope))
                case ("POST", ident, "claim"):
                    return "reviews.claim", JSON.encode(await self._claim(ident, officer.name))
                case ("POST", ident, "release"):
                    return "reviews.release", JSON.encode(
                        await self._release(ident, officer.name))
                case ("POST", ident, "decision"):
                    body = await _read_decision(scope, receive)
                    return "reviews.decision", await self._decide(ident, officer.name, body)
        except RedisError as exc:
            raise HttpError(
                503, "unavailable", "coordination service unavailable", retry_after_s=1
            ) from exc
        raise HttpError(404, "not_found", f"no route {method} {path}")

    # ---- queue ----------------------------------------------------------------------------

    async def _list(self, scope: Scope) -> ReviewPage:
        query = query_params(scope)
        status = choice_param(query, "status", REVIEW_STATUSES)
        limit = _bounded_int(query.get("limit", [None])[0], "limit",
                             min(REVIEW_PAGE_DEFAULT, self.page_max), self.page_max)
        after_id = query.get("after", [""])[0] or None
        after_on: date | None = None
        if after_id is not None:
            after_on = await self._created_on(after_id)
        rows = await self.pool.fetch(_QUEUE, status, after_on, after_id, limit)
        claims = await self._claims([row["application_id"] for row in rows])
        items = []
        for row, claim in zip(rows, claims, strict=True):
            app = _APPLICATION.decode(row["state"])
            items.append(ReviewItem(
                application_id=app.application_id,
                status=row["status"],
                partner_id=app.partner_id,
                partner_application_id=app.partner_application_id,
                customer_id=app.customer_id,
                product_code=app.product_code,
                amount=app.amount,
                term=app.term,
                reasons=list(app.reasons),
                created_on=app.created_on,
                needs_checker=app.amount > self.maker_checker_amount_over,
                claim=claim,
                proposal=None if row["proposal"] is None else _PROPOSAL.decode(row["proposal"]),
            ))
        next_after = items[-1].application_id if len(items) == limit else None
        return ReviewPage(items, next_after)

    async def _created_on(self, application_id: str) -> date:
        shard = shard_of_id("application", application_id)
        value = None
        if shard is not None:
            value = await self.pool.fetchval(
                "SELECT created_on FROM applications WHERE shard_id = $1 AND application_id = $2",
                shard, application_id,
            )
        if value is None:
            raise HttpError(400, "invalid_request", f"no application {application_id}", "after")
        created_on: date = value
        return created_on

    async def _claims(self, application_ids: list[str]) -> list[ClaimView | None]:
        if not application_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for application_id in application_ids:
                pipe.get(self._key(application_id))
                pipe.pttl(self._key(application_id))
            answers = await pipe.execute()
        now = time.time()
        claims: list[ClaimView | None] = []
        for index, application_id in enumerate(application_ids):
            holder, pttl = answers[2 * index], answers[2 * index + 1]
            claims.append(None if holder is None or pttl < 0 else ClaimView(
                application_id, _text(holder), _expiry(now, pttl)))
        return claims

    # ---- claims ---------------------------------------------------------------------------

    async def _claim(self, application_id: str, officer: str) -> ClaimView:
        shard = self._shard(application_id)
        status, maker = await self._review_state(shard, application_id)
        if status == AWAITING_CONFIRMATION and maker == officer:
            raise _maker_checker(officer)
        key = self._key(application_id)
        now = time.time()
        granted, holder, pttl = await self._claim_script(
            keys=[key], args=[officer, self.claim_ttl_ms])
        if not granted:
            until = f"{_expiry(now, int(pttl)):%Y-%m-%dT%H:%M:%SZ}"
            raise HttpError(409, "already_claimed",
                            f"claimed by {_text(holder)} until {until}")
        claim = ClaimView(application_id, officer, _expiry(now, self.claim_ttl_ms))
        before = None if pttl < 0 else ClaimView(application_id, officer, _expiry(now, pttl))
        try:
            await self._audit(shard, officer, AUDIT_CLAIM, application_id, before, claim)
        except (asyncpg.PostgresError, OSError) as exc:
            if before is None:  # an unaudited claim must not stand
                await self._release_script(keys=[key], args=[officer])
            raise HttpError(503, "unavailable", "audit log unavailable",
                            retry_after_s=1) from exc
        return claim

    async def _release(self, application_id: str, officer: str) -> ReleaseView:
        shard = self._shard(application_id)
        await self._review_state(shard, application_id, any_status=True)
        now = time.time()
        outcome, holder, pttl = await self._release_script(
            keys=[self._key(application_id)], args=[officer])
        if outcome == -1:
            until = f"{_expiry(now, int(pttl)):%Y-%m-%dT%H:%M:%SZ}"
            raise HttpError(409, "already_claimed",
                            f"claimed by {_text(holder)} until {until}")
        if outcome == 0:
            return ReleaseView(application_id, released=False)
        before = ClaimView(application_id, officer, _expiry(now, pttl))
        try:
            await self._audit(shard, officer, AUDIT_RELEASE, application_id, before, None)
        except (asyncpg.PostgresError, OSError) as exc:
            # Put the claim back as it was: a release that is not audited did not happen.
            await self.redis.set(self._key(application_id), officer, nx=True, px=max(1, pttl))
            raise HttpError(503, "unavailable", "audit log unavailable",
                            retry_after_s=1) from exc
        return ReleaseView(application_id, released=True)

    async def _audit(
        self, shard: int, officer: str, action: str, application_id: str,
        before: ClaimView | None, after: ClaimView | None,
    ) -> None:
        async with self.pool.acquire() as conn:
            await audit.record(
                conn, shard_id=shard, actor=officer, action=action,
                target=audit_target(application_id), before=before, after=after,
            )

    # ---- decisions ------------------------------------------------------------------------

    async def _decide(self, application_id: str, officer: str, body: ReviewDecisionIn) -> bytes:
        if body.decision == REVIEW_DECLINE and not body.reasons:
            raise HttpError(400, "invalid_request", "a decline needs at least one reason",
                            "reasons")
        shard = self._shard(application_id)
        status, maker = await self._review_state(shard, application_id)
        if status == AWAITING_CONFIRMATION and maker == officer:
            raise _maker_checker(officer)
        key = self._key(application_id)
        raw = await self.redis.get(key)
        holder = None if raw is None else _text(raw)
        if holder != officer:
            held = "nobody holds it" if holder is None else f"{holder} holds it"
            raise HttpError(409, "claim_required",
                            f"claim the application before deciding it ({held})")
        command = ReviewDecision(
            application_id=application_id,
            officer=officer,
            decision=body.decision,
            reasons=body.reasons,
            note=body.note,
            stage=STAGE_CHECKER if status == AWAITING_CONFIRMATION else STAGE_MAKER,
            maker_checker_over=self.maker_checker_amount_over,
        )
        try:
            reply: Reply = await self.router.call(shard, command)
        except Overloaded as exc:
            raise HttpError(503, "unavailable", str(exc), retry_after_s=1) from exc
        if reply.status != 200:
            raise _reply_error(reply)
        with contextlib.suppress(RedisError):  # the decision stands; the claim expires
            await self._release_script(keys=[key], args=[officer])
        return reply.body

    # ---- helpers --------------------------------------------------------------------------

    def _key(self, application_id: str) -> str:
        return f"{self.prefix}review-claim:{application_id}"

    def _shard(self, application_id: str) -> int:
        shard = shard_of_id("application", application_id)
        if shard is None or shard >= self.router.logical_shards:
            raise HttpError(404, "not_found", f"no application {application_id}")
        return shard

    async def _review_state(
        self, shard: int, application_id: str, any_status: bool = False
    ) -> tuple[str, str | None]:
        """(status, maker of the pending proposal); 404 unknown, 409 not in review."""
        row = await self.pool.fetchrow(_REVIEW_STATE, shard, application_id)
        if row is None:
            raise HttpError(404, "not_found", f"no application {application_id}")
        status: str = row["status"]
        if not any_status and status not in REVIEW_STATUSES:
            raise HttpError(409, "invalid_state", f"application is {status}, not in review")
        return status, row["maker"]


async def _read_decision(scope: Scope, receive: Receive) -> ReviewDecisionIn:
    return decode_ops_body(_DECISION_IN, await read_ops_body(scope, receive))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _expiry(now: float, pttl_ms: int) -> datetime:
    return datetime.fromtimestamp(now, UTC) + timedelta(milliseconds=pttl_ms)


def _maker_checker(officer: str) -> HttpError:
    return HttpError(403, "maker_checker",
                     f"{officer} proposed this decision: another officer must confirm it")


def _reply_error(reply: Reply) -> HttpError:
    """A shard's error reply as the HttpError that renders the same body."""
    detail = _ERROR.decode(reply.body).error
    retry = 1 if reply.status in (429, 503) else None
    return HttpError(reply.status, detail.code, detail.message, detail.field, retry)

