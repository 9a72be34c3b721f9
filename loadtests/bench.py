"""`lendcore bench`: the spine's figures, each with its ratio to a baseline of the same run.

1. baseline: a hello-world ASGI app on the same server stack, same load generator:
   `baseline_rps`, `baseline_cpu_ms`, its server's CPU ms per request (the HTTP stack's
   own cost on this box, the floor under `cpu_ms_gateway`), and `baseline_idle_pct`, the
   share of the machine left idle meanwhile;
2. `lendcore up` in a subprocess (fresh database, own Redis prefix, free ports) — the time
   to its `ready` line is `up_ready_s`;
3. seed loans through the partner API (application + booking each);
4. single-request repayments, closed loop over 64 connections: `repay_rps`, `p50_ms`,
   `p99_ms`, `repay_ratio` = repay_rps / baseline_rps, and what Postgres wrote per repayment:
   `wal_bytes_per_repay` (WAL, server-wide) and `rows_per_repay` (rows inserted or updated);
   how it was batched: `commands_per_ray_call`, `commands_per_commit`;
5. the same paced open-loop at 2,000/s: `p99_at_2000_ms`;
6. batch repayments, 1,000 items per request: `batch_rps` (items committed per second);
7. applications through the whole origination pipeline, each from a distinct sandbox
   applicant (own ID, phone, device and IP), closed loop over 64 connections: `app_rps`,
   `app_p99_ms`, and `app_not_approved` (must be 0: every one of them qualifies), with
   `app_cpu_ms_<role>` per application;
8. the trial balance must balance; SIGTERM must stop the system with exit code 0.
During step 4 the CPU time of every process on the machine is sampled: `cpu_ms_<role>` is
CPU milliseconds per single-request repayment spent by the gateway, the shard hosts,
Postgres, Redis, the load generator and everything else; `batch_cpu_ms_<role>` the same per
repayment of step 6. They show where the time goes. `idle_pct`, `batch_idle_pct` and
`app_idle_pct`: the share of the machine's CPU (all cores) left idle or waiting on I/O
during steps 4, 6 and 7, the headroom no process used (compare `baseline_idle_pct`: two
processes passing requests over loopback sockets leave some of it too).
The last line printed is `key=value` pairs. Targets are reported, not asserted: the exit
code is non-zero only when something went wrong (unexpected statuses, unbalanced books, a
failed start or stop).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import msgspec
import psutil
import redis
import uvloop

from cluster.config import PROJECT_ROOT, load_settings
from cluster.services import start_embedded_postgres, start_embedded_redis
from gateway.signing import signed_headers
from lending.identity import make_id_number
from loadtests.client import PartnerClient
from loadtests.httpload import Connection, LoadResult, build_request, run_load

PARTNER = "demo"
SECRET = b"demo-secret-change-me"
ADMIN_TOKEN = "dev-admin-token-change-me"
CONNECTIONS = 64
BATCH_ITEMS = 1000
BATCH_CONNECTIONS = 4
PACED_RATE = 2000.0
REPAY_AMOUNT = 100  # fen: small, so a loan takes thousands of repayments before it is paid
READY_TIMEOUT_S = 180
SEED_CONNECTIONS = 32
# where the CPU of one single-request repayment goes (ms per request, whole machine)
CPU_ROLES = ("gateway", "shard_hosts", "postgres", "redis", "loadgen", "ray", "other")
# Ray's own processes (every node runs a raylet and agents; the head a GCS; idle workers)
RAY_PROCESSES = ("raylet", "gcs_server", "ray/dashboard/", "runtime_env/agent", "ray::",
                 "ray/_private/", "ray/autoscaler/")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signed(method: str, path: str, body: bytes, host: str, key: str | None) -> bytes:
    headers = signed_headers(PARTNER, SECRET, method, path, body, int(time.time()),
                             idempotency_key=key)
    return build_request(method, path, host, headers, body)


# ---- phases ---------------------------------------------------------------------------------


def _wait_http_ok(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


def measure_baseline(
    duration_s: float, connections: int = CONNECTIONS
) -> tuple[LoadResult, float, float]:
    """The hello-world app under load, its server's CPU ms per request (what the HTTP stack
    alone costs on this box in this run, the floor under `cpu_ms_gateway`), and the share
    of the machine left idle meanwhile (`idle_pct`)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "loadtests.hello:app", "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
         "--backlog", "4096"],
        cwd=PROJECT_ROOT,
    )
    try:
        _wait_http_ok(f"http://127.0.0.1:{port}/", 30)
        request = build_request("GET", "/", f"127.0.0.1:{port}", {}, b"")
        process = psutil.Process(server.pid)
        cpu_before, machine_before = sum(process.cpu_times()[:2]), psutil.cpu_times()
        result = uvloop.run(run_load(
            "127.0.0.1", port, lambda: request, connections=connections, duration_s=duration_s
        ))
        server_cpu_s = sum(process.cpu_times()[:2]) - cpu_before  # user + system
        idle = idle_pct(machine_before, psutil.cpu_times())
        return result, server_cpu_s * 1000 / max(1, result.requests), idle
    finally:
        server.terminate()
        server.wait(10)


