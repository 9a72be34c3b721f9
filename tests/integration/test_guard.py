"""RedisGuard and RateLimiter against the real shared Redis (no mocks)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio
import redis.exceptions

# Imported by name so pytest finds the fixture: the lead engineer owns conftest.py.
from conftest_redis import REDIS_URL, redis_prefix  # noqa: F401
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.guard import Admission, RateLimit, RedisGuard
from gateway.ratelimit import RateLimiter

PARTNER = "demo"
HASH_A = "a" * 64
HASH_B = "b" * 64
NON_UTF8_BODY = b"\xff\xfe\x00\x80binary\xc3(\r\n"
JSON_BODY = json.dumps({"loan_id": "L-1", "name": "张三", "amount": 91680}).encode()


def fresh_nonce() -> str:
    return uuid.uuid4().hex


@pytest_asyncio.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=False)
    yield connection
    await connection.aclose()


@pytest.fixture
def guard(client: redis.asyncio.Redis, redis_prefix: str) -> RedisGuard:  # noqa: F811
    return RedisGuard(client, redis_prefix)


@pytest.fixture
def limiter(client: redis.asyncio.Redis, redis_prefix: str) -> RateLimiter:  # noqa: F811
    return RateLimiter(client, redis_prefix)


async def admit(guard: RedisGuard, key: str | None, request_hash: str = HASH_A) -> Admission:
    return await guard.admit(PARTNER, fresh_nonce(), key, request_hash)


# --- nonces -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_first_admit_proceeds(guard: RedisGuard) -> None:
    assert await admit(guard, "key-1") == Admission(outcome="proceed")


@pytest.mark.asyncio
async def test_admit_without_idempotency_key_proceeds(guard: RedisGuard) -> None:
    assert await admit(guard, None) == Admission(outcome="proceed")


@pytest.mark.asyncio
async def test_same_nonce_again_is_replayed(guard: RedisGuard) -> None:
    assert (await guard.admit(PARTNER, "nonce-0001", None, HASH_A)).outcome == "proceed"
    assert (await guard.admit(PARTNER, "nonce-0001", None, HASH_A)).outcome == "replayed_request"


@pytest.mark.asyncio
async def test_replayed_nonce_changes_nothing_else(
    guard: RedisGuard, client: redis.asyncio.Redis
) -> None:
    assert (await guard.admit(PARTNER, "nonce-0001", None, HASH_A)).outcome == "proceed"
    replay = await guard.admit(PARTNER, "nonce-0001", "key-1", HASH_A)
    assert replay.outcome == "replayed_request"
    assert await client.exists(guard.idempotency_key(PARTNER, "key-1")) == 0
    assert (await admit(guard, "key-1")).outcome == "proceed"


@pytest.mark.asyncio
async def test_nonces_are_scoped_to_the_partner(guard: RedisGuard) -> None:
    assert (await guard.admit("demo", "nonce-0001", None, HASH_A)).outcome == "proceed"
    assert (await guard.admit("demo2", "nonce-0001", None, HASH_A)).outcome == "proceed"


# --- idempotency ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_same_key_same_hash_in_flight_is_in_progress(guard: RedisGuard) -> None:
    assert (await admit(guard, "key-1")).outcome == "proceed"
    assert (await admit(guard, "key-1")).outcome == "in_progress"


@pytest.mark.asyncio
async def test_same_key_different_hash_is_key_reused(guard: RedisGuard) -> None:
    assert (await admit(guard, "key-1", HASH_A)).outcome == "proceed"
    assert (await admit(guard, "key-1", HASH_B)).outcome == "key_reused"
    await guard.complete(PARTNER, "key-1", HASH_A, 201, JSON_BODY)
    assert (await admit(guard, "key-1", HASH_B)).outcome == "key_reused"


@pytest.mark.asyncio
async def test_keys_are_scoped_to_the_partner(guard: RedisGuard) -> None:
    assert (await guard.admit("demo", fresh_nonce(), "key-1", HASH_A)).outcome == "proceed"
    assert (await guard.admit("demo2", fresh_nonce(), "key-1", HASH_B)).outcome == "proceed"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "body"),
    [(201, JSON_BODY), (422, NON_UTF8_BODY), (200, b""), (201, bytes(range(256)) * 64)],
)
async def test_completed_request_is_cached_byte_for_byte(
    guard: RedisGuard, status: int, body: bytes
) -> None:
    assert (await admit(guard, "key-1")).outcome == "proceed"
    await guard.complete(PARTNER, "key-1", HASH_A, status, body)
    cached = await admit(guard, "key-1")
    assert cached == Admission(outcome="cached", status=status, body=body)
    assert type(cached.body) is bytes


@pytest.mark.asyncio
async def test_a_long_response_is_kept_compressed_and_replayed_byte_for_byte(
    guard: RedisGuard, client: redis.asyncio.Redis, redis_prefix: str  # noqa: F811
) -> None:
    schedule = [{"period": p, "due_date": f"2027-{p:02d}-28", "principal": 76680 + p,
                 "interest": 15000 - p, "status": "pending"} for p in range(1, 13)]
    body = json.dumps({"repayment_id": "RP-0001-0000000001", "loan": {"schedule": schedule}})
    raw = body.encode()
    assert (await admit(guard, "key-1")).outcome == "proceed"
    await guard.complete(PARTNER, "key-1", HASH_A, 201, raw)

    kept = await client.hget(f"{redis_prefix}idem:{PARTNER}:key-1", "b")
    assert kept is not None and kept[:1] == b"\x00" and len(kept) < len(raw) / 2
    assert await admit(guard, "key-1") == Admission(outcome="cached", status=201, body=raw)


@pytest.mark.asyncio
async def test_a_plain_response_stored_before_compression_is_replayed_as_it_is(
    guard: RedisGuard, client: redis.asyncio.Redis, redis_prefix: str  # noqa: F811
) -> None:
    stored = JSON_BODY * 20  # long enough that it would be compressed today
    await client.hset(f"{redis_prefix}idem:{PARTNER}:key-1",
                      mapping={"h": HASH_A, "s": 201, "b": stored})
    assert await admit(guard, "key-1") == Admission(outcome="cached", status=201, body=stored)


@pytest.mark.asyncio
async def test_abandon_frees_the_key(guard: RedisGuard) -> None:
    assert (await admit(guard, "key-1", HASH_A)).outcome == "proceed"
    await guard.abandon(PARTNER, "key-1", HASH_A)
    assert (await admit(guard, "key-1", HASH_B)).outcome == "proceed"


@pytest.mark.asyncio
async def test_abandon_with_another_hash_keeps_the_marker(guard: RedisGuard) -> None:
    assert (await admit(guard, "key-1", HASH_A)).outcome == "proceed"
    await guard.abandon(PARTNER, "key-1", HASH_B)
    assert (await admit(guard, "key-1", HASH_A)).outcome == "in_progress"


@pytest.mark.asyncio
async def test_abandon_never_deletes_a_finished_response(guard: RedisGuard) -> None:
    assert (await admit(guard, "key-1")).outcome == "proceed"
    await guard.complete(PARTNER, "key-1", HASH_A, 201, JSON_BODY)
    await guard.abandon(PARTNER, "key-1", HASH_A)
    assert (await admit(guard, "key-1")).outcome == "cached"


@pytest.mark.asyncio
async def test_complete_does_not_overwrite_a_key_taken_by_another_request(
    guard: RedisGuard, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Our in-flight marker expired and a different request took the key meanwhile.
    assert (await admit(guard, "key-1", HASH_A)).outcome == "proceed"
    await client.delete(guard.idempotency_key(PARTNER, "key-1"))
    assert (await admit(guard, "key-1", HASH_B)).outcome == "proceed"
    with caplog.at_level(logging.WARNING, logger="gateway.guard"):
        await guard.complete(PARTNER, "key-1", HASH_A, 201, b"late")
    assert "not stored (taken)" in caplog.text
    assert (await admit(guard, "key-1", HASH_B)).outcome == "in_progress"


@pytest.mark.asyncio
async def test_complete_keeps_the_first_finished_response(
    guard: RedisGuard, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await admit(guard, "key-1")).outcome == "proceed"
    await guard.complete(PARTNER, "key-1", HASH_A, 201, b"first")
    with caplog.at_level(logging.WARNING, logger="gateway.guard"):
        await guard.complete(PARTNER, "key-1", HASH_A, 201, b"second")
    assert "not stored (kept_first)" in caplog.text
    assert (await admit(guard, "key-1")).body == b"first"


@pytest.mark.asyncio
async def test_complete_after_marker_expired_still_stores_response(
    guard: RedisGuard, client: redis.asyncio.Redis
) -> None:
    # The effect happened, so a retry must see its response rather than run again.
    assert (await admit(guard, "key-1")).outcome == "proceed"
    await client.delete(guard.idempotency_key(PARTNER, "key-1"))
    await guard.complete(PARTNER, "key-1", HASH_A, 201, JSON_BODY)
    assert await admit(guard, "key-1") == Admission("cached", 201, JSON_BODY)


@pytest.mark.asyncio
async def test_concurrent_duplicates_admit_exactly_one(guard: RedisGuard) -> None:
    admissions = await asyncio.gather(*(admit(guard, "key-1") for _ in range(50)))
    outcomes = [admission.outcome for admission in admissions]
    assert outcomes.count("proceed") == 1
    assert outcomes.count("in_progress") == 49


@pytest.mark.asyncio
async def test_concurrent_replays_of_one_nonce_admit_exactly_one(guard: RedisGuard) -> None:
    admissions = await asyncio.gather(
        *(guard.admit(PARTNER, "nonce-0001", None, HASH_A) for _ in range(50))
    )
    outcomes = [admission.outcome for admission in admissions]
    assert outcomes.count("proceed") == 1
    assert outcomes.count("replayed_request") == 49


# --- TTLs ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ttls_are_set(guard: RedisGuard, client: redis.asyncio.Redis) -> None:
    await guard.admit(PARTNER, "nonce-0001", "key-1", HASH_A)
    nonce_ttl_ms = await client.pttl(guard.nonce_key(PARTNER, "nonce-0001"))
    inflight_ttl_ms = await client.pttl(guard.idempotency_key(PARTNER, "key-1"))
    assert 590_000 < nonce_ttl_ms <= 600_000
    assert 50_000 < inflight_ttl_ms <= 60_000
    await guard.complete(PARTNER, "key-1", HASH_A, 201, JSON_BODY)
    response_ttl_ms = await client.pttl(guard.idempotency_key(PARTNER, "key-1"))
    assert 90_000_000 - 10_000 < response_ttl_ms <= 90_000_000


@pytest.mark.asyncio
async def test_custom_ttls_are_used(client: redis.asyncio.Redis, redis_prefix: str) -> None:  # noqa: F811
    guard = RedisGuard(client, redis_prefix, nonce_ttl_s=30, inflight_ttl_s=5, response_ttl_s=90)
    await guard.admit(PARTNER, "nonce-0001", "key-1", HASH_A)
    assert 25_000 < await client.pttl(guard.nonce_key(PARTNER, "nonce-0001")) <= 30_000
    assert 0 < await client.pttl(guard.idempotency_key(PARTNER, "key-1")) <= 5_000
    await guard.complete(PARTNER, "key-1", HASH_A, 201, b"{}")
    assert 85_000 < await client.pttl(guard.idempotency_key(PARTNER, "key-1")) <= 90_000


@pytest.mark.asyncio
async def test_keys_follow_the_documented_layout(
    guard: RedisGuard,
    client: redis.asyncio.Redis,
    redis_prefix: str,  # noqa: F811
) -> None:
    await guard.admit(PARTNER, "nonce-0001", "key-1", HASH_A)
    assert await client.exists(f"{redis_prefix}nonce:{PARTNER}:nonce-0001") == 1
    assert await client.exists(f"{redis_prefix}idem:{PARTNER}:key-1") == 1


# --- misuse and failures ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_decoding_client_is_refused(redis_prefix: str) -> None:  # noqa: F811
    decoding = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisGuard(decoding, redis_prefix)
    finally:
        await decoding.aclose()


@pytest.mark.asyncio
async def test_partner_id_with_colon_is_refused(guard: RedisGuard) -> None:
    with pytest.raises(ValueError, match="partner id"):
        await guard.admit("a:b", fresh_nonce(), "c", HASH_A)


@pytest.mark.asyncio
async def test_redis_errors_propagate(redis_prefix: str) -> None:  # noqa: F811
    # Port 1 is never Redis: the caller must see the failure to answer 503.
    unreachable = redis.asyncio.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), retries=0)
    )
    try:
        guard = RedisGuard(unreachable, redis_prefix)
        with pytest.raises(redis.exceptions.ConnectionError):
            await admit(guard, "key-1")
    finally:
        await unreachable.aclose()


# --- rate limiter -------------------------------------------------------------------------

T0_MS = 1_795_000_000_000


@pytest.mark.asyncio
async def test_burst_then_refusal_with_retry_after(limiter: RateLimiter) -> None:
    results = [await limiter.allow(PARTNER, 2.0, 5, T0_MS) for _ in range(5)]
    assert results == [(True, 0.0)] * 5
    allowed, retry_after_s = await limiter.allow(PARTNER, 2.0, 5, T0_MS)
    assert not allowed
    assert retry_after_s == pytest.approx(0.5)


@pytest.mark.asyncio
async def test_retry_after_shrinks_as_time_passes(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.allow(PARTNER, 1.0, 3, T0_MS)
    assert await limiter.allow(PARTNER, 1.0, 3, T0_MS + 400) == (False, pytest.approx(0.6))


@pytest.mark.asyncio
async def test_refill_with_advancing_time(limiter: RateLimiter) -> None:
    for _ in range(3):
        assert (await limiter.allow(PARTNER, 1.0, 3, T0_MS))[0]
    assert not (await limiter.allow(PARTNER, 1.0, 3, T0_MS + 999))[0]
    assert (await limiter.allow(PARTNER, 1.0, 3, T0_MS + 1000))[0]
    assert not (await limiter.allow(PARTNER, 1.0, 3, T0_MS + 1000))[0]
    # Long idle refills only up to the burst.
    later_ms = T0_MS + 3_600_000
    assert [(await limiter.allow(PARTNER, 1.0, 3, later_ms))[0] for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


@pytest.mark.asyncio
async def test_clock_going_backwards_mints_no_tokens(limiter: RateLimiter) -> None:
    assert (await limiter.allow(PARTNER, 1.0, 1, T0_MS))[0]
    assert not (await limiter.allow(PARTNER, 1.0, 1, T0_MS - 60_000))[0]
    assert not (await limiter.allow(PARTNER, 1.0, 1, T0_MS + 500))[0]
    assert (await limiter.allow(PARTNER, 1.0, 1, T0_MS + 1000))[0]


@pytest.mark.asyncio
async def test_partners_have_independent_buckets(limiter: RateLimiter) -> None:
    assert (await limiter.allow("demo", 1.0, 1, T0_MS))[0]
    assert not (await limiter.allow("demo", 1.0, 1, T0_MS))[0]
    assert (await limiter.allow("demo2", 1.0, 1, T0_MS))[0]


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_bucket(limiter: RateLimiter) -> None:
    results = await asyncio.gather(*(limiter.allow(PARTNER, 10.0, 20, T0_MS) for _ in range(50)))
    assert sum(allowed for allowed, _ in results) == 20


@pytest.mark.asyncio
async def test_bucket_state_expires(
    limiter: RateLimiter,
    client: redis.asyncio.Redis,
    redis_prefix: str,  # noqa: F811
) -> None:
    await limiter.allow(PARTNER, 2.0, 10, T0_MS)
    ttl_ms = await client.pttl(f"{redis_prefix}rate:{PARTNER}")
    assert 0 < ttl_ms <= 5_000 + 1_000


@pytest.mark.asyncio
async def test_invalid_limits_are_refused(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError):
        await limiter.allow(PARTNER, 0.0, 5, T0_MS)
    with pytest.raises(ValueError):
        await limiter.allow(PARTNER, 1.0, 0, T0_MS)


# --- the token taken on admission (the partner API's one round trip) ----------------------


@pytest.mark.asyncio
async def test_admission_takes_the_partners_token_and_refuses_past_the_burst(
    guard: RedisGuard, limiter: RateLimiter
) -> None:
    """admit(rate=…) spends the same bucket RateLimiter does; past the burst it answers
    rate_limited with the wait, and touches neither the nonce nor the key: the very same
    request proceeds once a token is back."""
    rate = RateLimit(2.0, 3)
    for _ in range(3):
        admitted = await guard.admit(PARTNER, fresh_nonce(), None, HASH_A, rate, T0_MS)
        assert admitted.outcome == "proceed"
    refused = await guard.admit(PARTNER, "nonce-limited", "key-limited", HASH_A, rate, T0_MS)
    assert refused.outcome == "rate_limited"
    assert refused.retry_after_s == pytest.approx(0.5)
    assert await limiter.allow(PARTNER, 2.0, 3, T0_MS) == (False, pytest.approx(0.5))
    later = await guard.admit(PARTNER, "nonce-limited", "key-limited", HASH_A, rate,
                              T0_MS + 1000)
    assert later.outcome == "proceed"  # nonce and key were left untouched by the refusal
    replay = await guard.admit(PARTNER, "nonce-limited", None, HASH_A, rate, T0_MS + 5000)
    assert replay.outcome == "replayed_request"


@pytest.mark.asyncio
async def test_admission_without_a_rate_takes_no_token(
    guard: RedisGuard, limiter: RateLimiter
) -> None:
    for _ in range(5):
        assert (await guard.admit(PARTNER, fresh_nonce(), None, HASH_A)).outcome == "proceed"
    assert (await limiter.allow(PARTNER, 1.0, 1, T0_MS))[0]  # the bucket was still full
