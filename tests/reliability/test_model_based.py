"""Model-based test of the transaction core: random sequences of partner and operator
requests and faults, checked against a model of what the API acknowledged.

A hypothesis `RuleBasedStateMachine` (`LendingMachine`) drives ONE running system (a module
fixture built by the integration suite's `fresh_system`: its own Postgres database and Redis
prefix, local Ray, two shard hosts). Every example of the run starts a fresh model on that
same system; the business date and the loans of earlier examples stay (`World`).

Rules (hypothesis picks them, their arguments and their order):
- `first_loan` (initialize): an approved application booked, and a regular repayment of it
  hit by a fault while in flight: every example starts with an unknown outcome to retry.
- `apply`: an application of a sandbox product; an ID whose sequence digits are 950 has a
  bad credit file and must be declined (`bureau_bad`), every other one approved.
  `book`: an approved application booked as a loan.
- `repay_regular`, `prepay` (keeping the term or the installment), `payoff` (the payoff
  quote's total, or one fen off): every kind of repayment, amounts inside and outside what
  may be paid; the model predicts 201 or the 4xx code from the loan view and the quote.
- `repay_batch`: `POST /v1/repayments/batch` over several loans, with an unknown loan, a
  reference used twice in the batch, a reference used before; items answered 503 inside the
  200 are retried by sending the batch again under the same key.
- `probe`: a request that must change nothing: a replay (same key and body: the first
  answer byte for byte, `Idempotent-Replayed: true`), a reused key with another body
  (409 `idempotency_key_reused`), an acknowledged `external_ref` under a new key (409
  `duplicate_external_ref`; `invalid_state` on a paid-off loan, see reused_ref_code), a
  booked or declined application booked again (409 `already_booked` / `invalid_state`).
- `end_of_day`: `POST /ops/eod` for the current business date, which moves it on by a day
  (until 2026-12-20 only: the first installments fall due on 2026-12-28, and end of day
  withholds (代扣) by itself the installments due the next day, which the model does not do).
- `fault`: `kill_host` (`ray.kill(host, no_restart=False)` as tests/integration/test_crash.py
  does; Ray restarts it) or `terminate_backends` (`pg_terminate_backend` of every backend of
  the system's database); every write and end of day may also inject one of them a few ms
  after its first attempt left (mostly while it is in flight: its outcome is then unknown).
  At most FAULTS_PER_EXAMPLE per example (a restarted host costs seconds).

Every POST is sent as a careful partner does: on 503/429 (with `Retry-After`, checked), 409
`request_in_progress` or a broken connection, again with the SAME key and body, with
back-off, until a definitive answer; none within RETRY_DEADLINE_S (60 s) fails the test.
The model records definitive answers only.

Invariants, after every step:
- every loan of the example: its outstanding principal and the amounts paid on its schedule
  equal the sums of the acknowledged allocations; paid off iff that was acknowledged; and
  until an end of day (accruals) it reads back exactly as the last acknowledged write
  showed it;
- Postgres holds exactly the acknowledged repayments of those loans (same ids, amounts,
  allocations) and each loan's cash account (1001; its disbursement from 2241 when it is
  paid to a merchant) received exactly the acknowledged
  amounts: a repayment applied twice, applied without an acknowledgement, or acknowledged
  and lost breaks these;
- the trial balance balances (debits == credits) and `GET /ops/ledger/reconciliation` is
  clean.
After the run, every host is killed at once and every Postgres connection dropped: every
loan of every example reads back byte for byte as before, and the repayments table holds
each acknowledged external_ref of the run exactly once, and no other.

Reproducing a failure. The run's seed is printed at the start (captured stdout) and added to
the failure's message, with the run's FIRST failure as it happened and the steps of its
example (hypothesis reports the steps of a replay, and a replay against a system whose state
moved on may fail elsewhere, or report a Flaky error):
    LENDCORE_MODEL_SEED=<seed> .venv/bin/pytest -x -q tests/reliability/test_model_based.py
runs the same sequence of rules and arguments. Hypothesis also prints
(settings.print_blob) `@reproduce_failure('<version>', b'<blob>')`; the blob can be given as
LENDCORE_MODEL_BLOB=<blob>. The system is not deterministic (ids, timing of faults): a
failure that depends on timing may need a few runs. Shrinking is off (each shrink step would
replay against a system whose state moved on), and so is the example database.
LENDCORE_MODEL_EXAMPLES (5) and LENDCORE_MODEL_STEPS (15) size the run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
import hypothesis
import msgspec
import pytest
import ray
from factories import ops_auth
from hypothesis import HealthCheck, Phase, reproduce_failure, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from integration_system import BUSINESS_DATE, RunningSystem, fresh_system

from lending.identity import make_id_number
from loadtests.client import PartnerClient

pytestmark = pytest.mark.slow

SEED_ENV = "LENDCORE_MODEL_SEED"
BLOB_ENV = "LENDCORE_MODEL_BLOB"
EXAMPLES = int(os.environ.get("LENDCORE_MODEL_EXAMPLES", "5"))
STEPS = int(os.environ.get("LENDCORE_MODEL_STEPS", "15"))
RETRY_DEADLINE_S = 60.0  # a request with no definitive answer this long fails the test
HOST_BACK_DEADLINE_S = 60.0
LAST_EOD_DATE = date(2026, 12, 20)  # see the docstring: no withholding inside the run
PARTNER = "demo"
MERCHANT = "M-MODEL"
UNKNOWN_LOAN = "LN-0000-9999999999"
COMPONENTS = ("principal", "interest", "penalty", "fee")
# sandbox products (API.md): code → (terms, merchant_id)
PRODUCTS: dict[str, tuple[tuple[int, ...], str | None]] = {
    "CASH_EI_12": ((3, 6, 12, 24), None),
    "CASH_EP_12": ((6, 12, 24), None),
    "CASH_IF_12": ((3, 6, 12), None),
    "CASH_BL_3": ((1, 3), None),
    "INST_FEE_12": ((3, 6, 12), MERCHANT),
}
NO_SHORTEN = ("interest_first", "bullet")  # prepay_shorten_term is 422 kind_not_supported
FAULTS = ("none", "none", "kill_host", "terminate_backends")
PROBES = ("replay", "reuse_key", "reuse_ref", "book_again")
SHORTEN, REDUCE = "prepay_shorten_term", "prepay_reduce_installment"
# When a fault hits a write, after its first attempt left: a request is served in a few ms
# here, so mostly 0-8 ms (the fault lands while it is in flight), sometimes later.
DELAY_MS = st.sampled_from((0, 0, 1, 2, 3, 4, 5, 6, 8, 12, 25))
EOD_PER_EXAMPLE = 2  # the dates before LAST_EOD_DATE are shared by all examples
FAULTS_PER_EXAMPLE = 5  # each restarted host costs the next requests a second or two
# Phones and IPs must not repeat (anti-fraud velocity declines a repeated IP): not drawn from
# the module `random`, which hypothesis seeds the same way for every example.
_rng = random.Random(uuid.uuid4().int)


# ---- HTTP: a careful partner and an operator ------------------------------------------------


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def until_definitive(
    send: Callable[[], httpx.Response], what: str, retry_409: tuple[str, ...] = (),
) -> httpx.Response:
    """Send until an answer that is the request's own outcome. Not definitive: a broken
    connection, 503 or 429 (both must carry Retry-After), 409 request_in_progress and the
    409 codes in `retry_409` (a 500 never is). The caller sends the same key and body every
    time."""
    deadline = time.monotonic() + RETRY_DEADLINE_S
    delay, seen = 0.05, []
    while True:
        try:
            response = send()
        except httpx.TransportError as exc:
            seen.append(type(exc).__name__)
        else:
            status, code = response.status_code, _code(response)
            if status in (429, 503):
                assert response.headers.get("retry-after"), (
                    f"{what}: {status} without Retry-After: {response.text}")
                seen.append(f"{status} {code}")
            elif status == 409 and code in ("request_in_progress", *retry_409):
                seen.append(f"{status} {code}")
            else:
                return response
        if time.monotonic() + delay > deadline:
            raise AssertionError(
                f"{what}: no definitive answer within {RETRY_DEADLINE_S:.0f} s "
                f"(last answers: {seen[-8:]})")
        time.sleep(delay)
        delay = min(1.0, delay * 2)


class Api:
    """The partner `demo` and the admin operator of one running system."""

    def __init__(self, running: RunningSystem) -> None:
        self.running = running
        self.partner = PartnerClient(running.system.api_url, PARTNER, timeout_s=30)
        self.ops = httpx.Client(base_url=running.system.ops_url, timeout=60)
        self.dsn = running.system.pg_dsn

    def close(self) -> None:
        self.partner.close()
        self.ops.close()

    def post(self, path: str, body: Any, key: str) -> httpx.Response:
        return until_definitive(lambda: self.partner.post(path, body, key=key),
                                f"POST {path} (key {key})")

    def get(self, path: str) -> httpx.Response:
        return until_definitive(lambda: self.partner.get(path), f"GET {path}")

    def get_ok(self, path: str) -> dict[str, Any]:
        response = self.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        body: dict[str, Any] = response.json()
        return body

    def ops_get(self, path: str) -> dict[str, Any]:
        response = until_definitive(lambda: self.ops.get(path, headers=ops_auth()),
                                    f"GET {path}")
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        body: dict[str, Any] = response.json()
        return body

    def eod(self, business_date: date) -> httpx.Response:
        body = {"business_date": business_date.isoformat()}
        return until_definitive(
            lambda: self.ops.post("/ops/eod", json=body, headers=ops_auth()),
            f"POST /ops/eod {business_date}", retry_409=("eod_running",))

    # ---- Postgres (a connection of the test's own, opened per question) ----------------

    def pg(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        deadline = time.monotonic() + RETRY_DEADLINE_S
        while True:
            try:
                return asyncio.run(fetch())
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                    asyncpg.exceptions.OperatorInterventionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# ---- faults ----------------------------------------------------------------------------------


def shard_of(object_id: str) -> int:
    return int(object_id.split("-")[1])


def host_of(running: RunningSystem, object_id: str) -> int:
    return shard_of(object_id) % len(running.system.hosts)


def kill_host(running: RunningSystem, host_index: int) -> None:
    """What test_crash.py does: Ray restarts the actor, which re-takes its shards lazily."""
    ray.kill(running.system.hosts[host_index], no_restart=False)


def terminate_backends(api: Api) -> int:
    """Every backend of the system's database but the one asking: shard hosts' and the
    gateway's connections, as a Postgres restart or failover would drop them."""
    rows = api.pg(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return int(rows[0]["n"])


def wait_hosts_back(running: RunningSystem, old_pids: list[int]) -> None:
    """Until every host answers from a new process and has re-taken its shards."""
    deadline = time.monotonic() + HOST_BACK_DEADLINE_S
    for host, old_pid in zip(running.system.hosts, old_pids, strict=True):
        while True:
            try:
                if ray.get(host.pid.remote(), timeout=30) != old_pid:
                    ray.get(host.ready.remote(), timeout=60)
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.GetTimeoutError):
                pass
            assert time.monotonic() < deadline, "a killed shard host did not come back"
            time.sleep(0.2)


