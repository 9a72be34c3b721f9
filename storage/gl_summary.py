"""Daily GL summary (总账日汇总, DOMAIN.md §5): per book and account, the balance before the
business date, the day's debits and credits and the balance after it.

End of day builds the summary of date D once every shard host has moved to D + 1, so no
journal line dated D can commit any more (cluster/eod.py). Each shard's rows are computed
by ONE set-based statement from the day's movements (gl_daily_movements, migration 0011:
per account, the debits and credits of the lines dated D, kept by the commit that writes
the lines) and the shard's summary of D − 1 (gl_daily_summary, migration 0009), then
checked in the same transaction against the ledger's running totals (account_balances):
an error in the chain of days cannot go unnoticed. Rebuilding a date rewrites the same
rows (idempotent).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import date
from typing import Any

import asyncpg

from lending.chart import Chart

REPORT_KEY = "gl_summary"  # the run report's per-book totals; present once the summary is built

# Opening = the shard's closing of D − 1 when it has a summary of D − 1; else (the first
# summary, or after a day that was never summarised) the sum of every movement before D. Rows
# of D: every account of the opening (moved on D or not: balances carry forward) and every
# account moved on D.
_BUILD = """
WITH previous AS (
  SELECT book, account_code, closing_net_debit AS net
  FROM gl_daily_summary
  WHERE shard_id = $1 AND business_date = $2::date - 1
),
opening AS (
  SELECT book, account_code, net FROM previous
  UNION ALL
  SELECT book, account, (sum(debit) - sum(credit))::int8
  FROM gl_daily_movements
  WHERE shard_id = $1 AND business_date < $2 AND NOT EXISTS (SELECT FROM previous)
  GROUP BY book, account
),
day AS (
  SELECT book, account, debit, credit
  FROM gl_daily_movements
  WHERE shard_id = $1 AND business_date = $2
)
INSERT INTO gl_daily_summary (shard_id, business_date, book, account_code, opening_net_debit,
                              debit, credit)
SELECT $1, $2, coalesce(o.book, d.book), coalesce(o.account_code, d.account),
       coalesce(o.net, 0), coalesce(d.debit, 0), coalesce(d.credit, 0)
FROM opening AS o FULL JOIN day AS d ON d.book = o.book AND d.account = o.account_code
ON CONFLICT (shard_id, business_date, book, account_code) DO UPDATE
  SET opening_net_debit = EXCLUDED.opening_net_debit, debit = EXCLUDED.debit,
      credit = EXCLUDED.credit
"""

# The closing of D recomputed another way: the shard's running totals (account_balances,
# written in the same commit as the lines) minus the movements dated after D. One
# statement, so one snapshot of both. Right after end of day those are the few of D + 1.
_MISMATCHES = """
WITH later AS (
  SELECT book, account, (sum(debit) - sum(credit))::int8 AS net
  FROM gl_daily_movements
  WHERE shard_id = $1 AND business_date > $2
  GROUP BY book, account
),
ledger AS (
  SELECT b.book, b.account, b.debit - b.credit - coalesce(l.net, 0) AS net
  FROM account_balances AS b
  LEFT JOIN later AS l ON l.book = b.book AND l.account = b.account
  WHERE b.shard_id = $1
),
summary AS (
  SELECT book, account_code, closing_net_debit AS net
  FROM gl_daily_summary
  WHERE shard_id = $1 AND business_date = $2
)
SELECT coalesce(s.book, g.book) AS book, coalesce(s.account_code, g.account) AS account,
       coalesce(s.net, 0) AS summary, coalesce(g.net, 0) AS ledger
FROM summary AS s FULL JOIN ledger AS g ON g.book = s.book AND g.account = s.account_code
WHERE coalesce(s.net, 0) <> coalesce(g.net, 0)
ORDER BY 1, 2
"""

MISMATCHES_SHOWN_MAX = 5


class GlSummaryMismatch(RuntimeError):
    """A shard's summary closing disagrees with its ledger: nothing of that shard stored."""


