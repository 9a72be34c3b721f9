"""The state machine of one logical shard: customers, applications and loans.

`apply_batch` is pure: given the state, a batch of commands, the business date and the
durable facts prefetched for the batch (idempotency records, external refs already used), it
returns the replies and a Diff of rows to write. The caller commits the Diff in one
transaction and only then calls `commit` to update memory, so a failed commit leaves the
state exactly as it was (TigerBeetle's prefetch / commit split).
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, timedelta
from typing import Any

import msgspec

from lending import collections as coll
from lending import events, ledger, views
from lending.apr import apr_bps, schedule_payments
from lending.calendar import due_dates
from lending.collections import CaseEvent, CollectionCase, CollectionsPolicy
from lending.commands import (
    SEED_MAX_PER_COMMAND,
    BookLoan,
    CaseAction,
    Command,
    EodStep,
    GetApplication,
    GetCustomer,
    GetLoan,
    GetPayoff,
    QuoteWithholding,
    Repay,
    Reply,
    ReviewDecision,
    SeedLoans,
    SubmitApplication,
    error_reply,
)
from lending.daily import ServicingPolicy, close_day
from lending.decision import APPROVED, DECLINED, MANUAL_REVIEW, RiskPolicy
from lending.funding import compensate, compensation_due, funding_for, split
from lending.guarantee import NO_GUARANTEE, GuaranteePolicy
from lending.loans import (
    LOAN_PAID_OFF,
    PAYEE_BORROWER,
    Loan,
    RepaymentRefused,
    apply_repayment,
    disbursement_posting,
    new_loan,
    payoff_quote,
)
from lending.memory import (
    freeze_loan,
    shared_date,
    shared_rate,
    shared_strings,
    thaw_loan,
    with_shared_values,
)
from lending.origination import ApplicationInput, CustomerSnapshot, DecisionTrace, decide
from lending.products import Product, ProductCatalog
from lending.riskbook import RiskBook
from lending.schedules import build_schedule

ID_PREFIXES = {
    "customer": "CU", "application": "AP", "loan": "LN", "repayment": "RP", "entry": "JE",
    "case": "CC", "request": "RQ", "event": "EV",
}


def make_id(kind: str, shard_id: int, seq: int) -> str:
    """Ids carry their shard, so any id routes without a lookup: LN-0003-0000000042."""
    return f"{ID_PREFIXES[kind]}-{shard_id:04d}-{seq:010d}"


def shard_of_id(kind: str, value: str) -> int | None:
    """The shard an id belongs to, or None when it is not an id of that kind."""
    parts = value.split("-")
    if len(parts) != 3 or parts[0] != ID_PREFIXES[kind]:
        return None
    shard, seq = parts[1], parts[2]
    if len(shard) != 4 or len(seq) != 10 or not shard.isdigit() or not seq.isdigit():
        return None
    return int(shard)


# gc=False (Customer, Application): their fields are strings, bytes, numbers, dates, lists of
# strings and, for an application, its decision trace, none of which can refer back to them,
# so no reference cycle passes through them and the collector need not track them.
# partner_ids, loan_ids and reasons are read-only sequences: built as lists, decoded from
# Postgres as lists, kept as tuples in shard memory (ShardState.keep_*), where a tuple is
# one object and () is shared.
class Customer(msgspec.Struct, gc=False):
    customer_id: str
    id_hash: str
    id_number_enc: bytes
    name_enc: bytes
    phone_enc: bytes
    id_number_masked: str
    name_masked: str
    phone_masked: str
    partner_ids: Sequence[str]
    credit_limit: int
    loan_ids: Sequence[str]
    created_on: date


class Application(msgspec.Struct, gc=False):
    application_id: str
    partner_id: str
    partner_application_id: str
    customer_id: str
    product_code: str
    product_version: int
    amount: int
    term: int
    status: str
    reasons: Sequence[str]
    approved_amount: int | None
    annual_rate_bps: int | None
    apr_bps: int | None
    credit_limit: int | None
    expires_on: date | None
    created_on: date
    merchant_id: str | None
    purpose: str
    device_id: str
    ip: str
    loan_id: str | None = None
    trace: DecisionTrace | None = None  # how the risk pipeline decided (never shown to partners)


def without_trace(app: Application) -> Application:
    """The application as shards keep it: the decision trace (≈ 5 KB once decoded, read only
    by operators) lives in its own column in Postgres, written once (storage.shard_store)."""
    return app if app.trace is None else msgspec.structs.replace(app, trace=None)


class RepaymentRecord(msgspec.Struct, frozen=True):
    repayment_id: str
    loan_id: str
    partner_id: str
    external_ref: str
    kind: str
    amount: int
    value_date: date
    penalty: int
    fee: int
    interest: int
    principal: int


class IdempotencyRecord(msgspec.Struct, frozen=True):
    partner_id: str
    idem_key: str
    request_hash: str
    status: int
    body: bytes


class ReviewStep(msgspec.Struct, frozen=True):
    """One risk officer's decision on an application in manual review (人工审核)."""

    stage: str  # "maker" (first decision) or "checker" (on a maker's proposal)
    officer: str
    decision: str  # "approve" | "decline"
    reasons: list[str]
    note: str
    decided_on: date  # business date
    # approved | declined (final), proposed (awaits a checker), rejected (a checker sent the
    # proposal back to the queue)
    outcome: str


class Review(msgspec.Struct):
    """The review history of one application (table application_reviews)."""

    application_id: str
    proposal: ReviewStep | None = None  # the maker's decision while awaiting_confirmation
    steps: list[ReviewStep] = msgspec.field(default_factory=list)  # oldest first


class AuditRecord(msgspec.Struct, frozen=True):
    """A row of audit_log written in the same commit as the change it describes."""

    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class EodProgress(msgspec.Struct):
    """What one batch's EodSteps did to a shard's end of day (table eod_shard_progress):
    counts to add to the row, `remaining` and, once nothing remains, the shard's buckets and
    classifications after the run."""

    business_date: date
    processed: int = 0
    accrued_interest: int = 0
    accrued_penalty: int = 0
    became_overdue: int = 0
    non_accrual_started: int = 0
    written_off: int = 0
    guarantee_triggers: int = 0
    cases_opened: int = 0
    cases_closed: int = 0
    cases_escalated: int = 0  # bucket changes of open cases
    promises_kept: int = 0
    promises_broken: int = 0
    reminders: int = 0  # planned for the next day (outbox)
    reminders_suppressed: int = 0  # over a contact-frequency limit: not sent
    withholdings: int = 0  # requests planned for installments due the next day
    withholding_amount: int = 0
    chunks: int = 0
    remaining: int = 0
    finished: bool = False
    buckets: dict[str, int] | None = None
    classifications: dict[str, int] | None = None


class EodWorklist(msgspec.Struct, frozen=True):
    """Memory only: the loans one end of day still has to close on a shard, in id order,
    from `position` on (see `_next_chunk`). Derived from the loans, so a restarted shard
    simply lists them again."""

    business_date: date
    loan_ids: list[str]
    position: int = 0


class EodStepResult(msgspec.Struct, frozen=True):
    """The reply of an EodStep: this chunk's figures; `book_*` only when remaining is 0."""

    business_date: date
    processed: int
    remaining: int
    accrued_interest: int
    accrued_penalty: int
    became_overdue: int
    non_accrual_started: int
    written_off: int
    buckets: dict[str, int]  # bucket → loans of this chunk in it after the close
    classifications: dict[str, int]
    book_buckets: dict[str, int] | None = None  # every open loan of the shard, when done
    book_classifications: dict[str, int] | None = None
    guarantee_triggers: int = 0
    cases_opened: int = 0
    cases_closed: int = 0
    reminders: int = 0
    withholdings: int = 0


# Kinds of connector requests end of day writes to the outbox (table connector_requests);
# cluster/outbox.py sends them once the business date has advanced.
REQUEST_SMS = "sms"
REQUEST_WITHHOLDING = "withholding"


class ConnectorRequest(msgspec.Struct, frozen=True):
    """A message or a withholding (代扣) to send on `send_on`, written in the commit of the
    end-of-day chunk that planned it (the outbox pattern: planned exactly once per loan and
    day, sent at least once, applied exactly once by its id)."""

    request_id: str
    kind: str
    created_on: date  # the business date whose end of day planned it
    send_on: date
    loan_id: str
    customer_id: str
    partner_id: str
    amount: int
    template: str = ""  # sms: the message template of the reminder rule
    case_id: str | None = None


