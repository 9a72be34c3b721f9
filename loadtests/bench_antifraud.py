"""Microbenchmark: Redis's time per anti-fraud screen of an application.

Run: python -m loadtests.bench_antifraud [--url redis://127.0.0.1:6379/0] [--rounds 3]
     [--screens 2000]

`gateway.antifraud.AntiFraud.screen` is one Lua script per application: six event sets
counted and recorded, three blacklist memberships read. Against the Redis of `--url` (keys
under a fresh prefix, removed after), one call at a time, over 200 identities, 50 devices
and 20 IPs so the sets hold a few dozen members as they do under load:

* `screen_us`: Redis's time running the script, per screen, as Redis itself times its
  commands (`INFO commandstats`, EVALSHA's microseconds over its calls): the script alone,
  none of the network handling around it;
* `baseline_us` (measured in the same run, interleaved): the same for a script that only
  returns 1: the floor of running a script at all.

`screen_ratio` = screen / baseline. Each figure is the best of `--rounds` rounds. Other
clients' EVALSHA calls meanwhile count too: run it on an otherwise idle Redis. The last line is
`antifraud_bench ok` followed by every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio

from gateway.antifraud import AntiFraud

IDENTITIES, DEVICES, IPS = 200, 50, 20
_NOOP_LUA = "return 1"


async def _evalsha_usec(client: redis.asyncio.Redis) -> tuple[int, int]:
    """(calls, microseconds) of EVALSHA so far, as Redis counts them (nothing listed before
    the first EVALSHA since the server started)."""
    stats = (await client.info("commandstats")).get("cmdstat_evalsha")
    return (0, 0) if stats is None else (int(stats["calls"]), int(stats["usec"]))


async def _script_us(client: redis.asyncio.Redis, run: Callable[[int], Awaitable[object]],
                     count: int) -> float:
    calls_before, usec_before = await _evalsha_usec(client)
    for i in range(count):
        await run(i)
    calls, usec = await _evalsha_usec(client)
    if calls - calls_before < count:
        raise RuntimeError(f"Redis counted {calls - calls_before} EVALSHA for {count} script "
                           "calls: the scripts did not run as EVALSHA, the figure would be wrong")
    return (usec - usec_before) / (calls - calls_before)


async def _screens(af: AntiFraud, client: redis.asyncio.Redis, ids: list[str], count: int,
                   ) -> float:
    def screen(i: int) -> Awaitable[object]:
        return af.screen("demo", ids[i % IDENTITIES], ids[i * 7 % IDENTITIES],
                         ids[i * 3 % DEVICES], f"10.0.{i % IPS}.1", int(time.time() * 1000))

    return await _script_us(client, screen, count)


async def _noops(client: redis.asyncio.Redis, count: int) -> float:
    script = client.register_script(_NOOP_LUA)
    await script(keys=[], args=[])  # loaded: the runs below are EVALSHA alone
    return await _script_us(client, lambda _: script(keys=[], args=[]), count)


async def measure(url: str, rounds: int, screens: int) -> tuple[float, float]:
    client = redis.asyncio.Redis.from_url(url)
    prefix = f"lendcore-bench-af-{uuid.uuid4().hex[:8]}:"
    af = AntiFraud(
        client, prefix, id_window_s=86400, phone_window_s=86400, device_window_s=86400,
        ip_window_s=86400, device_identities_window_s=7 * 86400,
        id_partners_window_s=30 * 86400, max_events_per_key=1000,
    )
    ids = [uuid.uuid4().hex for _ in range(IDENTITIES)]
    best_screen = best_noop = float("inf")
    try:
        for _ in range(rounds):
            best_screen = min(best_screen, await _screens(af, client, ids, screens))
            best_noop = min(best_noop, await _noops(client, screens))
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.unlink(*keys[start:start + 1000])
        await client.aclose()
    return best_screen, best_noop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="the Redis to use")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (best counts)")
    parser.add_argument("--screens", type=int, default=2000, help="screens per round")
    args = parser.parse_args()
    if args.rounds < 1 or args.screens < 1:
        parser.error("--rounds and --screens must be at least 1")
    screen, noop = asyncio.run(measure(args.url, args.rounds, args.screens))
    print(f"antifraud_bench ok screen_us={screen:.1f} baseline_us={noop:.1f} "
          f"screen_ratio={screen / noop:.1f}", flush=True)


if __name__ == "__main__":
    main()
