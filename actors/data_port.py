"""The shard host's data port: the gateway's calls over a plain socket, not through Ray (ADR 009).

Ray places the shard hosts, restarts them and carries their control calls (adopt, release,
stats, end-of-day sync). Partner commands take this port instead: a Ray call to an async
actor cost 0.54-0.57 ms of the host's CPU and 0.44-0.55 ms of the caller's, whatever it
carried (a gRPC thread, the worker's main thread and the actor's event loop hand each call on
to one another), against 0.01-0.03 ms on each side for a frame over a socket into the host's
own event loop (`python -m loadtests.bench_host_transport`). A single repayment's call
carries about 15 commands, so Ray cost every repayment some 0.07 ms.

What a call means does not change: a payload of envelopes in, the replies out, exactly as
through Ray (`ShardHostCore.submit`), many calls at once. A connection lost with calls in
flight leaves their outcome unknown, as an actor that died mid-call did: the gateway retries
them with the same idempotency keys, and the shards' commits deduplicate.

Wire format (all integers big-endian):
  connect: the client sends the port's 16-byte token (given out by the host's Ray method
           `data_endpoint`, so only a caller that can reach the actor through Ray gets in;
           a port reused by another process after a restart refuses the old token).
  call:    [u32 length][u64 call id][payload]; the reply comes back under the same id, in
           whatever order the calls finish: [u32 length][u64 call id][status byte][body],
           status REPLY_OK and the replies, or REPLY_FAILED and what went wrong (a bug: the
           call failed as a whole, and its commands are answered 503 without a retry, as a
           Ray call that raised was).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable

log = logging.getLogger("lendcore.data_port")

TOKEN_BYTES = 16
FRAME_HEADER = struct.Struct("!IQ")  # payload length, call id
FRAME_BYTES_MAX = 256 * 1024 * 1024  # a 1,000-item batch answers about 2.5 MB
CALLS_IN_FLIGHT_MAX = 256  # per connection; the gateway sends at most calls_in_flight_max
TOKEN_TIMEOUT_S = 5.0  # a connection that does not present the token in time is closed
REPLY_OK = b"\x00"
REPLY_FAILED = b"\x01"
FAILURE_BYTES_MAX = 1000  # of the failure's description

Submit = Callable[[bytes], Awaitable[bytes]]


class FrameTooLarge(Exception):
    pass


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(call id, payload) of the next frame; IncompleteReadError at the end of the stream."""
    length, call_id = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    if length > FRAME_BYTES_MAX:
        raise FrameTooLarge(f"frame of {length} bytes (at most {FRAME_BYTES_MAX})")
    return call_id, await reader.readexactly(length)


def frame(call_id: int, payload: bytes) -> bytes:
    if len(payload) > FRAME_BYTES_MAX:
        raise FrameTooLarge(f"frame of {len(payload)} bytes (at most {FRAME_BYTES_MAX})")
    return FRAME_HEADER.pack(len(payload), call_id) + payload


class DataPort:
    """Serves `submit` on host:port (port 0: any free one) in the running event loop."""

    def __init__(self, submit: Submit) -> None:
        self._submit = submit
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None

    async def start(self, host: str) -> tuple[str, int]:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
            self.address = self._server.sockets[0].getsockname()[:2]
            log.info("data port listening on %s:%s", *self.address)
        assert self.address is not None
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        calls: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(CALLS_IN_FLIGHT_MAX)
        try:
            async with asyncio.timeout(TOKEN_TIMEOUT_S):
                token = await reader.readexactly(TOKEN_BYTES)
            if not hmac.compare_digest(token, self.token):
                log.warning("data port: a connection with a wrong token, closed")
                return
            while True:
                call_id, payload = await read_frame(reader)
                await slots.acquire()
                call = asyncio.create_task(self._answer(writer, call_id, payload, slots))
                calls.add(call)  # a reference until done (asyncio keeps weak ones)
                call.add_done_callback(calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the gateway went away (or never said who it is): nothing to answer
        except FrameTooLarge as exc:
            log.warning("data port: %s; connection closed", exc)
        finally:
            # Calls already running finish (their commits happen or not); only their
            # replies are lost, which the gateway treats as an unknown outcome.
            writer.close()
            self._connections.discard(task)

    async def _answer(self, writer: asyncio.StreamWriter, call_id: int, payload: bytes,
                      slots: asyncio.Semaphore) -> None:
        try:
            try:
                reply = REPLY_OK + await self._submit(payload)
            except Exception as exc:  # a bug: this call fails, the connection serves on
                log.exception("data port: call %d failed", call_id)
                reply = REPLY_FAILED + f"{type(exc).__name__}: {exc}".encode()[:FAILURE_BYTES_MAX]
            if not writer.is_closing():
                writer.write(frame(call_id, reply))
                await writer.drain()  # a gateway that reads slowly slows its own calls
        except ConnectionError:
            pass  # the gateway went away: the reply has nobody to go to
        finally:
            slots.release()
