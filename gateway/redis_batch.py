"""Automatic pipelining of Redis script calls across concurrent requests.

Every request makes one to three Redis calls; sent one by one, redis-py's per-call overhead
and one round trip each cost more CPU than the rest of the gateway. Calls made during the
same event-loop tick are sent as ONE pipeline (no MULTI: the scripts are atomic on their
own), so the cost is paid once per tick instead of once per call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

PIPELINE_CALLS_MAX = 2000  # calls per pipeline; the rest go in the next one


class ScriptBatcher:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pending: list[tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]] = []
        self._flushing = False

    async def run(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        task.add_done_callback(lambda _: None)

    async def _flush(self) -> None:
        try:
            while self._pending:
                calls = self._pending[:PIPELINE_CALLS_MAX]
                del self._pending[:PIPELINE_CALLS_MAX]
                await self._send(calls)
        finally:
            self._flushing = False

    async def _send(
        self, calls: list[tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in calls:
                    await script(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except (aioredis.RedisError, OSError) as exc:
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), result in zip(calls, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
