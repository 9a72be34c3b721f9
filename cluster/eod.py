"""End of day (日终批处理, DOMAIN.md §5): the orchestrator of one run per business date.

A run for business date D:
1. takes the Redis lock `<prefix>eod:lock` (SET NX PX, value "D:<token>", renewed every
   third of its TTL while the run lives, deleted at the end only if still ours): one run at
   a time; a second one gets 409 eod_running;
2. records eod_runs(D, running) and makes every shard host read the business date from
   Postgres (so a host that missed the last advance is right before it closes anything);
3. drives every logical shard in parallel (at most `shard_concurrency` chunks in flight per
   shard host), sending EodStep(D, chunk_loans) through the same router and shard inboxes
   as partner requests until the shard answers remaining == 0. A chunk commits the loans it
   closed, their journal entries and the shard's progress row together
   (lending/shard_state.py, storage/shard_store.py), so a crash loses at most a chunk that
   had not committed, and a rerun skips every loan already closed for D;
4. in ONE Postgres transaction: checks that every shard finished D, advances the business
   date to D + 1 only if it is still D (the fence), and marks the run done with its report,
   built from the progress rows (exact whatever crashed and resumed in between);
5. makes every host read the new date;
6. builds the daily GL summary of D (storage/gl_summary.py): only now can no journal line
   dated D commit any more. Its per-book totals and its time go into the stored report;
7. builds the settlement files of D, one per book other than `own` (cluster/settlement.py):
   their summaries go into the stored report under "settlements"; then the lock is released.

Idempotent per date: a run for a date already closed returns the stored report; a run for
the current date after a crash finishes it without closing any loan twice. A run that died
after step 4 left a report without a GL summary: asking for that date again, or the next
date's run, builds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from cluster import settlement
from cluster.config import EodSettings
from gateway.http import HttpError
from gateway.router import Overloaded, ShardRouter
from gateway.tasks import all_or_cancel
from lending.chart import Chart
from lending.commands import EodStep
from lending.shard_state import EodStepResult
from storage import audit, cluster_store, gl_summary

log = logging.getLogger("lendcore.eod")

SCHEDULER_ACTOR = "scheduler"  # the audit actor of runs nobody asked for by name
RUNNING = "running"
DONE = "done"
RETRY_AFTER_S = 5
SHARD_RETRY_DEADLINE_S = 120.0  # a shard answering 503 this long fails the run (rerun it)
SHARD_RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0)
HOST_SYNC_DEADLINE_S = 120.0
# Postgres unreachable or failing while the GL summary is built (after the date advanced).
GL_SUMMARY_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_RESULT = msgspec.json.Decoder(EodStepResult)

# Renew / release only when the lock is still this run's.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

ProgressFn = Callable[[int, EodStepResult], None]


class EodError(HttpError):
    """A run refused or failed; rendered by the operator API as is."""


def eod_running(holder: str) -> EodError:
    return EodError(409, "eod_running", f"an end-of-day run is in progress ({holder})",
                    retry_after_s=RETRY_AFTER_S)


class EodRunner:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        prefix: str,
        router: ShardRouter,
        sync_hosts: Callable[[], Awaitable[None]],
        settings: EodSettings,
        after_advance: Callable[[], None],
        chart: Chart,
    ) -> None:
        self.chart = chart  # journal lines' codes → roles, for the settlement files
        self.pool = pool
        self.redis = redis
        self.lock_key = f"{prefix}eod:lock"
        self.router = router
        self.sync_hosts = sync_hosts
        self.settings = settings
        self.after_advance = after_advance  # starts sending the outbox (cluster/outbox.py)

    # ---- the run ------------------------------------------------------------------------

    async def business_date(self) -> date:
        """The current business date, from Postgres (the scheduler asks before each run)."""
        return await cluster_store.business_date(self.pool)

    async def run(
        self, requested: date | None = None, progress: ProgressFn | None = None,
        actor: str = SCHEDULER_ACTOR,
    ) -> dict[str, Any]:
        """Run (or resume) end of day for the current business date, or return the stored
        report when `requested` is a date already closed. `actor` (the operator, or the
        scheduler) is audited with the advance of the date."""
        current = await cluster_store.business_date(self.pool)
        if requested is not None and requested != current:
            return await self._closed_report(requested, current)
        token = f"{current.isoformat()}:{uuid.uuid4().hex}"
        ttl_ms = int(self.settings.lock_ttl_s * 1000)
        if not await self.redis.set(self.lock_key, token, nx=True, px=ttl_ms):
            holder = await self.redis.get(self.lock_key)
            raise eod_running(holder.decode() if isinstance(holder, bytes) else str(holder))
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(token, ttl_ms, lost))
        try:
            # Under the lock: the date may have moved while we waited for it.
            day = await cluster_store.business_date(self.pool)
            if requested is not None and requested != day:
                return await self._closed_report(requested, day)
            return await self._run(day, progress, lost, actor)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            try:
                await self.redis.eval(_RELEASE, 1, self.lock_key, token)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("eod lock not released (%s); it expires by TTL", exc)

    async def _run(
        self, day: date, progress: ProgressFn | None, lost: asyncio.Event, actor: str
    ) -> dict[str, Any]:
        started = time.perf_counter()
        steps: dict[str, float] = {}
        await self.pool.execute(
            "INSERT INTO eod_runs (business_date, status) VALUES ($1, $2) "
            "ON CONFLICT (business_date) DO UPDATE SET attempts = eod_runs.attempts + 1 "
            "WHERE eod_runs.status <> $3",
            day, RUNNING, DONE,
        )
        log.info("end of day %s: started", day)
        await self.sync_hosts()
        steps["sync_hosts_s"] = time.perf_counter() - started
        mark = time.perf_counter()
        await self._drive_shards(day, progress, lost)
        steps["shards_s"] = time.perf_counter() - mark
        if lost.is_set():
            raise EodError(503, "unavailable", "the end-of-day lock was lost; run again",
                           retry_after_s=RETRY_AFTER_S)
        mark = time.perf_counter()
        report = await self._advance(day, steps, actor)
        steps["advance_s"] = time.perf_counter() - mark
        await self.sync_hosts()
        self.after_advance()
        report = await self._summarise_gl(day, report)
        report = await self._settle(day, report)
        log.info("end of day %s: done in %.3f s, business date now %s (%s loans)", day,
                 time.perf_counter() - started, report["next_business_date"],
                 report["loans_processed"])
        return report

    async def _renew(self, token: str, ttl_ms: int, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            try:
                renewed = await self.redis.eval(
                    _RENEW, 1, self.lock_key, token, ttl_ms)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("eod lock renewal failed (%s)", exc)
                continue
            if not renewed:
                log.error("eod lock %s lost", self.lock_key)
                lost.set()
                return

    async def _drive_shards(
        self, day: date, progress: ProgressFn | None, lost: asyncio.Event
    ) -> None:
        slots = {
            host: asyncio.Semaphore(self.settings.shard_concurrency)
            for host in set(self.router.shard_hosts)
        }
        await all_or_cancel(
            self._drive_shard(shard, day, slots[self.router.shard_hosts[shard]], progress, lost)
            for shard in range(self.router.logical_shards)
        )

    async def _drive_shard(
        self, shard: int, day: date, slot: asyncio.Semaphore, progress: ProgressFn | None,
        lost: asyncio.Event,
    ) -> None:
        step = EodStep(day, self.settings.chunk_loans)
        failing_since: float | None = None
        attempt = 0
        while not lost.is_set():
            async with slot:
                try:
                    reply = await self.router.call(shard, step)
                except Overloaded:
                    reply = None
            if reply is not None and reply.status == 200:
                failing_since, attempt = None, 0
                result = _RESULT.decode(reply.body)
                if progress is not None:
                    progress(shard, result)
                if result.remaining == 0:
                    return
                continue
            if reply is not None and reply.status not in (409, 503):
                raise EodError(503, "unavailable",
                               f"shard {shard} refused end of day {day}: {reply.body!r}",
                               retry_after_s=RETRY_AFTER_S)
            # 503 (the host is restarting, or the gateway is full) or 409 (this host has
            # not read the business date yet): wait, make hosts read it, try again.
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > SHARD_RETRY_DEADLINE_S:
                code = "?" if reply is None else reply.code
                raise EodError(503, "unavailable",
                               f"shard {shard} did not run end of day {day} ({code}); run again",
                               retry_after_s=RETRY_AFTER_S)
            await asyncio.sleep(SHARD_RETRY_BACKOFF_S[min(attempt, 3)])
            attempt += 1
            if reply is not None and reply.status == 409:
                await self.sync_hosts()

    async def _advance(
        self, day: date, steps: dict[str, float], actor: str
    ) -> dict[str, Any]:
        """The fenced switch to D + 1, the run's report and its audit row, in one
        transaction."""
        shards = self.router.logical_shards
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM eod_shard_progress WHERE business_date = $1 ORDER BY shard_id",
                day,
            )
            finished = [r for r in rows if r["finished_at"] is not None]
            if len(finished) != shards:
                raise EodError(503, "unavailable",
                               f"{len(finished)} of {shards} shards finished {day}; run again",
                               retry_after_s=RETRY_AFTER_S)
            run = await conn.fetchrow(
                "SELECT started_at, attempts FROM eod_runs WHERE business_date = $1 FOR UPDATE",
                day,
            )
            now = await conn.fetchval("SELECT now()")
            next_day = day + timedelta(days=1)
            report = build_report(day, next_day, finished, run, now, steps)
            advanced = await conn.execute(
                "UPDATE cluster_meta SET value = $2 WHERE key = 'business_date' AND value = $1",
                day.isoformat(), next_day.isoformat(),
            )
            if advanced != "UPDATE 1":
                raise EodError(409, "invalid_state",
                               f"the business date is no longer {day}: another run closed it")
            await conn.execute(
                "UPDATE eod_runs SET status = $2, finished_at = $3, report = $4::jsonb "
                "WHERE business_date = $1",
                day, DONE, now, msgspec.json.encode(report).decode(),
            )
            await audit.record(
                conn, shard_id=0, actor=actor, action="eod.run", target=f"eod:{day}",
                before={"business_date": day.isoformat()},
                after={"business_date": next_day.isoformat(),
                       "loans_processed": report["loans_processed"],
                       "attempts": report["attempts"]},
            )
        return report

    async def _closed_report(self, requested: date, current: date) -> dict[str, Any]:
        if requested > current:
            raise EodError(409, "invalid_state",
                           f"the business date is {current}: {requested} cannot run yet",
                           "business_date")
        report = await self._stored_report(requested)
        if report is None:
            raise EodError(404, "not_found", f"no end-of-day report for {requested}",
                           "business_date")
        if gl_summary.REPORT_KEY not in report:
            # Its run died between advancing the date and storing the GL summary; a host
            # may not even have read the new date yet.
            await self.sync_hosts()
            report = await self._summarise_gl(requested, report)
        return await self._settle(requested, report)

    async def _stored_report(self, day: date) -> dict[str, Any] | None:
        report = await self.pool.fetchval(
            "SELECT report FROM eod_runs WHERE business_date = $1 AND status = $2", day, DONE,
        )
        if report is None:
            return None
        result: dict[str, Any] = msgspec.json.decode(report)
        return result

    # ---- the daily GL summary (DOMAIN.md §5; storage/gl_summary.py) ----------------------

    async def _summarise_gl(self, day: date, report: dict[str, Any]) -> dict[str, Any]:
        """The GL summary of the closed date `day`; call it only once every host reads a
        later date (no line dated `day` can commit any more). When the previous date's run
        died before storing its summary, that one is built first, so that `day` opens on
        its closing instead of re-reading the whole journal."""
        previous_day = day - timedelta(days=1)
        previous = await self._stored_report(previous_day)
        if previous is not None and gl_summary.REPORT_KEY not in previous:
            await self._with_gl_summary(previous_day, previous)
        return await self._with_gl_summary(day, report)

    async def _with_gl_summary(self, day: date, report: dict[str, Any]) -> dict[str, Any]:
        """Build the summary of `day` and store its per-book totals and time in the run
        report; returns the report as stored (a concurrent request may have stored its
        own first: a date always answers the same report)."""
        if gl_summary.REPORT_KEY in report:
            return report
        again = f'POST /ops/eod {{"business_date": "{day}"}} builds it'
        try:
            return await self._build_gl_summary(day, report)
        except gl_summary.GlSummaryMismatch as exc:
            raise EodError(500, "gl_summary_mismatch",
                           f"end of day {day} is done and the business date moved on, but "
                           f"{exc}; investigate the ledger, then {again}") from exc
        except GL_SUMMARY_ERRORS as exc:
            # Not "run again": a run without a date would close the next day.
            raise EodError(503, "unavailable",
                           f"end of day {day} is done and the business date moved on, but "
                           f"its GL summary failed ({type(exc).__name__}): {again}",
                           retry_after_s=RETRY_AFTER_S) from exc

    async def _build_gl_summary(self, day: date, report: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        await gl_summary.build(self.pool, range(self.router.logical_shards), day)
        totals = await gl_summary.book_totals(self.pool, day)
        steps = {**report["steps"], "gl_summary_s": round(time.perf_counter() - started, 3)}
        summarised = {**report, "steps": steps, gl_summary.REPORT_KEY: totals}
        stored = await self.pool.fetchval(
            "UPDATE eod_runs SET report = $2::jsonb "
            "WHERE business_date = $1 AND status = $3 AND NOT report ? $4 RETURNING true",
            day, msgspec.json.encode(summarised).decode(), DONE, gl_summary.REPORT_KEY,
        )
        if stored:
            return summarised
        first = await self._stored_report(day)
        if first is None:  # only a done run gets here: its row cannot have gone back
            raise EodError(409, "invalid_state", f"the end-of-day run of {day} is not done")
        return first

    async def _settle(self, day: date, report: dict[str, Any]) -> dict[str, Any]:
        """The settlement files of the closed date `day` (and of any earlier date without
        them), once its GL summary is built; returns the report as stored."""
        again = f'POST /ops/eod {{"business_date": "{day}"}} builds them'
        try:
            return await settlement.settle(
                self.pool, self.chart, self.router.logical_shards, day, report)
        except (settlement.SettlementMismatch, settlement.SettlementError) as exc:
            raise EodError(500, "settlement_mismatch",
                           f"end of day {day} is done and the business date moved on, but "
                           f"{exc}; investigate the ledger, then {again}") from exc
        except GL_SUMMARY_ERRORS as exc:
            raise EodError(503, "unavailable",
                           f"end of day {day} is done and the business date moved on, but "
                           f"its settlement files failed ({type(exc).__name__}): {again}",
                           retry_after_s=RETRY_AFTER_S) from exc

    # ---- what operators watch -----------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The current (or last) run: status and per-shard progress, from Postgres."""
        business_date = await cluster_store.business_date(self.pool)
        run = await self.pool.fetchrow(
            "SELECT business_date, status, started_at, finished_at, attempts, report "
            "FROM eod_runs ORDER BY business_date DESC LIMIT 1"
        )
        try:
            holder = await self.redis.get(self.lock_key)
        except (aioredis.RedisError, OSError):
            holder = None
        body: dict[str, Any] = {
            "business_date": business_date.isoformat(),
            "running": holder is not None,
            "run": None,
        }
        if run is None:
            return body
        rows = {
            r["shard_id"]: r for r in await self.pool.fetch(
                "SELECT shard_id, processed, remaining, chunks, finished_at "
                "FROM eod_shard_progress WHERE business_date = $1", run["business_date"])
        }
        shards = []
        for shard in range(self.router.logical_shards):
            row = rows.get(shard)
            processed = int(row["processed"]) if row else 0
            shards.append({
                "shard_id": shard,
                "processed": processed,
                "total": processed + int(row["remaining"]) if row else None,
                "chunks": int(row["chunks"]) if row else 0,
                "done": bool(row and row["finished_at"] is not None),
            })
        known = [s for s in shards if s["total"] is not None]
        body["run"] = {
            "business_date": run["business_date"].isoformat(),
            "status": run["status"],
            "attempts": int(run["attempts"]),
            "started_at": run["started_at"].isoformat(),
            "finished_at": run["finished_at"].isoformat() if run["finished_at"] else None,
            "shards_done": sum(1 for s in shards if s["done"]),
            "shards_total": len(shards),
            "loans_processed": sum(s["processed"] for s in shards),
            "loans_total": sum(s["total"] for s in known) if len(known) == len(shards) else None,
            "shards": shards,
            "report": msgspec.json.decode(run["report"]) if run["report"] else None,
        }
        return body


