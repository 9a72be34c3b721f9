"""`lendcore up` as a user runs it: a subprocess, its `ready` line, real requests, and a
clean exit 0 on SIGTERM; once with embedded Postgres and Redis, once with given ones. Its
log says how long the start took from the command's start, and (a cluster of its own keeps
Ray's token authentication) carries no token-authentication warning."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import REDIS_URL, create_database, drop_database
from conftest_redis import delete_keys_with_prefix
from factories import application

from cluster.config import PROJECT_ROOT
from loadtests.client import PartnerClient

READY_TIMEOUT_S = 120
# A Ray cluster with token authentication needs its token given to every driver (Ray's
# RAY_AUTH_TOKEN); the test's throwaway head runs without, and so must its driver.
NO_RAY_TOKEN = {"RAY_AUTH_MODE": "disabled"}
ADMIN = {"Authorization": "Bearer dev-admin-token-change-me"}
READY_IN = re.compile(r"ready in (\d+\.\d) s from the command's start")
RAY_TOKEN_WARNING = "Token authentication is enabled"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(data_dir: Path, **given: str) -> dict[str, str]:
    # Ray's own authentication mode as a new user has it (unset), unless a test gives one.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LENDCORE_") and k != "RAY_AUTH_MODE"}
    env.update({
        "LENDCORE_DATA_DIR": str(data_dir),
        "LENDCORE_API_PORT": str(_free_port()),
        "LENDCORE_OPS_PORT": str(_free_port()),
        **given,
    })
    return env


def _run_up_and_use_it(env: dict[str, str], log_path: Path, own_ray: bool = True) -> None:
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "up"], cwd=PROJECT_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        waited_s = time.monotonic() - started
        assert line.startswith("ready api=http://"), f"{line!r}\n{log_path.read_text()[-3000:]}"
        assert waited_s < READY_TIMEOUT_S
        _check_start_log(_wait_for_log(log_path, READY_IN), waited_s)
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        api, ops = fields["api"], fields["ops"]
        assert httpx.get(f"{api}/readyz").status_code == 200
        assert httpx.get(f"{ops}/healthz").status_code == 200
        client = PartnerClient(api)
        applied = client.post("/v1/applications", application())
        assert applied.status_code == 201 and applied.json()["status"] == "approved"
        booked = client.post("/v1/loans", {"application_id": applied.json()["application_id"]})
        assert booked.status_code == 201
        client.close()
        date = httpx.get(f"{ops}/ops/business-date", headers=ADMIN)
        assert date.status_code == 200 and "business_date" in date.json()
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()[-3000:]
        time.sleep(0.5)
        if own_ray:  # a joined cluster's processes are not ours to stop
            alive = [
                c.pid for c in children
                if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
            ]
            assert not alive, f"processes left running after exit: {alive}"
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_up_with_embedded_postgres_and_redis(tmp_path: Path, embedded_tmp: Path) -> None:
    data_dir = embedded_tmp / "data"
    _run_up_and_use_it(_environment(data_dir), tmp_path / "up.log")
    assert (data_dir / "pg").is_dir() and (data_dir / "redis").is_dir()
    # Second start on the same data: the schema is not applied twice, state survives.
    _run_up_and_use_it(_environment(data_dir), tmp_path / "up2.log")


@pytest.mark.slow
def test_up_with_given_postgres_and_redis(tmp_path: Path) -> None:
    name, dsn = create_database()
    prefix = f"lendcore-test-{uuid.uuid4().hex}:"
    try:
        env = _environment(
            tmp_path / "data", LENDCORE_PG_DSN=dsn, LENDCORE_REDIS_URL=REDIS_URL,
            LENDCORE_REDIS_PREFIX=prefix,
        )
        _run_up_and_use_it(env, tmp_path / "up.log")
        assert not (tmp_path / "data" / "pg").exists(), "no embedded Postgres when one is given"
    finally:
        drop_database(name)
        delete_keys_with_prefix(prefix)


@pytest.mark.slow
def test_up_joins_an_existing_ray_cluster(tmp_path: Path) -> None:
    """LENDCORE_RAY_ADDRESS: the shard hosts run in a Ray cluster started elsewhere."""
    port = _free_port()
    ray_cli = Path(sys.executable).parent / "ray"
    ray_dir = Path(tempfile.mkdtemp(prefix="lc-ray-"))  # Ray's socket paths must be short
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1",
         f"--temp-dir={ray_dir}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "ray.log").open("w"),
        env={**os.environ, **NO_RAY_TOKEN},
    )
    name, dsn = create_database()
    prefix = f"lendcore-test-{uuid.uuid4().hex}:"
    try:
        _wait_for_port(port)
        env = _environment(
            tmp_path / "data", LENDCORE_PG_DSN=dsn, LENDCORE_REDIS_URL=REDIS_URL,
            LENDCORE_REDIS_PREFIX=prefix, LENDCORE_RAY_ADDRESS=f"127.0.0.1:{port}",
            **NO_RAY_TOKEN,
        )
        _run_up_and_use_it(env, tmp_path / "up.log", own_ray=False)
        assert head.poll() is None, "the joined cluster outlives lendcore"
    finally:
        head.terminate()
        head.wait(60)
        shutil.rmtree(ray_dir, ignore_errors=True)
        drop_database(name)
        delete_keys_with_prefix(prefix)


def _wait_for_log(log_path: Path, pattern: re.Pattern[str], timeout_s: float = 10) -> str:
    """The log once a line matches (it is written just after the `ready` line)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if pattern.search(text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"no {pattern.pattern!r} in the log:\n{log_path.read_text()[-3000:]}")


def _check_start_log(log: str, waited_s: float) -> None:
    """`ready in N s` counts from the start of the command: the whole wait this test saw
    (the process began just after the test's clock started; 1 s for the pipe and the log),
    not only the system's start after the services and Ray."""
    match = READY_IN.search(log)
    assert match is not None
    ready_in_s = float(match.group(1))
    assert waited_s - 1.0 <= ready_in_s <= waited_s + 0.1, (ready_in_s, waited_s)
    assert "(process start to CLI" in log and "ray " in log
    assert RAY_TOKEN_WARNING not in log, "Ray's token warning is printed at every start"


def _wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout_s} s")


def test_up_refuses_a_broken_chart_of_accounts_before_starting_anything(tmp_path: Path) -> None:
    """A chart missing a role is a one-line configuration error and exit 2: no service,
    no Ray, no traceback."""
    chart = (PROJECT_ROOT / "config" / "chart_of_accounts.toml").read_text()
    broken = tmp_path / "chart.toml"
    broken.write_text(chart.replace('role = "fee_income"', 'role = "fee_incme"'))
    config = tmp_path / "broken.toml"
    config.write_text(f'[paths]\nchart_file = "{broken}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "up", "--config", str(config)],
        cwd=PROJECT_ROOT, env=_environment(tmp_path / "data"), capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "configuration error" in result.stderr
    assert "unknown role 'fee_incme'" in result.stderr
    assert "missing roles: fee_income" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists(), "nothing may start before the config is valid"
