"""`lendcore eod`'s progress line, from GET /ops/eod bodies."""

from __future__ import annotations

from cluster.eod_cli import progress_line


def test_progress_line() -> None:
    assert progress_line({"business_date": "2026-11-29", "run": None}) == (
        "end of day 2026-11-29: starting")
    run = {"business_date": "2026-11-29", "shards_done": 1, "shards_total": 4,
           "loans_processed": 50, "loans_total": 200, "status": "running"}
    line = progress_line({"run": run})
    assert "[" + "#" * 8 + "-" * 22 + "]" in line and "50/200 loans" in line
    assert "1/4 shards" in line and line.endswith("running")
    line = progress_line({"run": {**run, "loans_total": None}})
    assert "50/? loans" in line and "25%" in line
