"""The rules engine changed from `common-expression-language` (CEL in Rust) to `cel-expr-python`
(Google's CEL in C++), evaluating each set as one list of its rules (ADR 010). Every rule set
of config/risk must decide exactly as it did: the same rules fire, the same rules fail
(`rule_error`), evaluation stops at the same rule, over facts generated around the sample
facts the risk book is dry-run against, with fields missing, of the wrong type, or at any
value. The previous engine stays a development dependency for this check only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cel as previous_engine  # common-expression-language
from hypothesis import given, settings
from hypothesis import strategies as st

from lending.origination import sample_facts
from lending.riskbook import load_risk_book
from lending.rules import DECLINE, FIRST_DECLINE, REVIEW, RULE_ERROR, SEVERITY, RuleSet

BOOK = load_risk_book(Path(__file__).resolve().parents[2] / "config" / "risk")
SAMPLES = sample_facts("decision")
ANY_VALUE = st.one_of(
    st.booleans(),
    st.integers(min_value=-10, max_value=10**8),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "cash", "installment_purchase", "gambling", "consumption", "330100"]),
    st.none(),
)


@st.composite
def facts(draw: st.DrawFn) -> dict[str, Any]:
    """A sample's facts, each field kept, replaced by any value, or left out."""
    generated: dict[str, Any] = {}
    for root, value in draw(st.sampled_from(SAMPLES)).items():
        fate = draw(st.sampled_from(["keep", "keep", "keep", "other", "missing"]))
        if fate == "missing":
            continue
        if isinstance(value, dict):
            fields = {}
            for name, field in value.items():
                fate = draw(st.sampled_from(["keep", "keep", "other", "missing"]))
                if fate != "missing":
                    fields[name] = field if fate == "keep" else draw(ANY_VALUE)
            generated[root] = fields
        else:
            generated[root] = value if fate == "keep" else draw(ANY_VALUE)
    return generated


def previous_decision(rule_set: RuleSet, given: dict[str, Any]) -> tuple[Any, ...]:
    """What the set decided on the previous engine, rule by rule as it evaluated them:
    (outcome, fired (rule id, action, reason) in order, rules evaluated, stopped early)."""
    context = previous_engine.Context(given)
    fired: list[tuple[str, str, str]] = []
    outcome, evaluated = "pass", 0
    for rule in rule_set.rules:
        evaluated += 1
        try:
            result = previous_engine.compile(rule.source).execute(context)
        except Exception:  # noqa: BLE001 - any failure of a rule is its rule_error
            result = None
        if result is False:
            continue
        hit = (rule.id, rule.action, rule.reason) if result is True else \
            (rule.id, REVIEW, RULE_ERROR)
        fired.append(hit)
        if SEVERITY[hit[1]] > SEVERITY[outcome]:
            outcome = hit[1]
        if rule_set.hit_policy == FIRST_DECLINE and hit[1] == DECLINE:
            break
    return outcome, fired, evaluated, evaluated < len(rule_set.rules)


@settings(max_examples=400, deadline=None)
@given(facts())
def test_every_rule_set_decides_as_on_the_previous_engine(given: dict[str, Any]) -> None:
    for rule_set in BOOK.rule_sets():
        got = rule_set.evaluate(given)
        assert (got.outcome, [(h.rule_id, h.action, h.reason) for h in got.hits],
                got.evaluated, got.stopped_early) == previous_decision(rule_set, given)


def test_the_generated_facts_reach_every_kind_of_result() -> None:
    """The check above is worth something only if rules fire, pass and fail in it."""
    seen: set[str] = set()

    @settings(max_examples=200, deadline=None)
    @given(facts())
    def collect(given: dict[str, Any]) -> None:
        for rule_set in BOOK.rule_sets():
            for hit in rule_set.evaluate(given).hits:
                seen.add("error" if hit.reason == RULE_ERROR else "fired")
            seen.add("passed" if rule_set.evaluate(given).outcome == "pass" else "refused")

    collect()
    assert seen == {"error", "fired", "passed", "refused"}
