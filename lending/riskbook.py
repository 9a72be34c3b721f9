"""The risk book: everything risk staff configure, loaded together from one directory.

`config/risk/` holds five files: `admission.toml`, `anti_fraud.toml` and `decision.toml`
(rule sets, lending/rules.py), `scorecard.toml` (lending/scorecard.py) and `pricing.toml`
(lending/pricing.py). `load_risk_book` validates all of them and raises ONE error type,
`RiskConfigError`, listing every problem as `path:line: message` (`lendcore rules check`
prints them). A loaded book is immutable; `fingerprint` (SHA-256 of the files' bytes) tells
a reloader that something changed, and `versions` (name → version) go into every decision's
trace.

Hot reload: `RiskBookReloader.current()` re-reads the files at most every `interval_s`
seconds; a changed fingerprint loads a new book, which the next decision uses. A broken edit
is logged and skipped: the last good book keeps deciding, nothing restarts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cel_expr_python import cel

from lending.origination import (
    ADMISSION,
    ANTI_FRAUD,
    BASE_ROOTS,
    DECISION,
    DECISION_ROOTS,
    PRICING,
    SCORECARD,
    sample_facts,
)
from lending.pricing import Pricing, parse_pricing
from lending.rules import RiskConfigError, RuleSet, activation, parse_rule_set
from lending.scorecard import Scorecard, parse_scorecard

log = logging.getLogger("lendcore.risk")

RULE_SET_ROOTS = {ADMISSION: BASE_ROOTS, ANTI_FRAUD: BASE_ROOTS, DECISION: DECISION_ROOTS}
FILES = (ADMISSION, ANTI_FRAUD, DECISION, SCORECARD, PRICING)

RiskBookError = RiskConfigError  # the one error type of this module


@dataclass(frozen=True, eq=False)
class RiskBook:
    directory: Path
    admission: RuleSet
    anti_fraud: RuleSet
    decision: RuleSet
    scorecard: Scorecard
    pricing: Pricing
    fingerprint: str
    versions: Mapping[str, int]
    roots: frozenset[str]  # the fact roots the rule sets read

    def rule_sets(self) -> tuple[RuleSet, ...]:
        return (self.admission, self.anti_fraud, self.decision)

    def context(self, facts: Mapping[str, Any]) -> cel.Activation:
        """The facts the rules read, bound for evaluation: once per application for the
        admission and anti-fraud sets, once more with the score and the offer for the
        decision set."""
        return activation({name: facts[name] for name in self.roots if name in facts})


def _read(directory: Path) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    problems = []
    if not directory.is_dir():
        raise RiskConfigError([f"{directory}:1: risk config directory does not exist"])
    for name in FILES:
        path = directory / f"{name}.toml"
        try:
            contents[name] = path.read_bytes()
        except OSError as exc:
            problems.append(f"{path}:1: cannot read: {exc.strerror or exc}")
    if problems:
        raise RiskConfigError(problems)
    return contents


def _fingerprint(contents: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in FILES:
        data = contents[name]
        digest.update(f"{name}.toml:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def fingerprint_of(directory: Path) -> str:
    """The fingerprint the directory would load with (raises RiskConfigError)."""
    return _fingerprint(_read(directory))


def load_risk_book(directory: Path) -> RiskBook:
    """Load and validate the five files of `directory`; every problem of every file is
    reported at once in one RiskConfigError."""
    contents = _read(directory)
    problems: list[str] = []
    loaded: dict[str, Any] = {}
    for name in FILES:
        path = directory / f"{name}.toml"
        try:
            text = contents[name].decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{path}:1: not UTF-8: {exc}")
            continue
        try:
            if name in RULE_SET_ROOTS:
                loaded[name] = parse_rule_set(
                    text, path, expected_name=name, roots=RULE_SET_ROOTS[name],
                    samples=sample_facts(name),
                )
            elif name == SCORECARD:
                loaded[name] = parse_scorecard(text, path, sample_facts(SCORECARD))
            else:
                loaded[name] = parse_pricing(text, path)
        except RiskConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RiskConfigError(problems)
    rule_sets: list[RuleSet] = [loaded[ADMISSION], loaded[ANTI_FRAUD], loaded[DECISION]]
    roots = frozenset().union(*(rule_set.variables() for rule_set in rule_sets))
    return RiskBook(
        directory=directory,
        admission=loaded[ADMISSION],
        anti_fraud=loaded[ANTI_FRAUD],
        decision=loaded[DECISION],
        scorecard=loaded[SCORECARD],
        pricing=loaded[PRICING],
        fingerprint=_fingerprint(contents),
        versions={name: loaded[name].version for name in FILES},
        roots=roots & DECISION_ROOTS,
    )


def _stamp_of(directory: Path) -> tuple[tuple[int, int] | None, ...]:
    """(mtime_ns, size) of each risk file, None for a missing one: a cheap change detector."""
    stamps: list[tuple[int, int] | None] = []
    for name in FILES:
        try:
            stat = (directory / f"{name}.toml").stat()
        except OSError:
            stamps.append(None)
            continue
        stamps.append((stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def _fingerprint_or_none(directory: Path) -> str | None:
    try:
        return fingerprint_of(directory)
    except RiskConfigError:
        return None


class RiskBookReloader:
    """The current risk book of a directory, reloaded when its files change."""

    def __init__(
        self, directory: Path, interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.clock = clock
        self._checked = clock()
        self._rejected: str | None = None  # fingerprint of a broken edit, logged once
        # current() runs on the shard's write path: a stat of five files tells whether
        # anything changed; their bytes are read and hashed only when something did.
        self._stamp = _stamp_of(directory)
        # `lendcore up` refuses a broken directory before anything starts; a host that
        # restarts later (a crash) may find a broken edit left on disk. It then starts
        # without a book: applications answer 503 until the files are fixed (reloaded like
        # any edit), while repayments and reads on its shards go on.
        self.book: RiskBook | None = None
        try:
            self.book = load_risk_book(directory)
        except RiskConfigError as exc:
            self._rejected = _fingerprint_or_none(directory)
            log.error("risk config does not load; applications wait for a fix:\n%s", exc)

    def current(self) -> RiskBook | None:
        now = self.clock()
        if now - self._checked < self.interval_s:
            return self.book
        self._checked = now
        stamp = _stamp_of(self.directory)
        if stamp == self._stamp:
            return self.book
        self._stamp = stamp
        kept = self.book.fingerprint[:12] if self.book is not None else "no book"
        try:
            fingerprint = fingerprint_of(self.directory)
        except RiskConfigError as exc:
            log.warning("risk config unreadable, keeping %s: %s", kept, exc)
            return self.book
        current = self.book.fingerprint if self.book is not None else None
        if fingerprint in (current, self._rejected):
            return self.book
        try:
            book = load_risk_book(self.directory)
        except RiskConfigError as exc:
            self._rejected = fingerprint
            log.error("risk config change rejected, still deciding with %s:\n%s", kept, exc)
            return self.book
        if self.book is not None and dict(book.versions) == dict(self.book.versions):
            log.warning("risk config changed without a version bump: %s", dict(book.versions))
        log.info("risk config reloaded: %s (fingerprint %s)", dict(book.versions),
                 book.fingerprint[:12])
        self.book = book
        return book
