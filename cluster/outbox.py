"""Sending what end of day planned: SMS reminders and withholdings (代扣), DOMAIN.md §5.

End of day writes each request into `connector_requests` in the commit of the chunk that
planned it (the outbox pattern, lending/shard_state.py): planned exactly once per loan and
day whatever crashed. Once the business date has advanced, `Outbox.drain` sends every
pending request whose `send_on` has come:

* sms: the customer's phone is decrypted here (the gateway is the only place that sees it in
  clear; it is never logged) and the reminder goes through the SMS channel. A reminder whose
  day has passed is not sent any more (`expired`): a "due today" message a day late misleads.
* withholding: the shard quotes what is due now (the borrower may have paid since it was
  planned), the payment channel debits that amount under the request id (channels take a
  merchant order number, so a retried debit is not taken twice), and the shard applies it
  as a regular repayment whose idempotency key and external reference are the request id:
  applied exactly once, however often the drain is retried.

A request that failed for a transient reason (timeout, channel error, shard unavailable)
stays pending until `max_attempts`; a final answer (declined, undeliverable, nothing due)
ends it. The channels here are deterministic simulators (the development default; no
network): outcomes derive from the request id, so tests and load runs can predict them.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
from datetime import date
from typing import Any

import asyncpg
import msgspec
from prometheus_client import Counter

from cluster.config import OutboxSettings
from gateway.pii import PiiVault
from gateway.router import Overloaded, ShardRouter
from lending.commands import QuoteWithholding, Repay, Reply
from lending.events import SOURCE_WITHHOLDING
from lending.shard_state import (
    REF_REPAYMENT,
    REQUEST_SMS,
    REQUEST_WITHHOLDING,
    Customer,
    WithholdingQuote,
)
from storage import cluster_store

log = logging.getLogger("lendcore.outbox")

PENDING = "pending"
SENT = "sent"
SUCCEEDED = "succeeded"
FAILED = "failed"
RETRY = "retry"  # transient: stays pending (attempts + 1) until max_attempts

SENT_REQUESTS = Counter(
    "lendcore_outbox_requests_total",
    "End-of-day connector requests handled, by kind and result",
    ["kind", "result"],
)

_CUSTOMER = msgspec.msgpack.Decoder(Customer)
_QUOTE = msgspec.json.Decoder(WithholdingQuote)
_REPAYMENT_ID = msgspec.json.Decoder(dict[str, Any])


class ChannelError(Exception):
    """A channel failed for a reason worth retrying (outage, timeout)."""


class SmsChannel(abc.ABC):
    @abc.abstractmethod
    async def send(self, request_id: str, phone: str, template: str, amount: int) -> str:
        """Send one message; returns "delivered" or "undeliverable"."""


class PaymentChannel(abc.ABC):
    @abc.abstractmethod
    async def debit(self, request_id: str, customer_id: str, amount: int) -> str:
        """Debit the customer's bound account under the order number `request_id`;
        returns "debited" or "declined"."""


def _per_mille(request_id: str, salt: str) -> int:
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000


class SimulatedSms(SmsChannel):
    def __init__(self, failure_per_mille: int) -> None:
        self.failure_per_mille = failure_per_mille

    async def send(self, request_id: str, phone: str, template: str, amount: int) -> str:
        await asyncio.sleep(0)
        if _per_mille(request_id, "sms") < self.failure_per_mille:
            return "undeliverable"
        return "delivered"


class SimulatedPayments(PaymentChannel):
    def __init__(self, decline_per_mille: int) -> None:
        self.decline_per_mille = decline_per_mille

    async def debit(self, request_id: str, customer_id: str, amount: int) -> str:
        await asyncio.sleep(0)
        if _per_mille(request_id, "payment") < self.decline_per_mille:
            return "declined"
        return "debited"


class Outcome(msgspec.Struct, frozen=True):
    """What became of one request: its new status, why, and the repayment it made."""

    status: str
    outcome: str
    repayment_id: str | None = None


_PAGE = """
SELECT r.shard_id, r.request_id, r.kind, r.send_on, r.loan_id, r.customer_id, r.partner_id,
       r.amount, r.template, r.attempts, c.state AS customer
FROM connector_requests r
LEFT JOIN customers c  -- the phone, for messages only
  ON r.kind = 'sms' AND c.shard_id = r.shard_id AND c.customer_id = r.customer_id
WHERE r.status = 'pending' AND r.send_on <= $1
  AND (r.send_on, r.shard_id, r.request_id) > ($2, $3, $4)
ORDER BY r.send_on, r.shard_id, r.request_id
LIMIT $5
"""

_UPDATE = """
UPDATE connector_requests AS r
SET status = u.status, outcome = u.outcome, repayment_id = u.repayment_id,
    attempts = r.attempts + 1, updated_at = now()
FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[])
     AS u(shard_id, request_id, status, outcome, repayment_id)