# ---- the model -------------------------------------------------------------------------------


@dataclass
class LoanModel:
    loan_id: str
    principal: int
    method: str
    view: dict[str, Any] | None  # as the last acknowledged write showed it; None after EOD
    paid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))
    prepayment_fees: int = 0
    cash_in: int = 0  # the acknowledged amounts
    repayment_ids: set[str] = field(default_factory=set)
    paid_off: bool = False


@dataclass
class Sent:
    """A POST and its definitive answer: a replay must return exactly this."""
    path: str
    body: Any
    key: str
    status: int
    content: bytes


@dataclass
class World:
    """What outlives one example: the system's business date, every loan and every
    acknowledged repayment of the run, counters."""
    business_date: date
    loans: dict[str, LoanModel] = field(default_factory=dict)
    acknowledged: dict[str, str] = field(default_factory=dict)  # external_ref → repayment id
    applicants: int = 0
    refs: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    first_failure: str | None = None
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def new_ref(self) -> str:
        self.refs += 1
        return f"mb-{self.run}-{self.refs}"

    def new_id_number(self, bad_bureau: bool) -> str:
        """Unique in the run (birth date); sequence 950 = a bad credit file (API.md)."""
        self.applicants += 1
        birth = date(1980, 1, 1) + timedelta(days=self.applicants)
        return make_id_number("110105", birth, 950 if bad_bureau else 100 + self.applicants % 800)


