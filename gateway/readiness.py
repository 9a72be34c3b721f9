"""Readiness: can this gateway get a request committed right now?

/readyz must say "not ready" while the system cannot commit (a load balancer then sends
traffic elsewhere, an operator sees why) and "ready" again as soon as it can, without
anyone restarting anything. A probe of its own per request would put Postgres and Redis
on the path of every health check; instead one background task checks every `every_s`:
- Postgres: `SELECT 1` on the gateway's pool;
- Redis: PING on the gateway's coordination client;
- shards: every shard host answers its stats, and every logical shard is `serving`
  (not inactive, reloading after a storage failure, or lost to another owner);
each check bounded by `timeout_s`. /readyz answers from the last round, so it never waits
on a sick dependency itself; the round's age is shown so that a stuck checker is visible.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

log = logging.getLogger("lendcore.readiness")

Check = Callable[[], Awaitable[str | None]]  # None when healthy, else why not
JSON = msgspec.json.Encoder()


class Readiness:
    def __init__(
        self, checks: dict[str, Check], every_s: float = 1.0, timeout_s: float = 1.0
    ) -> None:
        self.checks = checks
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.failing: dict[str, str] = {"startup": "first check not run yet"}
        self.checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def is_ready(self) -> bool:
        return not self.failing and self._fresh()

    def body(self) -> bytes:
        if self.is_ready():
            return b'{"status":"ready"}'
        failing = dict(self.failing)
        if not self._fresh():
            failing["checker"] = "no check finished in the last few seconds"
        return JSON.encode({"status": "not_ready", "failing": failing})

    async def check_now(self) -> None:
        """One round of every check, concurrently."""
        names = list(self.checks)
        results = await asyncio.gather(*(self._bounded(self.checks[name]) for name in names))
        failing = {name: why for name, why in zip(names, results, strict=True) if why}
        if failing != self.failing:
            if failing:
                log.warning("not ready: %s", failing)
            else:
                log.info("ready again")
        self.failing = failing
        self.checked_at = time.monotonic()

    def _fresh(self) -> bool:
        return (
            self.checked_at is not None
            and time.monotonic() - self.checked_at <= 3 * self.every_s + self.timeout_s
        )

    async def _bounded(self, check: Check) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await check()
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - a failing dependency, whatever it raises
            return f"{type(exc).__name__}: {exc}"[:200]

    async def _run(self) -> None:
        while True:
            await self.check_now()
            await asyncio.sleep(self.every_s)


def shards_not_serving(host_stats: list[dict[str, Any]]) -> str | None:
    """Why the shards cannot all commit, from the hosts' stats; None when all serve."""
    not_serving = {
        shard_id: shard["status"]
        for host in host_stats
        for shard_id, shard in host.get("shards", {}).items()
        if shard["status"] != "serving"
    }
    if not_serving:
        listed = ", ".join(f"{s}: {status}" for s, status in sorted(not_serving.items())[:8])
        return f"{len(not_serving)} shard(s) not serving ({listed})"
    return None
