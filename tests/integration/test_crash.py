"""Kill shard hosts repeatedly during a few thousand repayments; then prove that no
acknowledged repayment is lost or doubled and that the books still balance and reconcile."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import ray
from conftest import RunningSystem, fresh_system
from factories import application

from loadtests.client import PartnerClient

LOANS = 40
WORKERS = 12
REPAYMENTS_PER_WORKER = 250  # 3,000 in all
AMOUNT = 100
KILLS = 8
KILL_EVERY_S = 0.7
CLIENT_RETRY_DEADLINE_S = 60


@pytest.fixture
def crash_system(ray_cluster: None) -> Iterator[RunningSystem]:
    with fresh_system() as running:
        yield running


def _book_loans(client: PartnerClient) -> list[str]:
    loans = []
    for _ in range(LOANS):
        applied = client.post("/v1/applications", application())
        assert applied.status_code == 201, applied.text
        booked = client.post("/v1/loans", {"application_id": applied.json()["application_id"]})
        assert booked.status_code == 201, booked.text
        loans.append(booked.json()["loan_id"])
    return loans


def _repay_until_acknowledged(client: PartnerClient, loan_id: str, ref: str) -> dict:
    """What a careful partner does: same key and body until a definitive answer."""
    body = {"amount": AMOUNT, "external_ref": ref, "kind": "regular"}
    deadline = time.monotonic() + CLIENT_RETRY_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            reply = client.post(f"/v1/loans/{loan_id}/repayments", body, key=ref)
        except httpx.TransportError:  # the connection failed: retry with the same key
            time.sleep(0.1)
            continue
        if reply.status_code == 201:
            return reply.json()
        assert reply.status_code in (409, 503), reply.text  # in progress / recovering
        time.sleep(0.1)
    raise AssertionError(f"repayment {ref} not acknowledged within {CLIENT_RETRY_DEADLINE_S} s")


def _killer(system: RunningSystem, stop: threading.Event, kills: list[int]) -> None:
    rng = random.Random(7)
    while not stop.is_set() and len(kills) < KILLS:
        time.sleep(KILL_EVERY_S)
        host_id = rng.randrange(len(system.system.hosts))
        ray.kill(system.system.hosts[host_id], no_restart=False)  # Ray restarts it
        kills.append(host_id)


@pytest.mark.slow
def test_no_acknowledged_repayment_lost_or_doubled_under_host_kills(
    crash_system: RunningSystem,
) -> None:
    setup = crash_system.client()
    loans = _book_loans(setup)
    acknowledged: dict[str, dict] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        client = crash_system.client()
        try:
            for n in range(REPAYMENTS_PER_WORKER):
                ref = f"crash-{index}-{n}"
                body = _repay_until_acknowledged(client, loans[(index * 7 + n) % LOANS], ref)
                with lock:
                    acknowledged[ref] = body
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            client.close()

    stop = threading.Event()
    kills: list[int] = []
    killer = threading.Thread(target=_killer, args=(crash_system, stop, kills))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    killer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    killer.join()
    assert not failures, failures[0]
    assert len(kills) >= 3, "the test must actually kill hosts while repayments run"
    assert len(acknowledged) == WORKERS * REPAYMENTS_PER_WORKER

    pool = crash_system.pg()
    epochs = crash_system.run(pool.fetchval("SELECT max(epoch) FROM shard_lease"))
    assert epochs >= 3, "restarted hosts must have re-taken their shards (epoch + 1 each time)"
    rows = crash_system.run(pool.fetch(
        "SELECT external_ref, count(*) AS n, min(repayment_id) AS id FROM repayments "
        "WHERE external_ref LIKE 'crash-%' GROUP BY external_ref"
    ))
    stored = {row["external_ref"]: (row["n"], row["id"]) for row in rows}
    assert set(stored) == set(acknowledged), "every acknowledged repayment is stored, no other"
    assert all(n == 1 for n, _ in stored.values()), "no repayment applied twice"
    for ref, body in acknowledged.items():
        assert stored[ref][1] == body["repayment_id"], f"{ref}: acknowledged id != stored id"

    # Every loan: memory (served by the restarted hosts) == repayments table == ledger.
    for loan_id in loans:
        loan = setup.get(f"/v1/loans/{loan_id}").json()
        paid_principal, paid_interest = crash_system.run(pool.fetchrow(
            "SELECT coalesce(sum(principal), 0)::int8, coalesce(sum(interest), 0)::int8 "
            "FROM repayments WHERE loan_id = $1", loan_id,
        ))
        ledger_principal = crash_system.run(pool.fetchval(
            "SELECT coalesce(sum(debit - credit), 0)::int8 FROM journal_lines "
            "WHERE loan_id = $1 AND account IN ('1101', '1102')", loan_id,
        ))
        assert loan["outstanding"]["principal"] == loan["principal"] - paid_principal
        assert ledger_principal == loan["outstanding"]["principal"]
        assert sum(i["paid"]["interest"] for i in loan["schedule"]) == paid_interest

    totals = crash_system.run(pool.fetchrow(
        "SELECT sum(debit)::int8 AS d, sum(credit)::int8 AS c FROM journal_lines"
    ))
    balances = crash_system.run(pool.fetchrow(
        "SELECT sum(debit)::int8 AS d, sum(credit)::int8 AS c FROM account_balances"
    ))
    assert totals["d"] == totals["c"]
    assert (balances["d"], balances["c"]) == (totals["d"], totals["c"])
    cash_in = crash_system.run(pool.fetchval(
        "SELECT sum(debit)::int8 FROM journal_lines WHERE account = '1001'"
    ))
    assert cash_in == AMOUNT * len(acknowledged), "cash received = acknowledged repayments"
