"""Ray: start a local Ray, a local cluster of several nodes, or join an existing cluster.

Three ways, chosen by the settings:

- `[cluster] ray_address` (`LENDCORE_RAY_ADDRESS`): join that cluster as a driver; its nodes
  are whatever the operator started (`ray start --head` / `ray start --address=…`).
- `[cluster] local_nodes` = N > 1 (`lendcore up --nodes N`, `LENDCORE_LOCAL_NODES`): start a
  real Ray cluster of N nodes on this machine with Ray's own multi-node test set-up
  (`ray.cluster_utils.Cluster`): a head node and N − 1 worker nodes, each its own raylet,
  object store and worker processes, sharing `ray_num_cpus` between them; then join it as a
  driver. `stop_ray` removes every node (nothing of it outlives `lendcore up`).
- otherwise: `ray.init()` starts a one-node Ray, as before.

How a node is identified (what host placement uses): every node lendcore starts carries the
custom resource `lendcore_node_<i>` = 1 (`node_resource(i)`; i = 0 is the head) and the node
label `lendcore.io/node` = "<i>" (`NODE_LABEL`). An actor is placed on node i with
`.options(resources={node_resource(i): NODE_RESOURCE_SHARE})` (a small share, so that any
number of actors fit), or with Ray's NodeAffinitySchedulingStrategy on the node id that
`lendcore_nodes()` lists. The plain one-node Ray of the third case is node 0 too (its
`ray.init` gets the same resource and label). On several machines the operator gives each
node its index when starting it: `ray start --head --resources='{"lendcore_node_0": 1}'
--labels='{"lendcore.io/node": "0"}'`, `ray start --address=HEAD:6379
--resources='{"lendcore_node_1": 1}' --labels='{"lendcore.io/node": "1"}'`, …
(docs/operations.md "Several machines"). `lendcore_nodes()` reads them back from Ray.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from cluster.config import Settings

NODE_RESOURCE_PREFIX = "lendcore_node_"
NODE_LABEL = "lendcore.io/node"
NODE_RESOURCE_SHARE = 0.001  # what one actor asks of its node's resource: 1,000 actors fit
NODES_READY_TIMEOUT_S = 60
log = logging.getLogger("lendcore.bootstrap")

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


def node_resource(index: int) -> str:
    """The custom resource that marks lendcore node `index` (one unit on that node only)."""
    return f"{NODE_RESOURCE_PREFIX}{index}"


@dataclass(frozen=True)
class LendcoreNode:
    index: int  # lendcore's node number (its `lendcore_node_<index>` resource)
    node_id: str  # Ray's node id (hex)
    alive: bool
    address: str


def node_index(node: dict[str, Any]) -> int | None:
    """The lendcore index of a node as `ray.nodes()` describes it, None for a node that
    carries no `lendcore_node_<i>` resource (a node started without one)."""
    for name in node.get("Resources", {}):
        if name.startswith(NODE_RESOURCE_PREFIX) and name[len(NODE_RESOURCE_PREFIX):].isdigit():
            return int(name[len(NODE_RESOURCE_PREFIX):])
    label = node.get("Labels", {}).get(NODE_LABEL)
    return int(label) if isinstance(label, str) and label.isdigit() else None


# One ray.nodes() at a time in this process: the coordinator (every second), the cluster
# view and start-up call it from worker threads (it blocks on the GCS), and nothing says
# Ray's global-state client may be used from several threads at once.
_NODES_LOCK = threading.Lock()


def ray_nodes() -> list[dict[str, Any]]:
    """`ray.nodes()`, serialised (a blocking GCS call: run it off the event loop)."""
    with _NODES_LOCK:
        nodes: list[dict[str, Any]] = ray.nodes()
        return nodes


def lendcore_nodes() -> list[LendcoreNode]:
    """The cluster's lendcore nodes, by index (a blocking GCS call: run it off the event
    loop). A dead node keeps its index with alive False until Ray forgets it."""
    nodes = []
    for node in ray_nodes():
        index = node_index(node)
        if index is not None:
            nodes.append(LendcoreNode(index, node["NodeID"], bool(node["Alive"]),
                                      node["NodeManagerAddress"]))
    return sorted(nodes, key=lambda n: (n.index, not n.alive))


def cpu_shares(cpus: int, nodes: int) -> list[int]:
    """`cpus` spread over `nodes` as evenly as whole CPUs go, at least one each (a local
    cluster of more nodes than cores oversubscribes them, which is the point of trying it:
    our actors ask for no CPU)."""
    return [max(1, cpus // nodes + (1 if i < cpus % nodes else 0)) for i in range(nodes)]


class LocalCluster:
    """A Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`)."""

    def __init__(self, nodes: int, cpus: int, object_store_mb: int) -> None:
        from ray.cluster_utils import Cluster

        shares = cpu_shares(cpus, nodes)
        store = object_store_mb * 1024 * 1024
        self.cluster = Cluster(
            initialize_head=True, shutdown_at_exit=True,
            head_node_args={**_node_args(0, shares[0], store), "include_dashboard": False},
        )
        try:
            # Started together (no wait each), then waited for as a whole: ~4 s, not 4 s a node.
            for index in range(1, nodes):
                self.cluster.add_node(wait=False, **_node_args(index, shares[index], store))
            self.cluster.wait_for_nodes(NODES_READY_TIMEOUT_S)
        except BaseException:
            self.cluster.shutdown()
            raise

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def _node_args(index: int, cpus: int, store_bytes: int) -> dict[str, Any]:
    return {
        "num_cpus": cpus,
        "resources": {node_resource(index): 1},
        "labels": {NODE_LABEL: str(index)},
        "object_store_memory": store_bytes,
    }


def start_ray(settings: Settings, namespace: str = "lendcore") -> LocalCluster | None:
    """Start or join Ray as the settings say; returns the local multi-node cluster it
    started (to give to `stop_ray`), else None."""
    if ray.is_initialized():
        return None
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
        return None
    logging.getLogger(RAY_AUTH_SETUP_LOGGER).addFilter(DropTokenAuthEnabledWarning())
    if cluster.local_nodes > 1:
        started = time.monotonic()
        local = LocalCluster(cluster.local_nodes, cluster.ray_num_cpus,
                             cluster.ray_object_store_mb)
        try:
            ray.init(address=local.address, namespace=namespace,
                     logging_level=logging.WARNING, log_to_driver=False)
        except BaseException:
            local.shutdown()
            raise
        log.info(
            "local Ray cluster of %d nodes at %s in %.1f s", cluster.local_nodes,
            local.address, time.monotonic() - started)
        return local
    ray.init(
        # "local": always a Ray of our own. Without it ray.init() joins any Ray it finds
        # running on the machine (another user's, a test's), and then refuses num_cpus.
        address="local",
        num_cpus=cluster.ray_num_cpus,
        resources={node_resource(0): 1},
        labels={NODE_LABEL: "0"},
        object_store_memory=cluster.ray_object_store_mb * 1024 * 1024,
        include_dashboard=False,
        namespace=namespace,
        logging_level=logging.WARNING,
        # Actor logs stay in Ray's session logs; forwarding them costs the gateway CPU.
        log_to_driver=False,
    )
    return None


def stop_ray(local: LocalCluster | None) -> None:
    """Disconnect the driver, then stop the local cluster's nodes if it started them."""
    if ray.is_initialized():
        ray.shutdown()
    if local is not None:
        local.shutdown()


def gcs_address() -> str:
    """The address other drivers (extra gateway processes) join this cluster with."""
    return str(ray.get_runtime_context().gcs_address)
