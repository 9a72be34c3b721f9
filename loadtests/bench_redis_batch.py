"""Microbenchmark: the gateway's CPU per Redis script call, batcher against redis-py.

Run: python -m loadtests.bench_redis_batch [--url redis://127.0.0.1:6379/0] [--rounds 7]

The same calls, 16 at a time from concurrent tasks (about what one event-loop tick gathers
at 2,000 requests/s), each an EVALSHA of a small script with one key and three arguments
shaped like the admission script's (a partner key, an argument of 48 bytes, an int, a
float), go through:

* `pipeline` (the baseline): the batcher as it was before, sending each tick's calls through
  redis-py's own pipeline (`transaction=False`, `execute_command("EVALSHA", ...)` per call);
* `batcher`: `gateway.redis_batch.ScriptBatcher` as the gateway runs it (hiredis packing,
  one write, replies read in order).
Both are driven the same way: 16 tasks a tick, gathered.

Each figure is the client process's CPU (`time.process_time`) per call in microseconds,
the best of `--rounds` rounds of 200 ticks, the two interleaved round by round (on a shared
machine an average mostly measures the neighbours). Redis's own CPU is not counted: it runs
the same commands either way. The last line is `redis_batch_bench ok pipeline_us_per_call=
<a> batcher_us_per_call=<b> batcher_ratio=<b/a>`. Keys are written under a prefix of their
own and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.redis_batch import ScriptBatcher

CALLS_PER_TICK = 16
TICKS_PER_ROUND = 200
SCRIPT = "redis.call('SET', KEYS[1], ARGV[1], 'EX', 60) return {'admitted', ARGV[2]}"

class PipelineBatcher(ScriptBatcher):
    """The baseline: the same batcher sending each tick's calls through redis-py's own
    pipeline (what `gateway.redis_batch` did before)."""

    async def _execute(self, calls: list[Any]) -> list[Any]:
        async with asyncio.timeout(self._timeout_s), self._client.pipeline(
            transaction=False
        ) as pipe:
            for script, keys, args, _ in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


async def _round(run_tick: Callable[[list[tuple[list[Any], list[Any]]]], Awaitable[list[Any]]],
                 prefix: str) -> float:
    calls = [([f"{prefix}{i}"], ["p" * 48, i, 3.5]) for i in range(CALLS_PER_TICK)]
    started = time.process_time()
    for _ in range(TICKS_PER_ROUND):
        replies = await run_tick(calls)
        if len(replies) != CALLS_PER_TICK or any(isinstance(r, Exception) for r in replies):
            raise RuntimeError(f"unexpected replies: {replies[:3]!r}")
    return (time.process_time() - started) / (TICKS_PER_ROUND * CALLS_PER_TICK) * 1e6


async def measure(url: str, rounds: int) -> dict[str, float]:
    client = aioredis.from_url(url, socket_timeout=None, retry=Retry(NoBackoff(), 0))
    prefix = f"lendcore-bench-redis-{uuid.uuid4().hex[:8]}:"
    try:
        script = client.register_script(SCRIPT)
        script.sha = await client.script_load(SCRIPT)
        runners = {"pipeline": PipelineBatcher(client), "batcher": ScriptBatcher(client)}

        def through(batcher: ScriptBatcher) -> Callable[[list[tuple[list[Any], list[Any]]]],
                                                         Awaitable[list[Any]]]:
            async def run_tick(calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
                return list(await asyncio.gather(
                    *(batcher.run(script, keys, args) for keys, args in calls)))
            return run_tick

        best = {"pipeline": float("inf"), "batcher": float("inf")}
        for _ in range(rounds):
            for name, batcher in runners.items():
                best[name] = min(best[name], await _round(through(batcher), prefix))
        return best
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="Redis to use")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each (best counts)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    best = uvloop.run(measure(args.url, args.rounds))
    print(f"redis_batch_bench ok pipeline_us_per_call={best['pipeline']:.1f} "
          f"batcher_us_per_call={best['batcher']:.1f} "
          f"batcher_ratio={best['batcher'] / best['pipeline']:.2f}", flush=True)


if __name__ == "__main__":
    main()
