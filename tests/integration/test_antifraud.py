"""AntiFraud.screen against the real shared Redis (own key prefix), with controlled time.

Blacklist management through Postgres and the operator API: test_ops_blacklist.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio

# Imported by name so pytest finds the fixture: the lead engineer owns conftest.py.
from conftest_redis import REDIS_URL, redis_prefix  # noqa: F401

from gateway.antifraud import AntiFraud, normalise_ip
from gateway.redis_batch import ScriptBatcher
from lending.screening import BlacklistHits, Velocity

T0 = 1_790_000_000_000  # ms; the script never reads Redis's clock
DAY_MS = 86_400_000
WINDOWS: dict[str, Any] = {  # Any: spread into AntiFraud's keyword arguments
    "id_window_s": 86400,
    "phone_window_s": 86400,
    "device_window_s": 86400,
    "ip_window_s": 86400,
    "device_identities_window_s": 7 * 86400,
    "id_partners_window_s": 30 * 86400,
}


def fresh(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=False)
    yield connection
    await connection.aclose()


def make(client: redis.asyncio.Redis, prefix: str, **overrides: Any) -> AntiFraud:
    settings: dict[str, Any] = {**WINDOWS, "max_events_per_key": 1000, **overrides}
    return AntiFraud(client, prefix, **settings)


@pytest.fixture
def af(client: redis.asyncio.Redis, redis_prefix: str) -> AntiFraud:  # noqa: F811
    return make(client, redis_prefix)


class Applicant:
    """One application's identifiers; every one fresh unless given."""

    def __init__(self, **given: str) -> None:
        self.partner = given.get("partner", "demo")
        self.id_hash = given.get("id_hash", fresh("id"))
        self.phone_hash = given.get("phone_hash", fresh("phone"))
        self.device = given.get("device", fresh("dev"))
        self.ip = given.get("ip", fresh("ip"))

    async def screen(
        self, af: AntiFraud, now_ms: int, event_id: str | None = None
    ) -> tuple[Velocity, BlacklistHits]:
        return await af.screen(self.partner, self.id_hash, self.phone_hash, self.device,
                               self.ip, now_ms, event_id=event_id)


# ---- velocity: earlier applications only ----------------------------------------------------


@pytest.mark.asyncio
async def test_first_application_counts_nothing(af: AntiFraud) -> None:
    velocity, hits = await Applicant().screen(af, T0)
    assert velocity == Velocity()
    assert hits == BlacklistHits()


@pytest.mark.asyncio
async def test_the_current_application_is_not_counted_earlier_ones_are(af: AntiFraud) -> None:
    same = Applicant()
    assert (await same.screen(af, T0))[0] == Velocity()
    second, _ = await same.screen(af, T0 + 1)
    assert second == Velocity(id_number=1, phone=1, device=1, ip=1)
    third, _ = await same.screen(af, T0 + 2)
    assert third == Velocity(id_number=2, phone=2, device=2, ip=2)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("shared", "field"),
    [("id_hash", "id_number"), ("phone_hash", "phone"), ("device", "device"), ("ip", "ip")],
)
async def test_each_dimension_counts_on_its_own(af: AntiFraud, shared: str, field: str) -> None:
    value = fresh("shared")
    await Applicant(**{shared: value}).screen(af, T0)
    await Applicant(**{shared: value}).screen(af, T0 + 1)
    velocity, _ = await Applicant(**{shared: value}).screen(af, T0 + 2)
    expected: dict[str, int] = {field: 2}
    if shared == "device":
        expected["device_identities"] = 2  # three applicants, three ID numbers
    assert velocity == Velocity(**expected)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("shared", "field", "window_key"),
    [("id_hash", "id_number", "id_window_s"), ("phone_hash", "phone", "phone_window_s"),
     ("device", "device", "device_window_s"), ("ip", "ip", "ip_window_s")],
)
async def test_windows_slide(
    client: redis.asyncio.Redis, redis_prefix: str,  # noqa: F811
    shared: str, field: str, window_key: str,
) -> None:
    """An event exactly one window old still counts; one window + 1 ms old does not. Each
    dimension uses its own window (the others are set far longer to tell them apart)."""
    window_s = 3600
    windows = {key: 10 * 86400 for key in WINDOWS}
    windows[window_key] = window_s
    af = make(client, redis_prefix, **windows)
    window_ms = window_s * 1000

    at_edge = fresh("edge")
    await Applicant(**{shared: at_edge}).screen(af, T0)
    velocity, _ = await Applicant(**{shared: at_edge}).screen(af, T0 + window_ms)
    assert getattr(velocity, field) == 1

    past_edge = fresh("past")
    await Applicant(**{shared: past_edge}).screen(af, T0)
    velocity, _ = await Applicant(**{shared: past_edge}).screen(af, T0 + window_ms + 1)
    assert getattr(velocity, field) == 0


