"""Shared helpers of the risk tests: the dev risk book, applicants, screenings built the way
the gateway's simulators answer (API.md sandbox), and a one-call `decide`."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path
from typing import Any

from lending.commands import CustomerFacts
from lending.origination import (
    ApplicationInput,
    CustomerSnapshot,
    Origination,
    build_facts,
    decide,
    offer_facts,
)
from lending.products import Product, load_catalog
from lending.riskbook import RiskBook, load_risk_book
from lending.screening import (
    SOURCE_OK,
    SOURCE_UNAVAILABLE,
    SOURCES,
    BlacklistHits,
    Screening,
    SourceResult,
    Velocity,
)

ROOT = Path(__file__).resolve().parents[2]
RISK_DIR = ROOT / "config" / "risk"
BOOK = load_risk_book(RISK_DIR)
CATALOG = load_catalog(ROOT / "config" / "products", 2400)
BUSINESS_DATE = date(2026, 11, 29)
APR_CAP = 2400
OFFER_DAYS = 7
NEW_CUSTOMER = CustomerSnapshot(is_new=True, outstanding_principal=0, credit_limit=0,
                                open_loans=0)

# The simulators' documented ranges (inclusive), sequence < 900 and 900–999.
BENIGN_RANGES: dict[str, dict[str, tuple[int, int] | bool]] = {
    "credit_bureau": {"bad": False, "score": (600, 850), "overdue_accounts": (0, 0),
                      "debt_ratio_pct": (0, 40)},
    "baihang": {"multi_lending_90d": (0, 2)},
    "pengyuan": {"lawsuits": (0, 0)},
    "tongdun": {"fraud_score": (0, 30)},
    "baiqishi": {"risk_flag": False},
    "zhima": {"score": (600, 800)},
    "police_id": {"match": True},
    "face_match": {"similarity": (85, 99)},
    "esign": {"ok": True},
}
BAD_BUREAU: dict[str, tuple[int, int] | bool] = {
    "bad": True, "score": (300, 450), "overdue_accounts": (3, 9), "debt_ratio_pct": (70, 95),
}


def birth_for_age(age: int) -> date:
    """A birth date that makes `age` full years on BUSINESS_DATE (birthday today)."""
    return BUSINESS_DATE.replace(year=BUSINESS_DATE.year - age)


def applicant(
    *, age: int = 35, income: int = 1_200_000, sequence: int = 123, id_valid: bool = True,
    region: str = "330100", birth: date | None = None,
) -> CustomerFacts:
    return CustomerFacts(
        id_hash=f"hash-{sequence}-{age}", id_number_enc=b"enc", name_enc=b"enc",
        phone_enc=b"enc", id_number_masked="1101**********0017", name_masked="张*",
        phone_masked="138****8000", id_error=None if id_valid else "id_checksum",
        birth_date=birth if birth is not None else birth_for_age(age),
        id_sequence=sequence, monthly_income=income, region_code=region,
    )


def pick(spec: tuple[int, int] | bool, how: str, rng: random.Random) -> int | bool:
    """A value of a simulator range: its `low` end, `high` end, or `random`."""
    if isinstance(spec, bool):
        return spec
    low, high = spec
    return {"low": low, "high": high}.get(how, rng.randint(low, high))


def simulated_sources(
    sequence: int = 123, how: str = "random", seed: int = 0
) -> dict[str, SourceResult]:
    """What the simulators answer for an ID of this sequence: every source ok."""
    rng = random.Random(seed)
    sources = {}
    for name, ranges in BENIGN_RANGES.items():
        if name == "credit_bureau" and 900 <= sequence <= 999:
            ranges = BAD_BUREAU
        fields: dict[str, int | bool | str] = {
            field: pick(spec, how, rng) for field, spec in ranges.items()
        }
        sources[name] = SourceResult(SOURCE_OK, fields)
    return sources


def screening(
    sequence: int = 123, *, how: str = "random", seed: int = 0,
    velocity: Velocity | None = None, blacklist: BlacklistHits | None = None,
    unavailable: tuple[str, ...] = (), fields: dict[str, dict[str, Any]] | None = None,
) -> Screening:
    """A screening like the gateway's: simulated sources, some `unavailable`, some fields
    overridden (`fields={"tongdun": {"fraud_score": 90}}`)."""
    sources = simulated_sources(sequence, how, seed)
    for name, changes in (fields or {}).items():
        merged: dict[str, int | bool | str] = {**sources[name].fields, **changes}
        sources[name] = SourceResult(SOURCE_OK, merged)
    for name in unavailable:
        sources[name] = SourceResult(SOURCE_UNAVAILABLE, error="timeout")
    return Screening(velocity=velocity or Velocity(), blacklist=blacklist or BlacklistHits(),
                     sources=sources)


def product(code: str = "CASH_EI_12") -> Product:
    return CATALOG.get(code)


def run(
    *, book: RiskBook = BOOK, product_code: str = "CASH_EI_12", amount: int = 1_000_000,
    term: int = 12, purpose: str = "consumption", merchant: bool = False,
    person: CustomerFacts | None = None, customer: CustomerSnapshot = NEW_CUSTOMER,
    screened: Screening | None = None, apr_cap_bps: int = APR_CAP,
    catalog_product: Product | None = None,
) -> Origination:
    return decide(
        book, catalog_product or product(product_code),
        ApplicationInput(amount, term, purpose, merchant),
        person or applicant(), customer,
        screened if screened is not None else screening(), BUSINESS_DATE, apr_cap_bps,
        OFFER_DAYS,
    )


def base_facts(*, score: int = 700, screened: Screening | None = None) -> dict[str, Any]:
    """Facts of a benign screened applicant (every source ok), with score and offer."""
    facts = build_facts(
        product(), ApplicationInput(1_000_000, 12, "consumption", False), applicant(),
        NEW_CUSTOMER, screened if screened is not None else screening(how="low"),
        BUSINESS_DATE,
    )
    facts["score"] = score
    facts["offer"] = offer_facts(BOOK.pricing.tier_for(score), 1800, 6_000_000, 6_000_000)
    return facts


def unscreened_facts() -> dict[str, Any]:
    facts = base_facts(screened=Screening())
    assert not facts["screened"] and all(not facts[s]["available"] for s in SOURCES)
    return facts


def with_facts(facts: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy with dotted paths set: {"applicant.age": 21, "police_id": {...}}."""
    out = {key: dict(value) if isinstance(value, dict) else value
           for key, value in facts.items()}
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = out
        for step in parents:
            target = target[step]
        target[last] = value
    return out
