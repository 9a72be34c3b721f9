"""Microbenchmark: loan servicing work of one shard actor, on one core (one process, no threads).

Run: python -m loadtests.bench_servicing [--seconds 2] [--loans 256] [--profile NAME]

Figures (operations per second; every loan is a 12-period equal_installment loan at 1800 bps
disbursed on 2026-11-29, principals varied around 1,000,000 fen so no cache hides the work):

* schedules_per_s — `build_schedule` alone;
* book_loans_per_s — what booking does in the actor: schedule + `new_loan` +
  `disbursement_posting` + its journal entry (`make_entry`, ids from `make_id`);
* repayments_early_per_s — `apply_repayment(loan, "regular", first installment, as_of)` eight
  days before it is due (91,680 fen for the 1,000,000 loan; interest partly accrued by end of
  day), plus one journal entry per posting, as the actor posts them;
* repayments_overdue_per_s — the same for the first installment 13 days overdue, penalty
  accrued by `close_day` after the 3 grace days (principal overdue, penalty receivable);
* repayments_per_s — the two cases above interleaved (the headline repayment figure);
* prepayments_per_s — `prepay_reduce_installment` of about 300,000 fen mid-period, + entries;
* payoffs_per_s — `payoff` for the quoted total mid-period, + entries;
* close_day_per_s — `lending.daily.close_day` on a mid-period day with `ServicingPolicy()`
  (one interest accrual posting), + entries: the per-loan cost of end of day.

Loans are prepared outside the timed region and cycled through: `apply_repayment` and
`close_day` never mutate their input (copy-on-write, see `lending.loans`), so the same loan
is a valid input every time; the setup checks that on every prepared case.

Each figure is printed as `<name>_per_s=<n>` with `<name>_ratio=<x>`, x = baseline_per_s /
figure: how many baseline operations one operation costs. The baseline (a plain loop building
the same 12-element list of tuples as `loadtests.bench_schedules`) is measured in the same
run, so the ratios are roughly machine-independent and are what to compare across machines.
Each figure is the best of about ten or more timed batches, interleaved with those of the
other figures (see `rates`): on a shared machine an average mostly measures the neighbours.
The last line is `servicing_bench ok` followed by every figure. The target (>= 50,000/s per
core for schedules and for repayments) is reported, not asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta

import msgspec

from lending import views
from lending.daily import ServicingPolicy, close_day
from lending.ledger import JournalEntry, Posting, make_entry
from lending.loans import (
    KIND_PAYOFF,
    KIND_REDUCE_INSTALLMENT,
    KIND_REGULAR,
    Loan,
    apply_repayment,
    disbursement_posting,
    new_loan,
    payoff_quote,
)
from lending.schedules import ScheduleLine, build_schedule
from lending.shard_state import make_id

DISBURSED = date(2026, 11, 29)
TERM = 12
RATE_BPS = 1800
METHOD = "equal_installment"
PRINCIPAL = 1_000_000
FIRST_INSTALLMENT = 91_680  # of the 1,000,000 fen loan: the figure the issue quotes
SHARD = 7
BOOK = "own"
TARGET_PER_S = 50_000
DEFAULT_LOANS = 256

EARLY_ON = date(2026, 12, 20)    # 8 days before the first due date (2026-12-28)
OVERDUE_ON = date(2027, 1, 10)   # the first installment 13 days overdue, penalty accrued
MID_PERIOD = EARLY_ON            # prepayment, payoff and end of day: mid first period
PREPAY_AMOUNT = 300_000
POLICY = ServicingPolicy()

# Printed in this order; each has a `<name>_per_s` and a `<name>_ratio` line.
FIGURES = (
    "schedules",
    "book_loans",
    "repayments",
    "repayments_early",
    "repayments_overdue",
    "prepayments",
    "payoffs",
    "close_day",
    "loan_views",
)
TARGETS = ("schedules", "repayments")

Work = Callable[[int], None]
# (loan, kind, amount, as_of) of one prepared repayment
Case = tuple[Loan, str, int, date]


class _Ids:
    """Entry ids the way the actor makes them (shard + sequence), one sequence per run."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def next(self, kind: str) -> str:
        self.seq += 1
        return make_id(kind, SHARD, self.seq)


# ---- preparation (never timed) ------------------------------------------------------------


def _principal(index: int) -> int:
    """Principal of the index-th prepared loan; index 0 is the issue's 1,000,000 fen loan."""
    return PRINCIPAL + 1_000 * index


def _schedule(principal: int) -> list[ScheduleLine]:
    return build_schedule(METHOD, principal, RATE_BPS, TERM, DISBURSED)


