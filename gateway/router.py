"""Routing and micro-batching from the gateway to the shard hosts.

Every command goes to its logical shard's host through a per-host channel. A channel sends
whatever has accumulated as ONE call (at most `items_max` items, at most `in_flight_max`
calls at once), so batches grow by themselves under load while a lone
request still leaves at once. Ambiguous failures (the actor died mid-call, or a shard
answered `shard_unavailable`) are retried with the same command until a deadline: writes
carry idempotency keys that the shard checks inside its commit, so a retry never doubles.

Routing follows the versioned shard map (storage/shard_map_store.py) when the router is
given a map loader: shard → host name, one channel per host, created on demand. A reply
`shard_moved` (the host released the shard, or never had it) or a host that is gone makes
the router re-read the map (one read at a time, at most one per `refresh_min_interval_s`,
and a cheap version check every `version_check_s`) and send the same command, same
idempotency key, to the shard's owner now, until the same deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import Counter, Histogram

from lending.commands import (
    BATCH_ENCODER,
    REPLIES_DECODER,
    Command,
    Envelope,
    Reply,
    error_reply,
)

log = logging.getLogger("lendcore.router")

RAY_CALL_ITEMS = Histogram(
    "lendcore_gateway_ray_call_items", "Commands carried by one call to a shard host",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
# (named when every call was a Ray call; now over the data port unless host_transport = "ray")
RAY_CALL_SECONDS = Histogram("lendcore_gateway_ray_call_seconds",
                             "Call to a shard host, round trip")
RETRIES = Counter("lendcore_gateway_retries_total", "Commands re-sent after an ambiguous failure")

MAP_REFRESHES = Counter("lendcore_gateway_shard_map_refreshes_total",
                        "Shard map reads after a moved shard, a gone host or a new version")

RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 0.5
# A moved shard's command waits for the map to name its new owner: shorter steps, so the
# pause a partner sees is close to the move's own pause.
MOVED_BACKOFF_S = 0.02
MOVED_BACKOFF_MAX_S = 0.1
MAP_REFRESH_MIN_INTERVAL_S = 0.05
MAP_VERSION_CHECK_S = 1.0

# A host's key in the router: its index (static routing) or its actor name (shard map).
HostKey = Any
# Sends one encoded batch to a host and returns the encoded replies; raises on actor failure.
SendFn = Callable[[HostKey, bytes], Awaitable[bytes]]


class _Pending(msgspec.Struct):
    envelope: Envelope
    future: asyncio.Future[Reply]
    deadline: float
    attempts: int = 0


class Overloaded(Exception):
    pass


class HostGone(Exception):
    """The host a channel sends to does not exist (any more): re-read the map, retry."""


class HostChannel:
    def __init__(
        self, host_id: HostKey, send: SendFn, items_max: int, in_flight_max: int,
        retryable: tuple[type[BaseException], ...], fill_s: float = 0.0,
    ) -> None:
        self.host_id = host_id
        # Set by a map-routed ShardRouter: where a retried command goes (the channel of its
        # shard's host now) and whom to tell that the map may be stale.
        self.reroute: Callable[[_Pending], None] | None = None
        self.map_stale: Callable[[], None] | None = None
        self._send = send
        self._items_max = items_max
        self._slots = asyncio.Semaphore(in_flight_max)
        if fill_s < 0:
            raise ValueError("fill_s must not be negative")
        self._fill_s = fill_s
        self._running = 0  # calls sent and not answered yet (a done task may linger in _calls)
        self._call_ended = asyncio.Event()
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._retryable = retryable  # failures after which the call's outcome is unknown
        self._retryable_or_gone: tuple[type[BaseException], ...] = (*retryable, HostGone)
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.items = 0
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"channel-{self.host_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def depth(self) -> int:
        return len(self._queue)

    def idle(self) -> bool:
        return not self._queue and not self._calls

    def put(self, item: _Pending) -> None:
        self._queue.append(item)
        self._wake.set()

    async def _pump(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            if self._running and self._fill_s > 0:
                await self._fill()
            # One yield so that requests arriving in the same tick share this call.
            await asyncio.sleep(0)
            take = min(self._items_max, len(self._queue))
            # A command whose request timed out (its future cancelled) is not sent: the
            # partner was answered 503 and retries it under the same key.
            items = [
                item for item in (self._queue.popleft() for _ in range(take))
                if not item.future.done()
            ]
            if not items:
                self._slots.release()
                continue
            self._running += 1
            task = asyncio.create_task(self._call(items))
            self._calls.add(task)  # keep a reference until done (asyncio holds weak ones)
            task.add_done_callback(self._calls.discard)

    async def _fill(self) -> None:
        """Another call to this host is running: let the queue fill until one ends, or for
        at most `fill_s`. The next call then carries what arrived meanwhile instead of the
        one or two commands of the moment. A call costs the gateway and the host a fixed
        amount whatever it carries, and its commands share their shards' group commit, so
        bigger calls are cheaper per command (docs/performance.md). The bound keeps a slow
        call (a shard reloading) from holding back the host's other shards for long."""
        self._call_ended.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._fill_s):
                await self._call_ended.wait()

    async def _call(self, items: list[_Pending]) -> None:
        try:
            payload = BATCH_ENCODER.encode([item.envelope for item in items])
            started = time.perf_counter()
            try:
                raw = await self._send(self.host_id, payload)
            except self._retryable_or_gone as exc:
                self.failures += 1
                log.warning("host %s call failed (%s); retrying", self.host_id, type(exc).__name__)
                if self.map_stale is not None:
                    self.map_stale()  # the host may be gone for good: where is the shard now?
                for item in items:
                    self._retry(item)
                return
            except Exception:  # anything else is a bug: fail these requests, never hang them
                self.failures += 1
                log.exception("host %s call failed", self.host_id)
                for item in items:
                    if not item.future.done():
                        item.future.set_result(
                            error_reply(503, "unavailable", "shard host call failed")
                        )
                return
            RAY_CALL_SECONDS.observe(time.perf_counter() - started)
            RAY_CALL_ITEMS.observe(len(items))
            self.calls += 1
            self.items += len(items)
            for item, reply in zip(items, REPLIES_DECODER.decode(raw), strict=True):
                if reply.code == "shard_unavailable":
                    self._retry(item)
                elif reply.code == "shard_moved":
                    if self.map_stale is not None:
                        self.map_stale()
                    self._retry(item, moved=True)
                elif not item.future.done():
                    replayed = reply.replayed and item.attempts == 0
                    item.future.set_result(msgspec.structs.replace(reply, replayed=replayed))
        finally:
            self._running -= 1
            self._slots.release()
            self._call_ended.set()

    def _retry(self, item: _Pending, moved: bool = False) -> None:
        if item.future.done():
            return  # its request timed out: nobody waits for it any more
        if time.monotonic() >= item.deadline:
            if not item.future.done():
                item.future.set_result(
                    error_reply(503, "unavailable", "the shard is recovering; retry later")
                )
            return
        item.attempts += 1
        RETRIES.inc()
        if moved:
            delay = min(MOVED_BACKOFF_MAX_S, MOVED_BACKOFF_S * item.attempts)
        else:
            delay = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * item.attempts)
        asyncio.get_running_loop().call_later(delay, self.reroute or self.put, item)


