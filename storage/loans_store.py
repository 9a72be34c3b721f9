"""Operator read of one loan: its state (schedule included), repayments and journal lines.

Reads the durable rows (Postgres is the truth), never the shard's memory, so a report never
queues behind partner traffic. Every query is bounded by the loan's own rows: the loan by
its primary key, its journal lines as a range of journal_lines' primary key (shard_id,
loan_id, entry_id, line_no), its repayments by primary key from the ids its repayment
entries name (`cause`).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from lending.chart import Chart
from lending.ledger import REPAYMENT
from lending.memory import decode_loan_row
from lending.views import loan_view

JOURNAL_LINES_SHOWN_MAX = 500  # the newest; a loan writes about two lines a day it is open
REPAYMENTS_SHOWN_MAX = 200  # the newest

_JOURNAL = """
SELECT entry_id, line_no, business_date, book, cause, kind, account, debit, credit
FROM journal_lines WHERE shard_id = $1 AND loan_id = $2
ORDER BY entry_id DESC, line_no LIMIT $3
"""

_REPAYMENT_IDS = """
SELECT DISTINCT cause FROM journal_lines
WHERE shard_id = $1 AND loan_id = $2 AND kind = $3
ORDER BY cause DESC LIMIT $4
"""

_REPAYMENTS = """
SELECT repayment_id, external_ref, kind, amount, value_date, penalty, fee, interest, principal
FROM repayments WHERE shard_id = $1 AND repayment_id = ANY($2::text[])
ORDER BY repayment_id DESC
"""


async def loan_detail(
    pool: asyncpg.Pool, chart: Chart, shard_id: int, loan_id: str
) -> dict[str, Any] | None:
    """The loan as partners see it (`loan` of API.md, with its schedule) plus its partner,
    book and last closed date; its repayments and journal lines, newest first, each list
    bounded (the counts say how many there are in all). None when there is no such loan."""
    async with pool.acquire() as conn, conn.transaction(
        isolation="repeatable_read", readonly=True  # one snapshot: lines match the state
    ):
        row = await conn.fetchrow(
            "SELECT state FROM loans WHERE shard_id = $1 AND loan_id = $2", shard_id, loan_id)
        if row is None:
            return None
        lines = await conn.fetch(_JOURNAL, shard_id, loan_id, JOURNAL_LINES_SHOWN_MAX)
        line_count = await conn.fetchval(
            "SELECT count(*) FROM journal_lines WHERE shard_id = $1 AND loan_id = $2",
            shard_id, loan_id)
        repayment_ids = [r["cause"] for r in await conn.fetch(
            _REPAYMENT_IDS, shard_id, loan_id, REPAYMENT, REPAYMENTS_SHOWN_MAX)]
        repayments = await conn.fetch(_REPAYMENTS, shard_id, repayment_ids)
    loan = decode_loan_row(row["state"])
    return {
        "loan": msgspec.to_builtins(loan_view(loan)),
        "partner_id": loan.partner_id,
        "book": loan.book,
        "last_closed_on": loan.last_closed_on.isoformat() if loan.last_closed_on else None,
        "repayments": [_repayment(r) for r in repayments],
        "journal": {
            "lines": [_line(chart, r) for r in lines],
            "total_lines": int(line_count),
        },
    }


def _repayment(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "repayment_id": row["repayment_id"],
        "external_ref": row["external_ref"],
        "kind": row["kind"],
        "amount": int(row["amount"]),
        "value_date": row["value_date"].isoformat(),
        "allocation": {part: int(row[part]) for part in ("penalty", "fee", "interest",
                                                         "principal")},
    }


def _line(chart: Chart, row: asyncpg.Record) -> dict[str, Any]:
    account = chart.by_code(row["account"])
    return {
        "entry_id": row["entry_id"],
        "line_no": int(row["line_no"]),
        "business_date": row["business_date"].isoformat(),
        "book": row["book"],
        "cause": row["cause"],
        "kind": row["kind"],
        "account": account.code,
        "account_name": account.name,
        "role": account.role,
        "debit": int(row["debit"]),
        "credit": int(row["credit"]),
    }
