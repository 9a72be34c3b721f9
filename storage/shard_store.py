"""Postgres persistence of one logical shard: lease, load, prefetch and the group commit.

A writing batch normally costs ONE round trip:
1. commit: ONE statement, hence one atomic transaction, whose first part is the lease fence
   (UPDATE shard_lease ... WHERE epoch = mine) and whose every write is conditioned on the
   fence having matched. Zero fence rows means a newer owner exists: nothing is written and
   LeaseLost is raised. The writes are data-modifying CTEs over jsonb arrays of rows (typed
   arrays for the stored loans it updates), so the statement is the same whatever the batch
   size; its last step fails it, writing nothing, unless it updated every stored loan the
   batch changed (migration 0013). The core sends it optimistically, applied
   as if no idempotency key or book-wide reference of the batch was used before; the
   idempotency and partner_refs inserts have no ON CONFLICT, so if one was, the statement
   fails on a unique index (asyncpg.UniqueViolationError) and writes nothing.
2. only after such a failure, prefetch: the durable facts the batch needs (idempotency
   records, references already in partner_refs), one query. It runs outside the commit:
   only the lease owner writes this shard, and if the lease was lost meanwhile, the fence
   refuses the write anyway. The core re-applies the batch with them and commits again
   (three round trips for that batch).
A commit of many journal entries (a group of batched repayments, an end-of-day chunk, a
seed batch) sends the rows of its biggest tables (journal lines, repayments, stored
responses, references) by COPY instead, after the statement in the same transaction
(ShardStore._write).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import asyncpg
import msgspec

from lending import ledger
from lending.collections import WEEK_DAYS, CollectionCase
from lending.memory import encode_loan_row, loan_from_row
from lending.shard_state import (
    Application,
    Customer,
    Diff,
    IdempotencyRecord,
    Prefetched,
    Review,
    ShardState,
    without_trace,
)
from storage.packed import pack_response, unpack_response


class LeaseLost(Exception):
    """A newer owner took the shard (higher epoch): this owner must stop serving it."""


class GroupNotFenced(Exception):
    """A group commit wrote nothing: some shard of the group has a newer owner."""


_ENCODER = msgspec.msgpack.Encoder()

# Stored responses (the idempotency table's body, kept for replays after Redis lost its copy)
# are lz4-compressed (storage/packed.py). Uncompressed, a repayment's reply was half of the
# WAL a repayment writes, and Postgres spent 12-13 us more inserting each.


_CUSTOMER = msgspec.msgpack.Decoder(Customer)
_APPLICATION = msgspec.msgpack.Decoder(Application)
_REVIEW = msgspec.json.Decoder(Review)  # application_reviews.state is jsonb: ops read it
_CASE = msgspec.json.Decoder(CollectionCase)  # collection_cases.state is jsonb too

LOAD_PAGE_ROWS = 20000  # rows fetched per round trip while rebuilding a shard
# Journal entries from which a commit (one shard's or a group's) sends the lines by COPY
# (ShardStore._write): the group commits of batch requests, an end-of-day chunk, a seed
# batch; the commits of single requests (a few dozen entries) stay one statement. A batch of
# that many entries alone is committed by itself, not in a group (ShardStore.is_bulk; the
# two thresholds are separate parameters so tests can take either way on its own).
COPY_ENTRIES_MIN = 200

_PREFETCH = """
SELECT 'i' AS kind, partner_id, idem_key AS ref, request_hash, status, body FROM idempotency
WHERE shard_id = $1 AND (partner_id, idem_key) IN (SELECT * FROM unnest($2::text[], $3::text[]))
UNION ALL
SELECT kind, partner_id, ref, NULL, NULL, NULL FROM partner_refs
WHERE (partner_id, kind, ref) IN (SELECT * FROM unnest($4::text[], $5::text[], $6::text[]))
"""

# The commit statement: the fence, then the writes of the batch's rows. Each table's rows
# arrive as ONE jsonb parameter (an array of positional rows): msgspec encodes that in
# microseconds, where binding a typed array per column cost ~100 us of Python per batch.
# Their byte columns (a stored response, a loan's, customer's or application's state) come
# beside them as bytea[] parameters, in the rows' order: in the jsonb they went as base64,
# which the shard encoded and Postgres lexed and decoded again, 2 KB and more for each stored
# response. A fence that matched no row makes every write insert nothing (`WHERE EXISTS
# ...fence`).
# Each part names its parameters ({name}); they are numbered when a statement is put together
# (_statement). A statement holds the fence and only the writes whose rows the commit has: an
# INSERT opens its table and each of its indexes even when it inserts nothing: the twelve
# writes a repayment batch does not need were 0.09-0.2 ms of a group commit's fixed 0.5-0.65
# ms (loadtests/bench_commit_statement.py), paid once per commit of a few dozen commands.
_FENCE = """
fence AS (
  -- every shard of the group, each at the epoch its owner holds
  UPDATE shard_lease AS s SET renewed_at = now(), next_seq = f.next_seq
  FROM unnest({fence_shards}::int4[], {fence_next_seqs}::int8[], {fence_epochs}::int8[])
    AS f(shard_id, next_seq, epoch)
  WHERE s.shard_id = f.shard_id AND s.epoch = f.epoch
  RETURNING 1
)"""
# the key of a write's rows in _commit_statement (a table's name, or `stored_ids` for the
# stored loans the batch changed) -> the write; the statement keeps this order
_WRITES: dict[str, str] = {
    "customers": """