REUSED_REF = "reused reference"


def reused_ref_code(loan: LoanModel) -> str:
    """A reference already used, on a loan of the partner: 409 duplicate_external_ref; but
    on a paid-off loan 409 invalid_state (the shard checks the state before it knows that
    the reference was used: its first, optimistic pass assumes no reference is taken, and
    a refused command takes none, so no commit ever meets the used one)."""
    return "invalid_state" if loan.paid_off else "duplicate_external_ref"


# Amounts are drawn as fractions of a range the system's state decides (what is payable,
# the payoff quote): the draws themselves must not depend on that state, or hypothesis
# finds that the same choices drew differently (FlakyStrategyDefinition).
FRACTION = st.integers(0, 1000)
EXCESS = st.integers(1, 10_000)


def scaled(fraction: int, low: int, high: int) -> int:
    """low..high (inclusive) by a FRACTION of 0..1000."""
    return low + (high - low) * fraction // 1000


def new_key() -> str:
    return f"mbk-{uuid.uuid4().hex}"


def unpaid(item: dict[str, Any]) -> int:
    return int(item["total"] + item["penalty"] - sum(item["paid"].values()))


def regular_payable(view: dict[str, Any], business_date: date) -> int:
    """lending.loans.regular_payable from the view: everything due on or before the
    business date, plus the next installment not fully paid."""
    total = 0
    for item in view["schedule"]:
        if date.fromisoformat(item["due_date"]) <= business_date:
            total += unpaid(item)
        elif unpaid(item) > 0:
            return total + unpaid(item)
    return total


def logged(function: Callable[..., None]) -> Callable[..., None]:
    """A rule or invariant that writes its calls to the machine's step log and keeps the
    run's first failure with the steps that led to it (World.first_failure). Hypothesis
    reports the failing steps from a REPLAY of the example, and a replay against a system
    whose state moved on may fail elsewhere or not at all (then it reports a Flaky error):
    the first failure, as it happened, is added to whatever the run raises."""
    name = function.__name__

    @functools.wraps(function)
    def step(self: LendingMachine, **kwargs: Any) -> None:
        is_invariant = name in INVARIANTS
        if not is_invariant:
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "data")
            self.steps.append(f"{name}({shown})")
            self.world.count(f"rule:{name}")
        try:
            function(self, **kwargs)
        except BaseException as exc:
            if self.world.first_failure is None:
                self.world.first_failure = (
                    f"{'invariant' if is_invariant else 'rule'} {name} failed: "
                    f"{''.join(traceback.format_exception_only(exc)).strip()}\n"
                    "steps of this example (model-based test's own log):\n  "
                    + "\n  ".join(self.steps[-80:]))
            raise

    return step


INVARIANTS = ("loans_read_back_as_acknowledged",
              "postgres_holds_exactly_the_acknowledged_repayments",
              "books_balance_and_reconcile")


