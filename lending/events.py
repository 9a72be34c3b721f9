"""Partner webhook events (issue 14): what a shard's batch tells a partner, built purely.

A batch that changes something a partner with a webhook endpoint wants to hear of adds an
event to its Diff (`lending/shard_state.py` `_Batch.emit`); the event row is written in the
batch's one fenced commit (table `webhook_events`, the outbox), and `cluster/webhooks.py`
delivers it from the gateway, at least once. Nothing here does IO or reads a clock: the
date an event carries is the business date of the batch.

Event types and when they occur:

* `application.decided`: an application reached a final decision (approved or declined),
  by the risk pipeline when it was submitted, or by a review (人工审核) when a final review
  decision was taken. An application sent to manual review has no such event until then.
* `loan.disbursed`: an approved application was booked and disbursed (POST /v1/loans).
* `repayment.applied`: a repayment was applied, whether the partner sent it
  (`source: "partner"`) or end of day's withholding (代扣) collected it
  (`source: "withholding"`).
* `loan.overdue`: end of day moved a loan into a worse delinquency bucket: C → M1 (the
  first day past due), M1 → M2, … (one event per bucket reached, not one per day).
* `loan.paid_off`: a repayment settled the loan (status `paid_off`); it follows that
  repayment's `repayment.applied`.

Order: events of one application and its loan share an `order_key` (the application id);
the delivery worker sends them in the order they occurred (their `sequence`). Money is in
integer fen; no event carries a name, ID number or phone (DOMAIN.md §8): only ids, masks
never, amounts and states.
"""

from __future__ import annotations

from datetime import date
from typing import Protocol
from urllib.parse import urlsplit

import msgspec

from lending import views
from lending.loans import INST_OVERDUE, LOAN_PAID_OFF, Loan

APPLICATION_DECIDED = "application.decided"
LOAN_DISBURSED = "loan.disbursed"
REPAYMENT_APPLIED = "repayment.applied"
LOAN_OVERDUE = "loan.overdue"
LOAN_PAID_OFF_EVENT = "loan.paid_off"
EVENT_TYPES = (APPLICATION_DECIDED, LOAN_DISBURSED, REPAYMENT_APPLIED, LOAN_OVERDUE,
               LOAN_PAID_OFF_EVENT)

BY_PIPELINE = "pipeline"  # application.decided: decided when it was submitted
BY_REVIEW = "review"  # ... by a risk officer's final review decision
SOURCE_PARTNER = "partner"  # repayment.applied: the partner's own repayment request
SOURCE_WITHHOLDING = "withholding"  # ... end of day's withholding (代扣, cluster/outbox.py)

# Worse and worse: loan.overdue fires when a loan's bucket moves right in this list.
BUCKET_ORDER = ("C", "M1", "M2", "M3", "M4", "M5", "M6", "M6+")
_BUCKET_RANK = {bucket: rank for rank, bucket in enumerate(BUCKET_ORDER)}
_FINAL_DECISIONS = ("approved", "declined")


# ---- payloads (the `data` of each event type) -----------------------------------------------


class ApplicationDecided(msgspec.Struct, frozen=True):
    decided_by: str  # pipeline | review
    application: views.ApplicationView  # as GET /v1/applications/{id} shows it


class LoanDisbursed(msgspec.Struct, frozen=True):
    amount: int  # the principal disbursed
    payee: str  # borrower | merchant:<merchant_id> (受托支付)
    loan: views.LoanView  # as GET /v1/loans/{id} shows it, schedule included


class LoanState(msgspec.Struct, frozen=True):
    """A loan's state after the event, without its schedule (GET the loan for that)."""

    status: str
    dpd: int
    bucket: str
    classification: str
    outstanding: views.Components
    remaining_periods: int
    non_accrual: bool


class RepaymentApplied(msgspec.Struct, frozen=True):
    repayment_id: str
    external_ref: str  # the partner's reference; a withholding's is its request id (RQ-…)
    kind: str
    source: str  # partner | withholding
    amount: int
    value_date: date
    allocation: views.AllocationView  # penalty + fee + interest + principal = amount
    prepayment_fee: int  # the part of allocation.fee that is the prepayment fee
    loan: LoanState