c AS (
  INSERT INTO customers (shard_id, customer_id, id_hash, state)
  SELECT (r->>0)::int4, r->>1, r->>2, s.state
  FROM jsonb_array_elements({customers}::jsonb) WITH ORDINALITY AS t(r, n)
  JOIN unnest({customer_states}::bytea[]) WITH ORDINALITY AS s(state, n) USING (n)
  WHERE EXISTS (SELECT FROM fence)
  ON CONFLICT (shard_id, customer_id) DO UPDATE SET state = EXCLUDED.state
)""",
    "applications": """
a AS (
  INSERT INTO applications (shard_id, application_id, partner_id, partner_application_id,
                            customer_id, status, created_on, state, trace)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, r->>4, r->>5, (r->>6)::date, s.state, s.trace
  FROM jsonb_array_elements({applications}::jsonb) WITH ORDINALITY AS t(r, n)
  JOIN unnest({application_states}::bytea[], {application_traces}::bytea[])
    WITH ORDINALITY AS s(state, trace, n) USING (n)
  WHERE EXISTS (SELECT FROM fence)
  ON CONFLICT (shard_id, application_id)
  DO UPDATE SET status = EXCLUDED.status, state = EXCLUDED.state,
    trace = COALESCE(EXCLUDED.trace, applications.trace)
)""",
    "loans": """
l AS (
  -- loans the batch booked; the states come as a bytea[] beside the rows, in their order
  INSERT INTO loans (shard_id, loan_id, customer_id, partner_id, status,
                     principal_outstanding, version, state)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, r->>4, (r->>5)::int8, (r->>6)::int4, s.state
  FROM jsonb_array_elements({loans}::jsonb) WITH ORDINALITY AS t(r, n)
  JOIN unnest({booked_states}::bytea[]) WITH ORDINALITY AS s(state, n) USING (n)
  WHERE EXISTS (SELECT FROM fence)
)""",
    "stored_ids": """
lu AS (
  -- loans already stored (end of day rewrites every one of them): an UPDATE from typed
  -- arrays, not an upsert, which locked each row first (one more WAL record a loan) and
  -- parsed its columns out of JSON
  UPDATE loans AS o SET status = u.status, principal_outstanding = u.outstanding,
    version = u.version, state = u.state
  FROM unnest({stored_shards}::int4[], {stored_ids}::text[], {stored_statuses}::text[],
              {stored_outstanding}::int8[], {stored_versions}::int4[], {stored_states}::bytea[])
    AS u(shard_id, loan_id, status, outstanding, version, state)
  WHERE o.shard_id = u.shard_id AND o.loan_id = u.loan_id AND EXISTS (SELECT FROM fence)
  RETURNING 1
)""",
    "repayments": """
