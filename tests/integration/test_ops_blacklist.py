"""Operator blacklists (DOMAIN.md §6, API.md "Operator API"): auth, validation, the audit
row of every write, Postgres as the truth and the Redis sets screening reads rebuilt from it.

Runs against the session's running system (tests/integration/conftest.py `system`); the
identifiers used are fresh, so the entries and events it leaves touch no other test."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from conftest_redis import REDIS_URL
from factories import ADMIN_TOKEN, assert_error, fresh_id, ops_auth, with_bad_check_digit

from gateway.antifraud import AntiFraud, Blacklist
from gateway.ops_api import Operator, OpsApi
from gateway.pii import PiiVault
from lending.screening import BlacklistHits

RISK_TOKEN = f"risk-{uuid.uuid4().hex}"
VIEWER_TOKEN = f"viewer-{uuid.uuid4().hex}"
OPERATOR_TOKEN = f"operator-{uuid.uuid4().hex}"


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def roles(system: Any) -> Iterator[None]:
    """Operators with one role each, next to the dev config's admin, for this test only."""
    app = next(server.config.app for server in system.system._servers
               if isinstance(server.config.app, OpsApi))
    added = [Operator("risk-1", RISK_TOKEN, ["risk_officer"]),
             Operator("viewer-1", VIEWER_TOKEN, ["viewer"]),
             Operator("operator-1", OPERATOR_TOKEN, ["operator"])]
    app.operators.extend(added)
    yield
    for operator in added:
        app.operators.remove(operator)


@pytest.fixture
def rds(system: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def vault(system: Any) -> PiiVault:
    security = system.system.settings.security
    return PiiVault(bytes.fromhex(security.pii_key_hex), bytes.fromhex(security.hash_key_hex))


def prefix(system: Any) -> str:
    return str(system.system.settings.redis.key_prefix)


def blacklist(system: Any) -> Blacklist:
    value: Blacklist = system.system.blacklist
    return value


def antifraud(system: Any) -> AntiFraud:
    value: AntiFraud = system.system.antifraud
    return value


def fresh_phone() -> str:
    return "139" + str(uuid.uuid4().int)[:8]


def fresh_device() -> str:
    return f"dev-{uuid.uuid4().hex[:12]}"


def add(ops: httpx.Client, kind: str, value: str, reason: str = "fraud ring",
        token: str = ADMIN_TOKEN) -> httpx.Response:
    return ops.post("/ops/blacklist", json={"kind": kind, "value": value, "reason": reason},
                    headers=ops_auth(token))


def audit_rows(system: Any, target: str) -> list[dict[str, Any]]:
    rows = system.run(system.pg().fetch(
        "SELECT shard_id, actor, action, target, before::text AS before, after::text AS after,"
        " at FROM audit_log WHERE target = $1 ORDER BY audit_id", target,
    ))
    return [{**dict(r), "before": None if r["before"] is None else json.loads(r["before"]),
             "after": None if r["after"] is None else json.loads(r["after"])} for r in rows]


def screen(system: Any, id_hash: str = "", phone_hash: str = "",
           device: str = "") -> BlacklistHits:
    _, hits = system.run(antifraud(system).screen(
        "demo", id_hash or f"id-{uuid.uuid4().hex}", phone_hash or f"ph-{uuid.uuid4().hex}",
        device or fresh_device(), f"ip-{uuid.uuid4().hex}", int(time.time() * 1000),
    ))
    return hits


# ---- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/ops/blacklist"), ("POST", "/ops/blacklist"),
     ("DELETE", "/ops/blacklist/device/d-1")],
)
@pytest.mark.parametrize("headers", [{}, ops_auth("wrong-token"), {"Authorization": "Basic x"}])
def test_blacklist_without_a_valid_token_is_401(
    ops: httpx.Client, method: str, path: str, headers: dict[str, str]
) -> None:
    response = ops.request(method, path, headers=headers,
                           json={"kind": "device", "value": "d-1", "reason": "r"}
                           if method == "POST" else None)
    assert_error(response, 401, "unauthenticated")


