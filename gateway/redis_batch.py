"""Automatic pipelining of Redis script calls across concurrent requests.

Every request makes one to three Redis calls; sent one by one, redis-py's per-call overhead
and one round trip each cost more CPU than the rest of the gateway. Calls made during the
same event-loop tick are sent as ONE pipeline (no MULTI: the scripts are atomic on their
own), so the cost is paid once per tick instead of once per call.

A pipeline has one deadline as a whole (`timeout_s`), not one per reply: give the batcher
a client without a socket timeout, since redis-py's per-reply timeout (a Timeout context
for each reply of the pipeline) cost more than parsing the replies.

The calls go as plain EVALSHA. A redis-py Script run through a pipeline makes the pipeline
ask `SCRIPT EXISTS` first, one more round trip on every flush; here a script is loaded only
when Redis answers NOSCRIPT (a restarted or flushed Redis), and those calls are sent again.

No redis-py Pipeline either: it packed every command in Python (its encoder, argument by
argument) and kept a command stack; that was most of the batcher's cost, about a fifth of
the gateway's CPU per repayment. The calls are packed by hiredis (C, the same bytes) into
one write on a connection of the client's pool, and the replies read back in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("lendcore.redis_batch")

PIPELINE_CALLS_MAX = 2000  # calls per pipeline; the rest go in the next one
PIPELINE_TIMEOUT_S = 5.0  # redis-py's own default socket timeout, for a whole pipeline

_Call = tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]


class ScriptBatcher:
    def __init__(self, client: aioredis.Redis, timeout_s: float = PIPELINE_TIMEOUT_S) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._pending: list[_Call] = []
        self._flushing = False
        # The loop of the first call, kept: on Python 3.11 every get_running_loop() is a
        # getpid() system call, and this runs two to three times per request.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        loop = self._loop or self._bind_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._start_flush)
        return await future

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

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

    async def _send(self, calls: list[_Call]) -> None:
        try:
            results = await self._execute(calls)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                # Redis lost its script cache (restart, SCRIPT FLUSH): nothing of these ran.
                for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                    script.sha = await self._client.script_load(script.script)
                retried = await self._execute([calls[i] for i in missing])
                for i, result in zip(missing, retried, strict=True):
                    results[i] = result
        except aioredis.RedisError as exc:
            _fail(calls, exc)
            return
        except OSError as exc:  # TimeoutError included: the pipeline's own deadline
            # Callers handle RedisError (503 unavailable); to them this is Redis failing too.
            error = RedisTimeoutError if isinstance(exc, TimeoutError) else RedisConnectionError
            _fail(calls, error(f"Redis pipeline failed: {type(exc).__name__}: {exc}"))
            return
        except Exception as exc:  # a bug: its callers get the error, never a hang
            log.exception("Redis pipeline of %d calls failed", len(calls))
            _fail(calls, exc)
            return
        for (*_, future), result in zip(calls, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        """Send the calls in one write, read their replies in order; an error reply is that
        call's result (an exception object), as with `raise_on_error=False`."""
        packed = b"".join([
            hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
            for script, keys, args, _ in calls
        ])
        pool = self._client.connection_pool
        async with asyncio.timeout(self._timeout_s):  # getting a connection may connect
            connection = await pool.get_connection()
            try:
                await connection.send_packed_command(packed, check_health=False)
                results: list[Any] = []
                for _ in calls:
                    try:
                        results.append(await connection.read_response())
                    except ResponseError as refused:  # this call's own error reply
                        results.append(refused)
            except BaseException:
                # Replies may still be on their way (a timeout, a cancel): the connection's
                # state is unknown, so it is closed, never handed to the next pipeline.
                await connection.disconnect(nowait=True)
                raise
            finally:
                await pool.release(connection)
        return results


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for *_, future in calls:
        if not future.done():
            future.set_exception(exc)
