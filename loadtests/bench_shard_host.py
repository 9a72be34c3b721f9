"""Microbenchmark: what one shard host spends per repayment, without Ray and without HTTP.

Run: python -m loadtests.bench_shard_host [--calls 300] [--rounds 5] [--loans-per-shard 300]

A shard host (actors.host.ShardHostCore, the code inside the Ray actor) of 8 logical shards,
as each of the two hosts of the default configuration has, over a database of its own on the
configured Postgres (created and dropped here; Redis only for its lease claims). Loans are
seeded by the shards' own SeedLoans command (over the catalog's products; the calls
repay those of CASH_EI_12, the whole bench's product). Then calls are made as the gateway
makes them:
`host.submit(payload)` with the payload the router encodes (lending.commands.BATCH_ENCODER
over Envelopes of Repay commands of 100 fen each, every loan of the call on a different
shard in turn), one call at a time:

* `call15`: calls of 15 repayments, the size of a single-request repayment call under the
  bench's 64 clients (`commands_per_ray_call`);
* `call15one`: calls of 15 repayments all on one shard (each call on the next shard): the
  same work as `call15` in one shard batch and one fence instead of eight, so the
  difference is what spreading a call over the host's shards costs;
* `call1000`: calls of 1,000 repayments, a batch request's;
* `call1`: calls of one repayment: what a call and its commit cost whatever they carry (one
  shard, one statement, one round trip), the fixed part of the two figures above.

Figures, per repayment: `<call>_host_us`, the CPU of this process (the host's Python and
asyncpg: applying, the group commit, encoding the replies), and `<call>_postgres_us`, the
CPU of every Postgres process meanwhile (psutil; run it on an otherwise idle Postgres).

The baseline, measured in the same run: `domain_us`, `lending.shard_state.apply_batch` alone
(the domain's work for the same calls: the repayments applied, their journal entries and
replies built; no commit, nothing kept). `<call>_host_ratio` = host CPU / domain: what the
host's machinery costs on top of the domain's work.

Each figure is the best of `--rounds` rounds of `--calls` calls; the last line is
`shard_host_bench ok` followed by every figure.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from dataclasses import dataclass
from datetime import date

import asyncpg
import psutil
import uvloop

from actors.host import ShardHostCore
from cluster.config import load_settings
from cluster.system import System
from lending.commands import (
    BATCH_ENCODER,
    REPLIES_DECODER,
    Command,
    Envelope,
    Repay,
    SeedLoans,
)
from lending.loans import regular_payable
from lending.memory import thaw_loan
from lending.shard_state import Prefetched, apply_batch
from storage import cluster_store
from storage.migrate import migrate

HOST_SHARDS = 8  # logical shards per host: 16 over 2 hosts by default
REPAY_FEN = 100
PARTNER = "demo"
PRODUCT = "CASH_EI_12"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
BUSINESS_DATE = date(2026, 11, 29)


@dataclass
class Figures:
    host_us: float
    postgres_us: float


def _postgres_cpu_s() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None and (proc.info["name"] or "").startswith("postgres"):
            total += times.user + times.system
    return total


@dataclass
class _Loan:
    shard_id: int
    loan_id: str
    repayments_left: int  # regular repayments of REPAY_FEN it may still take


class Calls:
    """Repay envelopes for calls of `size`, cycling over the loans, every key fresh; a loan
    is left out once its regular repayments would pass what it may take."""

    def __init__(self, loans: list[_Loan], run: str) -> None:
        self.loans = loans
        self.run = run
        self.n = 0
        self._next = 0

    def repays(self, size: int) -> list[tuple[int, Repay]]:
        """(shard, command) of `size` repayments."""
        out = []
        for _ in range(size):
            loan = self._take()
            key = f"{self.run}-{self.n}"
            out.append((loan.shard_id, Repay(PARTNER, key, key.ljust(64, "0"), loan.loan_id,
                                             REPAY_FEN, key, "regular")))
            self.n += 1
        return out

    def _take(self) -> _Loan:
        for _ in range(len(self.loans)):
            loan = self.loans[self._next % len(self.loans)]
            self._next += 1
            if loan.repayments_left > 0:
                loan.repayments_left -= 1
                return loan
        raise RuntimeError("every loan took all it may: run with more --loans-per-shard")


async def _host_round(host: ShardHostCore, calls: Calls, size: int, count: int) -> Figures:
    payloads = [BATCH_ENCODER.encode([Envelope(shard, command)
                                      for shard, command in calls.repays(size)])
                for _ in range(count)]
    pg_before, cpu_before = _postgres_cpu_s(), time.process_time()
    for payload in payloads:
        replies = REPLIES_DECODER.decode(await host.submit(payload))
        refused = [r for r in replies if r.status != 201]
        if refused:
            raise RuntimeError(f"a repayment was refused: {refused[0]}")
    cpu, pg = time.process_time() - cpu_before, _postgres_cpu_s() - pg_before
    repayments = size * count
    return Figures(cpu * 1e6 / repayments, pg * 1e6 / repayments)


def _domain_round(host: ShardHostCore, calls: Calls, size: int, count: int) -> float:
    """apply_batch alone over the same kind of calls, per shard as the host splits them."""
    batches = []
    for _ in range(count):
        by_shard: dict[int, list[Command]] = {}
        for shard, command in calls.repays(size):
            by_shard.setdefault(shard, []).append(command)
        batches.append(by_shard)
    started = time.process_time()
    for by_shard in batches:
        for shard_id, commands in by_shard.items():
            core = host.shards[shard_id]
            assert core.state is not None
            replies, _ = apply_batch(core.state, commands, Prefetched(), core.context())
            if any(r.status != 201 for r in replies):
                raise RuntimeError("the domain refused a repayment")
    return (time.process_time() - started) * 1e6 / (size * count)


async def _seed(host: ShardHostCore, loans_per_shard: int) -> None:
    business_date = host.shards[0].context().business_date
    envelopes = [Envelope(s, SeedLoans(loans_per_shard, s, business_date, PARTNER))
                 for s in range(HOST_SHARDS)]
    for reply in REPLIES_DECODER.decode(await host.submit(BATCH_ENCODER.encode(envelopes))):
        if reply.status != 200:
            raise RuntimeError(f"seeding failed: {reply}")


def _loans(host: ShardHostCore) -> list[_Loan]:
    """The seeded loans of PRODUCT (the whole bench's), each with the regular repayments it
    may still take, interleaved: consecutive repayments fall on different shards."""
    by_shard: dict[int, list[tuple[str, int]]] = {}
    for shard_id, core in sorted(host.shards.items()):
        assert core.state is not None
        day = core.context().business_date
        by_shard[shard_id] = sorted(
            (loan_id, regular_payable(thaw_loan(loan), day))
            for loan_id, loan in core.state.loans.items() if loan.product_code == PRODUCT)
    return [_Loan(shard, loans[i][0], loans[i][1] // REPAY_FEN)
            for i in range(min(map(len, by_shard.values())))
            for shard, loans in by_shard.items()]


def _runs_on_one_shard(loans: list[_Loan], size: int) -> list[_Loan]:
    """The same loans (the same objects: what each may still take is shared) ordered so that
    each run of `size` consecutive repayments falls on one shard, the shards in turn."""
    by_shard: dict[int, list[_Loan]] = {}
    for loan in loans:
        by_shard.setdefault(loan.shard_id, []).append(loan)
    runs = [[shard_loans[i:i + size] for i in range(0, len(shard_loans) - size + 1, size)]
            for shard_loans in by_shard.values()]
    if not runs or not all(runs):
        raise RuntimeError(f"fewer than {size} loans of {PRODUCT} on some shard: run with more "
                           "--loans-per-shard")
    return [loan for turn in zip(*runs, strict=True) for run in turn for loan in run]


async def run(admin_dsn: str, redis_url: str, calls_per_round: int, rounds: int,
              loans_per_shard: int) -> dict[str, float]:
    name = f"lendcore_bench_host_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.partition("?")[0].rpartition("/")[0]
    dsn = f"{base}/{name}"
    host = None
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            await cluster_store.initialise(conn, HOST_SHARDS * 2, BUSINESS_DATE)
        finally:
            await conn.close()
        settings = load_settings(None)
        system = System(settings, dsn, redis_url)
        config = system.host_config(0, list(range(HOST_SHARDS)))
        host = ShardHostCore(config.__class__(**{
            **{f: getattr(config, f) for f in config.__struct_fields__},
            "redis_prefix": f"lendcore-bench-host-{uuid.uuid4().hex[:8]}:",
        }))
        await host.ensure_started()
        await _seed(host, loans_per_shard)
        loans, run_id = _loans(host), uuid.uuid4().hex[:8]
        calls = Calls(loans, run_id)
        one_shard = Calls(_runs_on_one_shard(loans, 15), run_id + "-one")
        sizes = {"call15": (calls, 15, calls_per_round),
                 "call15one": (one_shard, 15, calls_per_round),
                 "call1000": (calls, 1000, max(2, calls_per_round // 60)),
                 "call1": (calls, 1, calls_per_round)}
        best: dict[str, float] = {}
        for _ in range(rounds):
            best["domain_us"] = min(best.get("domain_us", 1e9),
                                    _domain_round(host, calls, 15, calls_per_round))
            for label, (source, size, count) in sizes.items():
                figures = await _host_round(host, source, size, count)
                best[f"{label}_host_us"] = min(best.get(f"{label}_host_us", 1e9),
                                               figures.host_us)
                best[f"{label}_postgres_us"] = min(best.get(f"{label}_postgres_us", 1e9),
                                                   figures.postgres_us)
        for label in sizes:
            best[f"{label}_host_ratio"] = best[f"{label}_host_us"] / best["domain_us"]
        return best
    finally:
        if host is not None:
            await host.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("LENDCORE_PG_DSN") or DEFAULT_DSN,
                        help="a Postgres where this may create and drop a database")
    parser.add_argument("--redis", default=os.environ.get("LENDCORE_REDIS_URL") or DEFAULT_REDIS)
    parser.add_argument("--calls", type=int, default=300, help="calls of 15 per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loans-per-shard", type=int, default=300)
    args = parser.parse_args()
    if not (1 <= args.calls <= 100_000 and 1 <= args.rounds <= 1000
            and 15 <= args.loans_per_shard <= 5000):
        parser.error("--calls 1..100000, --rounds 1..1000, --loans-per-shard 15..5000")
    figures = uvloop.run(run(args.dsn, args.redis, args.calls, args.rounds,
                             args.loans_per_shard))
    print("shard_host_bench ok " + " ".join(
        f"{k}={v:.2f}" if k.endswith("ratio") else f"{k}={v:.1f}"
        for k, v in sorted(figures.items())), flush=True)


if __name__ == "__main__":
    main()