@pytest.mark.parametrize("token", [VIEWER_TOKEN, OPERATOR_TOKEN])
def test_writes_need_risk_officer(
    ops: httpx.Client, roles: None, system: Any, token: str
) -> None:
    device = fresh_device()
    assert_error(add(ops, "device", device, token=token), 403, "forbidden")
    assert_error(ops.delete(f"/ops/blacklist/device/{device}", headers=ops_auth(token)),
                 403, "forbidden")
    # Nothing was written: no row, no audit.
    assert audit_rows(system, f"blacklist:device:{device}") == []
    # Nor do they read blacklists: that is for risk officers (docs/operations.md).
    assert_error(ops.get("/ops/blacklist", headers=ops_auth(token)), 403, "forbidden")
    assert ops.get("/ops/blacklist", headers=ops_auth(RISK_TOKEN)).status_code == 200


def test_risk_officer_and_admin_write(ops: httpx.Client, roles: None, system: Any) -> None:
    device = fresh_device()
    assert add(ops, "device", device, token=RISK_TOKEN).status_code == 200
    response = ops.delete(f"/ops/blacklist/device/{device}", headers=ops_auth())  # admin
    assert response.status_code == 200, response.text
    actors = [row["actor"] for row in audit_rows(system, f"blacklist:device:{device}")]
    assert actors == ["risk-1", "admin"]


# ---- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "passport", "value": "x", "reason": "r"}, "kind"),
        ({"kind": "id_number", "value": "12345", "reason": "r"}, "value"),
        ({"kind": "id_number", "value": "11010519900307001Y", "reason": "r"}, "value"),
        ({"kind": "phone", "value": "12800138000", "reason": "r"}, "value"),
        ({"kind": "phone", "value": "1380013800", "reason": "r"}, "value"),
        ({"kind": "device", "value": "", "reason": "r"}, "value"),
        ({"kind": "device", "value": "d" * 129, "reason": "r"}, "value"),
        ({"kind": "device", "value": "d-1", "reason": ""}, "reason"),
        ({"kind": "device", "value": "d-1", "reason": "   "}, "reason"),
        ({"kind": "device", "value": "d-1"}, "reason"),
        ({"kind": "device", "reason": "r"}, "value"),
        ({"value": "d-1", "reason": "r"}, "kind"),
        ({"kind": "device", "value": 42, "reason": "r"}, "value"),
        ({"kind": "device", "value": "d-1", "reason": "r", "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_400_with_the_field(
    ops: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = ops.post("/ops/blacklist", json=body, headers=ops_auth())
    assert_error(response, 400, "invalid_request", field)


def test_a_checksum_error_is_refused_without_echoing_the_number(ops: httpx.Client) -> None:
    bad = with_bad_check_digit(fresh_id())
    response = ops.post("/ops/blacklist", json={"kind": "id_number", "value": bad,
                                                "reason": "r"}, headers=ops_auth())
    assert_error(response, 400, "invalid_request", "value")
    assert bad not in response.text


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'{"kind": "device"'])
def test_malformed_json_is_400(ops: httpx.Client, raw: bytes) -> None:
    response = ops.post("/ops/blacklist", content=raw, headers=ops_auth())
    assert_error(response, 400, "invalid_request")


def test_an_oversized_body_is_413(ops: httpx.Client) -> None:
    body = {"kind": "device", "value": "d-1", "reason": "r" * 70000}
    assert_error(ops.post("/ops/blacklist", json=body, headers=ops_auth()),
                 413, "payload_too_large")


@pytest.mark.parametrize(
    ("query", "field"), [("?kind=passport", "kind"), ("?limit=0", "limit"),
                         ("?limit=1001", "limit"), ("?limit=x", "limit")],
)
def test_bad_list_query_is_400(ops: httpx.Client, query: str, field: str) -> None:
    assert_error(ops.get(f"/ops/blacklist{query}", headers=ops_auth()),
                 400, "invalid_request", field)


@pytest.mark.parametrize(
    ("path", "field"),
    [("/ops/blacklist/passport/x", "kind"), ("/ops/blacklist/device", "value"),
     ("/ops/blacklist/device/", "value"), ("/ops/blacklist/phone/123", "value"),
     ("/ops/blacklist/id_number/123", "value")],
)
def test_bad_delete_is_400(ops: httpx.Client, path: str, field: str) -> None:
    assert_error(ops.delete(path, headers=ops_auth()), 400, "invalid_request", field)


