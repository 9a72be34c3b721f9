"""The state machine of one logical shard: customers, applications and loans.

`apply_batch` is pure: given the state, a batch of commands, the business date and the
durable facts prefetched for the batch (idempotency records, external refs already used), it
returns the replies and a Diff of rows to write. The caller commits the Diff in one
transaction and only then calls `commit` to update memory, so a failed commit leaves the
state exactly as it was (TigerBeetle's prefetch / commit split).
"""

from __future__ import annotations

from datetime import date

import msgspec

from lending import ledger, views
from lending.commands import (
    BookLoan,
    Command,
    GetApplication,
    GetCustomer,
    GetLoan,
    GetPayoff,
    Repay,
    Reply,
    SubmitApplication,
    error_reply,
)
from lending.daily import ServicingPolicy
from lending.decision import APPROVED, Applicant, RiskPolicy, decide
from lending.loans import (
    LOAN_PAID_OFF,
    Loan,
    RepaymentRefused,
    apply_repayment,
    disbursement_posting,
    new_loan,
    payoff_quote,
)
from lending.products import ProductCatalog
from lending.schedules import build_schedule

ID_PREFIXES = {
    "customer": "CU", "application": "AP", "loan": "LN", "repayment": "RP", "entry": "JE",
}
FUNDING_BOOKS = {"self": ledger.OWN_BOOK}


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


class Customer(msgspec.Struct):
    customer_id: str
    id_hash: str
    id_number_enc: bytes
    name_enc: bytes
    phone_enc: bytes
    id_number_masked: str
    name_masked: str
    phone_masked: str
    partner_ids: list[str]
    credit_limit: int
    loan_ids: list[str]
    created_on: date


class Application(msgspec.Struct):
    application_id: str
    partner_id: str
    partner_application_id: str
    customer_id: str
    product_code: str
    product_version: int
    amount: int
    term: int
    status: str
    reasons: list[str]
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

    def is_empty(self) -> bool:
        return not (
            self.customers or self.applications or self.loans or self.repayments
            or self.entries or self.idempotency or self.partner_refs
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


class ShardState:
    """Memory of one logical shard. Only `commit` changes it."""

    def __init__(self, shard_id: int, next_seq: int = 1) -> None:
        self.shard_id = shard_id
        self.next_seq = next_seq
        self.customers: dict[str, Customer] = {}
        self.customer_by_hash: dict[str, str] = {}
        self.applications: dict[str, Application] = {}
        self.application_by_ref: dict[tuple[str, str], str] = {}
        self.loans: dict[str, Loan] = {}

    def commit(self, diff: Diff) -> None:
        for customer in diff.customers.values():
            self.customers[customer.customer_id] = customer
            self.customer_by_hash[customer.id_hash] = customer.customer_id
        for app in diff.applications.values():
            self.applications[app.application_id] = app
            self.application_by_ref[(app.partner_id, app.partner_application_id)] = (
                app.application_id
            )
        self.loans.update(diff.loans)
        self.next_seq = max(self.next_seq, diff.next_seq)


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
        key = (partner_id, ref)
        app_id = self.ref_overlay.get(key) or self.state.application_by_ref.get(key)
        return None if app_id is None else self.application(app_id)

    def loan(self, loan_id: str) -> Loan | None:
        return self.diff.loans.get(loan_id) or self.state.loans.get(loan_id)

    def post(self, loan: Loan, cause: str, posting: ledger.Posting) -> None:
        """A journal entry of this batch, in the loan's book, dated the business date."""
        entry = ledger.make_entry(
            self.new_id("entry"), self.ctx.business_date, loan.book, loan.loan_id, cause,
            posting,
        )
        self.diff.entries.append(entry)

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
    if isinstance(command, GetApplication):
        app = batch.application(command.application_id)
        if app is None or app.partner_id != command.partner_id:
            return _not_found("application", command.application_id)
        return Reply(200, views.encode(_application_view(app)))
    if isinstance(command, GetCustomer):
        customer = batch.customer(command.customer_id)
        if customer is None or command.partner_id not in customer.partner_ids:
            return _not_found("customer", command.customer_id)
        return Reply(200, views.encode(_customer_view(batch, customer)))
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
    product = ctx.catalog.get(cmd.product_code)
    customer = _find_or_create_customer(batch, cmd)
    facts = cmd.customer
    applicant = Applicant(facts.id_error, facts.birth_date, facts.id_sequence, facts.monthly_income)
    decision = decide(
        product, cmd.amount, cmd.term, applicant,
        batch.outstanding_principal(customer), ctx.business_date, ctx.policy,
    )
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
    )
    batch.put_application(app)
    batch.take_ref(ref, app.application_id)
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
        return error_reply(409, "invalid_state", f"application is {app.status}, not approved")
    ctx = batch.ctx
    assert app.expires_on is not None and app.approved_amount is not None
    if ctx.business_date > app.expires_on:
        return error_reply(409, "offer_expired", f"the offer expired on {app.expires_on}")
    customer = batch.customer(app.customer_id)
    assert customer is not None, "an application's customer lives in the same shard"
    product = ctx.catalog.get(app.product_code, app.product_version)
    if product.funding_model not in FUNDING_BOOKS:
        return error_reply(
            422, "funding_model_not_supported",
            f"{product.code} is funded by {product.funding_model}; that model is not live yet",
        )
    available = customer.credit_limit - batch.outstanding_principal(customer)
    if app.approved_amount > available:
        return error_reply(
            422, "limit_exceeded",
            f"amount {app.approved_amount} exceeds the available limit {available}",
        )
    loan = _new_loan(batch, app)
    batch.post(loan, loan.loan_id, disbursement_posting(loan))
    batch.diff.loans[loan.loan_id] = loan
    batch.put_application(msgspec.structs.replace(app, loan_id=loan.loan_id))
    batch.put_customer(
        msgspec.structs.replace(customer, loan_ids=[*customer.loan_ids, loan.loan_id])
    )
    return Reply(201, views.encode(views.loan_view(loan)))


