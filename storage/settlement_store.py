"""Settlement files in Postgres (migration 0017; the rows and the file format are
lending/settlement.py's; end of day drives this from cluster/settlement.py).

Building date D, once no journal line dated D can commit any more:
1. `build_shard` per shard that has lines of D in a book other than `own` (found through
   gl_daily_movements' primary key), shards in parallel: in ONE transaction, claim the
   shard's day (settlement_shard_days; a concurrent builder waits, then skips it), read the
   day's lines through the partial index journal_lines_settlement, open each moved loan on
   its latest settlement_lines row before D (or, for a loan's first row, on its lines before
   D), compute the rows, check them against the shard's gl_daily_movements of D, store them.
2. `store_file` per book of D: the books that had a file on D − 1 and those moved on D.
   The records are read back from settlement_lines, rendered, hashed and inserted once
   (ON CONFLICT DO NOTHING, then the stored file is returned): a rerun, or a concurrent
   builder, gets the same bytes.

Every read is bounded by the day's movement: the partial index holds only non-own lines,
a loan's opening is one primary-key probe, a loan's first opening reads that loan's lines
(a range of the journal's primary key, which leads with shard and loan).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

import asyncpg
import msgspec

from lending import settlement
from lending.chart import Chart
from lending.settlement import (
    AMOUNT_COLUMNS,
    BALANCE_ROLES,
    CLOSING_COLUMNS,
    FLOW_ROLES,
    NO_BALANCES,
    DayLine,
    SettlementError,
    SettlementRow,
)

REPORT_KEY = "settlements"  # the run report's files; present once the date is settled
LINE_COLUMNS = ("shard_id", "book", "loan_id", "business_date", *AMOUNT_COLUMNS)

_DAY_LINES = """
SELECT book, loan_id, entry_id, kind, account, debit, credit
FROM journal_lines
WHERE business_date = $2 AND shard_id = $1 AND book <> 'own'
"""

# The latest row of each (book, loan) before the date: one backward primary-key probe each.
_PREVIOUS = """
SELECT k.book, k.loan_id, p.closing_principal_normal, p.closing_principal_overdue,
       p.closing_interest_receivable, p.closing_penalty_receivable, p.closing_fee_receivable,
       p.closing_guarantee_receivable, p.closing_off_balance_interest,
       p.closing_written_off_principal
FROM unnest($2::text[], $3::text[]) AS k(book, loan_id)
JOIN LATERAL (
  SELECT * FROM settlement_lines AS s
  WHERE s.shard_id = $1 AND s.book = k.book AND s.loan_id = k.loan_id
    AND s.business_date < $4
  ORDER BY s.business_date DESC
  LIMIT 1
) AS p ON true
"""

# A loan's first row in a book: its lines before the date (none for a new loan; a loan a
# guarantor takes over has its guarantee-fee lines), a range of the journal's primary key.
_FIRST_OPENING = """
SELECT book, loan_id, account, (sum(debit) - sum(credit))::int8 AS net
FROM journal_lines
WHERE shard_id = $1 AND loan_id = ANY($2::text[]) AND business_date < $3 AND book <> 'own'
GROUP BY book, loan_id, account
"""

_MOVEMENTS = """
SELECT book, account, debit, credit FROM gl_daily_movements
WHERE shard_id = $1 AND business_date = $2 AND book <> 'own'
"""

_SHARDS_MOVED = """
SELECT s FROM generate_series(0, $2::int - 1) AS s
WHERE EXISTS (SELECT FROM gl_daily_movements AS m
              WHERE m.shard_id = s AND m.business_date = $1 AND m.book <> 'own')
ORDER BY s
"""

_FILE_ROWS = """
SELECT loan_id, disbursed_principal, collected_principal, collected_interest, collected_fee,
       collected_penalty, collected_prepayment_fee, collected_guarantee_receivable,
       collected_total, compensation_received, compensation_paid, other_cash_in,
       other_cash_out, net_cash, closing_principal_normal, closing_principal_overdue,
       closing_interest_receivable, closing_penalty_receivable, closing_fee_receivable,
       closing_guarantee_receivable, closing_off_balance_interest,
       closing_written_off_principal
FROM settlement_lines
WHERE business_date = $1 AND book = $2
"""


class SettlementMismatch(RuntimeError):
    """A shard's rows disagree with its gl_daily_movements: nothing of that shard stored."""


async def shards_moved(pool: asyncpg.Pool, day: date, logical_shards: int) -> list[int]:
    """The shards with a line dated `day` in a book other than `own`."""
    rows = await pool.fetch(_SHARDS_MOVED, day, logical_shards)
    return [int(r["s"]) for r in rows]


