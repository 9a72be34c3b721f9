"""The partner gateway's router, built from the shard map in Postgres.

`build_router_from_map(pool, settings, namespace)` is the one way a gateway process (the
`lendcore up` process, or a gateway-only process that shares nothing with it but Postgres,
Redis and the Ray cluster) gets a `gateway.router.ShardRouter`: it reads the versioned shard
map (storage/shard_map_store.py), makes one channel per shard-host actor named there, on
demand, finding the actor by its Ray name in `namespace`, and keeps following the map (see
gateway/router.py). Call `router.start()` inside the event loop that will use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import ray

from cluster.config import Settings
from gateway.router import HostChannel, HostGone, ShardRouter
from storage import shard_map_store

RAY_RETRYABLE: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


class HostHandles:
    """Shard-host actor handles by name: those this process created, else looked up in Ray
    (once per name; a lookup that finds nothing is tried again on the next call)."""

    def __init__(self, namespace: str, known: dict[str, Any] | None = None) -> None:
        self.namespace = namespace
        self.known: dict[str, Any] = dict(known or {})

    async def get(self, name: str) -> Any:
        handle = self.known.get(name)
        if handle is None:
            try:
                # A blocking GCS call: off the event loop.
                handle = await asyncio.to_thread(ray.get_actor, name, self.namespace)
            except ValueError as exc:  # no such actor (any more)
                raise HostGone(f"no shard host named {name}") from exc
            self.known[name] = handle
        return handle

    def forget(self, name: str) -> None:
        self.known.pop(name, None)


async def build_router_from_map(
    pool: asyncpg.Pool, settings: Settings, namespace: str,
    handles: HostHandles | None = None,
) -> ShardRouter:
    """A ShardRouter routing by the shard map stored in Postgres (see module doc)."""
    g = settings.gateway
    handles = handles or HostHandles(namespace)
    shard_map = await shard_map_store.load(pool)
    if not shard_map.places:
        raise RuntimeError("the shard map is empty: start `lendcore up` first")

    async def send(host: str, payload: bytes) -> bytes:
        handle = await handles.get(host)
        try:
            result: bytes = await handle.submit.remote(payload)
        except ray.exceptions.ActorDiedError:
            handles.forget(host)  # killed for good: a new actor may take the name
            raise
        return result

    def new_channel(host: str) -> HostChannel:
        return HostChannel(host, send, g.ray_call_items_max, g.calls_in_flight_max,
                           RAY_RETRYABLE, fill_s=g.call_fill_ms / 1000)

    async def load_map() -> tuple[int, list[str]]:
        loaded = await shard_map_store.load(pool)
        return loaded.version, loaded.hosts()

    async def load_version() -> int:
        return await shard_map_store.version(pool)

    return ShardRouter(
        shard_map.hosts(), {}, g.pending_max, g.retry_deadline_s,
        new_channel=new_channel, load_map=load_map, load_version=load_version,
        map_version=shard_map.version,
    )
