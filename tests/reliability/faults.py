"""The tools of the fault tests: a TCP fault proxy, services the test owns (so it may stop,
flush or pause them), a steady stream of signed repayments that retries each request with
its own key until it gets a definitive answer, and a /readyz sampler.

Everything here runs real servers and real connections: the proxy forwards real Postgres
and Redis traffic, and the faults are what a restart, a failover or a bad network does to
lendcore's sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from cluster.services import EmbeddedService, start_embedded_postgres, start_embedded_redis
from loadtests.client import PartnerClient

CHUNK_BYTES = 65536
# One line of figures per fault test, printed at the end of the pytest run (conftest.py),
# so that a CI log shows them without -s.
FAULT_LINES: list[str] = []


# ---- the fault proxy ----------------------------------------------------------------------


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of a server's Unix socket, run on an event loop of
    its own thread. Faults:
    - `cut()`: reset every open connection (what a server restart or failover does);
    - `stall(True)`: hold every byte, either way, until `stall(False)` (a hung network).
    """

    def __init__(self, unix_path: str) -> None:
        self._unix_path = unix_path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        self.port = self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        self._call(self._abort_all())

    def stall(self, on: bool) -> None:
        self._call(self._set_flowing(not on))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._abort_all()
        pipes = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _set_flowing(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
        except OSError:  # the server is down: so is the connection through the proxy
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for end in (writer, up_writer):
            end.transport.abort()
            self._writers.discard(end)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                await self._flowing.wait()
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.transport.abort()  # one side gone: the other goes too, as with a real cut


# ---- services the test owns ---------------------------------------------------------------


class OwnedServices:
    """An embedded Postgres and Redis of the test's own, each behind a FaultProxy: the test
    may stop and start them, flush and pause Redis, and break the network in between,
    without touching the machine's shared servers."""

    def __init__(self) -> None:
        # Outside pytest's basetemp: Postgres runs as an unprivileged account that needs
        # search permission on every parent directory (see the integration conftest).
        self.data_dir = Path(tempfile.mkdtemp(prefix="lendcore-faults-"))
        self.postgres: EmbeddedService | None = None
        self.redis: EmbeddedService | None = None
        self.pg_proxy: FaultProxy | None = None
        self.redis_proxy: FaultProxy | None = None

    def start(self) -> OwnedServices:
        self.start_postgres()
        self.start_redis()
        assert self.postgres is not None and self.redis is not None
        self.pg_proxy = FaultProxy(_pg_socket(self.postgres.url)).start()
        self.redis_proxy = FaultProxy(self.redis.url.removeprefix("unix://")).start()
        return self

    @property
    def pg_dsn(self) -> str:
        """lendcore's DSN: through the proxy."""
        assert self.pg_proxy is not None
        return f"postgresql://postgres@127.0.0.1:{self.pg_proxy.port}/lendcore"

    @property
    def admin_pg_dsn(self) -> str:
        """The test's own DSN: straight to the server, around the proxy."""
        assert self.postgres is not None
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        assert self.redis_proxy is not None
        return f"redis://127.0.0.1:{self.redis_proxy.port}/0"

    @property
    def admin_redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def start_postgres(self) -> None:
        self.postgres = start_embedded_postgres(self.data_dir, "lendcore")

    def stop_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.stop()

    def start_redis(self) -> None:
        self.redis = start_embedded_redis(self.data_dir)

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.stop()

    def close(self) -> None:
        for proxy in (self.pg_proxy, self.redis_proxy):
            if proxy is not None:
                proxy.stop()
        for service in (self.redis, self.postgres):
            if service is not None:
                service.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _pg_socket(dsn: str) -> str:
    """The Unix socket file of an embedded Postgres DSN (…?host=<dir>&port=<port>)."""
    query = dict(part.split("=", 1) for part in dsn.split("?", 1)[1].split("&"))
    return os.path.join(unquote(query["host"]), f".s.PGSQL.{query['port']}")


# ---- the load: signed repayments, each retried with its own key until definitive ---------


DEFINITIVE = {200, 201}


@dataclass
class Attempt:
    started: float
    seconds: float
    status: int | None  # None: no HTTP answer (connection refused or reset, client timeout)
    error: str = ""


@dataclass
class Repayment:
    loan_id: str
    key: str
    external_ref: str
    amount: int
    attempts: list[Attempt] = field(default_factory=list)
    status: int | None = None
    repayment_id: str | None = None
    body: Any = None


@dataclass
class StreamReport:
    sent: int
    acknowledged: int
    refused: dict[int, int]  # definitive non-2xx answers by status
    gave_up: int  # requests with no definitive answer by the stream's deadline
    longest_answer_s: float  # the longest single HTTP attempt, answered or not
    unanswered: int  # attempts that got no HTTP answer at all (connection errors)
    statuses: dict[int, int]  # every attempt's status, 503s and 429s included


class RepaymentStream:
    """`workers` threads, each sending signed repayments of `amount` fen to the loans, one
    at a time. 1 fen by default: a loan's first installment then takes tens of thousands
    before a regular repayment exceeds what is due (422). A request is retried with the
    SAME idempotency key and body until it gets a definitive answer (anything but 503, 429
    and 409 request_in_progress, or no answer)."""

    def __init__(
        self, api_url: str, loan_ids: list[str], *, workers: int = 4, amount: int = 1,
        attempt_timeout_s: float = 30.0, retry_pause_s: float = 0.2,
        give_up_after_s: float = 120.0,
    ) -> None:
        self.api_url = api_url
        self.loan_ids = loan_ids
        self.workers = workers
        self.amount = amount
        self.attempt_timeout_s = attempt_timeout_s
        self.retry_pause_s = retry_pause_s
        self.give_up_after_s = give_up_after_s
        self.repayments: list[Repayment] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RepaymentStream:
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending new requests; wait for those in flight to get a definitive answer."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(self.give_up_after_s + self.attempt_timeout_s + 5)
        self._threads.clear()

    def acknowledged_since(self, moment: float) -> int:
        with self._lock:
            return sum(
                1 for r in self.repayments
                if r.status == 201 and r.attempts and r.attempts[-1].started >= moment
            )

    def first_success_after(self, moment: float) -> float | None:
        """When the first repayment request answered 201 after `moment` (its end time)."""
        with self._lock:
            ends = [
                a.started + a.seconds for r in self.repayments for a in r.attempts
                if a.status == 201 and a.started + a.seconds >= moment
            ]
        return min(ends) if ends else None

    def report(self) -> StreamReport:
        with self._lock:
            repayments = list(self.repayments)
        attempts = [a for r in repayments for a in r.attempts]
        statuses: dict[int, int] = {}
        for attempt in attempts:
            if attempt.status is not None:
                statuses[attempt.status] = statuses.get(attempt.status, 0) + 1
        refused: dict[int, int] = {}
        for r in repayments:
            if r.status is not None and r.status not in DEFINITIVE:
                refused[r.status] = refused.get(r.status, 0) + 1
        return StreamReport(
            sent=len(repayments),
            acknowledged=sum(1 for r in repayments if r.status in DEFINITIVE),
            refused=refused,
            gave_up=sum(1 for r in repayments if r.status is None),
            longest_answer_s=max((a.seconds for a in attempts), default=0.0),
            unanswered=sum(1 for a in attempts if a.status is None),
            statuses=statuses,
        )

    def _work(self, index: int) -> None:
        client = PartnerClient(self.api_url, timeout_s=self.attempt_timeout_s)
        try:
            turn = index
            while not self._stopping.is_set():
                loan_id = self.loan_ids[turn % len(self.loan_ids)]
                turn += self.workers
                repayment = Repayment(
                    loan_id, f"fault-{uuid.uuid4().hex}", f"F-{uuid.uuid4().hex}", self.amount
                )
                with self._lock:
                    self.repayments.append(repayment)
                self._until_definitive(client, repayment)
        finally:
            client.close()

    def _until_definitive(self, client: PartnerClient, repayment: Repayment) -> None:
        body = {"amount": repayment.amount, "external_ref": repayment.external_ref,
                "kind": "regular"}
        path = f"/v1/loans/{repayment.loan_id}/repayments"
        give_up_at = time.monotonic() + self.give_up_after_s
        while time.monotonic() < give_up_at:
            started = time.monotonic()
            try:
                response = client.post(path, body, key=repayment.key)
            except httpx.HTTPError as exc:
                repayment.attempts.append(
                    Attempt(started, time.monotonic() - started, None, type(exc).__name__)
                )
                time.sleep(self.retry_pause_s)
                continue
            attempt = Attempt(started, time.monotonic() - started, response.status_code)
            repayment.attempts.append(attempt)
            if _definitive(response):
                repayment.status = response.status_code
                repayment.body = response.json()
                if response.status_code == 201:
                    repayment.repayment_id = repayment.body["repayment_id"]
                return
            time.sleep(self.retry_pause_s)


def _definitive(response: httpx.Response) -> bool:
    if response.status_code in (429, 503):
        return False
    if response.status_code == 409:
        return bool(response.json()["error"]["code"] != "request_in_progress")
    return True


# ---- /readyz over time ---------------------------------------------------------------------


class ReadinessSampler:
    """Polls /readyz every `every_s` in a thread; `samples` holds (monotonic time, status)
    with status None when the server did not answer."""

    def __init__(self, url: str, every_s: float = 0.25) -> None:
        self.url = url
        self.every_s = every_s
        self.samples: list[tuple[float, int | None]] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadinessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(10)

    def statuses_between(self, start: float, end: float) -> list[int | None]:
        return [status for moment, status in list(self.samples) if start <= moment <= end]

    def ready_again_at(self, after: float) -> float | None:
        """The first moment after `after` from which every sample said 200."""
        ready_since: float | None = None
        for moment, status in list(self.samples):
            if moment < after:
                continue
            if status == 200:
                ready_since = moment if ready_since is None else ready_since
            else:
                ready_since = None
        return ready_since

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stopping.is_set():
                moment = time.monotonic()
                try:
                    status: int | None = client.get(f"{self.url}/readyz").status_code
                except httpx.HTTPError:
                    status = None
                self.samples.append((moment, status))
                self._stopping.wait(self.every_s)


# ---- small helpers ------------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def repeat(every_s: float, for_s: float, fault: Callable[[], None]) -> list[float]:
    """Run `fault` every `every_s` seconds for `for_s` seconds; the moments it ran."""
    moments: list[float] = []
    end = time.monotonic() + for_s
    while time.monotonic() < end:
        moments.append(time.monotonic())
        fault()
        time.sleep(max(0.0, moments[-1] + every_s - time.monotonic()))
    return moments
