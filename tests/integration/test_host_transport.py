"""Partner commands reach the shard hosts over their data ports by default, and as Ray calls
with `[gateway] host_transport = "ray"` (ADR 009): the same answers either way."""

from __future__ import annotations

import uuid

import pytest
from conftest import fresh_system
from factories import new_loan, repay


@pytest.mark.parametrize("transport", ["socket", "ray"])
def test_a_loan_is_booked_repaid_and_replayed_over_either_transport(
    ray_cluster: None, transport: str
) -> None:
    with fresh_system(LENDCORE_HOST_TRANSPORT=transport) as running:
        assert running.system.settings.gateway.host_transport == transport
        client = running.client()
        loan = new_loan(client)
        key = uuid.uuid4().hex
        first = repay(client, loan["loan_id"], 10_000, key=key)
        assert first.status_code == 201, first.text
        again = repay(client, loan["loan_id"], 10_000, key=key,
                      external_ref=first.json()["external_ref"])
        assert again.status_code == 201 and again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        # Over the data ports, the host the calls went to opened its own; by Ray, none did.
        ports = [host.get("data_port") for host in
                 running.run(running.system.cluster_view())["hosts"]]
        if transport == "socket":
            assert any(port is not None for port in ports), ports
        else:
            assert ports == [None] * len(ports) and ports, ports
