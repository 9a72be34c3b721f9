"""Extra gateway processes: more partner-API processes on the same port, each its own Ray
driver, sharing nothing with the others but Redis and Postgres.

`[gateway] processes = K` (`LENDCORE_GATEWAY_PROCESSES`): `lendcore up` (the primary) binds
the partner port itself with SO_REUSEPORT and hands the bound socket to uvicorn, then starts
K − 1 processes of `lendcore gateway` (`ExtraGateways`), each of which binds the same port
with SO_REUSEPORT, so the kernel spreads new connections over the K processes. Each extra
process joins the primary's Ray cluster as a driver (`LENDCORE_RAY_ADDRESS`) and routes by
the shard map in Postgres exactly as the primary does (cluster/map_router.py: the hosts
are found by the Ray names the map gives; its own router, Redis and Postgres clients, rate
limiter and connector breakers). It serves the
partner API only: the operator API, the end-of-day scheduler, the outbox drain, webhook
delivery and the dashboard's sampler stay in the primary (`System(gateway_only=True)`).

`lendcore gateway` also runs on its own, e.g. on another machine of the Ray cluster
(docs/operations.md "Several machines"): it needs `LENDCORE_RAY_ADDRESS`, `LENDCORE_PG_DSN`
and `LENDCORE_REDIS_URL` (it never starts embedded services), and the Ray namespace of the
system (`--namespace`, default `lendcore`, where `lendcore up` names its actors).

The primary restarts an extra process that exits while it runs (after `RESTART_PAUSE_S`),
and stops them all (SIGTERM, they drain like `lendcore up`) before it stops itself. An
extra process started by the primary exits by itself when the primary is gone
(`LENDCORE_GATEWAY_PARENT_PID`), so a SIGKILLed primary leaves no gateway behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import socket
import subprocess  # nosec B404  # starts our own CLI (sys.executable -m cluster.cli), no shell
import sys
from pathlib import Path
from typing import IO

import ray
import uvloop
from prometheus_client import Gauge

from actors.heap import freeze_startup_heap
from cluster.config import PROJECT_ROOT, ConfigError, Settings, load_settings
from cluster.system import System

log = logging.getLogger("lendcore.gateway_process")

READY_TIMEOUT_S = 120.0  # an extra process must print its `ready` line within this
STOP_TIMEOUT_S = 30.0  # an extra process must exit this long after SIGTERM, else SIGKILL
RESTART_PAUSE_S = 1.0  # before an extra process that exited is started again
PARENT_POLL_S = 1.0
PARENT_PID_VARIABLE = "LENDCORE_GATEWAY_PARENT_PID"

GATEWAY_PROCESS = Gauge(
    "lendcore_gateway_process_info",
    "1 for the process that answered this scrape: its pid and role (primary: `lendcore up`; "
    "extra: `lendcore gateway`)",
    ["pid", "role"],
)


def mark_process(role: str) -> None:
    """Name this process in /metrics (a scrape through the shared port reaches one of the
    gateway processes: this says which)."""
    GATEWAY_PROCESS.labels(pid=str(os.getpid()), role=role).set(1)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT, for uvicorn's `serve(sockets)`.
    Every process that binds the port this way gets its own accept queue and the kernel
    spreads new connections over them; a process that binds it without the option (any
    other program) makes this fail with EADDRINUSE, as it should. It is bound, not
    listening: the kernel hands it connections only once uvicorn serves it (asyncio's
    server calls listen), so a process still starting takes no connection it would leave
    waiting (or reset, were its start to fail)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# ---- `lendcore gateway`: one extra process -----------------------------------------------


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    system = System(settings, settings.storage.pg_dsn, settings.redis.url, gateway_only=True)
    system.api_socket = reuseport_socket(settings.gateway.api_host, settings.gateway.api_port)
    watcher = asyncio.create_task(_watch_parent(stop))
    mark_process("extra")
    try:
        start = asyncio.create_task(system.start())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            start.result()
            while not system.ready() and not stop.is_set():
                await asyncio.sleep(0.1)
            if not stop.is_set():
                log.info("gateway heap: %d start-up objects frozen", freeze_startup_heap())
                print(f"ready api={system.api_url} pid={os.getpid()}", flush=True)
                log.info("gateway process %d serving %s, routing by shard map version %s",
                         os.getpid(), system.api_url, system.router and system.router.map_version)
            await stopper
        else:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
    finally:
        watcher.cancel()
        log.info("gateway process %d stopping: draining requests", os.getpid())
        await system.stop()


async def _watch_parent(stop: asyncio.Event) -> None:
    """Set `stop` when the `lendcore up` that started this process is gone."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent:
        return
    while os.getppid() == int(parent):
        await asyncio.sleep(PARENT_POLL_S)
    log.warning("the lendcore up process %s is gone: stopping", parent)
    stop.set()


