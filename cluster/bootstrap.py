"""Ray: start a small local cluster, or join an existing one (LENDCORE_RAY_ADDRESS)."""

from __future__ import annotations

import logging
import os

import ray

from cluster.config import Settings

# Ray 2.60 turns token authentication on for every cluster a driver starts itself (unless
# RAY_AUTH_MODE says otherwise) and logs this warning each time, from this logger.
RAY_AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_AUTH_ENABLED_WARNING = "Token authentication is enabled for this Ray cluster"


class DropTokenAuthEnabledWarning(logging.Filter):
    """Drops Ray's "token authentication is enabled" warning and nothing else.

    The local cluster keeps token authentication: its GCS and raylets listen on every
    interface (0.0.0.0), not only on 127.0.0.1, and whoever can reach them can run code as
    this user, so turning it off (RAY_AUTH_MODE=disabled) would open the machine to its
    network. Token authentication is what we want, so a warning that it is on, printed at
    every `lendcore up`, tells the operator nothing to do. Setting RAY_AUTH_MODE=token
    ourselves would silence it too, but Ray reads that variable once, when it is imported,
    before `lendcore up` has loaded the settings that say whether to start or join a cluster.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_AUTH_ENABLED_WARNING)


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
        # Joining: the cluster's own authentication applies, and Ray finds its token (the
        # RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH variables, ~/.ray/auth_token) as it documents.
        ray.init(address=cluster.ray_address, namespace=namespace, logging_level=logging.WARNING)
        return
    logging.getLogger(RAY_AUTH_SETUP_LOGGER).addFilter(DropTokenAuthEnabledWarning())
    ray.init(
        # "local": always a Ray of our own. Without it ray.init() joins any Ray it finds
        # running on the machine (another user's, a test's), and then refuses num_cpus.
        address="local",
        num_cpus=cluster.ray_num_cpus,
        object_store_memory=cluster.ray_object_store_mb * 1024 * 1024,
        include_dashboard=False,
        namespace=namespace,
        logging_level=logging.WARNING,
        # Actor logs stay in Ray's session logs; forwarding them costs the gateway CPU.
        log_to_driver=False,
    )
