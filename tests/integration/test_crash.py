"""Kill shard hosts repeatedly during a few thousand repayments; then prove that no
acknowledged repayment is lost or doubled and that the books still balance and reconcile.

Before the kills, a loan of every sandbox product is serviced with every kind of repayment
(prepayments keeping the term and keeping the installment, a payoff): after the restarts,
every loan reads back exactly as it was acknowledged, the reconciliation of every loan with
its journal holds, and the trial balance is the one before the kills plus exactly the
acknowledged repayments. A last, quiet restart of every host must change nothing at all.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray
from conftest import RunningSystem, fresh_system
from factories import (
    application,
    get_loan,
    new_loan,
    ops_auth,
    payoff_quote,
    reconciliation,
    repay,
    trial_balance,
)
from factories import ref as external_ref

from lending.ledger import ROLE_SIDES
from loadtests.client import PartnerClient

LOANS = 40
WORKERS = 12
REPAYMENTS_PER_WORKER = 250  # 3,000 in all
AMOUNT = 100
KILLS = 8
KILL_EVERY_S = 0.7
CLIENT_RETRY_DEADLINE_S = 60
RESTART_DEADLINE_S = 120
REDUCE = "prepay_reduce_installment"
SHORTEN = "prepay_shorten_term"
# (product, term, merchant_id, repayments in order; None = the payoff quote's total)
SERVICED: list[tuple[str, int, str | None, list[tuple[str, int | None]]]] = [
    ("CASH_EI_12", 12, None, [("regular", 91_680), (REDUCE, 200_000), (SHORTEN, 100_000)]),
    ("CASH_EP_12", 12, None, [(SHORTEN, 150_000), ("regular", 5_000), (REDUCE, 50_000)]),
    ("CASH_IF_12", 12, None, [(REDUCE, 250_000), ("regular", 3_000)]),
    ("CASH_BL_3", 3, None, [(REDUCE, 100_000)]),
    ("INST_FEE_12", 12, "M-CRASH", [("regular", 1_000), (SHORTEN, 100_000), (REDUCE, 50_000)]),
    ("CASH_EI_12", 12, None, [(REDUCE, 100_000), ("payoff", None)]),
    ("CASH_EP_12", 12, None, [(SHORTEN, 200_000), ("payoff", None)]),
]


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


def _service_loans(client: PartnerClient) -> list[str]:
    """A loan of every product, serviced with every kind of repayment (SERVICED)."""
    loan_ids = []
    for product, term, merchant_id, steps in SERVICED:
        loan = new_loan(client, amount=1_000_000, product=product, term=term,
                        merchant_id=merchant_id)
        for kind, amount in steps:
            if amount is None:
                amount = payoff_quote(client, loan["loan_id"])["total"]
            response = repay(client, loan["loan_id"], amount, kind=kind,
                             external_ref=f"serviced-{external_ref()}")
            assert response.status_code == 201, response.text
        loan_ids.append(loan["loan_id"])
    views = [get_loan(client, loan_id) for loan_id in loan_ids]
    assert {view["status"] for view in views[-2:]} == {"paid_off"}
    return loan_ids


def _paid_so_far(view: dict[str, Any]) -> int:
    return sum(sum(line["paid"].values()) for line in view["schedule"])


def _plus_repayments(balance: dict[str, Any], bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial balance `balance` plus the journal of these repayments (on the business
    date of booking nothing has accrued: interest and fees are income when collected,
    principal leaves the normal receivable)."""
    moves = {
        "1001": (sum(b["amount"] for b in bodies), 0),
        "1101": (0, sum(b["allocation"]["principal"] for b in bodies)),
        "6011": (0, sum(b["allocation"]["interest"] for b in bodies)),
        "6021": (0, sum(b["allocation"]["fee"] for b in bodies)),
    }
    assert sum(b["allocation"]["penalty"] for b in bodies) == 0
    expected = {**balance, "accounts": [dict(row) for row in balance["accounts"]]}
    rows = {row["code"]: row for row in expected["accounts"]}
    for code, (debit, credit) in moves.items():
        if debit or credit:
            row = rows[code]
            row["debit"] += debit
            row["credit"] += credit
            side = 1 if ROLE_SIDES[row["role"]] == "debit" else -1
            row["balance"] = side * (row["debit"] - row["credit"])
    expected["total_debit"] = sum(row["debit"] for row in expected["accounts"])
    expected["total_credit"] = sum(row["credit"] for row in expected["accounts"])
    return expected