async def build(pool: asyncpg.Pool, shard_ids: Iterable[int], day: date) -> None:
    """(Re)build the summary of `day` for every shard, shards in parallel (bounded by the
    pool). Raises the first failure once every shard has finished or failed."""
    results = await asyncio.gather(
        *(build_shard(pool, shard_id, day) for shard_id in shard_ids), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def build_shard(pool: asyncpg.Pool, shard_id: int, day: date) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_BUILD, shard_id, day)
        mismatches = await conn.fetch(_MISMATCHES, shard_id, day)
        if mismatches:
            shown = ", ".join(
                f"{r['book']}/{r['account']}: summary {r['summary']}, ledger {r['ledger']}"
                for r in mismatches[:MISMATCHES_SHOWN_MAX]
            )
            raise GlSummaryMismatch(
                f"daily GL summary of {day}, shard {shard_id}: {len(mismatches)} closing "
                f"balances (net debit) disagree with the ledger ({shown})"
            )


async def book_totals(pool: asyncpg.Pool, day: date) -> dict[str, dict[str, Any]]:
    """The day's debits and credits per book over every shard (for the run report)."""
    rows = await pool.fetch(
        "SELECT book, sum(debit)::int8 AS debit, sum(credit)::int8 AS credit "
        "FROM gl_daily_summary WHERE business_date = $1 GROUP BY book ORDER BY book",
        day,
    )
    return totals_per_book((r["book"], int(r["debit"]), int(r["credit"])) for r in rows)


def totals_per_book(rows: Iterable[tuple[str, int, int]]) -> dict[str, dict[str, Any]]:
    return {
        book: {"total_debit": debit, "total_credit": credit, "balanced": debit == credit}
        for book, debit, credit in rows
    }


async def known_books(pool: asyncpg.Pool, product_books: Iterable[str]) -> list[str]:
    """Every book a product can post to (lending.funding.product_books) and every book the
    ledger has posted to."""
    rows = await pool.fetch("SELECT DISTINCT book FROM account_balances")
    return sorted({*product_books, *(r["book"] for r in rows)})


async def is_built(pool: asyncpg.Pool, day: date) -> bool:
    """Whether the summary of `day` is complete: end of day records its totals in the run
    report only after every shard's rows committed."""
    built = await pool.fetchval(
        "SELECT report ? $2 FROM eod_runs WHERE business_date = $1 AND status = 'done'",
        day, REPORT_KEY,
    )
    return bool(built)


async def daily_summary(
    pool: asyncpg.Pool, chart: Chart, book: str | None, day: date
) -> dict[str, Any]:
    """The summary of `day` summed over shards, for one book or all (`book` None)."""
    rows = await pool.fetch(
        "SELECT account_code, sum(opening_net_debit)::int8 AS opening, "
        "sum(debit)::int8 AS debit, sum(credit)::int8 AS credit, "
        "sum(closing_net_debit)::int8 AS closing "
        "FROM gl_daily_summary WHERE business_date = $1 AND ($2::text IS NULL OR book = $2) "
        "GROUP BY account_code ORDER BY account_code",
        day, book,
    )
    accounts = [
        summary_account(chart, r["account_code"], int(r["opening"]), int(r["debit"]),
                        int(r["credit"]), int(r["closing"]))
        for r in rows
    ]
    total_debit = sum(int(a["debit"]) for a in accounts)
    total_credit = sum(int(a["credit"]) for a in accounts)
    return {
        "book": book,
        "business_date": day.isoformat(),
        "accounts": accounts,
        "total_debit": total_debit,
        "total_credit": total_credit,
        "balanced": total_debit == total_credit,
    }


def summary_account(
    chart: Chart, code: str, opening_net_debit: int, debit: int, credit: int,
    closing_net_debit: int,
) -> dict[str, Any]:
    """One account's row of the read, balances in the trial balance's sign convention."""
    account = chart.by_code(code)
    return {
        "code": account.code,
        "name": account.name,
        "role": account.role,
        "opening": normal_side_balance(account.side, opening_net_debit),
        "debit": debit,
        "credit": credit,
        "closing": normal_side_balance(account.side, closing_net_debit),
    }


def normal_side_balance(side: str, net_debit: int) -> int:
    """A net debit as the trial balance shows it: positive on the account's normal side."""
    if side == "debit":
        return net_debit
    if side == "credit":
        return -net_debit
    raise ValueError(f"an account side is debit or credit, not {side!r}")


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only


def parse_business_date(text: str) -> date | None:
    """A strict YYYY-MM-DD date (Python's fromisoformat also takes 20261129, 2026-W48-1…),
    or None when `text` is not one."""
    if not _ISO_DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:  # 2026-02-30: the right shape, not a day
        return None
