"""Microbenchmark: one shard's end of day and memory, in-process (no Postgres, no Ray).

Run: python -m loadtests.bench_eod_shard [--loans 62500] [--chunk 2000] [--python-gc]

Seeds `--loans` loans into one `ShardState` the way `POST /ops/seed` does (`SeedLoans`
commands of 2,000, committed to memory; the default is one shard's share of 1,000,000 loans
over 16 shards), then prints, as `key=value` lines:

* live_bytes_per_loan — what the shard's memory holds per loan (tracemalloc, live after
  seeding): the frozen loan, its customer, its application and the indexes;
* live_bytes_<part>_per_loan — the same split by part (loans, customers, applications,
  indexes), walking the objects with sys.getsizeof, each object counted once;
* row_bytes_per_loan — the loan's Postgres row (loans.state) as the shard writes it;
* eod_us_per_loan — the shard side of one end of day: `EodStep` chunks of `--chunk` through
  `apply_batch` and `ShardState.commit` (servicing, collections, reminder and withholding
  planning, thawing and freezing loans), until the shard reports nothing remaining;
* close_day_us_per_loan — `lending.daily.close_day` alone on the same loans (thawed outside
  the timed region): the servicing part of the figure above;
* gc_runs, gc_us_per_loan — the cycle collector's runs during the end of day and their time
  (with the shard host's thresholds, actors/heap.py; `--python-gc` keeps Python's defaults);
* eod_ratio — eod_us_per_loan / baseline_us (a plain loop building a 12-element list of
  tuples, as bench_servicing's baseline, measured in the same run).

What Postgres and the shard host's commit add is measured on the running system by
`lendcore bench --eod N` (`eod_cpu_us_<role>`).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import msgspec

from actors.heap import collect_rarely
from lending.commands import EodStep, SeedLoans
from lending.daily import ServicingPolicy, close_day
from lending.decision import RiskPolicy
from lending.memory import encode_loan_row, thaw_loan
from lending.products import load_catalog
from lending.shard_state import ApplyContext, EodStepResult, Prefetched, ShardState, apply_batch

DAY = date(2026, 11, 30)
SEED_CHUNK = 2000
_RESULT = msgspec.json.Decoder(EodStepResult)


def context() -> ApplyContext:
    root = Path(__file__).resolve().parent.parent
    return ApplyContext(DAY, load_catalog(root / "config" / "products", 2400),
                        RiskPolicy(2400, 7), ServicingPolicy())


def seeded(ctx: ApplyContext, loans: int) -> ShardState:
    state = ShardState(3)
    for start in range(0, loans, SEED_CHUNK):
        count = min(SEED_CHUNK, loans - start)
        replies, diff = apply_batch(state, [SeedLoans(count, 7, DAY)], Prefetched(), ctx)
        if replies[0].status != 200:
            raise RuntimeError(f"seed failed: {replies[0].body!r}")
        state.commit(diff)
    return state


def _children(obj: object) -> Iterable[object]:
    if isinstance(obj, msgspec.Struct):
        return [getattr(obj, name) for name in obj.__struct_fields__]
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple):
        return obj
    return ()


def deep_size(root: object, seen: set[int]) -> int:
    """Bytes of `root` and everything it reaches that `seen` does not hold yet (small ints
    and None are the interpreter's own)."""
    total, stack = 0, [root]
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, bool) or id(obj) in seen:
            continue
        if isinstance(obj, int) and -5 <= obj <= 256:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(_children(obj))
    return total


def memory_parts(state: ShardState) -> dict[str, int]:
    seen: set[int] = set()
    return {
        "loans": deep_size(state.loans, seen),
        "customers": deep_size(state.customers, seen),
        "applications": deep_size(state.applications, seen),
        "indexes": deep_size(state.customer_by_hash, seen)
        + deep_size(state.application_ids_by_ref, seen),
    }


class CollectorClock:
    """Counts the cycle collector's runs and the time they take (gc.callbacks)."""

    def __init__(self) -> None:
        self.runs = 0
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.runs += 1
            self.seconds += time.perf_counter() - self._started


def time_eod(state: ShardState, ctx: ApplyContext, chunk: int, gc_clock: CollectorClock
             ) -> float:
    gc.callbacks.append(gc_clock)
    started = time.perf_counter()
    try:
        while True:
            replies, diff = apply_batch(state, [EodStep(DAY, chunk)], Prefetched(), ctx)
            if replies[0].status != 200:
                raise RuntimeError(f"end of day failed: {replies[0].body!r}")
            state.commit(diff)
            if _RESULT.decode(replies[0].body).remaining == 0:
                return time.perf_counter() - started
    finally:
        gc.callbacks.remove(gc_clock)


def time_close_day(state: ShardState, policy: ServicingPolicy) -> float:
    thawed = [thaw_loan(loan) for loan in state.loans.values()]
    started = time.perf_counter()
    for loan in thawed:
        close_day(loan, DAY, policy)
    return time.perf_counter() - started


def baseline_us(rounds: int = 200_000) -> float:
    started = time.perf_counter()
    for n in range(rounds):
        _ = [(k, n, k * n) for k in range(12)]
    return (time.perf_counter() - started) * 1e6 / rounds


def measure(loans: int, chunk: int, python_gc: bool = False) -> dict[str, float]:
    thresholds = gc.get_threshold()
    if not python_gc:
        collect_rarely()  # as a shard host does
    try:
        return _measure(loans, chunk)
    finally:
        gc.set_threshold(*thresholds)


def _measure(loans: int, chunk: int) -> dict[str, float]:
    ctx = context()
    gc.collect()
    tracemalloc.start()
    state = seeded(ctx, loans)
    gc.collect()
    live, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    figures: dict[str, float] = {"loans": loans, "live_bytes_per_loan": round(live / loans)}
    figures["row_bytes_per_loan"] = round(
        sum(len(encode_loan_row(loan)) for loan in state.loans.values()) / loans)
    for part, size in memory_parts(state).items():
        figures[f"live_bytes_{part}_per_loan"] = round(size / loans)
    close_s = time_close_day(state, ctx.servicing)
    gc_clock = CollectorClock()
    eod_s = time_eod(state, ctx, chunk, gc_clock)
    if any(loan.last_closed_on != DAY for loan in state.loans.values()):
        raise RuntimeError("end of day left loans unclosed")
    base = baseline_us()
    figures["eod_us_per_loan"] = round(eod_s * 1e6 / loans, 1)
    figures["close_day_us_per_loan"] = round(close_s * 1e6 / loans, 1)
    figures["gc_runs"] = gc_clock.runs
    figures["gc_us_per_loan"] = round(gc_clock.seconds * 1e6 / loans, 2)
    figures["baseline_us"] = round(base, 3)
    figures["eod_ratio"] = round(eod_s * 1e6 / loans / base, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=62_500)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--python-gc", action="store_true",
                        help="keep Python's default collector thresholds (not the host's)")
    args = parser.parse_args(argv)
    if args.loans < 1 or args.chunk < 1:
        parser.error("--loans and --chunk must be >= 1")
    figures = measure(args.loans, args.chunk, args.python_gc)
    for name, value in figures.items():
        print(f"{name}={value:g}", flush=True)
    print("eod_shard_bench ok " + " ".join(f"{k}={v:g}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