async def build_shards(
    pool: asyncpg.Pool, chart: Chart, shard_ids: Iterable[int], day: date
) -> None:
    """build_shard for each shard, in parallel (bounded by the pool); raises the first
    failure once every shard has finished or failed."""
    results = await asyncio.gather(
        *(build_shard(pool, chart, shard_id, day) for shard_id in shard_ids),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def build_shard(pool: asyncpg.Pool, chart: Chart, shard_id: int, day: date) -> bool:
    """The shard's settlement rows of `day`; False when they were already built."""
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(
            "INSERT INTO settlement_shard_days (shard_id, business_date) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING RETURNING true", shard_id, day)
        if not claimed:
            return False
        role_of = {account.code: account.role for account in chart.accounts}
        lines: dict[tuple[str, str], list[DayLine]] = {}
        for r in await conn.fetch(_DAY_LINES, shard_id, day):
            lines.setdefault((r["book"], r["loan_id"]), []).append(DayLine(
                r["entry_id"], r["kind"], role_of[r["account"]], int(r["debit"]),
                int(r["credit"])))
        openings = await _openings(conn, role_of, shard_id, day, list(lines))
        # Pure Python, a few µs a line: off the event loop, which keeps serving requests.
        rows = await asyncio.to_thread(_settle_all, lines, openings)
        movements = await conn.fetch(_MOVEMENTS, shard_id, day)
        check_against_movements(shard_id, day, rows, openings, role_of, movements)
        await conn.copy_records_to_table(
            "settlement_lines", columns=LINE_COLUMNS,
            records=[(shard_id, book, loan_id, day, *row.amounts())
                     for (book, loan_id), row in sorted(rows.items())])
        await conn.execute(
            "UPDATE settlement_shard_days SET books = $3, loans = $4 "
            "WHERE shard_id = $1 AND business_date = $2",
            shard_id, day, sorted({book for book, _ in rows}), len(rows))
    return True


def _settle_all(
    lines: dict[tuple[str, str], list[DayLine]], openings: dict[tuple[str, str], tuple[int, ...]]
) -> dict[tuple[str, str], SettlementRow]:
    return {key: settlement.settle_loan(key[1], day_lines, openings[key])
            for key, day_lines in lines.items()}


async def _openings(
    conn: asyncpg.Connection, role_of: dict[str, str], shard_id: int, day: date,
    keys: list[tuple[str, str]],
) -> dict[tuple[str, str], tuple[int, ...]]:
    """Each (book, loan)'s balances before `day`: the closing of its latest row, or for
    its first row the sum of its lines before `day`."""
    openings: dict[tuple[str, str], tuple[int, ...]] = {}
    if not keys:
        return openings
    previous = await conn.fetch(
        _PREVIOUS, shard_id, [book for book, _ in keys], [loan for _, loan in keys], day)
    for r in previous:
        openings[(r["book"], r["loan_id"])] = tuple(int(r[c]) for c in CLOSING_COLUMNS)
    first = [key for key in keys if key not in openings]
    if first:
        sums: dict[tuple[str, str], list[int]] = {key: list(NO_BALANCES) for key in first}
        slot = {role: index for index, role in enumerate(BALANCE_ROLES)}
        for r in await conn.fetch(_FIRST_OPENING, shard_id,
                                  sorted({loan for _, loan in first}), day):
            balances = sums.get((r["book"], r["loan_id"]))
            index = slot.get(role_of[r["account"]])
            if balances is not None and index is not None:
                balances[index] += int(r["net"])
        openings.update({key: tuple(balances) for key, balances in sums.items()})
    return openings


def check_against_movements(
    shard_id: int, day: date, rows: dict[tuple[str, str], SettlementRow],
    openings: dict[tuple[str, str], tuple[int, ...]], role_of: dict[str, str],
    movements: Iterable[Any],
) -> None:
    """Per book: the rows' net cash is the day's net debit of the flow accounts, and each
    balance's change over the rows is the day's net debit of its account, as the commit
    path summed them into gl_daily_movements (so no line was missed or counted twice)."""
    expected: dict[tuple[str, str], int] = {}
    for r in movements:
        role = role_of[r["account"]]
        name = "net_cash" if role in FLOW_ROLES else role
        key = (r["book"], name)
        expected[key] = expected.get(key, 0) + int(r["debit"]) - int(r["credit"])
    got: dict[tuple[str, str], int] = {}
    for (book, _), row in rows.items():
        got[(book, "net_cash")] = got.get((book, "net_cash"), 0) + row.movement("net_cash")
    for key, row in rows.items():
        for role, closing, opening in zip(BALANCE_ROLES, row.closing, openings[key],
                                          strict=True):
            got[(key[0], role)] = got.get((key[0], role), 0) + closing - opening
    names = {"net_cash", *BALANCE_ROLES}
    differ = sorted(
        f"{book}/{name}: rows {got.get((book, name), 0)}, ledger {expected.get((book, name), 0)}"
        for book, name in set(got) | {key for key in expected if key[1] in names}
        if got.get((book, name), 0) != expected.get((book, name), 0))
    if differ:
        raise SettlementMismatch(
            f"settlement of {day}, shard {shard_id}: {len(differ)} figures disagree with the "
            f"day's movements ({', '.join(differ[:5])})")


# ---- files ---------------------------------------------------------------------------------


async def books_of(pool: asyncpg.Pool, day: date, shard_ids: list[int]) -> list[str]:
    """The books that get a file of `day`: those with a file of the day before, and those
    the shards that moved on `day` (`shards_moved`) moved. So a book gets a file every
    date from its first movement on."""
    rows = await pool.fetch(
        "SELECT book FROM settlement_files WHERE business_date = $1 "
        "UNION SELECT unnest(books) FROM settlement_shard_days "
        "WHERE shard_id = ANY($3::int[]) AND business_date = $2",
        day - timedelta(days=1), day, shard_ids)
    return sorted(r["book"] for r in rows)


async def store_file(pool: asyncpg.Pool, day: date, book: str) -> dict[str, Any]:
    """The file of `book` and `day`, rendered from its rows and stored unless it already
    was; returns the stored file's summary (the first one stored wins)."""
    stored = await file_summary(pool, day, book)
    if stored is not None:
        return stored
    rows = [
        SettlementRow(r["loan_id"],
                      tuple(int(r[c]) for c in settlement.MOVEMENT_COLUMNS),
                      tuple(int(r[c]) for c in CLOSING_COLUMNS))
        for r in await pool.fetch(_FILE_ROWS, day, book)
    ]
    content = await asyncio.to_thread(settlement.render, day, book, rows)
    _, digest = settlement.split_checksum(content)
    await pool.execute(
        "INSERT INTO settlement_files (business_date, book, loans, totals, sha256, content) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT DO NOTHING",
        day, book, len(rows), msgspec.json.encode(settlement.totals_by_column(rows)).decode(),
        digest, content)
    summary = await file_summary(pool, day, book)
    if summary is None:  # never: rows of settlement_files are not deleted
        raise SettlementError(f"the settlement file of {book} {day} was not stored")
    return summary


_FILE_SUMMARY = """
SELECT business_date, book, loans, totals, sha256, length(content) AS bytes, generated_at
FROM settlement_files WHERE business_date = $1 AND book = $2
"""
_FILE_LIST = """
SELECT business_date, book, loans, totals, sha256, length(content) AS bytes, generated_at
FROM settlement_files
WHERE ($1::date IS NULL OR business_date = $1) AND ($2::text IS NULL OR book = $2)
ORDER BY business_date DESC, book
LIMIT $3
"""


async def file_summary(pool: asyncpg.Pool, day: date, book: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(_FILE_SUMMARY, day, book)
    return None if row is None else _summary(row)


async def file_content(pool: asyncpg.Pool, day: date, book: str) -> tuple[bytes, str] | None:
    """The stored bytes of a file and its digest, or None."""
    row = await pool.fetchrow(
        "SELECT content, sha256 FROM settlement_files WHERE business_date = $1 AND book = $2",
        day, book)
    return None if row is None else (bytes(row["content"]), str(row["sha256"]))


async def list_files(
    pool: asyncpg.Pool, day: date | None, book: str | None, limit: int
) -> list[dict[str, Any]]:
    """Files of one date, or the latest ones (newest date first), of one book or all."""
    rows = await pool.fetch(_FILE_LIST, day, book, limit)
    return [_summary(r) for r in rows]


async def settlement_books(pool: asyncpg.Pool) -> list[str]:
    """Every book that has a settlement file (the list is short: one per funder and
    guarantor), read by skipping through settlement_files_book."""
    rows = await pool.fetch(
        "WITH RECURSIVE b AS ("
        " (SELECT book FROM settlement_files ORDER BY book LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT f.book FROM settlement_files AS f WHERE f.book > b.book"
        "         ORDER BY f.book LIMIT 1) FROM b WHERE b.book IS NOT NULL)"
        " SELECT book FROM b WHERE book IS NOT NULL")
    return [r["book"] for r in rows]


async def is_settled(pool: asyncpg.Pool, day: date) -> bool:
    """Whether the files of `day` are all stored: end of day records them in the run
    report only then (cluster/settlement.py)."""
    settled = await pool.fetchval(
        "SELECT report ? $2 FROM eod_runs WHERE business_date = $1 AND status = 'done'",
        day, REPORT_KEY)
    return bool(settled)


def _summary(row: Any) -> dict[str, Any]:
    totals: dict[str, int] = msgspec.json.decode(row["totals"])
    return {
        "book": row["book"],
        "business_date": row["business_date"].isoformat(),
        "loans": int(row["loans"]),
        "totals": {column: int(totals[column]) for column in AMOUNT_COLUMNS},
        "sha256": row["sha256"],
        "bytes": int(row["bytes"]),
        "generated_at": row["generated_at"].isoformat(),
    }
