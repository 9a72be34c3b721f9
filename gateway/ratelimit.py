"""Per-partner token bucket in Redis: shared by every gateway process, one round trip a call.

The partner API takes its token inside the admission script (gateway/guard.py), so a request
pays one round trip for both; `RateLimiter` takes a token on its own.

The caller passes the clock (now_ms) so that tests control time, and so that the script stays
free of TIME (gateway nodes agree closely enough; a clock behind the stored one mints nothing).
"""

from __future__ import annotations

import redis.asyncio

from gateway.redis_batch import ScriptBatcher

# A Lua function (prepended to the scripts that take a token: this module's, and the
# gateway's admission script, gateway/guard.py, which takes the partner's token in the same
# round trip). take_token(bucket key, rate per s, burst, now ms) -> allowed 0|1,
# retry_after_s as a string (a Lua number would be truncated to an integer reply).
# State {t: tokens, ts: ms of last refill}.
TAKE_TOKEN_LUA = (  # nosec B105  # a Lua function (token bucket), not a password
    """
local function take_token(key, rate_per_s, burst_arg, now_arg)
  local rate_per_ms = tonumber(rate_per_s) / 1000
  local burst = tonumber(burst_arg)
  local now_ms = tonumber(now_arg)
  local state = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(state[1]) or burst
  local last_ms = tonumber(state[2]) or now_ms
  if now_ms > last_ms then
    tokens = math.min(burst, tokens + (now_ms - last_ms) * rate_per_ms)
    last_ms = now_ms
  end
  local allowed = 0
  local retry_after_s = 0
  if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
  else
    retry_after_s = (1 - tokens) / rate_per_ms / 1000
  end
  redis.call('HSET', key, 't', string.format('%.17g', tokens),
             'ts', string.format('%.17g', last_ms))
  -- Once the bucket would be full again its state equals no state: let Redis drop it.
  redis.call('PEXPIRE', key, math.ceil(burst / rate_per_ms) + 1000)
  return allowed, string.format('%.17g', retry_after_s)
end
"""
)

# KEYS[1] bucket. ARGV[1] rate per s, ARGV[2] burst, ARGV[3] now ms.
# Returns {allowed 0|1, retry_after_s as string}.
_TOKEN_BUCKET_LUA = TAKE_TOKEN_LUA + """
local allowed, retry_after_s = take_token(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return {allowed, retry_after_s}
"""


def bucket_key(prefix: str, partner_id: str) -> str:
    return f"{prefix}rate:{partner_id}"


def bucket_args(rate_per_s: float, burst: int, now_ms: int) -> list[str]:
    """take_token's arguments; repr keeps every digit of the float, str(int) is exact."""
    if rate_per_s <= 0 or burst < 1:
        raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
    return [repr(float(rate_per_s)), str(burst), str(now_ms)]


class RateLimiter:
    def __init__(
        self, redis: redis.asyncio.Redis, prefix: str, batcher: ScriptBatcher | None = None
    ) -> None:
        self._prefix = prefix
        self._batcher = batcher
        self._script = redis.register_script(_TOKEN_BUCKET_LUA)

    async def allow(
        self, partner_id: str, rate_per_s: float, burst: int, now_ms: int
    ) -> tuple[bool, float]:
        """Take one token; return (allowed, seconds until a token will be available)."""
        args = bucket_args(rate_per_s, burst, now_ms)
        key = bucket_key(self._prefix, partner_id)
        if self._batcher is not None:
            allowed, retry_after_s = await self._batcher.run(self._script, [key], args)
        else:
            allowed, retry_after_s = await self._script(keys=[key], args=args)
        return allowed == 1, float(retry_after_s)
