"""Microbenchmark: 12-period equal-installment schedules per second on one core.

Run: python -m loadtests.bench_schedules [--seconds 2]

Prints `schedules_per_s=<n>` and `baseline_ratio=<x>`, where the baseline builds a plain
12-element list of tuples in the same process; the ratio (schedule cost / baseline cost)
is roughly machine-independent, so it is the figure to compare across machines and runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import date

from lending.schedules import build_schedule

DISBURSED = date(2026, 11, 29)
TERM = 12
RATE_BPS = 1800


def _build_schedules(count: int) -> None:
    # Vary the principal so no cache can hide the per-loan arithmetic.
    for i in range(count):
        build_schedule("equal_installment", 1_000_000 + i, RATE_BPS, TERM, DISBURSED)


def _build_baseline(count: int) -> None:
    for i in range(count):
        [(k, DISBURSED, 1_000_000 + i, k, 0) for k in range(1, TERM + 1)]


def _rate(work: Callable[[int], None], seconds: float) -> float:
    """Runs of `work` per second, batch size grown until one batch takes >= 0.2 s."""
    batch = 1000
    while True:
        started = time.perf_counter()
        work(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= 0.2:
            break
        batch *= 2
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        work(batch)
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    args = parser.parse_args()
    schedules_per_s = _rate(_build_schedules, args.seconds)
    baseline_per_s = _rate(_build_baseline, args.seconds)
    print(f"schedules_per_s={schedules_per_s:.0f}")
    print(f"baseline_per_s={baseline_per_s:.0f}")
    print(f"baseline_ratio={baseline_per_s / schedules_per_s:.2f}")


if __name__ == "__main__":
    main()
