"""`lendcore up`: services (given or embedded), Ray, shard hosts, both gateways; clean exit.

Prints exactly one line `ready api=... ops=...` on stdout once /readyz would answer 200
(how long that took, counted from the start of the command, goes to the log on stderr), and
on SIGINT/SIGTERM drains (stops accepting, finishes in-flight requests, stops the hosts) and
exits 0. `--nodes N` starts a local Ray cluster of N nodes (cluster/bootstrap.py), stopped
with it; `[gateway] processes` > 1 starts and stops the extra partner-API processes
(cluster/gateway_process.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import ray
import uvloop

from actors.heap import freeze_startup_heap
from cluster.bootstrap import gcs_address, start_ray, stop_ray
from cluster.config import ConfigError, Settings, load_partner_merchants, load_settings
from cluster.gateway_process import ExtraGateways, mark_process, reuseport_socket
from cluster.services import EmbeddedService, start_embedded_postgres, start_embedded_redis
from cluster.system import System
from lending.chart import ChartError, load_chart
from lending.products import Product, ProductError, load_catalog
from lending.riskbook import RiskBookError, load_risk_book

log = logging.getLogger("lendcore.up")
READY_POLL_S = 0.1  # while a dependency is still down after the start, how often to look


def seconds_since_process_start() -> float:
    """Seconds since the kernel started this process: the user's command, since the
    `lendcore` wrapper execs into it (Python's start-up and imports included). Field 22 of
    /proc/self/stat is the start in clock ticks since boot, the clock of CLOCK_BOOTTIME."""
    after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started_ticks = int(after_name[19])  # field 22; the fields after the name start at 3
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")


class StartupPhases:
    """How long each step of the start took, for the log's `ready in` line."""

    def __init__(self) -> None:
        self.durations: list[tuple[str, float]] = []
        self._last = seconds_since_process_start()
        self.durations.append(("process start to CLI", self._last))

    def done(self, phase: str) -> None:
        now = seconds_since_process_start()
        self.durations.append((phase, now - self._last))
        self._last = now

    def ready_line(self) -> str:
        steps = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.durations)
        return f"ready in {seconds_since_process_start():.1f} s from the command's start ({steps})"


def resolve_services(settings: Settings) -> tuple[str, str, list[EmbeddedService]]:
    """Postgres and Redis from config/env when given, else embedded under the data dir."""
    started: list[EmbeddedService] = []
    data_dir = Path(settings.paths.data_dir).resolve()
    pg_dsn = settings.storage.pg_dsn
    if not pg_dsn:
        service = start_embedded_postgres(data_dir)
        started.append(service)
        pg_dsn = service.url
        log.info("embedded postgres at %s", pg_dsn)
    redis_url = settings.redis.url
    if not redis_url:
        service = start_embedded_redis(data_dir)
        started.append(service)
        redis_url = service.url
        log.info("embedded redis at %s", redis_url)
    return pg_dsn, redis_url, started


async def serve(settings: Settings, pg_dsn: str, redis_url: str, phases: StartupPhases,
                config_file: Path | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    system = System(settings, pg_dsn, redis_url)
    extras: ExtraGateways | None = None
    if settings.gateway.processes > 1:
        # Bound here with SO_REUSEPORT so that the extra processes can bind it too
        # (cluster/gateway_process.py); with one process uvicorn binds it as before.
        system.api_socket = reuseport_socket(settings.gateway.api_host,
                                             settings.gateway.api_port)
    mark_process("primary")
    start = asyncio.create_task(system.start())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if start.done():
        start.result()
        while not system.ready() and not stop.is_set():  # /readyz would answer 200 now
            await asyncio.sleep(READY_POLL_S)
        log.info("gateway heap: %d start-up objects frozen", freeze_startup_heap())
        if settings.gateway.processes > 1 and not stop.is_set():
            phases.done("system")
            extras = ExtraGateways(
                settings.gateway.processes - 1, config_file,
                ExtraGateways.environment(settings, pg_dsn, redis_url, gcs_address(),
                                          int(system.api_url.rsplit(":", 1)[1])),
                ray.get_runtime_context().namespace,
            )
            try:
                await extras.start()
            except RuntimeError:
                await extras.stop()
                await system.stop()
                raise
            phases.done(f"{extras.count} extra gateway processes")
            log.info("gateway processes on the partner port: %d (this one) and %s",
                     os.getpid(), extras.pids())
        if not stop.is_set():
            if extras is None:
                phases.done("system")
            # stdout carries the one `ready` line scripts wait for (API.md); the rest is log.
            print(f"ready api={system.api_url} ops={system.ops_url}", flush=True)
            log.info("%s", phases.ready_line())
        await stopper
    else:
        start.cancel()
    log.info("stopping: draining requests and shard hosts")
    if extras is not None:
        await extras.stop()  # first: their requests need the shard hosts
    await system.stop()


def check_config_files(settings: Settings) -> None:
    """Load every configuration file the system needs, before any service starts."""
    load_chart(settings.resolve_path(settings.paths.chart_file))
    catalog = load_catalog(settings.resolve_path(settings.paths.products_dir),
                           settings.risk.apr_cap_bps)
    check_compensation_dpd(catalog.latest(), settings.servicing.non_accrual_dpd)
    load_risk_book(settings.resolve_path(settings.paths.risk_dir))
    load_partner_merchants(settings.resolve_path(settings.paths.partners_file))


def check_compensation_dpd(products: list[Product], non_accrual_dpd: int) -> None:
    """A guarantor compensates on-balance receivables (lending.funding.compensate): its
    compensation DPD must come before the loan goes non-accrual."""
    for product in products:
        terms = product.guarantee
        if terms is not None and terms.compensation_dpd > non_accrual_dpd:
            raise ProductError(
                f"product {product.code} v{product.version}: guarantee compensation_dpd "
                f"{terms.compensation_dpd} is past [servicing] non_accrual_dpd "
                f"{non_accrual_dpd}; compensation must come first", "guarantee")


def run(config_file: Path | None, nodes: int | None = None) -> int:
    phases = StartupPhases()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        if nodes is not None:  # `lendcore up --nodes N` wins over LENDCORE_LOCAL_NODES
            os.environ["LENDCORE_LOCAL_NODES"] = str(nodes)
        settings = load_settings(config_file)
        check_config_files(settings)
    except (ConfigError, ChartError, ProductError, RiskBookError) as error:
        # A configuration mistake is the operator's to fix: one clear line, no traceback.
        print(f"lendcore: configuration error: {error}", file=sys.stderr, flush=True)
        return 2
    pg_dsn, redis_url, embedded = resolve_services(settings)
    phases.done("config, postgres and redis")
    local_cluster = None
    try:
        local_cluster = start_ray(settings)
        phases.done("ray" if local_cluster is None
                    else f"ray ({settings.cluster.local_nodes} local nodes)")
        uvloop.run(serve(settings, pg_dsn, redis_url, phases, config_file))
    finally:
        stop_ray(local_cluster)
        for service in reversed(embedded):
            service.stop()
    log.info("stopped")
    return 0