class ContactRecord(msgspec.Struct, frozen=True):
    """One contact with a customer (table contact_log): counted by the frequency limits."""

    customer_id: str
    contact_on: date
    channel: str
    actor: str
    case_id: str | None = None
    request_id: str | None = None


class Diff(msgspec.Struct):
    """Rows one batch writes. Everything in it commits together or not at all."""

    customers: dict[str, Customer] = msgspec.field(default_factory=dict)
    applications: dict[str, Application] = msgspec.field(default_factory=dict)
    loans: dict[str, Loan] = msgspec.field(default_factory=dict)
    repayments: list[RepaymentRecord] = msgspec.field(default_factory=list)
    entries: list[ledger.JournalEntry] = msgspec.field(default_factory=list)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = msgspec.field(default_factory=dict)
    # (partner_id, kind, ref, object_id) of references unique across all shards
    partner_refs: list[tuple[str, str, str, str]] = msgspec.field(default_factory=list)
    next_seq: int = 0
    reviews: dict[str, Review] = msgspec.field(default_factory=dict)
    audit: list[AuditRecord] = msgspec.field(default_factory=list)
    eod: EodProgress | None = None  # end-of-day progress of this shard (eod_shard_progress)
    eod_worklist: EodWorklist | None = None  # memory only: where the next EodStep resumes
    cases: dict[str, CollectionCase] = msgspec.field(default_factory=dict)
    case_events: list[CaseEvent] = msgspec.field(default_factory=list)
    requests: list[ConnectorRequest] = msgspec.field(default_factory=list)
    contacts: list[ContactRecord] = msgspec.field(default_factory=list)
    # customer → the contact log after this batch (the limits' window only)
    contact_logs: dict[str, tuple[date, ...]] = msgspec.field(default_factory=dict)
    frozen: dict[str, Loan] | None = None  # `loans` frozen, once: see frozen_loans
    booked: frozenset[str] = frozenset()  # ids in `loans` new to the shard (rows to insert)
    # partner webhook events (outbox webhook_events; lending/events.py, cluster/webhooks.py)
    webhook_events: list[events.WebhookEvent] = msgspec.field(default_factory=list)

    def frozen_loans(self) -> dict[str, Loan]:
        """`loans` frozen (lending.memory), in the same order. Made once, after the batch
        was applied, for both the rows (storage) and memory (ShardState.commit): each
        committed loan's installments are packed once."""
        if self.frozen is None:
            self.frozen = {loan_id: freeze_loan(loan) for loan_id, loan in self.loans.items()}
        return self.frozen

    def is_empty(self) -> bool:
        return not (
            self.customers or self.applications or self.loans or self.repayments
            or self.entries or self.idempotency or self.partner_refs or self.reviews
            or self.audit or self.eod is not None or self.cases or self.case_events
            or self.requests or self.contacts or self.webhook_events
        )


class Prefetched(msgspec.Struct):
    """Durable facts about this batch read inside its transaction before apply."""

    idempotency: dict[tuple[str, str], IdempotencyRecord] = msgspec.field(default_factory=dict)
    # (partner_id, kind, ref) already used, on any shard
    refs_taken: set[tuple[str, str, str]] = msgspec.field(default_factory=set)


REF_REPAYMENT = "repayment"
REF_APPLICATION = "application"


def wanted_refs(command: Command) -> tuple[str, str, str] | None:
    """The book-wide unique reference a command would take, if any (for the prefetch)."""
    if isinstance(command, Repay):
        return (command.partner_id, REF_REPAYMENT, command.external_ref)
    if isinstance(command, SubmitApplication):
        return (command.partner_id, REF_APPLICATION, command.partner_application_id)
    return None


class ApplyContext(msgspec.Struct, frozen=True):
    business_date: date
    catalog: ProductCatalog
    policy: RiskPolicy
    servicing: ServicingPolicy = ServicingPolicy()
    risk: RiskBook | None = None  # config/risk; the shard host loads and hot-reloads it
    collections: CollectionsPolicy = CollectionsPolicy()
    collectors: frozenset[str] = frozenset()  # operators with the collector role
    guarantee: GuaranteePolicy = NO_GUARANTEE  # the end-of-day compensation hook
    # Partners with a webhook endpoint (config or ops API; the host refreshes it): only
    # their changes write webhook events (lending/events.py).
    webhook_partners: frozenset[str] = frozenset()


class ShardState:
    """Memory of one logical shard. Only `commit` (and, at start, the load) changes it.

    Everything is kept compact, since a shard host holds every loan of its shards
    (docs/performance.md): loans frozen (lending.memory; read them with `loan`, which thaws,
    though their scalar fields read as usual), repeated strings and dates shared, one string
    object per id, and read-only sequences as tuples. The `keep_*` methods do that, for
    objects a batch committed and for objects loaded from Postgres alike."""

    def __init__(self, shard_id: int, next_seq: int = 1) -> None:
        self.shard_id = shard_id
        self.next_seq = next_seq
        self.customers: dict[str, Customer] = {}
        self.customer_by_hash: dict[str, str] = {}
        self.applications: dict[str, Application] = {}
        # partner_id → partner_application_id → application_id (no tuple key per application)
        self.application_ids_by_ref: dict[str, dict[str, str]] = {}
        self.loans: dict[str, Loan] = {}
        self.reviews: dict[str, Review] = {}
        self.cases: dict[str, CollectionCase] = {}  # open collection cases only
        self.case_by_loan: dict[str, str] = {}  # loan → its open case
        self.contact_logs: dict[str, tuple[date, ...]] = {}  # customer → recent contacts
        self.eod_worklist: EodWorklist | None = None  # the running end of day's next loans

    def commit(self, diff: Diff) -> None:
        for customer in diff.customers.values():
            self.keep_customer(customer)
        for app in diff.applications.values():
            self.keep_application(app)
        for loan in diff.frozen_loans().values():
            self.keep_loan(loan)
        self.reviews.update(diff.reviews)
        for case in diff.cases.values():
            self.keep_case(case)
        self.contact_logs.update(diff.contact_logs)
        if diff.eod_worklist is not None:
            self.eod_worklist = diff.eod_worklist
        if diff.eod is not None and diff.eod.finished:
            self._forget_old_contacts(diff.eod.business_date)
            self.eod_worklist = None  # the list is long; nothing reads it until tomorrow
        self.next_seq = max(self.next_seq, diff.next_seq)

    def _forget_old_contacts(self, day: date) -> None:
        """Once a day, drop contact logs the limits no longer look at (as a reload would
        not read them), so memory holds only customers contacted in the last week."""
        oldest = day - timedelta(days=coll.WEEK_DAYS - 1)
        stale = [c for c, log in self.contact_logs.items() if log[-1] < oldest]
        for customer_id in stale:
            del self.contact_logs[customer_id]

    def keep_case(self, case: CollectionCase) -> None:
        """Memory holds open cases only; closed ones are read from Postgres."""
        if case.status == coll.CASE_OPEN:
            self.cases[case.case_id] = case
            self.case_by_loan[case.loan_id] = case.case_id
        else:
            self.cases.pop(case.case_id, None)
            if self.case_by_loan.get(case.loan_id) == case.case_id:
                del self.case_by_loan[case.loan_id]

    def loan(self, loan_id: str) -> Loan | None:
        """The loan, thawed: ready for the servicing code."""
        loan = self.loans.get(loan_id)
        return None if loan is None else thaw_loan(loan)

    def application_id_by_ref(self, partner_id: str, partner_application_id: str) -> str | None:
        return self.application_ids_by_ref.get(partner_id, {}).get(partner_application_id)

    def keep_customer(self, customer: Customer) -> None:
        """A customer a batch committed or the load read, compacted (see the class doc)."""
        kept = msgspec.structs.replace(
            customer,
            name_masked=sys.intern(customer.name_masked),  # "张*": a few hundred values
            partner_ids=shared_strings(customer.partner_ids),
            loan_ids=tuple(customer.loan_ids),
            created_on=shared_date(customer.created_on),
        )
        self.customers[kept.customer_id] = kept
        self.customer_by_hash[kept.id_hash] = kept.customer_id

    def keep_application(self, app: Application) -> None:
        """An application a batch committed or the load read, compacted, without its trace.
        Its customer is kept first (commit and load both keep customers first), so its ids
        can be the customer's objects."""
        customer = self.customers.get(app.customer_id)
        kept = msgspec.structs.replace(
            without_trace(app),
            partner_id=sys.intern(app.partner_id),
            customer_id=app.customer_id if customer is None else customer.customer_id,
            product_code=sys.intern(app.product_code),
            status=sys.intern(app.status),
            reasons=tuple(map(sys.intern, app.reasons)),
            annual_rate_bps=shared_rate(app.annual_rate_bps),
            apr_bps=shared_rate(app.apr_bps),
            expires_on=shared_date(app.expires_on),
            created_on=shared_date(app.created_on),
            merchant_id=None if app.merchant_id is None else sys.intern(app.merchant_id),
            purpose=sys.intern(app.purpose),
            loan_id=_same_id(app.loan_id, () if customer is None else customer.loan_ids),
        )
        self.applications[kept.application_id] = kept
        refs = self.application_ids_by_ref.setdefault(kept.partner_id, {})
        refs[kept.partner_application_id] = kept.application_id

    def keep_loan(self, loan: Loan) -> None:
        """A loan a batch committed (frozen by Diff.frozen_loans, or thawed)."""
        if loan.loan_id not in self.loans:  # booked: its values are new to memory
            loan = with_shared_values(loan)
        self.keep_loaded_loan(freeze_loan(loan))

    def keep_loaded_loan(self, frozen: Loan) -> None:
        """A frozen loan with shared values (lending.memory.loan_from_row, or keep_loan)."""
        if frozen.loan_id not in self.loans:
            frozen = self._with_shared_ids(frozen)
        self.loans[frozen.loan_id] = frozen

    def _with_shared_ids(self, loan: Loan) -> Loan:
        """The loan with the objects its application and customer already hold for the same
        values: the ids, and the principal (the approved amount)."""
        app = self.applications.get(loan.application_id)
        customer = self.customers.get(loan.customer_id)
        if app is None or customer is None:
            return loan
        return msgspec.structs.replace(
            loan,
            loan_id=app.loan_id if app.loan_id == loan.loan_id else loan.loan_id,
            application_id=app.application_id,
            customer_id=customer.customer_id,
            principal=(app.approved_amount if app.approved_amount == loan.principal
                       else loan.principal),
        )


