"""Commands a shard applies, and the replies it gives: the contract gateway ↔ shard actor.

A tagged union of Structs with one decoder (msgspec's asyncio-kv pattern). Commands carry no
clear-text personal data: the gateway hashes and encrypts it before it leaves the request.
"""

from __future__ import annotations

from datetime import date

import msgspec

from lending.screening import Screening


class CustomerFacts(msgspec.Struct, frozen=True):
    """What the shard may know about an applicant: keyed hash, ciphertexts, masks, facts."""

    id_hash: str
    id_number_enc: bytes
    name_enc: bytes
    phone_enc: bytes
    id_number_masked: str
    name_masked: str
    phone_masked: str
    id_error: str | None  # "id_checksum" when the check digit is wrong
    birth_date: date | None
    id_sequence: int
    monthly_income: int
    region_code: str


class SubmitApplication(msgspec.Struct, frozen=True, tag="submit_application"):
    partner_id: str
    idem_key: str
    request_hash: str
    partner_application_id: str
    product_code: str
    amount: int
    term: int
    customer: CustomerFacts
    device_id: str
    ip: str
    purpose: str
    merchant_id: str | None
    # What the gateway learned before the shard decides (velocity, blacklists, external
    # data); empty when it did not screen. See lending/screening.py.
    screening: Screening = Screening()


class BookLoan(msgspec.Struct, frozen=True, tag="book_loan"):
    partner_id: str
    idem_key: str
    request_hash: str
    application_id: str


class Repay(msgspec.Struct, frozen=True, tag="repay"):
    partner_id: str
    idem_key: str
    request_hash: str
    loan_id: str
    amount: int
    external_ref: str
    kind: str
    # Who asked: "partner" (the partner API) or "withholding" (end of day's 代扣 through
    # cluster/outbox.py); told to the partner in its repayment.applied webhook event.
    source: str = "partner"


class GetLoan(msgspec.Struct, frozen=True, tag="get_loan"):
    partner_id: str
    loan_id: str


class GetPayoff(msgspec.Struct, frozen=True, tag="get_payoff"):
    partner_id: str
    loan_id: str


class GetApplication(msgspec.Struct, frozen=True, tag="get_application"):
    partner_id: str
    application_id: str


class GetCustomer(msgspec.Struct, frozen=True, tag="get_customer"):
    partner_id: str
    customer_id: str


class ReviewDecision(msgspec.Struct, frozen=True, tag="review_decision"):
    """A risk officer's decision on an application in manual review (人工审核), sent by the
    operator gateway once it checked the officer's role and claim. No idempotency key: a
    retry of a decision already applied finds the application moved on (409 invalid_state).
    `stage` is what the officer saw: "maker" (first decision, application in manual_review)
    or "checker" (confirms or rejects a maker's proposal, awaiting_confirmation); the shard
    refuses a stage that no longer matches. `maker_checker_over`: amounts above it need a
    checker after the maker (config [review] maker_checker_amount_over)."""

    application_id: str
    officer: str
    decision: str  # "approve" | "decline"
    reasons: list[str]
    note: str
    stage: str
    maker_checker_over: int


class EodStep(msgspec.Struct, frozen=True, tag="eod_step"):
    """End of day `business_date` for up to `max_loans` of the shard's loans not yet closed
    for it (cluster/eod.py sends it until `remaining` is 0). No idempotency key: it is
    idempotent by construction (a loan remembers the last day it closed), so a retry after
    an unknown outcome closes only what is still open. Refused (409 invalid_state) unless
    `business_date` is the shard's current business date."""

    business_date: date
    max_loans: int


class CaseAction(msgspec.Struct, frozen=True, tag="case_action", omit_defaults=True):
    """A collector's or a team lead's action on a collection case (贷后催收), sent by the
    operator gateway after it checked the operator's role: `action` is "assign" (uses
    `assignee`), "note" (`text`), "contact" (`channel`, `outcome`, `text`) or "promise"
    (`amount`, `promised_on`). `any_case`: a team lead (role operator) may act on every
    case; a collector only on the cases assigned to them. No idempotency key: a retried
    assignment finds it done (409); a retried note or contact may be recorded twice."""

    case_id: str
    actor: str
    action: str
    any_case: bool = False
    assignee: str = ""
    text: str = ""
    channel: str = ""
    outcome: str = ""
    amount: int = 0
    promised_on: date | None = None


class QuoteWithholding(msgspec.Struct, frozen=True, tag="quote_withholding"):
    """What a withholding (代扣) for the installment due on `due_on` would collect now: read
    by cluster/outbox.py right before it asks the payment connector to debit it."""

    partner_id: str
    loan_id: str
    due_on: date


SEED_MAX_PER_COMMAND = 5000


class SeedLoans(msgspec.Struct, frozen=True, tag="seed_loans"):
    """An operator's bulk tool (`lendcore seed`, POST /ops/seed): the shard creates `count`
    (1..SEED_MAX_PER_COMMAND) customers, approved applications and booked, disbursed loans
    of its own for `partner_id`, varied over the catalog's products by `seed`, in ONE
    commit. No idempotency key: a retry after an unknown outcome may seed twice, which a
    seed tolerates. Refused (409 invalid_state) unless `business_date` is the shard's."""

    count: int
    seed: int
    business_date: date
    partner_id: str = "demo"


Command = (
    SubmitApplication | BookLoan | Repay | GetLoan | GetPayoff | GetApplication | GetCustomer
    | ReviewDecision | EodStep | SeedLoans | CaseAction | QuoteWithholding
)
WRITE_COMMANDS = (SubmitApplication, BookLoan, Repay)  # partner writes: idempotency-keyed
# operator writes: no idempotency key
OPS_WRITE_COMMANDS = (ReviewDecision, EodStep, SeedLoans, CaseAction)


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    shard_id: int
    command: Command


class Reply(msgspec.Struct, frozen=True, array_like=True):
    status: int
    body: bytes  # the exact response bytes; stored for idempotent replays
    replayed: bool = False
    code: str = ""  # the error code of an error reply, so callers never parse the body


BATCH_ENCODER = msgspec.msgpack.Encoder()
BATCH_DECODER = msgspec.msgpack.Decoder(list[Envelope])
REPLIES_DECODER = msgspec.msgpack.Decoder(list[Reply])


class ErrorDetail(msgspec.Struct, frozen=True):
    """API.md "Errors". `field` is always in the body, null when no one field is at fault,
    so that clients read one shape."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


_JSON = msgspec.json.Encoder()


def error_reply(status: int, code: str, message: str, field: str | None = None) -> Reply:
    return Reply(status, _JSON.encode(ErrorBody(ErrorDetail(code, message, field))), code=code)


def is_write(command: Command) -> bool:
    return isinstance(command, (*WRITE_COMMANDS, *OPS_WRITE_COMMANDS))