class LoanOverdue(msgspec.Struct, frozen=True):
    dpd: int
    bucket: str
    previous_bucket: str
    oldest_due_date: date | None  # the oldest installment still unpaid past its due date
    overdue: views.Components  # unpaid amounts of the overdue installments
    loan: LoanState


class LoanPaidOff(msgspec.Struct, frozen=True):
    repayment_id: str  # the repayment that settled it
    paid_off_on: date
    principal: int  # the loan's original principal
    loan: LoanState


Payload = ApplicationDecided | LoanDisbursed | RepaymentApplied | LoanOverdue | LoanPaidOff


class Draft(msgspec.Struct, frozen=True):
    """An event before the batch gave it an id (only partners with an endpoint get one)."""

    event_type: str
    application_id: str
    loan_id: str | None
    data: Payload


class Envelope(msgspec.Struct, frozen=True):
    """The JSON document POSTed to the partner's endpoint, exactly as stored."""

    event_id: str
    type: str
    partner_id: str
    occurred_on: date  # the business date of the change
    sequence: int  # increases with every event of the shard: orders one loan's events
    application_id: str
    loan_id: str | None
    data: Payload


class WebhookEvent(msgspec.Struct, frozen=True):
    """A row of the outbox `webhook_events`, written in the commit of its change."""

    event_id: str
    partner_id: str
    event_type: str
    order_key: str  # the application id: its events, and its loan's, go out in order
    loan_id: str | None
    occurred_on: date
    body: str  # the Envelope as JSON text: sent (and signed) byte for byte, every attempt


_ENCODER = msgspec.json.Encoder()


def sequence_of(event_id: str) -> int:
    """The shard sequence number in an id (EV-0003-0000000042 → 42)."""
    return int(event_id.rsplit("-", 1)[1])


def make_event(event_id: str, partner_id: str, occurred_on: date, draft: Draft) -> WebhookEvent:
    envelope = Envelope(
        event_id=event_id, type=draft.event_type, partner_id=partner_id,
        occurred_on=occurred_on, sequence=sequence_of(event_id),
        application_id=draft.application_id, loan_id=draft.loan_id, data=draft.data,
    )
    return WebhookEvent(
        event_id=event_id, partner_id=partner_id, event_type=draft.event_type,
        order_key=draft.application_id, loan_id=draft.loan_id, occurred_on=occurred_on,
        body=_ENCODER.encode(envelope).decode(),
    )


# ---- builders: the drafts a change implies (empty when it implies none) ---------------------


def application_decided(view: views.ApplicationView, decided_by: str) -> list[Draft]:
    """An application's decision, once final (approved or declined) as the partner sees it."""
    if view.status not in _FINAL_DECISIONS:
        return []
    return [Draft(APPLICATION_DECIDED, view.application_id, view.loan_id,
                  ApplicationDecided(decided_by, view))]


def loan_disbursed(loan: Loan) -> list[Draft]:
    return [Draft(LOAN_DISBURSED, loan.application_id, loan.loan_id,
                  LoanDisbursed(loan.principal, loan.payee, views.loan_view(loan)))]


