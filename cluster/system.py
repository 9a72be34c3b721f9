"""The running system in one process: schema, shard hosts on Ray, both gateways.

`lendcore up` and the integration tests both build a `System`, so what the tests exercise is
what users run. Ray must already be initialised (cluster.bootstrap.start_ray) by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import msgspec
import ray
import redis.asyncio as aioredis
import uvicorn
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from actors.host import HostConfig
from actors.ray_host import ShardHostActor
from cluster.bootstrap import ray_nodes
from cluster.config import (
    Settings,
    load_partner_merchants,
    load_partner_secrets,
    load_webhook_endpoints,
)
from cluster.coordinator import Coordinator, HostInfo
from cluster.eod import EodRunner
from cluster.eod_schedule import EodScheduler, wall_clock
from cluster.map_router import HostHandles, build_router_from_map
from cluster.outbox import Outbox
from cluster.webhooks import WebhookDispatcher
from gateway.antifraud import AntiFraud, Blacklist
from gateway.collections_desk import CollectionsDesk
from gateway.connectors import ConnectorRunner
from gateway.dashboard.app import Dashboard
from gateway.dashboard.health import QueueLimits
from gateway.dashboard.sampler import MetricsSampler
from gateway.guard import RedisGuard
from gateway.openapi import build_openapi
from gateway.ops_api import Operator, OpsApi, common_endpoints
from gateway.partner_api import PartnerApi
from gateway.pii import PiiVault
from gateway.readiness import Readiness, shards_not_serving
from gateway.redis_batch import ScriptBatcher
from gateway.reviews import ReviewDesk
from gateway.router import ShardRouter
from gateway.screening import Screener
from gateway.seeding import Seeder
from gateway.webhooks_desk import WebhooksDesk
from lending.chart import load_chart
from lending.decision import RiskPolicy
from lending.funding import product_books
from lending.products import load_catalog
from storage import cluster_store, shard_map_store
from storage.db import create_pool
from storage.migrate import migrate

log = logging.getLogger("lendcore.system")

CHINA_STANDARD_TIME = timezone(timedelta(hours=8))  # no DST in China: a fixed offset is exact
HOST_READY_TIMEOUT_S = 120
STATS_TIMEOUT_S = 2.0
HOST_STOP_TIMEOUT_S = 30
POOL_CLOSE_TIMEOUT_S = 10.0
# Each other step of a stop (a background loop, the HTTP servers' drain, the router) gets at
# most this long: a step that hangs is logged with every task still running and the stop
# goes on, so `lendcore up` always exits (twice a test's System.stop did not end in 180 s,
# cause not found: the log now names the step and the stacks).
STOP_STEP_TIMEOUT_S = 15.0
# The HTTP servers' drain: partner requests are answered within request_timeout_s; past
# this, requests still running (a long operator call: end of day resumes where it stopped)
# are cancelled.
DRAIN_MARGIN_S = 5
RAY_RETRYABLE: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: `lendcore up` owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def initial_business_date(settings: Settings) -> date:
    if settings.cluster.initial_business_date:
        return date.fromisoformat(settings.cluster.initial_business_date)
    return datetime.now(CHINA_STANDARD_TIME).date()


def risk_policy(settings: Settings) -> RiskPolicy:
    return msgspec.convert(msgspec.to_builtins(settings.risk), RiskPolicy)


class System:
    def __init__(
        self, settings: Settings, pg_dsn: str, redis_url: str,
        clock: Callable[[], datetime] = wall_clock, gateway_only: bool = False,
    ) -> None:
        self.settings = settings
        # An extra gateway process (cluster/gateway_process.py): the partner API only, on
        # `api_socket`; the shard hosts and the background jobs belong to `lendcore up`.
        self.gateway_only = gateway_only
        self.api_socket: socket.socket | None = None  # pre-bound (SO_REUSEPORT), else bind
        self.clock = clock  # wall-clock time of the end-of-day schedule (tests control it)
        self.pg_dsn = pg_dsn
        self.redis_url = redis_url
        # Loaded first: a broken chart of accounts must stop start-up before anything runs.
        self.chart = load_chart(settings.resolve_path(settings.paths.chart_file))
        # Partner webhook endpoints of the partners file, checked at start too (ConfigError).
        self.webhook_endpoints = load_webhook_endpoints(
            settings.resolve_path(settings.paths.partners_file))
        self.webhooks: WebhookDispatcher | None = None  # delivers partner webhook events
        self.instance = uuid.uuid4().hex[:8]  # names this system's actors in a shared Ray
        self.hosts: list[Any] = []  # handles of the live shard hosts
        self.host_infos: list[HostInfo] = []  # the same hosts: name, index, node
        self._placement: list[tuple[str, str]] = []  # the start's shard → (host, node)
        self._host_nodes: list[str | None] = []  # host index → node it is pinned to
        self._handles: HostHandles | None = None
        self.coordinator: Coordinator | None = None  # moves, drains, re-homing (primary)
        self.hosts_ready = False
        self.router: ShardRouter | None = None
        self._pool: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        self._batch_redis: aioredis.Redis | None = None
        self.blacklist: Blacklist | None = None  # built with the servers
        self.antifraud: AntiFraud | None = None  # what the partner API screens with
        self.connectors: ConnectorRunner | None = None  # external data sources
        self.eod: EodRunner | None = None  # end of day (POST /ops/eod)
        self.outbox: Outbox | None = None  # sends what end of day planned (SMS, withholding)
        self._outbox_task: asyncio.Task[Any] | None = None
        self.eod_scheduler: EodScheduler | None = None  # end of day by itself ([eod] schedule_*)
        self.sampler = MetricsSampler(self.host_stats)  # the dashboard's charts
        self.readiness = Readiness({
            "postgres": self._postgres_problem, "redis": self._redis_problem,
            "shards": self._shards_problem,
        })
        self._servers: list[_Server] = []
        self._server_tasks: list[asyncio.Task[None]] = []
        self.api_url = ""
        self.ops_url = ""

    # ---- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        self._pool = await create_pool(self.pg_dsn, settings.storage.pool_size_gateway)
        async with self._pool.acquire() as conn:
            applied = await migrate(conn)
            if applied:
                log.info("applied migrations %s", applied)
            await cluster_store.initialise(
                conn, settings.cluster.logical_shards, initial_business_date(settings)
            )
            await cluster_store.check_chart_covers_ledger(conn, self.chart)
        self._redis = aioredis.from_url(self.redis_url)
        if not self.gateway_only:
            await self._write_initial_map()  # before the hosts start: they read it
        self._start_hosts()
        self.router = await self._build_router()
        self.router.start()
        await self._start_servers()
        await self._wait_hosts_ready()
        if not self.gateway_only:
            self.coordinator = Coordinator(
                pool=self._pool, redis=self._redis, prefix=settings.redis.key_prefix,
                router=self.router, hosts=list(self.host_infos), create_host=self._add_host,
                hosts_per_node=settings.cluster.hosts_per_node,
                on_hosts_changed=self._hosts_changed,
            )
            self.coordinator.start()
        await self.readiness.check_now()
        self.readiness.start()
        assert self.eod_scheduler is not None
        if self.gateway_only:
            return  # background jobs run in the primary `lendcore up` process only
        self.eod_scheduler.start()  # its first firing may run end of day: hosts must serve
        self.sampler.start()
        self.start_outbox_drain()  # what a crash left pending
        if settings.webhooks.enabled:
            assert self.webhooks is not None
            self.webhooks.start()

    def host_config(self, host_id: int, shard_ids: list[int], name: str = "") -> HostConfig:
        s = self.settings
        return HostConfig(
            host_id=host_id,
            shard_ids=shard_ids,
            pg_dsn=self.pg_dsn,
            redis_url=self.redis_url,
            redis_prefix=s.redis.key_prefix,
            products_dir=str(s.resolve_path(s.paths.products_dir)),
            chart_file=str(s.resolve_path(s.paths.chart_file)),
            pool_size=s.storage.pool_size_per_host,
            inbox_max=s.shard.inbox_max,
            batch_max=s.shard.batch_max,
            commits_in_flight_max=s.shard.commits_in_flight_max,
            lease_claim_ttl_ms=s.shard.lease_claim_ttl_ms,
            policy=risk_policy(s),
            servicing=s.servicing,
            collections=s.collections,
            collectors=sorted(o.name for o in s.operators if "collector" in o.roles),
            risk_dir=str(s.resolve_path(s.paths.risk_dir)),
            webhook_partners=sorted(self.webhook_endpoints),
            name=name,
        )

    def host_name(self, host_id: int) -> str:
        return f"lendcore-{self.instance}-host-{host_id}"

    async def _write_initial_map(self) -> None:
        """Place the shard hosts and write the shard map (storage/shard_map_store.py). One
        Ray node: `shard_hosts` hosts, shard s on host s % shard_hosts, as before the map.
        Several nodes: `hosts_per_node` hosts pinned to each node, shards round-robin. The
        map is rewritten at every start: the former start's hosts died with its process."""
        assert self._pool is not None
        nodes = sorted(n["NodeID"] for n in await asyncio.to_thread(ray_nodes) if n["Alive"])
        c = self.settings.cluster
        if len(nodes) <= 1:
            self._host_nodes = [None] * c.shard_hosts
            node_of = [nodes[0] if nodes else ""] * c.shard_hosts
        else:
            self._host_nodes = [n for n in nodes for _ in range(c.hosts_per_node)]
            node_of = [str(n) for n in self._host_nodes]
        hosts = len(self._host_nodes)
        self._placement = [
            (self.host_name(shard % hosts), node_of[shard % hosts])
            for shard in range(c.logical_shards)
        ]
        async with self._pool.acquire() as conn:
            version = await shard_map_store.initialise(conn, self._placement)
        log.info("shard map version %s: %d shards on %d hosts over %d node(s)", version,
                 c.logical_shards, hosts, max(1, len(nodes)))

    def shard_assignment(self) -> list[int]:
        """Logical shard → host index at start (the shard map's initial placement).
        Whole shards move between hosts later; keys never re-hash."""
        if self._placement:
            names = [self.host_name(i) for i in range(len(self._host_nodes))]
            return [names.index(host) for host, _ in self._placement]
        hosts = self.settings.cluster.shard_hosts
        return [shard % hosts for shard in range(self.settings.cluster.logical_shards)]

    def _spawn_host(self, host_id: int, node: str | None) -> Any:
        """A shard-host actor; pinned to `node` (hard affinity) when given. Its shards come
        from the shard map (by its name) when it starts."""
        config = msgspec.json.encode(self.host_config(host_id, [], self.host_name(host_id)))
        options: dict[str, Any] = {
            "name": self.host_name(host_id), "num_cpus": 0, "max_concurrency": 1000,
        }
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return ShardHostActor.options(**options).remote(config)  # type: ignore[attr-defined]

    def _start_hosts(self) -> None:
        for host_id, node in enumerate(self._host_nodes):
            handle = self._spawn_host(host_id, node)
            self.hosts.append(handle)
            node_id = node if node is not None else (
                self._placement[0][1] if self._placement else "")
            self.host_infos.append(HostInfo(self.host_name(host_id), host_id, node_id, handle,
                                            pinned=node is not None))

    async def _add_host(self, host_id: int, node: str | None) -> HostInfo:
        """A new shard host (the coordinator, for a node that joined), started and ready."""
        handle = self._spawn_host(host_id, node)
        stats = await handle.ready.remote()
        return HostInfo(self.host_name(host_id), host_id, str(stats.get("node_id", node or "")),
                        handle, pinned=node is not None)

    def _hosts_changed(self, hosts: list[HostInfo]) -> None:
        """The coordinator buried or added hosts: the live list everything else uses."""
        self.host_infos = list(hosts)
        self.hosts[:] = [h.handle for h in hosts]

    async def _wait_hosts_ready(self) -> None:
        refs = [host.ready.remote() for host in self.hosts]
        await asyncio.wait_for(asyncio.gather(*refs), HOST_READY_TIMEOUT_S)
        self.hosts_ready = True

    async def _build_router(self) -> ShardRouter:
        """The router follows the shard map in Postgres (cluster/map_router.py); it knows
        this process's own host handles, and finds any other host by its Ray name."""
        assert self._pool is not None
        namespace = ray.get_runtime_context().namespace
        known = {self.host_name(i): h for i, h in enumerate(self.hosts)}
        if not self.gateway_only:
            known = {h.name: h.handle for h in self.host_infos}
        self._handles = HostHandles(namespace, known)
        return await build_router_from_map(self._pool, self.settings, namespace, self._handles)

    def ready(self) -> bool:
        return (
            self.hosts_ready
            and all(server.started for server in self._servers)
            and self.readiness.is_ready()
        )

    def readiness_body(self) -> bytes:
        if not self.hosts_ready or not all(server.started for server in self._servers):
            return b'{"status":"starting"}'
        return self.readiness.body()

    # ---- readiness checks (gateway.readiness): None when healthy, else why not -----------

    async def _postgres_problem(self) -> str | None:
        assert self._pool is not None
        await self._pool.fetchval("SELECT 1")
        return None

    async def _redis_problem(self) -> str | None:
        assert self._batch_redis is not None
        await self._batch_redis.ping()
        return None

    async def _shards_problem(self) -> str | None:
        """Every host started (`ready` starts a restarted host, which activates lazily)
        and every logical shard serving."""
        assert self._pool is not None and self._handles is not None
        # The hosts the shard map names (a gateway-only process did not start them), each
        # started and asked for its shards; a shard being moved counts as served.
        shard_map = await shard_map_store.load(self._pool)
        handles = await asyncio.gather(*(
            self._handles.get(name) for name in dict.fromkeys(shard_map.hosts())))
        stats = await asyncio.gather(*(host.ready.remote() for host in handles))
        owned = {int(shard) for host_stats in stats for shard in host_stats.get("shards", {})}
        moving = {p.shard_id for p in shard_map.places if p.state == shard_map_store.MOVING}
        served = len(owned | moving)
        if served != self.settings.cluster.logical_shards:
            return f"{served} of {self.settings.cluster.logical_shards} shards started"
        return shards_not_serving(stats)

    async def _start_servers(self) -> None:
        assert self._redis is not None and self._pool is not None and self.router is not None
        s = self.settings
        openapi = build_openapi()
        common = common_endpoints(self.ready, self.readiness_body, lambda: openapi)
        vault = PiiVault(
            bytes.fromhex(s.security.pii_key_hex), bytes.fromhex(s.security.hash_key_hex)
        )
        # The batcher's own client: no per-reply socket timeout (one deadline a pipeline).
        # No automatic retry either: a pipeline retried after a broken connection could run
        # its scripts twice (a nonce seen twice answers a valid request `replayed_request`).
        self._batch_redis = aioredis.from_url(
            self.redis_url, socket_timeout=None, retry=Retry(NoBackoff(), 0)
        )
        batcher = ScriptBatcher(self._batch_redis)
        self.blacklist = Blacklist(self._pool, self._redis, s.redis.key_prefix)
        await self.sync_blacklists()
        self.antifraud = AntiFraud(
            self._redis, s.redis.key_prefix, **msgspec.structs.asdict(s.antifraud),
            batcher=batcher, blacklist=self.blacklist,
        )
        self.connectors = ConnectorRunner.from_settings(s.connectors)
        catalog = load_catalog(s.resolve_path(s.paths.products_dir), s.risk.apr_cap_bps)
        partner = PartnerApi(
            secrets=load_partner_secrets(s.resolve_path(s.paths.partners_file)),
            guard=RedisGuard(
                self._redis, s.redis.key_prefix, s.gateway.nonce_ttl_s,
                # A request lives at most request_timeout_s; its in-flight marker no longer.
                inflight_ttl_s=math.ceil(s.gateway.request_timeout_s) + 1,
                response_ttl_s=s.gateway.idempotency_ttl_s, batcher=batcher,
            ),
            router=self.router,
            vault=vault,
            screener=Screener(self.antifraud, self.connectors),
            catalog=catalog,
            merchants=load_partner_merchants(s.resolve_path(s.paths.partners_file)),
            body_max_bytes=s.gateway.body_max_bytes,
            clock_skew_max_s=s.gateway.clock_skew_max_s,
            rate_per_s=s.gateway.rate_per_partner_s,
            rate_burst=s.gateway.rate_burst,
            request_timeout_s=s.gateway.request_timeout_s,
            common=common,
        )
        self.outbox = Outbox(pool=self._pool, router=self.router, vault=vault,
                             settings=s.outbox)
        self.webhooks = WebhookDispatcher(pool=self._pool, vault=vault, settings=s.webhooks,
                                          config_endpoints=self.webhook_endpoints)
        self.eod = EodRunner(
            pool=self._pool, redis=self._redis, prefix=s.redis.key_prefix, router=self.router,
            sync_hosts=self.sync_business_date, settings=s.eod,
            after_advance=self.start_outbox_drain, chart=self.chart,
        )
        self.eod_scheduler = EodScheduler(self.eod, s.eod, now=self.clock)
        ops = OpsApi(
            operators=[Operator(o.name, o.token, o.roles) for o in s.operators],
            pool=self._pool,
            chart=self.chart,
            product_books=product_books(catalog.latest()),
            cluster_view=self.cluster_view,
            cluster_admin=lambda: self.coordinator,
            common=common,
            vault=vault,
            blacklist=self.blacklist,
            reviews=ReviewDesk(
                pool=self._pool,
                redis=self._redis,
                prefix=s.redis.key_prefix,
                router=self.router,
                claim_ttl_s=s.review.claim_ttl_s,
                maker_checker_amount_over=s.review.maker_checker_amount_over,
                page_max=s.review.page_max,
            ),
            eod=self.eod,
            eod_schedule=self.eod_scheduler.view,
            seeder=Seeder(pool=self._pool, router=self.router),
            collections=CollectionsDesk(pool=self._pool, router=self.router,
                                        drain=self.outbox.drain),
            non_accrual_dpd=s.servicing.non_accrual_dpd,
            write_off_dpd=s.servicing.write_off_dpd,
            webhooks=WebhooksDesk(
                pool=self._pool, vault=vault,
                partners=frozenset(load_partner_secrets(s.resolve_path(s.paths.partners_file))),
                config_urls={p: e.url for p, e in self.webhook_endpoints.items()},
                on_change=self.webhook_endpoints_changed, wake=self.webhooks.wake,
            ),
        )
        ops.dashboard = Dashboard(
            ops=ops, sampler=self.sampler, readiness=self.readiness,
            limits=QueueLimits(inbox_max=s.shard.inbox_max, pending_max=s.gateway.pending_max),
        )
        for app, host, port in (
            (partner, s.gateway.api_host, s.gateway.api_port),
            (ops, s.gateway.ops_host, s.gateway.ops_port),
        )[:1 if self.gateway_only else 2]:
            server = _Server(uvicorn.Config(
                app, host=host, port=port, loop="none", http="httptools", lifespan="off",
                access_log=False, log_level="warning", backlog=4096,
                # No X-Forwarded-* rewriting: nothing of ours reads the client address, and
                # the middleware was a layer of Python on every request.
                proxy_headers=False,
                timeout_graceful_shutdown=int(s.gateway.request_timeout_s) + DRAIN_MARGIN_S,
            ))
            self._servers.append(server)
            sockets = [self.api_socket] if app is partner and self.api_socket else None
            self._server_tasks.append(asyncio.create_task(server.serve(sockets)))
        while not all(server.started for server in self._servers):
            for task in self._server_tasks:
                if task.done():
                    task.result()  # a server that failed to bind raises here
                    raise RuntimeError("HTTP server exited during start-up")
            await asyncio.sleep(0.02)
        api_port = self._bound_port(self._servers[0])
        self.api_url = f"http://{s.gateway.api_host}:{api_port}"
        if not self.gateway_only:
            ops_port = self._bound_port(self._servers[1])
            self.ops_url = f"http://{s.gateway.ops_host}:{ops_port}"

    async def sync_business_date(self) -> None:
        """Make every shard host read the business date from Postgres (end of day calls it
        before and after a run)."""
        await self._on_every_host("sync_business_date")

    async def sync_webhooks(self) -> None:
        """Make every shard host re-read the partners with a webhook endpoint (the operator
        API registered or removed one)."""
        await self._on_every_host("sync_webhooks")

    async def _on_every_host(self, method: str) -> None:
        """Call `method` on every live shard host. A host that is restarting is retried
        until it answers (a restarted host reads the same from Postgres on start anyway);
        one killed for good is skipped: the coordinator re-homes its shards."""
        deadline = time.monotonic() + HOST_READY_TIMEOUT_S

        async def call(host: Any) -> None:
            while True:
                try:
                    await getattr(host, method).remote()
                    return
                except ray.exceptions.ActorDiedError:
                    return
                except RAY_RETRYABLE:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(call(host) for host in self.hosts))

    async def webhook_endpoints_changed(self) -> None:
        """After the operator API stored an endpoint change: the dispatcher re-reads where
        events go before the shards start writing them (and once more after, for a round
        that read the endpoints meanwhile), the shards decide which changes write events."""
        if self.webhooks is not None:
            self.webhooks.endpoints_changed()
        await self.sync_webhooks()
        if self.webhooks is not None:
            self.webhooks.endpoints_changed()

    async def sync_blacklists(self) -> None:
        """Rebuild the Redis blacklist sets from Postgres (the truth). A Redis that is down
        now only delays it: the first screen rebuilds before it reads them."""
        assert self.blacklist is not None
        try:
            await self.blacklist.rebuild()
        except (aioredis.RedisError, OSError) as exc:
            self.blacklist.mark_stale()
            log.warning("blacklist sets not rebuilt at start (%s): first screen rebuilds",
                        type(exc).__name__)

    @staticmethod
    def _bound_port(server: _Server) -> int:
        """The real port (port 0 in config means any free port, used by the tests)."""
        for listener in server.servers:
            for sock in listener.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("server has no socket")

    # ---- views ----------------------------------------------------------------------------

    async def host_stats(self) -> list[dict[str, Any]]:
        """Each shard host's own stats, or {"error": …} for one that did not answer."""
        host_stats: list[dict[str, Any]] = []
        for info in list(self.host_infos):
            try:
                host_stats.append(await asyncio.wait_for(info.handle.stats.remote(),
                                                         STATS_TIMEOUT_S))
            except (TimeoutError, ray.exceptions.RayActorError) as exc:
                host_stats.append({"error": f"{type(exc).__name__}", "name": info.name,
                                   "host_id": info.index, "node_id": info.node_id})
        return host_stats

    async def cluster_view(self) -> dict[str, Any]:
        assert self._pool is not None and self.router is not None
        leases = await cluster_store.shard_leases(self._pool)
        shard_map = await shard_map_store.load(self._pool)
        host_stats = await self.host_stats()
        by_name = {str(h.get("name")): h for h in host_stats}
        index_of = {h.name: h.index for h in self.host_infos}
        shards = []
        for lease in leases:
            place = shard_map.places[lease["shard_id"]]
            live = by_name.get(place.host, {}).get("shards", {}).get(str(lease["shard_id"]), {})
            state = live.get("status", "unknown")
            shards.append({
                **lease,
                "host": index_of.get(place.host, place.host),  # the host's index, as before
                "host_name": place.host,
                "node": place.node,
                "map_state": place.state,  # serving | moving (storage/shard_map_store.py)
                "moving_to": place.moving_to,
                "state": "moving" if place.state == shard_map_store.MOVING else state,
                "queue_depth": live.get("queue_depth", 0),
                "commands": live.get("commands", 0),
                "batches": live.get("batches", 0),
                "loans": live.get("loans", 0),
                "takeovers": max(0, lease["epoch"] - 1),
            })
        nodes = await asyncio.to_thread(ray_nodes)  # a blocking GCS call: off the event loop
        return {
            "nodes": [
                {"node_id": n["NodeID"], "alive": n["Alive"], "address": n["NodeManagerAddress"],
                 "resources": n.get("Resources", {})}
                for n in nodes
            ],
            "hosts": host_stats,
            "gateway": {"pending": self.router.pending(), "channels": self.router.stats()},
            "shards": shards,
            "map_version": shard_map.version,
            "router_map_version": self.router.map_version,
            "coordinator": None if self.coordinator is None else self.coordinator.view(),
            "at": time.time(),
        }

    # ---- stop -----------------------------------------------------------------------------

    def start_outbox_drain(self) -> None:
        """Send end of day's pending requests in the background (one drain at a time; a
        drain already running picks up what a newer run planned on its next page)."""
        if self._outbox_task is not None and not self._outbox_task.done():
            return
        assert self.outbox is not None
        self._outbox_task = asyncio.create_task(self._drain_outbox(self.outbox))

    @staticmethod
    async def _drain_outbox(outbox: Outbox) -> None:
        try:
            counts = await outbox.drain()
        except (asyncpg.PostgresError, OSError) as exc:
            # The requests stay pending: the next end of day, a restart or
            # POST /ops/outbox/drain sends them.
            log.error("outbox drain failed (%s): requests stay pending", exc)
            return
        except Exception:  # a background task: nobody awaits it to see a bug otherwise
            log.exception("outbox drain failed on a bug: requests stay pending")
            return
        if counts:
            log.info("outbox drained: %s", counts)

    async def stop(self) -> None:
        """Drain: stop accepting, let in-flight requests finish, stop hosts, close."""
        if self.coordinator is not None:
            # first: no move may start while hosts stop
            await _stop_step("coordinator", self.coordinator.stop())
        await _stop_step("readiness", self.readiness.stop())
        await _stop_step("sampler", self.sampler.stop())
        if self.eod_scheduler is not None:
            # first: a scheduled run needs the hosts
            await _stop_step("end-of-day scheduler", self.eod_scheduler.stop())
        for server in self._servers:
            server.should_exit = True
        await _stop_step("HTTP servers", asyncio.gather(*self._server_tasks,
                                                        return_exceptions=True),
                         self.settings.gateway.request_timeout_s + DRAIN_MARGIN_S + 5)
        if self._outbox_task is not None:
            self._outbox_task.cancel()
            await _stop_step("outbox", asyncio.gather(self._outbox_task,
                                                      return_exceptions=True))
        if self.webhooks is not None:
            # an unrecorded attempt is sent again after restart
            await _stop_step("webhooks", self.webhooks.stop())
        if self.router is not None:
            await _stop_step("router", self.router.close())
        if self.connectors is not None:
            await _stop_step("connectors", self.connectors.aclose())
        # An extra gateway process leaves the shard hosts to the process that owns them.
        stops = [] if self.gateway_only else [host.stop.remote() for host in self.hosts]
        try:
            await asyncio.wait_for(asyncio.gather(*stops), HOST_STOP_TIMEOUT_S)
        except RAY_RETRYABLE:
            pass  # a host that is already gone has nothing left to finish
        except TimeoutError:
            # Killed below all the same: what they had not committed was never answered,
            # and a partner retries it with the same key.
            log.warning("shard hosts did not finish within %s s; killing them",
                        HOST_STOP_TIMEOUT_S)
        for host in [] if self.gateway_only else self.hosts:
            ray.kill(host, no_restart=True)
        for client in (self._redis, self._batch_redis):
            if client is not None:
                await _stop_step("Redis client", client.aclose())
        if self._pool is not None:
            try:
                # close() waits for every connection to come back; a task that never
                # returns one must not hold the stop for ever.
                await asyncio.wait_for(self._pool.close(), POOL_CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("Postgres pool not closed within %s s; terminating it",
                            POOL_CLOSE_TIMEOUT_S)
                self._pool.terminate()


async def _stop_step(name: str, step: Awaitable[Any],
                     timeout_s: float = STOP_STEP_TIMEOUT_S) -> None:
    """One step of System.stop, bounded: past `timeout_s` it is cancelled, and the tasks
    still running are logged with their stacks, so a hang says where it was."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.error("stop: %s did not finish within %s s; going on without it. Tasks "
                  "still running:\n%s", name, timeout_s, _task_stacks())


def _task_stacks(limit: int = 50) -> str:
    stacks = io.StringIO()
    for task in list(asyncio.all_tasks())[:limit]:
        if task is not asyncio.current_task():
            task.print_stack(limit=8, file=stacks)
    return stacks.getvalue()
