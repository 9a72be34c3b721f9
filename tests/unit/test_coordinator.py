"""The coordinator's choices that need no Ray or Postgres (cluster/coordinator.py): which
host a shard goes to, how a move's target and a drained node are named, and the raylet
probe."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from cluster.coordinator import Coordinator, CoordinatorError, HostInfo, raylet_answers
from storage.shard_map_store import ShardMap, ShardPlace

NODE_A = "a" * 56
NODE_B = "b" * 56
NODE_B2 = "b" * 8 + "c" * 48  # shares 8 characters with NODE_B


def coordinator(hosts: list[HostInfo]) -> Coordinator:
    nothing: Any = None
    return Coordinator(pool=nothing, redis=nothing, prefix="t:", router=nothing, hosts=hosts,
                       create_host=nothing, hosts_per_node=1)


def shard_map(*hosts: str) -> ShardMap:
    return ShardMap(1, [ShardPlace(i, h, "", "serving") for i, h in enumerate(hosts)])


HOSTS = [HostInfo("h0", 0, NODE_A, None), HostInfo("h1", 1, NODE_B, None),
         HostInfo("h2", 2, NODE_B, None), HostInfo("h3", 3, NODE_B2, None)]


def test_least_loaded_host_wins_and_ties_go_to_the_lowest_index() -> None:
    placed = shard_map("h0", "h0", "h1", "h2", "h2", "h3")
    assert Coordinator._least_loaded(placed, HOSTS).name == "h1"
    assert Coordinator._least_loaded(shard_map("h0", "h1"), HOSTS).name == "h2"


def test_a_target_is_a_host_name_or_a_node_id_or_a_long_enough_unique_prefix() -> None:
    c = coordinator(HOSTS)
    placed = shard_map("h0", "h1", "h1", "h2")
    assert c._resolve_target("h3", placed).name == "h3"
    assert c._resolve_target(NODE_B, placed).name == "h2"  # the less loaded of node B's
    assert c._resolve_target("aaaaaa", placed).name == "h0"
    for ambiguous_or_short in ("bbbbbbbb", "aaaaa", "zzzzzzzz", ""):
        with pytest.raises(CoordinatorError) as refused:
            c._resolve_target(ambiguous_or_short, placed)
        assert refused.value.status == 404 and refused.value.field == "to"


def test_a_drained_node_takes_no_shards() -> None:
    c = coordinator(HOSTS)
    c.drained.add(NODE_B)
    for target in ("h1", NODE_B):
        with pytest.raises(CoordinatorError) as refused:
            c._resolve_target(target, shard_map("h0"))
        assert (refused.value.status, refused.value.code) == (409, "node_drained")


def test_an_unknown_node_is_404_and_says_which_are_known() -> None:
    c = coordinator(HOSTS)
    with pytest.raises(CoordinatorError) as refused:
        c._resolve_node("nope-nope")
    assert refused.value.status == 404 and NODE_A in refused.value.message
    assert c._resolve_node(NODE_B2) == NODE_B2


def test_the_raylet_probe_tells_a_listening_port_from_a_closed_one() -> None:
    async def probe() -> tuple[bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        listening = await raylet_answers("127.0.0.1", port)
        server.close()
        await server.wait_closed()
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        closed = await raylet_answers("127.0.0.1", closed_port, timeout_s=0.5)
        return listening, closed

    assert asyncio.run(probe()) == (True, False)
