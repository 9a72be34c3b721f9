"""The operator dashboard's parts that need no system: sessions (expiry, bound, CSRF), the
sampler's arithmetic (rates, quantiles, restarted hosts, bounded history), the dashboard
route table, the alerts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.dashboard import health, sampler
from gateway.dashboard.sampler import MetricsSampler, RouteRates, Sample, ShardRates
from gateway.dashboard.sessions import SessionStore
from gateway.ops_access import dashboard_route_for

# ---- sessions ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_after_its_idle_timeout_and_its_lifetime() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout_s=60, max_age_s=300, clock=clock)
    session = store.create("alice")
    for _ in range(5):  # kept alive by use …
        clock.now += 50
        assert store.get(session.session_id) is session
    clock.now += 51  # … until its lifetime is over (301 s), used or not
    assert store.get(session.session_id) is None
    idle = store.create("bob")
    clock.now += 61
    assert store.get(idle.session_id) is None
    assert len(store) == 0


def test_sessions_are_bounded_and_the_least_recently_used_goes_first() -> None:
    store = SessionStore(max_sessions=3, clock=Clock())
    first, second, third = (store.create(name) for name in ("a", "b", "c"))
    assert store.get(first.session_id) is first  # now the most recently used
    fourth = store.create("d")
    assert len(store) == 3
    assert store.get(second.session_id) is None
    assert all(store.get(s.session_id) for s in (first, third, fourth))


def test_session_ids_and_csrf_tokens_are_random_and_checked_exactly() -> None:
    store = SessionStore()
    one, two = store.create("a"), store.create("a")
    assert len({one.session_id, two.session_id, one.csrf_token, two.csrf_token}) == 4
    assert len(one.session_id) == 43  # 32 random bytes, URL-safe base64
    assert SessionStore.csrf_ok(one, one.csrf_token)
    assert not SessionStore.csrf_ok(one, two.csrf_token)
    assert not SessionStore.csrf_ok(one, None)
    assert not SessionStore.csrf_ok(one, "")


def test_an_operator_is_signed_out_everywhere() -> None:
    store = SessionStore()
    sessions = [store.create("gone"), store.create("gone"), store.create("stays")]
    store.end_all_of("gone")
    assert [store.get(s.session_id) is not None for s in sessions] == [False, False, True]


# ---- the sampler -------------------------------------------------------------------------


def test_a_quantile_is_interpolated_inside_its_bucket() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert sampler._quantile_ms(0.5, buckets) == pytest.approx(10.0)
    assert sampler._quantile_ms(0.99, buckets) == pytest.approx(910.0)
    assert sampler._quantile_ms(0.25, buckets) == pytest.approx(5.0)
    # Beyond the last finite bound: that bound (the histogram cannot say more).
    assert sampler._quantile_ms(0.99, [(0.5, 1.0), (float("inf"), 10.0)]) == 500.0
    assert sampler._quantile_ms(0.99, [(0.5, 0.0), (float("inf"), 0.0)]) is None


def test_rates_are_what_changed_between_two_readings() -> None:
    before = sampler._Counters(
        at=100.0, requests={"partner repay": 100.0}, errors={"partner repay": 1.0},
        latency={"partner repay": [(0.01, 90.0), (0.1, 100.0), (float("inf"), 100.0)]},
        shards={0: _shard(10.0, 1.0, 0.0, [10.0, 10.0]),
                1: _shard(500.0, 5.0, 0.0, [400.0, 500.0])},
    )
    after = sampler._Counters(
        at=105.0, requests={"partner repay": 600.0, "ops cluster": 5.0},
        errors={"partner repay": 6.0},
        latency={"partner repay": [(0.01, 90.0), (0.1, 600.0), (float("inf"), 600.0)],
                 "ops cluster": [(0.01, 5.0), (0.1, 5.0), (float("inf"), 5.0)]},
        # shard 0: 50 batches more, 49 of them within 10 ms, one in (10, 100] ms
        shards={0: _shard(60.0, 1.5, 2.0, [59.0, 60.0]),
                1: _shard(3.0, 0.1, 0.0, [3.0, 3.0])},  # host 1 restarted
    )
    sample = sampler._difference(before, after)
    repay = sample.routes["partner repay"]
    assert repay.requests_per_s == 100.0 and repay.error_pct == 1.0
    # Every new request in (10, 100] ms: the 495th of 500 is interpolated at 99.1 ms.
    assert repay.p99_ms == pytest.approx(99.1)
    assert sample.routes["ops cluster"] == RouteRates(1.0, 0.0, pytest.approx(9.9))
    assert sample.shards == {0: ShardRates(
        10.0, pytest.approx(10.0), 2,
        commit_p50_ms=pytest.approx(10.0 * 25 / 49), commit_p99_ms=pytest.approx(10.0 + 90.0 * 0.5),
    )}


def _shard(batches: float, commit_s: float, failures: float, le: list[float]) -> Any:
    """A shard's cumulative counters with a two-bound histogram: ≤ 10 ms, ≤ 100 ms."""
    return sampler._ShardCounters(
        batches, commit_s, failures, [(0.01, le[0]), (0.1, le[1]), (float("inf"), batches)]
    )


