"""Origination decision (进件审批) after the customer is identified. PURE: no IO, no clock.

Pipeline (DOMAIN.md §6): admission rules (准入) → anti-fraud rules (反欺诈) → scorecard
(评分卡) → decision rules (决策) → pricing and limit (定价与额度) → APR check → offer.
The rule sets, scorecard and pricing come from a `RiskBook` (config/risk); the external data,
velocity and blacklists come from the gateway inside the command (`lending.screening`), so
the same command always replays to the same decision.

Facts the rules read (CEL, see lending/rules.py), all integers in fen / bps / counts:
* `screened`: the gateway ran the external-data connectors (`screening.sources` is not
  empty). In production the gateway always screens; the dev rule set gates the
  "source unavailable → manual review" rules on it so that a command built without
  screening (tests, the spine before the connectors existed) is decided on what it has.
* `applicant`: age (full years on the business date; -1 when unknown: bad ID or a birth
  date after it), id_valid, id_sequence (ID characters 15–17), monthly_income, region_code.
* `application`: amount, term, product_code, purpose, has_merchant, amount_income_pct
  (amount × 100 // monthly income).
* `product`: amount_min, amount_max, rate_min_bps, rate_max_bps, loan_type.
* `customer`: is_new, outstanding_principal, credit_limit (before this decision), open_loans.
* `velocity.*` and `blacklist.*`: lending.screening.Velocity / BlacklistHits.
* one map per external source (`credit_bureau`, `baihang`, ...): `available` is true only
  when the source answered `ok`, and then its fields are there too (SOURCE_FIELDS lists
  those the dev rules use); a source that is unavailable or was not asked has only
  `available = false`, so rules read fields behind `<source>.available && ...`.
* decision rules only: `score` (the scorecard's) and `offer` (tier, annual_rate_bps,
  credit_limit, available_limit = credit_limit − outstanding principal, for this score).

Outcome: a decline anywhere stops the pipeline there (the trace says where); otherwise any
review hit makes a manual review (with the offer a risk officer would confirm), else an
approval. Reasons are stable codes in rule order, without duplicates: the decline reasons
of a declined application, the review reasons of a manual review, none for an approval.
The trace stores versions, every fired rule, the score and its breakdown, tier and limit,
and a summary of the facts WITHOUT personal data (no name, ID number, phone).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from lending.apr import apr_bps, schedule_payments
from lending.commands import CustomerFacts
from lending.decision import APPROVED, DECLINED, MANUAL_REVIEW, Decision
from lending.identity import age_on
from lending.pricing import Tier
from lending.products import Product
from lending.rules import DECLINE, PASS, REVIEW, SEVERITY, SetResult
from lending.schedules import build_schedule
from lending.scorecard import ScoreLine
from lending.screening import (
    BAIHANG,
    BAIQISHI,
    CREDIT_BUREAU,
    ESIGN,
    FACE_MATCH,
    PENGYUAN,
    POLICE_ID,
    SOURCE_OK,
    SOURCES,
    TONGDUN,
    ZHIMA,
    BlacklistHits,
    Screening,
    SourceResult,
    Velocity,
)

if TYPE_CHECKING:
    from lending.riskbook import RiskBook

ADMISSION = "admission"
ANTI_FRAUD = "anti_fraud"
SCORECARD = "scorecard"
DECISION = "decision"
PRICING = "pricing"
APR_CAP = "apr_cap"
NO_PRICE_TIER = "no_price_tier"
SOURCE_MISSING = "missing"  # the facts summary's status of a source that was not asked

# Fields of each external source, as the connectors return them (with example values).
SOURCE_FIELDS: dict[str, dict[str, int | bool | str]] = {
    CREDIT_BUREAU: {"bad": False, "score": 700, "overdue_accounts": 0, "debt_ratio_pct": 20},
    BAIHANG: {"multi_lending_90d": 0},
    PENGYUAN: {"lawsuits": 0},
    TONGDUN: {"fraud_score": 10},
    BAIQISHI: {"risk_flag": False},
    ZHIMA: {"score": 700},
    POLICE_ID: {"match": True},
    FACE_MATCH: {"similarity": 90},
    ESIGN: {"ok": True},
}
BASE_ROOTS = frozenset(
    ("screened", "applicant", "application", "product", "customer", "velocity", "blacklist",
     *SOURCES)
)
DECISION_ROOTS = BASE_ROOTS | {"score", "offer"}


class ApplicationInput(msgspec.Struct, frozen=True):
    amount: int
    term: int
    purpose: str
    has_merchant: bool


class CustomerSnapshot(msgspec.Struct, frozen=True):
    """The customer as the shard knows it before this decision."""

    is_new: bool
    outstanding_principal: int
    credit_limit: int
    open_loans: int


class FiredRule(msgspec.Struct, frozen=True, omit_defaults=True):
    stage: str
    rule_id: str
    action: str
    reason: str
    error: str = ""  # why a `rule_error` hit failed


class StageTrace(msgspec.Struct, frozen=True):
    stage: str
    version: int
    outcome: str         # pass, review or decline
    evaluated: int       # rules (or scorecard features) evaluated
    total: int           # rules (or features) in the stage
    stopped_early: bool  # a first_decline set stopped before its last rule


class FactsSummary(msgspec.Struct, frozen=True):
    """What the decision saw, minus personal data: no name, ID number or phone."""

    screened: bool
    age: int
    monthly_income: int
    region_code: str
    amount: int
    term: int
    product_code: str
    product_version: int
    purpose: str
    has_merchant: bool
    is_new_customer: bool
    outstanding_principal: int
    open_loans: int
    velocity: Velocity
    blacklist: BlacklistHits
    sources: dict[str, str]  # source → ok / unavailable / missing


class DecisionTrace(msgspec.Struct, frozen=True):
    status: str
    reasons: list[str]
    stopped_at: str | None   # the stage that declined; None when nothing declined
    versions: dict[str, int]
    fingerprint: str         # of the config/risk files that decided
    stages: list[StageTrace]
    fired: list[FiredRule]
    facts: FactsSummary
    score: int | None = None
    score_breakdown: list[ScoreLine] = msgspec.field(default_factory=list)
    tier: str | None = None
    annual_rate_bps: int | None = None
    credit_limit: int | None = None
    available_limit: int | None = None
    apr_bps: int | None = None


class Origination(msgspec.Struct, frozen=True):
    decision: Decision
    trace: DecisionTrace


# ---- facts ----------------------------------------------------------------------------------


def purpose_code(purpose: str) -> str:
    """The loan purpose as the rules compare it: partners send free text, and "Gambling",
    " gambling" or "gam\u200bbling" must not slip past a rule written for "gambling".
    NFKC (full-width letters), invisible format characters dropped, case folded, runs of
    spaces, hyphens and underscores made one underscore, ends trimmed."""
    text = unicodedata.normalize("NFKC", purpose)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").casefold()
    return _PURPOSE_SEPARATORS.sub("_", text).strip("_")


_PURPOSE_SEPARATORS = re.compile(r"[\s\-_]+")


def applicant_age(applicant: CustomerFacts, business_date: date) -> int:
    birth = applicant.birth_date
    if birth is None or birth > business_date:
        return -1
    return age_on(birth, business_date)


def source_facts(result: SourceResult | None) -> dict[str, Any]:
    if result is None or result.status != SOURCE_OK:
        return {"available": False}
    return {**result.fields, "available": True}


def build_facts(
    product: Product,
    application: ApplicationInput,
    applicant: CustomerFacts,
    customer: CustomerSnapshot,
    screening: Screening,
    business_date: date,
) -> dict[str, Any]:
    """The facts mapping the rules and the scorecard read (module docstring)."""
    income = applicant.monthly_income
    facts: dict[str, Any] = {
        "screened": bool(screening.sources),
        "applicant": {
            "age": applicant_age(applicant, business_date),
            "id_valid": applicant.id_error is None,
            "id_sequence": applicant.id_sequence,
            "monthly_income": income,
            "region_code": applicant.region_code,
        },
        "application": {
            "amount": application.amount,
            "term": application.term,
            "product_code": product.code,
            "purpose": purpose_code(application.purpose),
            "has_merchant": application.has_merchant,
            "amount_income_pct": application.amount * 100 // max(income, 1),
        },
        "product": {
            "amount_min": product.amount_min,
            "amount_max": product.amount_max,
            "rate_min_bps": product.rate_min_bps,
            "rate_max_bps": product.rate_max_bps,
            "loan_type": product.loan_type,
        },
        "customer": msgspec.structs.asdict(customer),
        "velocity": msgspec.structs.asdict(screening.velocity),
        "blacklist": msgspec.structs.asdict(screening.blacklist),
    }
    for source in SOURCES:
        facts[source] = source_facts(screening.sources.get(source))
    return facts


def offer_facts(tier: Tier | None, rate: int, limit: int, available: int) -> dict[str, Any]:
    return {
        "tier": "" if tier is None else tier.name,
        "annual_rate_bps": rate,
        "credit_limit": limit,
        "available_limit": available,
    }


SAMPLE_PRODUCT = Product(
    code="SAMPLE", version=1, name="sample", loan_type="cash",
    repayment_method="equal_installment", amount_min=100_000, amount_max=20_000_000,
    terms=(12,), rate_min_bps=1000, rate_max_bps=2400, default_rate_bps=1800,
)


def sample_facts(stage: str) -> list[dict[str, Any]]:
    """Complete facts mappings for a stage, to dry-run rules and scorecard paths at load:
    a benign applicant with every source answering, and the same with every boolean
    flipped and every number large (other branches of && and ||)."""
    applicant = CustomerFacts(
        id_hash="", id_number_enc=b"", name_enc=b"", phone_enc=b"", id_number_masked="",
        name_masked="", phone_masked="", id_error=None, birth_date=date(1990, 1, 1),
        id_sequence=123, monthly_income=1_200_000, region_code="330100",
    )
    screening = Screening(
        sources={name: SourceResult(SOURCE_OK, dict(fields))
                 for name, fields in SOURCE_FIELDS.items()},
    )
    facts = build_facts(
        SAMPLE_PRODUCT, ApplicationInput(1_000_000, 12, "consumption", False), applicant,
        CustomerSnapshot(True, 0, 0, 0), screening, date(2026, 1, 1),
    )
    if stage == DECISION:
        facts["score"] = 650
        facts["offer"] = offer_facts(None, 1800, 6_000_000, 6_000_000)
    return [facts, _stressed(facts)]


def _stressed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _stressed(item) for key, item in value.items()}
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 999_999_999
    return value


# ---- the decision ---------------------------------------------------------------------------


class _Run:
    """The trace being built as stages run."""

    def __init__(self, book: RiskBook, facts: FactsSummary) -> None:
        self.book = book
        self.facts = facts
        self.stages: list[StageTrace] = []
        self.fired: list[FiredRule] = []
        self.score: int | None = None
        self.breakdown: list[ScoreLine] = []
        self.tier: Tier | None = None
        self.rate: int | None = None
        self.limit: int | None = None
        self.available: int | None = None
        self.apr: int | None = None

    def add_rules(self, stage: str, result: SetResult, total: int) -> None:
        self.stages.append(StageTrace(stage, result.version, result.outcome, result.evaluated,
                                      total, result.stopped_early))
        self.fired.extend(FiredRule(stage, h.rule_id, h.action, h.reason, h.error)
                          for h in result.hits)

    def add_stage(self, stage: str, version: int, outcome: str, evaluated: int) -> None:
        self.stages.append(StageTrace(stage, version, outcome, evaluated, evaluated, False))

    def reasons(self, action: str) -> list[str]:
        return list(dict.fromkeys(f.reason for f in self.fired if f.action == action))

    def finish(self, decision: Decision, stopped_at: str | None) -> Origination:
        trace = DecisionTrace(
            status=decision.status,
            reasons=list(decision.reasons),
            stopped_at=stopped_at,
            versions=dict(self.book.versions),
            fingerprint=self.book.fingerprint,
            stages=self.stages,
            fired=self.fired,
            facts=self.facts,
            score=self.score,
            score_breakdown=self.breakdown,
            tier=None if self.tier is None else self.tier.name,
            annual_rate_bps=self.rate,
            credit_limit=self.limit,
            available_limit=self.available,
            apr_bps=self.apr,
        )
        return Origination(decision, trace)

    def declined(self, stage: str, extra: tuple[str, ...] = ()) -> Origination:
        reasons = list(dict.fromkeys([*self.reasons(DECLINE), *extra]))
        return self.finish(Decision(DECLINED, reasons), stage)


def decide(
    book: RiskBook,
    product: Product,
    application: ApplicationInput,
    applicant: CustomerFacts,
    customer: CustomerSnapshot,
    screening: Screening,
    business_date: date,
    apr_cap_bps: int,
    offer_valid_days: int,
) -> Origination:
    """Decide one application (module docstring): the decision and its trace."""
    facts = build_facts(product, application, applicant, customer, screening, business_date)
    run = _Run(book, summarize(facts, product, screening))
    context = book.context(facts)
    for stage, rule_set in ((ADMISSION, book.admission), (ANTI_FRAUD, book.anti_fraud)):
        result = rule_set.evaluate(context)
        run.add_rules(stage, result, len(rule_set.rules))
        if result.outcome == DECLINE:
            return run.declined(stage)

    scored = book.scorecard.score(facts)
    run.score, run.breakdown = scored.score, scored.breakdown
    run.add_stage(SCORECARD, book.scorecard.version, PASS, len(scored.breakdown))
    pricing = book.pricing
    run.tier = tier = pricing.tier_for(scored.score)
    rate = 0 if tier is None else pricing.rate_for(tier, product)
    limit = 0 if tier is None else pricing.credit_limit(tier, applicant.monthly_income)
    available = max(0, limit - customer.outstanding_principal)
    if tier is not None:
        run.rate, run.limit, run.available = rate, limit, available
    offer = offer_facts(tier, rate, limit, available)
    result = book.decision.evaluate(book.context({**facts, "score": scored.score,
                                                  "offer": offer}))
    run.add_rules(DECISION, result, len(book.decision.rules))
    if result.outcome == DECLINE:
        return run.declined(DECISION)

    if tier is None:
        # The decision rules let through a score no tier prices: it cannot get an offer.
        run.add_stage(PRICING, pricing.version, DECLINE, 0)
        return run.declined(PRICING, (NO_PRICE_TIER,))
    schedule = build_schedule(product.repayment_method, application.amount, rate,
                              application.term, business_date, product.schedule_fee_bps)
    run.apr = apr = apr_bps(application.amount, schedule_payments(schedule, application.term))
    if apr > apr_cap_bps:
        run.add_stage(PRICING, pricing.version, DECLINE, 1)
        return run.declined(PRICING, (APR_CAP,))
    run.add_stage(PRICING, pricing.version, PASS, 1)

    worst = max((SEVERITY[f.action] for f in run.fired), default=SEVERITY[PASS])
    review = worst >= SEVERITY[REVIEW]
    decision = Decision(
        MANUAL_REVIEW if review else APPROVED,
        run.reasons(REVIEW) if review else [],
        approved_amount=application.amount,
        annual_rate_bps=rate,
        apr_bps=apr,
        term=application.term,
        credit_limit=limit,
        expires_on=business_date + timedelta(days=offer_valid_days),
    )
    return run.finish(decision, None)


def summarize(facts: Mapping[str, Any], product: Product, screening: Screening) -> FactsSummary:
    applicant, application, customer = facts["applicant"], facts["application"], facts["customer"]
    sources = {
        name: (screening.sources[name].status if name in screening.sources else SOURCE_MISSING)
        for name in SOURCES
    }
    return FactsSummary(
        screened=facts["screened"],
        age=applicant["age"],
        monthly_income=applicant["monthly_income"],
        region_code=applicant["region_code"],
        amount=application["amount"],
        term=application["term"],
        product_code=product.code,
        product_version=product.version,
        purpose=application["purpose"],
        has_merchant=application["has_merchant"],
        is_new_customer=customer["is_new"],
        outstanding_principal=customer["outstanding_principal"],
        open_loans=customer["open_loans"],
        velocity=screening.velocity,
        blacklist=screening.blacklist,
        sources=sources,
    )
