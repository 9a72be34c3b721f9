"""The coordinator: moves shards between shard hosts, drains nodes, re-homes the shards of
dead hosts and evens shards out when a node joins. It runs in the `lendcore up` process.

A move (`move`): the map row goes `serving` → `moving` (version + 1); the old host releases
the shard (stops taking commands, which are answered `shard_moved` and retried by the
gateways on the new owner; lets the batch in flight commit; bounces its queue), with a
bounded wait, skipped when the host or its node is dead; the new host adopts it (Redis claim,
lease epoch + 1, load, serve); the row goes `serving` on the new host (version + 1, audited).
Correctness never depends on the release: whatever an old owner still tries to commit fails
on the lease fence once the new owner holds epoch + 1.

The automatic part (`_tick`, every `poll_s`) runs only in the process holding the Redis
leader lock (SET NX PX, renewed each tick), so extra gateway processes never coordinate:
- a host killed for good (ray.kill, ActorDiedError) or on a node Ray reports dead: its
  shards are re-homed on the least-loaded live hosts (within ~2 ticks);
- a node that joins gets `hosts_per_node` new hosts (pinned with NodeAffinity) and shards
  move to them until every live host's count is within one of the others';
- a shard whose host reports it `lost` (a newer epoch fenced it) while the map still names
  that host is adopted again by it.
Operator moves and drains do not need the leader lock: they are serialised by this
process's lock, and the map's row-level state check refuses a second concurrent move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import ray
import redis.asyncio as aioredis

from cluster.bootstrap import ray_nodes
from gateway.http import HttpError
from gateway.router import ShardRouter
from storage import audit, shard_map_store
from storage.shard_map_store import MapConflict

log = logging.getLogger("lendcore.coordinator")

RELEASE_TIMEOUT_S = 10.0  # the old host's release: then the move goes on (the fence holds)
ADOPT_TIMEOUT_S = 120.0  # loading a big shard
ADOPT_ATTEMPTS = 3  # a target host restarting under us is asked again
PROBE_TIMEOUT_S = 2.0
RAYLET_PROBE_TIMEOUT_S = 1.0
LEADER_TTL_MS = 5000
HOST_CREATE_TIMEOUT_S = 60.0
REBALANCE_MOVES_MAX = 1024  # a bound on one rebalance (far more than shards to move)

# Renew the leader lock only if we still hold it (compare then extend, atomically).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class CoordinatorError(HttpError):
    """A refused or failed operation, answered by the operator API as it is."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(status, code, message, field,
                         retry_after_s=1 if status == 503 else None)


@dataclass
class HostInfo:
    name: str
    index: int
    node_id: str  # where Ray placed it ('' until known)
    handle: Any
    pinned: bool = False  # created with NodeAffinity (soft=False) on node_id


