"""Decision statuses, the decision record, and the company-level policy around offers.

The credit decision itself is lending/origination.py (the 进件审批 pipeline over the rule
sets, scorecard and pricing of config/risk). What stays here is what is not a risk
analyst's to change: the APR cap (a regulatory ceiling) and how long an offer is valid.
Every credit threshold (income, age, review amount, limit formula) lives in config/risk.
"""

from __future__ import annotations

from datetime import date

import msgspec

APPROVED = "approved"
DECLINED = "declined"
MANUAL_REVIEW = "manual_review"


class RiskPolicy(msgspec.Struct, frozen=True):
    apr_cap_bps: int       # regulatory ceiling on any offer's APR
    offer_valid_days: int  # an approval can be booked until created_on + this


class Decision(msgspec.Struct, frozen=True):
    status: str
    reasons: list[str]
    approved_amount: int | None = None
    annual_rate_bps: int | None = None
    apr_bps: int | None = None
    term: int | None = None
    credit_limit: int | None = None
    expires_on: date | None = None