# The product every application of the run asks for (`lendcore bench --product`); set once
# by run_bench before any load starts.
BENCH_PRODUCT = ["CASH_EI_12"]


def application_body(i: int, run_id: str) -> bytes:
    """The i-th distinct sandbox applicant of a run: its own ID number, phone, device and IP,
    so anti-fraud velocity (a device or IP seen in 24 h is not approved) never trips.
    Applicant i of a run is unique for i < 800 × 7,000 days and 2^24 IPs; born 1975–1994,
    so aged 31–51 (the sandbox approves 22–55)."""
    birth = date(1975, 1, 1) + timedelta(days=i // 800 % 7000)
    return msgspec.json.encode({
        "partner_application_id": f"bench-{run_id}-{i}",
        "product_code": BENCH_PRODUCT[0], "amount": 1_000_000, "term": 12,
        "applicant": {"name": "张三", "id_number": make_id_number("110105", birth, 100 + i % 800),
                      "phone": f"139{i % 10**8:08d}", "monthly_income": 1_200_000,
                      "region_code": "330100"},
        "device": {"device_id": f"bench-{run_id}-{i}",
                   "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"},
        "purpose": "consumption",
    })


def application_factory(hostport: str, run_id: str, first: int):
    """Applications of distinct applicants, numbered after the seeded ones."""
    counter = itertools.count(first)

    def next_request() -> bytes:
        n = next(counter)
        return _signed("POST", "/v1/applications", application_body(n, run_id), hostport,
                       f"{run_id}-a{n}")

    return next_request


class _DecisionStatus(msgspec.Struct):
    status: str


class ApplicationCounter:
    """Counts decisions by status, so the phase proves the pipeline approved what it should
    (reading the status only, as BatchCounter does)."""

    def __init__(self) -> None:
        self.by_status: dict[str, int] = {}
        self.decoder = msgspec.json.Decoder(_DecisionStatus)

    def __call__(self, status: int, body: bytes) -> None:
        if status != 201:
            return
        decision = self.decoder.decode(body).status
        self.by_status[decision] = self.by_status.get(decision, 0) + 1


async def seed_loans(host: str, port: int, count: int) -> list[str]:
    """Applications and bookings through the partner API, SEED_CONNECTIONS at a time."""
    counter = itertools.count()
    loans: list[str] = []
    hostport = f"{host}:{port}"

    async def worker() -> None:
        conn = await Connection.open(host, port)
        try:
            while (i := next(counter)) < count:
                body = application_body(i, "seed")
                status, reply = await conn.request(
                    _signed("POST", "/v1/applications", body, hostport, uuid.uuid4().hex))
                application = json.loads(reply)
                if status != 201 or application["status"] != "approved":
                    raise RuntimeError(f"seeding: application answered {status} {reply[:200]!r}")
                body = msgspec.json.encode({"application_id": application["application_id"]})
                status, reply = await conn.request(
                    _signed("POST", "/v1/loans", body, hostport, uuid.uuid4().hex))
                if status != 201:
                    raise RuntimeError(f"seeding: booking answered {status} {reply[:200]!r}")
                loans.append(json.loads(reply)["loan_id"])
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(SEED_CONNECTIONS)))
    return loans


def repayment_factory(loans: list[str], hostport: str, run_id: str):
    counter = itertools.count()

    def next_request() -> bytes:
        n = next(counter)
        path = f"/v1/loans/{loans[n % len(loans)]}/repayments"
        body = b'{"amount":%d,"external_ref":"%s-%d","kind":"regular"}' % (
            REPAY_AMOUNT, run_id.encode(), n)
        return _signed("POST", path, body, hostport, f"{run_id}-{n}")

    return next_request


