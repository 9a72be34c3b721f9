"""Commands a shard applies, and the replies it gives: the contract gateway ↔ shard actor.

A tagged union of Structs with one decoder (msgspec's asyncio-kv pattern). Commands carry no
clear-text personal data: the gateway hashes and encrypts it before it leaves the request.
"""

from __future__ import annotations

from datetime import date

import msgspec


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


Command = SubmitApplication | BookLoan | Repay | GetLoan | GetPayoff | GetApplication | GetCustomer
WRITE_COMMANDS = (SubmitApplication, BookLoan, Repay)


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


class ErrorDetail(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


_JSON = msgspec.json.Encoder()


def error_reply(status: int, code: str, message: str, field: str | None = None) -> Reply:
    return Reply(status, _JSON.encode(ErrorBody(ErrorDetail(code, message, field))), code=code)


def is_write(command: Command) -> bool:
    return isinstance(command, WRITE_COMMANDS)

