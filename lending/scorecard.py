"""Scorecard (评分卡): points from configured bins per feature (config/risk/scorecard.toml).

The formula, exactly as computed here:

    ln(odds) = intercept + Σ_features log_odds(feature)
    score    = offset + factor · ln(odds), rounded half-up to an integer
    factor   = pdo / ln(2)
    offset   = base_score − factor · ln(base_odds)

`log_odds(feature)` is the `log_odds` of the bin holding the feature's value (bins are
half-open integer ranges `[min, max)`; the first has no `min`, the last no `max`, and they
follow each other without gaps), or the feature's `missing_log_odds` when the fact is absent
(its source unavailable or not screened) or not an integer. `pdo` (points to double the
odds), `base_score` and `base_odds` scale it: odds of `base_odds` : 1 score `base_score`,
and every `pdo` points more double the odds of a good outcome.

Arithmetic is Decimal (28 digits, correctly rounded ln), so a decision replays to the same
score on any machine. A feature's points in the breakdown are factor · log_odds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec

from lending.rules import RiskConfigError, convert_strict, read_toml

_CENT = Decimal("0.01")
_ONE = Decimal(1)
_MISSING = "missing"
_INVALID = "invalid"


class BinSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    log_odds: float
    min: int | None = None   # inclusive; absent: no lower bound
    max: int | None = None   # exclusive; absent: no upper bound


class FeatureSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    fact: str                # dotted path into the facts, e.g. "credit_bureau.score"
    missing_log_odds: float
    bins: list[BinSpec]
    description: str = ""


class ScorecardSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    version: int
    pdo: float
    base_score: float
    base_odds: float
    intercept: float
    features: list[FeatureSpec]
    description: str = ""


class ScoreLine(msgspec.Struct, frozen=True):
    """One feature's part of a score."""

    feature: str
    value: int | None    # None: missing
    bin: str             # "[600, 700)", "missing" or "invalid"
    log_odds: float
    points: float        # factor · log_odds, to the hundredth


class ScoreResult(msgspec.Struct, frozen=True):
    score: int
    ln_odds: float
    base_points: float   # offset + factor · intercept: the score of an all-zero applicant
    breakdown: list[ScoreLine]


@dataclass(frozen=True)
class Bin:
    low: int | None
    high: int | None
    log_odds: Decimal
    label: str = ""
    points: float = 0.0  # factor · log_odds to the hundredth, for the breakdown

    def holds(self, value: int) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value < self.high)


def _label(low: int | None, high: int | None) -> str:
    return f"[{'-inf' if low is None else low}, {'+inf' if high is None else high})"


@dataclass(frozen=True)
class Feature:
    name: str
    path: tuple[str, ...]
    missing: Bin  # what an absent fact scores ("missing"), or a non-integer one ("invalid")
    invalid: Bin
    bins: tuple[Bin, ...]


@dataclass(frozen=True)
class Scorecard:
    name: str
    version: int
    factor: Decimal
    offset: Decimal
    intercept: Decimal
    features: tuple[Feature, ...]

    def score(self, facts: Mapping[str, Any]) -> ScoreResult:
        ln_odds = self.intercept
        lines = []
        for feature in self.features:
            value = fact_at(facts, feature.path)
            shown = None
            if value is None:
                chosen = feature.missing
            elif isinstance(value, bool) or not isinstance(value, int):
                chosen = feature.invalid
            else:
                shown = value
                chosen = next(b for b in feature.bins if b.holds(value))
            ln_odds += chosen.log_odds
            lines.append(ScoreLine(feature.name, shown, chosen.label, float(chosen.log_odds),
                                   chosen.points))
        exact = self.offset + self.factor * ln_odds
        base = self.offset + self.factor * self.intercept
        return ScoreResult(
            score=int(exact.quantize(_ONE, ROUND_HALF_UP)),
            ln_odds=float(ln_odds),
            base_points=float(base.quantize(_CENT)),
            breakdown=lines,
        )