def batch_factory(loans: list[str], hostport: str, run_id: str):
    counter = itertools.count()

    def next_request() -> bytes:
        n = next(counter)
        items = [
            {"loan_id": loans[(n * BATCH_ITEMS + i) % len(loans)], "amount": REPAY_AMOUNT,
             "external_ref": f"{run_id}-b{n}-{i}", "kind": "regular"}
            for i in range(BATCH_ITEMS)
        ]
        body = msgspec.json.encode({"items": items})
        return _signed("POST", "/v1/repayments/batch", body, hostport, f"{run_id}-b{n}")

    return next_request


def cpu_snapshot(
    role_of: Callable[[psutil.Process], str | None] | None = None,
) -> dict[int, tuple[str, float]]:
    """pid → (role, CPU seconds so far) of every process on the machine that `role_of`
    (default: by process role) names."""
    classify = _role if role_of is None else role_of
    snapshot = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        role = None if times is None else classify(proc)
        if role is not None:
            snapshot[proc.pid] = (role, times.user + times.system)
    return snapshot


def _role(proc: psutil.Process) -> str:
    name = proc.info["name"] or ""
    cmdline = " ".join(proc.info["cmdline"] or [])
    if proc.pid == os.getpid():
        return "loadgen"
    if "ShardHost" in name or "ShardHostActor" in cmdline:
        return "shard_hosts"
    if "cluster.cli up" in cmdline or "cluster.cli gateway" in cmdline:
        return "gateway"
    if name.startswith("postgres") or cmdline.startswith("postgres"):
        return "postgres"
    if name.startswith("redis"):
        return "redis"
    if any(mark in name or mark in cmdline for mark in RAY_PROCESSES):
        return "ray"
    return "other"


def idle_pct(before: Any, after: Any) -> float:
    """The share of the whole machine's CPU time (every core) that was idle or waiting on
    I/O between two `psutil.cpu_times()`: what no process could use."""
    spent = {field: getattr(after, field) - getattr(before, field) for field in after._fields}
    total = sum(spent.values())
    unused = spent["idle"] + spent.get("iowait", 0.0)
    return 100 * unused / total if total > 0 else 0.0