def _book(loan_id: str, principal: int) -> Loan:
    return new_loan(
        loan_id=loan_id,
        application_id=loan_id.replace("LN", "AP"),
        customer_id=loan_id.replace("LN", "CU"),
        partner_id="demo",
        product_code="CASH_EI_12",
        product_version=1,
        book=BOOK,
        annual_rate_bps=RATE_BPS,
        apr_bps=RATE_BPS,
        repayment_method=METHOD,
        allocation="oldest_first",
        prepayment_fee_bps=0,
        disbursed_on=DISBURSED,
        payee="borrower",
        term=TERM,
        schedule=_schedule(principal),
    )


def _closed_through(loan: Loan, last: date) -> Loan:
    """The loan after end of day of every day from disbursement through `last`."""
    day = DISBURSED
    while day <= last:
        loan = close_day(loan, day, POLICY).loan
        day += timedelta(days=1)
    return loan


def _fingerprint(loan: Loan) -> bytes:
    return msgspec.json.encode(loan)


def _checked(case: Case) -> Case:
    """The case, after checking it applies, settles its amount and leaves its loan as it was
    (which is what makes re-using the loan a valid benchmark input)."""
    loan, kind, amount, as_of = case
    before = _fingerprint(loan)
    result = apply_repayment(loan, kind, amount, as_of)
    if result.allocation.total() != amount or not result.postings:
        raise RuntimeError(f"{kind} of {amount} on {loan.loan_id}: allocation "
                           f"{result.allocation} does not settle it")
    if _fingerprint(loan) != before:
        raise RuntimeError(f"apply_repayment mutated its input loan {loan.loan_id}")
    return case


class Prepared(msgspec.Struct):
    """Loans in the states the measurements start from, one per principal."""

    early: list[Case]
    overdue: list[Case]
    prepay: list[Case]
    payoff: list[Case]
    before_close: list[Loan]  # closed through MID_PERIOD - 1 day


def prepare(loan_count: int = DEFAULT_LOANS) -> Prepared:
    if loan_count < 1:
        raise ValueError("loan_count must be >= 1")
    early, overdue, prepay, payoff, before_close = [], [], [], [], []
    for index in range(loan_count):
        booked = _book(make_id("loan", SHARD, index + 1), _principal(index))
        first = booked.installments[0]
        due = first.principal + first.interest + first.fee
        if index == 0 and due != FIRST_INSTALLMENT:
            raise RuntimeError(f"first installment of {PRINCIPAL} is {due}, expected "
                               f"{FIRST_INSTALLMENT}")
        mid = _closed_through(booked, MID_PERIOD - timedelta(days=1))
        late = _closed_through(mid, OVERDUE_ON - timedelta(days=1))
        if late.installments[0].penalty <= 0 or late.dpd <= late.grace_days:
            raise RuntimeError("the overdue case must carry penalty")
        early.append(_checked((mid, KIND_REGULAR, due, MID_PERIOD)))
        overdue.append(_checked(
            (late, KIND_REGULAR, late.installments[0].unpaid_total(), OVERDUE_ON)
        ))
        prepay.append(_checked(
            (mid, KIND_REDUCE_INSTALLMENT, PREPAY_AMOUNT + index, MID_PERIOD)
        ))
        payoff.append(_checked((mid, KIND_PAYOFF, payoff_quote(mid, MID_PERIOD).total,
                                MID_PERIOD)))
        before = _fingerprint(mid)
        if not close_day(mid, MID_PERIOD, POLICY).postings or _fingerprint(mid) != before:
            raise RuntimeError("close_day on a mid-period day must accrue and not mutate")
        before_close.append(mid)
    return Prepared(early, overdue, prepay, payoff, before_close)


# ---- the measured work ----------------------------------------------------------------------


def _post(ids: _Ids, loan: Loan, cause: str, postings: Sequence[Posting],
          out: list[JournalEntry]) -> None:
    """What `_Batch.post` does for each posting: a journal entry with a fresh id."""
    for posting in postings:
        out.append(make_entry(ids.next("entry"), MID_PERIOD, loan.book, loan.loan_id, cause,
                              posting))


def schedules_work(count: int) -> None:
    # Vary the principal so no cache can hide the per-loan arithmetic.
    for i in range(count):
        build_schedule(METHOD, PRINCIPAL + i, RATE_BPS, TERM, DISBURSED)


def baseline_work(count: int) -> None:
    for i in range(count):
        [(k, DISBURSED, PRINCIPAL + i, k, 0) for k in range(1, TERM + 1)]


def make_book_work() -> Work:
    ids = _Ids()

    def book_loans(count: int) -> None:
        entries: list[JournalEntry] = []
        for i in range(count):
            loan = _book(ids.next("loan"), PRINCIPAL + i)
            _post(ids, loan, loan.loan_id, (disbursement_posting(loan),), entries)

    return book_loans


def make_repay_work(cases: Sequence[Case]) -> Work:
    """Each call applies `count` repayments, cycling through the prepared cases, and turns
    their postings into journal entries."""
    ids = _Ids()
    ring = itertools.cycle(cases)

    def repay(count: int) -> None:
        entries: list[JournalEntry] = []
        for loan, kind, amount, as_of in itertools.islice(ring, count):
            result = apply_repayment(loan, kind, amount, as_of)
            _post(ids, loan, ids.next("repayment"), result.postings, entries)

    return repay


