"""Locust load test of the partner API (API.md): a realistic partner mix, every request signed.

Run it against a running stack:

    ./lendcore up                                   # in one terminal: prints `ready api=...`
    .venv/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --host http://127.0.0.1:8080                # in another

Without --headless, locust serves its web UI on http://127.0.0.1:8089. The host must be the
root of the partner API (the signature covers the path as sent: no path prefix). The partner
is `LENDCORE_LOCUST_PARTNER` / `LENDCORE_LOCUST_SECRET` (default demo / demo-secret-change-me,
the development config's partner).

What each simulated partner does (task weights below):
- submits applications for new applicants: every request carries a fresh valid ID number
  (birth date and 3-digit sequence 100..899 vary, so the sandbox approves it), device and IP;
- books the approved ones (POST /v1/loans);
- repays its loans in small regular amounts (100 fen, unique external_ref). A regular
  repayment may pay at most what is due plus the next installment, so each loan keeps a
  budget (what its first installment owes, less one fen so it is never paid off) and is
  dropped once it is spent;
- now and then sends a batch of 50 repayments;
- reads loans, payoff quotes, applications and customers.

Every request is signed (HMAC headers, fresh nonce, current timestamp, gateway.signing) and
every POST has its own Idempotency-Key. A response with any status other than the expected
one counts as a failure, batch items included. Requests are named by route
("/v1/loans/[id]/repayments"), so the statistics group by endpoint. Memory stays bounded:
each user keeps at most MAX_TRACKED ids of each kind.
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import time
import uuid
from collections import deque
from datetime import date, timedelta
from typing import Any

import msgspec
from locust import FastHttpUser, between, task

from gateway.signing import signed_headers
from lending.identity import make_id_number

DEFAULT_PARTNER = "demo"
DEFAULT_SECRET = "demo-secret-change-me"
PARTNER_ID = os.environ.get("LENDCORE_LOCUST_PARTNER", DEFAULT_PARTNER)
PARTNER_SECRET = os.environ.get("LENDCORE_LOCUST_SECRET", DEFAULT_SECRET).encode("utf-8")

MAX_TRACKED = 50  # ids of each kind a user remembers (approved applications, loans, ...)
REPAY_AMOUNT = 100  # fen
BATCH_ITEMS = 50

# code → (terms, max amount in fen, needs a merchant); sandbox products of API.md. Amounts stay
# ≤ 5,000,000 fen and incomes ≥ 1,000,000 fen, so a fresh applicant is approved.
PRODUCTS: dict[str, tuple[tuple[int, ...], int, bool]] = {
    "CASH_EI_12": ((3, 6, 12, 24), 5_000_000, False),
    "CASH_EP_12": ((6, 12, 24), 5_000_000, False),
    "CASH_IF_12": ((3, 6, 12), 5_000_000, False),
    "CASH_BL_3": ((1, 3), 5_000_000, False),
    "INST_FEE_12": ((3, 6, 12), 5_000_000, True),
}
PRODUCT_CODES = list(PRODUCTS)
PRODUCT_WEIGHTS = [5, 2, 1, 1, 1]
AMOUNT_MIN = 100_000

_JSON = msgspec.json.Encoder()


def new_key() -> str:
    return uuid.uuid4().hex


def build_request(
    method: str,
    path: str,
    payload: Any = None,
    *,
    partner_id: str = PARTNER_ID,
    secret: bytes = PARTNER_SECRET,
    idempotency_key: str | None = None,
    now_s: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body bytes and signed headers of one request. A POST always gets an
    Idempotency-Key (a fresh one unless given); the nonce is fresh on every call."""
    body = b"" if payload is None else _JSON.encode(payload)
    if method == "POST" and idempotency_key is None:
        idempotency_key = new_key()
    timestamp = int(time.time()) if now_s is None else now_s
    headers = signed_headers(
        partner_id, secret, method, path, body, timestamp, idempotency_key=idempotency_key
    )
    return body, headers