def cpu_ms_per_request(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], requests: int
) -> dict[str, float]:
    """CPU milliseconds each role spent per request between two snapshots."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        delta = seconds - before.get(pid, (role, 0.0))[1]
        spent[role] = spent.get(role, 0.0) + max(0.0, delta)
    return {role: seconds * 1000 / max(1, requests) for role, seconds in spent.items()}


# Postgres processes name their kind in their title ("postgres: checkpointer", "postgres:
# autovacuum worker", "postgres: lendcore lendcore [local] SELECT" for a client backend).
_PG_BACKGROUND = ("autovacuum", "checkpointer", "walwriter", "background writer")


def _postgres_kind(proc: psutil.Process) -> str | None:
    """A Postgres process's kind: client backend ("backend"), each background kind, and
    the postmaster with the rest ("other"); None for any other process."""
    if _role(proc) != "postgres":
        return None
    title = " ".join(proc.info["cmdline"] or [])
    kind = next((k for k in _PG_BACKGROUND if k in title), None)
    if kind is None:
        kind = "backend" if "[local]" in title or "127.0.0.1" in title else "other"
    return kind.replace(" ", "_")


def postgres_cpu_by_kind() -> dict[int, tuple[str, float]]:
    """pid → (kind, CPU seconds so far) of every Postgres process."""
    return cpu_snapshot(_postgres_kind)


class _ItemStatus(msgspec.Struct):
    status: int


class _BatchStatuses(msgspec.Struct):
    results: list[_ItemStatus]


class BatchCounter:
    """Counts a batch response's items by outcome. It reads only the statuses: decoding every
    item's ~2.5 KB body into dicts cost the load generator ~30 us an item, on the cores the
    system under test runs on (msgspec skips the fields a typed decoder does not name)."""

    def __init__(self) -> None:
        self.items_ok = 0
        self.items_failed = 0
        self.decoder = msgspec.json.Decoder(_BatchStatuses)

    def __call__(self, status: int, body: bytes) -> None:
        if status != 200:
            return
        for result in self.decoder.decode(body).results:
            if result.status == 201:
                self.items_ok += 1
            else:
                self.items_failed += 1


class WriteVolume:
    """What Postgres wrote during a phase: WAL bytes (exact: the WAL position moves at once;
    server-wide, so on a shared Postgres it includes other users' writes) and rows inserted
    or updated in the bench's database (from the statistics, which backends report within
    about a second: read again until two readings agree)."""

    def __init__(self, pg_dsn: str) -> None:
        self.pg_dsn = pg_dsn
        self._start: tuple[str, int] = ("0/0", 0)

    async def start(self) -> None:
        self._start = await self._read()

    async def per_item(self, items: int) -> tuple[float, float]:
        """(WAL bytes, rows) per item since start()."""
        lsn, rows = await self._read()
        deadline = time.monotonic() + STATS_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(ROWS_SETTLE_S)
            _, again = await self._read()
            if again == rows:
                break
            rows = again
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            wal = await conn.fetchval(
                "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", lsn, self._start[0])
        finally:
            await conn.close()
        return float(wal) / max(1, items), (rows - self._start[1]) / max(1, items)

    async def _read(self) -> tuple[str, int]:
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            row = await conn.fetchrow(_WRITE_VOLUME)
        finally:
            await conn.close()
        assert row is not None
        return str(row["lsn"]), int(row["rows"])


_WRITE_VOLUME = ("SELECT pg_current_wal_lsn()::text AS lsn, coalesce(sum(n_tup_ins + n_tup_upd), "
                 "0)::int8 AS rows FROM pg_stat_user_tables")
ROWS_SETTLE_S = 1.2  # a backend reports its counts to the statistics at most every second


class Batching:
    """How the system batched a phase's commands: commands per Ray call (the gateway's
    `lendcore_gateway_ray_call_items` histogram) and per Postgres commit (the shard hosts'
    `group_commit` stats; each group is one commit statement)."""

    def __init__(self, ops_port: int) -> None:
        self.ops = f"http://127.0.0.1:{ops_port}"
        self._start = (0.0, 0.0, 0, 0)

    def start(self) -> None:
        self._start = self._read()

    def per_unit(self) -> tuple[float, float]:
        """(commands per Ray call, commands per commit) since start()."""
        items, calls, commands, groups = (
            now - before for now, before in zip(self._read(), self._start, strict=True))
        return items / max(1.0, calls), commands / max(1, groups)

    def _read(self) -> tuple[float, float, int, int]:
        metrics = httpx.get(f"{self.ops}/metrics", timeout=30).text
        items = calls = 0.0
        for line in metrics.splitlines():
            if line.startswith("lendcore_gateway_ray_call_items_sum "):
                items = float(line.split()[1])
            elif line.startswith("lendcore_gateway_ray_call_items_count "):
                calls = float(line.split()[1])
        cluster = httpx.get(f"{self.ops}/ops/cluster", timeout=30,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        commands = sum(s["commands"] for h in cluster["hosts"] for s in h["shards"].values())
        groups = sum(h["group_commit"].get("groups", 0) for h in cluster["hosts"])
        return items, calls, commands, groups


async def load_phases(
    api_port: int, ops_port: int, pg_dsn: str, loans_wanted: int, duration_s: float,
    connections: int = CONNECTIONS,
) -> dict[str, float | int]:
    host, hostport = "127.0.0.1", f"127.0.0.1:{api_port}"
    started = time.perf_counter()
    loans = await seed_loans(host, api_port, loans_wanted)
    seed_s = time.perf_counter() - started
    run_id = uuid.uuid4().hex[:8]
    written = WriteVolume(pg_dsn)
    await written.start()
    batching = Batching(ops_port)
    batching.start()
    cpu_before, machine_before = cpu_snapshot(), psutil.cpu_times()
    single = await run_load(
        host, api_port, repayment_factory(loans, hostport, run_id + "s"),
        connections=connections, duration_s=duration_s,
    )
    cpu = cpu_ms_per_request(cpu_before, cpu_snapshot(), single.requests)
    single_idle = idle_pct(machine_before, psutil.cpu_times())
    items_per_call, commands_per_commit = batching.per_unit()
    wal_bytes, rows = await written.per_item(single.requests)
    paced = await run_load(
        host, api_port, repayment_factory(loans, hostport, run_id + "p"),
        connections=connections, duration_s=duration_s, rate_per_s=PACED_RATE,
    )
    counter = BatchCounter()
    cpu_before, machine_before = cpu_snapshot(), psutil.cpu_times()
    batch = await run_load(
        host, api_port, batch_factory(loans, hostport, run_id), connections=BATCH_CONNECTIONS,
        duration_s=duration_s, on_response=counter,
    )
    batch_cpu = cpu_ms_per_request(cpu_before, cpu_snapshot(), counter.items_ok)
    batch_idle = idle_pct(machine_before, psutil.cpu_times())
    decisions = ApplicationCounter()
    cpu_before, machine_before = cpu_snapshot(), psutil.cpu_times()
    apps = await run_load(
        host, api_port, application_factory(hostport, run_id, loans_wanted),
        connections=connections, duration_s=duration_s, on_response=decisions,
    )
    app_cpu = cpu_ms_per_request(cpu_before, cpu_snapshot(), apps.requests)
    app_idle = idle_pct(machine_before, psutil.cpu_times())
    not_approved = apps.requests - apps.errors - decisions.by_status.get("approved", 0)
    return {
        "app_rps": apps.rps,
        "app_p99_ms": apps.percentile_ms(0.99),
        "app_not_approved": not_approved,
        "loans": len(loans),
        "seed_s": seed_s,
        "repay_rps": single.rps,
        "p50_ms": single.percentile_ms(0.50),
        "p99_ms": single.percentile_ms(0.99),
        "paced_rps": paced.rps,
        "p99_at_2000_ms": paced.percentile_ms(0.99),
        "batch_rps": counter.items_ok / batch.elapsed_s,
        "wal_bytes_per_repay": wal_bytes,
        "commands_per_ray_call": items_per_call,
        "commands_per_commit": commands_per_commit,
        "rows_per_repay": rows,
        "idle_pct": single_idle, "batch_idle_pct": batch_idle, "app_idle_pct": app_idle,
        "errors": single.errors + paced.errors + batch.errors + counter.items_failed
        + apps.errors,
        **{f"cpu_ms_{role}": cpu.get(role, 0.0) for role in CPU_ROLES},
        **{f"batch_cpu_ms_{role}": batch_cpu.get(role, 0.0) for role in CPU_ROLES},
        **{f"app_cpu_ms_{role}": app_cpu.get(role, 0.0) for role in CPU_ROLES},
    }


# ---- the system under test -----------------------------------------------------------------


def _services(stack: ExitStack, workdir: Path) -> tuple[str, str]:
    """A fresh database on the configured Postgres, or an embedded one; same for Redis."""
    settings = load_settings()
    redis_url = settings.redis.url
    if not redis_url:
        redis_url = stack.enter_context(start_embedded_redis(workdir)).url
    if not settings.storage.pg_dsn:
        return stack.enter_context(start_embedded_postgres(workdir, "bench")).url, redis_url
    admin = settings.storage.pg_dsn
    name = f"lendcore_bench_{uuid.uuid4().hex[:10]}"

    async def run_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run_sql(f'CREATE DATABASE "{name}"'))
    stack.callback(lambda: asyncio.run(run_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
    base, _, _ = admin.partition("?")[0].rpartition("/")
    query = admin.partition("?")[2]
    return f"{base}/{name}" + (f"?{query}" if query else ""), redis_url


_LOAN_UPDATES = ("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                 "WHERE relname = 'loans'")
STATS_WAIT_S = 15.0  # backends report their counts to the statistics within seconds


def loan_updates(pg_dsn: str) -> tuple[int, int]:
    """(updates, of which HOT) of the loans table so far, from Postgres's statistics."""
    async def read() -> tuple[int, int]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            row = await conn.fetchrow(_LOAN_UPDATES)
        finally:
            await conn.close()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))
    return asyncio.run(read())