def test_deleting_a_missing_entry_is_404_and_audits_nothing(
    ops: httpx.Client, system: Any
) -> None:
    device = fresh_device()
    assert_error(ops.delete(f"/ops/blacklist/device/{device}", headers=ops_auth()),
                 404, "not_found")
    phone = fresh_phone()
    assert_error(ops.delete(f"/ops/blacklist/phone/{phone}", headers=ops_auth()),
                 404, "not_found")
    assert audit_rows(system, f"blacklist:device:{device}") == []


def test_other_methods_are_404(ops: httpx.Client) -> None:
    assert ops.put("/ops/blacklist", headers=ops_auth()).status_code == 404
    assert ops.post("/ops/blacklist/device/d-1", headers=ops_auth()).status_code == 404
    assert ops.get("/ops/blacklist/device/d-1", headers=ops_auth()).status_code == 404


# ---- the life of an entry: Postgres + audit in one transaction, then Redis -------------------


def test_id_number_entry_add_replace_delete(
    ops: httpx.Client, roles: None, system: Any, rds: redis.Redis
) -> None:
    id_number = fresh_id()
    id_hash = vault(system).lookup_hash(id_number)
    target = f"blacklist:id_number:{id_hash}"
    set_key = f"{prefix(system)}bl:id_number"
    assert screen(system, id_hash=id_hash) == BlacklistHits()

    # Add: stored as the keyed hash; only a prefix of it is shown; Redis has it at once.
    response = add(ops, "id_number", id_number.lower(), reason="stolen identity",
                   token=RISK_TOKEN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] is True
    entry = body["entry"]
    assert entry["kind"] == "id_number" and entry["hashed"] is True
    assert entry["value"] == id_hash[:12] + "…"
    assert (entry["reason"], entry["added_by"]) == ("stolen identity", "risk-1")
    assert id_number not in response.text and id_hash not in response.text
    row = system.run(system.pg().fetchrow(
        "SELECT shard_id, reason, added_by FROM blacklist WHERE kind = 'id_number'"
        " AND value_hash = $1", id_hash))
    assert dict(row) == {"shard_id": 0, "reason": "stolen identity", "added_by": "risk-1"}
    assert rds.sismember(set_key, id_hash)
    assert screen(system, id_hash=id_hash) == BlacklistHits(id_number=True)

    [created] = audit_rows(system, target)
    assert (created["shard_id"], created["actor"], created["action"]) == (
        0, "risk-1", "blacklist.add")
    assert created["before"] is None
    assert created["after"]["value_hash"] == id_hash
    assert created["after"]["reason"] == "stolen identity"
    assert id_number not in str(created)

    # Listed, masked.
    listing = ops.get("/ops/blacklist?kind=id_number&limit=1000",
                      headers=ops_auth(RISK_TOKEN))
    assert listing.status_code == 200, listing.text
    assert entry in listing.json()["entries"]
    assert listing.json()["total"] >= 1
    assert id_hash not in listing.text
    assert all(e["kind"] == "id_number" for e in listing.json()["entries"])

    # Again with another reason: replaced, audited with before and after.
    response = add(ops, "id_number", id_number, reason="confirmed by police", token=RISK_TOKEN)
    assert response.status_code == 200, response.text
    assert response.json()["created"] is False
    replaced = audit_rows(system, target)[1]
    assert replaced["before"]["reason"] == "stolen identity"
    assert replaced["after"]["reason"] == "confirmed by police"

    # Delete (by the clear value): gone from Postgres and Redis, audited with before only.
    response = ops.delete(f"/ops/blacklist/id_number/{id_number}", headers=ops_auth(RISK_TOKEN))
    assert response.status_code == 200, response.text
    assert response.json()["deleted"]["reason"] == "confirmed by police"
    assert not rds.sismember(set_key, id_hash)
    assert screen(system, id_hash=id_hash) == BlacklistHits()
    removed = audit_rows(system, target)[2]
    assert (removed["action"], removed["after"]) == ("blacklist.remove", None)
    assert removed["before"]["reason"] == "confirmed by police"
    assert system.run(system.pg().fetchval(
        "SELECT count(*) FROM blacklist WHERE value_hash = $1", id_hash)) == 0
    assert_error(ops.delete(f"/ops/blacklist/id_number/{id_number}", headers=ops_auth()),
                 404, "not_found")
    assert len(audit_rows(system, target)) == 3