def build_report(
    day: date, next_day: date, rows: list[Any], run: Any, now: Any, steps: dict[str, float]
) -> dict[str, Any]:
    """The run report from the finished progress rows (one per shard)."""
    def total(column: str) -> int:
        return sum(int(r[column]) for r in rows)

    def merged(column: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in rows:
            for key, value in msgspec.json.decode(r[column] or "{}").items():
                counts[key] = counts.get(key, 0) + int(value)
        return dict(sorted(counts.items()))

    return {
        "business_date": day.isoformat(),
        "next_business_date": next_day.isoformat(),
        "loans_processed": total("processed"),
        "accrued_interest": total("accrued_interest"),
        "accrued_penalty": total("accrued_penalty"),
        "transitions": {
            "became_overdue": total("became_overdue"),
            "non_accrual_started": total("non_accrual_started"),
            "written_off": total("written_off"),
        },
        "buckets": merged("buckets"),
        "classifications": merged("classifications"),
        "guarantee_triggers": total("guarantee_triggers"),
        "collections": {
            "cases_opened": total("cases_opened"),
            "cases_closed": total("cases_closed"),
            "cases_escalated": total("cases_escalated"),
            "promises_kept": total("promises_kept"),
            "promises_broken": total("promises_broken"),
        },
        # planned for the next business date; cluster/outbox.py sends them once it begins
        "reminders": {
            "planned": total("reminders"), "suppressed": total("reminders_suppressed")},
        "withholdings": {
            "planned": total("withholdings"), "amount": total("withholding_amount")},
        "shards": [
            {
                "shard_id": int(r["shard_id"]),
                "processed": int(r["processed"]),
                "chunks": int(r["chunks"]),
                "accrued_interest": int(r["accrued_interest"]),
                "accrued_penalty": int(r["accrued_penalty"]),
                "became_overdue": int(r["became_overdue"]),
                "duration_s": round((r["finished_at"] - r["started_at"]).total_seconds(), 3),
            }
            for r in rows
        ],
        "steps": {name: round(seconds, 3) for name, seconds in steps.items()},
        "attempts": int(run["attempts"]) if run else 1,
        "started_at": run["started_at"].isoformat() if run else None,
        "finished_at": now.isoformat(),
        "duration_s": round((now - run["started_at"]).total_seconds(), 3) if run else None,
    }
