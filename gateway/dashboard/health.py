"""What the cluster panel shows beyond GET /ops/cluster: the health of Postgres and Redis
(the readiness round), each shard's rates from the sampler, each shard host's memory, and
the alerts an operator must act on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from gateway.dashboard.sampler import MetricsSampler

QUEUE_ALERT_SHARE = 0.9  # a queue this full is reported as full


class ReadinessView(Protocol):
    """gateway/readiness.py Readiness as the dashboard reads it."""

    failing: dict[str, str]

    def is_ready(self) -> bool: ...


@dataclass(frozen=True)
class QueueLimits:
    inbox_max: int  # [shard] inbox_max: commands queued per shard
    pending_max: int  # [gateway] pending_max: commands queued in the gateway


@dataclass(frozen=True)
class Alert:
    what: str
    detail: str


def dependency_health(readiness: ReadinessView) -> dict[str, str | None]:
    """Postgres, Redis and shards: None when the last readiness round found them healthy,
    else why not (the /readyz wording)."""
    return {name: readiness.failing.get(name) for name in ("postgres", "redis", "shards")}


def shard_rows(view: dict[str, Any], sampler: MetricsSampler) -> list[dict[str, Any]]:
    """GET /ops/cluster's shards with the last interval's batches/s and commit times."""
    latest = sampler.latest()
    rows = []
    for shard in view["shards"]:
        rates = latest.shards.get(shard["shard_id"]) if latest else None
        rows.append({
            **shard,
            "batches_per_s": None if rates is None else rates.batches_per_s,
            "commit_ms": None if rates is None else rates.commit_ms,
            "commit_p50_ms": None if rates is None else rates.commit_p50_ms,
            "commit_p99_ms": None if rates is None else rates.commit_p99_ms,
            "recent_failures": sampler.recent_failures(shard["shard_id"]),
        })
    return rows


def host_rows(view: dict[str, Any]) -> list[dict[str, Any]]:
    """GET /ops/cluster's hosts with their resident memory when they run on this machine."""
    rows = []
    for host in view["hosts"]:
        rss = None
        if "pid" in host:
            rss = local_rss(int(host["pid"]), float(host["started_at"]))
        rows.append({**host, "rss_bytes": rss})
    return rows


def local_rss(pid: int, started_at: float) -> int | None:
    """Resident memory of a shard-host process, when it is one of ours on this machine: a
    descendant of this gateway process (its local Ray's workers are) that existed when the
    host started (so not a later process that reused the pid). None otherwise (a joined Ray
    cluster's host on another node, or gone)."""
    try:
        process = psutil.Process(pid)
        ours = any(parent.pid == os.getpid() for parent in process.parents())
        if not ours or process.create_time() > started_at:
            return None
        return int(process.memory_info().rss)
    except psutil.Error:
        return None


def alerts(
    view: dict[str, Any], shards: list[dict[str, Any]], health: dict[str, str | None],
    limits: QueueLimits,
) -> list[Alert]:
    """A shard not serving, a full queue, commits failing, a dependency down."""
    found = [Alert(f"{name} unavailable", why) for name, why in health.items()
             if why is not None and name != "shards"]
    for host in view["hosts"]:
        if "error" in host:
            found.append(Alert("shard host not answering", str(host["error"])))
    for shard in shards:
        label = f"shard {shard['shard_id']}"
        if shard["state"] != "serving":
            found.append(Alert("shard not serving", f"{label} is {shard['state']}"))
        if shard["queue_depth"] >= QUEUE_ALERT_SHARE * limits.inbox_max:
            found.append(Alert("queue full", f"{label} inbox holds {shard['queue_depth']} of "
                                             f"{limits.inbox_max} commands"))
        if shard["recent_failures"]:
            found.append(Alert("commits failing", f"{label}: {shard['recent_failures']} "
                                                  "failed commit(s) in the last minute"))
    pending = view["gateway"]["pending"]
    if pending >= QUEUE_ALERT_SHARE * limits.pending_max:
        found.append(Alert("queue full", f"the gateway holds {pending} of "
                                         f"{limits.pending_max} commands"))
    return found
