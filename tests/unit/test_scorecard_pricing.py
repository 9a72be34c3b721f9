"""Scorecard (score = offset + factor·ln(odds)) and risk-based pricing and limit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from risk_factory import BENIGN_RANGES, BOOK, product

from lending.pricing import Pricing, parse_pricing
from lending.rules import RiskConfigError
from lending.scorecard import Feature, Scorecard, parse_scorecard

CARD_PATH = Path("risk/scorecard.toml")
PRICING_PATH = Path("risk/pricing.toml")

CARD = """
name = "scorecard"
version = 3
pdo = 20.0
base_score = 600.0
base_odds = 50.0
intercept = 2.0

[[features]]
name = "bureau"
fact = "bureau.score"
missing_log_odds = -0.25
[[features.bins]]
max = 600
log_odds = -1.0
[[features.bins]]
min = 600
max = 700
log_odds = 0.5
[[features.bins]]
min = 700
log_odds = 1

[[features]]
name = "age"
fact = "applicant.age"
missing_log_odds = 0.0
[[features.bins]]
max = 30
log_odds = -0.3
[[features.bins]]
min = 30
log_odds = 0.2
"""


def card() -> Scorecard:
    return parse_scorecard(CARD, CARD_PATH)


def expected_score(ln_odds: float, pdo: float = 20, base: float = 600, odds: float = 50) -> int:
    factor = pdo / math.log(2)
    offset = base - factor * math.log(odds)
    return math.floor(offset + factor * ln_odds + 0.5)


# ---- scorecard --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "ln_odds", "bins"),
    [
        ({"bureau": {"score": 650}, "applicant": {"age": 35}}, 2.0 + 0.5 + 0.2,
         ["[600, 700)", "[30, +inf)"]),
        ({"bureau": {"score": 599}, "applicant": {"age": 29}}, 2.0 - 1.0 - 0.3,
         ["[-inf, 600)", "[-inf, 30)"]),
        ({"bureau": {"score": 700}, "applicant": {"age": 30}}, 2.0 + 1.0 + 0.2,
         ["[700, +inf)", "[30, +inf)"]),
        ({"bureau": {"available": False}, "applicant": {"age": 30}}, 2.0 - 0.25 + 0.2,
         ["missing", "[30, +inf)"]),
        ({"applicant": {"age": 30}}, 2.0 - 0.25 + 0.2, ["missing", "[30, +inf)"]),
        ({"bureau": {"score": True}, "applicant": {"age": 30}}, 2.0 - 0.25 + 0.2,
         ["invalid", "[30, +inf)"]),
    ],
)
def test_score_is_offset_plus_factor_times_ln_odds(
    facts: dict[str, Any], ln_odds: float, bins: list[str]
) -> None:
    result = card().score(facts)
    assert result.score == expected_score(ln_odds)
    assert result.ln_odds == pytest.approx(ln_odds)
    assert [line.bin for line in result.breakdown] == bins
    factor = 20 / math.log(2)
    for line in result.breakdown:
        assert line.points == pytest.approx(factor * line.log_odds, abs=0.005)
    assert result.base_points == pytest.approx(600 - factor * math.log(50) + factor * 2.0,
                                               abs=0.005)


def test_score_at_base_odds_is_base_score_and_pdo_doubles_the_odds() -> None:
    text = CARD.replace("intercept = 2.0", f"intercept = {math.log(50)!r}")
    scorecard = parse_scorecard(text, CARD_PATH)
    neutral = {"bureau": {"score": 600}, "applicant": {"age": 30}}  # +0.5 +0.2
    shifted = scorecard.score(neutral).ln_odds - math.log(50)
    assert shifted == pytest.approx(0.7)
    twice = parse_scorecard(text.replace(f"intercept = {math.log(50)!r}",
                                         f"intercept = {math.log(100) - 0.7!r}"), CARD_PATH)
    assert twice.score(neutral).score == 620  # double the odds: + pdo


def test_the_breakdown_names_values_and_missing_features() -> None:
    result = card().score({"bureau": {"score": 650}, "applicant": {"age": 35}})
    assert [(line.feature, line.value) for line in result.breakdown] == [
        ("bureau", 650), ("age", 35)
    ]
    missing = card().score({"applicant": {"age": 35}})
    assert missing.breakdown[0].value is None and missing.breakdown[0].log_odds == -0.25


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("change", "needle", "message"),
    [
        (("min = 600\nmax = 700", "min = 610\nmax = 700"), "min = 610", "must start where"),
        (("[[features.bins]]\nmax = 600", "[[features.bins]]\nmin = 0\nmax = 600"), "min = 0",
         "first bin must have no min"),
        (("min = 30\nlog_odds = 0.2", "min = 30\nmax = 90\nlog_odds = 0.2"), "max = 90",
         "last bin must have no max"),
        (("pdo = 20.0", "pdo = 0.0"), "pdo = 0.0", "pdo must be > 0"),
        (('name = "age"', 'name = "bureau"'), 'name = "bureau"', "duplicate feature"),
        (("log_odds = 0.5", 'log_odds = "high"'), 'log_odds = "high"', "Expected `float`"),
        (("missing_log_odds = 0.0", "missing_log_odds = 0.0\nweight = 2"), "weight = 2",
         "unknown field `weight`"),
    ],
)
def test_scorecard_errors_name_their_line(
    change: tuple[str, str], needle: str, message: str
) -> None:
    text = CARD.replace(*change, 1)
    with pytest.raises(RiskConfigError) as caught:
        parse_scorecard(text, CARD_PATH)
    problem = caught.value.problems[0]
    last = [n for n, line in enumerate(text.splitlines(), 1) if needle in line][-1]
    assert problem.startswith(f"{CARD_PATH}:{last}: "), problem
    assert message in problem


def test_scorecard_fact_paths_are_checked_against_sample_facts() -> None:
    sample = {"bureau": {"score": 1}, "applicant": {"agee": 1}}
    with pytest.raises(RiskConfigError) as caught:
        parse_scorecard(CARD, CARD_PATH, [sample])
    [problem] = caught.value.problems
    line = line_of(CARD, 'fact = "applicant.age"')
    assert problem.startswith(f"{CARD_PATH}:{line}: ")


# ---- the dev scorecard's calibration ------------------------------------------------------


def _extreme_ln_odds(card: Scorecard, ranges: dict[str, tuple[int, int] | None],
                     pick: Any) -> float:
    """min/max over every value of each feature's range (None: missing) of the ln(odds):
    the score is a sum of per-feature parts, so its extremes are the sums of theirs."""
    total = float(card.intercept)
    for feature in card.features:
        span = ranges[".".join(feature.path)]
        if span is None:
            total += float(feature.missing.log_odds)
            continue
        total += pick(float(b.log_odds) for b in feature.bins if _overlaps(b, span))
    return total


def _overlaps(b: Any, span: tuple[int, int]) -> bool:
    low, high = span
    return (b.low is None or b.low <= high) and (b.high is None or b.high > low)


def _score_of(card: Scorecard, ln_odds: float) -> int:
    return math.floor(float(card.offset) + float(card.factor) * ln_odds + 0.5)


def _ranges(screened: bool, bureau: bool = True) -> dict[str, tuple[int, int] | None]:
    def source(name: str, field: str) -> tuple[int, int] | None:
        if not screened or (name == "credit_bureau" and not bureau):
            return None
        span = BENIGN_RANGES[name][field]
        assert isinstance(span, tuple)
        return span

    return {
        "credit_bureau.score": source("credit_bureau", "score"),
        "credit_bureau.debt_ratio_pct": source("credit_bureau", "debt_ratio_pct"),
        "zhima.score": source("zhima", "score"),
        "tongdun.fraud_score": source("tongdun", "fraud_score"),
        "baihang.multi_lending_90d": source("baihang", "multi_lending_90d"),
        "applicant.age": (22, 55),
        "applicant.monthly_income": (1_000_000, 10**12),
        "application.amount_income_pct": (0, 500),  # amount <= 5 x income (the limit)
    }


@pytest.mark.parametrize(
    ("case", "screened", "bureau", "lowest", "highest"),
    [
        ("benign_screened", True, True, 640, 820),
        ("benign_bureau_unavailable", True, False, 617, 760),
        ("not_screened", False, True, 606, 720),
    ],
)
def test_every_benign_applicant_scores_in_tier_a(
    case: str, screened: bool, bureau: bool, lowest: int, highest: int
) -> None:
    """The sandbox promise in numbers: the whole benign box lands at 600+ (tier A: 1800 bps,
    500 % of income; not score_grey)."""
    card = BOOK.scorecard
    assert {".".join(f.path) for f in card.features} == set(_ranges(True))
    low = _score_of(card, _extreme_ln_odds(card, _ranges(screened, bureau), min))
    high = _score_of(card, _extreme_ln_odds(card, _ranges(screened, bureau), max))
    assert lowest <= low and high <= highest, (low, high)
    tier = BOOK.pricing.tier_for(low)
    assert tier is not None and tier.name == "A"


def test_dev_scorecard_features_cover_every_value() -> None:
    for feature in BOOK.scorecard.features:
        assert isinstance(feature, Feature)
        for value in (-10**9, -1, 0, 1, 599, 600, 10**9):
            assert sum(b.holds(value) for b in feature.bins) == 1, (feature.name, value)


# ---- pricing ----------------------------------------------------------------------------------

PRICING = """
name = "pricing"
version = 2
limit_round_fen = 10000
limit_max = 20000000

