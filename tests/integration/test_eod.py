"""End of day on the real system (cluster/eod.py): POST /ops/eod, GET /ops/eod.

* 90 days on a small book, checked every day against figures derived by hand:
  - DPD = next business date − due date of the oldest unpaid installment (when > 0);
    bucket C (0), M1 (1–30), M2 (31–60), M3 (61–90); classification normal (0),
    special_mention (1–90);
  - penalty of an unpaid installment k after closing day X = max(0, (X − due_k) − 3 grace
    days) × round_half_up(unpaid principal_k × annual_rate_bps × 150 / (10,000 × 100 × 360)):
    the first charged day is due + 4, each charged day costs the same while unpaid;
  - interest recognised after closing day X = Σ over installments of round_half_up(I_k ×
    elapsed_k / N_k), elapsed_k = days of period k up to and including X, capped at N_k (the
    even daily spread of docs/domain-choices.md); outstanding interest = that − paid;
  - trial balance balanced and every loan reconciled with its journal after EVERY day.
* a closed date asked again returns the same report and changes nothing; a run while
  another holds the lock gets 409 eod_running.
* a run that dies mid-way (the orchestrator fails after a few chunks) and a shard host
  killed while it resumes: the rerun finishes the same date, and every loan state and the
  trial balance equal those of lending.daily.close_day applied once to the stored loans.
* partner requests during a run get 200/201, or 503 with Retry-After, and the amounts
  acknowledged are exactly those booked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import ray
from conftest import BUSINESS_DATE, RunningSystem, fresh_system
from factories import (
    ADMIN_TOKEN,
    OpsClient,
    get_loan,
    new_loan,
    ops_auth,
    reconciliation,
    repay,
    trial_balance,
)

from cluster import eod_cli
from lending.daily import close_day
from lending.loans import Loan
from lending.memory import decode_loan_row
from lending.shard_state import eod_cause

D0 = date.fromisoformat(BUSINESS_DATE)  # 2026-11-29: loans booked today are due on the 28th
GRACE = 3
_PENALTY_DENOMINATOR = 10_000 * 100 * 360


def _half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def daily_penalty(principal: int, rate_bps: int) -> int:
    return _half_up(principal * rate_bps * 150, _PENALTY_DENOMINATOR)


def bucket(dpd: int) -> str:
    table = [(0, "C"), (30, "M1"), (60, "M2"), (90, "M3"), (120, "M4")]
    return next(name for top, name in table if dpd <= top)


def classification(dpd: int) -> str:
    return "normal" if dpd == 0 else "special_mention" if dpd <= 90 else "substandard"


def interest_recognised(schedule: list[dict[str, Any]], closed: date) -> int:
    total, start = 0, D0
    for item in schedule:
        due = date.fromisoformat(item["due_date"])
        if start > closed:
            break
        days = (due - start).days
        elapsed = min(days, (closed - start).days + 1)
        total += _half_up(item["interest"] * elapsed, days)
        start = due
    return total


class Ops(OpsClient):
    def __init__(self, system: RunningSystem) -> None:
        super().__init__(system.system.ops_url, timeout=300)

    def books_hold(self) -> dict[str, Any]:
        balance = trial_balance(self.client)
        report = reconciliation(self.client)
        assert report["reconciled"], report
        return balance


@pytest.fixture
def eod_system(ray_cluster: None, tmp_path: Path) -> Iterator[RunningSystem]:
    config = tmp_path / "eod.toml"
    # Every withholding (代扣) declined: these loans are paid only as the tests say, so the
    # hand figures hold (tests/integration/test_api_collections.py covers withholding).
    config.write_text("[eod]\nchunk_loans = 2\nshard_concurrency = 2\nlock_ttl_s = 5\n"
                      "[outbox]\npayment_decline_per_mille = 1000\n")
    with fresh_system(config) as running:
        yield running


# ---- 90 days on a small book ------------------------------------------------------------------


def test_ninety_days_against_hand_figures(eod_system: RunningSystem) -> None:
    ops = Ops(eod_system)
    client = eod_system.client()
    on_time = new_loan(client, amount=1_000_000, product="CASH_EI_12", term=12)
    never = new_loan(client, amount=600_000, product="CASH_EP_12", term=6)
    late = new_loan(client, amount=800_000, product="CASH_EI_12", term=12)
    loans = {"on_time": on_time, "never": never, "late": late}
    schedules = {name: loan["schedule"] for name, loan in loans.items()}
    due = {name: [date.fromisoformat(i["due_date"]) for i in s] for name, s in schedules.items()}
    assert due["never"][0] == date(2026, 12, 28) == due["late"][0]
    paid_periods: dict[str, set[int]] = {name: set() for name in loans}
    paid_interest = {name: 0 for name in loans}
    penalty_frozen: dict[tuple[str, int], int] = {}  # penalty of installments paid late
    late_paid_on = date(2027, 1, 10)
    reports = []
    for day_index in range(90):
        day = D0 + timedelta(days=day_index)
        assert ops.business_date() == day
        # repayments of the day, before its end of day
        for name in ("on_time",):
            for k, due_date in enumerate(due[name]):
                if due_date == day:
                    item = schedules[name][k]
                    response = repay(client, loans[name]["loan_id"], item["total"])
                    assert response.status_code == 201, response.text
                    paid_periods[name].add(k)
                    paid_interest[name] += item["interest"]
        if day == late_paid_on:
            item = schedules["late"][0]
            charged = (late_paid_on - timedelta(days=1) - due["late"][0]).days - GRACE
            penalty = charged * daily_penalty(item["principal"], late["annual_rate_bps"])
            assert charged == 9 and penalty > 0
            view = get_loan(client, late["loan_id"])
            assert view["schedule"][0]["penalty"] == penalty, view["schedule"][0]
            response = repay(client, late["loan_id"], item["total"] + penalty)
            assert response.status_code == 201, response.text
            assert response.json()["allocation"]["penalty"] == penalty
            paid_periods["late"].add(0)
            paid_interest["late"] += item["interest"]
            penalty_frozen[("late", 0)] = penalty
        response = ops.eod()
        assert response.status_code == 200, response.text
        report = response.json()
        reports.append(report)
        assert report["business_date"] == day.isoformat()
        assert report["next_business_date"] == (day + timedelta(days=1)).isoformat()
        assert report["loans_processed"] == 3
        assert sum(report["buckets"].values()) == 3
        assert ops.business_date() == day + timedelta(days=1)
        ops.books_hold()
        next_day = day + timedelta(days=1)
        for name, loan in loans.items():
            view = get_loan(client, loan["loan_id"])
            unpaid = [d for k, d in enumerate(due[name]) if k not in paid_periods[name]]
            dpd = max(0, (next_day - unpaid[0]).days) if unpaid else 0
            assert (view["dpd"], view["bucket"], view["classification"]) == (
                dpd, bucket(dpd), classification(dpd)), (name, day, view["dpd"])
            for k, item in enumerate(view["schedule"]):
                if (name, k) in penalty_frozen:
                    expected = penalty_frozen[(name, k)]
                elif k in paid_periods[name]:
                    expected = 0
                else:
                    charged = max(0, (day - due[name][k]).days - GRACE)
                    expected = charged * daily_penalty(
                        schedules[name][k]["principal"], loan["annual_rate_bps"])
                assert item["penalty"] == expected, (name, day, k)
            recognised = interest_recognised(schedules[name], day)
            assert view["outstanding"]["interest"] == recognised - paid_interest[name], (
                name, day)
            assert view["status"] == ("overdue" if dpd > 0 else "active"), (name, day)
    # The sum of a day's reported accrual is the day's recognised interest of the book.
    last = reports[-1]
    assert last["business_date"] == (D0 + timedelta(days=89)).isoformat()
    total_interest = sum(r["accrued_interest"] for r in reports)
    assert total_interest == sum(
        interest_recognised(schedules[n], D0 + timedelta(days=89)) for n in loans)
    # every run is audited with the advance of the date: who, from which date to which
    audited = ops.client.get("/ops/audit", params={"target": f"eod:{D0.isoformat()}"},
                             headers=ops_auth()).json()["entries"]
    assert [(e["actor"], e["action"], e["before"], e["after"]["business_date"])
            for e in audited] == [("admin", "eod.run", {"business_date": D0.isoformat()},
                                   (D0 + timedelta(days=1)).isoformat())]
    # never: oldest unpaid due 2026-12-28, business date now 2027-02-27 → DPD 61, M3
    assert get_loan(client, never["loan_id"])["dpd"] == 61
    assert last["buckets"] == {"C": 1, "M1": 1, "M3": 1}
    assert last["transitions"]["became_overdue"] == 0
    assert sum(r["transitions"]["became_overdue"] for r in reports) == 2 + 2  # never, late
    # idempotency: a closed date answers its stored report and changes nothing
    balance = ops.books_hold()
    again = ops.eod(reports[10]["business_date"])
    assert again.status_code == 200 and again.json() == reports[10]
    assert ops.books_hold() == balance
    assert ops.business_date() == D0 + timedelta(days=90)
    future = ops.eod((D0 + timedelta(days=95)).isoformat())
    assert future.status_code == 409 and future.json()["error"]["code"] == "invalid_state"
    status = ops.status()
    assert status["run"]["status"] == "done" and status["running"] is False
    assert status["run"]["shards_done"] == status["run"]["shards_total"]
    # a run while another holds the lock: 409 eod_running (the lock is the real key)
    redis = eod_system.system._redis
    assert redis is not None
    key = f"{eod_system.system.settings.redis.key_prefix}eod:lock"
    async def hold() -> None:
        await redis.set(key, "someone-else", px=5000)

    async def release() -> None:
        await redis.delete(key)

    eod_system.run(hold())
    busy = ops.eod()
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "eod_running"
    assert busy.headers.get("retry-after")
    eod_system.run(release())
    assert ops.business_date() == D0 + timedelta(days=90)
    officer = ops.client.post("/ops/eod", json={},
                              headers=ops_auth("dev-officer2-token-change-me"))
    assert officer.status_code == 403, officer.text  # admin only
    # Watching end of day is for viewers (docs/operations.md "Operator roles"), not officers.
    assert ops.client.get("/ops/eod", headers=ops_auth("dev-officer2-token-change-me")
                          ).status_code == 403
    client.close()


# ---- crash mid-run and resume; requests during a run --------------------------------------


def _stored_loans(system: RunningSystem) -> dict[str, Loan]:
    rows = system.run(system.pg().fetch("SELECT state FROM loans"))
    return {loan.loan_id: loan for loan in (decode_loan_row(r["state"]) for r in rows)}


def _accounts(balance: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {a["code"]: (a["debit"], a["credit"]) for a in balance["accounts"]}


class Crash(Exception):
    pass


def test_crash_mid_run_resumes_to_the_uninterrupted_result(eod_system: RunningSystem) -> None:
    ops = Ops(eod_system)
    client = eod_system.client()
    loan_ids = [new_loan(client, amount=300_000)["loan_id"] for _ in range(60)]
    # Run to 2027-01-03 so the crash day has overdue loans accruing penalty (none repaid),
    # and plans the D+7 reminder of their first installment (due 2026-12-28) for each.
    crash_day = date(2027, 1, 3)
    while ops.business_date() < crash_day:
        assert ops.eod().status_code == 200
    ops.books_hold()
    before = _stored_loans(eod_system)
    policy = eod_system.system.settings.servicing
    expected = {k: close_day(v, crash_day, policy) for k, v in before.items()}
    assert sum(r.accrued_penalty for r in expected.values()) > 0
    codes = eod_system.system.chart.role_codes()
    accounts = _accounts(trial_balance(ops.client))
    lines = 0
    for result in expected.values():
        for posting in result.postings:
            for line in posting.lines:
                debit, credit = accounts.get(codes[line.account], (0, 0))
                accounts[codes[line.account]] = (debit + line.debit, credit + line.credit)
                lines += 1
    # 1. the orchestrator dies after a few chunks (as a gateway crash would)
    runner = eod_system.system.eod
    assert runner is not None
    chunks = []

    def die_after_five(shard: int, result: Any) -> None:
        chunks.append(shard)
        if len(chunks) >= 5:
            raise Crash

    with pytest.raises(Crash):
        eod_system.run(runner.run(progress=die_after_five))
    partial = _stored_loans(eod_system)
    closed = sum(1 for n in partial.values() if n.last_closed_on == crash_day)
    assert 0 < closed < len(loan_ids), closed
    assert ops.business_date() == crash_day
    status = ops.status()
    assert status["run"]["status"] == "running" and not status["running"]
    assert 0 < status["run"]["loans_processed"] < len(loan_ids)
    ops.books_hold()
    # 2. rerun it, and kill a shard host under it after its first chunk (Ray restarts the
    #    actor; the router retries the chunks in flight, which may or may not have committed)
    killed: list[int] = []

    def kill_once(shard: int, result: Any) -> None:
        if not killed:
            killed.append(shard)
            ray.kill(eod_system.system.hosts[0], no_restart=False)

    old_pid = ray.get(eod_system.system.hosts[1].pid.remote())
    report = eod_system.run(runner.run(crash_day, progress=kill_once), timeout_s=300)
    assert killed
    assert ray.get(eod_system.system.hosts[1].pid.remote()) == old_pid
    epochs = eod_system.run(eod_system.pg().fetch(
        "SELECT shard_id, epoch FROM shard_lease ORDER BY shard_id"))
    assert max(r["epoch"] for r in epochs) >= 2, "host 0 must have restarted and re-taken"
    response = ops.eod(crash_day.isoformat())  # the closed date: the stored report
    assert response.status_code == 200, response.text
    assert response.json() == report
    assert report["business_date"] == crash_day.isoformat()
    assert report["loans_processed"] == len(loan_ids)  # each loan closed exactly once
    assert report["attempts"] == 2
    assert report["accrued_penalty"] == sum(r.accrued_penalty for r in expected.values())
    assert report["accrued_interest"] == sum(r.accrued_interest for r in expected.values())
    assert ops.business_date() == crash_day + timedelta(days=1)
    after = _stored_loans(eod_system)
    for loan_id, result in expected.items():
        assert msgspec.to_builtins(after[loan_id]) == msgspec.to_builtins(result.loan), loan_id
    assert _accounts(ops.books_hold()) == accounts
    stored_lines = eod_system.run(eod_system.pg().fetchval(
        "SELECT count(*) FROM journal_lines WHERE cause = $1", eod_cause(crash_day)))
    assert stored_lines == lines
    # ... and planned its next-day reminder exactly once, whatever crashed
    planned = eod_system.run(eod_system.pg().fetch(
        "SELECT loan_id, template, count(*) AS n FROM connector_requests "
        "WHERE created_on = $1 GROUP BY loan_id, template", crash_day))
    assert {(r["loan_id"], r["template"], r["n"]) for r in planned} == {
        (loan_id, "overdue_7", 1) for loan_id in loan_ids}
    assert report["reminders"]["planned"] == len(loan_ids)
    # 3. requests during a run: 200/201 or 503 + Retry-After, and nothing else
    _requests_during_eod(eod_system, ops, client, loan_ids)
    # 4. `lendcore eod` drives the same API (progress on stderr, report on stdout)
    day = ops.business_date()
    assert eod_cli.run(eod_system.system.ops_url, ADMIN_TOKEN) == 0
    assert ops.business_date() == day + timedelta(days=1)
    assert eod_cli.run(eod_system.system.ops_url, ADMIN_TOKEN, day.isoformat()) == 0
    client.close()


def _requests_during_eod(
    system: RunningSystem, ops: Ops, client: Any, loan_ids: list[str]
) -> None:
    day = ops.business_date()
    stop = threading.Event()
    acknowledged: dict[str, int] = {}
    statuses: list[int] = []
    problems: list[str] = []

    def partner(index: int) -> None:
        own = system.client()
        n = 0
        while not stop.is_set():
            loan_id = loan_ids[(index * 7 + n) % len(loan_ids)]
            n += 1
            response = repay(own, loan_id, 100)
            statuses.append(response.status_code)
            if response.status_code == 201:
                body = response.json()
                if body["amount"] != 100 or sum(body["allocation"].values()) != 100:
                    problems.append(response.text)
                acknowledged[body["repayment_id"]] = 100
            elif response.status_code == 503:
                if not response.headers.get("retry-after"):
                    problems.append("503 without Retry-After")
            else:
                problems.append(f"{response.status_code} {response.text}")
            got = own.get(f"/v1/loans/{loan_id}")
            statuses.append(got.status_code)
            if got.status_code not in (200, 503):
                problems.append(f"GET {got.status_code} {got.text}")
        own.close()

    workers = [threading.Thread(target=partner, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    outcome: dict[str, httpx.Response] = {}
    run = threading.Thread(target=lambda: outcome.update(r=ops.eod()))
    run.start()
    deadline = time.monotonic() + 10
    while run.is_alive() and not ops.status()["running"] and time.monotonic() < deadline:
        time.sleep(0.005)
    second = ops.eod()  # usually while the first runs: 409; if it already ended, D+1 runs
    run.join(300)
    time.sleep(0.3)
    stop.set()
    for worker in workers:
        worker.join(60)
    answers = sorted([outcome["r"], second], key=lambda r: r.status_code)
    assert answers[0].status_code == 200, answers[0].text
    assert answers[1].status_code in (200, 409), answers[1].text
    if answers[1].status_code == 409:
        assert answers[1].json()["error"]["code"] == "eod_running"
    assert problems == []
    assert statuses.count(201) > 0
    assert ops.business_date() > day
    stored = system.run(system.pg().fetch(
        "SELECT repayment_id, amount FROM repayments WHERE external_ref LIKE 'P-%'"))
    assert {r["repayment_id"]: r["amount"] for r in stored} == acknowledged
    ops.books_hold()
