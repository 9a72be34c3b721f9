"""Losing Redis never costs correctness: with the fast copy of an idempotency record gone,
a repeated request is answered by the shard from the record written in its commit."""

from __future__ import annotations

import redis
from conftest import REDIS_URL, RunningSystem
from factories import get_loan, new_loan, ref

from loadtests.client import PartnerClient


def _forget_in_redis(system: RunningSystem, partner: str, key: str) -> None:
    prefix = system.system.settings.redis.key_prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.delete(f"{prefix}idem:{partner}:{key}") == 1, "the fast copy existed"
    finally:
        client.close()


def test_replay_after_redis_lost_the_key_is_byte_identical_and_applies_once(
    system: RunningSystem, demo: PartnerClient,
) -> None:
    loan = new_loan(demo)
    path = f"/v1/loans/{loan['loan_id']}/repayments"
    body = {"amount": 5_000, "external_ref": ref(), "kind": "regular"}
    first = demo.post(path, body, key="durable-1")
    assert first.status_code == 201, first.text
    _forget_in_redis(system, "demo", "durable-1")

    again = demo.post(path, body, key="durable-1")

    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers.get("idempotent-replayed") == "true"
    principal = loan["outstanding"]["principal"]
    paid = first.json()["allocation"]["principal"]
    assert get_loan(demo, loan["loan_id"])["outstanding"]["principal"] == principal - paid


def test_reused_key_after_redis_lost_it_is_refused_by_the_shard(
    system: RunningSystem, demo: PartnerClient,
) -> None:
    loan = new_loan(demo)
    path = f"/v1/loans/{loan['loan_id']}/repayments"
    first = demo.post(path, {"amount": 5_000, "external_ref": ref(), "kind": "regular"},
                      key="durable-2")
    assert first.status_code == 201, first.text
    _forget_in_redis(system, "demo", "durable-2")

    other = demo.post(path, {"amount": 6_000, "external_ref": ref(), "kind": "regular"},
                      key="durable-2")

    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    before = loan["outstanding"]["principal"] - first.json()["allocation"]["principal"]
    assert get_loan(demo, loan["loan_id"])["outstanding"]["principal"] == before
    # and the original request, repeated, still gets its own first answer
    replay = demo.post(path, {"amount": 5_000, "external_ref": first.json()["external_ref"],
                              "kind": "regular"}, key="durable-2")
    assert replay.status_code == 201 and replay.content == first.content