WHERE r.shard_id = u.shard_id AND r.request_id = u.request_id AND r.status = 'pending'
"""


class Outbox:
    def __init__(
        self, *, pool: asyncpg.Pool, router: ShardRouter, vault: PiiVault,
        settings: OutboxSettings, sms: SmsChannel | None = None,
        payments: PaymentChannel | None = None,
    ) -> None:
        self.pool = pool
        self.router = router
        self.vault = vault
        self.settings = settings
        self.sms = sms or SimulatedSms(settings.sms_failure_per_mille)
        self.payments = payments or SimulatedPayments(settings.payment_decline_per_mille)
        self._lock = asyncio.Lock()  # one drain at a time in this process

    async def drain(self) -> dict[str, dict[str, int]]:
        """Send every pending request due by the current business date, once each (a
        transient failure waits for the next drain). Returns counts by kind and result."""
        async with self._lock:
            today = await cluster_store.business_date(self.pool)
            counts: dict[str, dict[str, int]] = {}
            after: tuple[date, int, str] = (date.min, -1, "")
            while True:
                rows = await self.pool.fetch(_PAGE, today, *after, self.settings.page_rows)
                if not rows:
                    return counts
                outcomes = await self._send_page(rows, today)
                await self._record(rows, outcomes, counts)
                last = rows[-1]
                after = (last["send_on"], last["shard_id"], last["request_id"])

    async def _send_page(self, rows: list[asyncpg.Record], today: date) -> list[Outcome]:
        slots = asyncio.Semaphore(self.settings.concurrency)

        async def one(row: asyncpg.Record) -> Outcome:
            async with slots:
                try:
                    async with asyncio.timeout(self.settings.timeout_s * 3):
                        return await self._send(row, today)
                except (ChannelError, TimeoutError, Overloaded) as exc:
                    log.warning("outbox %s: %s (%s)", row["request_id"], RETRY,
                                type(exc).__name__)
                    return Outcome(RETRY, type(exc).__name__)

        return list(await asyncio.gather(*(one(row) for row in rows)))

    async def _send(self, row: asyncpg.Record, today: date) -> Outcome:
        if row["kind"] == REQUEST_SMS:
            return await self._send_sms(row, today)
        if row["kind"] == REQUEST_WITHHOLDING:
            return await self._withhold(row)
        return Outcome(FAILED, f"unknown_kind:{row['kind']}")

    async def _send_sms(self, row: asyncpg.Record, today: date) -> Outcome:
        if row["send_on"] < today:
            return Outcome(FAILED, "expired")
        phone = self._phone(row["customer"])
        if phone is None:
            return Outcome(FAILED, "no_phone")
        async with asyncio.timeout(self.settings.timeout_s):
            result = await self.sms.send(row["request_id"], phone, row["template"],
                                         int(row["amount"]))
        return Outcome(SENT if result == "delivered" else FAILED, result)

    def _phone(self, state: bytes | None) -> str | None:
        """The customer's phone in clear, or None when there is none (seeded customers
        carry no ciphertext)."""
        if state is None:
            return None
        customer = _CUSTOMER.decode(state)
        return self.vault.decrypt(customer.phone_enc) if customer.phone_enc else None

    async def _withhold(self, row: asyncpg.Record) -> Outcome:
        shard, loan_id, partner = row["shard_id"], row["loan_id"], row["partner_id"]
        if row["attempts"] > 0:
            # An earlier attempt may have been applied with its reply lost: Postgres knows.
            # The repayment's reference (partner_refs, written in its commit) names it.
            done = await self.pool.fetchval(
                "SELECT object_id FROM partner_refs WHERE partner_id = $1 AND kind = $2 "
                "AND ref = $3", partner, REF_REPAYMENT, row["request_id"])
            if done is not None:
                return Outcome(SUCCEEDED, "debited", done)
        reply = await self.router.call(shard, QuoteWithholding(partner, loan_id, row["send_on"]))
        if reply.status == 503:
            raise ChannelError("shard unavailable")
        if reply.status != 200:
            return Outcome(FAILED, reply.code or f"quote_{reply.status}")
        amount = _QUOTE.decode(reply.body).amount
        if amount == 0:
            return Outcome(FAILED, "nothing_due")
        async with asyncio.timeout(self.settings.timeout_s):
            result = await self.payments.debit(row["request_id"], row["customer_id"], amount)
        if result != "debited":
            return Outcome(FAILED, result)
        return self._applied(await self.router.call(shard, _repayment(row, amount)))

    @staticmethod
    def _applied(reply: Reply) -> Outcome:
        if reply.status == 503:
            raise ChannelError("shard unavailable")
        if reply.status != 201:
            # Debited but refused (e.g. the borrower paid between quote and apply): the money
            # must go back; the outcome says so for operations.
            return Outcome(FAILED, f"refund_required:{reply.code or reply.status}")
        repayment_id = str(_REPAYMENT_ID.decode(reply.body)["repayment_id"])
        return Outcome(SUCCEEDED, "debited", repayment_id)

    async def _record(
        self, rows: list[asyncpg.Record], outcomes: list[Outcome],
        counts: dict[str, dict[str, int]],
    ) -> None:
        final = []
        for row, outcome in zip(rows, outcomes, strict=True):
            status = outcome.status
            if status == RETRY:
                exhausted = row["attempts"] + 1 >= self.settings.max_attempts
                status = FAILED if exhausted else PENDING
            final.append((row["shard_id"], row["request_id"], status, outcome.outcome,
                          outcome.repayment_id))
            kind_counts = counts.setdefault(row["kind"], {})
            key = status if status != FAILED else f"failed:{outcome.outcome.split(':')[0]}"
            kind_counts[key] = kind_counts.get(key, 0) + 1
            SENT_REQUESTS.labels(row["kind"], status).inc()
        await self.pool.execute(_UPDATE, *(list(column) for column in zip(*final, strict=True)))


def _repayment(row: asyncpg.Record, amount: int) -> Repay:
    # The hash leaves the amount out: a retry whose quote changed (the first attempt was
    # applied, its reply lost) must replay the first repayment, not be refused as a reuse.
    request_id = row["request_id"]
    digest = hashlib.sha256(f"withholding\n{row['loan_id']}\n{request_id}".encode())
    return Repay(
        partner_id=row["partner_id"], idem_key=f"withholding:{request_id}",
        request_hash=digest.hexdigest(), loan_id=row["loan_id"], amount=amount,
        external_ref=request_id, kind="regular", source=SOURCE_WITHHOLDING,
    )