def _same_id(value: str | None, known: Sequence[str]) -> str | None:
    """`value`, as the equal string object in `known` if there is one: an id decoded from
    several rows is one object in memory, not one per row (~70 bytes each)."""
    for candidate in known:
        if candidate == value:
            return candidate
    return value


class _Batch:
    """A working overlay of the state for one batch: reads see earlier writes of the batch."""

    def __init__(self, state: ShardState, prefetched: Prefetched, ctx: ApplyContext) -> None:
        self.state = state
        self.ctx = ctx
        self.prefetched = prefetched
        self.diff = Diff(next_seq=state.next_seq)
        self.new_refs: set[tuple[str, str, str]] = set()
        self.hash_overlay: dict[str, str] = {}
        self.ref_overlay: dict[tuple[str, str], str] = {}
        self.case_overlay: dict[str, str] = {}  # loan → case written by this batch

    def ref_taken(self, ref: tuple[str, str, str]) -> bool:
        return ref in self.prefetched.refs_taken or ref in self.new_refs

    def take_ref(self, ref: tuple[str, str, str], object_id: str) -> None:
        self.new_refs.add(ref)
        self.diff.partner_refs.append((*ref, object_id))

    def new_id(self, kind: str) -> str:
        seq = self.diff.next_seq
        self.diff.next_seq += 1
        return make_id(kind, self.state.shard_id, seq)

    def customer(self, customer_id: str) -> Customer | None:
        return self.diff.customers.get(customer_id) or self.state.customers.get(customer_id)

    def application(self, application_id: str) -> Application | None:
        return self.diff.applications.get(application_id) or self.state.applications.get(
            application_id
        )

    def put_customer(self, customer: Customer) -> None:
        self.diff.customers[customer.customer_id] = customer
        self.hash_overlay[customer.id_hash] = customer.customer_id

    def put_application(self, app: Application) -> None:
        self.diff.applications[app.application_id] = app
        self.ref_overlay[(app.partner_id, app.partner_application_id)] = app.application_id

    def customer_by_hash(self, id_hash: str) -> Customer | None:
        customer_id = self.hash_overlay.get(id_hash) or self.state.customer_by_hash.get(id_hash)
        return None if customer_id is None else self.customer(customer_id)

    def application_by_ref(self, partner_id: str, ref: str) -> Application | None:
        app_id = (self.ref_overlay.get((partner_id, ref))
                  or self.state.application_id_by_ref(partner_id, ref))
        return None if app_id is None else self.application(app_id)

    def loan(self, loan_id: str) -> Loan | None:
        return self.diff.loans.get(loan_id) or self.state.loan(loan_id)

    def review(self, application_id: str) -> Review | None:
        return self.diff.reviews.get(application_id) or self.state.reviews.get(application_id)

    def case(self, case_id: str) -> CollectionCase | None:
        written = self.diff.cases.get(case_id)
        if written is not None:
            return written if written.status == coll.CASE_OPEN else None
        return self.state.cases.get(case_id)

    def case_of_loan(self, loan_id: str) -> CollectionCase | None:
        case_id = self.case_overlay.get(loan_id) or self.state.case_by_loan.get(loan_id)
        return None if case_id is None else self.case(case_id)

    def put_case(self, change: coll.CaseChange) -> None:
        if change.case is not None:
            self.diff.cases[change.case.case_id] = change.case
            self.case_overlay[change.case.loan_id] = change.case.case_id
        self.diff.case_events.extend(change.events)

    def contact_log(self, customer_id: str) -> tuple[date, ...]:
        log = self.diff.contact_logs.get(customer_id)
        return log if log is not None else self.state.contact_logs.get(customer_id, ())

    def contact(self, record: ContactRecord) -> None:
        self.diff.contacts.append(record)
        self.diff.contact_logs[record.customer_id] = coll.with_contact(
            self.contact_log(record.customer_id), record.contact_on)

    def post(self, loan: Loan, cause: str, postings: Iterable[ledger.Posting]) -> Loan:
        """The loan's postings as journal entries of this batch, dated the business date: in
        the loan's book, or split over the books that fund it (lending.funding). Returns the
        loan with its funding's holdings after them: the version to keep."""
        if loan.funding is None:
            for posting in postings:
                self.entry(loan.book, loan.loan_id, cause, posting)
            return loan
        funding = loan.funding
        for posting in postings:
            funding, parts = split(funding, posting)
            for book, part in parts:
                self.entry(book, loan.loan_id, cause, part)
        return msgspec.structs.replace(loan, funding=funding)

    def entry(self, book: str, loan_id: str, cause: str, posting: ledger.Posting) -> None:
        self.diff.entries.append(ledger.make_entry(
            self.new_id("entry"), self.ctx.business_date, book, loan_id, cause, posting))

    def emit(self, partner_id: str, drafts: Callable[[], list[events.Draft]]) -> None:
        """The webhook events of a change (lending/events.py), for a partner with an endpoint
        only: for any other, nothing is built and no id drawn."""
        if partner_id not in self.ctx.webhook_partners:
            return
        for draft in drafts():
            self.diff.webhook_events.append(events.make_event(
                self.new_id("event"), partner_id, self.ctx.business_date, draft))

    def outstanding_principal(self, customer: Customer) -> int:
        total = 0
        for loan_id in customer.loan_ids:
            loan = self.loan(loan_id)
            if loan is not None:
                total += loan.outstanding_principal()
        return total


def apply_batch(
    state: ShardState, commands: list[Command], prefetched: Prefetched, ctx: ApplyContext
) -> tuple[list[Reply], Diff]:
    batch = _Batch(state, prefetched, ctx)
    replies = [_apply_one(batch, command) for command in commands]
    batch.diff.booked = frozenset(
        loan_id for loan_id in batch.diff.loans if loan_id not in state.loans)
    return replies, batch.diff


