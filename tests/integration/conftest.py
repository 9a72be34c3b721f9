"""A whole running system for the integration tests: a fresh Postgres database on the
machine's server, a private Redis key prefix, a local Ray, shard hosts and both gateways
on free ports, exactly as `lendcore up` builds them (cluster.system.System)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import ray
import uvloop
from conftest_redis import REDIS_URL, delete_keys_with_prefix

from cluster.config import Settings, load_settings
from cluster.eod_schedule import wall_clock
from cluster.system import System
from loadtests.client import PartnerClient

ADMIN_DSN = os.environ.get("LENDCORE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BUSINESS_DATE = "2026-11-29"
T = TypeVar("T")


def _dsn_for(database: str) -> str:
    """The admin DSN with another database (keeps a query string such as ?host=socket)."""
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path=f"/{database}"))


def create_database() -> tuple[str, str]:
    name = f"lendcore_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return name, _dsn_for(name)


def drop_database(name: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def empty_database() -> Iterator[str]:
    """The DSN of a database of its own for one test, dropped afterwards."""
    name, dsn = create_database()
    yield dsn
    drop_database(name)


def system_settings(
    pg_dsn: str, prefix: str, config_file: Path | None = None, **extra_env: str
) -> Settings:
    environ = {
        "LENDCORE_PG_DSN": pg_dsn,
        "LENDCORE_REDIS_URL": REDIS_URL,
        "LENDCORE_REDIS_PREFIX": prefix,
        "LENDCORE_API_PORT": "0",
        "LENDCORE_OPS_PORT": "0",
        "LENDCORE_BUSINESS_DATE": BUSINESS_DATE,
        **extra_env,
    }
    return load_settings(config_file, environ=environ)


class RunningSystem:
    """A System served from its own uvloop in a background thread."""

    def __init__(
        self, settings: Settings, pg_dsn: str, clock: Callable[[], datetime] = wall_clock
    ) -> None:
        self.system = System(settings, pg_dsn, settings.redis.url, clock)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RunningSystem:
        self.thread.start()
        self.run(self.system.start())
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 180) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.run(self.system.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def client(self, partner: str = "demo") -> PartnerClient:
        return PartnerClient(self.system.api_url, partner)

    def pg(self) -> asyncpg.Pool:
        assert self.system._pool is not None
        return self.system._pool


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    ray.init(
        address="local",  # a Ray of the run's own, never one found running on the machine
        num_cpus=2, object_store_memory=96 * 1024 * 1024, include_dashboard=False,
        namespace=f"lendcore-test-{uuid.uuid4().hex[:8]}", log_to_driver=False,
    )
    yield
    ray.shutdown()


@contextmanager
def fresh_system(
    config_file: Path | None = None, *, clock: Callable[[], datetime] = wall_clock,
    **extra_env: str,
) -> Iterator[RunningSystem]:
    """A running system on its own new database and Redis prefix, removed afterwards;
    `config_file` is layered over config/default.toml like `lendcore up --config`; `clock`
    is the wall clock of its end-of-day schedule."""
    name, dsn = create_database()
    prefix = f"lendcore-test-{uuid.uuid4().hex}:"
    try:
        settings = system_settings(dsn, prefix, config_file, **extra_env)
        running = RunningSystem(settings, dsn, clock).start()
        try:
            yield running
        finally:
            running.stop()
    finally:
        drop_database(name)
        delete_keys_with_prefix(prefix)


@pytest.fixture(scope="session")
def system(ray_cluster: None) -> Iterator[RunningSystem]:
    with fresh_system() as running:
        yield running


@pytest.fixture
def demo(system: RunningSystem) -> Iterator[PartnerClient]:
    client = system.client("demo")
    yield client
    client.close()


@pytest.fixture
def demo2(system: RunningSystem) -> Iterator[PartnerClient]:
    client = system.client("demo2")
    yield client
    client.close()


@pytest.fixture
def ops(system: RunningSystem) -> Iterator[httpx.Client]:
    """An unauthenticated client of the operator port (add factories.ops_auth())."""
    client = httpx.Client(base_url=system.system.ops_url, timeout=30)
    yield client
    client.close()


@pytest.fixture
def embedded_tmp() -> Iterator[Path]:
    """A directory for embedded Postgres data OUTSIDE pytest's basetemp. Postgres runs as an
    unprivileged account that needs search permission on every parent, and pytest resets its
    root (/tmp/pytest-of-<user>) to 0700 whenever another pytest session starts on the
    machine: a Postgres started under it then cannot stat its own data directory."""
    path = Path(tempfile.mkdtemp(prefix="lendcore-test-"))
    yield path
    shutil.rmtree(path)
