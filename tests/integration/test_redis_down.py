"""Redis coordinates but is not the truth: with Redis unreachable, the partner API answers
503 with Retry-After (never a 5xx of another kind), and nothing changes in the book."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import RunningSystem, fresh_system
from factories import application

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
def system_without_redis(ray_cluster: None) -> Iterator[RunningSystem]:
    with fresh_system(LENDCORE_REDIS_URL=UNREACHABLE_REDIS) as running:
        yield running


@pytest.mark.slow
def test_requests_get_503_with_retry_after_and_change_nothing(
    system_without_redis: RunningSystem,
) -> None:
    client = system_without_redis.client()
    try:
        posted = client.post("/v1/applications", application())
        read = client.get("/v1/loans/LN-0001-0000000001")
    finally:
        client.close()
    for reply in (posted, read):
        assert reply.status_code == 503, reply.text
        assert reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["code"] == "unavailable"
    pool = system_without_redis.pg()
    rows = system_without_redis.run(pool.fetchval(
        "SELECT (SELECT count(*) FROM applications) + (SELECT count(*) FROM customers)"
    ))
    assert rows == 0, "a refused request changed nothing"