class LendingMachine(RuleBasedStateMachine):
    def __init__(self, api: Api, world: World) -> None:
        super().__init__()
        self.api = api
        self.world = world
        self.approved: list[dict[str, Any]] = []  # approved, not booked yet
        self.refused_bookings: list[tuple[str, str]] = []  # (application id, 409 code)
        self.loans: dict[str, LoanModel] = {}
        self.sent: list[Sent] = []  # definitive answers to repayment POSTs
        self.acked_refs: list[tuple[str, str]] = []  # (external_ref, loan id)
        self.eods = 0
        self.faults = 0
        self.steps: list[str] = []  # this example's rules and requests, for the failure report

    # ---- helpers ----------------------------------------------------------------------

    @property
    def running(self) -> RunningSystem:
        return self.api.running

    def _fault(self, fault: str, host_index: int) -> None:
        self.world.count(f"fault:{fault}")
        if fault == "kill_host":
            kill_host(self.running, host_index)
        elif fault == "terminate_backends":
            assert terminate_backends(self.api) >= 1, "the system holds no Postgres connection"

    def _with_fault(
        self, fault: str, host_index: int, delay_ms: int, send: Callable[[], httpx.Response],
    ) -> httpx.Response:
        """`send` (which retries until definitive) in a thread; the fault `delay_ms` after
        it started, so that its first attempt is often in flight when the fault hits. Past
        the example's FAULTS_PER_EXAMPLE, no fault (a restarted host costs seconds)."""
        if fault == "none" or self.faults >= FAULTS_PER_EXAMPLE:
            return send()
        self.faults += 1
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["response"] = send()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                outcome["error"] = exc

        thread = threading.Thread(target=target)
        started = time.monotonic()
        thread.start()
        time.sleep(delay_ms / 1000)
        if "response" not in outcome and "error" not in outcome:
            self.world.count(f"fault:{fault}:in_flight")
        self._fault(fault, host_index)
        thread.join(RETRY_DEADLINE_S + 40)
        assert not thread.is_alive(), "a request did not return after a fault"
        if "error" in outcome:
            raise outcome["error"]
        response: httpx.Response = outcome["response"]
        self.steps.append(f"  ({fault} {delay_ms} ms after the request, which took "
                          f"{time.monotonic() - started:.3f} s in all)")
        return response

    def _post(self, path: str, body: Any, fault: str = "none", host_index: int = 0,
              delay_ms: int = 0, key: str | None = None) -> tuple[httpx.Response, str]:
        key = key or new_key()
        response = self._with_fault(fault, host_index, delay_ms,
                                    lambda: self.api.post(path, body, key))
        self.steps.append(f"  POST {path} {msgspec.json.encode(body).decode()[:300]} key {key}"
                          f" -> {response.status_code} {response.text[:200]}")
        return response, key

    def _record(self, loan: LoanModel, body: dict[str, Any],
                sent: tuple[str, int, str]) -> None:
        """An acknowledged repayment: the 201 body of what was `sent` (external_ref,
        amount, kind)."""
        assert body["loan_id"] == loan.loan_id, body
        assert (body["external_ref"], body["amount"], body["kind"]) == sent, (body, sent)
        allocation = body["allocation"]
        assert sum(allocation.values()) == body["amount"], body
        assert body["repayment_id"] not in loan.repayment_ids, (
            f"repayment id {body['repayment_id']} acknowledged twice")
        assert body["external_ref"] not in self.world.acknowledged, (
            f"external_ref {body['external_ref']} acknowledged twice")
        for component in COMPONENTS:
            loan.paid[component] += allocation[component]
        loan.prepayment_fees += body["prepayment_fee"]
        loan.cash_in += body["amount"]
        loan.repayment_ids.add(body["repayment_id"])
        loan.view = body["loan"]
        loan.paid_off = body["loan"]["status"] == "paid_off"
        self.world.acknowledged[body["external_ref"]] = body["repayment_id"]
        self.acked_refs.append((body["external_ref"], loan.loan_id))
        self.world.count(f"ack:{body['kind']}")

    def _loan_view(self, loan: LoanModel) -> dict[str, Any]:
        return self.api.get_ok(f"/v1/loans/{loan.loan_id}")

    def _expect(self, response: httpx.Response, status: int, code: str | None = None) -> None:
        assert response.status_code == status, (
            f"expected {status} {code or ''}, got {response.status_code} {response.text}")
        if code is not None:
            assert _code(response) == code, f"expected {code}: {response.text}"

    def _repay(self, loan: LoanModel, amount: int, kind: str, expected: tuple[int, str | None],
               fault: str, delay_ms: int) -> None:
        body = {"amount": amount, "external_ref": self.world.new_ref(), "kind": kind}
        path = f"/v1/loans/{loan.loan_id}/repayments"
        response, key = self._post(path, body, fault, host_of(self.running, loan.loan_id),
                                   delay_ms)
        self.sent.append(Sent(path, body, key, response.status_code, response.content))
        self._expect(response, *expected)
        if response.status_code == 201:
            self._record(loan, response.json(), (body["external_ref"], amount, kind))
            if kind == "payoff":
                assert response.json()["loan"]["status"] == "paid_off", response.text

    # ---- origination ------------------------------------------------------------------

    def _apply(self, product: str, term: int, amount: int, bad_bureau: bool, fault: str = "none",
               host_index: int = 0, delay_ms: int = 0) -> dict[str, Any]:
        body = {
            "partner_application_id": f"A-{self.world.run}-{uuid.uuid4().hex[:12]}",
            "product_code": product, "amount": amount, "term": term,
            "applicant": {
                "name": "张三", "id_number": self.world.new_id_number(bad_bureau),
                "phone": f"139{_rng.randrange(10**8):08d}", "monthly_income": 1_200_000,
                "region_code": "330100",
            },
            "device": {"device_id": f"d-{uuid.uuid4().hex}",
                       "ip": f"10.{_rng.randrange(256)}.{_rng.randrange(256)}."
                             f"{_rng.randrange(1, 255)}"},
            "purpose": "consumption", "merchant_id": PRODUCTS[product][1],
        }
        response, _ = self._post("/v1/applications", body, fault, host_index, delay_ms)
        self._expect(response, 201)
        app: dict[str, Any] = response.json()
        if bad_bureau:
            assert app["status"] == "declined", app
            assert "bureau_bad" in app["decision"]["reasons"], app
            self.refused_bookings.append((app["application_id"], "invalid_state"))
        else:
            assert app["status"] == "approved", app
            assert app["decision"]["approved_amount"] == amount, app
            self.approved.append(app)
        self.world.count(f"application:{app['status']}")
        return app

    def _book(self, app: dict[str, Any], fault: str = "none", delay_ms: int = 0) -> None:
        self.approved.remove(app)
        response, _ = self._post("/v1/loans", {"application_id": app["application_id"]}, fault,
                                 host_of(self.running, app["application_id"]), delay_ms)
        self._expect(response, 201)
        view = response.json()
        amount = app["decision"]["approved_amount"]
        assert view["application_id"] == app["application_id"], view
        assert view["status"] == "active" and view["principal"] == amount, view
        assert view["outstanding"]["principal"] == amount, view
        assert sum(item["principal"] for item in view["schedule"]) == amount, view
        loan = LoanModel(view["loan_id"], amount, view["repayment_method"], view)
        self.loans[loan.loan_id] = loan
        self.world.loans[loan.loan_id] = loan
        self.refused_bookings.append((app["application_id"], "already_booked"))

    @initialize(data=st.data(), product=st.sampled_from(sorted(PRODUCTS)),
                amount=st.integers(100_000, 2_000_000), fraction=FRACTION,
                fault=st.sampled_from(("kill_host", "terminate_backends")),
                delay_ms=st.sampled_from((0, 1, 2, 3, 5)))
    @logged
    def first_loan(self, data: st.DataObject, product: str, amount: int, fraction: int,
                   fault: str, delay_ms: int) -> None:
        """Every example starts with a loan and a regular repayment of it, hit by a fault
        while it is in flight (its outcome is unknown to the client, which retries it)."""
        term = data.draw(st.sampled_from(PRODUCTS[product][0]), label="term")
        self._book(self._apply(product, term, amount, bad_bureau=False))
        (loan,) = self.loans.values()
        assert loan.view is not None
        payable = regular_payable(loan.view, self.world.business_date)
        self._repay(loan, scaled(fraction, 1, payable), "regular", (201, None), fault,
                    delay_ms)

    @rule(data=st.data(), product=st.sampled_from(sorted(PRODUCTS)),
          amount=st.integers(100_000, 2_000_000),
          bad_bureau=st.sampled_from((False, False, False, True)),
          fault=st.sampled_from(FAULTS), host_index=st.integers(0, 1),
          delay_ms=DELAY_MS)
    @logged
    def apply(self, data: st.DataObject, product: str, amount: int, bad_bureau: bool,
              fault: str, host_index: int, delay_ms: int) -> None:
        term = data.draw(st.sampled_from(PRODUCTS[product][0]), label="term")
        self._apply(product, term, amount, bad_bureau, fault, host_index, delay_ms)

    @precondition(lambda self: self.approved)
    @rule(data=st.data(), fault=st.sampled_from(FAULTS), delay_ms=DELAY_MS)
    @logged
    def book(self, data: st.DataObject, fault: str, delay_ms: int) -> None:
        self._book(data.draw(st.sampled_from(self.approved), label="app"), fault, delay_ms)

    # ---- repayments -------------------------------------------------------------------

    def _pick_loan(self, data: st.DataObject, active: bool = False) -> LoanModel:
        loans = [m for m in self.loans.values() if not (active and m.paid_off)]
        loan: LoanModel = data.draw(st.sampled_from(loans), label="loan")
        return loan

    @precondition(lambda self: self.loans)
    @rule(data=st.data(), over=st.booleans(), fraction=FRACTION, excess=EXCESS,
          fault=st.sampled_from(FAULTS), delay_ms=DELAY_MS)
    @logged
    def repay_regular(self, data: st.DataObject, over: bool, fraction: int, excess: int,
                      fault: str, delay_ms: int) -> None:
        loan = self._pick_loan(data)
        if loan.paid_off:
            self._repay(loan, 1_000, "regular", (409, "invalid_state"), fault, delay_ms)
            return
        payable = regular_payable(self._loan_view(loan), self.world.business_date)
        if over:
            amount = payable + excess
            expected: tuple[int, str | None] = (422, "amount_exceeds_due")
        else:
            amount = scaled(fraction, 1, payable)
            expected = (201, None)
        self._repay(loan, amount, "regular", expected, fault, delay_ms)

    @precondition(lambda self: any(not m.paid_off for m in self.loans.values()))
    @rule(data=st.data(), kind=st.sampled_from((SHORTEN, REDUCE)),
          region=st.sampled_from(("inside", "inside", "inside", "below", "over", "all")),
          fraction=FRACTION, excess=EXCESS, fault=st.sampled_from(FAULTS),
          delay_ms=DELAY_MS)
    @logged
    def prepay(self, data: st.DataObject, kind: str, region: str, fraction: int, excess: int,
               fault: str, delay_ms: int) -> None:
        """lending.loans.apply_prepayment before any due date: the amount must exceed the
        interest to date (the quote's interest) and may be at most the payoff total (which
        settles the loan)."""
        loan = self._pick_loan(data, active=True)
        quote = self.api.get_ok(f"/v1/loans/{loan.loan_id}/payoff")
        expected: tuple[int, str | None] = (201, None)
        if region == "inside" and quote["total"] - 1 > quote["interest"]:
            amount = scaled(fraction, quote["interest"] + 1, quote["total"] - 1)
        elif region == "below" and quote["interest"] > 0:
            amount = scaled(fraction, 1, quote["interest"])
            expected = (422, "prepayment_below_due")
        elif region == "over":
            amount = quote["total"] + excess
            expected = (422, "amount_exceeds_due")
        else:
            amount = quote["total"]  # settles the loan
        if kind == SHORTEN and loan.method in NO_SHORTEN:
            expected = (422, "kind_not_supported")
        self._repay(loan, amount, kind, expected, fault, delay_ms)
        if expected[0] == 201 and amount == quote["total"]:
            assert loan.paid_off, "a prepayment of the payoff total settles the loan"

    @precondition(lambda self: any(not m.paid_off for m in self.loans.values()))
    @rule(data=st.data(), off_by=st.sampled_from((0, 0, 0, -1, 1)),
          fault=st.sampled_from(FAULTS), delay_ms=DELAY_MS)
    @logged
    def payoff(self, data: st.DataObject, off_by: int, fault: str, delay_ms: int) -> None:
        loan = self._pick_loan(data, active=True)
        quote = self.api.get_ok(f"/v1/loans/{loan.loan_id}/payoff")
        assert quote["as_of"] == self.world.business_date.isoformat(), quote
        assert quote["total"] == sum(quote[c] for c in COMPONENTS), quote
        code = {0: None, -1: "amount_below_payoff", 1: "amount_exceeds_due"}[off_by]
        self._repay(loan, quote["total"] + off_by, "payoff", (201 if code is None else 422, code),
                    fault, delay_ms)
        assert loan.paid_off is (off_by == 0)

    @precondition(lambda self: self.loans)
    @rule(data=st.data(), size=st.integers(1, 4), unknown=st.booleans(),
          duplicate=st.booleans(), old_ref=st.booleans(), fault=st.sampled_from(FAULTS),
          host_index=st.integers(0, 1), delay_ms=DELAY_MS)
    @logged
    def repay_batch(self, data: st.DataObject, size: int, unknown: bool, duplicate: bool,
                    old_ref: bool, fault: str, host_index: int, delay_ms: int) -> None:
        items: list[dict[str, Any]] = []
        expected: list[tuple[int, str | None]] = []
        budget: dict[str, int] = {}  # what a regular repayment may still pay, per loan
        for _ in range(size):
            loan = self._pick_loan(data)
            fraction = data.draw(FRACTION, label="fraction")
            ref = self.world.new_ref()
            if loan.paid_off:
                items.append({"loan_id": loan.loan_id, "amount": 500, "external_ref": ref,
                              "kind": "regular"})
                expected.append((409, "invalid_state"))
                continue
            if loan.loan_id not in budget:
                budget[loan.loan_id] = regular_payable(self._loan_view(loan),
                                                       self.world.business_date)
            if budget[loan.loan_id] == 0:
                continue
            amount = scaled(fraction, 1, min(budget[loan.loan_id], 50_000))
            budget[loan.loan_id] -= amount
            items.append({"loan_id": loan.loan_id, "amount": amount, "external_ref": ref,
                          "kind": "regular"})
            expected.append((201, None))
            if duplicate and len(items) == 1 and expected == [(201, None)]:
                # the same reference again, same loan (same shard, applied in order): 409
                items.append({**items[0], "amount": 1})
                expected.append((409, "duplicate_external_ref"))
        if unknown:
            items.append({"loan_id": UNKNOWN_LOAN, "amount": 100,
                          "external_ref": self.world.new_ref(), "kind": "regular"})
            expected.append((404, "not_found"))
        if old_ref and self.acked_refs:
            ref, loan_id = data.draw(st.sampled_from(self.acked_refs), label="old ref")
            items.append({"loan_id": loan_id, "amount": 1, "external_ref": ref,
                          "kind": "regular"})
            expected.append((409, REUSED_REF))
        if not items:
            return
        body = {"items": items}
        key = new_key()
        deadline = time.monotonic() + RETRY_DEADLINE_S
        response, _ = self._post("/v1/repayments/batch", body, fault, host_index, delay_ms, key)
        first_201: dict[int, bytes] = {}
        while True:  # items answered 503 inside a 200: the same batch, same key, again
            self._expect(response, 200)
            results = response.json()["results"]
            assert [r["index"] for r in results] == list(range(len(items))), response.text
            for result in results:
                if result["status"] == 201:
                    raw = msgspec.json.encode(result["body"])
                    first_201.setdefault(result["index"], raw)
                    assert first_201[result["index"]] == raw, (
                        "an item acknowledged before must replay the same repayment")
            if all(r["status"] != 503 for r in results):
                break
            assert time.monotonic() < deadline, f"batch items still 503: {response.text}"
            time.sleep(0.2)
            response = self.api.post("/v1/repayments/batch", body, key)
        self.sent.append(Sent("/v1/repayments/batch", body, key, 200, response.content))
        for (status, code), item, result in zip(expected, items, results, strict=True):
            if code == REUSED_REF:  # the loan as the earlier items of the batch left it
                code = reused_ref_code(self.loans[item["loan_id"]])
            assert result["status"] == status, (item, result, expected)
            if code is not None:
                assert result["body"]["error"]["code"] == code, (item, result)
            if status == 201:
                self._record(self.loans[item["loan_id"]], result["body"],
                             (item["external_ref"], item["amount"], item["kind"]))

    # ---- idempotency and references -----------------------------------------------------

    @precondition(lambda self: self.sent or self.refused_bookings)
    @rule(data=st.data(), kind=st.sampled_from(PROBES))
    @logged
    def probe(self, data: st.DataObject, kind: str) -> None:
        """A request that must change nothing (one rule for four, so that hypothesis's
        swarm testing, which leaves rules out of an example, keeps repayments frequent):
        - replay: an earlier POST again, same key and body: its first answer, byte for
          byte, marked Idempotent-Replayed;
        - reuse_key: the same key with another body: 409 idempotency_key_reused;
        - reuse_ref: an acknowledged external_ref under a new key: 409 (reused_ref_code);
        - book_again: a booked or declined application booked (again): 409."""
        if kind == "replay" and self.sent:
            sent = data.draw(st.sampled_from(self.sent), label="sent")
            response = self.api.post(sent.path, sent.body, sent.key)
            assert (response.status_code, response.content) == (sent.status, sent.content), (
                f"a replay must return the first answer byte for byte: {sent.path} "
                f"{sent.body} first {sent.status} {sent.content!r}, now "
                f"{response.status_code} {response.content!r}")
            assert response.headers.get("idempotent-replayed") == "true", response.headers
        elif kind == "reuse_key" and self.sent:
            sent = data.draw(st.sampled_from(self.sent), label="sent")
            if "items" in sent.body:
                other: dict[str, Any] = {"items": [{**sent.body["items"][0], "amount": 7}]}
            else:
                other = {**sent.body, "amount": sent.body["amount"] + 1}
            response = self.api.post(sent.path, other, sent.key)
            self._expect(response, 409, "idempotency_key_reused")
        elif kind == "reuse_ref" and self.acked_refs:
            ref, _ = data.draw(st.sampled_from(self.acked_refs), label="ref")
            loan = self._pick_loan(data)  # any loan of the partner: references are book-wide
            body = {"amount": 1, "external_ref": ref, "kind": "regular"}
            response, _ = self._post(f"/v1/loans/{loan.loan_id}/repayments", body)
            self._expect(response, 409, reused_ref_code(loan))
        elif kind == "book_again" and self.refused_bookings:
            application_id, code = data.draw(st.sampled_from(self.refused_bookings),
                                             label="app")
            response, _ = self._post("/v1/loans", {"application_id": application_id})
            self._expect(response, 409, code)
        else:
            return
        self.world.count(f"probe:{kind}")

    # ---- end of day and faults ----------------------------------------------------------

    @precondition(lambda self: self.eods < EOD_PER_EXAMPLE)
    @rule(fault=st.sampled_from(FAULTS), host_index=st.integers(0, 1),
          delay_ms=st.integers(0, 200))
    @logged
    def end_of_day(self, fault: str, host_index: int, delay_ms: int) -> None:
        day = self.world.business_date
        if day >= LAST_EOD_DATE:  # not a precondition: what may be drawn must not depend
            return  # on the state examples share (hypothesis checks its draws replay alike)
        response = self._with_fault(fault, host_index, delay_ms, lambda: self.api.eod(day))
        self._expect(response, 200)
        report = response.json()
        assert report["business_date"] == day.isoformat(), report
        assert report["next_business_date"] == (day + timedelta(days=1)).isoformat(), report
        self.world.business_date = day + timedelta(days=1)
        self.eods += 1
        got = self.api.ops_get("/ops/business-date")["business_date"]
        assert got == self.world.business_date.isoformat(), got
        for loan in self.world.loans.values():
            loan.view = None  # accruals moved on: only the sums still hold
        self.world.count("eod")

    @precondition(lambda self: self.faults < FAULTS_PER_EXAMPLE)
    @rule(kind=st.sampled_from(("kill_host", "terminate_backends")),
          host_index=st.integers(0, 1))
    @logged
    def fault(self, kind: str, host_index: int) -> None:
        """A fault while nothing is in flight: the next requests meet it."""
        self.faults += 1
        self._fault(kind, host_index)

    # ---- invariants -------------------------------------------------------------------

    @invariant()
    @logged
    def loans_read_back_as_acknowledged(self) -> None:
        for loan in self.loans.values():
            check_loan_view(loan, self._loan_view(loan))

    @invariant()
    @logged
    def postgres_holds_exactly_the_acknowledged_repayments(self) -> None:
        check_durable(self.api, list(self.loans.values()))

    @invariant()
    @logged
    def books_balance_and_reconcile(self) -> None:
        check_books(self.api)