def hot_update_pct(pg_dsn: str, before: tuple[int, int], loans: int) -> float:
    """The share of HOT updates among the loan updates since `before`, once the statistics
    count at least `loans` of them (the end of day's), or after STATS_WAIT_S."""
    deadline = time.monotonic() + STATS_WAIT_S
    while True:
        updates, hot = loan_updates(pg_dsn)
        if updates - before[0] >= loans or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return round(100 * (hot - before[1]) / max(1, updates - before[0]), 1)


def _start_system(
    stack: ExitStack, config_file: Path | None, pg_dsn: str, redis_url: str, workdir: Path,
    nodes: int | None = None, gateways: int | None = None,
) -> tuple[subprocess.Popen[str], int, int, float]:
    api_port, ops_port = _free_port(), _free_port()
    prefix = f"lendcore-bench-{uuid.uuid4().hex[:8]}:"
    # The run's keys (nonces, ~2 KB cached responses) would stay a day in a shared Redis.
    stack.callback(_delete_redis_keys, redis_url, prefix)
    env = dict(os.environ)
    env.update({
        "LENDCORE_PG_DSN": pg_dsn, "LENDCORE_REDIS_URL": redis_url,
        "LENDCORE_REDIS_PREFIX": prefix,
        "LENDCORE_API_PORT": str(api_port), "LENDCORE_OPS_PORT": str(ops_port),
        "LENDCORE_DATA_DIR": str(workdir / "data"),
    })
    # `lendcore up --nodes N` and `[gateway] processes = K`, through their variables
    if nodes is not None:
        env["LENDCORE_LOCAL_NODES"] = str(nodes)
    if gateways is not None:
        env["LENDCORE_GATEWAY_PROCESSES"] = str(gateways)
    command = [sys.executable, "-m", "cluster.cli", "up"]
    if config_file is not None:
        command += ["--config", str(config_file)]
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, text=True,
        stderr=stack.enter_context((workdir / "up.log").open("w")),
    )
    def kill_if_running() -> None:
        if process.poll() is None:
            process.kill()

    stack.callback(kill_if_running)
    assert process.stdout is not None
    line = _first_line(process.stdout, READY_TIMEOUT_S)
    if not line.startswith("ready "):
        tail = (workdir / "up.log").read_text()[-3000:]
        raise RuntimeError(f"lendcore up did not become ready: {line!r}\n{tail}")
    return process, api_port, ops_port, time.monotonic() - started


