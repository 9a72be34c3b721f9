"""Request bodies of the partner API: strict msgspec Structs (unknown fields → 400)."""

from __future__ import annotations

from typing import Annotated

import msgspec

Fen = Annotated[int, msgspec.Meta(ge=1, le=10**12)]
Text64 = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text128 = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
ObjectId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
BATCH_ITEMS_MAX = 1000


class ApplicantIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Text64
    id_number: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    monthly_income: Annotated[int, msgspec.Meta(ge=0, le=10**12)]
    region_code: Annotated[str, msgspec.Meta(pattern=r"^\d{6}$")]


class DeviceIn(msgspec.Struct, forbid_unknown_fields=True):
    device_id: Text128
    ip: Annotated[str, msgspec.Meta(min_length=2, max_length=45)]


class ApplicationIn(msgspec.Struct, forbid_unknown_fields=True):
    partner_application_id: Ref
    product_code: Text64
    amount: Fen
    term: Annotated[int, msgspec.Meta(ge=1, le=360)]
    applicant: ApplicantIn
    device: DeviceIn
    purpose: Text64
    merchant_id: Text64 | None = None


class BookLoanIn(msgspec.Struct, forbid_unknown_fields=True):
    application_id: ObjectId


class RepaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    amount: Fen
    external_ref: Ref
    kind: str = "regular"


class BatchRepaymentItemIn(msgspec.Struct, forbid_unknown_fields=True):
    loan_id: ObjectId
    amount: Fen
    external_ref: Ref
    kind: str = "regular"


class BatchRepaymentsIn(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=BATCH_ITEMS_MAX)]
