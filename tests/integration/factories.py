"""Request bodies for the integration tests."""

from __future__ import annotations

import itertools
import uuid
from datetime import date
from typing import Any

from lending.identity import make_id_number

_sequence = itertools.count(100)


def id_number(birth: date = date(1990, 3, 7), sequence: int | None = None) -> str:
    """A valid ID; sequences cycle through 100..899 (900–999 means a bad credit file)."""
    seq = next(_sequence) % 800 + 100 if sequence is None else sequence
    return make_id_number("110105", birth, seq)


def application(
    *, amount: int = 1_000_000, term: int = 12, product: str = "CASH_EI_12",
    income: int = 1_200_000, id_no: str | None = None, phone: str = "13800138000",
    merchant_id: str | None = None, **overrides: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "partner_application_id": f"A-{uuid.uuid4().hex[:12]}",
        "product_code": product,
        "amount": amount,
        "term": term,
        "applicant": {
            "name": "张三", "id_number": id_no or id_number(), "phone": phone,
            "monthly_income": income, "region_code": "330100",
        },
        "device": {"device_id": f"d-{uuid.uuid4().hex[:8]}", "ip": "10.1.2.3"},
        "purpose": "consumption",
        "merchant_id": merchant_id,
    }
    body.update(overrides)
    return body