def _apply_one(batch: _Batch, command: Command) -> Reply:
    if isinstance(command, SubmitApplication | BookLoan | Repay):
        return _apply_write(batch, command)
    if isinstance(command, GetLoan):
        loan = batch.loan(command.loan_id)
        if loan is None or loan.partner_id != command.partner_id:
            return _not_found("loan", command.loan_id)
        return Reply(200, views.encode(views.loan_view(loan)))
    if isinstance(command, GetPayoff):
        return _get_payoff(batch, command)
    if isinstance(command, ReviewDecision):
        return _review_decision(batch, command)
    if isinstance(command, EodStep):
        return _eod_step(batch, command)
    if isinstance(command, SeedLoans):
        return _seed_loans(batch, command)
    if isinstance(command, CaseAction):
        return _case_action(batch, command)
    if isinstance(command, QuoteWithholding):
        loan = batch.loan(command.loan_id)
        if loan is None or loan.partner_id != command.partner_id:
            return _not_found("loan", command.loan_id)
        return Reply(200, views.encode(WithholdingQuote(
            command.loan_id, command.due_on, coll.withholding_due(loan, command.due_on))))
    if isinstance(command, GetApplication):
        app = batch.application(command.application_id)
        if app is None or app.partner_id != command.partner_id:
            return _not_found("application", command.application_id)
        return Reply(200, views.encode(_application_view(app)))
    if isinstance(command, GetCustomer):
        customer = batch.customer(command.customer_id)
        if customer is None or command.partner_id not in customer.partner_ids:
            return _not_found("customer", command.customer_id)
        return Reply(200, views.encode(_customer_view(batch, customer, command.partner_id)))
    raise TypeError(f"unknown command {type(command).__name__}")


def _not_found(kind: str, ident: str) -> Reply:
    # 404 and never 403: a partner must not learn that another partner's object exists.
    return error_reply(404, "not_found", f"no {kind} {ident}")


def _apply_write(batch: _Batch, command: SubmitApplication | BookLoan | Repay) -> Reply:
    key = (command.partner_id, command.idem_key)
    previous = batch.diff.idempotency.get(key) or batch.prefetched.idempotency.get(key)
    if previous is not None:
        if previous.request_hash != command.request_hash:
            return error_reply(
                409, "idempotency_key_reused", "this Idempotency-Key was used for another request"
            )
        return Reply(previous.status, previous.body, replayed=True)
    if isinstance(command, SubmitApplication):
        reply = _submit_application(batch, command)
    elif isinstance(command, BookLoan):
        reply = _book_loan(batch, command)
    else:
        reply = _repay(batch, command)
    if reply.status >= 500:
        return reply  # nothing happened: the key stays free for the partner's retry
    batch.diff.idempotency[key] = IdempotencyRecord(
        command.partner_id, command.idem_key, command.request_hash, reply.status, reply.body
    )
    return reply


def _submit_application(batch: _Batch, cmd: SubmitApplication) -> Reply:
    ref = (cmd.partner_id, REF_APPLICATION, cmd.partner_application_id)
    if batch.ref_taken(ref) or batch.application_by_ref(cmd.partner_id, ref[2]) is not None:
        return error_reply(
            409, "duplicate_application",
            f"partner_application_id {cmd.partner_application_id} was already submitted",
            "partner_application_id",
        )
    ctx = batch.ctx
    if ctx.risk is None:
        # The risk files on disk did not load when this host started (a broken edit left
        # behind): applications wait for a fix, repayments and reads go on.
        return error_reply(503, "unavailable",
                           "the risk rule sets are not loaded on this shard host; retry later")
    product = ctx.catalog.get(cmd.product_code)
    is_new = batch.customer_by_hash(cmd.customer.id_hash) is None
    customer = _find_or_create_customer(batch, cmd)
    loans = [loan for loan_id in customer.loan_ids if (loan := batch.loan(loan_id)) is not None]
    snapshot = CustomerSnapshot(
        is_new=is_new,
        outstanding_principal=batch.outstanding_principal(customer),
        credit_limit=customer.credit_limit,
        open_loans=sum(1 for loan in loans if loan.outstanding_principal() > 0),
    )
    outcome = decide(
        ctx.risk, product,
        ApplicationInput(cmd.amount, cmd.term, cmd.purpose, cmd.merchant_id is not None),
        cmd.customer, snapshot, cmd.screening, ctx.business_date,
        ctx.policy.apr_cap_bps, ctx.policy.offer_valid_days,
    )
    decision = outcome.decision
    if decision.status == APPROVED and decision.credit_limit is not None:
        customer = msgspec.structs.replace(customer, credit_limit=decision.credit_limit)
    batch.put_customer(customer)
    app = Application(
        application_id=batch.new_id("application"),
        partner_id=cmd.partner_id,
        partner_application_id=cmd.partner_application_id,
        customer_id=customer.customer_id,
        product_code=product.code,
        product_version=product.version,
        amount=cmd.amount,
        term=cmd.term,
        status=decision.status,
        reasons=decision.reasons,
        approved_amount=decision.approved_amount,
        annual_rate_bps=decision.annual_rate_bps,
        apr_bps=decision.apr_bps,
        credit_limit=decision.credit_limit,
        expires_on=decision.expires_on,
        created_on=ctx.business_date,
        merchant_id=cmd.merchant_id,
        purpose=cmd.purpose,
        device_id=cmd.device_id,
        ip=cmd.ip,
        trace=outcome.trace,
    )
    batch.put_application(app)
    batch.take_ref(ref, app.application_id)
    batch.emit(app.partner_id, lambda: events.application_decided(
        _application_view(app), events.BY_PIPELINE))
    return Reply(201, views.encode(_application_view(app)))


def _find_or_create_customer(batch: _Batch, cmd: SubmitApplication) -> Customer:
    facts = cmd.customer
    existing = batch.customer_by_hash(facts.id_hash)
    if existing is not None:
        if cmd.partner_id in existing.partner_ids:
            return existing
        partners = [*existing.partner_ids, cmd.partner_id]
        return msgspec.structs.replace(existing, partner_ids=partners)
    return Customer(
        customer_id=batch.new_id("customer"),
        id_hash=facts.id_hash,
        id_number_enc=facts.id_number_enc,
        name_enc=facts.name_enc,
        phone_enc=facts.phone_enc,
        id_number_masked=facts.id_number_masked,
        name_masked=facts.name_masked,
        phone_masked=facts.phone_masked,
        partner_ids=[cmd.partner_id],
        credit_limit=0,
        loan_ids=[],
        created_on=batch.ctx.business_date,
    )


def _book_loan(batch: _Batch, cmd: BookLoan) -> Reply:
    app = batch.application(cmd.application_id)
    if app is None or app.partner_id != cmd.partner_id:
        return _not_found("application", cmd.application_id)
    if app.loan_id is not None:
        return error_reply(409, "already_booked", f"application already booked as {app.loan_id}")
    if app.status != APPROVED:
        return error_reply(
            409, "invalid_state", f"application is {_partner_status(app.status)}, not approved"
        )
    ctx = batch.ctx
    assert app.expires_on is not None and app.approved_amount is not None
    if ctx.business_date > app.expires_on:
        return error_reply(409, "offer_expired", f"the offer expired on {app.expires_on}")
    customer = batch.customer(app.customer_id)
    assert customer is not None, "an application's customer lives in the same shard"
    available = customer.credit_limit - batch.outstanding_principal(customer)
    if app.approved_amount > available:
        return error_reply(
            422, "limit_exceeded",
            f"amount {app.approved_amount} exceeds the available limit {available}",
        )
    loan = _new_loan(batch, app)
    loan = batch.post(loan, loan.loan_id, [disbursement_posting(loan)])
    batch.diff.loans[loan.loan_id] = loan
    batch.emit(loan.partner_id, lambda: events.loan_disbursed(loan))
    batch.put_application(msgspec.structs.replace(app, loan_id=loan.loan_id))
    batch.put_customer(
        msgspec.structs.replace(customer, loan_ids=[*customer.loan_ids, loan.loan_id])
    )
    return Reply(201, views.encode(views.loan_view(loan)))


def _new_loan(batch: _Batch, app: Application, disbursed_on: date | None = None) -> Loan:
    """The loan of an approved application, disbursed today (a seed may back-date it)."""
    product = batch.ctx.catalog.get(app.product_code, app.product_version)
    assert app.approved_amount is not None and app.annual_rate_bps is not None
    assert app.apr_bps is not None
    disbursed_on = disbursed_on or batch.ctx.business_date
    schedule = build_schedule(
        product.repayment_method, app.approved_amount, app.annual_rate_bps, app.term,
        disbursed_on, product.schedule_fee_bps,
    )
    payee = (f"merchant:{app.merchant_id}" if product.payment_mode == "entrusted"
             else PAYEE_BORROWER)
    book, funding = funding_for(product, app.partner_id)
    return new_loan(
        loan_id=batch.new_id("loan"),
        application_id=app.application_id,
        customer_id=app.customer_id,
        partner_id=app.partner_id,
        product_code=product.code,
        product_version=product.version,
        book=book,
        annual_rate_bps=app.annual_rate_bps,
        apr_bps=app.apr_bps,
        repayment_method=product.repayment_method,
        allocation=product.allocation,
        prepayment_fee_bps=product.prepayment_fee_bps,
        disbursed_on=disbursed_on,
        payee=payee,
        term=app.term,
        schedule=schedule,
        monthly_fee_bps=product.schedule_fee_bps,
        penalty_rate_bps=product.penalty_base_rate_bps,
        penalty_multiplier_pct=product.penalty_multiplier_pct,
        grace_days=product.grace_days,
        compound_penalty=product.compound_penalty,
        funding=funding,
    )


