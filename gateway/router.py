"""Routing and micro-batching from the gateway to the shard hosts.

Every command goes to its logical shard's host through a per-host channel. A channel sends
whatever has accumulated as ONE Ray call (at most `items_max` items, at most
`in_flight_max` calls at once), so batches grow by themselves under load while a lone
request still leaves at once. Ambiguous failures (the actor died mid-call, or a shard
answered `shard_unavailable`) are retried with the same command until a deadline: writes
carry idempotency keys that the shard checks inside its commit, so a retry never doubles.
"""

from __future__ import annotations

import asyncio
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
    "lendcore_gateway_ray_call_items", "Commands carried by one Ray call",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
RAY_CALL_SECONDS = Histogram("lendcore_gateway_ray_call_seconds", "Ray call round trip")
RETRIES = Counter("lendcore_gateway_retries_total", "Commands re-sent after an ambiguous failure")

RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 0.5

# Sends one encoded batch to a host and returns the encoded replies; raises on actor failure.
SendFn = Callable[[int, bytes], Awaitable[bytes]]


class _Pending(msgspec.Struct):
    envelope: Envelope
    future: asyncio.Future[Reply]
    deadline: float
    attempts: int = 0


class Overloaded(Exception):
    pass


class HostChannel:
    def __init__(
        self, host_id: int, send: SendFn, items_max: int, in_flight_max: int,
        retryable: tuple[type[BaseException], ...],
    ) -> None:
        self.host_id = host_id
        self._send = send
        self._items_max = items_max
        self._slots = asyncio.Semaphore(in_flight_max)
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._retryable = retryable  # failures after which the call's outcome is unknown
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

    def put(self, item: _Pending) -> None:
        self._queue.append(item)
        self._wake.set()

    async def _pump(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
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
            task = asyncio.create_task(self._call(items))
            self._calls.add(task)  # keep a reference until done (asyncio holds weak ones)
            task.add_done_callback(self._calls.discard)

    async def _call(self, items: list[_Pending]) -> None:
        try:
            payload = BATCH_ENCODER.encode([item.envelope for item in items])
            started = time.perf_counter()
            try:
                raw = await self._send(self.host_id, payload)
            except self._retryable as exc:
                self.failures += 1
                log.warning("host %s call failed (%s); retrying", self.host_id, type(exc).__name__)
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
                elif not item.future.done():
                    replayed = reply.replayed and item.attempts == 0
                    item.future.set_result(msgspec.structs.replace(reply, replayed=replayed))
        finally:
            self._slots.release()

    def _retry(self, item: _Pending) -> None:
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
        delay = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * item.attempts)
        asyncio.get_running_loop().call_later(delay, self.put, item)


class ShardRouter:
    def __init__(
        self, shard_hosts: list[int], channels: dict[int, HostChannel], pending_max: int,
        retry_deadline_s: float,
    ) -> None:
        self.shard_hosts = shard_hosts  # logical shard → host id
        self.channels = channels
        self.pending_max = pending_max
        self.retry_deadline_s = retry_deadline_s

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
        channel = self.channels[self.shard_hosts[shard_id]]
        deadline = time.monotonic() + self.retry_deadline_s
        channel.put(_Pending(Envelope(shard_id, command), future, deadline))
        return future

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
        for channel in self.channels.values():
            channel.start()

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))
