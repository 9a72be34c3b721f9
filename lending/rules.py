"""Rule sets (规则集): CEL rules that risk staff edit in `config/risk/*.toml`.

The rules engine is CEL (Common Expression Language), Google's C++ implementation through
`cel-expr-python` (ADR 010): each rule's `when` is compiled ONCE when the file is loaded and
evaluated per application against a facts mapping (`lending.origination.build_facts`).
Nothing here parses or evaluates expressions by hand, and Python's eval is never used.

A set is evaluated as ONE CEL program, the list of its rules' `when`s: one call instead of
one per rule (`python -m loadtests.bench_rules`). A rule that fails makes that whole list
fail; the set is then evaluated rule by rule, which says which one failed and how, exactly
as if it had always been evaluated so.

File format (one rule set per file)::

    name = "admission"            # the pipeline stage; must match the file name
    version = 3                   # an integer the analyst bumps with every change
    description = "..."           # optional
    hit_policy = "collect"        # optional: "collect" (default) or "first_decline"

    [[rules]]
    id = "income_low"             # unique in the set, snake_case
    description = "Monthly income under 10,000 CNY"
    when = "applicant.monthly_income < 1000000"   # CEL; must be true or false
    action = "decline"            # "decline" or "review"
    reason = "income_low"         # the stable snake_case code partners and regulators see

Semantics:
* Rules are evaluated in file order. A rule FIRES when its `when` is true.
* `hit_policy = "collect"` evaluates every rule; `"first_decline"` stops after the first
  decline that fires (the rules after it are not evaluated; the result says so).
* The outcome of a set is the most severe action fired: decline > review > pass.
* A `when` that fails while evaluating (a missing field, a type mismatch, a division by
  zero, a result that is not a boolean) never crashes the decision: it counts as a fired
  `review` with reason `rule_error`, and the hit keeps the rule id and the error text, so a
  risk officer sees which rule is broken. `rule_error` is reserved: no rule may use it.

Loading is strict: unknown keys are errors, and every problem is reported as
`path:line: message`, the line being that of the offending key (for a CEL syntax error, the
line inside the `when` string). Besides syntax, a `when` is checked statically against the
known fact roots and dry-run against sample facts, so a misspelt fact is caught by
`lendcore rules check` instead of turning into `rule_error` in production.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from cel_expr_python import cel

DECLINE = "decline"
REVIEW = "review"
PASS = "pass"  # nosec B105  # a rule's outcome, not a password
ACTIONS = (DECLINE, REVIEW)
SEVERITY = {PASS: 0, REVIEW: 1, DECLINE: 2}
RULE_ERROR = "rule_error"
COLLECT = "collect"
FIRST_DECLINE = "first_decline"
HIT_POLICIES = (COLLECT, FIRST_DECLINE)

_SNAKE = re.compile(r"[a-z][a-z0-9_]*")
_CEL_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")
_TOML_POSITION = re.compile(r"at line (\d+)")
# msgspec: "Object contains unknown field `x` - at `$.rules[0]`", "Expected `int`, got
# `str` - at `$.version`", "Object missing required field `when` - at `$.rules[2]`".
_MSGSPEC_FIELD = re.compile(r"field `([^`]+)`")
_MSGSPEC_PATH = re.compile(r"at `(\$[^`]*)`")
# CEL's type checker names every variable an expression reads that its environment does not
# declare: "undeclared reference to 'applicant.age' (in container '')". Variables that a
# macro binds (the `x` of `list.exists(x, x > 1)`) are declared by the macro.
_UNDECLARED = re.compile(r"undeclared reference to '([^']+)'")
# Rules are compiled unchecked in an environment that declares nothing: facts are dynamic
# maps, and a `when` is judged by what it does on them (the dry run), as CEL runs it.
_ENV = cel.NewEnv()
_ERROR_TEXT_MAX = 200
T = TypeVar("T")


class RiskConfigError(ValueError):
    """Invalid risk configuration. `problems` are `path:line: message` strings."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# ---- TOML positions -------------------------------------------------------------------------