def _repay(batch: _Batch, cmd: Repay) -> Reply:
    loan = batch.loan(cmd.loan_id)
    if loan is None or loan.partner_id != cmd.partner_id:
        return _not_found("loan", cmd.loan_id)
    ref = (cmd.partner_id, REF_REPAYMENT, cmd.external_ref)
    if batch.ref_taken(ref):
        return error_reply(
            409, "duplicate_external_ref",
            f"external_ref {cmd.external_ref} was already used", "external_ref",
        )
    if loan.status == LOAN_PAID_OFF:
        return error_reply(409, "invalid_state", f"loan {loan.loan_id} is paid off")
    business_date = batch.ctx.business_date
    try:
        result = apply_repayment(loan, cmd.kind, cmd.amount, business_date)
    except RepaymentRefused as refusal:
        field = "kind" if refusal.code == "kind_not_supported" else "amount"
        return error_reply(refusal.status, refusal.code, refusal.message, field)
    updated = result.loan
    # DPD and bucket move with the payment; so does the classification (a cured loan must
    # not show DPD 0 as special mention). Non-accrual and write-off change at end of day.
    updated.classification = batch.ctx.servicing.classify(updated.dpd)
    repayment_id = batch.new_id("repayment")
    updated = batch.post(updated, repayment_id, result.postings)
    allocation = result.allocation
    record = RepaymentRecord(
        repayment_id, loan.loan_id, cmd.partner_id, cmd.external_ref, cmd.kind, cmd.amount,
        business_date, allocation.penalty, allocation.fee, allocation.interest,
        allocation.principal,
    )
    batch.diff.loans[loan.loan_id] = updated
    batch.diff.repayments.append(record)
    batch.take_ref(ref, repayment_id)
    batch.emit(loan.partner_id, lambda: events.repayment_applied(
        record, cmd.source, result.prepayment_fee, updated))
    body = views.RepaymentView(
        repayment_id=repayment_id,
        loan_id=loan.loan_id,
        value_date=business_date,
        allocation=views.allocation_view(allocation),
        loan=views.loan_view(updated),
        amount=cmd.amount,
        external_ref=cmd.external_ref,
        kind=cmd.kind,
        prepayment_fee=result.prepayment_fee,
    )
    return Reply(201, views.encode(body))


def _get_payoff(batch: _Batch, cmd: GetPayoff) -> Reply:
    loan = batch.loan(cmd.loan_id)
    if loan is None or loan.partner_id != cmd.partner_id:
        return _not_found("loan", cmd.loan_id)
    if loan.status == LOAN_PAID_OFF:
        return error_reply(409, "invalid_state", f"loan {loan.loan_id} is paid off")
    quote = payoff_quote(loan, batch.ctx.business_date)
    return Reply(200, views.encode(views.payoff_view(quote)))


def _application_view(app: Application) -> views.ApplicationView:
    # Offer terms are the partner's only once approved: an application in review may hold
    # the offer a risk officer would confirm, but it is not an offer yet.
    offer = app.status == APPROVED
    decision = views.DecisionView(
        reasons=list(app.reasons),
        approved_amount=app.approved_amount if offer else None,
        annual_rate_bps=app.annual_rate_bps if offer else None,
        apr_bps=app.apr_bps if offer else None,
        term=app.term if offer and app.approved_amount is not None else None,
        credit_limit=app.credit_limit if offer else None,
        expires_on=app.expires_on if offer else None,
    )
    return views.ApplicationView(
        application_id=app.application_id,
        customer_id=app.customer_id,
        status=_partner_status(app.status),
        decision=decision,
        created_on=app.created_on,
        partner_application_id=app.partner_application_id,
        product_code=app.product_code,
        amount=app.amount,
        term=app.term,
        loan_id=app.loan_id,
    )


def _customer_view(batch: _Batch, customer: Customer, partner_id: str) -> views.CustomerView:
    """The customer as one partner sees it: only that partner's loans, and the shared limit
    only as what that partner can still use (views.partner_limit)."""
    loans = [loan for loan_id in customer.loan_ids if (loan := batch.loan(loan_id)) is not None]
    own = [loan for loan in loans if loan.partner_id == partner_id]
    credit_limit, available = views.partner_limit(
        customer.credit_limit,
        used=sum(loan.outstanding_principal() for loan in loans),
        used_by_partner=sum(loan.outstanding_principal() for loan in own),
    )
    return views.CustomerView(
        customer_id=customer.customer_id,
        name_masked=customer.name_masked,
        id_number_masked=customer.id_number_masked,
        phone_masked=customer.phone_masked,
        credit_limit=credit_limit,
        available_limit=available,
        loan_ids=[loan.loan_id for loan in own],
    )


# ---- manual review (人工审核) ----------------------------------------------------------------
# An application the decision sent to manual_review waits for a risk officer. Below the
# maker-checker amount, one decision is final. Above it, the first decision (the maker's) is
# a proposal: the application becomes awaiting_confirmation, and a DIFFERENT officer (the
# checker) either confirms it (the proposal becomes final, as proposed) or rejects it (the
# application returns to the queue as plain manual_review, proposal dropped). Every decision
# writes its audit row in the same commit. Partners see awaiting_confirmation as
# manual_review (API.md statuses are fixed).

AWAITING_CONFIRMATION = "awaiting_confirmation"
REVIEW_STATUSES = (MANUAL_REVIEW, AWAITING_CONFIRMATION)
STAGE_MAKER = "maker"
STAGE_CHECKER = "checker"
REVIEW_APPROVE = "approve"
REVIEW_DECLINE = "decline"
OUTCOME_PROPOSED = "proposed"
OUTCOME_REJECTED = "rejected"
AUDIT_MAKER_DECISION = "review.maker_decision"
AUDIT_CHECKER_DECISION = "review.checker_decision"


class ReviewResult(msgspec.Struct, frozen=True):
    """Answer to a review decision (operator API)."""

    application_id: str
    status: str  # the application's status now, unmasked (awaiting_confirmation shows)
    final: bool  # approved or declined for good
    step: ReviewStep  # the decision just taken
    proposal: ReviewStep | None  # the proposal awaiting a checker, if any
    decision: views.DecisionView  # reasons and offer as the partner now sees them


def audit_target(application_id: str) -> str:
    """audit_log.target of an application (migration 0004's naming: "kind:id")."""
    return f"application:{application_id}"


def _partner_status(status: str) -> str:
    return MANUAL_REVIEW if status == AWAITING_CONFIRMATION else status


