"""Nonce and idempotency guard in Redis (API.md "Idempotency", ARCHITECTURE.md "Redis").

One round trip on the way in (`admit`: the partner's rate-limit token, the nonce and the
idempotency key), one on the way out (`complete` or `abandon`), each a Lua script so that
check-and-set is atomic across every gateway process.

Idempotency record, a Redis hash at `{prefix}idem:{partner}:{key}`:
  in flight: {h: request_hash}                       EX inflight_ttl_s
  finished:  {h: request_hash, s: status, b: body}   EX response_ttl_s
A hash keeps the body as raw bytes, lz4-compressed as the shards store theirs
(storage/packed.py): a repayment's reply is 2.8 KB and 0.8 KB stored, and Redis keeps every
response for a day. The replay gets the same bytes back; a plain body (stored before
compression existed) is replayed as it is.

Redis errors propagate unchanged: the caller answers 503, and the request has had no effect.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lz4.block
import msgspec
import redis.asyncio
from redis.commands.core import AsyncScript

from gateway.ratelimit import TAKE_TOKEN_LUA, bucket_args, bucket_key
from gateway.redis_batch import ScriptBatcher
from storage.packed import pack_response, unpack_response

logger = logging.getLogger(__name__)

AdmissionOutcome = Literal[
    "proceed", "rate_limited", "replayed_request", "in_progress", "key_reused", "cached"]
_OUTCOMES: frozenset[str] = frozenset(
    ("proceed", "rate_limited", "replayed_request", "in_progress", "key_reused", "cached")
)

NONCE_TTL_S_DEFAULT = 600  # API.md: a nonce seen in the last 600 s is a replay
INFLIGHT_TTL_S_DEFAULT = 60
# API.md keeps keys at least 24 h; the extra hour covers a client retrying at the deadline.
RESPONSE_TTL_S_DEFAULT = 86400 + 3600

# KEYS[1] nonce key, KEYS[2] the partner's token bucket, KEYS[3] idempotency key (absent
# when the request carries none). ARGV[1] nonce ttl s, ARGV[2] in-flight ttl s, ARGV[3]
# request hash, ARGV[4..6] rate per s, burst, now ms (ARGV[4] '' when no rate applies).
# The token is taken first: a request over the partner's rate is refused before its nonce
# or key is touched, so it can be sent again as it was.
_ADMIT_LUA = TAKE_TOKEN_LUA + """
if ARGV[4] ~= '' then
  local allowed, retry_after_s = take_token(KEYS[2], ARGV[4], ARGV[5], ARGV[6])
  if allowed == 0 then
    return {'rate_limited', retry_after_s}
  end
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return {'replayed_request'}
end
if #KEYS < 3 then
  return {'proceed'}