def check_loan_view(loan: LoanModel, view: dict[str, Any]) -> None:
    where = f"loan {loan.loan_id}"
    assert view["principal"] == loan.principal, where
    assert view["principal"] - view["outstanding"]["principal"] == loan.paid["principal"], (
        f"{where}: outstanding principal {view['outstanding']['principal']} != "
        f"{loan.principal} - acknowledged principal {loan.paid['principal']}")
    schedule_paid = {c: sum(item["paid"][c] for item in view["schedule"]) for c in COMPONENTS}
    expected = {**loan.paid, "fee": loan.paid["fee"] - loan.prepayment_fees}
    assert schedule_paid == expected, (
        f"{where}: paid on the schedule {schedule_paid} != acknowledged {expected}")
    assert (view["status"] == "paid_off") is loan.paid_off, (where, view["status"])
    if loan.view is not None:  # no end of day since the last acknowledged write
        assert view == loan.view, f"{where} does not read back as last acknowledged"


def check_durable(api: Api, loans: list[LoanModel]) -> None:
    if not loans:
        return
    ids = [loan.loan_id for loan in loans]
    rows = api.pg(
        "SELECT loan_id, array_agg(repayment_id) AS ids, sum(amount)::int8 AS amount, "
        "sum(principal)::int8 AS principal, sum(interest)::int8 AS interest, "
        "sum(penalty)::int8 AS penalty, sum(fee)::int8 AS fee "
        "FROM repayments WHERE loan_id = ANY($1::text[]) GROUP BY loan_id", ids)
    stored = {row["loan_id"]: row for row in rows}
    cash = {row["loan_id"]: (row["d"], row["c"]) for row in api.pg(
        "SELECT loan_id, sum(debit)::int8 AS d, sum(credit)::int8 AS c FROM journal_lines "
        # 2241: an entrusted loan (INST_FEE_12) pays its disbursement to the merchant
        "WHERE loan_id = ANY($1::text[]) AND account IN ('1001', '2241') GROUP BY loan_id",
        ids)}
    for loan in loans:
        row = stored.get(loan.loan_id)
        got_ids = sorted(row["ids"]) if row else []
        assert got_ids == sorted(loan.repayment_ids), (
            f"loan {loan.loan_id}: stored repayments {got_ids} != acknowledged "
            f"{sorted(loan.repayment_ids)} (doubled, lost or unacknowledged)")
        if row:
            got = {c: row[c] for c in COMPONENTS}
            assert got == loan.paid, f"loan {loan.loan_id}: stored {got} != acknowledged"
            assert row["amount"] == loan.cash_in, loan.loan_id
        debit, credit = cash.get(loan.loan_id, (0, 0))
        assert (debit, credit) == (loan.cash_in, loan.principal), (
            f"loan {loan.loan_id}: cash in {debit} (acknowledged {loan.cash_in}), "
            f"cash out {credit} (disbursed {loan.principal})")