def make_close_day_work(loans: Sequence[Loan]) -> Work:
    ids = _Ids()
    ring = itertools.cycle(loans)

    def close(count: int) -> None:
        entries: list[JournalEntry] = []
        for loan in itertools.islice(ring, count):
            result = close_day(loan, MID_PERIOD, POLICY)
            _post(ids, loan, "eod", result.postings, entries)

    return close


def make_loan_view_work(loans: Sequence[Loan]) -> Work:
    """The loan view a repayment's reply carries, rendered and encoded as the shard does."""
    ring = itertools.cycle(loans)

    def render(count: int) -> None:
        for loan in itertools.islice(ring, count):
            views.encode(views.loan_view(loan))

    return render


def workloads(prepared: Prepared) -> dict[str, Work]:
    """Figure name → work(count); `baseline` included."""
    mixed = [case for pair in zip(prepared.early, prepared.overdue, strict=True)
             for case in pair]
    return {
        "baseline": baseline_work,
        "schedules": schedules_work,
        "book_loans": make_book_work(),
        "repayments": make_repay_work(mixed),
        "repayments_early": make_repay_work(prepared.early),
        "repayments_overdue": make_repay_work(prepared.overdue),
        "prepayments": make_repay_work(prepared.prepay),
        "payoffs": make_repay_work(prepared.payoff),
        "close_day": make_close_day_work(prepared.before_close),
        "loan_views": make_loan_view_work(prepared.before_close),
    }


# ---- timing and report ----------------------------------------------------------------------


def _batch_size(work: Work, batch_s: float) -> int:
    """The smallest power-of-two count (>= 16) whose run takes at least batch_s."""
    batch = 16
    while True:
        started = time.perf_counter()
        work(batch)
        if time.perf_counter() - started >= batch_s:
            return batch
        batch *= 2


def rates(works: dict[str, Work], seconds: float) -> dict[str, float]:
    """Runs per second of each work: the best of its timed batches, as timeit does (other
    load on the machine only ever slows a batch down). The batches are interleaved, one of
    each work per round, over about `seconds` per work, so a noisy spell hits every figure
    (and the baseline) alike instead of spoiling one of them. A batch takes at least
    min(0.1 s, seconds / 10): about ten batches or more per work."""
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    batch_s = min(0.1, seconds / 10)
    batches = {name: _batch_size(work, batch_s) for name, work in works.items()}
    best = dict.fromkeys(works, float("inf"))
    deadline = time.perf_counter() + seconds * len(works)
    while time.perf_counter() < deadline:
        for name, work in works.items():
            started = time.perf_counter()
            work(batches[name])
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: batches[name] / best[name] for name in works}


def rate(work: Work, seconds: float) -> float:
    """Runs of `work` per second (see `rates`)."""
    return rates({"work": work}, seconds)["work"]


def measure(seconds: float, loan_count: int = DEFAULT_LOANS) -> dict[str, float]:
    """Every figure and the baseline, in operations per second, measured in this process."""
    return rates(workloads(prepare(loan_count)), seconds)


def report_lines(figures: dict[str, float]) -> list[str]:
    """The `name=value` lines, then the final `servicing_bench ok ...` line."""
    baseline = figures["baseline"]
    lines = [f"baseline_per_s={baseline:.0f}"]
    summary = []
    for name in FIGURES:
        per_s = figures[name]
        if not per_s > 0:
            raise RuntimeError(f"{name}: no measurement")
        lines.append(f"{name}_per_s={per_s:.0f}")
        lines.append(f"{name}_ratio={baseline / per_s:.2f}")
        summary.append(f"{name}_per_s={per_s:.0f}")
    lines.append(f"target_per_s={TARGET_PER_S}")
    for name in TARGETS:
        lines.append(f"{name}_meets_target={int(figures[name] >= TARGET_PER_S)}")
    lines.append("servicing_bench ok " + " ".join(summary))
    return lines


def profile(name: str, seconds: float, loan_count: int, top: int = 30) -> None:
    """cProfile one workload for about `seconds`; prints the top functions by own time."""
    work = workloads(prepare(loan_count))[name]
    profiler = cProfile.Profile()
    profiler.enable()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        work(1000)
        done += 1000
    profiler.disable()
    print(f"profile {name}: {done} operations (per-call times are inflated by cProfile)")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per figure")
    parser.add_argument("--loans", type=int, default=DEFAULT_LOANS,
                        help="prepared loans cycled through by each servicing figure")
    parser.add_argument("--profile", choices=("baseline", *FIGURES),
                        help="cProfile this workload instead of measuring every figure")
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.profile, args.seconds, args.loans)
        return
    for line in report_lines(measure(args.seconds, args.loans)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