def _delete_redis_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def _first_line(stream: IO[str], timeout_s: float) -> str:
    """The first line a child prints, or "" when it prints none within timeout_s."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return stream.readline()


def _trial_balance_ok(ops_port: int) -> bool:
    reply = httpx.get(
        f"http://127.0.0.1:{ops_port}/ops/ledger/trial-balance",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30,
    )
    body = reply.json()
    return reply.status_code == 200 and body["total_debit"] == body["total_credit"] > 0


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def run_bench(
    config_file: Path | None, *, quick: bool, loans: int | None, duration: float | None,
    product: str = "CASH_EI_12", nodes: int | None = None, gateways: int | None = None,
    connections: int = CONNECTIONS,
) -> int:
    BENCH_PRODUCT[0] = product
    loans_wanted = loans or (400 if quick else 20000)
    duration_s = duration or (3.0 if quick else 15.0)
    baseline, baseline_cpu_ms, baseline_idle = measure_baseline(duration_s, connections)
    print(f"baseline_rps={baseline.rps:.0f} baseline_cpu_ms={baseline_cpu_ms:.3f} "
          f"baseline_idle_pct={baseline_idle:.1f}", flush=True)
    with ExitStack() as stack:
        # Entered first, so removed last: embedded services must stop before their files go
        # (a Redis whose directory vanished cannot save, and then refuses to shut down).
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lendcore-bench-")))
        pg_dsn, redis_url = _services(stack, workdir)
        process, api_port, ops_port, ready_s = _start_system(
            stack, config_file, pg_dsn, redis_url, workdir, nodes, gateways
        )
        print(f"up_ready_s={ready_s:.1f}", flush=True)
        figures = uvloop.run(load_phases(
            api_port, ops_port, pg_dsn, loans_wanted, duration_s, connections))
        balanced = _trial_balance_ok(ops_port)
        exit_code = _stop(process)
    figures.update({
        "repay_ratio": figures["repay_rps"] / baseline.rps,
        "baseline_rps": baseline.rps,
        "baseline_cpu_ms": baseline_cpu_ms,
        "baseline_idle_pct": baseline_idle,
        "up_ready_s": ready_s,
    })
    order = ["repay_rps", "repay_ratio", "batch_rps", "p50_ms", "p99_ms", "p99_at_2000_ms",
             "paced_rps", "app_rps", "app_p99_ms", "app_not_approved", "baseline_rps",
             "baseline_cpu_ms", "up_ready_s", "loans", "seed_s", "errors", "commands_per_ray_call",
             "commands_per_commit", "wal_bytes_per_repay", "rows_per_repay",
             "idle_pct", "batch_idle_pct", "app_idle_pct", "baseline_idle_pct",
             *(f"cpu_ms_{role}" for role in CPU_ROLES),
             *(f"batch_cpu_ms_{role}" for role in CPU_ROLES),
             *(f"app_cpu_ms_{role}" for role in CPU_ROLES)]
    parts = [f"{k}={figures[k]:.3f}" if k == "repay_ratio" or "cpu_ms" in k
             else f"{k}={figures[k]:.1f}" if isinstance(figures[k], float)
             else f"{k}={figures[k]}" for k in order]
    parts += [f"balanced={str(balanced).lower()}", f"up_exit={exit_code}",
              f"product={product}", f"nodes={nodes or 1}", f"gateways={gateways or 1}",
              f"connections={connections}"]
    print(" ".join(parts), flush=True)
    healthy = figures["errors"] == 0 and figures["app_not_approved"] == 0
    return 0 if balanced and exit_code == 0 and healthy else 1


# ---- `lendcore bench --eod N`: bulk seed, then one end of day --------------------------------


def _shard_host_processes(root_pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    hosts = []
    for child in children:
        try:
            child.info = child.as_dict(["name", "cmdline"])  # what _role reads
            if _role(child) == "shard_hosts":
                hosts.append(child)
        except psutil.Error:
            continue
    return hosts


def shard_host_rss(root_pid: int) -> tuple[int, int]:
    """(bytes, processes): resident memory of the shard-host actors started by `root_pid`
    (`lendcore up`; its Ray workers are its descendants, so another system's are not)."""
    total = count = 0
    for host in _shard_host_processes(root_pid):
        try:
            total += host.memory_info().rss
            count += 1
        except psutil.Error:
            continue
    return total, count


RECOVERY_DEADLINE_S = 120.0


def measure_recovery(root_pid: int, api_port: int, sample_loan_ids: list[str]) -> float:
    """SIGKILL the biggest shard-host process (Ray restarts the actor, which reloads its
    shards from Postgres on the next call) and time until every sample loan, on every shard,
    is served again through the partner API."""
    hosts = _shard_host_processes(root_pid)
    if not hosts or not sample_loan_ids:
        raise RuntimeError("recovery: no shard-host process or no sample loan to read")
    victim = max(hosts, key=lambda p: p.memory_info().rss)
    client = PartnerClient(f"http://127.0.0.1:{api_port}", timeout_s=RECOVERY_DEADLINE_S)
    try:
        started = time.perf_counter()
        victim.kill()
        waiting = list(sample_loan_ids)
        while waiting:
            if time.perf_counter() - started > RECOVERY_DEADLINE_S:
                raise RuntimeError(f"recovery: {waiting} not served after "
                                   f"{RECOVERY_DEADLINE_S:.0f} s")
            waiting = [i for i in waiting if client.get(f"/v1/loans/{i}").status_code != 200]
            if waiting:
                time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        client.close()


def _ops_post(ops_port: int, path: str, body: dict[str, object] | None) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{ops_port}{path}", json=body,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=3600,
    )