_HEADER_ARRAY = re.compile(r"\[\[\s*([^\]]+?)\s*\]\]")
_HEADER_TABLE = re.compile(r"\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"([A-Za-z0-9_-]+)\s*=\s*(.*)")


class TomlLines:
    """Line numbers of the keys and tables of a TOML text, by msgspec-style path
    (`$.rules[3].when`), so that validation errors can point at the offending line."""

    def __init__(self, text: str) -> None:
        self.text_lines = text.splitlines()
        self._lines: dict[str, int] = {"$": 1}
        current = "$"
        arrays: dict[str, int] = {}
        open_string: str | None = None
        for number, raw in enumerate(self.text_lines, start=1):
            line = raw.strip()
            if open_string is not None:
                if open_string in line:
                    open_string = None
                continue
            if not line or line.startswith("#"):
                continue
            if match := _HEADER_ARRAY.match(line):
                path = _resolve_table(match.group(1), arrays)
                arrays[path] = arrays.get(path, -1) + 1
                current = f"{path}[{arrays[path]}]"
                self._lines.setdefault(current, number)
            elif match := _HEADER_TABLE.match(line):
                current = _resolve_table(match.group(1), arrays)
                self._lines.setdefault(current, number)
            elif match := _KEY.match(line):
                self._lines.setdefault(f"{current}.{match.group(1)}", number)
                value = match.group(2)
                for quote in ('"""', "'''"):
                    if value.startswith(quote) and value.count(quote) == 1:
                        open_string = quote

    def line(self, path: str) -> int:
        """The line of `path`, else of its nearest enclosing key or table, else 1."""
        while path:
            if path in self._lines:
                return self._lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                break
            path = path[:cut]
        return 1

    def first_line_of_string(self, path: str) -> int:
        """The file line holding the FIRST line of the string value at `path`: TOML drops
        the newline right after an opening triple quote, so then it is the next line."""
        number = self.line(path)
        raw = self.text_lines[number - 1] if number <= len(self.text_lines) else ""
        _, _, value = raw.partition("=")
        value = value.strip()
        for quote in ('"""', "'''"):
            if value.startswith(quote) and not value[len(quote):].strip():
                return number + 1
        return number


def _resolve_table(dotted: str, arrays: Mapping[str, int]) -> str:
    """`features.bins` → `$.features[2].bins`: a parent that is an array of tables means
    its latest element."""
    parts = [part.strip().strip('"') for part in dotted.split(".")]
    path = "$"
    for index, part in enumerate(parts):
        path = f"{path}.{part}"
        if index < len(parts) - 1 and path in arrays:
            path = f"{path}[{arrays[path]}]"
    return path


def read_toml(text: str, path: Path) -> tuple[dict[str, Any], TomlLines]:
    """Parse a config text; a syntax error becomes `path:line: invalid TOML: ...`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.search(str(exc))
        line = int(match.group(1)) if match else 1
        raise RiskConfigError([f"{path}:{line}: invalid TOML: {exc}"]) from exc
    return raw, TomlLines(text)


def convert_strict(
    raw: Any, kind: type[T], path: Path, lines: TomlLines, prefix: str = "$"
) -> T:
    """msgspec.convert (strict, unknown keys forbidden by the Struct) with a located error.
    `prefix`: where `raw` sits in the file, e.g. `$.rules[3]`."""
    try:
        return msgspec.convert(raw, kind, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _MSGSPEC_PATH.search(message)
        where = prefix + (at.group(1)[1:] if at else "")
        if at is not None:
            message = message.replace(f"`{at.group(1)}`", f"`{where}`")
        elif prefix != "$":
            message = f"{message} - at `{prefix}`"
        field = _MSGSPEC_FIELD.search(message)
        if field is not None:
            where = f"{where}.{field.group(1)}"
        raise RiskConfigError([f"{path}:{lines.line(where)}: {message}"]) from exc


# ---- model ----------------------------------------------------------------------------------


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    description: str
    when: str
    action: str
    reason: str


class RuleSetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    version: int
    rules: list[RuleSpec]
    description: str = ""
    hit_policy: str = COLLECT


class Hit(msgspec.Struct, frozen=True, omit_defaults=True):
    """A rule that fired. `error` is set for a `rule_error` hit."""

    rule_id: str
    action: str
    reason: str
    error: str = ""


class SetResult(msgspec.Struct, frozen=True):
    name: str
    version: int
    outcome: str          # PASS, REVIEW or DECLINE
    hits: list[Hit]
    evaluated: int        # rules evaluated (fewer than the set's when it stopped early)
    stopped_early: bool   # first_decline stopped before the last rule


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    action: str
    reason: str
    source: str  # the `when`
    program: cel.Expression
    roots: frozenset[str]  # the fact roots it reads
    line: int  # where `when` is, for messages


@dataclass(frozen=True)
class RuleSet:
    name: str
    version: int
    hit_policy: str
    rules: tuple[Rule, ...]
    path: Path
    whole: cel.Expression  # the list of every rule's `when`, in order (_whole_set)

    def variables(self) -> frozenset[str]:
        """The fact roots its rules read (static analysis of the compiled programs)."""
        return frozenset().union(*(rule.roots for rule in self.rules))

    def evaluate(self, facts: Mapping[str, Any] | cel.Activation) -> SetResult:
        """Fired rules in order and the most severe action. `facts` may be a prepared
        activation (`activation()`, cheaper when several sets read the same facts)."""
        bound = facts if isinstance(facts, cel.Activation) else activation(facts)
        whole = self.whole.eval(bound)
        results: Iterable[Any]
        if whole.type() == cel.Type.ERROR:
            results = (rule.program.eval(bound) for rule in self.rules)  # which one, and why
        else:
            results = whole.plain_value()
        hits: list[Hit] = []
        outcome = PASS
        evaluated = 0
        for rule, result in zip(self.rules, results, strict=False):
            evaluated += 1
            hit = _hit(rule, result)
            if hit is None:
                continue
            hits.append(hit)
            if SEVERITY[hit.action] > SEVERITY[outcome]:
                outcome = hit.action
            if self.hit_policy == FIRST_DECLINE and hit.action == DECLINE:
                break
        stopped = evaluated < len(self.rules)
        return SetResult(self.name, self.version, outcome, hits, evaluated, stopped)


def activation(facts: Mapping[str, Any]) -> cel.Activation:
    """The facts bound for evaluation. Values are turned into CEL values when a rule reads
    them, not before."""
    return _ENV.Activation(dict(facts))


def _hit(rule: Rule, result: Any) -> Hit | None:
    """What one rule's result means: a CEL value when the rule was evaluated alone, its
    plain value when it came in the set's list (where no element is an error)."""
    if isinstance(result, cel.Value):
        if result.type() == cel.Type.ERROR:
            return Hit(rule.id, REVIEW, RULE_ERROR, _error_text(str(result.plain_value())))
        result = result.plain_value()
    if result is True:
        return Hit(rule.id, rule.action, rule.reason)
    if result is False:
        return None
    return Hit(rule.id, REVIEW, RULE_ERROR, f"`when` gave {type(result).__name__}, not a bool")


def _error_text(text: str) -> str:
    return text if len(text) <= _ERROR_TEXT_MAX else text[: _ERROR_TEXT_MAX - 1] + "…"


def _whole_set(rules: Sequence[Rule]) -> cel.Expression:
    """One program evaluating every rule of a set: the list of their `when`s. Each `when`
    stands on lines of its own, so a `//` comment at its end cannot swallow what follows."""
    return _ENV.compile("[" + ",".join(f"(\n{rule.source}\n)" for rule in rules) + "]",
                        disable_check=True)


def _roots(source: str) -> frozenset[str]:
    """The fact roots a `when` reads: what CEL's checker finds undeclared in an environment
    that declares nothing (`applicant.age` reads `applicant`)."""
    try:
        _ENV.compile(source)
    except RuntimeError as exc:
        return frozenset(name.split(".")[0] for name in _UNDECLARED.findall(str(exc)))
    return frozenset()


# ---- loading --------------------------------------------------------------------------------


def load_rule_set(
    path: Path,
    *,
    expected_name: str | None = None,
    roots: Iterable[str] | None = None,
    samples: Sequence[Mapping[str, Any]] = (),
) -> RuleSet:
    """Load, validate and compile one rule-set file; see `parse_rule_set`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RiskConfigError([f"{path}:1: cannot read: {exc}"]) from exc
    return parse_rule_set(text, path, expected_name=expected_name, roots=roots, samples=samples)


def parse_rule_set(
    text: str,
    path: Path,
    *,
    expected_name: str | None = None,
    roots: Iterable[str] | None = None,
    samples: Sequence[Mapping[str, Any]] = (),
) -> RuleSet:
    """Validate and compile a rule set. `roots`: the fact names a `when` may read (None: no
    static check); `samples`: complete facts mappings every `when` is dry-run against.
    Raises RiskConfigError listing EVERY problem found, each as `path:line: message`."""
    raw, lines = read_toml(text, path)
    spec, specs, problems = _decode_rule_set(raw, path, lines)
    if spec is not None:
        problems += [f"{path}:{lines.line(where)}: {message}"
                     for where, message in _set_problems(spec, specs, expected_name)]
    known = None if roots is None else frozenset(roots)
    bound = [activation(sample) for sample in samples]
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, rule in specs:
        where = f"$.rules[{index}]"
        for field, message in _rule_problems(rule, seen):
            problems.append(f"{path}:{lines.line(f'{where}.{field}')}: rule {rule.id!r}: "
                            f"{message}")
        seen.add(rule.id)
        compiled, message, line = _compile(rule.when, lines, f"{where}.when")
        if compiled is None:
            problems.append(f"{path}:{line}: rule {rule.id!r}: {message}")
            continue
        reads = _roots(rule.when)
        for message in _fact_problems(compiled, reads, known, bound):
            problems.append(f"{path}:{line}: rule {rule.id!r}: {message}")
        rules.append(Rule(rule.id, rule.description, rule.action, rule.reason, rule.when,
                          compiled, reads, line))
    if problems or spec is None:
        raise RiskConfigError(problems)
    return RuleSet(spec.name, spec.version, spec.hit_policy, tuple(rules), path,
                   _whole_set(rules))


def _decode_rule_set(
    raw: dict[str, Any], path: Path, lines: TomlLines
) -> tuple[RuleSetSpec | None, list[tuple[int, RuleSpec]], list[str]]:
    """Decode the set's keys and each rule on its own, so that one bad rule does not hide
    the problems of the others: (set or None, (index, rule) that decoded, problems)."""
    problems: list[str] = []
    raw_rules = raw.get("rules")
    spec: RuleSetSpec | None = None
    specs: list[tuple[int, RuleSpec]] = []
    try:
        spec = convert_strict({**raw, "rules": []} if isinstance(raw_rules, list) else raw,
                              RuleSetSpec, path, lines)
    except RiskConfigError as exc:
        problems += exc.problems
    for index, item in enumerate(raw_rules if isinstance(raw_rules, list) else []):
        try:
            specs.append((index, convert_strict(item, RuleSpec, path, lines,
                                                f"$.rules[{index}]")))
        except RiskConfigError as exc:
            problems += exc.problems
    return spec, specs, problems


def _set_problems(
    spec: RuleSetSpec, specs: Sequence[tuple[int, RuleSpec]], expected_name: str | None
) -> Iterable[tuple[str, str]]:
    if expected_name is not None and spec.name != expected_name:
        yield "$.name", f"name must be {expected_name!r} (the stage of this file), " \
                        f"got {spec.name!r}"
    if spec.version < 1:
        yield "$.version", f"version must be >= 1, got {spec.version}"
    if spec.hit_policy not in HIT_POLICIES:
        yield "$.hit_policy", (f"hit_policy must be one of {', '.join(HIT_POLICIES)}, "
                               f"got {spec.hit_policy!r}")
    if not specs:
        yield "$", "a rule set needs at least one [[rules]]"


def _rule_problems(rule: RuleSpec, seen: set[str]) -> Iterable[tuple[str, str]]:
    if not _SNAKE.fullmatch(rule.id):
        yield "id", "id must be snake_case ([a-z][a-z0-9_]*)"
    elif rule.id in seen:
        yield "id", "duplicate id in this set"
    if not rule.description.strip():
        yield "description", "description must not be empty"
    if rule.action not in ACTIONS:
        yield "action", f"action must be one of {', '.join(ACTIONS)}, got {rule.action!r}"
    if not _SNAKE.fullmatch(rule.reason):
        yield "reason", f"reason must be a snake_case code, got {rule.reason!r}"
    elif rule.reason == RULE_ERROR:
        yield "reason", f"reason {RULE_ERROR!r} is reserved for rules that fail to evaluate"


def _compile(source: str, lines: TomlLines, where: str,
             ) -> tuple[cel.Expression | None, str, int]:
    """(program, "", line) or (None, message, line of the error inside the file)."""
    first = lines.first_line_of_string(where)
    if not source.strip():
        return None, "`when` must not be empty", lines.line(where)
    try:
        return _ENV.compile(source, disable_check=True), "", first
    except RuntimeError as exc:
        text = str(exc)
        match = _CEL_POSITION.search(text)
        if match is None:
            return None, f"invalid CEL in `when`: {text}", first
        row, column, detail = int(match.group(1)), int(match.group(2)), match.group(3)
        return None, f"invalid CEL in `when` (column {column}): {detail}", first + row - 1


def _fact_problems(
    program: cel.Expression,
    reads: frozenset[str],
    known: frozenset[str] | None,
    samples: Sequence[cel.Activation],
) -> Iterable[str]:
    if known is not None:
        unknown = sorted(reads - known)
        if unknown:
            yield (f"unknown fact {', '.join(unknown)} in `when` "
                   f"(known: {', '.join(sorted(known))})")
            return
    for sample in samples:
        result = program.eval(sample)
        if result.type() == cel.Type.ERROR:
            yield f"`when` fails on sample facts: {_error_text(str(result.plain_value()))}"
            return
        if not isinstance(result.plain_value(), bool):
            yield (f"`when` must be true or false, "
                   f"got {type(result.plain_value()).__name__}")
            return
