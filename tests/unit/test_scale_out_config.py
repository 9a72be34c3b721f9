"""Scale-out settings (issue 15): `[cluster] local_nodes`, `[gateway] processes`, their
variables and limits; how cluster/bootstrap.py numbers nodes and shares CPUs; the
SO_REUSEPORT socket two processes can both bind."""

from __future__ import annotations

import socket

import pytest

from cluster.bootstrap import cpu_shares, node_index, node_resource
from cluster.config import ConfigError, load_settings
from cluster.gateway_process import reuseport_socket


def test_defaults_are_one_node_and_one_gateway_process() -> None:
    settings = load_settings(environ={})
    assert settings.cluster.local_nodes == 1
    assert settings.gateway.processes == 1


def test_variables_set_nodes_and_processes() -> None:
    settings = load_settings(environ={"LENDCORE_LOCAL_NODES": "3",
                                      "LENDCORE_GATEWAY_PROCESSES": "2"})
    assert settings.cluster.local_nodes == 3
    assert settings.gateway.processes == 2


@pytest.mark.parametrize(("environ", "message"), [
    ({"LENDCORE_LOCAL_NODES": "0"}, "cluster.local_nodes must be in 1..16"),
    ({"LENDCORE_LOCAL_NODES": "17"}, "cluster.local_nodes must be in 1..16"),
    ({"LENDCORE_GATEWAY_PROCESSES": "0"}, "gateway.processes must be in 1..64"),
    ({"LENDCORE_LOCAL_NODES": "2", "LENDCORE_RAY_ADDRESS": "10.0.0.1:6379"},
     "cannot be combined with cluster.ray_address"),
])
def test_bad_values_are_start_up_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_joining_a_cluster_with_one_local_node_is_allowed() -> None:
    settings = load_settings(environ={"LENDCORE_RAY_ADDRESS": "10.0.0.1:6379"})
    assert settings.cluster.ray_address == "10.0.0.1:6379"


def test_cpus_are_shared_as_whole_cpus_at_least_one_a_node() -> None:
    assert cpu_shares(2, 1) == [2]
    assert cpu_shares(2, 2) == [1, 1]
    assert cpu_shares(2, 3) == [1, 1, 1]
    assert cpu_shares(8, 3) == [3, 3, 2]


def test_a_node_is_known_by_its_resource_or_its_label() -> None:
    assert node_resource(2) == "lendcore_node_2"
    assert node_index({"Resources": {"CPU": 1.0, "lendcore_node_2": 1.0}}) == 2
    assert node_index({"Resources": {"CPU": 1.0}, "Labels": {"lendcore.io/node": "5"}}) == 5
    assert node_index({"Resources": {"CPU": 1.0}, "Labels": {}}) is None
    assert node_index({"Resources": {"lendcore_node_x": 1.0}}) is None


def test_two_sockets_bind_one_port_with_reuseport_and_a_plain_one_cannot() -> None:
    first = reuseport_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuseport_socket("127.0.0.1", port)
    try:
        assert second.getsockname()[1] == port
        first.listen(8)
        second.listen(8)
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    finally:
        first.close()
        second.close()