[[tiers]]
name = "B"
min_score = 560
annual_rate_bps = 2200
limit_income_multiple_pct = 300

[[tiers]]
name = "A"
min_score = 600
annual_rate_bps = 900
limit_income_multiple_pct = 500
"""


def pricing() -> Pricing:
    return parse_pricing(PRICING, PRICING_PATH)


@pytest.mark.parametrize(("score", "tier"), [(900, "A"), (600, "A"), (599, "B"), (560, "B"),
                                             (559, None)])
def test_the_tier_is_the_highest_band_the_score_reaches(score: int, tier: str | None) -> None:
    got = pricing().tier_for(score)
    assert (got.name if got else None) == tier


def test_the_rate_is_clamped_into_the_product_range() -> None:
    a, b = pricing().tier_for(700), pricing().tier_for(570)
    assert a is not None and b is not None
    assert Pricing.rate_for(a, product("CASH_EI_12")) == 1000   # 900 → the product's min
    assert Pricing.rate_for(b, product("CASH_EI_12")) == 2200
    assert Pricing.rate_for(b, product("INST_FEE_12")) == 0     # 0..0: the fee is the cost


@pytest.mark.parametrize(
    ("income", "tier", "limit"),
    [
        (1_200_000, "A", 6_000_000),
        (1_234_567, "A", 6_170_000),   # 6,172,835 floored to 100 CNY
        (1_000_000, "A", 5_000_000),
        (4_500_000, "A", 20_000_000),  # 22,500,000 capped
        (1_234_567, "B", 3_700_000),   # 3,703,701 floored
        (0, "A", 0),
    ],
)
def test_the_limit_is_income_times_the_tier_multiple_floored_and_capped(
    income: int, tier: str, limit: int
) -> None:
    chosen = next(t for t in pricing().tiers if t.name == tier)
    assert pricing().credit_limit(chosen, income) == limit


@pytest.mark.parametrize(
    ("change", "needle", "message"),
    [
        (("min_score = 600", "min_score = 560"), "min_score = 560", "two tiers start"),
        (('name = "A"', 'name = "B"'), 'name = "B"', "must be unique"),
        (("annual_rate_bps = 900", "annual_rate_bps = 10001"), "annual_rate_bps = 10001",
         "annual_rate_bps must be in"),
        (("limit_round_fen = 10000", "limit_round_fen = 0"), "limit_round_fen = 0",
         "limit_round_fen must be >= 1"),
        (('name = "pricing"', 'name = "prices"'), 'name = "prices"', "name must be 'pricing'"),
        (("limit_max = 20000000", "limit_max = 20000000\ncurrency = 'CNY'"), "currency",
         "unknown field `currency`"),
    ],
)
def test_pricing_errors_name_their_line(
    change: tuple[str, str], needle: str, message: str
) -> None:
    text = PRICING.replace(*change, 1)
    with pytest.raises(RiskConfigError) as caught:
        parse_pricing(text, PRICING_PATH)
    problem = caught.value.problems[0]
    lines = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert problem.startswith(f"{PRICING_PATH}:{lines[-1]}: "), problem
    assert message in problem


def test_dev_pricing_gives_the_sandbox_offer() -> None:
    tier = BOOK.pricing.tier_for(600)
    assert tier is not None and tier.name == "A"
    assert Pricing.rate_for(tier, product("CASH_EI_12")) == 1800
    assert BOOK.pricing.credit_limit(tier, 1_200_000) == 6_000_000
    assert BOOK.pricing.tier_for(559) is None