p AS (
  INSERT INTO repayments (shard_id, repayment_id, loan_id, partner_id, external_ref, kind,
                          amount, value_date, penalty, fee, interest, principal)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, r->>4, r->>5, (r->>6)::int8, (r->>7)::date,
         (r->>8)::int8, (r->>9)::int8, (r->>10)::int8, (r->>11)::int8
  FROM jsonb_array_elements({repayments}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
)""",
    "lines": """
j AS (
  INSERT INTO journal_lines (shard_id, entry_id, line_no, business_date, book, loan_id, cause,
                             kind, account, debit, credit)
  SELECT (r->>0)::int4, r->>1, (r->>2)::int2, (r->>3)::date, r->>4, r->>5, r->>6, r->>7, r->>8,
         (r->>9)::int8, (r->>10)::int8
  FROM jsonb_array_elements({lines}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
)""",
    "balances": """
b AS (
  INSERT INTO account_balances (shard_id, book, account, debit, credit)
  SELECT (r->>0)::int4, r->>1, r->>2, (r->>3)::int8, (r->>4)::int8
  FROM jsonb_array_elements({balances}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
  ON CONFLICT (shard_id, book, account) DO UPDATE
    SET debit = account_balances.debit + EXCLUDED.debit,
        credit = account_balances.credit + EXCLUDED.credit
)""",
    "movements": """
gm AS (
  -- the day's movements per account, for the daily GL summary (migration 0011)
  INSERT INTO gl_daily_movements (shard_id, business_date, book, account, debit, credit)
  SELECT (r->>0)::int4, (r->>1)::date, r->>2, r->>3, (r->>4)::int8, (r->>5)::int8
  FROM jsonb_array_elements({movements}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
  ON CONFLICT (shard_id, business_date, book, account) DO UPDATE
    SET debit = gl_daily_movements.debit + EXCLUDED.debit,
        credit = gl_daily_movements.credit + EXCLUDED.credit
)""",
    "idempotency": """
i AS (
  INSERT INTO idempotency (shard_id, partner_id, idem_key, request_hash, status, body)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, (r->>4)::int2, s.body
  FROM jsonb_array_elements({idempotency}::jsonb) WITH ORDINALITY AS t(r, n)
  JOIN unnest({response_bodies}::bytea[]) WITH ORDINALITY AS s(body, n) USING (n)
  WHERE EXISTS (SELECT FROM fence)
)""",
    "refs": """
x AS (
  -- no ON CONFLICT (nor on idempotency): a key or reference already used fails the whole
  -- statement; the shard then prefetches what is used and applies the batch again (409).
  INSERT INTO partner_refs (shard_id, partner_id, kind, ref, object_id)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, r->>4
  FROM jsonb_array_elements({refs}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
)""",
    "reviews": """
v AS (
  INSERT INTO application_reviews (shard_id, application_id, state)
  SELECT (r->>0)::int4, r->>1, r->2
  FROM jsonb_array_elements({reviews}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
  ON CONFLICT (shard_id, application_id) DO UPDATE SET state = EXCLUDED.state
)""",
    "audit": """
u AS (
  -- operator decisions are audited in the commit of the change they make
  INSERT INTO audit_log (shard_id, actor, action, target, before, after)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, NULLIF(r->4, 'null'::jsonb),
         NULLIF(r->5, 'null'::jsonb)
  FROM jsonb_array_elements({audit}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
)""",
    "eod": """
e AS (
  -- end-of-day progress: counts accumulate chunk after chunk (at most one row a batch)
  INSERT INTO eod_shard_progress AS g (shard_id, business_date, processed, accrued_interest,
    accrued_penalty, became_overdue, non_accrual_started, written_off, chunks, remaining,
    buckets, classifications, finished_at, guarantee_triggers, cases_opened, cases_closed,
    cases_escalated, promises_kept, promises_broken, reminders, reminders_suppressed,
    withholdings, withholding_amount)
  SELECT (r->>0)::int4, (r->>1)::date, (r->>2)::int8, (r->>3)::int8, (r->>4)::int8, (r->>5)::int8,
         (r->>6)::int8, (r->>7)::int8, (r->>8)::int4, (r->>9)::int8,
         NULLIF(r->10, 'null'::jsonb), NULLIF(r->11, 'null'::jsonb),
         CASE WHEN (r->>12)::boolean THEN now() END,
         (r->>13)::int8, (r->>14)::int8, (r->>15)::int8, (r->>16)::int8, (r->>17)::int8,
         (r->>18)::int8, (r->>19)::int8, (r->>20)::int8, (r->>21)::int8, (r->>22)::int8
  FROM jsonb_array_elements({eod}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
  ON CONFLICT (shard_id, business_date) DO UPDATE SET
    processed = g.processed + EXCLUDED.processed,
    accrued_interest = g.accrued_interest + EXCLUDED.accrued_interest,
    accrued_penalty = g.accrued_penalty + EXCLUDED.accrued_penalty,
    became_overdue = g.became_overdue + EXCLUDED.became_overdue,
    non_accrual_started = g.non_accrual_started + EXCLUDED.non_accrual_started,
    written_off = g.written_off + EXCLUDED.written_off,
    guarantee_triggers = g.guarantee_triggers + EXCLUDED.guarantee_triggers,
    cases_opened = g.cases_opened + EXCLUDED.cases_opened,
    cases_closed = g.cases_closed + EXCLUDED.cases_closed,
    cases_escalated = g.cases_escalated + EXCLUDED.cases_escalated,
    promises_kept = g.promises_kept + EXCLUDED.promises_kept,
    promises_broken = g.promises_broken + EXCLUDED.promises_broken,
    reminders = g.reminders + EXCLUDED.reminders,
    reminders_suppressed = g.reminders_suppressed + EXCLUDED.reminders_suppressed,
    withholdings = g.withholdings + EXCLUDED.withholdings,
    withholding_amount = g.withholding_amount + EXCLUDED.withholding_amount,
    chunks = g.chunks + EXCLUDED.chunks,
    remaining = EXCLUDED.remaining,
    buckets = COALESCE(EXCLUDED.buckets, g.buckets),
    classifications = COALESCE(EXCLUDED.classifications, g.classifications),
    finished_at = COALESCE(EXCLUDED.finished_at, g.finished_at)
)""",
    "cases": """
cc AS (
  INSERT INTO collection_cases (shard_id, case_id, loan_id, status, bucket, dpd, assignee,
                                follow_up_on, opened_on, state)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, r->>4, (r->>5)::int4, r->>6, (r->>7)::date,
         (r->>8)::date,
         r->9
  FROM jsonb_array_elements({cases}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
  ON CONFLICT (shard_id, case_id) DO UPDATE SET status = EXCLUDED.status,
    bucket = EXCLUDED.bucket, dpd = EXCLUDED.dpd, assignee = EXCLUDED.assignee,
    follow_up_on = EXCLUDED.follow_up_on, state = EXCLUDED.state
)""",
    "events": """
ce AS (
  INSERT INTO collection_events (shard_id, case_id, business_date, kind, actor, detail)
  SELECT (r->>0)::int4, r->>1, (r->>2)::date, r->>3, r->>4, r->5
  FROM jsonb_array_elements({events}::jsonb) WITH ORDINALITY AS t(r, n)
  WHERE EXISTS (SELECT FROM fence)
  ORDER BY n  -- event_id keeps the order the shard wrote them in
)""",
    "contacts": """
ct AS (
  INSERT INTO contact_log (shard_id, customer_id, contact_on, channel, actor, case_id,
                           request_id)
  SELECT (r->>0)::int4, r->>1, (r->>2)::date, r->>3, r->>4, r->>5, r->>6
  FROM jsonb_array_elements({contacts}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
)""",
    "requests": """
cr AS (
  INSERT INTO connector_requests (shard_id, request_id, kind, created_on, send_on, loan_id,
                                  customer_id, partner_id, amount, template, case_id)
  SELECT (r->>0)::int4, r->>1, r->>2, (r->>3)::date, (r->>4)::date, r->>5, r->>6, r->>7,
         (r->>8)::int8, r->>9, r->>10
  FROM jsonb_array_elements({requests}::jsonb) AS r
  WHERE EXISTS (SELECT FROM fence)
)""",
    "webhooks": """
wh AS (
  -- partner webhook events (the outbox cluster/webhooks.py delivers; migration 0016), in
  -- the order the shard made them (`id` is the operators' newest-first order)
  INSERT INTO webhook_events (shard_id, event_id, partner_id, event_type, order_key, loan_id,
                              occurred_on, body)
  SELECT (r->>0)::int4, r->>1, r->>2, r->>3, r->>4, r->>5, (r->>6)::date, r->>7
  FROM jsonb_array_elements({webhooks}::jsonb) WITH ORDINALITY AS t(r, n)
  WHERE EXISTS (SELECT FROM fence)
  ORDER BY n
)""",
}
# The last step fails the whole statement unless every shard was fenced and every stored loan
# the commit changed was updated (migrations 0013, 0014).
_CHECK = """
SELECT lendcore_check_group_commit((SELECT count(*) FROM fence),
                                   cardinality({fence_shards}::int4[]), {updated}, {stored_count})
"""
_PARAMETER = re.compile(r"\{(\w+)\}")


@functools.lru_cache(maxsize=256)
def _statement(writes: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The commit statement holding `writes` (keys of _WRITES, in its order), and the names
    of its parameters in their $n order. Few combinations occur (a repayment batch, an
    application batch, an end-of-day chunk...), each prepared once per connection."""
    updated = "(SELECT count(*) FROM lu)" if "stored_ids" in writes else "0"
    text = ",\n".join([_FENCE.strip(), *(_WRITES[w].strip() for w in writes)])
    text = f"WITH\n{text}\n{_CHECK.strip().replace('{updated}', updated)}\n"
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAMETER.sub(number, text), tuple(names)


_JSON = msgspec.json.Encoder()


def _rows(rows: list[tuple[Any, ...]]) -> str:
    return _JSON.encode(rows).decode()


JOURNAL_COLUMNS = ("shard_id", "entry_id", "line_no", "business_date", "book", "loan_id",
                   "cause", "kind", "account", "debit", "credit")


def journal_rows(shard_id: int, diff: Diff, codes: dict[str, str]) -> list[tuple[Any, ...]]:
    """The batch's journal lines as journal_lines rows (JOURNAL_COLUMNS), for COPY."""
    return [
        (shard_id, e.entry_id, n, e.business_date, e.book, e.loan_id, e.cause, e.kind,
         codes[line.account], line.debit, line.credit)
        for e in diff.entries
        for n, line in enumerate(e.lines)
    ]


class ShardCommit(NamedTuple):
    """One shard's part of a commit: its batch's diff, fenced at the epoch it holds."""

    shard_id: int
    epoch: int
    diff: Diff


class _Params:
    """The rows of the commit statement's parameters, gathered shard after shard; every row
    starts with its shard id."""

    def __init__(self) -> None:
        self.fence: list[tuple[int, int, int]] = []
        self.tables: dict[str, list[tuple[Any, ...]]] = {name: [] for name in _TABLES}
        self.booked_states: list[bytes] = []
        # byte columns, beside their tables' rows and in their order (see _WRITES)
        self.customer_states: list[bytes] = []
        self.application_states: list[bytes] = []
        self.application_traces: list[bytes | None] = []
        self.response_bodies: list[bytes] = []
        self.stored: list[tuple[int, str, str, int, int, bytes]] = []


# The tables whose rows go to the commit statement as jsonb parameters.
_TABLES = ("customers", "applications", "loans", "repayments", "lines", "balances",
           "idempotency", "refs", "reviews", "audit", "eod", "cases", "events", "contacts",
           "requests", "movements", "webhooks")


def _add_shard(params: _Params, part: ShardCommit, codes: dict[str, str]) -> None:
    shard_id, diff = part.shard_id, part.diff
    params.fence.append((shard_id, diff.next_seq, part.epoch))
    t = params.tables
    for c in diff.customers.values():
        t["customers"].append((shard_id, c.customer_id, c.id_hash))
        params.customer_states.append(_ENCODER.encode(c))
    for a in diff.applications.values():
        t["applications"].append((shard_id, a.application_id, a.partner_id,
                                  a.partner_application_id, a.customer_id, a.status,
                                  a.created_on))
        params.application_states.append(_ENCODER.encode(without_trace(a)))
        params.application_traces.append(None if a.trace is None else _ENCODER.encode(a.trace))
    frozen = diff.frozen_loans()
    for n in diff.loans.values():
        if n.loan_id in diff.booked:
            t["loans"].append((shard_id, n.loan_id, n.customer_id, n.partner_id, n.status,
                               n.outstanding_principal(), n.version))
            params.booked_states.append(encode_loan_row(frozen[n.loan_id]))
        else:
            params.stored.append((shard_id, n.loan_id, n.status, n.outstanding_principal(),
                                  n.version, encode_loan_row(frozen[n.loan_id])))
    t["repayments"] += [
        (shard_id, r.repayment_id, r.loan_id, r.partner_id, r.external_ref, r.kind, r.amount,
         r.value_date, r.penalty, r.fee, r.interest, r.principal)
        for r in diff.repayments
    ]
    t["lines"] += journal_rows(shard_id, diff, codes)
    daily = ledger.daily_deltas(diff.entries)  # one pass over the lines for both tables
    t["movements"] += [(shard_id, day, book, codes[role], d, c)
                       for (day, book, role), (d, c) in daily.items()]
    t["balances"] += [(shard_id, book, codes[role], d, c)
                      for (book, role), (d, c) in ledger.balances_of(daily).items()]
    for k in diff.idempotency.values():
        t["idempotency"].append((shard_id, k.partner_id, k.idem_key, k.request_hash, k.status))
        params.response_bodies.append(pack_response(k.body))
    t["refs"] += [(shard_id, *ref) for ref in diff.partner_refs]
    t["reviews"] += [(shard_id, v.application_id, v) for v in diff.reviews.values()]
    t["audit"] += [(shard_id, u.actor, u.action, u.target, u.before, u.after)
                   for u in diff.audit]
    g = diff.eod
    if g is not None:
        t["eod"].append((
            shard_id, g.business_date, g.processed, g.accrued_interest, g.accrued_penalty,
            g.became_overdue, g.non_accrual_started, g.written_off, g.chunks, g.remaining,
            g.buckets, g.classifications, g.finished, g.guarantee_triggers, g.cases_opened,
            g.cases_closed, g.cases_escalated, g.promises_kept, g.promises_broken,
            g.reminders, g.reminders_suppressed, g.withholdings, g.withholding_amount,
        ))
    t["cases"] += [
        (shard_id, c.case_id, c.loan_id, c.status, c.bucket, c.dpd, c.assignee,
         c.follow_up_on, c.opened_on, c)
        for c in diff.cases.values()
    ]
    t["events"] += [(shard_id, e.case_id, e.business_date, e.kind, e.actor, e.detail)
                    for e in diff.case_events]
    t["contacts"] += [
        (shard_id, c.customer_id, c.contact_on, c.channel, c.actor, c.case_id, c.request_id)
        for c in diff.contacts
    ]
    t["requests"] += [
        (shard_id, q.request_id, q.kind, q.created_on, q.send_on, q.loan_id, q.customer_id,
         q.partner_id, q.amount, q.template, q.case_id)
        for q in diff.requests
    ]
    t["webhooks"] += [
        (shard_id, w.event_id, w.partner_id, w.event_type, w.order_key, w.loan_id,
         w.occurred_on, w.body)
        for w in diff.webhook_events
    ]


# The writes a big commit sends by COPY after its statement, in the same transaction
# (ShardStore._write): the key of their rows in _Params.tables → table and columns, in the
# order of those rows (an idempotency row gets its stored response appended). The two whose
# unique index refuses a used key or reference go first: a refused commit stops sooner.
_COPIED: dict[str, tuple[str, tuple[str, ...]]] = {
    "idempotency": ("idempotency", (
        "shard_id", "partner_id", "idem_key", "request_hash", "status", "body")),
    "refs": ("partner_refs", ("shard_id", "partner_id", "kind", "ref", "object_id")),
    "repayments": ("repayments", (
        "shard_id", "repayment_id", "loan_id", "partner_id", "external_ref", "kind", "amount",
        "value_date", "penalty", "fee", "interest", "principal")),
    "lines": ("journal_lines", JOURNAL_COLUMNS),
}


class Copy(NamedTuple):
    """Rows a commit sends by COPY."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def _commit_statement(
    parts: list[ShardCommit], codes: dict[str, str], by_copy: bool = False
) -> tuple[str, list[Any], list[Copy]]:
    """The commit statement for the batches of one or more shards, with its parameters;
    `codes` maps account roles to chart codes. With `by_copy` the rows of the _COPIED
    tables are left out of the statement and returned, to be sent by COPY after it."""
    params = _Params()
    for part in parts:
        _add_shard(params, part, codes)
    copies: list[Copy] = []
    if by_copy:
        tables = params.tables
        tables["idempotency"] = [(*row, body) for row, body in zip(
            tables["idempotency"], params.response_bodies, strict=True)]
        params.response_bodies = []
        for key, (table, columns) in _COPIED.items():
            if tables[key]:
                copies.append(Copy(table, columns, tables[key]))
            tables[key] = []
    fence, stored = params.fence, params.stored
    values: dict[str, Any] = {
        "fence_shards": [f[0] for f in fence], "fence_next_seqs": [f[1] for f in fence],
        "fence_epochs": [f[2] for f in fence],
        "booked_states": params.booked_states, "response_bodies": params.response_bodies,
        "application_states": params.application_states,
        "application_traces": params.application_traces,
        "customer_states": params.customer_states,
        "stored_shards": [n[0] for n in stored], "stored_ids": [n[1] for n in stored],
        "stored_statuses": [n[2] for n in stored], "stored_outstanding": [n[3] for n in stored],
        "stored_versions": [n[4] for n in stored], "stored_states": [n[5] for n in stored],
        "stored_count": len(stored),
    }
    writes = []
    for write in _WRITES:
        rows = params.stored if write == "stored_ids" else params.tables[write]
        if rows:
            writes.append(write)
            if write != "stored_ids":
                values[write] = _rows(rows)
    statement, names = _statement(tuple(writes))
    return statement, [values[name] for name in names], copies


async def _load_collections(conn: asyncpg.Connection, state: ShardState) -> None:
    """Open cases, and every customer's contacts of the limits' window (a week back from
    the business date)."""
    async for rows in _pages(
        conn, "SELECT state FROM collection_cases WHERE shard_id = $1 AND status = 'open'",
        state.shard_id,
    ):
        for row in rows:
            state.keep_case(_CASE.decode(row[0]))
    async for rows in _pages(
        conn,
        "SELECT customer_id, contact_on FROM contact_log WHERE shard_id = $1 AND contact_on >= "
        "(SELECT value::date FROM cluster_meta WHERE key = 'business_date') - $2::int "
        "ORDER BY contact_on",
        state.shard_id, WEEK_DAYS,
    ):
        for customer_id, contact_on in rows:
            state.contact_logs[customer_id] = (
                *state.contact_logs.get(customer_id, ()), contact_on)


async def _pages(
    conn: asyncpg.Connection, query: str, *args: Any
) -> AsyncIterator[list[asyncpg.Record]]:
    """The rows of `query`, LOAD_PAGE_ROWS at a time (inside the caller's transaction).
    Pages, not `async for row in conn.cursor(...)`, which awaits once per row, each time
    through asyncpg's connection checks: a reload reads every row of the shard."""
    cursor = await conn.cursor(query, *args)
    while rows := await cursor.fetch(LOAD_PAGE_ROWS):
        yield rows


class ShardStore:
    """Everything a shard core asks of Postgres. One instance per shard-host process."""

    def __init__(
        self, pool: asyncpg.Pool, owner: str, codes: dict[str, str],
        copy_entries_min: int = COPY_ENTRIES_MIN, alone_entries_min: int = COPY_ENTRIES_MIN,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.codes = codes  # account role → code of the chart of accounts
        # From this many journal entries a commit sends its big tables by COPY (_write),
        # and a shard's batch is committed alone, not in a group (is_bulk).
        self.copy_entries_min = copy_entries_min
        self.alone_entries_min = alone_entries_min

    async def acquire_lease(self, shard_id: int) -> tuple[int, int]:
        """Take the shard: epoch + 1 (Postgres decides). Returns (epoch, next_seq)."""
        row = await self.pool.fetchrow(
            "UPDATE shard_lease SET owner = $2, epoch = epoch + 1, renewed_at = now() "
            "WHERE shard_id = $1 RETURNING epoch, next_seq",
            shard_id, self.owner,
        )
        if row is None:
            raise LookupError(f"shard {shard_id} has no lease row: is the database initialised?")
        return int(row["epoch"]), int(row["next_seq"])

    async def load(self, shard_id: int, next_seq: int) -> ShardState:
        state = ShardState(shard_id, next_seq)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            async for rows in _pages(conn, "SELECT state FROM customers WHERE shard_id = $1",
                                     shard_id):
                for row in rows:
                    state.keep_customer(_CUSTOMER.decode(row[0]))
            async for rows in _pages(conn, "SELECT state FROM applications WHERE shard_id = $1",
                                     shard_id):
                for row in rows:
                    state.keep_application(_APPLICATION.decode(row[0]))
            async for rows in _pages(conn, "SELECT state FROM loans WHERE shard_id = $1",
                                     shard_id):
                for row in rows:
                    state.keep_loaded_loan(loan_from_row(row[0]))
            async for rows in _pages(
                conn, "SELECT state FROM application_reviews WHERE shard_id = $1", shard_id
            ):
                for row in rows:
                    review = _REVIEW.decode(row[0])
                    state.reviews[review.application_id] = review
            await _load_collections(conn, state)
        return state

    async def prefetch(
        self, conn: asyncpg.Connection, shard_id: int, idem_keys: list[tuple[str, str]],
        refs: list[tuple[str, str, str]],
    ) -> Prefetched:
        """refs: (partner_id, kind, ref) that the batch wants to take."""
        prefetched = Prefetched()
        if not idem_keys and not refs:
            return prefetched
        rows = await conn.fetch(
            _PREFETCH, shard_id, [k[0] for k in idem_keys], [k[1] for k in idem_keys],
            [r[0] for r in refs], [r[1] for r in refs], [r[2] for r in refs],
        )
        for row in rows:
            if row["kind"] == "i":
                record = IdempotencyRecord(
                    row["partner_id"], row["ref"], row["request_hash"], row["status"],
                    unpack_response(bytes(row["body"])),
                )
                prefetched.idempotency[(record.partner_id, record.idem_key)] = record
            else:
                prefetched.refs_taken.add((row["partner_id"], row["kind"], row["ref"]))
        return prefetched

    async def commit(
        self, conn: asyncpg.Connection, shard_id: int, epoch: int, diff: Diff
    ) -> None:
        """The fenced commit of one shard's batch. Raises LeaseLost (and writes nothing) for
        a stale epoch."""
        fenced = await self._write(conn, [ShardCommit(shard_id, epoch, diff)])
        if fenced != 1:
            raise LeaseLost(f"shard {shard_id}: epoch {epoch} is no longer the owner")

    def is_bulk(self, diff: Diff) -> bool:
        """A batch big enough to be committed alone, never in a group (an end-of-day chunk,
        a seed batch): its lines go by COPY anyway, and it would hold a group back."""
        return len(diff.entries) >= self.alone_entries_min

    async def commit_group(self, conn: asyncpg.Connection, parts: list[ShardCommit]) -> None:
        """The batches of several shards in ONE statement, fenced shard by shard: all of
        them commit, or none. Raises GroupNotFenced when some shard's epoch is stale (the
        statement then wrote nothing); a PostgresError (a used idempotency key or
        reference, a failed check) also leaves nothing written. The caller then commits the
        parts one by one to learn which shard the failure belongs to."""
        fenced = await self._write(conn, parts)
        if fenced != len(parts):
            raise GroupNotFenced(f"{fenced} of {len(parts)} shards fenced")

    async def _write(self, conn: asyncpg.Connection, parts: list[ShardCommit]) -> int:
        """Write `parts`; returns how many of their shards the fence matched (when not all
        did, nothing is written). One statement, except for a commit of many journal
        entries (a group of big batches, an end-of-day chunk, a seed batch): the rows of
        its journal lines, repayments, stored responses and references (_COPIED) go by
        COPY, in one transaction after the fenced statement. COPY spares Postgres taking
        each row apart out of JSON: per row of 20,000, its CPU went from 5-6 to 2.5-3 us
        for a journal line (a batched repayment has two), 8-11 to 4.5-5.5 for a stored
        response, 4.5-5 to 2.5-3.5 for a repayment, 3-4 to 2.5-3 for a reference; and
        beside a commit that size the round trips it adds are nothing."""
        if sum(len(part.diff.entries) for part in parts) < self.copy_entries_min:
            statement, args, _ = _commit_statement(parts, self.codes)
            return int(await conn.fetchval(statement, *args))
        statement, args, copies = _commit_statement(parts, self.codes, by_copy=True)
        async with conn.transaction():
            fenced = int(await conn.fetchval(statement, *args))
            if fenced != len(parts):
                # The statement wrote nothing of a group it did not fence whole (its check
                # raised, or no shard matched); nothing may be copied either.
                return fenced
            for copy in copies:
                # A used idempotency key or reference fails its COPY like the statement's
                # INSERT would: the transaction, hence the whole commit, writes nothing.
                await conn.copy_records_to_table(
                    copy.table, columns=copy.columns, records=copy.rows)
        return fenced
