"""The spine's interim credit decision, product-based. The risk issue replaces it with the
full 进件审批 pipeline (rules engine, anti-fraud, connectors, scorecard).

It already follows the sandbox conventions of API.md that need no cross-shard data: bad
check digit, age 22–55, income ≥ 1,000,000 fen, bureau-bad sequence digits 900–999, and
amounts over 5,000,000 fen to manual review. Velocity (device and IP seen in 24 h) needs
Redis and arrives with the anti-fraud issue.
"""

from __future__ import annotations

from datetime import date, timedelta

import msgspec

from lending.apr import apr_bps, schedule_payments
from lending.identity import age_on
from lending.products import Product
from lending.schedules import build_schedule

APPROVED = "approved"
DECLINED = "declined"
MANUAL_REVIEW = "manual_review"

BUREAU_BAD_SEQUENCES = range(900, 1000)


class RiskPolicy(msgspec.Struct, frozen=True):
    apr_cap_bps: int
    offer_valid_days: int
    review_amount_over: int
    income_min: int
    age_min: int
    age_max: int
    limit_income_multiple_pct: int
    limit_max: int


class Decision(msgspec.Struct, frozen=True):
    status: str
    reasons: list[str]
    approved_amount: int | None = None
    annual_rate_bps: int | None = None
    apr_bps: int | None = None
    term: int | None = None
    credit_limit: int | None = None
    expires_on: date | None = None


class Applicant(msgspec.Struct, frozen=True):
    id_error: str | None
    birth_date: date | None
    id_sequence: int
    monthly_income: int


def credit_limit_for(monthly_income: int, policy: RiskPolicy) -> int:
    """Limit = income × multiple, floored to 100 CNY, capped. 1,000,000 → 5,000,000 at 500%."""
    raw = monthly_income * policy.limit_income_multiple_pct // 100
    return min(policy.limit_max, raw // 10000 * 10000)


def decline_reasons(applicant: Applicant, business_date: date, policy: RiskPolicy) -> list[str]:
    if applicant.id_error is not None:
        return [applicant.id_error]
    reasons: list[str] = []
    assert applicant.birth_date is not None
    born_later = applicant.birth_date > business_date  # a future birth date: no age at all
    if born_later or not policy.age_min <= age_on(applicant.birth_date, business_date) <= (
        policy.age_max
    ):
        reasons.append("age_out_of_range")
    if applicant.id_sequence in BUREAU_BAD_SEQUENCES:
        reasons.append("bureau_bad")
    if applicant.monthly_income < policy.income_min:
        reasons.append("income_low")
    return reasons


def decide(
    product: Product,
    amount: int,
    term: int,
    applicant: Applicant,
    outstanding_principal: int,
    business_date: date,
    policy: RiskPolicy,
) -> Decision:
    """outstanding_principal: what the customer already owes on loans in this shard; the
    offer must fit in the limit computed here less that."""
    reasons = decline_reasons(applicant, business_date, policy)
    if reasons:
        return Decision(DECLINED, reasons)
    limit = credit_limit_for(applicant.monthly_income, policy)
    if amount > limit - outstanding_principal:
        return Decision(DECLINED, ["limit_exceeded"])
    rate = product.default_rate_bps
    schedule = build_schedule(
        product.repayment_method, amount, rate, term, business_date, product.monthly_fee_bps
    )
    apr = apr_bps(amount, schedule_payments(schedule, term))
    if apr > policy.apr_cap_bps:
        return Decision(DECLINED, ["apr_cap"])
    status = MANUAL_REVIEW if amount > policy.review_amount_over else APPROVED
    reasons = ["amount_review"] if status == MANUAL_REVIEW else []
    return Decision(
        status,
        reasons,
        approved_amount=amount,
        annual_rate_bps=rate,
        apr_bps=apr,
        term=term,
        credit_limit=limit,
        expires_on=business_date + timedelta(days=policy.offer_valid_days),
    )