def run_gateway(config_file: Path | None, namespace: str) -> int:
    """`lendcore gateway`: serve the partner API in this process; exit 0 on SIGINT/SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(config_file)
        missing = [name for name, value in (
            ("LENDCORE_RAY_ADDRESS (cluster.ray_address)", settings.cluster.ray_address),
            ("LENDCORE_PG_DSN (storage.pg_dsn)", settings.storage.pg_dsn),
            ("LENDCORE_REDIS_URL (redis.url)", settings.redis.url),
        ) if not value]
        if missing:
            raise ConfigError("lendcore gateway joins a running system and needs "
                              + ", ".join(missing))
    except ConfigError as error:
        print(f"lendcore: configuration error: {error}", file=sys.stderr, flush=True)
        return 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=settings.cluster.ray_address, namespace=namespace,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        uvloop.run(_serve(settings))
    except RuntimeError as error:  # e.g. no shard map yet: the primary has not started
        print(f"lendcore gateway: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        ray.shutdown()
    log.info("gateway process %d stopped", os.getpid())
    return 0


# ---- the primary's side: start, watch and stop the extra processes ------------------------


class ExtraGateways:
    """The `processes − 1` extra gateway processes of a `lendcore up`."""

    def __init__(self, count: int, config_file: Path | None, env: dict[str, str],
                 namespace: str, log_dir: Path | None = None) -> None:
        self.count = count
        self._command = [sys.executable, "-m", "cluster.cli", "gateway",
                         "--namespace", namespace]
        if config_file is not None:
            self._command += ["--config", str(config_file)]
        self._env = {**env, PARENT_PID_VARIABLE: str(os.getpid())}
        self._log_dir = log_dir
        self.processes: list[subprocess.Popen[str]] = []
        self.restarts = 0
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None

    @staticmethod
    def environment(settings: Settings, pg_dsn: str, redis_url: str, ray_address: str,
                    api_port: int) -> dict[str, str]:
        """What an extra process is told: the primary's services (embedded ones included),
        its Ray cluster and the port it actually bound (port 0 in config means any)."""
        env = dict(os.environ)
        env.update({
            "LENDCORE_PG_DSN": pg_dsn, "LENDCORE_REDIS_URL": redis_url,
            "LENDCORE_RAY_ADDRESS": ray_address, "LENDCORE_API_PORT": str(api_port),
            "LENDCORE_REDIS_PREFIX": settings.redis.key_prefix,
        })
        env.pop("LENDCORE_LOCAL_NODES", None)  # joins the cluster; never starts one
        env.pop("LENDCORE_GATEWAY_PROCESSES", None)
        return env

    def _spawn(self, index: int) -> subprocess.Popen[str]:
        stderr: IO[str] | None = None
        if self._log_dir is not None:
            stderr = (self._log_dir / f"gateway-{index}.log").open("a")
        # Our own CLI with fixed arguments, no shell.
        process = subprocess.Popen(  # nosec B603
            self._command, cwd=PROJECT_ROOT, env=self._env, stdout=subprocess.PIPE,
            stderr=stderr, text=True,
        )
        if stderr is not None:
            stderr.close()  # the child holds its own descriptor
        return process

    async def start(self) -> None:
        """Start every extra process and wait for each one's `ready` line."""
        self.processes = [self._spawn(i) for i in range(self.count)]
        await asyncio.gather(*(asyncio.to_thread(_wait_ready, p) for p in self.processes))
        self._watcher = asyncio.create_task(self._watch(), name="extra-gateways")

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def _watch(self) -> None:
        """Start again an extra process that exited while the primary runs."""
        while not self._stopping:
            await asyncio.sleep(RESTART_PAUSE_S)
            for index, process in enumerate(self.processes):
                if self._stopping or process.poll() is None:
                    continue
                log.warning("gateway process %d exited (code %s); starting another",
                            process.pid, process.returncode)
                self.restarts += 1
                replacement = self._spawn(index)
                self.processes[index] = replacement
                try:
                    await asyncio.to_thread(_wait_ready, replacement)
                except RuntimeError as exc:
                    log.error("%s", exc)

    async def stop(self) -> None:
        """SIGTERM every extra process (each drains its requests), SIGKILL what remains."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(asyncio.to_thread(_wait_exit, p) for p in self.processes))


def _wait_ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = _first_line(process.stdout, READY_TIMEOUT_S)
    if not line.startswith("ready "):
        raise RuntimeError(
            f"gateway process {process.pid} did not become ready (exit code {process.poll()}); "
            "see its log")


def _wait_exit(process: subprocess.Popen[str]) -> None:
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("gateway process %d did not stop within %s s; killing it",
                    process.pid, STOP_TIMEOUT_S)
        process.kill()
        process.wait(STOP_TIMEOUT_S)


def _first_line(stream: IO[str], timeout_s: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return stream.readline()
