"""Microbenchmark: what carrying one call from the gateway to a shard host costs, by Ray and
by the host's data port.

Run: python -m loadtests.bench_host_transport [--calls 3000] [--rounds 3] [--commands 15]

An async Ray actor, as the shard host is, whose `submit` answers at once (the first half of
the payload, so replies are about as big as a repayment call's), called from this process
(the driver, as the gateway is) one call at a time, as the router's fill makes them, each
carrying `--commands` × 300 bytes (a repayment's envelope is about that):

* `ray` (the baseline): `await actor.submit.remote(payload)`, what the gateway did before
  `[gateway] host_transport = "socket"`;
* `socket`: the same actor's `submit`, served by its data port (actors/data_port.py) and
  called through the gateway's link (gateway/host_link.py).

Figures, per call: `<way>_actor_us` and `<way>_driver_us`, the CPU of the actor's process and
of this one (psutil), and `<way>_wall_us`. `socket_ratio` = socket / ray, both sides' CPU
added. Each figure is the best of `--rounds`, the two ways interleaved. The last line is
`host_transport_bench ok` followed by every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

import psutil
import ray

from actors.data_port import DataPort
from gateway.host_link import HostLink

ENVELOPE_BYTES = 300


@ray.remote
class EchoHost:
    """Answers like a shard host that has nothing to do: the first half of the payload."""

    def __init__(self) -> None:
        self.port = DataPort(self.submit)

    async def submit(self, payload: bytes) -> bytes:
        return payload[: len(payload) // 2]

    async def data_endpoint(self) -> tuple[str, int, bytes]:
        host, port = await self.port.start("127.0.0.1")
        return host, port, self.port.token

    def pid(self) -> int:
        return os.getpid()


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def _round(call, calls: int, actor: psutil.Process, payload: bytes) -> dict[str, float]:
    me = psutil.Process()
    actor_before, driver_before, started = _cpu_s(actor), _cpu_s(me), time.perf_counter()
    for _ in range(calls):
        reply = await call(payload)
        if len(reply) != len(payload) // 2:
            raise RuntimeError("a call answered something else")
    return {
        "actor_us": (_cpu_s(actor) - actor_before) * 1e6 / calls,
        "driver_us": (_cpu_s(me) - driver_before) * 1e6 / calls,
        "wall_us": (time.perf_counter() - started) * 1e6 / calls,
    }


async def run(calls: int, rounds: int, commands: int) -> dict[str, float]:
    host = EchoHost.remote()  # type: ignore[attr-defined]
    actor = psutil.Process(await host.pid.remote())
    link = HostLink("echo", lambda: host.data_endpoint.remote())
    ways = {"ray": lambda p: host.submit.remote(p), "socket": link.call}
    payload = b"x" * (ENVELOPE_BYTES * commands)
    best: dict[str, float] = {}
    try:
        for call in ways.values():  # warm up: connections, Ray's worker, the port
            await _round(call, 100, actor, payload)
        for _ in range(rounds):
            for way, call in ways.items():
                for name, value in (await _round(call, calls, actor, payload)).items():
                    key = f"{way}_{name}"
                    best[key] = min(best.get(key, float("inf")), value)
    finally:
        await link.close()
        ray.kill(host)
    best["socket_ratio"] = ((best["socket_actor_us"] + best["socket_driver_us"])
                            / (best["ray_actor_us"] + best["ray_driver_us"]))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=15)
    args = parser.parse_args()
    if not (1 <= args.calls <= 1_000_000 and 1 <= args.rounds <= 100
            and 1 <= args.commands <= 2000):
        parser.error("--calls 1..1000000, --rounds 1..100, --commands 1..2000")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    try:
        figures = asyncio.run(run(args.calls, args.rounds, args.commands))
    finally:
        ray.shutdown()
    print("host_transport_bench ok " + " ".join(
        f"{k}={v:.2f}" if k.endswith("ratio") else f"{k}={v:.0f}"
        for k, v in sorted(figures.items())), flush=True)


if __name__ == "__main__":
    main()
