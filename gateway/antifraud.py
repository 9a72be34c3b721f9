"""Anti-fraud counters and blacklists in Redis (DOMAIN.md §6): what crosses customers.

Velocity per ID number, phone, device and IP, identities per device and partners per ID
number cross customers, hence shards: they are counted here, in the gateway, and handed to
the customer's shard in the SubmitApplication command (lending/screening.py). Thresholds
are the rules' business; this module only counts.

`AntiFraud.screen` is ONE Lua script (batched with the other scripts of the same event-loop
tick by the ScriptBatcher), hence one round trip. Keys, with `{p}` = `redis.key_prefix`:

  {p}af:id:{id_hash}           ZSET member event id, score time ms    id_window_s
  {p}af:phone:{phone_hash}     ZSET member event id, score time ms    phone_window_s
  {p}af:dev:{device_id}        ZSET member event id, score time ms    device_window_s
  {p}af:ip:{ip}                ZSET member event id, score time ms    ip_window_s
  {p}af:dev-ids:{device_id}    ZSET member id_hash, score last seen   device_identities_window_s
  {p}af:id-partners:{id_hash}  ZSET member partner, score last seen   id_partners_window_s
  {p}bl:id_number, {p}bl:phone, {p}bl:device   SET of value hashes (device: the id as given)
  {p}bl:synced                  STRING, set when the three sets were rebuilt from Postgres

For each ZSET the script drops what left the window (score < now − window: an event exactly
one window old still counts), adds the current member at `now` (or moves it there), counts
the set minus that one member, trims the set to its newest `max_events_per_key` and sets
the key's TTL to the window. So every count is of EARLIER events (or OTHER identities /
partners) and saturates at `max_events_per_key`. Four commands per set: counting before the
add, and asking whether the member was there, would be two more for the same number.

Blacklists: Postgres (`blacklist`) is the truth, the Redis sets are a copy. `Blacklist`
writes Postgres and its audit row in one transaction, then updates the set; `rebuild`
replaces the three sets from Postgres in one MULTI and sets `bl:synced`. A Redis that lost
the sets (flushed, restarted without persistence) has no `bl:synced`: the screen sees that
in the same round trip, rebuilds, and re-reads the three memberships before answering, so an
application is never screened against a blacklist that Redis forgot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gateway.pii import PiiVault
from gateway.redis_batch import ScriptBatcher
from lending.identity import IdNumberError, is_valid_mobile, parse_id_number
from lending.screening import BlacklistHits, Velocity
from storage import audit

log = logging.getLogger("lendcore.antifraud")

BLACKLIST_KINDS = ("id_number", "phone", "device")
HASHED_KINDS = frozenset(("id_number", "phone"))  # stored as the PII vault's keyed hash
BLACKLIST_SHARD = 0  # cluster reference data (migration 0004): every row on shard 0
DEVICE_ID_MAX = 128  # as the partner API accepts it (gateway/schemas.py DeviceIn)
HASH_PREFIX_SHOWN = 12  # hex characters of a keyed hash shown to operators
_REBUILD_CHUNK = 10000

# KEYS[1..4] events by ID hash, phone hash, device, IP; KEYS[5] identities of the device;
# KEYS[6] partners of the ID; KEYS[7..9] blacklist sets id_number, phone, device;
# KEYS[10] blacklist sentinel.
# ARGV[1] now ms, ARGV[2] event id, ARGV[3] id hash, ARGV[4] phone hash, ARGV[5] device id,
# ARGV[6] partner id, ARGV[7..12] windows ms (KEYS[1..6] order), ARGV[13] max per key.
# Returns {id, phone, device, ip, device_identities, id_partners, bl_id, bl_phone, bl_device,
# synced}, all integers.
_SCREEN_LUA = """
local now = tonumber(ARGV[1])
local max_n = tonumber(ARGV[13])
local function tick(key, member, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', now - window))
  redis.call('ZADD', key, string.format('%.0f', now), member)
  -- The current member is in the set exactly once now, whether it was before or not:
  -- the others, the earlier events, are all but one.
  local size = redis.call('ZCARD', key)
  if size > max_n then
    redis.call('ZREMRANGEBYRANK', key, 0, size - max_n - 1)
  end
  redis.call('PEXPIRE', key, string.format('%.0f', window))
  return size - 1
end
local members = {ARGV[2], ARGV[2], ARGV[2], ARGV[2], ARGV[3], ARGV[6]}
local result = {}
for i = 1, 6 do
  result[i] = tick(KEYS[i], members[i], tonumber(ARGV[6 + i]))
end
result[7] = redis.call('SISMEMBER', KEYS[7], ARGV[3])
result[8] = redis.call('SISMEMBER', KEYS[8], ARGV[4])
result[9] = redis.call('SISMEMBER', KEYS[9], ARGV[5])
result[10] = redis.call('EXISTS', KEYS[10])
return result
"""


class BlacklistEntry(msgspec.Struct, frozen=True):
    """A row of `blacklist`; also its audit view (value_hash is never a value in clear)."""

    kind: str
    value_hash: str
    reason: str
    added_by: str
    added_at: str  # ISO 8601

    def masked(self) -> dict[str, Any]:
        """What operators are shown: a device id as it is, only a hash prefix otherwise."""
        hashed = self.kind in HASHED_KINDS
        value = self.value_hash[:HASH_PREFIX_SHOWN] + "…" if hashed else self.value_hash
        return {"kind": self.kind, "value": value, "hashed": hashed, "reason": self.reason,
                "added_by": self.added_by, "added_at": self.added_at}


class BlacklistValueError(ValueError):
    """A value that cannot be blacklisted under its kind; `field` names the bad input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def blacklist_value_hash(vault: PiiVault, kind: str, value: str) -> str:
    """The stored form of an operator's value: the keyed hash of the normalised ID number
    (upper-case X, as the partner API hashes it) or phone, the device id as given. A full
    keyed hash (64 hex, as the audit log shows it) is accepted for id_number and phone.
    Messages never repeat the value: it is personal data."""
    if kind not in BLACKLIST_KINDS:
        raise BlacklistValueError("kind", f"kind must be one of {', '.join(BLACKLIST_KINDS)}")
    if kind == "device":
        if not 1 <= len(value) <= DEVICE_ID_MAX:
            raise BlacklistValueError("value", f"a device id has 1..{DEVICE_ID_MAX} characters")
        return value
    if _is_keyed_hash(value):
        return value.lower()
    if kind == "id_number":
        try:
            parse_id_number(value)
        except IdNumberError as exc:
            raise BlacklistValueError("value", str(exc)) from exc
        return vault.lookup_hash(value.upper())
    if not is_valid_mobile(value):
        raise BlacklistValueError("value", "phone must be a mainland mobile number")
    return vault.lookup_hash(value)


def _is_keyed_hash(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def normalise_ip(ip: str) -> str:
    """One key per address: '2001:DB8::0:1' and '2001:db8::1' are the same IP. Anything
    that is not an IP address is counted as given."""
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


class Blacklist:
    """Operator blacklists: Postgres is the truth, Redis sets the copy screening reads.

    Writes and rebuilds run one at a time in this process (a lock), so a rebuild's snapshot
    can never overwrite a write that committed after it was read, and two writes of the same
    entry reach Redis in the order they committed (one gateway process: docs/operations.md).
    """

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, prefix: str) -> None:
        self._pool = pool
        self._redis = redis
        self._prefix = prefix
        self._lock = asyncio.Lock()
        self._stale = False  # a write reached Postgres but not Redis: rebuild before use

    @property
    def stale(self) -> bool:
        return self._stale

    def mark_stale(self) -> None:
        """Make the next screen rebuild the sets first (e.g. Redis was down at start)."""
        self._stale = True

    def key(self, kind: str) -> str:
        if kind not in BLACKLIST_KINDS:
            raise ValueError(f"unknown blacklist kind {kind!r}")
        return f"{self._prefix}bl:{kind}"

    @property
    def synced_key(self) -> str:
        return f"{self._prefix}bl:synced"

    # ---- reads ------------------------------------------------------------------------------

    async def entries(self, kind: str | None, limit: int) -> tuple[list[BlacklistEntry], int]:
        """Newest first, at most `limit`; and how many there are in all."""
        rows = await self._pool.fetch(
            "SELECT kind, value_hash, reason, added_by, added_at FROM blacklist "
            "WHERE ($1::text IS NULL OR kind = $1) "
            "ORDER BY added_at DESC, kind, value_hash LIMIT $2",
            kind, limit,
        )
        total: int = await self._pool.fetchval(
            "SELECT count(*) FROM blacklist WHERE ($1::text IS NULL OR kind = $1)", kind
        )
        return [_entry(row) for row in rows], total

    async def hits(self, id_hash: str, phone_hash: str, device_id: str) -> BlacklistHits:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sismember(self.key("id_number"), id_hash)
            pipe.sismember(self.key("phone"), phone_hash)
            pipe.sismember(self.key("device"), device_id)
            id_hit, phone_hit, device_hit = await pipe.execute()
        return BlacklistHits(bool(id_hit), bool(phone_hit), bool(device_hit))

    # ---- writes -----------------------------------------------------------------------------

    async def add(
        self, kind: str, value_hash: str, reason: str, actor: str
    ) -> tuple[BlacklistEntry, bool]:
        """Add an entry, or replace the reason of one that exists (added_by/added_at become
        this write's). Returns the entry and whether it is new."""
        async with self._lock:
            async with self._pool.acquire() as conn, conn.transaction():
                before = await _locked_row(conn, kind, value_hash)
                row = await conn.fetchrow(
                    "INSERT INTO blacklist (shard_id, kind, value_hash, reason, added_by) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, value_hash) DO UPDATE "
                    "SET reason = EXCLUDED.reason, added_by = EXCLUDED.added_by, "
                    "added_at = now() "
                    "RETURNING kind, value_hash, reason, added_by, added_at",
                    BLACKLIST_SHARD, kind, value_hash, reason, actor,
                )
                after = _entry(row)
                await audit.record(
                    conn, shard_id=BLACKLIST_SHARD, actor=actor, action="blacklist.add",
                    target=_target(kind, value_hash), before=before, after=after,
                )
            await self._update_redis("sadd", kind, value_hash)
        return after, before is None

    async def remove(self, kind: str, value_hash: str, actor: str) -> BlacklistEntry | None:
        """Remove an entry; None when there is none (nothing written, nothing audited)."""
        async with self._lock:
            async with self._pool.acquire() as conn, conn.transaction():
                before = await _locked_row(conn, kind, value_hash)
                if before is None:
                    return None
                await conn.execute(
                    "DELETE FROM blacklist WHERE kind = $1 AND value_hash = $2", kind, value_hash
                )
                await audit.record(
                    conn, shard_id=BLACKLIST_SHARD, actor=actor, action="blacklist.remove",
                    target=_target(kind, value_hash), before=before, after=None,
                )
            await self._update_redis("srem", kind, value_hash)
        return before

    async def _update_redis(self, command: str, kind: str, value_hash: str) -> None:
        # The write is durable in Postgres whatever happens here: if Redis did not take it,
        # the next screen rebuilds the sets from Postgres first (see AntiFraud.screen).
        try:
            await getattr(self._redis, command)(self.key(kind), value_hash)
        except (aioredis.RedisError, OSError) as exc:
            self._stale = True
            log.warning("blacklist %s %s not applied to Redis (%s): rebuild pending",
                        command, kind, type(exc).__name__)

    # ---- Redis copy -------------------------------------------------------------------------

    async def rebuild(self) -> dict[str, int]:
        """Replace the three Redis sets with Postgres's rows, atomically (one MULTI), and
        mark them synced. Returns the entries per kind."""
        async with self._lock:
            return await self._rebuild_locked()

    async def ensure_synced(self) -> None:
        """Rebuild if a write missed Redis or Redis lost the sets (no sentinel)."""
        async with self._lock:
            if self._stale or not await self._redis.exists(self.synced_key):
                await self._rebuild_locked()

    async def _rebuild_locked(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT kind, value_hash FROM blacklist")
        by_kind: dict[str, list[str]] = {kind: [] for kind in BLACKLIST_KINDS}
        for row in rows:
            by_kind[row["kind"]].append(row["value_hash"])
        async with self._redis.pipeline(transaction=True) as pipe:
            for kind, values in by_kind.items():
                pipe.delete(self.key(kind))
                for start in range(0, len(values), _REBUILD_CHUNK):
                    pipe.sadd(self.key(kind), *values[start:start + _REBUILD_CHUNK])
            pipe.set(self.synced_key, b"1")
            await pipe.execute()
        self._stale = False
        counts = {kind: len(values) for kind, values in by_kind.items()}
        log.info("blacklist sets rebuilt from Postgres: %s", counts)
        return counts


class AntiFraud:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        id_window_s: int,
        phone_window_s: int,
        device_window_s: int,
        ip_window_s: int,
        device_identities_window_s: int,
        id_partners_window_s: int,
        max_events_per_key: int,
        batcher: ScriptBatcher | None = None,
        blacklist: Blacklist | None = None,
    ) -> None:
        windows_s = (id_window_s, phone_window_s, device_window_s, ip_window_s,
                     device_identities_window_s, id_partners_window_s)
        if min(windows_s) < 1 or max_events_per_key < 1:
            raise ValueError("anti-fraud windows and max_events_per_key must be positive")
        self._prefix = prefix
        self._windows_ms = [str(w * 1000) for w in windows_s]
        self._max_events = str(max_events_per_key)
        self._batcher = batcher
        self._blacklist = blacklist
        self._script: AsyncScript = redis.register_script(_SCREEN_LUA)

    async def screen(
        self,
        partner_id: str,
        id_hash: str,
        phone_hash: str,
        device_id: str,
        ip: str,
        now_ms: int,
        *,
        event_id: str | None = None,
    ) -> tuple[Velocity, BlacklistHits]:
        """Count this application's EARLIER peers in every window, record it, and read the
        blacklists: one Redis round trip (two, plus a rebuild, only after Redis lost the
        blacklist sets). `event_id` names the application in the event sets; a retry with
        the same id is recorded once and does not count itself (default: a fresh id).
        Redis errors propagate (the caller answers 503)."""
        for name, value in (("partner_id", partner_id), ("id_hash", id_hash),
                            ("phone_hash", phone_hash), ("device_id", device_id), ("ip", ip)):
            if not value:
                raise ValueError(f"{name} must not be empty")
        if self._blacklist is not None and self._blacklist.stale:
            await self._blacklist.ensure_synced()
        keys = self.keys(id_hash, phone_hash, device_id, ip)
        args = [str(now_ms), event_id or uuid.uuid4().hex, id_hash, phone_hash, device_id,
                partner_id, *self._windows_ms, self._max_events]
        if self._batcher is not None:
            reply = await self._batcher.run(self._script, keys, args)
        else:
            reply = await self._script(keys=keys, args=args)
        counts = [int(n) for n in reply]
        velocity = Velocity(*counts[:6])
        hits = BlacklistHits(*(n == 1 for n in counts[6:9]))
        if counts[9] == 0 and self._blacklist is not None:
            await self._blacklist.ensure_synced()
            hits = await self._blacklist.hits(id_hash, phone_hash, device_id)
        return velocity, hits

    def keys(self, id_hash: str, phone_hash: str, device_id: str, ip: str) -> list[str]:
        """The script's keys, in its KEYS order (see the module docstring). The partner is a
        member, not a key: the partners of an ID live in the ID's set."""
        p = self._prefix
        return [
            f"{p}af:id:{id_hash}",
            f"{p}af:phone:{phone_hash}",
            f"{p}af:dev:{device_id}",
            f"{p}af:ip:{normalise_ip(ip)}",
            f"{p}af:dev-ids:{device_id}",
            f"{p}af:id-partners:{id_hash}",
            f"{p}bl:id_number",
            f"{p}bl:phone",
            f"{p}bl:device",
            f"{p}bl:synced",
        ]


async def _locked_row(
    conn: asyncpg.Connection, kind: str, value_hash: str
) -> BlacklistEntry | None:
    row = await conn.fetchrow(
        "SELECT kind, value_hash, reason, added_by, added_at FROM blacklist "
        "WHERE kind = $1 AND value_hash = $2 FOR UPDATE",
        kind, value_hash,
    )
    return None if row is None else _entry(row)


def _entry(row: asyncpg.Record) -> BlacklistEntry:
    added_at: datetime = row["added_at"]
    return BlacklistEntry(row["kind"], row["value_hash"], row["reason"], row["added_by"],
                          added_at.isoformat())


def _target(kind: str, value_hash: str) -> str:
    return f"blacklist:{kind}:{value_hash}"
