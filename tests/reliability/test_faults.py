"""Faults under a steady stream of signed repayments (issue 12).

One system runs on a Postgres and a Redis of the test's own, each reached through a fault
proxy (faults.py). For each fault, while `RepaymentStream` retries every repayment with its
own idempotency key until it gets a definitive answer:
- 0 acknowledged repayments lost, 0 doubled (Postgres holds exactly the acknowledged ones);
- the trial balance balances and every loan reconciles with its journal;
- every HTTP attempt is answered within the request timeout (plus a margin), by the
  answer or by 503 with Retry-After;
- /readyz says not ready while the system cannot commit, when the fault lasts long enough
  to be seen, and ready again within 5 s of the fault's end;
- repayments succeed again within 5 s of the fault's end, with no restart by hand.
Each test prints one line of figures (`FAULT ...`), reported in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import redis
from factories import new_loan, ops_auth, reconciliation, trial_balance
from faults import (
    FAULT_LINES,
    OwnedServices,
    ReadinessSampler,
    RepaymentStream,
    StreamReport,
    free_port,
    repeat,
)
from integration_system import RunningSystem, system_settings

from cluster.config import PROJECT_ROOT
from loadtests.client import PartnerClient

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 5.0  # the system's [gateway] request_timeout_s in these tests
ANSWER_MARGIN_S = 1.5  # scheduling slack on this 2-core box on top of the request timeout
SERVE_AGAIN_S = 5.0  # the bound: serving again this soon after a fault ends
FAULT_EVERY_S = 2.0
FAULT_FOR_S = float(os.environ.get("LENDCORE_FAULT_SECONDS", "20"))
OUTAGE_S = 10.0  # a server stopped this long, then started again
PAUSE_S = 5.0  # CLIENT PAUSE
LOANS = 24
CONFIG = f"""
[gateway]
request_timeout_s = {REQUEST_TIMEOUT_S}
retry_deadline_s = {REQUEST_TIMEOUT_S - 1}
"""


@dataclass
class Target:
    """Where the load goes and where the test checks the outcome."""

    api_url: str
    ops_url: str
    admin_pg_dsn: str  # straight to Postgres, around any proxy
    loan_ids: list[str]


@dataclass
class Faulty:
    services: OwnedServices
    system: RunningSystem
    loan_ids: list[str]

    @property
    def target(self) -> Target:
        return Target(
            self.system.system.api_url, self.system.system.ops_url,
            self.services.admin_pg_dsn, self.loan_ids,
        )


@pytest.fixture(scope="module")
def faulty(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    services = OwnedServices().start()
    config = tmp_path_factory.mktemp("faults") / "faults.toml"
    config.write_text(CONFIG)
    try:
        settings = system_settings(
            services.pg_dsn, f"lendcore-faults-{uuid.uuid4().hex[:8]}:", config,
            LENDCORE_REDIS_URL=services.redis_url,
        )
        running = RunningSystem(settings, services.pg_dsn).start()
        try:
            client = running.client()
            try:
                loan_ids = [new_loan(client)["loan_id"] for _ in range(LOANS)]
            finally:
                client.close()
            yield Faulty(services, running, loan_ids)
        finally:
            running.stop()
    finally:
        services.close()


# ---- one fault, measured -----------------------------------------------------------------


@dataclass
class FaultOutcome:
    report: StreamReport
    lost: int
    doubled: int
    serving_again_s: float
    not_ready_seen: bool
    ready_again_s: float | None


def under_load(
    target: Target, name: str, fault: Callable[[], None],
    serve_again_s: float = SERVE_AGAIN_S,
) -> FaultOutcome:
    """Run `fault` (blocking until the fault is over) under the repayment stream; check
    and print what held."""
    stream = RepaymentStream(
        target.api_url, target.loan_ids, attempt_timeout_s=REQUEST_TIMEOUT_S + 20
    )
    with ReadinessSampler(target.api_url) as readiness, stream:
        _wait_for(lambda: stream.acknowledged_since(0) >= 20, 30, "the stream to get going")
        fault_started = time.monotonic()
        fault()
        fault_ended = time.monotonic()
        _wait_for(
            lambda: stream.first_success_after(fault_ended) is not None, 30,
            "a repayment to succeed after the fault",
        )
        time.sleep(2)  # a little steady traffic after the recovery
    report = stream.report()
    lost, doubled = _lost_and_doubled(target.admin_pg_dsn, stream)
    first = stream.first_success_after(fault_ended)
    assert first is not None
    ready_at = readiness.ready_again_at(fault_ended)
    outcome = FaultOutcome(
        report=report, lost=lost, doubled=doubled,
        serving_again_s=max(0.0, first - fault_ended),
        not_ready_seen=any(
            status != 200 for status in readiness.statuses_between(fault_started, fault_ended)
        ),
        ready_again_s=None if ready_at is None else max(0.0, ready_at - fault_ended),
    )
    line = (
        f"FAULT {name}: fault_s={fault_ended - fault_started:.1f} "
        f"sent={report.sent} acknowledged={report.acknowledged} lost={lost} "
        f"doubled={doubled} longest_answer_s={report.longest_answer_s:.2f} "
        f"no_http_answer={report.unanswered} serving_again_s={outcome.serving_again_s:.2f} "
        f"not_ready_seen={outcome.not_ready_seen} ready_again_s={_seconds(outcome.ready_again_s)} "
        f"statuses={report.statuses}"
    )
    print(line)
    FAULT_LINES.append(line)
    _check_common(target, outcome, serve_again_s)
    return outcome


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def _check_common(target: Target, outcome: FaultOutcome, serve_again_s: float) -> None:
    report = outcome.report
    assert report.gave_up == 0, "every request got a definitive answer"
    assert report.refused == {}, f"no definitive refusal of a valid repayment: {report.refused}"
    assert outcome.lost == 0 and outcome.doubled == 0
    assert report.longest_answer_s <= REQUEST_TIMEOUT_S + ANSWER_MARGIN_S, report
    assert outcome.serving_again_s <= serve_again_s, outcome
    assert outcome.ready_again_s is not None and outcome.ready_again_s <= serve_again_s, outcome
    with httpx.Client(base_url=target.ops_url, timeout=60) as ops:
        trial_balance(ops)  # asserts debits == credits
        reconciled = reconciliation(ops)
        assert reconciled["reconciled"] is True, reconciled["differences"][:5]


def _lost_and_doubled(admin_pg_dsn: str, stream: RepaymentStream) -> tuple[int, int]:
    """From Postgres itself (around the proxy): acknowledged repayments missing, and
    external references with more than one repayment, or committed though never
    acknowledged (every request ended with a definitive answer, so none should be)."""
    acknowledged = {r.external_ref: r.repayment_id for r in stream.repayments if r.status == 201}
    refs = [r.external_ref for r in stream.repayments]

    async def stored() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(admin_pg_dsn)
        try:
            return await conn.fetch(
                "SELECT external_ref, array_agg(repayment_id) AS ids FROM repayments"
                " WHERE partner_id = 'demo' AND external_ref = ANY($1::text[])"
                " GROUP BY external_ref", refs,
            )
        finally:
            await conn.close()

    rows = {row["external_ref"]: list(row["ids"]) for row in asyncio.run(stored())}
    lost = sum(1 for ref, rid in acknowledged.items() if rows.get(ref) != [rid])
    doubled = sum(len(ids) - 1 for ids in rows.values()) + sum(
        1 for ref in rows if ref not in acknowledged
    )
    return lost, doubled


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


# ---- the faults ---------------------------------------------------------------------------


def _terminate_backends(faulty: Faulty) -> None:
    async def terminate() -> None:
        conn = await asyncpg.connect(faulty.services.admin_pg_dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = 'lendcore' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()

    asyncio.run(terminate())


def _admin_redis(faulty: Faulty) -> redis.Redis:
    return redis.Redis.from_url(faulty.services.admin_redis_url, socket_timeout=5)


def _host_pids(faulty: Faulty) -> list[int]:
    view = faulty.system.run(faulty.system.system.cluster_view())
    return [int(host["pid"]) for host in view["hosts"] if "pid" in host]


def test_shard_host_killed(faulty: Faulty) -> None:
    turn = iter(range(1_000))

    def kill_one() -> None:
        pids = _host_pids(faulty)
        if pids:
            os.kill(pids[next(turn) % len(pids)], signal.SIGKILL)

    under_load(faulty.target, "shard host SIGKILL every 2 s", lambda: repeat(
        FAULT_EVERY_S, FAULT_FOR_S, kill_one))


def test_postgres_backends_terminated(faulty: Faulty) -> None:
    under_load(faulty.target, "pg_terminate_backend every 2 s", lambda: repeat(
        FAULT_EVERY_S, FAULT_FOR_S, lambda: _terminate_backends(faulty)))


def test_postgres_stopped_and_started(faulty: Faulty) -> None:
    ops_during_outage: list[httpx.Response] = []

    def outage() -> None:
        faulty.services.stop_postgres()
        try:
            time.sleep(OUTAGE_S / 2)
            with httpx.Client(base_url=faulty.target.ops_url, timeout=30) as ops:
                trial = ops.get("/ops/ledger/trial-balance", headers=ops_auth())
                ops_during_outage.append(trial)
            time.sleep(OUTAGE_S / 2)
        finally:  # the next tests need it back, whatever happened
            faulty.services.start_postgres()

    outcome = under_load(faulty.target, "Postgres stopped 10 s", outage)
    assert outcome.not_ready_seen, "/readyz said not ready while Postgres was down"
    [read] = ops_during_outage
    assert read.status_code == 503 and read.headers["retry-after"] == "1", read.text
    assert read.json()["error"]["code"] == "unavailable"


def test_redis_flushed(faulty: Faulty) -> None:
    client = _admin_redis(faulty)
    try:
        under_load(faulty.target, "Redis FLUSHDB every 2 s", lambda: repeat(
            FAULT_EVERY_S, FAULT_FOR_S, lambda: client.flushdb()))
    finally:
        client.close()


def test_redis_stopped_and_started(faulty: Faulty) -> None:
    def outage() -> None:
        faulty.services.stop_redis()
        try:
            time.sleep(OUTAGE_S)
        finally:
            faulty.services.start_redis()

    outcome = under_load(faulty.target, "Redis stopped 10 s", outage)
    assert outcome.not_ready_seen, "/readyz said not ready while Redis was down"


def test_redis_paused(faulty: Faulty) -> None:
    def pause() -> None:
        client = _admin_redis(faulty)
        try:
            client.client_pause(int(PAUSE_S * 1000))
        finally:
            client.close()
        time.sleep(PAUSE_S)

    under_load(faulty.target, "Redis CLIENT PAUSE 5 s", pause)


def test_network_to_postgres_cut(faulty: Faulty) -> None:
    proxy = faulty.services.pg_proxy
    assert proxy is not None
    under_load(faulty.target, "network to Postgres cut every 2 s", lambda: repeat(
        FAULT_EVERY_S, FAULT_FOR_S, proxy.cut))


def test_network_to_postgres_stalled(faulty: Faulty) -> None:
    proxy = faulty.services.pg_proxy
    assert proxy is not None

    def stall() -> None:
        proxy.stall(True)
        try:
            time.sleep(PAUSE_S)
        finally:
            proxy.stall(False)

    under_load(faulty.target, "network to Postgres stalled 5 s", stall)


def test_network_to_redis_cut(faulty: Faulty) -> None:
    proxy = faulty.services.redis_proxy
    assert proxy is not None
    under_load(faulty.target, "network to Redis cut every 2 s", lambda: repeat(
        FAULT_EVERY_S, FAULT_FOR_S, proxy.cut))


def test_network_to_redis_stalled(faulty: Faulty) -> None:
    proxy = faulty.services.redis_proxy
    assert proxy is not None

    def stall() -> None:
        proxy.stall(True)
        try:
            time.sleep(PAUSE_S)
        finally:
            proxy.stall(False)

    under_load(faulty.target, "network to Redis stalled 5 s", stall)




# ---- the gateway process killed and restarted --------------------------------------------

UP_READY_TIMEOUT_S = 120
# The throwaway Ray head of `lendcore up` runs without token authentication (test_up.py).
NO_RAY_TOKEN = {"RAY_AUTH_MODE": "disabled"}


class UpProcess:
    """`lendcore up` as a user runs it, on the test's own Postgres database and Redis."""

    def __init__(self, env: dict[str, str], config: Path, log_path: Path) -> None:
        self.env = env
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self.spawned: list[psutil.Process] = []  # every process it started, to stop by pid

    def start(self) -> tuple[str, str]:
        """Start it; (api url, ops url) once it printed its `ready` line."""
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", "up", "--config", str(self.config)],
                cwd=PROJECT_ROOT, env=self.env,
                stdout=subprocess.PIPE, stderr=log, text=True,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line.startswith("ready api="), f"{line!r}\n{self.log_path.read_text()[-3000:]}"
        self.spawned.extend(psutil.Process(self.process.pid).children(recursive=True))
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        return fields["api"], fields["ops"]

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        for child in self.spawned:  # Ray's processes of a killed driver, if any outlived it
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.fixture(scope="module")
def gateway_target(
    faulty: Faulty, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Target, UpProcess]]:
    """`lendcore up` on a database of its own in the test's Postgres (the in-process
    system keeps the `lendcore` one) and a key prefix of its own in the test's Redis."""
    services = faulty.services
    admin_dsn = services.admin_pg_dsn.replace("/lendcore?", "/lendcore_up?")
    asyncio.run(_create_database(services.admin_pg_dsn, "lendcore_up"))
    directory = tmp_path_factory.mktemp("up")
    config = directory / "faults.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDCORE_")}
    env.update({
        "LENDCORE_PG_DSN": admin_dsn,
        "LENDCORE_REDIS_URL": services.admin_redis_url,
        "LENDCORE_REDIS_PREFIX": "lendcore-up:",
        "LENDCORE_DATA_DIR": str(directory / "data"),
        "LENDCORE_API_PORT": str(free_port()),
        "LENDCORE_OPS_PORT": str(free_port()),
        **NO_RAY_TOKEN,
    })
    up = UpProcess(env, config, directory / "up.log")
    try:
        api_url, ops_url = up.start()
        client = PartnerClient(api_url)
        try:
            loan_ids = [new_loan(client)["loan_id"] for _ in range(LOANS // 3)]
        finally:
            client.close()
        yield Target(api_url, ops_url, admin_dsn, loan_ids), up
    finally:
        up.stop()


async def _create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def test_gateway_killed_and_restarted(gateway_target: tuple[Target, UpProcess]) -> None:
    """SIGKILL of the `lendcore up` process (its Ray driver: its shard hosts go with it)
    with requests in flight, then the same command again. Serving again takes a whole
    start (Ray, hosts loading their shards), hence its own bound."""
    target, up = gateway_target

    def kill_and_restart() -> None:
        up.kill()
        up.start()

    under_load(target, "gateway process SIGKILL + restart", kill_and_restart,
               serve_again_s=UP_READY_TIMEOUT_S)
