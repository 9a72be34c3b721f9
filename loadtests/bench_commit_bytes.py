"""Microbenchmark: how a commit hands Postgres its byte columns (stored responses, states).

Run: python -m loadtests.bench_commit_bytes [--dsn postgresql://postgres@127.0.0.1/test]
     [--rows 1000] [--rounds 15]

A shard's commit sends each table's rows as one jsonb parameter (storage.shard_store). Its
byte columns, the ~2 KB stored response of a repayment above all, went inside that jsonb as
base64: msgspec encoded it, Postgres lexed the JSON string and decoded the base64. They now
go beside the rows as a bytea[] parameter, in binary. Both ways, here, for `--rows`
idempotency-shaped rows with a 2,048-byte body each, read back by one statement (a SELECT
of what the INSERT would take, so nothing is written):

* `base64_in_jsonb` (the baseline): `decode(r->>5, 'base64') FROM jsonb_array_elements($1)`;
* `bytea_array`: `jsonb_array_elements($1) WITH ORDINALITY JOIN unnest($2::bytea[]) WITH
  ORDINALITY USING (n)`, as `_COMMIT` does.

Each figure is the wall time per row of encoding the parameters and running the statement
on an idle connection (Postgres's CPU and the client's, one after the other), best of
`--rounds`, the two interleaved. The last line is `commit_bytes_bench ok
base64_in_jsonb_us_per_row=<a> bytea_array_us_per_row=<b> bytea_array_ratio=<b/a>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec

BODY_BYTES = 2048
_JSON = msgspec.json.Encoder()

_BASE64_IN_JSONB = """
SELECT sum(length(decode(r->>5, 'base64'))) FROM jsonb_array_elements($1::jsonb) AS r
"""
_BYTEA_ARRAY = """
SELECT sum(length(s.body))
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, n)
JOIN unnest($2::bytea[]) WITH ORDINALITY AS s(body, n) USING (n)
"""


async def measure(dsn: str, rows: int, rounds: int) -> dict[str, float]:
    bodies = [os.urandom(BODY_BYTES // 2).hex().encode() for _ in range(rows)]
    keys = [(1, "demo", f"key-{i}", "h" * 64, 201) for i in range(rows)]
    expected = rows * BODY_BYTES
    conn = await asyncpg.connect(dsn)

    async def base64_in_jsonb() -> int:
        rows_with_bodies = [(*key, body) for key, body in zip(keys, bodies, strict=True)]
        return int(await conn.fetchval(_BASE64_IN_JSONB, _JSON.encode(rows_with_bodies).decode()))

    async def bytea_array() -> int:
        return int(await conn.fetchval(_BYTEA_ARRAY, _JSON.encode(keys).decode(), bodies))

    ways: dict[str, Callable[[], Awaitable[int]]] = {
        "base64_in_jsonb": base64_in_jsonb, "bytea_array": bytea_array}
    best = dict.fromkeys(ways, float("inf"))
    try:
        for _ in range(rounds):
            for name, way in ways.items():
                started = time.perf_counter()
                if await way() != expected:
                    raise RuntimeError(f"{name}: Postgres read back other bytes")
                best[name] = min(best[name], (time.perf_counter() - started) / rows * 1e6)
    finally:
        await conn.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1/test")
    parser.add_argument("--rows", type=int, default=1000, help="rows per statement")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of each (best counts)")
    args = parser.parse_args()
    if args.rows < 1 or args.rounds < 1:
        parser.error("--rows and --rounds must be at least 1")
    best = asyncio.run(measure(args.dsn, args.rows, args.rounds))
    print(f"commit_bytes_bench ok base64_in_jsonb_us_per_row={best['base64_in_jsonb']:.1f} "
          f"bytea_array_us_per_row={best['bytea_array']:.1f} "
          f"bytea_array_ratio={best['bytea_array'] / best['base64_in_jsonb']:.2f}", flush=True)


if __name__ == "__main__":
    main()