class ShardRouter:
    """Shard → host channel. Static (a fixed table) unless given `load_map`: then the table
    is the shard map's, re-read when a host says a shard moved or a host is gone, and when
    the map's version (`load_version`, checked every `version_check_s`) changes."""

    def __init__(
        self, shard_hosts: list[HostKey], channels: dict[HostKey, HostChannel],
        pending_max: int, retry_deadline_s: float, *,
        new_channel: Callable[[HostKey], HostChannel] | None = None,
        load_map: Callable[[], Awaitable[tuple[int, list[HostKey]]]] | None = None,
        load_version: Callable[[], Awaitable[int]] | None = None,
        map_version: int = 0,
        refresh_min_interval_s: float = MAP_REFRESH_MIN_INTERVAL_S,
        version_check_s: float = MAP_VERSION_CHECK_S,
        close_links: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.shard_hosts = list(shard_hosts)  # logical shard → host key
        self.channels = channels
        self.pending_max = pending_max
        self.retry_deadline_s = retry_deadline_s
        self.map_version = map_version
        self._new_channel = new_channel
        self._load_map = load_map
        self._load_version = load_version
        self._close_links = close_links
        self._refresh_min_interval_s = refresh_min_interval_s
        self._version_check_s = version_check_s
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_again = False
        self._refresh_now = asyncio.Event()  # skip the min interval (refresh())
        self._last_refresh = 0.0
        self._watch_task: asyncio.Task[None] | None = None
        self._started = False
        self._closing: set[asyncio.Task[None]] = set()
        self.map_refreshes = 0
        for channel in channels.values():
            self._adopt_channel(channel)

    @property
    def logical_shards(self) -> int:
        return len(self.shard_hosts)

    def pending(self) -> int:
        return sum(channel.depth() for channel in self.channels.values())

    def ensure_capacity(self, commands: int) -> None:
        """Raise Overloaded unless `commands` more fit in the gateway's queues."""
        if self.pending() + commands > self.pending_max:
            raise Overloaded(f"{self.pending()} commands already waiting")

    def call(
        self, shard_id: int, command: Command, checked: bool = False
    ) -> asyncio.Future[Reply]:
        """Queue a command for its shard; raises Overloaded when the gateway is full
        (unless the caller reserved room with ensure_capacity: `checked`)."""
        if not checked:
            self.ensure_capacity(1)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        deadline = time.monotonic() + self.retry_deadline_s
        self._channel_of(shard_id).put(_Pending(Envelope(shard_id, command), future, deadline))
        return future

    def host_of(self, shard_id: int) -> HostKey:
        return self.shard_hosts[shard_id]

    def _channel_of(self, shard_id: int) -> HostChannel:
        host = self.shard_hosts[shard_id]
        channel = self.channels.get(host)
        if channel is None:
            if self._new_channel is None:
                raise KeyError(f"no channel for host {host!r}")
            channel = self.channels[host] = self._adopt_channel(self._new_channel(host))
            if self._started:
                channel.start()
        return channel

    def _adopt_channel(self, channel: HostChannel) -> HostChannel:
        if self._load_map is not None:
            channel.reroute = self._reroute
            channel.map_stale = self.request_refresh
        return channel

    def _reroute(self, item: _Pending) -> None:
        """A retried command goes to its shard's host by the map as it is now."""
        if item.future.done():
            return
        try:
            channel = self._channel_of(item.envelope.shard_id)
        except Exception:  # no channel can be made: the caller must not hang
            log.exception("no route for shard %s", item.envelope.shard_id)
            item.future.set_result(error_reply(503, "unavailable", "no route to the shard"))
            return
        channel.put(item)

    # ---- the shard map -------------------------------------------------------------------

    def request_refresh(self) -> None:
        """Re-read the map soon: one read at a time, at most one per min interval."""
        if self._load_map is None:
            return
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_again = True
            return
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="shard-map-refresh")

    async def refresh(self) -> None:
        """Re-read the map now (after the coordinator changed it in this process), without
        waiting for the min interval."""
        self._refresh_now.set()
        self.request_refresh()  # a read already running is followed by one more
        while self._refresh_task is not None and not self._refresh_task.done():
            await asyncio.shield(self._refresh_task)

    async def _refresh_loop(self) -> None:
        assert self._load_map is not None
        while True:
            self._refresh_again = False
            wait_s = self._last_refresh + self._refresh_min_interval_s - time.monotonic()
            if wait_s > 0 and not self._refresh_now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._refresh_now.wait(), wait_s)
            self._refresh_now.clear()
            self._last_refresh = time.monotonic()
            try:
                version, hosts = await self._load_map()
            except Exception as exc:  # noqa: BLE001 - Postgres away: keep the map we have
                log.warning("shard map not read (%s: %s)", type(exc).__name__, exc)
            else:
                self.apply_map(version, hosts)
            if not self._refresh_again:
                return

    def apply_map(self, version: int, hosts: list[HostKey]) -> None:
        """Route by this map from now on (an older version than ours is ignored)."""
        if version < self.map_version:
            return
        if len(hosts) != len(self.shard_hosts):
            log.error("shard map of %d shards ignored (the router has %d)",
                      len(hosts), len(self.shard_hosts))
            return
        MAP_REFRESHES.inc()
        self.map_refreshes += 1
        changed = version != self.map_version
        self.map_version = version
        self.shard_hosts = list(hosts)
        if changed:
            log.info("shard map version %s", version)
        # Channels of hosts the map no longer names, with nothing queued: closed.
        wanted = set(hosts)
        for host in [h for h, c in self.channels.items() if h not in wanted and c.idle()]:
            channel = self.channels.pop(host)
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(task)  # a reference until done (asyncio holds weak ones)
            task.add_done_callback(self._closing.discard)

    async def _watch(self) -> None:
        assert self._load_version is not None
        while True:
            await asyncio.sleep(self._version_check_s)
            try:
                version = await self._load_version()
            except Exception as exc:  # noqa: BLE001 - checked again next time
                log.debug("shard map version not read (%s)", exc)
                continue
            if version != self.map_version:
                self.request_refresh()

    # ---- lifecycle ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            str(host_id): {
                "queue_depth": channel.depth(),
                "calls": channel.calls,
                "items": channel.items,
                "failures": channel.failures,
            }
            for host_id, channel in self.channels.items()
        }

    def start(self) -> None:
        self._started = True
        for channel in self.channels.values():
            channel.start()
        if self._load_version is not None:
            self._watch_task = asyncio.create_task(self._watch(), name="shard-map-watch")

    async def close(self) -> None:
        for task in (self._watch_task, self._refresh_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))
        if self._close_links is not None:
            await self._close_links()  # the connections to the hosts' data ports