class IdNumbers:
    """Valid ID numbers, unique within the process: the i-th varies the 3-digit sequence in
    100..899 (900–999 would be a bad credit file), then the birth date, over applicants aged
    about 25 to 50 today. Each process (locust --processes forks) starts at its own random
    point, so processes and separate runs seldom repeat a person."""

    SEQUENCES = 800

    def __init__(self, region_code: str = "330106", today: date | None = None) -> None:
        today = today or date.today()
        self.region_code = region_code
        self.oldest = today - timedelta(days=round(50 * 365.25))
        self.days = round(25 * 365.25)
        self._pid = 0
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():  # first use in this process
            self._pid = os.getpid()
            self._counter = itertools.count(secrets.randbelow(self.days * self.SEQUENCES))
        index = next(self._counter) % (self.days * self.SEQUENCES)
        day, sequence = divmod(index, self.SEQUENCES)
        born = self.oldest + timedelta(days=day)
        return make_id_number(self.region_code, born, 100 + sequence)


ID_NUMBERS = IdNumbers()


def application_body(id_number: str) -> dict[str, Any]:
    """A sandbox-approvable application of a new applicant (new device and IP too)."""
    code = random.choices(PRODUCT_CODES, PRODUCT_WEIGHTS)[0]
    terms, amount_max, needs_merchant = PRODUCTS[code]
    amount = random.randrange(AMOUNT_MIN, amount_max + 1, 10_000)
    return {
        "partner_application_id": f"LT-{new_key()}",
        "product_code": code,
        "amount": amount,
        "term": random.choice(terms),
        "applicant": {
            "name": "张三",
            "id_number": id_number,
            "phone": f"1{random.randint(3, 9)}{random.randrange(10**9):09d}",
            "monthly_income": random.randrange(1_000_000, 3_000_001, 10_000),
            "region_code": "330106",
        },
        "device": {
            "device_id": f"lt-{new_key()}",
            "ip": f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}",
        },
        "purpose": "consumption",
        "merchant_id": f"M-{random.randrange(1000):04d}" if needs_merchant else None,
    }


def first_installment_unpaid(loan: dict[str, Any]) -> int:
    """What a fresh loan's first installment still owes: a safe bound on what regular
    repayments may pay (it only grows as the business date moves on)."""
    first = loan["schedule"][0]
    paid = first["paid"]
    return int(first["total"] + first["penalty"] - sum(paid.values()))


def _describe(response: Any) -> str:
    content = response.content or b""
    return f"HTTP {response.status_code}: {content[:200]!r}"