def _review_decision(batch: _Batch, cmd: ReviewDecision) -> Reply:
    if cmd.decision not in (REVIEW_APPROVE, REVIEW_DECLINE):
        return error_reply(400, "invalid_request", "decision must be approve or decline",
                           "decision")
    app = batch.application(cmd.application_id)
    if app is None:
        return _not_found("application", cmd.application_id)
    if app.status not in REVIEW_STATUSES:
        return error_reply(409, "invalid_state", f"application is {app.status}, not in review")
    stage = STAGE_CHECKER if app.status == AWAITING_CONFIRMATION else STAGE_MAKER
    if cmd.stage != stage:
        return error_reply(
            409, "invalid_state",
            f"application is {app.status}: it needs a {stage} decision, not a {cmd.stage} one",
        )
    review = batch.review(app.application_id) or Review(app.application_id)
    proposal = review.proposal
    customer = batch.customer(app.customer_id)
    assert customer is not None, "an application's customer lives in the same shard"
    updated_customer = customer
    if stage == STAGE_CHECKER:
        assert proposal is not None, "an application awaiting confirmation has a proposal"
        if proposal.officer == cmd.officer:
            return error_reply(
                403, "maker_checker",
                f"{cmd.officer} proposed this decision: another officer must confirm it",
            )
    if stage == STAGE_CHECKER and proposal is not None and cmd.decision != proposal.decision:
        outcome, updated = OUTCOME_REJECTED, _with_status(app, MANUAL_REVIEW)
    elif stage == STAGE_MAKER and app.amount > cmd.maker_checker_over:
        outcome, updated = OUTCOME_PROPOSED, _with_status(app, AWAITING_CONFIRMATION)
    else:
        # Final: a confirmed proposal is final as proposed; otherwise this officer's decision.
        chosen = proposal if stage == STAGE_CHECKER else None
        decision = chosen.decision if chosen else cmd.decision
        reasons = chosen.reasons if chosen else cmd.reasons
        if decision == REVIEW_APPROVE:
            offer = _review_offer(batch, app, customer)
            if isinstance(offer, Reply):
                return offer
            updated, updated_customer = offer
        else:
            updated = msgspec.structs.replace(
                app, status=DECLINED, reasons=list(reasons), approved_amount=None,
                annual_rate_bps=None, apr_bps=None, credit_limit=None, expires_on=None,
            )
        outcome = updated.status
    step = ReviewStep(
        stage=stage, officer=cmd.officer, decision=cmd.decision, reasons=list(cmd.reasons),
        note=cmd.note, decided_on=batch.ctx.business_date, outcome=outcome,
    )
    new_proposal = step if outcome == OUTCOME_PROPOSED else None
    new_review = Review(app.application_id, new_proposal, [*review.steps, step])
    batch.diff.reviews[app.application_id] = new_review
    batch.put_application(updated)
    batch.emit(updated.partner_id, lambda: events.application_decided(
        _application_view(updated), events.BY_REVIEW))
    if updated_customer is not customer:
        batch.put_customer(updated_customer)
    after = _review_snapshot(updated, updated_customer, new_proposal)
    after["step"] = msgspec.to_builtins(step)
    batch.diff.audit.append(AuditRecord(
        actor=cmd.officer,
        action=AUDIT_CHECKER_DECISION if stage == STAGE_CHECKER else AUDIT_MAKER_DECISION,
        target=audit_target(app.application_id),
        before=_review_snapshot(app, customer, proposal),
        after=after,
    ))
    result = ReviewResult(
        application_id=app.application_id,
        status=updated.status,
        final=updated.status not in REVIEW_STATUSES,
        step=step,
        proposal=new_proposal,
        decision=_application_view(updated).decision,
    )
    return Reply(200, views.encode(result))


def _with_status(app: Application, status: str) -> Application:
    return msgspec.structs.replace(app, status=status)


def _review_offer(
    batch: _Batch, app: Application, customer: Customer
) -> Reply | tuple[Application, Customer]:
    """The offer of an approval by review: the terms the risk pipeline proposed for the
    case when it filled them (amount, rate, APR, limit), else the product's default rate,
    its APR, and a limit that at least covers the amount (the shard does not keep the
    applicant's income that the decision's limit formula needs). Expires like any offer."""
    ctx = batch.ctx
    product = ctx.catalog.get(app.product_code, app.product_version)
    amount = app.approved_amount if app.approved_amount is not None else app.amount
    rate = app.annual_rate_bps if app.annual_rate_bps is not None else product.default_rate_bps
    apr = app.apr_bps
    if apr is None or app.annual_rate_bps is None:
        schedule = build_schedule(
            product.repayment_method, amount, rate, app.term, ctx.business_date,
            product.schedule_fee_bps,
        )
        apr = apr_bps(amount, schedule_payments(schedule, app.term))
    outstanding = batch.outstanding_principal(customer)
    limit = app.credit_limit
    if limit is None:
        limit = max(customer.credit_limit, outstanding + amount)
    if amount > limit - outstanding:
        return error_reply(
            422, "limit_exceeded",
            f"amount {amount} exceeds the available limit {limit - outstanding}",
        )
    approved = msgspec.structs.replace(
        app, status=APPROVED, reasons=[], approved_amount=amount, annual_rate_bps=rate,
        apr_bps=apr, credit_limit=limit,
        expires_on=ctx.business_date + timedelta(days=ctx.policy.offer_valid_days),
    )
    return approved, msgspec.structs.replace(customer, credit_limit=limit)


def _review_snapshot(
    app: Application, customer: Customer, proposal: ReviewStep | None
) -> dict[str, Any]:
    """What an audit row shows before and after a review decision (JSON-ready)."""
    snapshot: dict[str, Any] = msgspec.to_builtins({
        "status": app.status,
        "reasons": app.reasons,
        "approved_amount": app.approved_amount,
        "annual_rate_bps": app.annual_rate_bps,
        "apr_bps": app.apr_bps,
        "credit_limit": app.credit_limit,
        "expires_on": app.expires_on,
        "customer_credit_limit": customer.credit_limit,
        "proposal": proposal,
    })
    return snapshot


# ---- end of day (日终批处理, DOMAIN.md §5) ----------------------------------------------------
# The orchestrator (cluster/eod.py) sends EodStep chunks until nothing remains. Each chunk
# closes loans in loan-id order with lending.daily.close_day and commits their new states,
# their journal entries and the shard's progress row in the shard's ONE fenced commit: a
# chunk is all or nothing, and `last_closed_on` is the checkpoint a resumed run skips by.

EOD_CAUSE_PREFIX = "EOD-"


def eod_cause(day: date) -> str:
    """journal_lines.cause of the entries end of day `day` writes."""
    return f"{EOD_CAUSE_PREFIX}{day.isoformat()}"


def _all_loans(batch: _Batch) -> Iterator[Loan]:
    """Every loan of the shard as this batch sees it (its own writes first), without copying
    the shard's dict."""
    written = batch.diff.loans
    for loan_id, loan in batch.state.loans.items():
        yield written.get(loan_id, loan)
    for loan_id, loan in written.items():
        if loan_id not in batch.state.loans:
            yield loan


def needs_close(loan: Loan, day: date) -> bool:
    """A loan end of day `day` still has to close."""
    return (
        loan.status != LOAN_PAID_OFF
        and loan.disbursed_on <= day
        and (loan.last_closed_on is None or loan.last_closed_on < day)
    )


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


# The run report's counters of one chunk, by EodProgress field name.
_TALLIED = (
    "accrued_interest", "accrued_penalty", "became_overdue", "non_accrual_started",
    "written_off", "guarantee_triggers", "cases_opened", "cases_closed", "cases_escalated",
    "promises_kept", "promises_broken", "reminders", "reminders_suppressed", "withholdings",
    "withholding_amount",
)


def _eod_step(batch: _Batch, cmd: EodStep) -> Reply:
    day = cmd.business_date
    if day != batch.ctx.business_date:
        return error_reply(
            409, "invalid_state",
            f"end of day {day} is not for this shard's business date {batch.ctx.business_date}",
            "business_date",
        )
    if cmd.max_loans < 1:
        return error_reply(400, "invalid_request", "max_loans must be >= 1", "max_loans")
    chunk, remaining = _next_chunk(batch, day, cmd.max_loans)
    cause = eod_cause(day)
    progress = batch.diff.eod or EodProgress(day)
    buckets: dict[str, int] = {}
    classes: dict[str, int] = {}
    tally = dict.fromkeys(_TALLIED, 0)
    reminders = coll.reminder_plan(batch.ctx.collections, day)
    for loan_id in chunk:
        loan = batch.loan(loan_id)
        assert loan is not None, "an open id was just read from the shard"
        closed = _close_loan(batch, loan, day, cause, reminders, tally)
        _count(buckets, closed.bucket)
        _count(classes, closed.classification)
    progress.processed += len(chunk)
    for name, value in tally.items():
        setattr(progress, name, getattr(progress, name) + value)
    progress.chunks += 1
    progress.remaining = remaining
    book_buckets: dict[str, int] | None = None
    book_classes: dict[str, int] | None = None
    if remaining == 0:
        book_buckets, book_classes = {}, {}
        for loan in _all_loans(batch):
            if loan.status != LOAN_PAID_OFF:
                _count(book_buckets, loan.bucket)
                _count(book_classes, loan.classification)
        progress.finished = True
        progress.buckets, progress.classifications = book_buckets, book_classes
    batch.diff.eod = progress
    body = EodStepResult(
        business_date=day, processed=len(chunk), remaining=remaining,
        accrued_interest=tally["accrued_interest"], accrued_penalty=tally["accrued_penalty"],
        became_overdue=tally["became_overdue"],
        non_accrual_started=tally["non_accrual_started"], written_off=tally["written_off"],
        buckets=buckets, classifications=classes,
        book_buckets=book_buckets, book_classifications=book_classes,
        guarantee_triggers=tally["guarantee_triggers"], cases_opened=tally["cases_opened"],
        cases_closed=tally["cases_closed"], reminders=tally["reminders"],
        withholdings=tally["withholdings"],
    )
    return Reply(200, views.encode(body))


