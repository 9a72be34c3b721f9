"""Risk-based pricing and limit (风险定价与授信额度), from config/risk/pricing.toml.

A tier is a score band: the tier of a score is the one with the highest `min_score` not above
it (no tier below the lowest band: such an applicant cannot be priced). The tier gives:
* the annual rate, clamped into the product's range [rate_min_bps, rate_max_bps] (a
  product without interest, such as installment_fee, therefore always prices at 0);
* the credit limit: monthly_income × limit_income_multiple_pct / 100, floored to
  `limit_round_fen` (10,000 fen = 100 CNY) and capped at `limit_max`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from lending.products import Product
from lending.rules import RiskConfigError, convert_strict, read_toml

_MAX_RATE_BPS = 10_000
_MAX_MULTIPLE_PCT = 10_000


class TierSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    min_score: int
    annual_rate_bps: int
    limit_income_multiple_pct: int
    description: str = ""


class PricingSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    version: int
    limit_round_fen: int
    limit_max: int
    tiers: list[TierSpec]
    description: str = ""


@dataclass(frozen=True)
class Tier:
    name: str
    min_score: int
    annual_rate_bps: int
    limit_income_multiple_pct: int


@dataclass(frozen=True)
class Pricing:
    name: str
    version: int
    limit_round_fen: int
    limit_max: int
    tiers: tuple[Tier, ...]  # highest min_score first

    def tier_for(self, score: int) -> Tier | None:
        return next((tier for tier in self.tiers if score >= tier.min_score), None)

    @staticmethod
    def rate_for(tier: Tier, product: Product) -> int:
        return min(product.rate_max_bps, max(product.rate_min_bps, tier.annual_rate_bps))

    def credit_limit(self, tier: Tier, monthly_income: int) -> int:
        raw = max(0, monthly_income) * tier.limit_income_multiple_pct // 100
        return min(self.limit_max, raw // self.limit_round_fen * self.limit_round_fen)


def parse_pricing(text: str, path: Path) -> Pricing:
    raw, lines = read_toml(text, path)
    spec = convert_strict(raw, PricingSpec, path, lines)
    problems = [f"{path}:{lines.line(where)}: {message}" for where, message in _problems(spec)]
    if problems:
        raise RiskConfigError(problems)
    tiers = sorted(
        (Tier(t.name, t.min_score, t.annual_rate_bps, t.limit_income_multiple_pct)
         for t in spec.tiers),
        key=lambda tier: -tier.min_score,
    )
    return Pricing(spec.name, spec.version, spec.limit_round_fen, spec.limit_max, tuple(tiers))


def load_pricing(path: Path) -> Pricing:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RiskConfigError([f"{path}:1: cannot read: {exc}"]) from exc
    return parse_pricing(text, path)


def _problems(spec: PricingSpec) -> Iterable[tuple[str, str]]:
    if spec.name != "pricing":
        yield "$.name", f"name must be 'pricing', got {spec.name!r}"
    if spec.version < 1:
        yield "$.version", f"version must be >= 1, got {spec.version}"
    if spec.limit_round_fen < 1:
        yield "$.limit_round_fen", f"limit_round_fen must be >= 1, got {spec.limit_round_fen}"
    if spec.limit_max < 0:
        yield "$.limit_max", f"limit_max must be >= 0 fen, got {spec.limit_max}"
    if not spec.tiers:
        yield "$", "pricing needs at least one [[tiers]]"
    names: set[str] = set()
    scores: set[int] = set()
    for index, tier in enumerate(spec.tiers):
        where = f"$.tiers[{index}]"
        if not tier.name.strip() or tier.name in names:
            yield f"{where}.name", f"tier name must be unique and not empty, got {tier.name!r}"
        names.add(tier.name)
        if tier.min_score in scores:
            yield f"{where}.min_score", f"two tiers start at score {tier.min_score}"
        scores.add(tier.min_score)
        if not 0 <= tier.annual_rate_bps <= _MAX_RATE_BPS:
            yield f"{where}.annual_rate_bps", (f"annual_rate_bps must be in 0..{_MAX_RATE_BPS}, "
                                               f"got {tier.annual_rate_bps}")
        if not 0 <= tier.limit_income_multiple_pct <= _MAX_MULTIPLE_PCT:
            yield f"{where}.limit_income_multiple_pct", (
                f"limit_income_multiple_pct must be in 0..{_MAX_MULTIPLE_PCT}, "
                f"got {tier.limit_income_multiple_pct}")
