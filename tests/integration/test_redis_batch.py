"""The Redis script batcher: one write per tick, plain EVALSHA (never SCRIPT EXISTS),
NOSCRIPT recovered, a failing call fails alone, a stalled Redis fails as a RedisError."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import hiredis
import pytest
import pytest_asyncio
import redis.asyncio
from conftest_redis import REDIS_URL, redis_prefix  # noqa: F401
from redis.exceptions import ResponseError

from gateway.redis_batch import ScriptBatcher

T = TypeVar("T")


@pytest_asyncio.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=False)
    yield connection
    await connection.aclose()


ANSWER_WITHIN_S = 5.0


async def within(calls: Awaitable[T]) -> T:
    """A batcher that lost a call would leave it waiting for ever: fail instead."""
    return await asyncio.wait_for(calls, ANSWER_WITHIN_S)


class CommandCounter:
    """Counts the commands the client sends on its pooled connections, by name, read back
    from the bytes written (a RESP request is an array, which hiredis parses as a reply)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.names: list[str] = []
        pool = client.connection_pool
        get_connection = pool.get_connection

        async def counting_connection(*args: object, **kwargs: object) -> object:
            connection = await get_connection(*args, **kwargs)  # type: ignore[arg-type]
            if not getattr(connection, "_counted", False):
                send = connection.send_packed_command

                async def counted(command: bytes | list[bytes], *a: object, **k: object) -> None:
                    self._record(command)
                    await send(command, *a, **k)  # type: ignore[arg-type]

                connection.send_packed_command = counted  # type: ignore[method-assign]
                connection._counted = True  # type: ignore[attr-defined]
            return connection

        pool.get_connection = counting_connection  # type: ignore[method-assign]

    def _record(self, command: bytes | list[bytes]) -> None:
        reader = hiredis.Reader()
        reader.feed(command if isinstance(command, bytes) else b"".join(command))
        while (request := reader.gets()) is not False:
            name = request[0].decode().upper()
            self.names.append(f"{name} {request[1].decode().upper()}" if name == "SCRIPT"
                              else name)


@pytest.mark.asyncio
async def test_a_script_redis_never_saw_is_loaded_once_and_every_call_answered(
    client: redis.asyncio.Redis, redis_prefix: str,  # noqa: F811
) -> None:
    # A script body of its own (a fresh comment): Redis has not cached its sha, so the
    # first pipeline meets NOSCRIPT, as after a Redis restart or SCRIPT FLUSH.
    script = client.register_script(
        f"-- {uuid.uuid4().hex}\nreturn redis.call('INCR', KEYS[1])")
    counter = CommandCounter(client)
    batcher = ScriptBatcher(client)
    key = f"{redis_prefix}n"
    results = await within(asyncio.gather(*(batcher.run(script, [key], []) for _ in range(10))))
    assert sorted(results) == list(range(1, 11))  # each ran exactly once
    # first write: 10 EVALSHA, all NOSCRIPT; then SCRIPT LOAD (never SCRIPT EXISTS) and
    # the same 10 again
    assert counter.names == ["EVALSHA"] * 10 + ["SCRIPT LOAD"] + ["EVALSHA"] * 10
    results = await within(asyncio.gather(*(batcher.run(script, [key], []) for _ in range(3))))
    assert sorted(results) == [11, 12, 13]
    assert counter.names[21:] == ["EVALSHA"] * 3  # loaded now: no second try


@pytest.mark.asyncio
async def test_a_failing_call_fails_alone(
    client: redis.asyncio.Redis, redis_prefix: str,  # noqa: F811
) -> None:
    good = client.register_script("return redis.call('INCR', KEYS[1])")
    bad = client.register_script("return redis.call('HGET', KEYS[1], 'x')")  # a WRONGTYPE
    batcher = ScriptBatcher(client)
    counter_key, string_key = f"{redis_prefix}c", f"{redis_prefix}s"
    await client.set(string_key, "a string")
    results = await within(asyncio.gather(
        batcher.run(good, [counter_key], []), batcher.run(bad, [string_key], []),
        batcher.run(good, [counter_key], []), return_exceptions=True,
    ))
    assert sorted(r for r in results if isinstance(r, int)) == [1, 2]
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])


@pytest.mark.asyncio
async def test_a_redis_that_never_answers_fails_the_calls_as_a_redis_error() -> None:
    """A stalled Redis (CLIENT PAUSE, a hung network): the pipeline's deadline fails its
    calls with a RedisError, which the gateway answers 503, not with a bare TimeoutError
    (a 500). The server here accepts and reads, and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stalled = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=None)
    batcher = ScriptBatcher(stalled, timeout_s=0.3)
    script = stalled.register_script("return 1")
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            await within(batcher.run(script, ["k"], []))
    finally:
        await stalled.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