def test_the_history_is_bounded_and_charted_for_the_busiest_endpoints() -> None:
    readings = iter(range(10**6))

    async def host_stats() -> list[dict[str, Any]]:
        batches = float(next(readings))
        return [{"commit_s_bounds": [0.01], "shards": {"0": {
            "batches": batches, "commit_s": batches / 100, "failures": 0,
            "commit_s_le": [batches],
        }}}]

    charts = MetricsSampler(host_stats, history=5)

    async def sample(times: int) -> None:
        for _ in range(times):
            await charts.sample_now()

    asyncio.run(sample(9))
    assert len(charts.samples) == 5
    data = charts.chart_data()
    assert len(data["t"]) == 5 == len(data["shards"]["batches_per_s"])
    assert len(data["routes"]) <= sampler.ROUTES_CHARTED_MAX
    assert data["shards"]["commit_ms"][-1] == pytest.approx(10.0)


# ---- the route table and the alerts -------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "pattern"), [
    ("GET", "/dashboard/", "/dashboard/"),
    ("GET", "/dashboard", "/dashboard/"),
    ("GET", "/dashboard/loans/LN-0001-0000000001", "/dashboard/loans/{loan_id}"),
    ("POST", "/dashboard/reviews/AP-0001-0000000001/claim",
     "/dashboard/reviews/{application_id}/claim"),
    ("GET", "/dashboard/static/htmx.min.js", "/dashboard/static/{file}"),
])
def test_dashboard_paths_find_their_route(method: str, path: str, pattern: str) -> None:
    route = dashboard_route_for(method, path)
    assert route is not None and route.pattern == pattern


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/dashboard/static/a/b.js"), ("DELETE", "/dashboard/"),
    ("GET", "/dashboard/loans/"), ("POST", "/dashboard/panels/cluster"),
])
def test_other_paths_have_no_route(method: str, path: str) -> None:
    assert dashboard_route_for(method, path) is None


def test_alerts_name_what_an_operator_must_act_on() -> None:
    view = {
        "hosts": [{"host_id": 0}, {"error": "GetTimeoutError"}],
        "gateway": {"pending": 95},
    }
    shards = [
        {"shard_id": 0, "state": "serving", "queue_depth": 0, "recent_failures": 0},
        {"shard_id": 1, "state": "reloading", "queue_depth": 95, "recent_failures": 2},
    ]
    found = health.alerts(view, shards, {"postgres": None, "redis": "ConnectionError: x",
                                         "shards": "1 shard(s) not serving"},
                          health.QueueLimits(inbox_max=100, pending_max=100))
    assert [(a.what, a.detail) for a in found] == [
        ("redis unavailable", "ConnectionError: x"),
        ("shard host not answering", "GetTimeoutError"),
        ("shard not serving", "shard 1 is reloading"),
        ("queue full", "shard 1 inbox holds 95 of 100 commands"),
        ("commits failing", "shard 1: 2 failed commit(s) in the last minute"),
        ("queue full", "the gateway holds 95 of 100 commands"),
    ]
    quiet = [{"shard_id": 0, "state": "serving", "queue_depth": 89, "recent_failures": 0}]
    assert health.alerts({"hosts": [], "gateway": {"pending": 0}}, quiet,
                         {"postgres": None, "redis": None, "shards": None},
                         health.QueueLimits(inbox_max=100, pending_max=100)) == []


def test_recent_failures_add_up_over_the_last_minute() -> None:
    async def no_hosts() -> list[dict[str, Any]]:
        return []

    charts = MetricsSampler(no_hosts)
    for failures in (1, 0, 3):
        charts.samples.append(Sample(0.0, {}, {7: ShardRates(1.0, 1.0, failures)}, None, None))
    assert charts.recent_failures(7) == 4
    assert charts.recent_failures(8) == 0
