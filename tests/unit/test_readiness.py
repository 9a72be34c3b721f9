"""Readiness (gateway/readiness.py): /readyz answers from the last round of checks."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.readiness import Readiness, shards_not_serving


async def healthy() -> str | None:
    return None


async def down() -> str | None:
    raise ConnectionRefusedError("connection refused")


async def hung() -> str | None:
    await asyncio.sleep(10)
    return None


@pytest.mark.asyncio
async def test_not_ready_before_the_first_round_and_ready_after_a_healthy_one() -> None:
    readiness = Readiness({"postgres": healthy, "redis": healthy})
    assert not readiness.is_ready()
    await readiness.check_now()
    assert readiness.is_ready()
    assert json.loads(readiness.body()) == {"status": "ready"}


@pytest.mark.asyncio
async def test_a_failing_or_hung_check_says_why_and_recovery_is_seen() -> None:
    checks = {"postgres": down, "redis": hung, "shards": healthy}
    readiness = Readiness(checks, timeout_s=0.05)
    await readiness.check_now()
    assert not readiness.is_ready()
    body = json.loads(readiness.body())
    assert body["status"] == "not_ready"
    assert body["failing"] == {
        "postgres": "ConnectionRefusedError: connection refused",
        "redis": "no answer within 0.05 s",
    }
    checks["postgres"] = checks["redis"] = healthy
    await readiness.check_now()
    assert readiness.is_ready()


@pytest.mark.asyncio
async def test_a_stale_round_is_not_ready() -> None:
    """A checker that stopped running must not keep saying ready."""
    readiness = Readiness({"postgres": healthy}, every_s=0.01, timeout_s=0.01)
    await readiness.check_now()
    assert readiness.is_ready()
    await asyncio.sleep(0.1)
    assert not readiness.is_ready()
    assert "checker" in json.loads(readiness.body())["failing"]


@pytest.mark.asyncio
async def test_the_background_task_keeps_the_answer_fresh() -> None:
    readiness = Readiness({"postgres": healthy}, every_s=0.01, timeout_s=0.01)
    readiness.start()
    try:
        await asyncio.sleep(0.15)
        assert readiness.is_ready()
    finally:
        await readiness.stop()


def test_shards_not_serving_lists_them() -> None:
    serving = {"status": "serving"}
    stats = [
        {"shards": {"0": serving, "2": {"status": "reloading"}}},
        {"shards": {"1": serving, "3": {"status": "lost"}}},
    ]
    assert shards_not_serving(stats) == "2 shard(s) not serving (2: reloading, 3: lost)"
    assert shards_not_serving([{"shards": {"0": serving}}]) is None