class PartnerUser(FastHttpUser):
    """One partner integration, sending a realistic mix of the API's requests."""

    wait_time = between(0.05, 0.5)
    host = "http://127.0.0.1:8080"

    def on_start(self) -> None:
        self.approved: deque[str] = deque(maxlen=MAX_TRACKED)  # applications not booked yet
        self.applications: deque[str] = deque(maxlen=MAX_TRACKED)
        self.customers: deque[str] = deque(maxlen=MAX_TRACKED)
        # loan id → what regular repayments may still pay without emptying the installment
        self.loans: dict[str, int] = {}

    # ---- transport --------------------------------------------------------------------

    def _send(
        self, method: str, path: str, name: str, expected: int, payload: Any = None
    ) -> Any | None:
        """Send one signed request; the decoded JSON body when the status is `expected`,
        else None (and the request counts as failed)."""
        body, headers = build_request(method, path, payload)
        with self.client.request(
            method, path, name=name, data=body,  # type: ignore[arg-type]  # bytes are sent as is
            headers=headers, catch_response=True,
        ) as response:
            if response.status_code != expected:
                response.failure(_describe(response))
                return None
            try:
                decoded = msgspec.json.decode(response.content or b"")
            except msgspec.DecodeError:
                response.failure(f"HTTP {expected} but the body is not JSON")
                return None
            response.success()
            return decoded

    def _remember_loan(self, loan_id: str, budget: int) -> None:
        if loan_id not in self.loans and len(self.loans) >= MAX_TRACKED:
            self.loans.pop(next(iter(self.loans)))  # the oldest
        self.loans[loan_id] = budget

    def _spend(self, loan_id: str, amount: int) -> None:
        """Count a repayment against the loan's budget before it is sent (an unanswered one
        may have happened), dropping the loan once it cannot take another."""
        left = self.loans.get(loan_id, 0) - amount
        if left > REPAY_AMOUNT:
            self.loans[loan_id] = left
        else:
            self.loans.pop(loan_id, None)

    # ---- tasks ------------------------------------------------------------------------

    @task(10)
    def submit_application(self) -> None:
        reply = self._send(
            "POST", "/v1/applications", "/v1/applications", 201,
            application_body(ID_NUMBERS.next()),
        )
        if reply is None:
            return
        self.applications.append(reply["application_id"])
        self.customers.append(reply["customer_id"])
        if reply["status"] == "approved":
            self.approved.append(reply["application_id"])

    @task(6)
    def book_loan(self) -> None:
        if not self.approved:
            self.submit_application()
            return
        application_id = self.approved.popleft()
        loan = self._send(
            "POST", "/v1/loans", "/v1/loans", 201, {"application_id": application_id}
        )
        if loan is not None:
            budget = first_installment_unpaid(loan) - 1  # never pay the loan off
            if budget > REPAY_AMOUNT:
                self._remember_loan(loan["loan_id"], budget)

    @task(20)
    def repay(self) -> None:
        if not self.loans:
            self.book_loan()
            return
        loan_id = random.choice(list(self.loans))
        self._spend(loan_id, REPAY_AMOUNT)
        self._send(
            "POST", f"/v1/loans/{loan_id}/repayments", "/v1/loans/[id]/repayments", 201,
            {"amount": REPAY_AMOUNT, "external_ref": f"LT-{new_key()}", "kind": "regular"},
        )

    @task(1)
    def repay_batch(self) -> None:
        items: list[dict[str, Any]] = []
        loan_ids = list(self.loans)
        random.shuffle(loan_ids)
        for loan_id in itertools.cycle(loan_ids) if loan_ids else ():
            if len(items) == BATCH_ITEMS or not self.loans:
                break
            if loan_id not in self.loans:
                continue
            self._spend(loan_id, REPAY_AMOUNT)
            items.append(
                {"loan_id": loan_id, "amount": REPAY_AMOUNT, "external_ref": f"LT-{new_key()}",
                 "kind": "regular"}
            )
        if not items:
            self.book_loan()
            return
        body, headers = build_request("POST", "/v1/repayments/batch", {"items": items})
        with self.client.request(
            "POST", "/v1/repayments/batch", name="/v1/repayments/batch",
            data=body,  # type: ignore[arg-type]
            headers=headers, catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(_describe(response))
                return
            results = msgspec.json.decode(response.content or b"")["results"]
            failed = [r for r in results if r["status"] != 201]
            if len(results) != len(items) or failed:
                detail = failed[0] if failed else f"{len(results)} results"
                response.failure(f"{len(failed)} of {len(items)} items failed: {detail}"[:300])
            else:
                response.success()

    @task(8)
    def get_loan(self) -> None:
        if not self.loans:
            self.book_loan()
            return
        loan_id = random.choice(list(self.loans))
        self._send("GET", f"/v1/loans/{loan_id}", "/v1/loans/[id]", 200)

    @task(4)
    def get_payoff(self) -> None:
        if not self.loans:
            self.book_loan()
            return
        loan_id = random.choice(list(self.loans))
        self._send("GET", f"/v1/loans/{loan_id}/payoff", "/v1/loans/[id]/payoff", 200)

    @task(4)
    def get_application(self) -> None:
        if not self.applications:
            self.submit_application()
            return
        application_id = random.choice(self.applications)
        self._send(
            "GET", f"/v1/applications/{application_id}", "/v1/applications/[id]", 200
        )

    @task(3)
    def get_customer(self) -> None:
        if not self.customers:
            self.submit_application()
            return
        customer_id = random.choice(self.customers)
        self._send("GET", f"/v1/customers/{customer_id}", "/v1/customers/[id]", 200)