def _get_until_served(client: PartnerClient, path: str) -> httpx.Response:
    """A read that may meet a restarting host: 503 or a broken connection, then retry."""
    deadline = time.monotonic() + RESTART_DEADLINE_S
    while True:
        try:
            response = client.get(path)
            if response.status_code != 503:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{path} not served again after the restart"
        time.sleep(0.1)


def _restart_every_host(system: RunningSystem) -> None:
    """Kill every shard host at once (Ray restarts them) and wait until each has rebuilt
    its shards from Postgres and re-taken them (epoch + 1 for every shard)."""
    pool = system.pg()
    hosts = system.system.hosts
    before = dict(system.run(pool.fetch("SELECT shard_id, epoch FROM shard_lease")))
    old_pids = ray.get([host.pid.remote() for host in hosts])
    for host in hosts:
        ray.kill(host, no_restart=False)
    deadline = time.monotonic() + RESTART_DEADLINE_S
    for host, old_pid in zip(hosts, old_pids, strict=True):
        while True:  # until a new process answers (a call may still reach the dying one)
            try:
                if ray.get(host.pid.remote(), timeout=30) != old_pid:
                    ray.get(host.ready.remote(), timeout=60)
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.GetTimeoutError):
                pass
            assert time.monotonic() < deadline, "a killed host did not come back"
            time.sleep(0.2)
    after = dict(system.run(pool.fetch("SELECT shard_id, epoch FROM shard_lease")))
    assert all(after[shard] > epoch for shard, epoch in before.items()), (before, after)


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
    ops = httpx.Client(base_url=crash_system.system.ops_url, timeout=30)
    serviced = _service_loans(setup)
    loans = _book_loans(setup)
    views_before = {loan_id: get_loan(setup, loan_id) for loan_id in serviced}
    balance_before = trial_balance(ops)
    assert reconciliation(ops)["reconciled"] is True
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
    # At least one restarted host re-took its shards (epoch + 1). Not one per kill: a host
    # killed again before its lazy restart served a call re-takes nothing in between.
    assert epochs >= 2, (
        f"restarted hosts must have re-taken their shards (epoch + 1 each time); "
        f"hosts killed: {kills}, highest epoch {epochs}"
    )
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
        "SELECT sum(debit)::int8 FROM journal_lines WHERE account = '1001' "
        "AND loan_id = ANY($1::text[])", loans,
    ))
    assert cash_in == AMOUNT * len(acknowledged), "cash received = acknowledged repayments"

    # The books after the restarts: every loan reconciles with its journal lines, and the
    # trial balance is the one before the kills plus exactly the acknowledged repayments.
    report = reconciliation(ops)
    assert report["reconciled"] is True, report["differences"]
    assert report["loans_checked"] == len(loans) + len(serviced)
    balance_after = trial_balance(ops)
    assert balance_after == _plus_repayments(balance_before, list(acknowledged.values()))
    # Every loan reads back as it was acknowledged: the serviced loans (untouched during
    # the kills) as before, the others as their last acknowledged repayment left them.
    for loan_id, view in views_before.items():
        assert get_loan(setup, loan_id) == view, loan_id
    last_view: dict[str, dict[str, Any]] = {}
    for body in acknowledged.values():
        seen = last_view.get(body["loan_id"])
        if seen is None or _paid_so_far(body["loan"]) > _paid_so_far(seen):
            last_view[body["loan_id"]] = body["loan"]
    assert set(last_view) == set(loans)
    for loan_id, view in last_view.items():
        assert get_loan(setup, loan_id) == view, loan_id

    # A quiet restart of every host (nothing in flight) changes nothing, to the byte.
    paths = [f"/v1/loans/{loan_id}" for loan_id in serviced + loans]
    paths += [f"/v1/loans/{loan_id}/payoff" for loan_id in serviced + loans]
    reads_before = {path: setup.get(path) for path in paths}
    ledger_before = ops.get("/ops/ledger/trial-balance", headers=ops_auth()).content
    report_before = ops.get("/ops/ledger/reconciliation", headers=ops_auth()).content
    _restart_every_host(crash_system)
    for path, before in reads_before.items():
        after = _get_until_served(setup, path)
        assert (after.status_code, after.content) == (before.status_code, before.content), path
    assert ops.get("/ops/ledger/trial-balance", headers=ops_auth()).content == ledger_before
    assert ops.get("/ops/ledger/reconciliation", headers=ops_auth()).content == report_before
    assert reconciliation(ops)["reconciled"] is True
    ops.close()
    setup.close()
