"""The gateway's side of a shard host's data port (actors/data_port.py): one connection per
host, many calls at once on it, each reply matched to its call by id.

The connection is made on the first call and after every loss: `resolve` asks the host,
through Ray, where its port is and for its token (a host Ray restarted listens elsewhere, with
another token). A call whose connection is lost, or cannot be made, raises HostLinkLost: its
outcome is unknown, and the router retries it with the same command, as after an actor died
mid-call (gateway/router.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

from actors.data_port import REPLY_OK, FrameTooLarge, frame, read_frame

log = logging.getLogger("lendcore.host_link")

# (host, port, token) of a host's data port, asked of the host through Ray
Resolve = Callable[[], Awaitable[tuple[str, int, bytes]]]
CONNECT_TIMEOUT_S = 5.0


class HostLinkLost(ConnectionError):
    """The connection to a host's data port is gone (or could not be made) with this call in
    flight: whether it happened is unknown."""


class HostCallFailed(Exception):
    """The host answered that the call failed as a whole (a bug there): not retried."""


class HostLink:
    def __init__(self, name: str, resolve: Resolve) -> None:
        self.name = name
        self._resolve = resolve
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        # call id -> (the connection it was sent on, its reply)
        self._pending: dict[int, tuple[asyncio.StreamWriter, asyncio.Future[bytes]]] = {}
        self._ids = itertools.count()
        self.connects = 0

    async def call(self, payload: bytes) -> bytes:
        writer = self._writer
        if writer is None or writer.is_closing():
            writer = await self._connect()
        call_id = next(self._ids)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (writer, reply)
        try:
            writer.write(frame(call_id, payload))
            await writer.drain()
            answer = await reply
        except HostLinkLost:
            raise  # the reader found the connection gone, and failed every call on it
        except ConnectionError as exc:
            self._lost(writer, exc)
            raise HostLinkLost(f"host {self.name}: connection lost ({exc})") from exc
        finally:
            self._pending.pop(call_id, None)
        if answer[:1] != REPLY_OK:
            raise HostCallFailed(f"host {self.name}: {answer[1:].decode(errors='replace')}")
        return answer[1:]

    async def close(self) -> None:
        if self._writer is not None:
            self._lost(self._writer, ConnectionError("link closed"))
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:  # one connection at a time, shared by the calls
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            host, port, token = await self._resolve()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError) as exc:
                raise HostLinkLost(f"host {self.name}: cannot reach {host}:{port} ({exc})") from exc
            writer.write(token)
            self._writer = writer
            self.connects += 1
            self._reader_task = asyncio.create_task(
                self._read(reader, writer), name=f"host-link-{self.name}")
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                call_id, payload = await read_frame(reader)
                waiting = self._pending.pop(call_id, None)
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError, FrameTooLarge) as exc:
            self._lost(writer, exc)

    def _lost(self, writer: asyncio.StreamWriter, exc: BaseException) -> None:
        """Every call still waiting on this connection fails with HostLinkLost."""
        if self._writer is writer:
            self._writer = None
        writer.close()
        waiting = [(i, reply) for i, (sent_on, reply) in self._pending.items()
                   if sent_on is writer]
        for call_id, reply in waiting:
            if not reply.done():
                reply.set_exception(HostLinkLost(
                    f"host {self.name}: connection lost with call {call_id} in flight ({exc})"))
        if waiting:
            log.warning("host %s: connection lost with %d calls in flight (%s)",
                        self.name, len(waiting), type(exc).__name__)

