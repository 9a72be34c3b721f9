"""`lendcore rules check [--dir DIR]`: validate the risk configuration (config/risk).

Prints `ok <name> v<version> (<n> rules)` per rule set (and the scorecard's features and
pricing's tiers) and exits 0, or prints every problem as `path:line: message` on stderr and
exits 1. It loads exactly what a shard host would load, so a change that passes here is a
change the running system accepts on its next reload.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.config import PathSettings, Settings
from lending.riskbook import RiskBookError, load_risk_book


def default_dir() -> Path:
    return Settings().resolve_path(PathSettings().risk_dir)


def run(args: argparse.Namespace) -> int:
    """`args.dir`: the directory to check (None: paths.risk_dir of the defaults)."""
    directory: Path = args.dir if args.dir is not None else default_dir()
    return check(directory)


def check(directory: Path) -> int:
    try:
        book = load_risk_book(directory)
    except RiskBookError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    for rule_set in book.rule_sets():
        print(f"ok {rule_set.name} v{rule_set.version} ({len(rule_set.rules)} rules)")
    card, pricing = book.scorecard, book.pricing
    print(f"ok {card.name} v{card.version} ({len(card.features)} features)")
    print(f"ok {pricing.name} v{pricing.version} ({len(pricing.tiers)} tiers)")
    print(f"fingerprint {book.fingerprint}")
    return 0
