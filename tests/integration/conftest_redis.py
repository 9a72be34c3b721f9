"""Per-test Redis key prefix on the shared Redis, for conftests and tests to import.

The Redis at LENDCORE_TEST_REDIS_URL is shared with other users: every test gets its own
prefix and its keys are deleted afterwards. Never FLUSHDB.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("LENDCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"lendcore-test-{uuid.uuid4().hex}:"
    yield prefix
    delete_keys_with_prefix(prefix)


def delete_keys_with_prefix(prefix: str) -> None:
    # An empty or foreign prefix would delete other users' data.
    if not prefix.startswith("lendcore-test-") or len(prefix) < len("lendcore-test-") + 8:
        raise ValueError(f"refusing to delete keys outside a test prefix: {prefix!r}")
    # A uuid hex prefix holds no glob metacharacters, so MATCH cannot reach other users' keys.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