def _next_chunk(batch: _Batch, day: date, max_loans: int) -> tuple[list[str], int]:
    """The next `max_loans` loans to close for `day`, in id order, and how many are left.

    The run's first chunk lists the shard's open loans once (one pass, one sort); later
    chunks take the next ids from that worklist (committed with the chunk, like its loans),
    so a run costs two passes over the shard, not one per chunk. A loan booked during the
    run is not in the list: when the list runs out, one more pass picks up such loans, and
    only a pass that finds nothing more reports 0 remaining."""
    work = batch.state.eod_worklist
    if work is None or work.business_date != day:
        work = _worklist(batch, day, frozenset())
    position = work.position
    chunk: list[str] = []
    while True:
        while len(chunk) < max_loans and position < len(work.loan_ids):
            loan_id = work.loan_ids[position]
            position += 1
            loan = batch.diff.loans.get(loan_id) or batch.state.loans[loan_id]
            if needs_close(loan, day):  # it may have been paid off since the list was made
                chunk.append(loan_id)
        if position < len(work.loan_ids):
            break
        late = _worklist(batch, day, frozenset(chunk))
        if not late.loan_ids:
            break
        work, position = late, 0
    batch.diff.eod_worklist = EodWorklist(day, work.loan_ids, position)
    return chunk, len(work.loan_ids) - position


def _worklist(batch: _Batch, day: date, taken: frozenset[str]) -> EodWorklist:
    """Every loan of the shard still to close for `day` (but `taken`), in id order."""
    return EodWorklist(day, sorted(
        loan.loan_id for loan in _all_loans(batch)
        if needs_close(loan, day) and loan.loan_id not in taken))


def _close_loan(
    batch: _Batch, loan: Loan, day: date, cause: str, reminders: coll.ReminderPlan | None,
    tally: dict[str, int],
) -> Loan:
    """DOMAIN.md §5 for one loan, in order: the day's servicing (close_day: accrual,
    overdue, penalty, DPD/bucket/classification, non-accrual, write-off), the guarantee
    hook, its collection case, and the next day's reminder and withholding."""
    result = close_day(loan, day, batch.ctx.servicing)
    closed = batch.post(result.loan, cause, result.postings)
    if closed.funding is not None and compensation_due(closed.funding, loan.dpd, closed.dpd):
        closed = _compensate(batch, closed, day, cause)
        tally["guarantee_triggers"] += 1
    batch.diff.loans[loan.loan_id] = closed
    batch.emit(loan.partner_id, lambda: events.day_closed(loan, closed))
    tally["accrued_interest"] += result.accrued_interest
    tally["accrued_penalty"] += result.accrued_penalty
    tally["became_overdue"] += result.became_overdue
    tally["non_accrual_started"] += int(closed.non_accrual and not loan.non_accrual)
    tally["written_off"] += int(closed.written_off_on is not None and loan.written_off_on is None)
    if batch.ctx.guarantee.trigger(loan, closed, day) is not None:
        tally["guarantee_triggers"] += 1
    case = _follow_case(batch, closed, day, tally)
    _plan_reminder(batch, closed, case, day, reminders, tally)
    _plan_withholding(batch, closed, day, tally)
    return closed


def _compensate(batch: _Batch, loan: Loan, day: date, cause: str) -> Loan:
    """代偿 (DOMAIN.md §7): the guarantor pays the funders what they hold of the loan and
    takes it over; the borrower's later repayments go to the guarantor's book."""
    assert loan.funding is not None
    funding, postings, _ = compensate(loan.funding, day)
    for book, posting in postings:
        batch.entry(book, loan.loan_id, cause, posting)
    return msgspec.structs.replace(loan, funding=funding)


def _follow_case(
    batch: _Batch, loan: Loan, day: date, tally: dict[str, int]
) -> CollectionCase | None:
    before = batch.case_of_loan(loan.loan_id)
    policy = batch.ctx.collections
    if before is None and not coll.opens_case(loan, policy):
        return None  # the common case: nothing to collect, no id drawn
    new_id = batch.new_id("case") if before is None else ""
    change = coll.follow_case(before, loan, day, policy, new_id)
    batch.put_case(change)
    for event in change.events:
        kind = event.kind
        tally["cases_opened"] += kind == coll.EV_OPENED
        tally["cases_closed"] += kind == coll.EV_CLOSED
        tally["cases_escalated"] += kind == coll.EV_BUCKET
        tally["promises_kept"] += kind == coll.EV_PROMISE_KEPT
        tally["promises_broken"] += kind == coll.EV_PROMISE_BROKEN
    case = change.case
    return case if case is not None and case.status == coll.CASE_OPEN else None


def _plan_reminder(
    batch: _Batch, loan: Loan, case: CollectionCase | None, day: date,
    plan: coll.ReminderPlan | None, tally: dict[str, int],
) -> None:
    reminder = coll.plan_reminder(loan, plan)
    if reminder is None:
        return
    log = batch.contact_log(loan.customer_id)
    if not coll.contact_allowed(log, reminder.send_on, batch.ctx.collections):
        tally["reminders_suppressed"] += 1
        return
    request = ConnectorRequest(
        request_id=batch.new_id("request"), kind=REQUEST_SMS, created_on=day,
        send_on=reminder.send_on, loan_id=loan.loan_id, customer_id=loan.customer_id,
        partner_id=loan.partner_id, amount=reminder.amount, template=reminder.template,
        case_id=None if case is None else case.case_id,
    )
    batch.diff.requests.append(request)
    batch.contact(ContactRecord(loan.customer_id, reminder.send_on, coll.REMINDER_CHANNEL,
                                coll.SYSTEM_ACTOR, request.case_id, request.request_id))
    if case is not None:
        batch.put_case(coll.CaseChange(case, (coll.CaseEvent(
            case.case_id, day, coll.EV_REMINDER, coll.SYSTEM_ACTOR,
            {"request_id": request.request_id, "template": reminder.template,
             "send_on": reminder.send_on.isoformat(), "period": reminder.period,
             "due_date": reminder.due_date.isoformat(), "amount": reminder.amount}),)))
    tally["reminders"] += 1


def _plan_withholding(batch: _Batch, loan: Loan, day: date, tally: dict[str, int]) -> None:
    amount = coll.plan_withholding(loan, day)
    if amount == 0:
        return
    batch.diff.requests.append(ConnectorRequest(
        request_id=batch.new_id("request"), kind=REQUEST_WITHHOLDING, created_on=day,
        send_on=day + timedelta(days=1), loan_id=loan.loan_id, customer_id=loan.customer_id,
        partner_id=loan.partner_id, amount=amount,
    ))
    tally["withholdings"] += 1
    tally["withholding_amount"] += amount


# ---- collections (贷后催收): what collectors do to a case ---------------------------------


class WithholdingQuote(msgspec.Struct, frozen=True):
    loan_id: str
    due_on: date
    amount: int


class CaseActionResult(msgspec.Struct, frozen=True):
    case: CollectionCase
    events: list[CaseEvent]


def case_audit_target(case_id: str) -> str:
    """audit_log.target of what operators do to a collection case."""
    return f"case:{case_id}"


def _case_action(batch: _Batch, cmd: CaseAction) -> Reply:
    case = batch.case(cmd.case_id)
    if case is None:
        # Closed cases are not in memory: they are history, nothing more can be done to them.
        return error_reply(404, "not_found", f"no open case {cmd.case_id}")
    mine = case.assignee == f"{coll.ASSIGNEE_COLLECTOR}:{cmd.actor}"
    if not (cmd.any_case or mine):
        return error_reply(403, "forbidden", f"case {cmd.case_id} is not assigned to you")
    day = batch.ctx.business_date
    try:
        change = _case_change(batch, case, cmd, day)
    except coll.CaseActionRefused as refused:
        return error_reply(refused.status, refused.code, refused.message, refused.field)
    batch.put_case(change)
    assert change.case is not None
    batch.diff.audit.append(AuditRecord(
        cmd.actor, f"collections.{cmd.action}", case_audit_target(case.case_id),
        msgspec.to_builtins(case), msgspec.to_builtins(change.case)))
    if cmd.action == "contact":
        batch.contact(ContactRecord(case.customer_id, day, cmd.channel, cmd.actor,
                                    case.case_id))
    return Reply(200, views.encode(CaseActionResult(change.case, list(change.events))))