@pytest.mark.asyncio
async def test_a_day_and_a_millisecond_later_the_dev_windows_have_forgotten(
    af: AntiFraud,
) -> None:
    """The dev config: a device or IP seen in the last 24 h counts, older does not."""
    first = Applicant()
    await first.screen(af, T0)
    again = Applicant(device=first.device, ip=first.ip, id_hash=first.id_hash,
                      phone_hash=first.phone_hash)
    velocity, _ = await again.screen(af, T0 + DAY_MS + 1)
    assert (velocity.id_number, velocity.phone, velocity.device, velocity.ip) == (0, 0, 0, 0)
    # The identity on the device is still inside its 7-day window, but it is the same one.
    assert velocity.device_identities == 0


@pytest.mark.asyncio
async def test_expired_events_leave_the_set(af: AntiFraud, client: redis.asyncio.Redis) -> None:
    device = fresh("dev")
    for i in range(3):
        await Applicant(device=device).screen(af, T0 + i)
    key = af.keys("x", "y", device, "z")[2]
    assert await client.zcard(key) == 3
    await Applicant(device=device).screen(af, T0 + DAY_MS + 2)  # the first two expire
    assert await client.zcard(key) == 2  # the third (exactly one day old) and this one


@pytest.mark.asyncio
async def test_a_retried_event_id_is_recorded_once_and_does_not_count_itself(
    af: AntiFraud, client: redis.asyncio.Redis
) -> None:
    applicant = Applicant()
    first, _ = await applicant.screen(af, T0, event_id="demo:A-1")
    retry, _ = await applicant.screen(af, T0 + 5, event_id="demo:A-1")
    assert first == retry == Velocity()
    for key in af.keys(applicant.id_hash, applicant.phone_hash, applicant.device,
                       applicant.ip)[:4]:
        assert await client.zcard(key) == 1
    other, _ = await applicant.screen(af, T0 + 6, event_id="demo:A-2")
    assert other == Velocity(id_number=1, phone=1, device=1, ip=1)


@pytest.mark.asyncio
async def test_keys_expire_with_their_window(
    af: AntiFraud, client: redis.asyncio.Redis
) -> None:
    applicant = Applicant()
    await applicant.screen(af, T0)
    keys = af.keys(applicant.id_hash, applicant.phone_hash, applicant.device, applicant.ip)
    windows_ms = [w * 1000 for w in WINDOWS.values()]
    for key, window_ms in zip(keys[:6], windows_ms, strict=True):
        ttl = await client.pttl(key)
        assert window_ms - 60_000 < ttl <= window_ms, key


@pytest.mark.asyncio
async def test_ip_spellings_of_one_address_count_together(af: AntiFraud) -> None:
    await Applicant(ip="2001:DB8:0:0::1").screen(af, T0)
    velocity, _ = await Applicant(ip="2001:db8::1").screen(af, T0 + 1)
    assert velocity.ip == 1
    assert normalise_ip("10.1.2.3") == "10.1.2.3"
    assert normalise_ip("not-an-ip") == "not-an-ip"


# ---- distinct identities per device, partners per ID: OTHERS only ----------------------------


@pytest.mark.asyncio
async def test_identities_on_a_device_count_the_others(af: AntiFraud) -> None:
    device = fresh("dev")
    a, b, c = fresh("id-a"), fresh("id-b"), fresh("id-c")

    async def on_device(id_hash: str, at: int) -> int:
        velocity, _ = await Applicant(device=device, id_hash=id_hash).screen(af, at)
        return velocity.device_identities

    assert await on_device(a, T0) == 0
    assert await on_device(a, T0 + 1) == 0  # the same identity again is no other identity
    assert await on_device(b, T0 + 2) == 1
    assert await on_device(c, T0 + 3) == 2
    assert await on_device(a, T0 + 4) == 2  # b and c
    # 7 days after b was last seen (+1 ms) b is out; a (T0+4) and c (T0+3) are in.
    week_ms = 7 * DAY_MS
    assert await on_device(fresh("id-d"), T0 + 2 + week_ms + 1) == 2
    # The window runs from the LAST sighting: a, first seen at T0 but again at T0+4, is
    # still in when c (T0+3) is out.
    assert await on_device(fresh("id-e"), T0 + 3 + week_ms + 1) == 2  # a and d