class RepaymentFacts(Protocol):
    """What a repayment record holds (lending/shard_state.py RepaymentRecord)."""

    @property
    def repayment_id(self) -> str: ...
    @property
    def external_ref(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def value_date(self) -> date: ...
    @property
    def penalty(self) -> int: ...
    @property
    def fee(self) -> int: ...
    @property
    def interest(self) -> int: ...
    @property
    def principal(self) -> int: ...


def repayment_applied(
    record: RepaymentFacts, source: str, prepayment_fee: int, loan: Loan
) -> list[Draft]:
    """The repayment, and `loan.paid_off` after it when it settled the loan (`loan` is the
    loan after the repayment)."""
    state = loan_state(loan)
    drafts = [Draft(REPAYMENT_APPLIED, loan.application_id, loan.loan_id, RepaymentApplied(
        repayment_id=record.repayment_id, external_ref=record.external_ref, kind=record.kind,
        source=source, amount=record.amount, value_date=record.value_date,
        allocation=views.AllocationView(record.penalty, record.fee, record.interest,
                                        record.principal),
        prepayment_fee=prepayment_fee, loan=state))]
    if loan.status == LOAN_PAID_OFF:
        drafts.append(Draft(LOAN_PAID_OFF_EVENT, loan.application_id, loan.loan_id,
                            LoanPaidOff(record.repayment_id, record.value_date, loan.principal,
                                        state)))
    return drafts


def day_closed(before: Loan, after: Loan) -> list[Draft]:
    """What end of day's close of one loan tells its partner: `loan.overdue` when the loan
    entered a worse bucket (C → M1 on its first day past due, M1 → M2, …)."""
    if after.dpd <= 0 or bucket_rank(after.bucket) <= bucket_rank(before.bucket):
        return []
    overdue = [i for i in after.installments if i.status == INST_OVERDUE]
    return [Draft(LOAN_OVERDUE, after.application_id, after.loan_id, LoanOverdue(
        dpd=after.dpd, bucket=after.bucket, previous_bucket=before.bucket,
        oldest_due_date=overdue[0].due_date if overdue else None,
        overdue=views.Components(
            principal=sum(i.unpaid_principal() for i in overdue),
            interest=sum(i.unpaid_interest() for i in overdue),
            penalty=sum(i.unpaid_penalty() for i in overdue),
            fee=sum(i.unpaid_fee() for i in overdue),
        ),
        loan=loan_state(after)))]


def bucket_rank(bucket: str) -> int:
    return _BUCKET_RANK.get(bucket, 0)


def loan_state(loan: Loan) -> LoanState:
    return LoanState(
        status=loan.status, dpd=loan.dpd, bucket=loan.bucket,
        classification=loan.classification,
        outstanding=views.Components(
            principal=loan.outstanding_principal(), interest=loan.outstanding_interest(),
            penalty=loan.outstanding_penalty(), fee=loan.outstanding_fee()),
        remaining_periods=sum(1 for i in loan.installments if i.status != "paid"),
        non_accrual=loan.non_accrual,
    )


# ---- delivery rules (pure; cluster/webhooks.py applies them) --------------------------------

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
STATUSES = (PENDING, DELIVERED, FAILED)


class RetryPolicy(msgspec.Struct, frozen=True):
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float

    def delay_s(self, attempts: int) -> float:
        """The wait before the next attempt, after `attempts` (≥ 1) failed ones:
        backoff_initial_s × 2^(attempts − 1), at most backoff_max_s."""
        exponent = min(max(attempts - 1, 0), 62)  # 2**62 × anything positive caps anyway
        return float(min(self.backoff_max_s, self.backoff_initial_s * (2 ** exponent)))

    def after_failure(self, attempts: int) -> tuple[str, float | None]:
        """(status, delay before the next attempt) once attempt number `attempts` failed:
        pending again after the backoff, or failed (given up) after max_attempts."""
        if attempts >= self.max_attempts:
            return FAILED, None
        return PENDING, self.delay_s(attempts)



# ---- endpoints ------------------------------------------------------------------------------

ENDPOINT_URL_MAX = 2000


def endpoint_url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook endpoint, or None: an absolute http(s) URL with a host,
    no user name or password in it (they would be stored and shown), no fragment."""
    if not url or len(url) > ENDPOINT_URL_MAX:
        return f"must be 1..{ENDPOINT_URL_MAX} characters"
    if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when it is not a number in 0..65535
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password"
    if parts.fragment or url.endswith("#"):
        return "must not have a fragment (#...)"
    if port == 0:
        return "must not use port 0"
    return None

# The payload types, for the OpenAPI document (gateway/openapi.py).
PAYLOADS = (ApplicationDecided, LoanDisbursed, RepaymentApplied, LoanOverdue, LoanPaidOff,
            LoanState)