def test_phone_entry_can_be_deleted_by_its_full_hash(
    ops: httpx.Client, system: Any, rds: redis.Redis
) -> None:
    phone = fresh_phone()
    phone_hash = vault(system).lookup_hash(phone)
    assert add(ops, "phone", phone).status_code == 200
    assert screen(system, phone_hash=phone_hash) == BlacklistHits(phone=True)
    response = ops.delete(f"/ops/blacklist/phone/{phone_hash}", headers=ops_auth())
    assert response.status_code == 200, response.text
    assert screen(system, phone_hash=phone_hash) == BlacklistHits()


def test_device_entry_shows_the_device_id(
    ops: httpx.Client, system: Any, rds: redis.Redis
) -> None:
    device = f"{fresh_device()}/with slash"
    response = add(ops, "device", device)
    assert response.status_code == 200, response.text
    assert response.json()["entry"]["value"] == device
    assert response.json()["entry"]["hashed"] is False
    assert screen(system, device=device) == BlacklistHits(device=True)
    listing = ops.get("/ops/blacklist?kind=device&limit=1000", headers=ops_auth()).json()
    assert device in [e["value"] for e in listing["entries"]]
    quoted = device.replace("/", "%2F").replace(" ", "%20")
    response = ops.delete(f"/ops/blacklist/device/{quoted}", headers=ops_auth())
    assert response.status_code == 200, response.text
    assert screen(system, device=device) == BlacklistHits()


# ---- Redis is a copy: rebuilt from Postgres -------------------------------------------------


def test_sets_are_rebuilt_from_postgres_after_a_key_is_lost(
    ops: httpx.Client, system: Any, rds: redis.Redis
) -> None:
    device, phone = fresh_device(), fresh_phone()
    phone_hash = vault(system).lookup_hash(phone)
    assert add(ops, "device", device).status_code == 200
    assert add(ops, "phone", phone).status_code == 200
    rds.delete(f"{prefix(system)}bl:device")
    assert not rds.sismember(f"{prefix(system)}bl:device", device)

    system.run(system.system.sync_blacklists())  # what start-up calls

    assert rds.sismember(f"{prefix(system)}bl:device", device)
    assert rds.sismember(f"{prefix(system)}bl:phone", phone_hash)
    counts = system.run(blacklist(system).rebuild())
    assert counts["device"] == rds.scard(f"{prefix(system)}bl:device") >= 1
    pg_devices = system.run(system.pg().fetchval(
        "SELECT count(*) FROM blacklist WHERE kind = 'device'"))
    assert counts["device"] == pg_devices


def test_a_flushed_redis_is_rebuilt_before_the_screen_answers(
    ops: httpx.Client, system: Any, rds: redis.Redis
) -> None:
    device = fresh_device()
    assert add(ops, "device", device).status_code == 200
    p = prefix(system)
    # What a FLUSHALL does to our keys (never flush the shared Redis itself).
    rds.delete(f"{p}bl:device", f"{p}bl:phone", f"{p}bl:id_number", f"{p}bl:synced")

    assert screen(system, device=device) == BlacklistHits(device=True)
    assert rds.exists(f"{p}bl:synced") == 1
    assert rds.sismember(f"{p}bl:device", device)


def test_a_write_that_missed_redis_is_applied_before_the_next_screen(
    system: Any, rds: redis.Redis
) -> None:
    device = fresh_device()
    bl = blacklist(system)

    async def add_with_redis_failing() -> None:
        real = bl._redis
        broken = redis.asyncio.Redis(host="127.0.0.1", port=1)  # nothing listens there
        bl._redis = broken
        try:
            await bl.add("device", device, "r", "test")
        finally:
            bl._redis = real
            await broken.aclose()

    system.run(add_with_redis_failing())
    assert bl.stale
    assert not rds.sismember(f"{prefix(system)}bl:device", device)
    assert screen(system, device=device) == BlacklistHits(device=True)
    assert not bl.stale
    system.run(bl.remove("device", device, "test"))