def _new_loan(batch: _Batch, app: Application) -> Loan:
    product = batch.ctx.catalog.get(app.product_code, app.product_version)
    assert app.approved_amount is not None and app.annual_rate_bps is not None
    assert app.apr_bps is not None
    disbursed_on = batch.ctx.business_date
    schedule = build_schedule(
        product.repayment_method, app.approved_amount, app.annual_rate_bps, app.term,
        disbursed_on, product.monthly_fee_bps,
    )
    payee = f"merchant:{app.merchant_id}" if product.payment_mode == "entrusted" else "borrower"
    return new_loan(
        loan_id=batch.new_id("loan"),
        application_id=app.application_id,
        customer_id=app.customer_id,
        partner_id=app.partner_id,
        product_code=product.code,
        product_version=product.version,
        book=FUNDING_BOOKS[product.funding_model],
        annual_rate_bps=app.annual_rate_bps,
        apr_bps=app.apr_bps,
        repayment_method=product.repayment_method,
        allocation=product.allocation,
        prepayment_fee_bps=product.prepayment_fee_bps,
        disbursed_on=disbursed_on,
        payee=payee,
        term=app.term,
        schedule=schedule,
        monthly_fee_bps=product.monthly_fee_bps,
        penalty_rate_bps=product.penalty_base_rate_bps,
        penalty_multiplier_pct=product.penalty_multiplier_pct,
        grace_days=product.grace_days,
        compound_penalty=product.compound_penalty,
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
    for posting in result.postings:
        batch.post(loan, repayment_id, posting)
    allocation = result.allocation
    record = RepaymentRecord(
        repayment_id, loan.loan_id, cmd.partner_id, cmd.external_ref, cmd.kind, cmd.amount,
        business_date, allocation.penalty, allocation.fee, allocation.interest,
        allocation.principal,
    )
    batch.diff.loans[loan.loan_id] = updated
    batch.diff.repayments.append(record)
    batch.take_ref(ref, repayment_id)
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
    decision = views.DecisionView(
        reasons=app.reasons,
        approved_amount=app.approved_amount,
        annual_rate_bps=app.annual_rate_bps,
        apr_bps=app.apr_bps,
        term=app.term if app.approved_amount is not None else None,
        credit_limit=app.credit_limit,
        expires_on=app.expires_on,
    )
    return views.ApplicationView(
        application_id=app.application_id,
        customer_id=app.customer_id,
        status=app.status,
        decision=decision,
        created_on=app.created_on,
        partner_application_id=app.partner_application_id,
        product_code=app.product_code,
        amount=app.amount,
        term=app.term,
        loan_id=app.loan_id,
    )


def _customer_view(batch: _Batch, customer: Customer) -> views.CustomerView:
    return views.CustomerView(
        customer_id=customer.customer_id,
        name_masked=customer.name_masked,
        id_number_masked=customer.id_number_masked,
        phone_masked=customer.phone_masked,
        credit_limit=customer.credit_limit,
        available_limit=max(0, customer.credit_limit - batch.outstanding_principal(customer)),
        loan_ids=list(customer.loan_ids),
    )
