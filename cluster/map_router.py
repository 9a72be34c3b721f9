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
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import ray

from cluster.config import Settings
from gateway.host_link import HostLink, HostLinkLost
from gateway.router import HostChannel, HostGone, ShardRouter
from storage import shard_map_store

RAY_RETRYABLE: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)
# A call whose outcome is unknown, to be retried with the same command: the host's actor died
# or is restarting, or the connection to its data port was lost (gateway/host_link.py).
HOST_RETRYABLE = (*RAY_RETRYABLE, HostLinkLost)


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

    async def on_host(host: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """`call` on the host's actor handle; a host killed for good is forgotten, since a
        new actor may take its name."""
        handle = await handles.get(host)
        try:
            return await call(handle)
        except ray.exceptions.ActorDiedError:
            handles.forget(host)
            raise

    async def send_by_ray(host: str, payload: bytes) -> bytes:
        result: bytes = await on_host(host, lambda handle: handle.submit.remote(payload))
        return result

    links: dict[str, HostLink] = {}

    async def send_by_socket(host: str, payload: bytes) -> bytes:
        link = links.get(host)
        if link is None:
            link = links[host] = HostLink(
                host, lambda: on_host(host, lambda handle: handle.data_endpoint.remote()))
        return await link.call(payload)

    send = send_by_socket if g.host_transport == "socket" else send_by_ray

    def new_channel(host: str) -> HostChannel:
        return HostChannel(host, send, g.ray_call_items_max, g.calls_in_flight_max,
                           HOST_RETRYABLE, fill_s=g.call_fill_ms / 1000)

    async def close_links() -> None:
        await asyncio.gather(*(link.close() for link in links.values()))

    async def load_map() -> tuple[int, list[str]]:
        loaded = await shard_map_store.load(pool)
        return loaded.version, loaded.hosts()

    async def load_version() -> int:
        return await shard_map_store.version(pool)

    return ShardRouter(
        shard_map.hosts(), {}, g.pending_max, g.retry_deadline_s,
        new_channel=new_channel, load_map=load_map, load_version=load_version,
        map_version=shard_map.version, close_links=close_links,
    )