def check_books(api: Api) -> None:
    balance = api.ops_get("/ops/ledger/trial-balance")
    assert balance["total_debit"] == balance["total_credit"], balance
    assert balance["balanced"] is True, balance
    assert balance["total_debit"] == sum(a["debit"] for a in balance["accounts"]), balance
    assert balance["total_credit"] == sum(a["credit"] for a in balance["accounts"]), balance
    report = api.ops_get("/ops/ledger/reconciliation")
    assert report["reconciled"] is True, report["differences"]
    assert report["differences"] == [], report


# ---- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_system(ray_cluster: None) -> Iterator[RunningSystem]:
    with fresh_system() as running:
        yield running


def _settings() -> settings:
    return settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, print_blob=True,
        database=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
    )


def test_model_of_acknowledged_repayments_under_faults(model_system: RunningSystem) -> None:
    chosen = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    how = (f"reproduce with {SEED_ENV}={chosen} .venv/bin/pytest -x -q "
           f"tests/reliability/test_model_based.py -p no:cacheprovider")
    print(f"model-based run: hypothesis seed {chosen} ({how})")
    api = Api(model_system)
    world = World(date.fromisoformat(api.ops_get("/ops/business-date")["business_date"]))
    assert world.business_date == date.fromisoformat(BUSINESS_DATE)

    def factory() -> LendingMachine:
        return LendingMachine(api, world)

    hypothesis_seed(chosen)(factory)
    if os.environ.get(BLOB_ENV):
        reproduce_failure(hypothesis.__version__, os.environ[BLOB_ENV].encode())(factory)
    started = time.monotonic()
    try:
        run_state_machine_as_test(factory, settings=_settings())
        final_check_after_restarting_everything(api, world)
    except BaseException as exc:
        if world.first_failure is not None:
            exc.add_note(f"model-based test, the run's FIRST failure: {world.first_failure}")
        exc.add_note(f"model-based test: {how}")
        raise
    finally:
        print(f"model-based run: {time.monotonic() - started:.1f} s, "
              f"business date {world.business_date}, {len(world.loans)} loans, "
              f"{len(world.acknowledged)} acknowledged repayments, {sorted(world.stats.items())}")
        api.close()


