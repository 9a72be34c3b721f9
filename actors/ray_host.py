"""The thin Ray adapter of a shard host.

max_restarts=-1: Ray brings a dead host back; it rebuilds from Postgres on its first call.
max_task_retries=0: Ray must never re-run a call on its own (a method could run twice); the
gateway retries with the same idempotency keys instead, and dedupe happens in the commit.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from actors.data_port import DataPort
from actors.heap import collect_rarely
from actors.host import HostConfig, ShardHostCore


@ray.remote(max_restarts=-1, max_task_retries=0)
class ShardHostActor:
    def __init__(self, config_json: bytes) -> None:
        import msgspec

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        collect_rarely()
        # Trivial on purpose: state is loaded on first use, so a restart is cheap and lazy.
        self.core = ShardHostCore(msgspec.json.decode(config_json, type=HostConfig))
        self.node_id = ray.get_runtime_context().get_node_id()  # where Ray placed this host
        self.data_port = DataPort(self.core.submit)

    async def adopt(self, shard_id: int) -> dict[str, Any]:
        """Take a shard at run time (lease epoch + 1, load, serve); idempotent."""
        return {**await self.core.adopt(shard_id), "node_id": self.node_id}

    async def release(self, shard_id: int) -> dict[str, Any]:
        """Give a shard up (finish the batch in flight, bounce the queue); idempotent."""
        return await self.core.release(shard_id)

    async def submit(self, payload: bytes) -> bytes:
        """A call through Ray (`[gateway] host_transport = "ray"`)."""
        return await self.core.submit(payload)

    async def data_endpoint(self) -> tuple[str, int, bytes]:
        """Where the data port listens (started on first use, on this node's address) and
        its token: how the gateway calls `submit` without Ray (actors/data_port.py)."""
        host, port = await self.data_port.start(ray.util.get_node_ip_address())
        return host, port, self.data_port.token

    async def sync_business_date(self) -> str:
        return await self.core.sync_business_date()

    async def sync_webhooks(self) -> list[str]:
        return await self.core.sync_webhooks()

    async def ready(self) -> dict[str, Any]:
        """Start the host if it is not (a restarted actor starts lazily), then its stats;
        raises while it cannot start (the gateway's readiness check says why)."""
        await self.core.start_or_reset()
        return {**self.core.stats(), "node_id": self.node_id, "data_port": self._data_port()}

    async def stats(self) -> dict[str, Any]:
        return {**self.core.stats(), "node_id": self.node_id, "data_port": self._data_port()}

    def _data_port(self) -> str | None:
        """host:port of the data port, or None while no gateway has asked for it."""
        address = self.data_port.address
        return None if address is None else f"{address[0]}:{address[1]}"

    async def stop(self) -> None:
        await self.data_port.close()
        await self.core.stop()

    def pid(self) -> int:
        return os.getpid()