@pytest.mark.asyncio
async def test_partners_of_an_id_count_the_others(af: AntiFraud) -> None:
    id_hash = fresh("id")

    async def through(partner: str, at: int) -> int:
        velocity, _ = await Applicant(partner=partner, id_hash=id_hash).screen(af, at)
        return velocity.id_partners

    assert await through("p1", T0) == 0
    assert await through("p1", T0 + 1) == 0
    assert await through("p2", T0 + 2) == 1
    assert await through("p3", T0 + 3) == 2
    assert await through("p1", T0 + 4) == 2
    month_ms = 30 * DAY_MS
    assert await through("p1", T0 + 2 + month_ms + 1) == 1  # p2 is out; p3 is in


# ---- bounds -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_max_events_per_key_bounds_every_set(
    client: redis.asyncio.Redis, redis_prefix: str,  # noqa: F811
) -> None:
    af = make(client, redis_prefix, max_events_per_key=5)
    device, id_hash = fresh("dev"), fresh("id")
    counts = []
    for i in range(12):
        velocity, _ = await Applicant(device=device, id_hash=id_hash if i % 2 else fresh("id"),
                                      partner=f"p{i}").screen(af, T0 + i)
        counts.append((velocity.device, velocity.device_identities))
    # Counts grow to the bound, then saturate there.
    assert [c[0] for c in counts] == [0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5]
    assert max(c[1] for c in counts) == 5
    keys = af.keys(id_hash, "unused", device, "unused")
    assert await client.zcard(keys[2]) == 5  # device events
    assert await client.zcard(keys[4]) == 5  # identities on the device
    assert await client.zcard(keys[5]) == 5  # partners of the odd applications' ID
    # The newest are kept.
    kept: list[Any] = await client.zrange(keys[2], 0, -1, withscores=True)
    assert [int(pair[1]) for pair in kept] == [T0 + i for i in range(7, 12)]


# ---- blacklists (sets read directly here; managed sets: test_ops_blacklist.py) --------------


@pytest.mark.asyncio
async def test_blacklist_membership_per_kind(
    af: AntiFraud, client: redis.asyncio.Redis, redis_prefix: str  # noqa: F811
) -> None:
    applicant = Applicant()
    await client.sadd(f"{redis_prefix}bl:device", applicant.device)
    _, hits = await applicant.screen(af, T0)
    assert hits == BlacklistHits(device=True)
    await client.sadd(f"{redis_prefix}bl:id_number", applicant.id_hash)
    await client.sadd(f"{redis_prefix}bl:phone", applicant.phone_hash)
    _, hits = await applicant.screen(af, T0 + 1)
    assert hits == BlacklistHits(id_number=True, phone=True, device=True)
    _, hits = await Applicant().screen(af, T0 + 2)
    assert hits == BlacklistHits()


# ---- one round trip, atomic under concurrency ----------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_screens_through_the_batcher_each_see_the_earlier_ones(
    client: redis.asyncio.Redis, redis_prefix: str,  # noqa: F811
) -> None:
    batcher = ScriptBatcher(client)
    af = AntiFraud(client, redis_prefix, **WINDOWS, max_events_per_key=1000, batcher=batcher)
    calls = 0
    send = batcher._send

    async def counting_send(pending: Any) -> None:
        nonlocal calls
        calls += 1
        await send(pending)

    batcher._send = counting_send  # type: ignore[method-assign,assignment]
    device = fresh("dev")
    results = await asyncio.gather(
        *(Applicant(device=device).screen(af, T0 + i) for i in range(20))
    )
    assert sorted(v.device for v, _ in results) == list(range(20))
    assert sorted(v.device_identities for v, _ in results) == list(range(20))
    assert calls == 1  # twenty screens, one pipeline: one round trip


@pytest.mark.asyncio
async def test_empty_identifiers_are_refused(af: AntiFraud) -> None:
    with pytest.raises(ValueError, match="device_id"):
        await af.screen("demo", "id", "phone", "", "10.0.0.1", T0)


def test_windows_must_be_positive() -> None:
    unconnected = redis.asyncio.Redis.from_url(REDIS_URL)  # register_script sends nothing
    with pytest.raises(ValueError, match="positive"):
        make(unconnected, "lendcore-test-unused:", ip_window_s=0)
    with pytest.raises(ValueError, match="positive"):
        make(unconnected, "lendcore-test-unused:", max_events_per_key=0)
