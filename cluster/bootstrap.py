"""Ray: start a small local cluster, or join an existing one (LENDCORE_RAY_ADDRESS)."""

from __future__ import annotations

import logging
import os

import ray

from cluster.config import Settings


def start_ray(settings: Settings, namespace: str = "lendcore") -> None:
    if ray.is_initialized():
        return
    # The gateway and the shard hosts are latency-bound; Ray's own extras only cost start time.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray runs workers at nice 15 by default; our shard hosts ARE the write path, and on a
    # 2-core box a niced host waits behind the gateway and Postgres (35 ms batches measured).
    os.environ.setdefault("RAY_worker_niceness", "0")
    cluster = settings.cluster
    if cluster.ray_address:
        ray.init(address=cluster.ray_address, namespace=namespace, logging_level=logging.WARNING)
        return
    ray.init(
        num_cpus=cluster.ray_num_cpus,
        object_store_memory=cluster.ray_object_store_mb * 1024 * 1024,
        include_dashboard=False,
        namespace=namespace,
        logging_level=logging.WARNING,
        # Actor logs stay in Ray's session log files; forwarding them costs the gateway CPU.
        log_to_driver=False,
    )
