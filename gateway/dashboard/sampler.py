"""The dashboard's charts: the gateway's own counters sampled every few seconds into a
bounded ring buffer, in the gateway process.

Each sample reads the same Prometheus counters and histograms /metrics serves
(`lendcore_http_requests_total`, `lendcore_http_request_seconds`,
`lendcore_gateway_ray_call_seconds`) and the shard hosts' stats (`batches`, `commit_s`,
`failures` and the commit-time histogram `commit_s_le` per shard), and keeps what changed
since the previous sample: per endpoint requests/s, the share answered 5xx and the p99
latency; per shard batches/s and the mean, p50 and p99 commit time of a batch; the Ray call
round trip's p50 and p99. HISTORY samples are kept
(10 minutes at the default 5 s), so memory is bounded whatever the traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from gateway.partner_api import LATENCY, REQUESTS
from gateway.router import RAY_CALL_SECONDS

log = logging.getLogger("lendcore.dashboard")

SAMPLE_EVERY_S = 5.0
HISTORY = 120  # samples: 10 minutes at SAMPLE_EVERY_S
ROUTES_CHARTED_MAX = 6  # the busiest endpoints of the window get a line each

HostStats = Callable[[], Awaitable[list[dict[str, Any]]]]
Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last


@dataclass(frozen=True)
class RouteRates:
    requests_per_s: float
    error_pct: float  # share of the interval's answers that were 5xx
    p99_ms: float | None  # None: no request in the interval


@dataclass(frozen=True)
class ShardRates:
    batches_per_s: float
    commit_ms: float | None  # mean commit time of a batch in the interval; None: no batch
    failures: int  # commit failures in the interval
    commit_p50_ms: float | None = None  # from the shard's histogram; None: no batch
    commit_p99_ms: float | None = None


@dataclass(frozen=True)
class _ShardCounters:
    batches: float
    commit_s: float
    failures: float
    commit_buckets: Buckets  # a batch's apply + commit time (actors/core.py COMMIT_S_BOUNDS)


@dataclass(frozen=True)
class Sample:
    at: float  # unix time
    routes: dict[str, RouteRates]  # "partner repayments.create", "ops cluster", …
    shards: dict[int, ShardRates]
    ray_call_p50_ms: float | None
    ray_call_p99_ms: float | None


@dataclass
class _Counters:
    """Cumulative values at one instant (what the next sample subtracts)."""

    at: float
    requests: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    latency: dict[str, Buckets] = field(default_factory=dict)
    ray_call: Buckets = field(default_factory=list)
    shards: dict[int, _ShardCounters] = field(default_factory=dict)


class MetricsSampler:
    def __init__(
        self, host_stats: HostStats, *, every_s: float = SAMPLE_EVERY_S,
        history: int = HISTORY,
    ) -> None:
        self.host_stats = host_stats
        self.every_s = every_s
        self.samples: deque[Sample] = deque(maxlen=history)
        self._previous: _Counters | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dashboard-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sample_now(self) -> None:
        """Read every counter; from the second call on, append what changed since."""
        current = _read_prometheus(time.time())
        current.shards = _shard_counters(await self.host_stats())
        if self._previous is not None:
            self.samples.append(_difference(self._previous, current))
        self._previous = current

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def recent_failures(self, shard_id: int, samples: int = 12) -> int:
        """Commit failures of a shard over the last `samples` intervals (a minute)."""
        recent = list(self.samples)[-samples:]
        return sum(s.shards[shard_id].failures for s in recent if shard_id in s.shards)

    def chart_data(self) -> dict[str, Any]:
        """The window as uPlot wants it: one x array (unix s) and aligned y arrays."""
        samples = list(self.samples)
        busiest = _busiest_routes(samples)
        return {
            "t": [round(s.at, 3) for s in samples],
            "routes": [
                {
                    "name": name,
                    "requests_per_s": [_rounded(_route(s, name).requests_per_s) for s in samples],
                    "error_pct": [_rounded(_route(s, name).error_pct) for s in samples],
                    "p99_ms": [_rounded(_route(s, name).p99_ms) for s in samples],
                }
                for name in busiest
            ],
            "shards": {
                "batches_per_s": [
                    _rounded(sum(r.batches_per_s for r in s.shards.values())) for s in samples],
                "commit_ms": [_rounded(_mean_commit_ms(s)) for s in samples],
            },
            "ray_call": {
                "p50_ms": [_rounded(s.ray_call_p50_ms) for s in samples],
                "p99_ms": [_rounded(s.ray_call_p99_ms) for s in samples],
            },
        }

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_now()
            except Exception:  # a host or Ray hiccup must not end the charts
                # Logged with its traceback; the chart shows a gap for the missed interval.
                log.exception("dashboard sample failed")
                self._previous = None
            await asyncio.sleep(self.every_s)


# ---- reading the counters ---------------------------------------------------------------


def _read_prometheus(now: float) -> _Counters:
    counters = _Counters(at=now)
    for labels, value in _samples(REQUESTS, "_total"):
        key = f"{labels['api']} {labels['route']}"
        counters.requests[key] = counters.requests.get(key, 0.0) + value
        if labels["status"].startswith("5"):
            counters.errors[key] = counters.errors.get(key, 0.0) + value
    for labels, value in _samples(LATENCY, "_bucket"):
        key = f"{labels['api']} {labels['route']}"
        counters.latency.setdefault(key, []).append((float(labels["le"]), value))
    counters.ray_call = [(float(labels["le"]), value)
                         for labels, value in _samples(RAY_CALL_SECONDS, "_bucket")]
    return counters


def _samples(metric: MetricWrapperBase, suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample.labels, sample.value


def _shard_counters(host_stats: list[dict[str, Any]]) -> dict[int, _ShardCounters]:
    """Each shard's cumulative counters, from the hosts that answered."""
    counters = {}
    for host in host_stats:
        bounds = [float(bound) for bound in host.get("commit_s_bounds", [])]
        for shard_id, stats in host.get("shards", {}).items():
            batches = float(stats["batches"])
            buckets = [*zip(bounds, map(float, stats["commit_s_le"]), strict=True),
                       (math.inf, batches)]
            counters[int(shard_id)] = _ShardCounters(
                batches, float(stats["commit_s"]), float(stats["failures"]), buckets
            )
    return counters