def _time_outbox(
    ops_port: int, report: dict[str, Any], eod_done: float, figures: dict[str, object]
) -> bool:
    """End of day starts sending its SMS reminders and withholdings in the background once
    the date advanced; POST /ops/outbox/drain waits for that drain, then sends whatever is
    left. outbox_s: from the end of the run until nothing is pending."""
    drained = _ops_post(ops_port, "/ops/outbox/drain", None)
    outbox_s = time.perf_counter() - eod_done
    planned = report["reminders"]["planned"] + report["withholdings"]["planned"]
    figures.update({
        "eod_cases_opened": report["collections"]["cases_opened"],
        "eod_requests_planned": planned, "outbox_s": round(outbox_s, 2),
    })
    print(f"eod_cases_opened={figures['eod_cases_opened']} eod_requests_planned={planned} "
          f"outbox_s={outbox_s:.2f}", flush=True)
    sent = httpx.get(
        f"http://127.0.0.1:{ops_port}/ops/connector-requests",
        params={"created_on": report["business_date"], "limit": 1},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60,
    )
    if sent.status_code == 200:
        # seeded customers have no phone (no personal data is invented): their SMS fail
        # "no_phone"; withholdings go through the payment simulator and the shards
        print("outbox_results=" + ",".join(
            f"{c['kind']}:{c['status']}:{c['requests']}" for c in sent.json()["counts"]),
            flush=True)
    if drained.status_code != 200:
        print(f"outbox drain failed: HTTP {drained.status_code}: {drained.text[:500]}",
              flush=True)
    return drained.status_code == 200


