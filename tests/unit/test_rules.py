"""The rules engine (lending/rules.py): loading with line-precise errors, CEL evaluation,
hit policies, severity and `rule_error`."""

from __future__ import annotations

from pathlib import Path

import pytest

from lending.rules import (
    DECLINE,
    PASS,
    REVIEW,
    RULE_ERROR,
    RiskConfigError,
    TomlLines,
    activation,
    parse_rule_set,
)

PATH = Path("risk/admission.toml")


def rules_text(*rules: str, head: str = 'name = "admission"\nversion = 2\n') -> str:
    return head + "".join(f"\n[[rules]]\n{rule.strip()}\n" for rule in rules)


def rule(rule_id: str, when: str, action: str = "decline", reason: str | None = None) -> str:
    return (f'id = "{rule_id}"\ndescription = "d"\nwhen = "{when}"\n'
            f'action = "{action}"\nreason = "{reason or rule_id}"')


def problems(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(RiskConfigError) as caught:
        parse_rule_set(text, PATH, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


# ---- loading ----------------------------------------------------------------------------------


def test_a_valid_set_loads_with_its_name_version_and_rules_in_order() -> None:
    text = rules_text(rule("a", "x > 1"), rule("b", "x > 2", "review"))
    rule_set = parse_rule_set(text, PATH, expected_name="admission", roots={"x"})
    assert (rule_set.name, rule_set.version, rule_set.hit_policy) == ("admission", 2, "collect")
    assert [r.id for r in rule_set.rules] == ["a", "b"]
    assert rule_set.rules[1].line == line_of(text, 'when = "x > 2"')
    assert rule_set.variables() == {"x"}


def test_a_cel_syntax_error_names_the_file_and_the_line_of_the_when() -> None:
    text = rules_text(rule("fine", "x > 1"), rule("broken", "x > "))
    [message] = problems(text)
    line = line_of(text, 'when = "x > "')
    assert message.startswith(f"{PATH}:{line}: rule 'broken': ")
    assert "invalid CEL" in message and "Syntax error" in message


def test_a_syntax_error_inside_a_multiline_when_names_its_own_line() -> None:
    text = rules_text(
        'id = "multi"\ndescription = "d"\nwhen = """\nx > 1\n  && y < 2\n  && z < < 3\n"""\n'
        'action = "decline"\nreason = "multi"'
    )
    [message] = problems(text)
    # the expression's third line, `  && z < < 3`, is where CEL stops
    assert message.startswith(f"{PATH}:{line_of(text, '&& z < < 3')}:"), message
    assert "(column 10)" in message


def test_every_problem_is_reported_at_once_each_with_its_line() -> None:
    text = rules_text(
        rule("ok_rule", "x > 1"),
        rule("Bad-Id", "x > 1", reason="bad_id"),
        rule("bad_action", "x > 1", action="reject"),
        rule("bad_reason", "x > 1", reason="Not Snake"),
        rule("reserved", "x > 1", reason=RULE_ERROR),
        rule("ok_rule", "x > 2"),
        rule("unknown_root", "y > 1"),
        rule("not_boolean", "x + 1"),
        rule("missing_field", "m.nope > 1"),
        'id = "extra"\ndescription = "d"\nwhen = "x > 1"\naction = "decline"\n'
        'reason = "extra"\npriority = 3',
        head='name = "admision"\nversion = 0\nhit_policy = "best"\n',
    )
    found = problems(text, expected_name="admission", roots={"x", "m"},
                     samples=[{"x": 1, "m": {"yes": 1}}])
    expected_lines = {
        "priority": line_of(text, "priority = 3"),
        "name must be 'admission'": line_of(text, 'name = "admision"'),
        "version must be >= 1": line_of(text, "version = 0"),
        "hit_policy must be one of": line_of(text, 'hit_policy = "best"'),
        "id must be snake_case": line_of(text, 'id = "Bad-Id"'),
        "action must be one of": line_of(text, 'action = "reject"'),
        "reason must be a snake_case code": line_of(text, 'reason = "Not Snake"'),
        "is reserved": line_of(text, f'reason = "{RULE_ERROR}"'),
        "duplicate id": [n for n, line in enumerate(text.splitlines(), 1)
                         if 'id = "ok_rule"' in line][1],
        "unknown fact y": line_of(text, 'when = "y > 1"'),
        "must be true or false, got int": line_of(text, 'when = "x + 1"'),
        "fails on sample facts": line_of(text, 'when = "m.nope > 1"'),
    }
    assert len(found) == len(expected_lines), found
    for needle, line in expected_lines.items():
        matching = [p for p in found if needle in p]
        assert matching, (needle, found)
        assert matching[0].startswith(f"{PATH}:{line}: "), (needle, matching[0])


def test_missing_keys_and_wrong_types_are_located() -> None:
    text = rules_text(
        rule("a", "x > 1"),
        'id = "b"\ndescription = "d"\naction = "decline"\nreason = "b"',
    )
    [message] = problems(text)
    header = line_of(text, 'id = "b"') - 1  # its [[rules]]
    assert message.startswith(f"{PATH}:{header}: ")
    assert "missing required field `when`" in message
    text = rules_text(rule("a", "x > 1"), head='name = "admission"\nversion = "2"\n')
    [message] = problems(text)
    assert message.startswith(f"{PATH}:{line_of(text, 'version = ')}: ")


def test_invalid_toml_names_its_line() -> None:
    text = rules_text(rule("a", "x > 1")) + "\nwhen = = 3\n"
    [message] = problems(text)
    assert message.startswith(f"{PATH}:{line_of(text, 'when = = 3')}: invalid TOML")


def test_an_empty_set_is_refused() -> None:
    [message] = problems('name = "admission"\nversion = 1\nrules = []\n')
    assert "at least one [[rules]]" in message


def test_macro_variables_are_not_unknown_facts() -> None:
    text = rules_text(rule("any_big", "xs.exists(v, v > 10)"))
    rule_set = parse_rule_set(text, PATH, roots={"xs"}, samples=[{"xs": [1, 20]}])
    assert rule_set.evaluate({"xs": [1, 2]}).outcome == PASS
    assert rule_set.evaluate({"xs": [1, 20]}).outcome == DECLINE


def test_toml_lines_follow_nested_arrays_of_tables() -> None:
    text = (
        "name = 'x'\n[[features]]\nname = 'a'\n[[features.bins]]\nmax = 1\n"
        "[[features.bins]]\nmin = 1\n[[features]]\nname = 'b'\n[[features.bins]]\nmax = 2\n"
        "[limits]\ncap = 3\n"
    )
    lines = TomlLines(text)
    assert lines.line("$.name") == 1
    assert lines.line("$.features[0].bins[1].min") == 7
    assert lines.line("$.features[1].name") == 9
    assert lines.line("$.features[1].bins[0].max") == 11
    assert lines.line("$.features[1].bins[0].log_odds") == 10  # absent: its table
    assert lines.line("$.limits.cap") == 13


# ---- evaluation -------------------------------------------------------------------------------


def test_fired_rules_come_in_file_order_and_the_most_severe_action_wins() -> None:
    text = rules_text(
        rule("r1", "x > 1", "review"), rule("d1", "x > 2"), rule("r2", "x > 3", "review"),
        rule("never", "x > 100"),
    )
    rule_set = parse_rule_set(text, PATH)
    result = rule_set.evaluate({"x": 5})
    assert [(h.rule_id, h.action) for h in result.hits] == [
        ("r1", REVIEW), ("d1", DECLINE), ("r2", REVIEW)
    ]
    assert (result.outcome, result.evaluated, result.stopped_early) == (DECLINE, 4, False)
    assert rule_set.evaluate({"x": 2}).outcome == REVIEW
    assert rule_set.evaluate({"x": 0}).outcome == PASS
    assert rule_set.evaluate({"x": 0}).hits == []


def test_first_decline_stops_at_the_first_decline() -> None:
    text = rules_text(
        rule("r1", "x > 1", "review"), rule("d1", "x > 2"), rule("d2", "x > 3"),
        head='name = "decision"\nversion = 1\nhit_policy = "first_decline"\n',
    )
    rule_set = parse_rule_set(text, PATH)
    result = rule_set.evaluate({"x": 5})
    assert [h.rule_id for h in result.hits] == ["r1", "d1"]
    assert (result.outcome, result.evaluated, result.stopped_early) == (DECLINE, 2, True)
    assert rule_set.evaluate({"x": 2}).stopped_early is False


@pytest.mark.parametrize(
    ("when", "facts", "error"),
    [
        ("s.score < 5", {"s": {}}, 'Key not found in map : "score"'),  # a missing field
        ("nobody > 1", {}, 'No value with name "nobody"'),      # a missing fact
        ("s.score < 5", {"s": {"score": "low"}}, "No matching overloads"),  # a wrong type
        ("x / y > 1", {"x": 1, "y": 0}, "divide by zero"),
        ("x + 1", {"x": 1}, "not a bool"),                      # not a boolean
    ],
)
def test_a_when_that_fails_is_a_rule_error_review_naming_the_rule(
    when: str, facts: dict[str, object], error: str
) -> None:
    text = rules_text(rule("before", "true", "review", "first"), rule("broken", when),
                      rule("after", "true"))
    result = parse_rule_set(text, PATH).evaluate(facts)
    assert [(h.rule_id, h.action, h.reason) for h in result.hits] == [
        ("before", REVIEW, "first"), ("broken", REVIEW, RULE_ERROR), ("after", DECLINE, "after")
    ]
    assert error in result.hits[1].error
    assert result.hits[0].error == ""


def test_short_circuit_keeps_an_unavailable_source_from_erroring() -> None:
    text = rules_text(rule("guarded", "s.available && s.score < 5"))
    rule_set = parse_rule_set(text, PATH)
    assert rule_set.evaluate({"s": {"available": False}}).hits == []
    assert rule_set.evaluate({"s": {"available": True, "score": 1}}).outcome == DECLINE


def test_evaluation_takes_prepared_facts() -> None:
    text = rules_text(rule("a", "x > 1"))
    assert parse_rule_set(text, PATH).evaluate(activation({"x": 2})).outcome == DECLINE


def test_a_comment_at_the_end_of_a_when_does_not_hide_the_rules_after_it() -> None:
    # A set is evaluated as one CEL list of its rules' `when`s: a `//` comment must end at
    # its own rule.
    text = rules_text(rule("a", "x > 1 // more than one", "review"), rule("b", "x > 2"))
    result = parse_rule_set(text, PATH).evaluate({"x": 3})
    assert [h.rule_id for h in result.hits] == ["a", "b"]
    assert result.outcome == DECLINE