def fact_at(facts: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at a dotted path of nested mappings, or None when any step is absent."""
    value: Any = facts
    for step in path:
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


def _decimal(value: float) -> Decimal:
    # repr gives the shortest text that reads back as the same float: "0.3", not 0.299...
    return Decimal(repr(value))


def parse_scorecard(
    text: str, path: Path, samples: Sequence[Mapping[str, Any]] = ()
) -> Scorecard:
    """Validate a scorecard; every feature's fact must be an integer in each sample (a
    complete facts mapping), so a misspelt path is a load error, not a silent "missing"."""
    raw, lines = read_toml(text, path)
    spec = convert_strict(raw, ScorecardSpec, path, lines)
    problems = [f"{path}:{lines.line(where)}: {message}"
                for where, message in _problems(spec, samples)]
    if problems:
        raise RiskConfigError(problems)
    factor = _decimal(spec.pdo) / Decimal(2).ln()
    offset = _decimal(spec.base_score) - factor * _decimal(spec.base_odds).ln()

    def make_bin(low: int | None, high: int | None, log_odds: float, label: str) -> Bin:
        exact = _decimal(log_odds)
        return Bin(low, high, exact, label, float((factor * exact).quantize(_CENT)))

    features = tuple(
        Feature(
            f.name, tuple(f.fact.split(".")),
            make_bin(None, None, f.missing_log_odds, _MISSING),
            make_bin(None, None, f.missing_log_odds, _INVALID),
            tuple(make_bin(b.min, b.max, b.log_odds, _label(b.min, b.max)) for b in f.bins),
        )
        for f in spec.features
    )
    return Scorecard(spec.name, spec.version, factor, offset, _decimal(spec.intercept), features)


def load_scorecard(path: Path, samples: Sequence[Mapping[str, Any]] = ()) -> Scorecard:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RiskConfigError([f"{path}:1: cannot read: {exc}"]) from exc
    return parse_scorecard(text, path, samples)


def _problems(
    spec: ScorecardSpec, samples: Sequence[Mapping[str, Any]]
) -> Iterable[tuple[str, str]]:
    if spec.name != "scorecard":
        yield "$.name", f"name must be 'scorecard', got {spec.name!r}"
    if spec.version < 1:
        yield "$.version", f"version must be >= 1, got {spec.version}"
    for field in ("pdo", "base_odds", "base_score"):
        if getattr(spec, field) <= 0:
            yield f"$.{field}", f"{field} must be > 0, got {getattr(spec, field)}"
    if not spec.features:
        yield "$", "a scorecard needs at least one [[features]]"
    names: set[str] = set()
    for index, feature in enumerate(spec.features):
        where = f"$.features[{index}]"
        if feature.name in names:
            yield f"{where}.name", f"duplicate feature {feature.name!r}"
        names.add(feature.name)
        yield from _fact_problems(feature, where, samples)
        yield from _bin_problems(feature, where)


def _fact_problems(
    feature: FeatureSpec, where: str, samples: Sequence[Mapping[str, Any]]
) -> Iterable[tuple[str, str]]:
    path = feature.fact.split(".")
    for sample in samples:
        value = fact_at(sample, path)
        if value is None or isinstance(value, bool) or not isinstance(value, int):
            yield f"{where}.fact", (f"feature {feature.name!r}: fact {feature.fact!r} is not "
                                    f"an integer fact")
            return


def _bin_problems(feature: FeatureSpec, where: str) -> Iterable[tuple[str, str]]:
    bins = feature.bins
    if not bins:
        yield f"{where}.bins", f"feature {feature.name!r} needs at least one bin"
        return
    if bins[0].min is not None:
        yield f"{where}.bins[0].min", (f"feature {feature.name!r}: the first bin must have "
                                       f"no min (it takes every lower value)")
    if bins[-1].max is not None:
        yield f"{where}.bins[{len(bins) - 1}].max", (
            f"feature {feature.name!r}: the last bin must have no max (it takes every "
            f"higher value)")
    for index, (left, right) in enumerate(pairwise(bins), start=1):
        if left.max is None or right.min is None or left.max != right.min:
            yield f"{where}.bins[{index}].min", (
                f"feature {feature.name!r}: bin {index} must start where bin {index - 1} "
                f"ends (min = {left.max})")
        elif right.max is not None and right.max <= right.min:
            yield f"{where}.bins[{index}].max", (
                f"feature {feature.name!r}: bin {index} is empty (max <= min)")