# ---- differences -------------------------------------------------------------------------


def _difference(before: _Counters, after: _Counters) -> Sample:
    seconds = max(after.at - before.at, 1e-6)
    routes = {}
    for key, total in after.requests.items():
        answered = total - before.requests.get(key, 0.0)
        errors = after.errors.get(key, 0.0) - before.errors.get(key, 0.0)
        latency = _bucket_difference(before.latency.get(key, []), after.latency.get(key, []))
        routes[key] = RouteRates(
            requests_per_s=answered / seconds,
            error_pct=100.0 * errors / answered if answered else 0.0,
            p99_ms=_quantile_ms(0.99, latency),
        )
    shards = {}
    for shard_id, now in after.shards.items():
        old = before.shards.get(shard_id)
        if old is None or now.batches < old.batches:  # new, or its host restarted
            continue
        done = now.batches - old.batches
        commits = _bucket_difference(old.commit_buckets, now.commit_buckets)
        shards[shard_id] = ShardRates(
            batches_per_s=done / seconds,
            commit_ms=1000.0 * (now.commit_s - old.commit_s) / done if done else None,
            failures=int(now.failures - old.failures),
            commit_p50_ms=_quantile_ms(0.5, commits),
            commit_p99_ms=_quantile_ms(0.99, commits),
        )
    ray_call = _bucket_difference(before.ray_call, after.ray_call)
    return Sample(after.at, routes, shards, _quantile_ms(0.5, ray_call),
                  _quantile_ms(0.99, ray_call))


def _bucket_difference(before: Buckets, after: Buckets) -> Buckets:
    old = dict(before)
    return [(bound, count - old.get(bound, 0.0)) for bound, count in after]


def _quantile_ms(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of an interval's histogram in ms, interpolated inside its bucket as
    Prometheus's histogram_quantile does; the highest finite bound when it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return 1000.0 * lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return 1000.0 * (lower_bound + (bound - lower_bound) * share)
        lower_bound, lower_count = bound, count
    return 1000.0 * lower_bound


def _busiest_routes(samples: list[Sample]) -> list[str]:
    totals: dict[str, float] = {}
    for sample in samples:
        for name, rates in sample.routes.items():
            totals[name] = totals.get(name, 0.0) + rates.requests_per_s
    busy = sorted((name for name, total in totals.items() if total > 0),
                  key=lambda name: (-totals[name], name))
    return busy[:ROUTES_CHARTED_MAX]


_IDLE = RouteRates(0.0, 0.0, None)


def _route(sample: Sample, name: str) -> RouteRates:
    return sample.routes.get(name, _IDLE)


def _mean_commit_ms(sample: Sample) -> float | None:
    batches = sum(r.batches_per_s for r in sample.shards.values())
    if not batches:
        return None
    weighted = sum(r.batches_per_s * r.commit_ms for r in sample.shards.values()
                   if r.commit_ms is not None)
    return weighted / batches


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
