"""Embedded Postgres/Redis from cluster.services: persistence, process lifecycle, sharing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio

from cluster.services import (
    EmbeddedServiceError,
    start_embedded_postgres,
    start_embedded_redis,
)

pytestmark = pytest.mark.slow

SUBPROCESS_TIMEOUT_S = 60


@pytest.fixture
def data_dir(embedded_tmp: Path) -> Path:
    return embedded_tmp / "lendcore"


def _process_gone(pid: int) -> bool:
    # The servers are daemons reaped by init, possibly a moment later: a zombie has exited.
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _write_probe(pg_url: str, redis_url: str) -> None:
    connection = await asyncpg.connect(pg_url)
    try:
        await connection.execute("CREATE TABLE probe (id int PRIMARY KEY, note text NOT NULL)")
        await connection.execute("INSERT INTO probe VALUES (1, 'survives restarts')")
    finally:
        await connection.close()
    client = redis.asyncio.from_url(redis_url)
    try:
        await client.set("probe", "kept")
    finally:
        await client.aclose()


async def _read_probe(pg_url: str, redis_url: str) -> tuple[str | None, bytes | str | None]:
    connection = await asyncpg.connect(pg_url)
    try:
        note = await connection.fetchval("SELECT note FROM probe WHERE id = 1")
    finally:
        await connection.close()
    client = redis.asyncio.from_url(redis_url)
    try:
        value = await client.get("probe")
    finally:
        await client.aclose()
    return note, value


def test_state_survives_restart_and_stop_ends_the_processes(data_dir: Path) -> None:
    with start_embedded_postgres(data_dir) as pg, start_embedded_redis(data_dir) as rd:
        asyncio.run(_write_probe(pg.url, rd.url))
    assert _process_gone(pg.pid)
    assert _process_gone(rd.pid)

    with start_embedded_postgres(data_dir) as pg, start_embedded_redis(data_dir) as rd:
        assert asyncio.run(_read_probe(pg.url, rd.url)) == ("survives restarts", b"kept")
    assert _process_gone(pg.pid)
    assert _process_gone(rd.pid)

    pg.stop()  # idempotent
    rd.stop()


_CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import asyncpg, redis.asyncio

    async def main(pg_url, redis_url):
        connection = await asyncpg.connect(pg_url)
        database = await connection.fetchval("SELECT current_database()")
        await connection.close()
        client = redis.asyncio.from_url(redis_url)
        await client.set("from-subprocess", "yes")
        await client.aclose()
        print(database)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_urls_work_from_a_separate_process(data_dir: Path) -> None:
    with start_embedded_postgres(data_dir) as pg, start_embedded_redis(data_dir) as rd:
        result = subprocess.run(
            [sys.executable, "-c", _CLIENT_SCRIPT, pg.url, rd.url],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "lendcore"
        assert asyncio.run(_get(rd.url, "from-subprocess")) == b"yes"


async def _get(redis_url: str, key: str) -> bytes | str | None:
    client = redis.asyncio.from_url(redis_url)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


def test_second_owner_of_a_data_dir_is_refused(data_dir: Path) -> None:
    with start_embedded_postgres(data_dir), start_embedded_redis(data_dir):
        with pytest.raises(EmbeddedServiceError, match="owned by another lendcore process"):
            start_embedded_postgres(data_dir)
        with pytest.raises(EmbeddedServiceError, match="owned by another lendcore process"):
            start_embedded_redis(data_dir)


_CRASHING_OWNER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from cluster.services import start_embedded_postgres, start_embedded_redis

    pg = start_embedded_postgres(Path(sys.argv[1]))
    rd = start_embedded_redis(Path(sys.argv[1]))
    print(json.dumps([pg.pid, rd.pid]), flush=True)
    os._exit(0)  # like a crash: no stop(), no atexit
    """
)


def test_servers_left_by_a_crashed_owner_are_adopted(data_dir: Path) -> None:
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_OWNER_SCRIPT, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=True,
    )
    orphan_pg_pid, orphan_redis_pid = json.loads(crashed.stdout)

    with start_embedded_postgres(data_dir) as pg, start_embedded_redis(data_dir) as rd:
        assert (pg.pid, rd.pid) == (orphan_pg_pid, orphan_redis_pid)
    assert _process_gone(orphan_pg_pid)
    assert _process_gone(orphan_redis_pid)
