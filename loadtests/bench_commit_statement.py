"""Microbenchmark: what the shard commit statement (storage.shard_store) costs Postgres.

Run: python -m loadtests.bench_commit_statement [--dsn postgresql://postgres@127.0.0.1/test]
     [--rows 1000] [--rounds 15]

1. Byte columns. A commit sends each table's rows as one jsonb parameter. Its byte
   columns, the ~2 KB stored response of a repayment above all, went inside that jsonb as
   base64: msgspec encoded it, Postgres lexed the JSON string and decoded the base64. They
   now go beside the rows as a bytea[] parameter, in binary. Both ways, for `--rows`
   idempotency-shaped rows with a 2,048-byte body each, read back by one statement (a
   SELECT of what the INSERT would take, so nothing is written):
   * `base64_in_jsonb` (the baseline): `decode(r->>5, 'base64') FROM jsonb_array_elements($1)`;
   * `bytea_array`: `jsonb_array_elements($1) WITH ORDINALITY JOIN unnest($2::bytea[]) WITH
     ORDINALITY USING (n)`, as the commit statement does.
   Figure: wall time per row of encoding the parameters and running the statement on an idle
   connection (Postgres's CPU and the client's, one after the other).

2. Writes a commit does not need. A statement used to carry all of its twenty parts
   (the fence and one write per table) whatever the batch held; it now holds the fence and
   the writes whose rows the batch has. Both ways, the statement the production code puts
   together (`storage.shard_store._statement`) for a group commit of 8 shards with no rows,
   in a database of its own with the schema (created and dropped here), so the figure is
   what the parts cost by being there:
   * `all_writes` (the baseline): every part;
   * `repayment_writes`: the parts a batch of repayments has (stored loans, repayments,
     journal lines, balances, the day's movements, idempotency, partner references).
   Figure: wall time of one statement (it commits: the fence renews 8 leases).

Each figure is the best of `--rounds`, the two ways of each interleaved. The last line is
`commit_statement_bench ok` followed by every figure and the ratio of each new way to its
baseline (`bytea_array_ratio`, `repayment_writes_ratio`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

from storage.migrate import migrate
from storage.shard_store import _WRITES, _statement

BODY_BYTES = 2048
GROUP_SHARDS = 8
REPAYMENT_WRITES = ("stored_ids", "repayments", "lines", "balances", "movements",
                    "idempotency", "refs")
_JSON = msgspec.json.Encoder()

_BASE64_IN_JSONB = """
SELECT sum(length(decode(r->>5, 'base64'))) FROM jsonb_array_elements($1::jsonb) AS r
"""
_BYTEA_ARRAY = """
SELECT sum(length(s.body))
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, n)
JOIN unnest($2::bytea[]) WITH ORDINALITY AS s(body, n) USING (n)
"""


async def _best(ways: dict[str, Callable[[], Awaitable[None]]], rounds: int,
                per: int = 1) -> dict[str, float]:
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            await way()
            best[name] = min(best[name], (time.perf_counter() - started) / per)
    return best


async def byte_columns(dsn: str, rows: int, rounds: int) -> dict[str, float]:
    """µs per row: base64 inside the jsonb, against a bytea[] beside it."""
    bodies = [os.urandom(BODY_BYTES // 2).hex().encode() for _ in range(rows)]
    keys = [(1, "demo", f"key-{i}", "h" * 64, 201) for i in range(rows)]
    expected = rows * BODY_BYTES
    conn = await asyncpg.connect(dsn)

    async def check(total: Any, name: str) -> None:
        if total != expected:
            raise RuntimeError(f"{name}: Postgres read back other bytes")

    async def base64_in_jsonb() -> None:
        rows_with_bodies = [(*key, body) for key, body in zip(keys, bodies, strict=True)]
        await check(await conn.fetchval(
            _BASE64_IN_JSONB, _JSON.encode(rows_with_bodies).decode()), "base64_in_jsonb")

    async def bytea_array() -> None:
        await check(await conn.fetchval(
            _BYTEA_ARRAY, _JSON.encode(keys).decode(), bodies), "bytea_array")

    try:
        best = await _best({"base64_in_jsonb": base64_in_jsonb, "bytea_array": bytea_array},
                           rounds, per=rows)
    finally:
        await conn.close()
    return {name: seconds * 1e6 for name, seconds in best.items()}


def _empty_values() -> dict[str, Any]:
    """Parameters of a group commit of GROUP_SHARDS shards with no rows at all."""
    values: dict[str, Any] = {name: "[]" for name in _WRITES}
    values.update({
        "fence_shards": list(range(GROUP_SHARDS)), "fence_next_seqs": [1] * GROUP_SHARDS,
        "fence_epochs": [1] * GROUP_SHARDS, "stored_count": 0,
    })
    for name in ("booked_states", "response_bodies", "application_states",
                 "application_traces", "customer_states", "stored_shards", "stored_ids",
                 "stored_statuses", "stored_outstanding", "stored_versions", "stored_states"):
        values[name] = []
    return values


async def unneeded_writes(dsn: str, rounds: int) -> dict[str, float]:
    """ms per statement: every write part, against only a repayment batch's."""
    database = f"lendcore_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        conn = await asyncpg.connect(dsn, database=database)
        try:
            await migrate(conn)
            await conn.execute(
                "INSERT INTO shard_lease (shard_id, owner, epoch) "
                "SELECT g, 'bench', 1 FROM generate_series(0, $1 - 1) AS g", GROUP_SHARDS)
            values = _empty_values()

            def way(writes: tuple[str, ...]) -> Callable[[], Awaitable[None]]:
                statement, names = _statement(writes)

                async def run() -> None:
                    fenced = await conn.fetchval(statement, *(values[n] for n in names))
                    if fenced != GROUP_SHARDS:
                        raise RuntimeError(f"fenced {fenced} of {GROUP_SHARDS} shards")
                return run

            best = await _best({"all_writes": way(tuple(_WRITES)),
                                "repayment_writes": way(REPAYMENT_WRITES)}, rounds)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.close()
    return {name: seconds * 1e3 for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1/test")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the byte-column test")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of each (best counts)")
    args = parser.parse_args()
    if args.rows < 1 or args.rounds < 1:
        parser.error("--rows and --rounds must be at least 1")
    columns = asyncio.run(byte_columns(args.dsn, args.rows, args.rounds))
    writes = asyncio.run(unneeded_writes(args.dsn, args.rounds))
    print("commit_statement_bench ok "
          f"base64_in_jsonb_us_per_row={columns['base64_in_jsonb']:.1f} "
          f"bytea_array_us_per_row={columns['bytea_array']:.1f} "
          f"bytea_array_ratio={columns['bytea_array'] / columns['base64_in_jsonb']:.2f} "
          f"all_writes_ms={writes['all_writes']:.3f} "
          f"repayment_writes_ms={writes['repayment_writes']:.3f} "
          f"repayment_writes_ratio={writes['repayment_writes'] / writes['all_writes']:.2f}",
          flush=True)


if __name__ == "__main__":
    main()
