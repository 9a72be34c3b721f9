"""Microbenchmark: 12-period equal-installment schedules per second on one core.

Run: python -m loadtests.bench_schedules [--seconds 2]

Prints `schedules_per_s=<n>`, `baseline_per_s=<n>` and `baseline_ratio=<x>`, where the
baseline builds a plain 12-element list of tuples in the same process; the ratio (schedule
cost / baseline cost) is roughly machine-independent, so it is the figure to compare across
machines and runs. A thin wrapper: the work and the timing live in
`loadtests.bench_servicing`, which measures this figure along with the other servicing ones.
"""

from __future__ import annotations

import argparse

from loadtests.bench_servicing import baseline_work, rates, schedules_work


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    args = parser.parse_args()
    figures = rates({"schedules": schedules_work, "baseline": baseline_work}, args.seconds)
    print(f"schedules_per_s={figures['schedules']:.0f}")
    print(f"baseline_per_s={figures['baseline']:.0f}")
    print(f"baseline_ratio={figures['baseline'] / figures['schedules']:.2f}")


if __name__ == "__main__":
    main()
