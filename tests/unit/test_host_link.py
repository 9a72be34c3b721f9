"""The shard host's data port (actors/data_port.py) and the gateway's link to it
(gateway/host_link.py), over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import struct

import pytest

from actors.data_port import FRAME_BYTES_MAX, FRAME_HEADER, DataPort, FrameTooLarge, read_frame
from gateway.host_link import HostCallFailed, HostLink, HostLinkLost


async def _reversed_after(payload: bytes) -> bytes:
    """A host's submit: waits as many ms as the payload's first byte says, then answers."""
    await asyncio.sleep(payload[0] / 1000)
    return payload[::-1]


class _Resolver:
    """What the gateway asks a host through Ray: where its port is, and its token."""

    def __init__(self, port: DataPort) -> None:
        self.port = port
        self.calls = 0

    async def __call__(self) -> tuple[str, int, bytes]:
        self.calls += 1
        host, number = await self.port.start("127.0.0.1")
        return host, number, self.port.token


@pytest.mark.asyncio
async def test_concurrent_calls_each_get_their_own_reply_over_one_connection() -> None:
    port = DataPort(_reversed_after)
    resolve = _Resolver(port)
    link = HostLink("host-0", resolve)
    try:
        payloads = [bytes([delay]) + b"call-%d" % n for n, delay in enumerate([30, 1, 15, 0, 8])]
        replies = await asyncio.gather(*(link.call(p) for p in payloads))
        assert replies == [p[::-1] for p in payloads]
        assert link.connects == 1 and resolve.calls == 1
    finally:
        await link.close()
        await port.close()


@pytest.mark.asyncio
async def test_a_wrong_token_is_refused_and_the_next_call_asks_again() -> None:
    port = DataPort(_reversed_after)
    resolve = _Resolver(port)
    stale_token = b"\0" * 16

    async def stale_then_current() -> tuple[str, int, bytes]:
        host, number, token = await resolve()
        return host, number, stale_token if resolve.calls == 1 else token

    link = HostLink("host-0", stale_then_current)
    try:
        with pytest.raises(HostLinkLost):
            await link.call(b"\0first")
        assert await link.call(b"\0second") == b"dnoces\0"
        assert resolve.calls == 2
    finally:
        await link.close()
        await port.close()


@pytest.mark.asyncio
async def test_a_call_in_flight_when_the_host_goes_away_is_lost_and_the_next_reconnects() -> None:
    started = asyncio.Event()

    async def never_answers(payload: bytes) -> bytes:
        started.set()
        await asyncio.Event().wait()
        return payload

    old = DataPort(never_answers)
    new = DataPort(_reversed_after)
    current = [old]

    async def resolve() -> tuple[str, int, bytes]:
        host, number = await current[0].start("127.0.0.1")
        return host, number, current[0].token

    link = HostLink("host-0", resolve)
    try:
        call = asyncio.create_task(link.call(b"\0lost"))
        await started.wait()
        await old.close()  # the host died: Ray restarts it with a new port and token
        current[0] = new
        with pytest.raises(HostLinkLost):
            await call
        assert await link.call(b"\0again") == b"niaga\0"
        assert link.connects == 2
    finally:
        await link.close()
        await new.close()


@pytest.mark.asyncio
async def test_a_call_the_host_fails_fails_alone_and_the_connection_serves_on() -> None:
    async def fails_on_boom(payload: bytes) -> bytes:
        if payload == b"boom":
            raise ValueError("cannot decode")
        return payload[::-1]

    port = DataPort(fails_on_boom)
    link = HostLink("host-0", _Resolver(port))
    try:
        with pytest.raises(HostCallFailed, match="ValueError: cannot decode"):
            await link.call(b"boom")
        assert await link.call(b"fine") == b"enif"
        assert link.connects == 1
    finally:
        await link.close()
        await port.close()


@pytest.mark.asyncio
async def test_a_host_nobody_listens_for_is_a_lost_link() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    number = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

    async def resolve() -> tuple[str, int, bytes]:
        return "127.0.0.1", number, b"\0" * 16

    link = HostLink("host-0", resolve)
    with pytest.raises(HostLinkLost, match="cannot reach"):
        await link.call(b"\0x")


@pytest.mark.asyncio
async def test_an_oversized_frame_closes_the_connection_without_reading_it() -> None:
    served: list[bytes] = []

    async def submit(payload: bytes) -> bytes:
        served.append(payload)
        return payload

    port = DataPort(submit)
    host, number = await port.start("127.0.0.1")
    reader, writer = await asyncio.open_connection(host, number)
    try:
        writer.write(port.token + FRAME_HEADER.pack(FRAME_BYTES_MAX + 1, 7))
        await writer.drain()
        assert await reader.read() == b""  # closed by the port
        assert served == []
    finally:
        writer.close()
        await port.close()


@pytest.mark.asyncio
async def test_read_frame_refuses_a_length_over_the_bound() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack("!IQ", FRAME_BYTES_MAX + 1, 1))
    with pytest.raises(FrameTooLarge):
        await read_frame(reader)
