"""The router following the shard map (gateway/router.py): a `shard_moved` reply or a gone
host makes it re-read the map and send the same command to the new owner."""

from __future__ import annotations

import asyncio

import pytest

from gateway.router import HostChannel, HostGone, ShardRouter
from lending.commands import BATCH_DECODER, BATCH_ENCODER, GetLoan, Reply, error_reply

LOAN = "LN-0000-0000000001"


class Hosts:
    """Fake shard hosts: `owner` serves shard 0; any other host answers shard_moved, and a
    host in `gone` raises HostGone."""

    def __init__(self) -> None:
        self.owner = "a"
        self.mapped: str | None = None  # what the map says, when not the owner
        self.gone: set[str] = set()
        self.calls: list[tuple[str, list[str]]] = []
        self.map_reads = 0
        self.map_version = 1

    async def send(self, host: str, payload: bytes) -> bytes:
        envelopes = BATCH_DECODER.decode(payload)
        self.calls.append((host, [e.command.idem_key if hasattr(e.command, "idem_key")
                                  else e.command.loan_id for e in envelopes]))  # type: ignore[union-attr]
        if host in self.gone:
            raise HostGone(host)
        replies = [
            Reply(200, host.encode()) if host == self.owner
            else error_reply(503, "shard_moved", "not here")
            for _ in envelopes
        ]
        return BATCH_ENCODER.encode(replies)

    async def load_map(self) -> tuple[int, list[str]]:
        self.map_reads += 1
        return self.map_version, [self.mapped or self.owner]

    async def load_version(self) -> int:
        return self.map_version


def make_router(hosts: Hosts, deadline_s: float = 5.0, check_s: float = 60.0) -> ShardRouter:
    def new_channel(host: str) -> HostChannel:
        return HostChannel(host, hosts.send, items_max=10, in_flight_max=2, retryable=())

    return ShardRouter(["a"], {}, pending_max=100, retry_deadline_s=deadline_s,
                       new_channel=new_channel, load_map=hosts.load_map,
                       load_version=hosts.load_version, map_version=1,
                       refresh_min_interval_s=0.01, version_check_s=check_s)


@pytest.mark.asyncio
async def test_a_moved_shard_is_followed_to_its_new_owner() -> None:
    hosts = Hosts()
    router = make_router(hosts)
    router.start()
    try:
        assert (await router.call(0, GetLoan("demo", LOAN))).body == b"a"
        hosts.owner, hosts.map_version = "b", 2  # the shard moved; the router does not know
        reply = await router.call(0, GetLoan("demo", LOAN))
        assert reply.status == 200 and reply.body == b"b"
        assert [host for host, _ in hosts.calls] == ["a", "a", "b"]
        assert router.map_version == 2 and router.shard_hosts == ["b"]
        assert hosts.map_reads >= 1
    finally:
        await router.close()


@pytest.mark.asyncio
async def test_a_gone_host_makes_the_router_read_the_map_again() -> None:
    hosts = Hosts()
    router = make_router(hosts)
    router.start()
    try:
        hosts.gone.add("a")
        pending = router.call(0, GetLoan("demo", LOAN))
        await asyncio.sleep(0.1)
        assert not pending.done()  # retried on "a" while the map still says "a"
        hosts.owner, hosts.map_version = "c", 5  # the coordinator re-homed the shard
        reply = await asyncio.wait_for(pending, 3)
        assert reply.body == b"c"
        await router.refresh()
        assert "a" not in router.channels  # the gone host's channel, idle, was closed
    finally:
        await router.close()


@pytest.mark.asyncio
async def test_while_the_map_does_not_move_the_command_waits_then_gets_503() -> None:
    hosts = Hosts()
    router = make_router(hosts, deadline_s=0.5)
    router.start()
    try:
        hosts.owner, hosts.mapped = "nobody", "a"  # "a" answers shard_moved, the map says "a"
        reply = await router.call(0, GetLoan("demo", LOAN))
        assert reply.status == 503 and reply.code == "unavailable"
        assert len(hosts.calls) > 3  # it kept trying until the deadline
    finally:
        await router.close()


@pytest.mark.asyncio
async def test_the_periodic_version_check_picks_up_a_new_map() -> None:
    hosts = Hosts()
    router = make_router(hosts, check_s=0.05)
    router.start()
    try:
        hosts.owner, hosts.map_version = "b", 7
        for _ in range(100):
            if router.map_version == 7:
                break
            await asyncio.sleep(0.02)
        assert router.shard_hosts == ["b"]
        assert (await router.call(0, GetLoan("demo", LOAN))).body == b"b"
        assert [host for host, _ in hosts.calls] == ["b"]  # no bounce: it knew already
    finally:
        await router.close()


@pytest.mark.asyncio
async def test_refreshes_are_single_flight() -> None:
    hosts = Hosts()
    gate = asyncio.Event()
    reads = 0

    async def slow_load() -> tuple[int, list[str]]:
        nonlocal reads
        reads += 1
        await gate.wait()
        return 1, ["a"]

    router = ShardRouter(["a"], {}, 100, 5.0, new_channel=lambda h: HostChannel(
        h, hosts.send, 10, 2, ()), load_map=slow_load, load_version=hosts.load_version,
        refresh_min_interval_s=0.0)
    for _ in range(50):
        router.request_refresh()
    await asyncio.sleep(0.01)
    gate.set()
    await router.refresh()
    assert reads <= 3  # one read, one more for the requests made meanwhile (+ refresh's)
    await router.close()


def test_an_older_map_is_ignored() -> None:
    router = ShardRouter(["a", "a"], {}, 100, 5.0, map_version=4)
    router.apply_map(3, ["b", "b"])
    assert router.shard_hosts == ["a", "a"]
    router.apply_map(5, ["b"])  # wrong shard count: ignored
    assert router.shard_hosts == ["a", "a"] and router.map_version == 4
