"""The in-process end-of-day benchmark runs and reports every figure (a few loans: this
checks the benchmark works, not how fast the code is)."""

from __future__ import annotations

import gc

from actors.heap import COLLECTOR_THRESHOLDS
from loadtests import bench_eod_shard


def test_reports_memory_and_end_of_day_figures() -> None:
    before = gc.get_threshold()
    assert before != COLLECTOR_THRESHOLDS
    figures = bench_eod_shard.measure(loans=300, chunk=100)
    assert gc.get_threshold() == before  # the host's thresholds only while it measures
    assert figures["loans"] == 300
    parts = [figures[f"live_bytes_{p}_per_loan"]
             for p in ("loans", "customers", "applications", "indexes")]
    assert all(p > 0 for p in parts) and figures["live_bytes_per_loan"] > 0
    assert figures["eod_us_per_loan"] > figures["close_day_us_per_loan"] > 0
    assert figures["eod_ratio"] > 0
    assert {"gc_runs", "gc_us_per_loan"} <= figures.keys()


def test_cli_prints_the_summary_line(capsys: object) -> None:
    assert bench_eod_shard.main(["--loans", "200", "--chunk", "50"]) == 0
    out = capsys.readouterr().out.splitlines()  # type: ignore[attr-defined]
    assert out[-1].startswith("eod_shard_bench ok loans=200 ")
