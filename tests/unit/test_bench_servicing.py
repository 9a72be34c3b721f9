"""The servicing microbenchmark runs every measured function and reports well-formed figures.

Tiny durations: this checks the benchmark works (and fails loudly when the measured code
raises or a figure goes missing), not how fast the code is.
"""

from __future__ import annotations

import re
from datetime import date

import pytest

from lending.loans import RepaymentRefused
from loadtests import bench_servicing
from loadtests.bench_servicing import FIGURES, TARGETS

SECONDS = 0.02
LOANS = 3
LINE = re.compile(r"[a-z_]+=\d+(?:\.\d+)?")


def _parse(lines: list[str]) -> dict[str, float]:
    *pairs, last = lines
    for line in pairs:
        assert LINE.fullmatch(line), line
    words = last.split(" ")
    assert words[:2] == ["servicing_bench", "ok"], last
    for word in words[2:]:
        assert LINE.fullmatch(word), word
    parsed = {name: float(value) for name, value in (line.split("=") for line in pairs)}
    assert words[2:] == [f"{name}_per_s={parsed[f'{name}_per_s']:.0f}" for name in FIGURES]
    return parsed


def test_every_figure_is_measured_positive_and_reported() -> None:
    figures = bench_servicing.measure(SECONDS, LOANS)
    assert set(figures) == {"baseline", *FIGURES}
    assert all(value > 0 for value in figures.values()), figures
    parsed = _parse(bench_servicing.report_lines(figures))
    assert parsed["baseline_per_s"] > 0
    for name in FIGURES:
        assert parsed[f"{name}_per_s"] > 0
        assert parsed[f"{name}_ratio"] > 0
    for name in TARGETS:
        assert parsed[f"{name}_meets_target"] in (0, 1)
    assert parsed["target_per_s"] == bench_servicing.TARGET_PER_S


def test_main_prints_the_lines(capsys: pytest.CaptureFixture[str]) -> None:
    bench_servicing.main(["--seconds", str(SECONDS), "--loans", str(LOANS)])
    lines = capsys.readouterr().out.splitlines()
    parsed = _parse(lines)
    assert {f"{name}_per_s" for name in FIGURES} <= set(parsed)


def test_prepared_cases_are_the_issue_s_loans() -> None:
    prepared = bench_servicing.prepare(LOANS)
    loan, kind, amount, as_of = prepared.early[0]
    assert (loan.principal, loan.term, loan.annual_rate_bps) == (1_000_000, 12, 1800)
    assert (kind, amount) == ("regular", 91_680)
    assert as_of < loan.installments[0].due_date
    late, _, late_amount, late_on = prepared.overdue[0]
    assert late_on > late.installments[0].due_date
    assert late.installments[0].penalty > 0 and late_amount > 91_680
    # varied principals: no two prepared loans alike
    assert len({case[0].principal for case in prepared.early}) == LOANS


def test_a_missing_figure_is_an_error() -> None:
    figures = dict.fromkeys(("baseline", *FIGURES), 1.0)
    del figures["payoffs"]
    with pytest.raises(KeyError):
        bench_servicing.report_lines(figures)
    figures["payoffs"] = 0.0
    with pytest.raises(RuntimeError, match="payoffs"):
        bench_servicing.report_lines(figures)


def test_a_failing_measured_function_fails_the_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepared = bench_servicing.prepare(LOANS)

    def refuse(*_args: object) -> object:
        raise RepaymentRefused("invalid_amount", "refused for the test")

    monkeypatch.setattr(bench_servicing, "apply_repayment", refuse)
    with pytest.raises(RepaymentRefused):
        bench_servicing.rates(bench_servicing.workloads(prepared), SECONDS)


def test_a_mutating_repayment_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench_servicing.apply_repayment

    def mutating(loan: bench_servicing.Loan, kind: str, amount: int, as_of: date) -> object:
        result = real(loan, kind, amount, as_of)
        loan.version += 1
        return result

    monkeypatch.setattr(bench_servicing, "apply_repayment", mutating)
    with pytest.raises(RuntimeError, match="mutated"):
        bench_servicing.prepare(1)