def final_check_after_restarting_everything(api: Api, world: World) -> None:
    """Every host killed at once and every Postgres connection dropped, nothing in flight:
    the loans of every example read back byte for byte, and Postgres holds each
    acknowledged repayment of the run once and nothing else of it."""
    running = api.running
    paths = [f"/v1/loans/{loan_id}" for loan_id in world.loans]
    before = {path: api.get(path).content for path in paths}
    old_pids = ray.get([host.pid.remote() for host in running.system.hosts])
    for index in range(len(running.system.hosts)):
        kill_host(running, index)
    terminate_backends(api)
    wait_hosts_back(running, old_pids)
    for path, content in before.items():
        after = api.get(path)
        assert (after.status_code, after.content) == (200, content), path
    for loan in world.loans.values():
        check_loan_view(loan, msgspec.json.decode(before[f"/v1/loans/{loan.loan_id}"]))
    check_durable(api, list(world.loans.values()))
    rows = api.pg(
        "SELECT external_ref, count(*) AS n, min(repayment_id) AS id FROM repayments "
        "WHERE external_ref LIKE $1 GROUP BY external_ref", f"mb-{world.run}-%")
    stored = {row["external_ref"]: (row["n"], row["id"]) for row in rows}
    assert set(stored) == set(world.acknowledged), (
        "stored and acknowledged references differ: "
        f"unacknowledged {sorted(set(stored) - set(world.acknowledged))}, "
        f"lost {sorted(set(world.acknowledged) - set(stored))}")
    assert all(n == 1 for n, _ in stored.values()), "a repayment applied twice"
    for ref, repayment_id in world.acknowledged.items():
        assert stored[ref][1] == repayment_id, f"{ref}: acknowledged id != stored id"
    check_books(api)