end
local stored = redis.call('HMGET', KEYS[3], 'h', 's', 'b')
local stored_hash, status, body = stored[1], stored[2], stored[3]
if not stored_hash then
  redis.call('HSET', KEYS[3], 'h', ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  return {'proceed'}
end
if stored_hash ~= ARGV[3] then
  return {'key_reused'}
end
if not status then
  return {'in_progress'}
end
return {'cached', tonumber(status), body}
"""

# KEYS[1] idempotency key. ARGV[1] request hash, ARGV[2] status, ARGV[3] body, ARGV[4] ttl s.
# Returns 'stored', or why not: after a slow request outlived its in-flight marker, another
# request may own the key ('taken') or a duplicate may have finished first ('kept_first');
# either way the response already recorded is the one partners must keep seeing.
_COMPLETE_LUA = """
local stored = redis.call('HMGET', KEYS[1], 'h', 's')
if stored[1] and stored[1] ~= ARGV[1] then
  return 'taken'
end
if stored[2] then
  return 'kept_first'
end
redis.call('HSET', KEYS[1], 'h', ARGV[1], 's', ARGV[2], 'b', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 'stored'
"""

# KEYS[1] idempotency key. ARGV[1] request hash. Deletes only our own in-flight marker:
# never a finished response, never another request's marker.
_ABANDON_LUA = """
local stored = redis.call('HMGET', KEYS[1], 'h', 's')
if stored[1] == ARGV[1] and not stored[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Admission(msgspec.Struct, frozen=True):
    outcome: str
    status: int = 0
    body: bytes = b""
    retry_after_s: float = 0.0  # rate_limited: until the partner's next token


class RateLimit(msgspec.Struct, frozen=True):
    """The partner's token bucket, taken in the admission round trip."""

    rate_per_s: float
    burst: int


class RedisGuard:
    def __init__(
        self,
        redis: redis.asyncio.Redis,
        prefix: str,
        nonce_ttl_s: int = NONCE_TTL_S_DEFAULT,
        inflight_ttl_s: int = INFLIGHT_TTL_S_DEFAULT,
        response_ttl_s: int = RESPONSE_TTL_S_DEFAULT,
        batcher: ScriptBatcher | None = None,
    ) -> None:
        _require_raw_bytes(redis)
        self._batcher = batcher
        if min(nonce_ttl_s, inflight_ttl_s, response_ttl_s) <= 0:
            raise ValueError("guard TTLs must be positive")
        self._prefix = prefix
        self._nonce_ttl_s = nonce_ttl_s
        self._inflight_ttl_s = inflight_ttl_s
        self._response_ttl_s = response_ttl_s
        self._admit_script = redis.register_script(_ADMIT_LUA)
        self._complete_script = redis.register_script(_COMPLETE_LUA)
        self._abandon_script = redis.register_script(_ABANDON_LUA)

    async def admit(
        self, partner_id: str, nonce: str, idempotency_key: str | None, request_hash: str,
        rate: RateLimit | None = None, now_ms: int = 0,
    ) -> Admission:
        """One round trip: the partner's token (when `rate` is given), the nonce, then the
        idempotency key."""
        keys = [self.nonce_key(partner_id, nonce), bucket_key(self._prefix, partner_id)]
        if idempotency_key is not None:
            keys.append(self.idempotency_key(partner_id, idempotency_key))
        args: list[int | str] = [self._nonce_ttl_s, self._inflight_ttl_s, request_hash]
        args += ["", "", ""] if rate is None else bucket_args(rate.rate_per_s, rate.burst,
                                                              now_ms)
        reply = await self._run(self._admit_script, keys, args)
        return _admission_from_reply(reply)

    async def complete(
        self, partner_id: str, idempotency_key: str, request_hash: str, status: int, body: bytes
    ) -> None:
        key = self.idempotency_key(partner_id, idempotency_key)
        stored = pack_response(body)
        args: list[str | int | bytes] = [request_hash, status, stored, self._response_ttl_s]
        reply = await self._run(self._complete_script, [key], args)
        if reply != b"stored":
            # Not an error for this request (its effect happened and its response is returned),
            # but it means a request outlived inflight_ttl_s: worth an operator's attention.
            logger.warning(
                "idempotency response not stored (%s): partner=%s key=%r",
                reply.decode("ascii"),
                partner_id,
                idempotency_key,
            )

    async def abandon(self, partner_id: str, idempotency_key: str, request_hash: str) -> None:
        key = self.idempotency_key(partner_id, idempotency_key)
        await self._run(self._abandon_script, [key], [request_hash])

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        if self._batcher is not None:
            return await self._batcher.run(script, keys, args)
        return await script(keys=keys, args=args)

    def nonce_key(self, partner_id: str, nonce: str) -> str:
        _require_plain_partner_id(partner_id)
        return f"{self._prefix}nonce:{partner_id}:{nonce}"

    def idempotency_key(self, partner_id: str, idempotency_key: str) -> str:
        _require_plain_partner_id(partner_id)
        return f"{self._prefix}idem:{partner_id}:{idempotency_key}"


def _admission_from_reply(reply: list[bytes | int]) -> Admission:
    raw_outcome = reply[0]
    if not isinstance(raw_outcome, bytes) or raw_outcome.decode("ascii") not in _OUTCOMES:
        raise RuntimeError(f"admit script returned an unexpected reply: {reply!r}")
    outcome = raw_outcome.decode("ascii")
    if outcome == "rate_limited":
        retry_after = reply[1]
        if not isinstance(retry_after, bytes):
            raise RuntimeError(f"admit script returned a malformed rate refusal: {reply!r}")
        return Admission(outcome=outcome, retry_after_s=float(retry_after))
    if outcome != "cached":
        return Admission(outcome=outcome)
    status, body = reply[1], reply[2]
    if not isinstance(status, int) or not isinstance(body, bytes):
        raise RuntimeError(f"admit script returned a malformed cached response: {reply!r}")
    try:
        replayed = unpack_response(body)
    except lz4.block.LZ4BlockError as exc:
        raise RuntimeError(f"cached response does not decompress: {body[:32]!r}...") from exc
    return Admission(outcome=outcome, status=status, body=replayed)


def _require_raw_bytes(client: redis.asyncio.Redis) -> None:
    # A decoding client would turn stored bodies into str and break byte-for-byte replay.
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        raise ValueError("RedisGuard needs a client with decode_responses=False")


def _require_plain_partner_id(partner_id: str) -> None:
    # The partner id is the only unescaped part before another ':' in our keys; a ':' in it
    # would let partner "a" with key "b:c" collide with partner "a:b" with key "c".
    if not partner_id or ":" in partner_id:
        raise ValueError(f"partner id must be non-empty and free of ':': {partner_id!r}")
