"""A small, fast HTTP/1.1 load generator (asyncio + uvloop, keep-alive, raw sockets).

httpx or locust cost far more CPU per request than the server under test on a 2-core box;
this one writes prepared bytes and parses only the status line and Content-Length, so the
generator takes as little of the machine as possible. Both the baseline and lendcore are
measured with it, in the same run, so their ratio is fair.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RESPONSE_HEAD_MAX = 64 * 1024
PACER_RELEASE_AT_END = 100_000

# Builds one request: returns (raw request bytes, tag for the result).
RequestFactory = Callable[[], bytes]


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, int(q * len(ordered)))
        return ordered[index] * 1000



def build_request(
    method: str, path: str, host: str, headers: dict[str, str], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > RESPONSE_HEAD_MAX:
        raise ValueError("response head too large")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        return await _read_response(self.reader)

    def close(self) -> None:
        self.writer.close()


async def _connection(
    host: str, port: int, factory: RequestFactory, deadline: float, count_max: int | None,
    result: LoadResult, on_response: Callable[[int, bytes], None] | None,
    pace: asyncio.Semaphore | None,
) -> None:
    conn = await Connection.open(host, port)
    try:
        sent = 0
        while time.perf_counter() < deadline and (count_max is None or sent < count_max):
            if pace is not None:
                await pace.acquire()
                if time.perf_counter() >= deadline:
                    break
            request = factory()
            started = time.perf_counter()
            status, body = await conn.request(request)
            result.latencies_s.append(time.perf_counter() - started)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status >= 400:
                result.errors += 1
            if on_response is not None:
                on_response(status, body)
            sent += 1
    finally:
        conn.close()


async def _pacer(pace: asyncio.Semaphore, rate_per_s: float, deadline: float) -> None:
    """Open-loop pacing: releases permits at a fixed rate, whatever the latency."""
    interval = 1.0 / rate_per_s
    next_at = time.perf_counter()
    while next_at < deadline:
        now = time.perf_counter()
        while next_at <= now:
            pace.release()
            next_at += interval
        await asyncio.sleep(max(0.0, next_at - now))
    for _ in range(PACER_RELEASE_AT_END):
        pace.release()  # wake every connection still waiting so that it sees the deadline


async def run_load(
    host: str, port: int, factory: RequestFactory, *, connections: int, duration_s: float,
    count_per_connection: int | None = None, rate_per_s: float | None = None,
    on_response: Callable[[int, bytes], None] | None = None,
) -> LoadResult:
    """Closed loop over `connections` keep-alive connections, or paced at `rate_per_s`."""
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + duration_s
    pace = asyncio.Semaphore(0) if rate_per_s else None
    pacer = (
        asyncio.create_task(_pacer(pace, rate_per_s, deadline))
        if pace is not None and rate_per_s else None
    )
    await asyncio.gather(*(
        _connection(host, port, factory, deadline, count_per_connection, result, on_response,
                    pace)
        for _ in range(connections)
    ))
    result.elapsed_s = time.perf_counter() - started
    if pacer is not None:
        pacer.cancel()
    return result
