"""Issue 15's scenario on a real local Ray cluster of three nodes (ray.cluster_utils.Cluster
through cluster.bootstrap.LocalCluster), under steady signed repayments: move shards one by
one to other nodes, drain a node, kill a node's raylet (its host dies with it), add a node.

Run by tests/reliability/test_multinode.py in a process of its own (a process can hold one
Ray driver, and the test session's is a one-node Ray). Exits non-zero on any failed check;
its last stdout line is `MULTINODE {json of figures}`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import ray

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent / "integration"
for path in (INTEGRATION, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from conftest_redis import delete_keys_with_prefix  # noqa: E402
from factories import new_loan, ops_auth, reconciliation, trial_balance  # noqa: E402
from faults import RepaymentStream  # noqa: E402

from cluster.bootstrap import LocalCluster, node_resource  # noqa: E402

REHOME_WITHIN_S = 10.0
LOANS = 24
CONFIG = """
[cluster]
hosts_per_node = 1
"""


def _integration() -> Any:
    spec = importlib.util.spec_from_file_location("integration_system", INTEGRATION / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["integration_system"] = module
    spec.loader.exec_module(module)
    return module


def wait_for(condition: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank


def main() -> int:
    it = _integration()
    local = LocalCluster(3, 2, 96)
    figures: dict[str, Any] = {}
    name, dsn = it.create_database()
    prefix = f"lendcore-test-{uuid.uuid4().hex}:"
    config = Path(f"/tmp/lendcore-multinode-{uuid.uuid4().hex[:8]}.toml")  # nosec B108
    config.write_text(CONFIG)
    running = None
    try:
        ray.init(address=local.address, namespace=f"lendcore-mn-{uuid.uuid4().hex[:8]}",
                 log_to_driver=False)
        settings = it.system_settings(dsn, prefix, config)
        running = it.RunningSystem(settings, dsn).start()
        system = running.system
        client = running.client()
        loan_ids = [new_loan(client)["loan_id"] for _ in range(LOANS)]
        client.close()
        ops = httpx.Client(base_url=system.ops_url, timeout=180, headers=ops_auth())

        def view() -> dict[str, Any]:
            response = ops.get("/ops/cluster")
            assert response.status_code == 200, response.text
            return dict(response.json())

        start = view()
        hosts = {h["name"]: h["node_id"] for h in start["hosts"]}
        nodes = sorted({n["node_id"] for n in start["nodes"] if n["alive"]})
        assert len(nodes) == 3 and len(set(hosts.values())) == 3, (nodes, hosts)
        head = next(n for n in local.cluster.list_all_nodes() if n.head).node_id
        workers = {n.node_id: n for n in local.cluster.list_all_nodes() if not n.head}
        stream = RepaymentStream(system.api_url, loan_ids, workers=4, give_up_after_s=60)
        pauses: list[float] = []
        with stream:
            wait_for(lambda: stream.acknowledged_since(0) >= 20, 60, "the stream to start")
            # 1. Shards moved one by one to another node (by node id).
            for shard in range(0, 16, 2):
                current = view()["shards"][shard]["node"]
                target = nodes[(nodes.index(current) + 1) % 3]
                response = ops.post(f"/ops/cluster/shards/{shard}/move", json={"to": target})
                assert response.status_code == 200, response.text
                move = response.json()
                assert move["to_node"] == target, move
                pauses.append(move["paused_s"])
            figures["moves"] = len(pauses)
            figures["move_pause_p50_s"] = round(statistics.median(pauses), 3)
            figures["move_pause_p99_s"] = round(p99(pauses), 3)
            # 2. Drain a worker node.
            drained, victim = list(workers)[:2]
            response = ops.post(f"/ops/cluster/nodes/{drained}/drain")
            assert response.status_code == 200, response.text
            drain = response.json()
            after = view()
            assert all(s["node"] != drained for s in after["shards"]), after["shards"]
            assert all(s["state"] == "serving" for s in after["shards"])
            figures["drain_moved"] = len(drain["moved"])
            figures["drain_s"] = drain["seconds"]
            pauses += [m["paused_s"] for m in drain["moved"]]
            # 3. Kill the other worker's raylet (every process of that node, SIGKILL).
            on_victim = [s["shard_id"] for s in after["shards"] if s["node"] == victim]
            assert on_victim, "the node to kill serves shards"
            local.cluster.remove_node(workers[victim], allow_graceful=False)
            killed = time.monotonic()

            def rehomed() -> bool:
                shards = view()["shards"]
                return all(s["node"] != victim and s["state"] == "serving" for s in shards)

            figures["rehome_s"] = round(wait_for(rehomed, 30, "re-homing"), 2)
            figures["rehomed_shards"] = len(on_victim)
            assert figures["rehome_s"] <= REHOME_WITHIN_S, figures
            assert {s["node"] for s in view()["shards"]} == {head}
            # 4. Add a node: it gets a host and shards are evened out.
            local.cluster.add_node(num_cpus=1, resources={node_resource(3): 1},
                                   object_store_memory=96 * 1024 * 1024)
            added = time.monotonic()

            def balanced() -> bool:
                shards = view()["shards"]
                by_node: dict[str, int] = {}
                for s in shards:
                    by_node[s["node"]] = by_node.get(s["node"], 0) + 1
                return (len(by_node) == 2 and max(by_node.values()) - min(by_node.values()) <= 1
                        and all(s["state"] == "serving" for s in shards))

            figures["join_balanced_s"] = round(wait_for(balanced, 60, "rebalance on join"), 2)
            moment = time.monotonic()
            wait_for(lambda: stream.acknowledged_since(moment) >= 10, 20, "repayments after")
            figures["from_kill_s"] = round(added - killed, 2)
        report = stream.report()
        lost, doubled = _lost_and_doubled(dsn, stream)
        figures.update(sent=report.sent, acknowledged=report.acknowledged, lost=lost,
                       doubled=doubled, refused=report.refused, gave_up=report.gave_up,
                       longest_answer_s=round(report.longest_answer_s, 2),
                       statuses=report.statuses)
        assert report.gave_up == 0 and report.refused == {}, figures
        assert lost == 0 and doubled == 0, figures
        trial_balance(ops)
        reconciled = reconciliation(ops)
        assert reconciled["reconciled"] is True, reconciled["differences"][:5]
        final = view()
        assert all(s["state"] == "serving" for s in final["shards"])
        figures["map_version"] = final["map_version"]
        figures["all_pauses_p99_s"] = round(p99(pauses), 3)
        ops.close()
        print("MULTINODE " + json.dumps(figures), flush=True)
        return 0
    finally:
        if running is not None:
            running.stop()
        ray.shutdown()
        local.shutdown()
        it.drop_database(name)
        delete_keys_with_prefix(prefix)
        config.unlink(missing_ok=True)


def _lost_and_doubled(dsn: str, stream: RepaymentStream) -> tuple[int, int]:
    from test_handoff import lost_and_doubled

    return lost_and_doubled(dsn, stream)


if __name__ == "__main__":
    sys.exit(main())
