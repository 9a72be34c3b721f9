"""Scale-out (issue 15): `lendcore up --nodes 3` starts a real local Ray cluster of three
nodes, and `[gateway] processes = 2` serves the partner API from two processes on one port
(SO_REUSEPORT). Under a stream of signed repayments through that port, the extra gateway
process is SIGKILLed: the other keeps serving, the primary starts a new one, and Postgres
holds exactly the acknowledged repayments (none lost, none doubled), with the books
balanced. Then SIGTERM stops everything, nodes included, with exit code 0.

Runs `lendcore up` as a user does (a subprocess) on a fresh database of the machine's
Postgres and a key prefix of its own in Redis.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
from conftest_redis import REDIS_URL, delete_keys_with_prefix
from factories import new_loan, trial_balance
from faults import RepaymentStream
from integration_system import create_database, drop_database

from cluster.config import PROJECT_ROOT
from loadtests.client import PartnerClient

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 180
NODES = 3
LOANS = 6
ADMIN = {"Authorization": "Bearer dev-admin-token-change-me"}
PROCESS_INFO = re.compile(r'^lendcore_gateway_process_info\{pid="(\d+)",role="(\w+)"\} 1\.0$',
                          re.MULTILINE)
PARTNER_201 = re.compile(
    r'^lendcore_http_requests_total\{api="partner",route="[^"]+",status="201"\} ([0-9.e+]+)$',
    re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Up:
    """`lendcore up --nodes 3` with two gateway processes, on a database of its own."""

    def __init__(self, log_path: Path) -> None:
        self.db_name, self.dsn = create_database()
        self.prefix = f"lendcore-test-{uuid.uuid4().hex}:"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LENDCORE_") and k != "RAY_AUTH_MODE"}
        env.update({
            "LENDCORE_PG_DSN": self.dsn, "LENDCORE_REDIS_URL": REDIS_URL,
            "LENDCORE_REDIS_PREFIX": self.prefix,
            "LENDCORE_DATA_DIR": str(log_path.parent / "data"),
            "LENDCORE_API_PORT": str(_free_port()), "LENDCORE_OPS_PORT": str(_free_port()),
            "LENDCORE_GATEWAY_PROCESSES": "2",
        })
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", "up", "--nodes", str(NODES)],
                cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
            )
        self.spawned: list[psutil.Process] = []

    def wait_ready(self) -> tuple[str, str]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line.startswith("ready api="), f"{line!r}\n{self.log_path.read_text()[-3000:]}"
        self.spawned = psutil.Process(self.process.pid).children(recursive=True)
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        return fields["api"], fields["ops"]

    def extra_gateways(self) -> list[psutil.Process]:
        """The `lendcore gateway` processes the primary runs now."""
        found = []
        for child in psutil.Process(self.process.pid).children():
            try:
                if "cluster.cli gateway" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        for child in self.spawned:  # only if a failed test left them: by pid, ours only
            if child.is_running():
                child.kill()
        drop_database(self.db_name)
        delete_keys_with_prefix(self.prefix)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path / "up.log")
    try:
        yield running
    finally:
        running.close()


def _metrics_by_pid(api_url: str, pids_wanted: int, tries: int = 60) -> dict[int, str]:
    """/metrics of each gateway process behind the port: a new connection per scrape (the
    kernel picks the process per connection), until `pids_wanted` distinct ones answered."""
    seen: dict[int, str] = {}
    for _ in range(tries):
        text = httpx.get(f"{api_url}/metrics", timeout=10).text
        match = PROCESS_INFO.search(text)
        assert match is not None, "every gateway process names itself in /metrics"
        seen[int(match.group(1))] = text
        if len(seen) >= pids_wanted:
            break
    return seen


def _partner_201s(metrics: str) -> float:
    return sum(float(value) for value in PARTNER_201.findall(metrics))


def _served_by_each(api_url: str, loan_id: str, tries: int = 40) -> dict[int, float]:
    """Partner 201s per gateway process, after repayments on new connections until each of
    the two processes has answered one: the kernel picks the process per connection, so the
    stream's few keep-alive connections may all have landed on one of them (1 in 32 runs
    with six)."""
    served: dict[int, float] = {}
    for _ in range(tries):
        served = {pid: _partner_201s(text) for pid, text in _metrics_by_pid(api_url, 2).items()}
        if len(served) == 2 and all(count > 0 for count in served.values()):
            break
        client = PartnerClient(api_url)  # a connection of its own
        try:
            reply = client.post(f"/v1/loans/{loan_id}/repayments", {
                "amount": 1, "external_ref": f"spread-{uuid.uuid4().hex}", "kind": "regular"})
            assert reply.status_code == 201, reply.text
        finally:
            client.close()
    return served


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _lost_and_doubled(dsn: str, stream: RepaymentStream) -> tuple[int, int]:
    """Acknowledged repayments missing from Postgres, and references stored more than once
    or stored without having been acknowledged (every request got a definitive answer)."""
    acknowledged = {r.external_ref: r.repayment_id for r in stream.repayments if r.status == 201}
    refs = [r.external_ref for r in stream.repayments]

    async def stored() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(
                "SELECT external_ref, array_agg(repayment_id) AS ids FROM repayments"
                " WHERE partner_id = 'demo' AND external_ref = ANY($1::text[])"
                " GROUP BY external_ref", refs)
        finally:
            await conn.close()

    rows = {row["external_ref"]: list(row["ids"]) for row in asyncio.run(stored())}
    lost = sum(1 for ref, rid in acknowledged.items() if rows.get(ref) != [rid])
    doubled = sum(len(ids) - 1 for ids in rows.values()) + sum(
        1 for ref in rows if ref not in acknowledged)
    return lost, doubled


def test_three_nodes_two_gateway_processes_and_one_killed(up: Up) -> None:
    api_url, ops_url = up.wait_ready()
    assert httpx.get(f"{api_url}/readyz", timeout=10).status_code == 200
    ops = httpx.Client(base_url=ops_url, headers=ADMIN, timeout=60)

    # Three alive Ray nodes, each carrying its lendcore_node_<i> resource (0 = the head).
    nodes = ops.get("/ops/cluster").json()["nodes"]
    alive = [n for n in nodes if n["alive"]]
    assert len(alive) == NODES, nodes
    indices = sorted(int(name.rsplit("_", 1)[1]) for n in alive for name in n["resources"]
                     if name.startswith("lendcore_node_"))
    assert indices == list(range(NODES)), nodes

    # Two processes answer on the one port: the primary and its one extra process.
    extras = up.extra_gateways()
    assert len(extras) == 1, extras
    first_extra = extras[0].pid
    by_pid = _metrics_by_pid(api_url, 2)
    assert set(by_pid) == {up.process.pid, first_extra}, (set(by_pid), up.process.pid)

    client = PartnerClient(api_url)
    try:
        loan_ids = [new_loan(client)["loan_id"] for _ in range(LOANS)]
    finally:
        client.close()
    stream = RepaymentStream(api_url, loan_ids, workers=6, attempt_timeout_s=30)
    with stream:
        _wait_for(lambda: stream.acknowledged_since(0) >= 60, 60, "the stream to get going")
        served = _served_by_each(api_url, loan_ids[0])
        assert len(served) == 2 and all(count > 0 for count in served.values()), served

        # SIGKILL the extra process: the primary keeps serving meanwhile; a new one starts.
        killed_at = time.monotonic()
        os.kill(first_extra, signal.SIGKILL)
        _wait_for(lambda: stream.acknowledged_since(killed_at) >= 20, 10,
                  "repayments acknowledged after the kill")
        _wait_for(lambda: any(p.pid != first_extra for p in up.extra_gateways()), 30,
                  "the primary to start another gateway process")
        replacement = next(p.pid for p in up.extra_gateways() if p.pid != first_extra)
        up.spawned.append(psutil.Process(replacement))
        _wait_for(lambda: replacement in _metrics_by_pid(api_url, 2, tries=10), 60,
                  "the new gateway process to answer on the port")
        after = stream.acknowledged_since(killed_at)
        _wait_for(lambda: stream.acknowledged_since(killed_at) >= after + 40, 30,
                  "repayments through both processes again")
    report = stream.report()
    assert report.gave_up == 0, report
    assert report.refused == {}, report
    assert report.acknowledged == report.sent, report
    lost, doubled = _lost_and_doubled(up.dsn, stream)
    assert (lost, doubled) == (0, 0), (lost, doubled, report)
    trial_balance(ops)  # asserts debits == credits
    ops.close()
    print(f"SCALE-OUT nodes={NODES} gateways=2 sent={report.sent} "
          f"acknowledged={report.acknowledged} lost={lost} doubled={doubled} "
          f"no_http_answer={report.unanswered} statuses={report.statuses}")

    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(120) == 0, up.log_path.read_text()[-3000:]
    time.sleep(1)
    left = [c.pid for c in up.spawned
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left running after exit: {left}"


def test_gateway_command_needs_a_running_system(tmp_path: Path) -> None:
    """`lendcore gateway` only joins: without a Ray address, Postgres and Redis it says what
    is missing (exit 2) and starts nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDCORE_")}
    result = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "gateway"], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "LENDCORE_RAY_ADDRESS" in result.stderr and "LENDCORE_PG_DSN" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
