"""Microbenchmark: what the rules engine costs per application in a shard host.

Run: python -m loadtests.bench_rules [--rounds 7] [--applications 2000] [--compare-previous]

A shard host decides every application (lending.origination.decide); the rules part of it
is CEL (`cel-expr-python`, ADR 010) over the facts of the application. Over the config/risk
rule sets and the sample facts `lendcore rules check` dry-runs them with
(lending.origination.sample_facts), per application:

* `rules_us`: everything decide() does with CEL for an approved application: the facts
  bound, the admission and anti-fraud sets, the facts bound again with the score and the
  offer, the decision set (each set one CEL program, the list of its rules);
* `baseline_us` (measured in the same run, interleaved): msgspec's JSON encoding of the
  same facts, a walk in C over the same values.

`rules_ratio` = rules / baseline. `--compare-previous` also measures the same decision on
the engine before ADR 010 (`common-expression-language`, a development dependency), rule by
rule in one context as it ran: `previous_rules_us`. Each figure is the best of `--rounds`
rounds; the last line is `rules_bench ok` followed by every figure.
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
    """decide()'s CEL part for an application that passes every stage."""
    context = book.context(facts)
    book.admission.evaluate(context)
    book.anti_fraud.evaluate(context)
    book.decision.evaluate(book.context({**facts, **later}))


def _previous_rules(book: RiskBook, facts: dict[str, Any], later: dict[str, Any],
                    ) -> Callable[[], object]:
    """The same on `common-expression-language`, as decide() ran it before ADR 010."""
    try:
        import cel
    except ImportError as exc:
        raise SystemExit("--compare-previous needs the development dependencies: "
                         "pip install -e '.[dev]'") from exc
    programs = [[cel.compile(rule.source) for rule in rule_set.rules]
                for rule_set in book.rule_sets()]

    def run() -> None:
        context = cel.Context(facts)
        for program in (*programs[0], *programs[1]):
            program.execute(context)
        for name, value in later.items():
            context.add_variable(name, value)
        for program in programs[2]:
            program.execute(context)

    return run


def _per_call_us(action: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        action()
    return (time.process_time() - started) / count * 1e6


def measure(rounds: int, applications: int, compare: bool = False) -> dict[str, float]:
    book = load_risk_book(RISK_DIR)
    sample = sample_facts("decision")[0]
    facts = {k: v for k, v in sample.items() if k not in DECISION_ONLY}
    later = {k: sample[k] for k in DECISION_ONLY}
    actions: dict[str, Callable[[], object]] = {
        "rules_us": lambda: _rules(book, facts, later),
        "baseline_us": lambda: msgspec.json.encode(facts),
    }
    if compare:
        actions["previous_rules_us"] = _previous_rules(book, facts, later)
    best = {name: float("inf") for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            best[name] = min(best[name], _per_call_us(action, applications))
    values = sum(len(v) if isinstance(v, dict) else 1 for v in facts.values())
    return {**best, "values": values, "rules": sum(len(s.rules) for s in book.rule_sets())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds (best counts)")
    parser.add_argument("--applications", type=int, default=2000,
                        help="applications per round")
    parser.add_argument("--compare-previous", action="store_true",
                        help="also measure the engine before ADR 010 (a dev dependency)")
    args = parser.parse_args()
    if args.rounds < 1 or args.applications < 1:
        parser.error("--rounds and --applications must be at least 1")
    got = measure(args.rounds, args.applications, args.compare_previous)
    previous = (f" previous_rules_us={got['previous_rules_us']:.1f}"
                if "previous_rules_us" in got else "")
    print(f"rules_bench ok rules={got['rules']} fact_values={got['values']} "
          f"rules_us={got['rules_us']:.1f} baseline_us={got['baseline_us']:.2f} "
          f"rules_ratio={got['rules_us'] / got['baseline_us']:.0f}{previous}", flush=True)


if __name__ == "__main__":
    main()
