"""Microbenchmark: what the rules engine costs per application in a shard host.

Run: python -m loadtests.bench_rules [--rounds 7] [--applications 2000]

A shard host decides every application (lending.origination.decide); the rules part of it
is CEL (the `common-expression-language` package) over the facts of the application. Over
the config/risk rule sets and the same sample facts `lendcore rules check` dry-runs them
with (lending.origination.sample_facts), per application:

* `context_us`: RiskBook.context, turning the facts the rules read into CEL values;
* `rules_us`: everything decide() does with CEL for an approved application: the context,
  the admission and anti-fraud sets, the score and the offer added, the decision set;
* `baseline_us` (measured in the same run, interleaved): msgspec's JSON encoding of the
  same facts, a walk in C over the same values.

`context_ratio` = context / baseline. Each figure is the best of `--rounds` rounds; the last
line is `rules_bench ok` followed by every figure.

`--compare-cel-expr` also measures the same rules and facts on Google's CEL for Python
(`cel-expr-python`, not a dependency of lendcore: `pip install cel-expr-python==0.1.3` into
the venv first), for docs/adr/010: `cel_expr_per_rule_us`, one evaluation per rule as
lendcore evaluates them; `cel_expr_per_set_us`, one evaluation per rule set of a CEL list
of its rules. Both are the decision's whole CEL part, as `rules_us` is.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from lending.origination import sample_facts
from lending.riskbook import RiskBook, load_risk_book

RISK_DIR = Path(__file__).resolve().parent.parent / "config" / "risk"
DECISION_ONLY = ("score", "offer")  # known only after the scorecard and pricing


def _rules(book: RiskBook, facts: dict[str, Any], later: dict[str, Any]) -> None:
    context = book.context(facts)
    book.admission.evaluate(context)
    book.anti_fraud.evaluate(context)
    for name, value in later.items():
        context.add_variable(name, value)
    book.decision.evaluate(context)


def _per_call_us(action: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        action()
    return (time.process_time() - started) / count * 1e6


def _cel_expr_actions(book: RiskBook, facts: dict[str, Any], later: dict[str, Any],
                      ) -> dict[str, Callable[[], object]]:
    """The decision's CEL part on cel-expr-python: per rule, and per set as one list."""
    try:
        from cel_expr_python import cel
    except ImportError as exc:
        raise SystemExit("--compare-cel-expr needs cel-expr-python: "
                         "pip install cel-expr-python==0.1.3") from exc
    env = cel.NewEnv(variables={name: cel.Type.DYN for name in [*facts, *later]})
    sets = book.rule_sets()
    per_rule = [[env.compile(r.program.source, disable_check=True) for r in s.rules]
                for s in sets]
    per_set = [env.compile("[" + ", ".join(f"({r.program.source})" for r in s.rules) + "]",
                           disable_check=True) for s in sets]
    everything = {**facts, **later}

    def rules_each() -> None:
        first = env.Activation(facts)
        for program in (*per_rule[0], *per_rule[1]):
            program.eval(first).plain_value()
        last = env.Activation(everything)
        for program in per_rule[2]:
            program.eval(last).plain_value()

    def sets_whole() -> None:
        first = env.Activation(facts)
        per_set[0].eval(first).plain_value()
        per_set[1].eval(first).plain_value()
        per_set[2].eval(env.Activation(everything)).plain_value()

    return {"cel_expr_per_rule_us": rules_each, "cel_expr_per_set_us": sets_whole}


def measure(rounds: int, applications: int, compare: bool = False) -> dict[str, float]:
    book = load_risk_book(RISK_DIR)
    sample = sample_facts("decision")[0]
    facts = {k: v for k, v in sample.items() if k not in DECISION_ONLY}
    later = {k: sample[k] for k in DECISION_ONLY}
    values = sum(len(v) if isinstance(v, dict) else 1 for v in facts.values())
    best = {"context_us": float("inf"), "rules_us": float("inf"), "baseline_us": float("inf")}
    actions: dict[str, Callable[[], object]] = {
        "context_us": lambda: book.context(facts),
        "rules_us": lambda: _rules(book, facts, later),
        "baseline_us": lambda: msgspec.json.encode(facts),
    }
    if compare:
        actions.update(_cel_expr_actions(book, facts, later))
        best.update({name: float("inf") for name in actions})
    for _ in range(rounds):
        for name, action in actions.items():
            best[name] = min(best[name], _per_call_us(action, applications))
    return {**best, "values": values,
            "rules": sum(len(s.rules) for s in book.rule_sets())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds (best counts)")
    parser.add_argument("--applications", type=int, default=2000,
                        help="applications per round")
    parser.add_argument("--compare-cel-expr", action="store_true",
                        help="also measure cel-expr-python (installed separately)")
    args = parser.parse_args()
    if args.rounds < 1 or args.applications < 1:
        parser.error("--rounds and --applications must be at least 1")
    got = measure(args.rounds, args.applications, args.compare_cel_expr)
    compared = "".join(f" {name}={got[name]:.1f}" for name in got if name.startswith("cel_expr"))
    print(f"rules_bench ok rules={got['rules']} fact_values={got['values']} "
          f"context_us={got['context_us']:.1f} rules_us={got['rules_us']:.1f} "
          f"baseline_us={got['baseline_us']:.2f} "
          f"context_ratio={got['context_us'] / got['baseline_us']:.0f}{compared}", flush=True)


if __name__ == "__main__":
    main()
