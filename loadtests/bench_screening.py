"""Microbenchmark: the gateway's CPU per screening of an application by its external sources.

Run: python -m loadtests.bench_screening [--rounds 7] [--screenings 2000]

Every application is screened by the nine external data sources of `[connectors]` (credit
bureaus, anti-fraud vendors, identity checks), each behind its breaker, retry policy and
metrics (`gateway.connectors.ConnectorRunner`). With the development config the sources are
simulators that answer at once, so this is the runner's own cost, the same the gateway pays
per application.

* `screening_us`: process CPU per `ConnectorRunner.screen` of one application, best of
  `--rounds` rounds of `--screenings`;
* `baseline_us` (measured in the same run, interleaved): as many awaited no-op coroutines as
  there are sources, each returning a dict: the floor of calling nine sources at all.

The last line is `screening_bench ok sources=<n> screening_us=<a> baseline_us=<b>
screening_ratio=<a/b>`.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

import uvloop

from cluster.config import load_settings
from gateway.connectors import ConnectorRunner, SourceRequest


async def _noop_source(name: str) -> dict[str, object]:
    return {"source": name}


async def _screenings(runner: ConnectorRunner, request: SourceRequest, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        results = await runner.screen(request)
        if len(results) != len(runner.sources):
            raise RuntimeError(f"screened by {len(results)} of {len(runner.sources)} sources")
    return (time.process_time() - started) / count * 1e6


async def _baseline(sources: tuple[str, ...], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        for name in sources:
            await _noop_source(name)
    return (time.process_time() - started) / count * 1e6


async def measure(rounds: int, screenings: int) -> tuple[int, float, float]:
    runner = ConnectorRunner.from_settings(load_settings().connectors)
    request = SourceRequest(
        id_hash="0" * 64, id_number="110101199003077777", name="张三", phone="13800000000",
        birth_date=date(1990, 3, 7), amount=1_000_000,
    )
    best_screening = best_baseline = float("inf")
    try:
        for _ in range(rounds):
            best_screening = min(best_screening, await _screenings(runner, request, screenings))
            best_baseline = min(best_baseline, await _baseline(runner.sources, screenings))
    finally:
        await runner.aclose()
    return len(runner.sources), best_screening, best_baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds (best counts)")
    parser.add_argument("--screenings", type=int, default=2000, help="screenings per round")
    args = parser.parse_args()
    if args.rounds < 1 or args.screenings < 1:
        parser.error("--rounds and --screenings must be at least 1")
    sources, screening, baseline = uvloop.run(measure(args.rounds, args.screenings))
    print(f"screening_bench ok sources={sources} screening_us={screening:.1f} "
          f"baseline_us={baseline:.2f} screening_ratio={screening / baseline:.0f}", flush=True)


if __name__ == "__main__":
    main()