def run_eod_bench(config_file: Path | None, loans: int) -> int:
    """Seed `loans` through POST /ops/seed on a fresh system, then time one POST /ops/eod.
    Prints seed_s, seed_loans_per_s, host_rss_bytes_per_loan, eod_s, eod_loans_per_s,
    eod_gl_summary_s (the daily GL summary step, part of eod_s), eod_loans_hot_pct (the
    share of loan rows Postgres rewrote in place, without a new index entry), recovery_s (a
    shard host SIGKILLed: until every sample loan is served again) and the trial balance
    check; exit code non-zero only when something failed."""
    figures: dict[str, object] = {"loans": loans}
    ok = True
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lendcore-bench-")))
        pg_dsn, redis_url = _services(stack, workdir)
        process, api_port, ops_port, ready_s = _start_system(
            stack, config_file, pg_dsn, redis_url, workdir
        )
        figures["up_ready_s"] = round(ready_s, 1)
        print(f"up_ready_s={ready_s:.1f}", flush=True)
        rss_before, hosts = shard_host_rss(process.pid)
        started = time.perf_counter()
        seeded = _ops_post(ops_port, "/ops/seed", {"loans": loans})
        seed_s = time.perf_counter() - started
        if seeded.status_code != 200 or seeded.json().get("loans") != loans:
            print(f"seed failed: HTTP {seeded.status_code}: {seeded.text[:500]}", flush=True)
            ok = False
        rss_after, _ = shard_host_rss(process.pid)
        figures.update({
            "seed_s": round(seed_s, 2), "seed_loans_per_s": round(loans / seed_s),
            "shard_hosts": hosts, "host_rss_before_mb": round(rss_before / 2**20),
            "host_rss_after_mb": round(rss_after / 2**20),
            "host_rss_bytes_per_loan": round((rss_after - rss_before) / loans),
        })
        print(" ".join(f"{k}={figures[k]}" for k in (
            "seed_s", "seed_loans_per_s", "host_rss_before_mb", "host_rss_after_mb",
            "host_rss_bytes_per_loan")), flush=True)
        eod_s = 0.0
        processed = 0
        if ok:
            updates_before = loan_updates(pg_dsn)
            cpu_before, pg_before = cpu_snapshot(), postgres_cpu_by_kind()
            started = time.perf_counter()
            eod = _ops_post(ops_port, "/ops/eod", {})
            eod_s = time.perf_counter() - started
            # CPU µs per loan closed, by process role: where the run's time goes
            eod_cpu = cpu_ms_per_request(cpu_before, cpu_snapshot(), loans)
            figures.update({f"eod_cpu_us_{role}": round(eod_cpu.get(role, 0.0) * 1000, 1)
                            for role in CPU_ROLES if role != "loadgen"})
            pg_cpu = cpu_ms_per_request(pg_before, postgres_cpu_by_kind(), loans)
            figures.update({f"eod_cpu_us_pg_{kind}": round(ms * 1000, 1)
                            for kind, ms in sorted(pg_cpu.items())})
            figures["eod_loans_hot_pct"] = hot_update_pct(pg_dsn, updates_before, loans)
            if eod.status_code == 200:
                processed = int(eod.json()["loans_processed"])
                steps = eod.json()["steps"]
                figures["eod_gl_summary_s"] = steps["gl_summary_s"]
                figures["eod_shards_s"] = round(steps["shards_s"], 2)
            else:
                print(f"eod failed: HTTP {eod.status_code}: {eod.text[:500]}", flush=True)
            ok = ok and eod.status_code == 200 and processed == loans
        rss_eod, _ = shard_host_rss(process.pid)
        figures.update({
            "eod_s": round(eod_s, 2), "eod_loans_per_s": round(processed / eod_s) if eod_s else 0,
            "eod_loans_processed": processed, "host_rss_after_eod_mb": round(rss_eod / 2**20),
        })
        print(f"eod_s={eod_s:.2f} eod_loans_per_s={figures['eod_loans_per_s']}", flush=True)
        if ok:
            ok = _time_outbox(ops_port, eod.json(), started + eod_s, figures)
        if ok:
            # A killed shard host owning loans / hosts loans: how long until it serves again.
            recovery_s = measure_recovery(
                process.pid, api_port, seeded.json().get("sample_loan_ids", []))
            figures.update({"recovery_s": round(recovery_s, 2),
                            "recovery_host_loans": loans // max(hosts, 1)})
            print(f"recovery_s={recovery_s:.2f} recovery_host_loans="
                  f"{figures['recovery_host_loans']}", flush=True)
        balanced = _trial_balance_ok(ops_port)
        exit_code = _stop(process)
    figures.update({"balanced": str(balanced).lower(), "up_exit": exit_code})
    print(" ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return 0 if ok and balanced and exit_code == 0 else 1