def _case_change(
    batch: _Batch, case: CollectionCase, cmd: CaseAction, day: date
) -> coll.CaseChange:
    policy = batch.ctx.collections
    if cmd.action == "assign":
        return coll.assign(case, cmd.assignee, cmd.actor, day, policy, batch.ctx.collectors)
    if cmd.action == "note":
        return coll.add_note(case, cmd.text, cmd.actor, day)
    if cmd.action == "contact":
        if not coll.contact_allowed(batch.contact_log(case.customer_id), day, policy):
            raise coll.CaseActionRefused(
                422, "contact_limit_reached",
                f"the customer was contacted the most times allowed "
                f"({policy.max_contacts_per_day} a day, {policy.max_contacts_per_week} a week)")
        return coll.record_contact(case, cmd.channel, cmd.outcome, cmd.text, cmd.actor, day)
    if cmd.action == "promise":
        loan = batch.loan(case.loan_id)
        assert loan is not None, "an open case's loan is in its shard"
        if cmd.promised_on is None:
            raise coll.CaseActionRefused(422, "invalid_request", "promised_on is required",
                                         "promised_on")
        return coll.make_promise(case, loan, cmd.amount, cmd.promised_on, cmd.actor, day,
                                 policy)
    raise coll.CaseActionRefused(400, "invalid_request", f"unknown action {cmd.action!r}",
                                 "action")


# ---- seeding (`lendcore seed`, POST /ops/seed) -----------------------------------------------
# Bulk-creates realistic active loans for benchmarks and demos without N HTTP calls: the
# same rows a SubmitApplication + BookLoan pair writes (customer, approved application with
# its partner reference, loan, disbursement journal entry through `batch.post`), in the
# shard's one fenced commit. No personal data is invented: a seeded customer has NO
# ciphertext (empty bytes), masked fields that are visibly placeholders, and an id_hash
# derived from (shard, sequence) under a "lendcore-seed" label, which no keyed hash of a
# real ID number can equal.

SEED_PURPOSE = "seed"
SEED_MERCHANTS = 50
SEED_AMOUNT_STEP = 100000  # 1,000 CNY steps, so the APR of a (product, amount, term, rate)
SEED_AMOUNT_CAP = 3000000  # repeats and is computed once per command
SEED_RATE_STEP_BPS = 200
SEED_CURRENT_AGE_DAYS = 31  # disbursed 0..30 days ago, first due date still ahead
SEED_DELINQUENT_SHARE = 0.05  # disbursed 30..119 days ago and never repaid: M1–M3
SEED_DELINQUENT_AGE_DAYS = (30, 120)


class SeedResult(msgspec.Struct, frozen=True):
    shard_id: int
    loans: int
    sample_loan_ids: list[str]


def seed_id_hash(shard_id: int, seq: int) -> str:
    """The id_hash of a seeded customer: deterministic, and never a real applicant's."""
    return hashlib.sha256(f"lendcore-seed:{shard_id}:{seq}".encode()).hexdigest()


def _seed_terms(rng: random.Random, products: list[Product]) -> tuple[Product, int, int, int]:
    product = rng.choice(products)
    top = min(product.amount_max, SEED_AMOUNT_CAP)
    steps = max(0, (top - product.amount_min) // SEED_AMOUNT_STEP)
    amount = product.amount_min + SEED_AMOUNT_STEP * rng.randint(0, steps)
    term = rng.choice(product.terms)
    rates = range(product.rate_min_bps, product.rate_max_bps + 1, SEED_RATE_STEP_BPS)
    rate = rng.choice(rates) if len(rates) else product.default_rate_bps
    return product, amount, term, rate


def _seed_disbursed_on(rng: random.Random, day: date) -> date:
    """When a seeded loan was disbursed: most within the last month with their first due
    date still ahead (so due dates, reminders and withholdings spread over the month like a
    live book's), a few months back and never repaid (so collections has a delinquent book
    to work)."""
    if rng.random() < SEED_DELINQUENT_SHARE:
        return day - timedelta(days=rng.randrange(*SEED_DELINQUENT_AGE_DAYS))
    while True:  # due days are capped at the 28th: some ages put the first due date behind
        disbursed_on = day - timedelta(days=rng.randrange(SEED_CURRENT_AGE_DAYS))
        if due_dates(disbursed_on, 1)[0] > day:
            return disbursed_on


def _aged(batch: _Batch, loan: Loan) -> Loan:
    """A back-dated seeded loan brought to yesterday's close in one close_day: accrual and
    overdue transitions catch up exactly (they are cumulative); penalty is one day's (it
    accrues day by day), as for a book migrated in with its penalty not yet computed."""
    yesterday = batch.ctx.business_date - timedelta(days=1)
    if loan.disbursed_on > yesterday:
        return loan
    result = close_day(loan, yesterday, batch.ctx.servicing)
    return batch.post(result.loan, loan.loan_id, result.postings)


def _seed_loans(batch: _Batch, cmd: SeedLoans) -> Reply:
    ctx = batch.ctx
    if cmd.business_date != ctx.business_date:
        return error_reply(
            409, "invalid_state",
            f"seed for {cmd.business_date} is not for this shard's business date "
            f"{ctx.business_date}", "business_date",
        )
    if not 1 <= cmd.count <= SEED_MAX_PER_COMMAND:
        return error_reply(400, "invalid_request",
                           f"count must be in 1..{SEED_MAX_PER_COMMAND}", "count")
    products = sorted(
        (p for p in ctx.catalog.latest() if p.funding_model == "self"),
        key=lambda p: p.code,
    )
    if not products:
        return error_reply(422, "invalid_request", "no self-funded product to seed")
    day = ctx.business_date
    # Made-up benchmark loans, reproducible from the seed: no secret is drawn here.
    rng = random.Random(f"{cmd.seed}:{batch.state.shard_id}:{batch.diff.next_seq}")  # nosec B311
    aprs: dict[tuple[str, int, int, int], int] = {}
    sample: list[str] = []
    for _ in range(cmd.count):
        product, amount, term, rate = _seed_terms(rng, products)
        customer_seq = batch.diff.next_seq
        customer = Customer(
            customer_id=batch.new_id("customer"),
            id_hash=seed_id_hash(batch.state.shard_id, customer_seq),
            id_number_enc=b"", name_enc=b"", phone_enc=b"",
            id_number_masked="SEED**********0000", name_masked="测*",
            phone_masked="000****0000",
            partner_ids=[cmd.partner_id],
            credit_limit=amount,
            loan_ids=[],
            created_on=day,
        )
        key = (product.code, amount, term, rate)
        apr = aprs.get(key)
        if apr is None:
            schedule = build_schedule(product.repayment_method, amount, rate, term, day,
                                      product.monthly_fee_bps)
            apr = aprs[key] = apr_bps(amount, schedule_payments(schedule, term))
        app_id = batch.new_id("application")
        merchant = (f"SEED-M{rng.randrange(SEED_MERCHANTS):03d}"
                    if product.payment_mode == "entrusted" else None)
        app = Application(
            application_id=app_id, partner_id=cmd.partner_id,
            partner_application_id=f"SEED-{app_id}", customer_id=customer.customer_id,
            product_code=product.code, product_version=product.version,
            amount=amount, term=term, status=APPROVED, reasons=[],
            approved_amount=amount, annual_rate_bps=rate, apr_bps=apr, credit_limit=amount,
            expires_on=day + timedelta(days=ctx.policy.offer_valid_days), created_on=day,
            merchant_id=merchant, purpose=SEED_PURPOSE, device_id="", ip="",
        )
        loan = _new_loan(batch, app, _seed_disbursed_on(rng, day))
        loan = batch.post(loan, loan.loan_id, [disbursement_posting(loan)])
        batch.diff.loans[loan.loan_id] = _aged(batch, loan)
        batch.put_application(msgspec.structs.replace(app, loan_id=loan.loan_id))
        batch.put_customer(msgspec.structs.replace(customer, loan_ids=[loan.loan_id]))
        batch.take_ref((cmd.partner_id, REF_APPLICATION, app.partner_application_id), app_id)
        if len(sample) < 5:
            sample.append(loan.loan_id)
    return Reply(200, views.encode(SeedResult(batch.state.shard_id, cmd.count, sample)))