@dataclass
class MoveResult:
    shard_id: int
    from_host: str
    to_host: str
    from_node: str
    to_node: str
    epoch_before: int
    epoch_after: int
    paused_s: float
    release_s: float
    adopt_s: float
    released: bool
    bounced: int
    loans: int
    version: int
    reason: str

    def view(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class _Probe:
    dead: bool = False
    unreachable: bool = False  # no answer (restarting, busy, or its node is gone)
    stats: dict[str, Any] = field(default_factory=dict)


async def raylet_answers(address: str, port: int, timeout_s: float = RAYLET_PROBE_TIMEOUT_S
                         ) -> bool:
    """Whether a node's raylet accepts a TCP connection. Ray itself takes ~15-30 s (health
    checks) to declare a node dead; a killed raylet refuses connections at once."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


CreateHost = Callable[[int, str | None], Awaitable[HostInfo]]


class Coordinator:
    def __init__(
        self, *, pool: asyncpg.Pool, redis: aioredis.Redis, prefix: str, router: ShardRouter,
        hosts: list[HostInfo], create_host: CreateHost, hosts_per_node: int,
        on_hosts_changed: Callable[[list[HostInfo]], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.lock_key = f"{prefix}coordinator"
        self.token = uuid.uuid4().hex
        self.router = router
        self.live: dict[str, HostInfo] = {h.name: h for h in hosts}
        self.create_host = create_host
        self.hosts_per_node = hosts_per_node
        self.on_hosts_changed = on_hosts_changed
        self.poll_s = poll_s
        self.next_index = 1 + max((h.index for h in hosts), default=-1)
        self.drained: set[str] = set()  # nodes drained by an operator: given no shards
        # Nodes whose raylet stopped answering: dead to us even while Ray's health checks
        # (~15-30 s) still list them alive; never given a host again.
        self.dead_nodes: set[str] = set()
        self.moving: set[int] = set()  # shards being moved now (readiness counts them)
        self.moves: list[MoveResult] = []  # the last MOVES_KEPT moves, newest last
        self.leader = False
        self._leader_until = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._known_nodes: set[str] = {h.node_id for h in hosts if h.node_id}

    MOVES_KEPT = 200

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="coordinator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.leader:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self.redis.eval(
                    "if redis.call('get', KEYS[1]) == ARGV[1] then "
                    "return redis.call('del', KEYS[1]) end return 0", 1, self.lock_key,
                    self.token)
            self.leader = False

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a background task: log and go on with the next tick
                log.exception("coordinator tick failed")
            await asyncio.sleep(max(0.05, self.poll_s - (time.monotonic() - started)))

    async def _hold_leadership(self) -> bool:
        now = time.monotonic()
        try:
            if self.leader:
                renewed = await self.redis.eval(_RENEW, 1, self.lock_key, self.token,
                                                LEADER_TTL_MS)
                self.leader = bool(renewed)
            else:
                self.leader = bool(await self.redis.set(
                    self.lock_key, self.token, nx=True, px=LEADER_TTL_MS))
            if self.leader:
                self._leader_until = now + LEADER_TTL_MS / 1000
        except (aioredis.RedisError, OSError) as exc:
            # Redis away: keep leading only as long as our lock would still be held.
            self.leader = self.leader and now < self._leader_until
            log.warning("coordinator leader lock not renewed (%s)", type(exc).__name__)
        return self.leader

    # ---- views ---------------------------------------------------------------------------

    def host_names(self) -> list[str]:
        return list(self.live)

    def view(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "hosts": [{"name": h.name, "index": h.index, "node_id": h.node_id,
                       "pinned": h.pinned} for h in self.live.values()],
            "drained_nodes": sorted(self.drained),
            "moving": sorted(self.moving),
            "last_moves": [m.view() for m in self.moves[-10:]],
        }

    # ---- operator actions ----------------------------------------------------------------

    async def move(self, shard_id: int, to: str, actor: str) -> MoveResult:
        """Move one shard to `to`: a host name, or a node id (its least-loaded host)."""
        async with self._lock:
            shard_map = await shard_map_store.load(self.pool)
            if not 0 <= shard_id < len(shard_map.places):
                raise CoordinatorError(
                    404, "not_found",
                    f"no shard {shard_id}: shards are 0..{len(shard_map.places) - 1}")
            target = self._resolve_target(to, shard_map)
            return await self._move(shard_id, target, actor, "operator move")

    async def drain(self, node: str, actor: str) -> dict[str, Any]:
        """Move every shard of node `node` to hosts of other nodes, least loaded first, and
        give that node no shards from now on (until this process restarts)."""
        async with self._lock:
            node_id = self._resolve_node(node)
            others = [h for h in self.live.values()
                      if h.node_id != node_id and h.node_id not in self.drained]
            if not others:
                raise CoordinatorError(
                    409, "no_other_node",
                    f"node {node_id} cannot be drained: no shard host runs on another node")
            self.drained.add(node_id)
            started = time.perf_counter()
            shard_map = await shard_map_store.load(self.pool)
            on_node = {h.name for h in self.live.values() if h.node_id == node_id}
            shards = [p.shard_id for p in shard_map.places if p.host in on_node]
            moves = []
            for shard_id in shards:
                target = self._least_loaded(await shard_map_store.load(self.pool), others)
                moves.append(await self._move(shard_id, target, actor, f"drain of {node_id}"))
            async with self.pool.acquire() as conn:
                await audit.record(conn, shard_id=0, actor=actor, action="node.drain",
                                   target=f"node:{node_id}", before={"shards": shards},
                                   after={"moved": len(moves)})
            return {"node_id": node_id, "moved": [m.view() for m in moves],
                    "seconds": round(time.perf_counter() - started, 3),
                    "version": moves[-1].version if moves else shard_map.version}

    def _resolve_node(self, node: str) -> str:
        known = {h.node_id for h in self.live.values() if h.node_id} | self._known_nodes
        matches = [n for n in known if n == node] or (
            [n for n in known if n.startswith(node)] if len(node) >= 6 else [])
        if len(matches) != 1:
            raise CoordinatorError(
                404, "not_found",
                f"no node {node!r} with shard hosts (known: {sorted(known)})" if not matches
                else f"node prefix {node!r} is ambiguous", "node_id")
        return matches[0]

    def _resolve_target(self, to: str, shard_map: shard_map_store.ShardMap) -> HostInfo:
        if to in self.live:
            if self.live[to].node_id in self.drained:
                raise CoordinatorError(409, "node_drained",
                                       f"host {to} is on a drained node", "to")
            return self.live[to]
        try:
            node_id = self._resolve_node(to)
        except CoordinatorError as exc:
            raise CoordinatorError(
                404, "not_found", f"{to!r} is neither a live shard host nor a node id", "to"
            ) from exc
        if node_id in self.drained:
            raise CoordinatorError(409, "node_drained", f"node {node_id} is drained", "to")
        hosts = [h for h in self.live.values() if h.node_id == node_id]
        if not hosts:
            raise CoordinatorError(404, "not_found", f"no live shard host on node {node_id}",
                                   "to")
        return self._least_loaded(shard_map, hosts)

    @staticmethod
    def _least_loaded(shard_map: shard_map_store.ShardMap, hosts: list[HostInfo]) -> HostInfo:
        load = {h.name: 0 for h in hosts}
        for place in shard_map.places:
            if place.host in load:
                load[place.host] += 1
        return min(hosts, key=lambda h: (load[h.name], h.index))

    # ---- one move --------------------------------------------------------------------------

    async def _move(
        self, shard_id: int, target: HostInfo, actor: str, reason: str,
    ) -> MoveResult:
        """Caller holds self._lock."""
        try:
            async with self.pool.acquire() as conn:
                before, _ = await shard_map_store.begin_move(conn, shard_id, target.name)
        except MapConflict as exc:
            raise CoordinatorError(409, "invalid_state", str(exc), "to") from exc
        self.moving.add(shard_id)
        try:
            return await self._handover(shard_id, before, target, actor, reason)
        finally:
            self.moving.discard(shard_id)

    async def _handover(
        self, shard_id: int, before: shard_map_store.ShardPlace, target: HostInfo, actor: str,
        reason: str,
    ) -> MoveResult:
        epoch_before = await self._epoch(shard_id)
        old = self.live.get(before.host)
        paused_from = time.perf_counter()
        released, bounced = False, 0
        if old is not None:
            try:
                answer = await asyncio.wait_for(old.handle.release.remote(shard_id),
                                                RELEASE_TIMEOUT_S)
                released, bounced = bool(answer["released"]), int(answer["bounced"])
            except (TimeoutError, ray.exceptions.RayActorError,
                    ray.exceptions.ActorUnavailableError) as exc:
                # Gone or stuck: the new owner's epoch + 1 fences whatever it still tries.
                log.warning("shard %s: release by %s failed (%s); moving on", shard_id,
                            old.name, type(exc).__name__)
        release_s = time.perf_counter() - paused_from
        try:
            adopted = await self._adopt(target, shard_id)
        except Exception as exc:
            log.error("shard %s: adopt by %s failed (%s); rolling back", shard_id,
                      target.name, exc)
            await self._roll_back(shard_id, before, old)
            raise CoordinatorError(503, "move_failed",
                                   f"shard {shard_id} could not be adopted by {target.name}: "
                                   f"{type(exc).__name__}; it stays on {before.host}") from exc
        adopt_s = time.perf_counter() - paused_from - release_s
        node = str(adopted.get("node_id") or target.node_id)
        target.node_id = target.node_id or node
        async with self.pool.acquire() as conn, conn.transaction():
            version = await shard_map_store.finish_move(conn, shard_id, target.name, node)
            await audit.record(
                conn, shard_id=shard_id, actor=actor, action="shard.move",
                target=f"shard:{shard_id}",
                before={"host": before.host, "node": before.node, "epoch": epoch_before},
                after={"host": target.name, "node": node, "epoch": int(adopted["epoch"]),
                       "reason": reason})
        await self.router.refresh()
        paused_s = time.perf_counter() - paused_from
        result = MoveResult(
            shard_id=shard_id, from_host=before.host, to_host=target.name,
            from_node=before.node, to_node=node, epoch_before=epoch_before,
            epoch_after=int(adopted["epoch"]), paused_s=paused_s, release_s=release_s,
            adopt_s=adopt_s, released=released, bounced=bounced,
            loans=int(adopted.get("loans", 0)), version=version, reason=reason)
        self.moves.append(result)
        del self.moves[:-self.MOVES_KEPT]
        log.info("shard %s moved %s -> %s (%s) paused %.3f s", shard_id, before.host,
                 target.name, reason, paused_s)
        return result

    async def _adopt(self, host: HostInfo, shard_id: int) -> dict[str, Any]:
        for attempt in range(ADOPT_ATTEMPTS):
            try:
                answer: dict[str, Any] = await asyncio.wait_for(
                    host.handle.adopt.remote(shard_id), ADOPT_TIMEOUT_S)
                return answer
            except ray.exceptions.ActorDiedError:
                raise
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if attempt == ADOPT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))  # restarting: ask again
        raise AssertionError("unreachable")

    async def _roll_back(
        self, shard_id: int, before: shard_map_store.ShardPlace, old: HostInfo | None,
    ) -> None:
        node = before.node
        if old is not None:
            with contextlib.suppress(Exception):
                await self._adopt(old, shard_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await shard_map_store.finish_move(conn, shard_id, before.host, node)
        await self.router.refresh()

    async def _epoch(self, shard_id: int) -> int:
        value = await self.pool.fetchval("SELECT epoch FROM shard_lease WHERE shard_id = $1",
                                         shard_id)
        return int(value or 0)

    # ---- the automatic part ----------------------------------------------------------------

    async def _tick(self) -> None:
        if not await self._hold_leadership():
            return
        nodes = await asyncio.to_thread(ray_nodes)  # a blocking GCS call
        alive = {n["NodeID"] for n in nodes if n["Alive"]} - self.dead_nodes
        raylets = {n["NodeID"]: (n["NodeManagerAddress"], int(n["NodeManagerPort"]))
                   for n in nodes if n["Alive"]}
        self._known_nodes |= alive
        probes = await self._probe_all(alive)
        # A pinned host that does not answer, on a node whose raylet is gone: dead (Ray
        # cannot restart it anywhere else), and so is its node for placement.
        for name, probe in probes.items():
            host = self.live[name]
            if (probe.unreachable and host.pinned and host.node_id in raylets
                    and not await raylet_answers(*raylets[host.node_id])):
                log.warning("node %s: raylet not answering", host.node_id)
                probe.dead = True
                alive.discard(host.node_id)
                self.dead_nodes.add(host.node_id)
        async with self._lock:
            dead = [self.live[name] for name, probe in probes.items() if probe.dead]
            for host in dead:
                await self._bury(host)
            if dead:
                await self._rehome()
            joined = sorted(n for n in alive - {h.node_id for h in self.live.values()}
                            - self.drained if len(alive) > 1)
            joined = [n for n in joined if await raylet_answers(*raylets[n])]
            if joined:
                await self._place_on(joined)
                await self._rebalance("node joined")
            await self._repair(probes)

    async def _probe_all(self, alive: set[str]) -> dict[str, _Probe]:
        async def probe(host: HostInfo) -> tuple[str, _Probe]:
            if host.node_id and host.node_id not in alive:
                return host.name, _Probe(dead=True)
            try:
                stats = await asyncio.wait_for(host.handle.stats.remote(), PROBE_TIMEOUT_S)
            except ray.exceptions.ActorDiedError:
                return host.name, _Probe(dead=True)
            except (TimeoutError, ray.exceptions.RayActorError,
                    ray.exceptions.ActorUnavailableError):
                # Restarting or busy: not dead (Ray restarts it), unless its node is gone.
                return host.name, _Probe(unreachable=True)
            if not host.node_id:
                host.node_id = str(stats.get("node_id", ""))
            return host.name, _Probe(stats=stats)

        return dict(await asyncio.gather(*(probe(h) for h in list(self.live.values()))))

    async def _bury(self, host: HostInfo) -> None:
        log.warning("shard host %s (node %s) is dead: re-homing its shards", host.name,
                    host.node_id)
        self.live.pop(host.name, None)
        with contextlib.suppress(Exception):
            ray.kill(host.handle, no_restart=True)  # a host pinned to a dead node: no retry
        if self.on_hosts_changed is not None:
            self.on_hosts_changed(list(self.live.values()))

    async def _rehome(self) -> None:
        """Every shard the map puts on a host that is not live goes to the least loaded."""
        shard_map = await shard_map_store.load(self.pool)
        for place in shard_map.places:
            if place.host in self.live:
                continue
            candidates = [h for h in self.live.values() if h.node_id not in self.drained]
            candidates = candidates or list(self.live.values())
            if not candidates:
                log.error("shard %s has no live host to go to", place.shard_id)
                return
            target = self._least_loaded(await shard_map_store.load(self.pool), candidates)
            with contextlib.suppress(CoordinatorError):
                if place.state == shard_map_store.MOVING:  # a move cut short: settle it
                    async with self.pool.acquire() as conn, conn.transaction():
                        await shard_map_store.finish_move(conn, place.shard_id, place.host,
                                                          place.node)
                await self._move(place.shard_id, target, "coordinator", "host died")

    async def _place_on(self, nodes: list[str]) -> None:
        for node in nodes:
            for _ in range(max(1, self.hosts_per_node)):
                index = self.next_index
                self.next_index += 1
                try:
                    host = await asyncio.wait_for(self.create_host(index, node),
                                                  HOST_CREATE_TIMEOUT_S)
                except Exception:
                    log.exception("could not start a shard host on node %s", node)
                    break
                self.live[host.name] = host
                log.info("shard host %s started on joining node %s", host.name, node)
        if self.on_hosts_changed is not None:
            self.on_hosts_changed(list(self.live.values()))

    async def _rebalance(self, reason: str) -> None:
        """Move shards from the most to the least loaded hosts until within one."""
        hosts = [h for h in self.live.values() if h.node_id not in self.drained]
        if len(hosts) < 2:
            return
        for _ in range(REBALANCE_MOVES_MAX):
            shard_map = await shard_map_store.load(self.pool)
            load = {h.name: [p.shard_id for p in shard_map.places if p.host == h.name]
                    for h in hosts}
            busiest = max(hosts, key=lambda h: (len(load[h.name]), -h.index))
            idlest = min(hosts, key=lambda h: (len(load[h.name]), h.index))
            if len(load[busiest.name]) - len(load[idlest.name]) <= 1:
                return
            try:
                await self._move(load[busiest.name][-1], idlest, "coordinator", reason)
            except CoordinatorError as exc:
                log.warning("rebalance stopped: %s", exc.message)
                return

    async def _repair(self, probes: dict[str, _Probe]) -> None:
        """A shard its host reports lost while the map still names that host: adopt again."""
        for name, probe in probes.items():
            host = self.live.get(name)
            if host is None:
                continue
            for shard, stats in probe.stats.get("shards", {}).items():
                if stats.get("status") != "lost" or int(shard) in self.moving:
                    continue
                place = (await shard_map_store.load(self.pool)).places[int(shard)]
                if place.host == name and place.state == shard_map_store.SERVING:
                    log.warning("shard %s lost on %s: adopting it again", shard, name)
                    with contextlib.suppress(Exception):
                        await self._adopt(host, int(shard))

