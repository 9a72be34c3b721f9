"""Collections (lending/collections.py) and the end-of-day steps after servicing in the shard
(lending/shard_state.py): cases follow DPD, promises are kept or broken, reminders follow the
strategy within the contact limits, withholding plans what is due tomorrow, and the
guarantee hook is asked about every loan closed."""

from __future__ import annotations

import json
from datetime import date, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loan_factory import DISBURSED, make_loan

from lending import collections as coll
from lending.commands import CaseAction, EodStep, is_write
from lending.daily import ServicingPolicy, close_day
from lending.decision import RiskPolicy
from lending.guarantee import GuaranteeAtDpd
from lending.loans import Loan, apply_repayment
from lending.products import ProductCatalog
from lending.shard_state import (
    REQUEST_SMS,
    REQUEST_WITHHOLDING,
    ApplyContext,
    Diff,
    Prefetched,
    ShardState,
    apply_batch,
)

SERVICING = ServicingPolicy()
POLICY = coll.CollectionsPolicy()
FIRST_DUE = date(2026, 12, 28)


def closed_until(loan: Loan, last: date) -> Loan:
    day = loan.last_closed_on + timedelta(days=1) if loan.last_closed_on else DISBURSED
    while day <= last:
        loan = close_day(loan, day, SERVICING).loan
        day += timedelta(days=1)
    return loan


def ctx(day: date, **kwargs: object) -> ApplyContext:
    return ApplyContext(day, ProductCatalog([]), RiskPolicy(2400, 7), SERVICING,
                        collectors=frozenset({"alice"}), **kwargs)  # type: ignore[arg-type]


# ---- cases ------------------------------------------------------------------------------


def test_a_case_opens_at_dpd_1_follows_the_bucket_and_closes_cured() -> None:
    loan = closed_until(make_loan(term=6), FIRST_DUE - timedelta(days=1))
    assert coll.follow_case(None, loan, FIRST_DUE - timedelta(days=1), POLICY, "CC-0000-1") \
        == coll.CaseChange(None)
    loan = closed_until(loan, FIRST_DUE)
    opened = coll.follow_case(None, loan, FIRST_DUE, POLICY, "CC-0000-0000000001")
    case = opened.case
    assert case is not None and (case.dpd, case.bucket, case.status) == (1, "M1", "open")
    assert case.overdue_amount == loan.installments[0].unpaid_total()
    assert [e.kind for e in opened.events] == [coll.EV_OPENED]
    day = FIRST_DUE + timedelta(days=30)
    loan = closed_until(loan, day)
    moved = coll.follow_case(case, loan, day, POLICY, "")
    assert moved.case is not None and (moved.case.dpd, moved.case.bucket) == (31, "M2")
    assert [e.kind for e in moved.events] == [coll.EV_BUCKET]
    # Everything due by the next day (installment 2 falls due then) is paid on it.
    paid = apply_repayment(loan, "regular", coll.withholding_due(loan, day + timedelta(days=1)),
                           day + timedelta(days=1)).loan
    cured = coll.follow_case(moved.case, closed_until(paid, day + timedelta(days=1)),
                             day + timedelta(days=1), POLICY, "")
    assert cured.case is not None
    assert (cured.case.status, cured.case.close_reason) == ("closed", coll.CLOSED_CURED)


def test_from_the_agency_bucket_a_case_goes_to_an_agency_once() -> None:
    policy = coll.CollectionsPolicy(agency_bucket="M2")
    loan = closed_until(make_loan(term=6), FIRST_DUE)
    case = coll.follow_case(None, loan, FIRST_DUE, policy, "CC-0000-0000000007").case
    assert case is not None and case.assignee is None
    day = FIRST_DUE + timedelta(days=30)
    change = coll.follow_case(case, closed_until(loan, day), day, policy, "")
    assert change.case is not None
    assert change.case.assignee == "agency:" + policy.agencies[7 % len(policy.agencies)]
    again = coll.follow_case(change.case, closed_until(loan, day + timedelta(days=1)),
                             day + timedelta(days=1), policy, "")
    assert again.case is not None and again.case.assignee == change.case.assignee
    assert coll.EV_ASSIGNED not in [e.kind for e in again.events]


def test_a_promise_is_kept_by_payments_after_it_and_broken_after_its_date() -> None:
    loan = closed_until(make_loan(term=6), FIRST_DUE + timedelta(days=1))
    day = FIRST_DUE + timedelta(days=2)
    case = coll.follow_case(None, loan, FIRST_DUE + timedelta(days=1), POLICY,
                            "CC-0000-0000000001").case
    assert case is not None
    promised = coll.make_promise(case, loan, 1000, day + timedelta(days=1), "alice", day,
                                 POLICY).case
    assert promised is not None and promised.promise is not None
    # Paid 1,000 on the promise, still overdue: kept, the case stays open.
    partial = apply_repayment(loan, "regular", 1000, day).loan
    kept = coll.follow_case(promised, closed_until(partial, day), day, POLICY, "")
    assert kept.case is not None and kept.case.status == "open"
    assert kept.case.promise is not None and kept.case.promise.status == coll.PROMISE_KEPT
    assert [e.kind for e in kept.events] == [coll.EV_PROMISE_KEPT]
    # Paid 999 of 1,000: pending on the promised day's eve, broken once the day closed.
    short = apply_repayment(loan, "regular", 999, day).loan
    pending = coll.follow_case(promised, closed_until(short, day), day, POLICY, "")
    assert pending.case is not None and pending.case.promise == promised.promise
    later = day + timedelta(days=1)
    broken = coll.follow_case(pending.case, closed_until(short, later), later, POLICY, "")
    assert broken.case is not None and broken.case.promise is not None
    assert broken.case.promise.status == coll.PROMISE_BROKEN
    assert broken.case.follow_up_on == later + timedelta(days=1)


@pytest.mark.parametrize(("amount", "ahead", "field"), [
    (0, 1, "amount"), (10**9, 1, "amount"), (100, -1, "promised_on"), (100, 15, "promised_on"),
])
def test_promises_out_of_bounds_are_refused(amount: int, ahead: int, field: str) -> None:
    loan = closed_until(make_loan(term=6), FIRST_DUE)
    case = coll.follow_case(None, loan, FIRST_DUE, POLICY, "CC-0000-0000000001").case
    assert case is not None
    with pytest.raises(coll.CaseActionRefused) as refused:
        coll.make_promise(case, loan, amount, FIRST_DUE + timedelta(days=ahead), "a",
                          FIRST_DUE, POLICY)
    assert refused.value.field == field


# ---- contact limits and reminders -------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), max_size=80))
def test_contacts_allowed_never_exceed_the_limits(days: list[int]) -> None:
    """Whatever days contacts are attempted on (in order), the ones allowed never make more
    than the daily and weekly limits in any day or 7-day window."""
    log: tuple[date, ...] = ()
    made: list[date] = []
    for offset in sorted(days):
        day = DISBURSED + timedelta(days=offset)
        if coll.contact_allowed(log, day, POLICY):
            log = coll.with_contact(log, day)
            made.append(day)
    for day in set(made):
        assert made.count(day) <= POLICY.max_contacts_per_day
        window = [d for d in made if day - timedelta(days=6) <= d <= day]
        assert len(window) <= POLICY.max_contacts_per_week
    assert all(d >= made[-1] - timedelta(days=6) for d in log) if made else log == ()


def test_reminders_follow_the_strategy_offsets() -> None:
    loan = make_loan(term=6)
    planned = {}
    day = DISBURSED
    while day < FIRST_DUE + timedelta(days=10):
        loan = close_day(loan, day, SERVICING).loan
        reminder = coll.plan_reminder(loan, coll.reminder_plan(POLICY, day))
        if reminder is not None:
            planned[reminder.send_on] = (reminder.template, reminder.amount)
        day += timedelta(days=1)
    first = loan.installments[0]
    owed = first.principal + first.interest
    assert planned[FIRST_DUE - timedelta(days=3)] == ("upcoming", owed)
    assert planned[FIRST_DUE][0] == "due_today"
    assert planned[FIRST_DUE + timedelta(days=1)] == ("overdue_1", owed)
    assert planned[FIRST_DUE + timedelta(days=7)][0] == "overdue_7"
    assert planned[FIRST_DUE + timedelta(days=7)][1] > owed  # penalty by then
    assert len(planned) == 4
    silent = msgspec.structs.replace(POLICY, reminders=[])
    assert coll.reminder_plan(silent, FIRST_DUE) is None
    assert coll.plan_reminder(loan, coll.reminder_plan(silent, FIRST_DUE)) is None


def test_withholding_plans_what_is_due_tomorrow_only() -> None:
    loan = closed_until(make_loan(term=6), FIRST_DUE - timedelta(days=2))
    assert coll.plan_withholding(loan, FIRST_DUE - timedelta(days=2)) == 0
    first = loan.installments[0]
    assert coll.plan_withholding(loan, FIRST_DUE - timedelta(days=1)) == (
        first.principal + first.interest)
    paid = apply_repayment(loan, "regular", first.principal + first.interest,
                           FIRST_DUE - timedelta(days=1)).loan
    assert coll.plan_withholding(paid, FIRST_DUE - timedelta(days=1)) == 0


# ---- the shard's end-of-day step ---------------------------------------------------------


def shard_with(loans: list[Loan]) -> ShardState:
    state = ShardState(0, next_seq=1000)
    for n, item in enumerate(loans):
        loan_id = f"LN-0000-{n:010d}"
        state.loans[loan_id] = msgspec.structs.replace(
            item, loan_id=loan_id, customer_id=f"CU-0000-{n:010d}")
    return state


def run_day(state: ShardState, day: date, **kwargs: object) -> tuple[dict, Diff]:
    replies, diff = apply_batch(state, [EodStep(day, 100)], Prefetched(), ctx(day, **kwargs))
    assert replies[0].status == 200, replies[0].body
    state.commit(diff)
    return json.loads(replies[0].body), diff


def test_eod_plans_reminders_withholdings_and_cases_once() -> None:
    state = shard_with([make_loan(term=6), make_loan(term=3)])
    day = DISBURSED
    while day < FIRST_DUE - timedelta(days=1):
        run_day(state, day)
        day += timedelta(days=1)
    body, diff = run_day(state, day)  # closing the eve of the due date
    kinds = sorted(r.kind for r in diff.requests)
    assert kinds == [REQUEST_SMS, REQUEST_SMS, REQUEST_WITHHOLDING, REQUEST_WITHHOLDING]
    assert (body["reminders"], body["withholdings"]) == (2, 2)
    assert {c.customer_id for c in diff.contacts} == {"CU-0000-0000000000", "CU-0000-0000000001"}
    # The same day again plans nothing more (its loans are closed).
    again, diff_again = run_day(state, day)
    assert again["processed"] == 0 and diff_again.requests == []
    body, diff = run_day(state, FIRST_DUE)
    assert body["cases_opened"] == 2 and len(state.cases) == 2
    assert {c.loan_id for c in state.cases.values()} == set(state.loans)
    assert all(e.kind in (coll.EV_OPENED, coll.EV_REMINDER) for e in diff.case_events)


def test_a_reminder_over_the_contact_limit_is_suppressed() -> None:
    state = shard_with([make_loan(term=6)])
    send_on = FIRST_DUE - timedelta(days=3)
    state.contact_logs["CU-0000-0000000000"] = (send_on, send_on)  # two calls that day
    day = DISBURSED
    while day < send_on - timedelta(days=1):
        run_day(state, day)
        day += timedelta(days=1)
    body, diff = run_day(state, day)  # would plan the D−3 reminder for `send_on`
    assert [r.kind for r in diff.requests] == [] and diff.contacts == []
    assert body["reminders"] == 0 and diff.eod is not None
    assert diff.eod.reminders_suppressed == 1


def test_the_guarantee_hook_is_asked_about_every_loan() -> None:
    state = shard_with([make_loan(term=6)])
    hook = GuaranteeAtDpd("PARTNER-G", trigger_dpd=3)
    triggered = []
    day = DISBURSED
    while day <= FIRST_DUE + timedelta(days=5):
        body, _ = run_day(state, day, guarantee=hook)
        triggered += [day] * body["guarantee_triggers"]
        day += timedelta(days=1)
    assert triggered == [FIRST_DUE + timedelta(days=2)]  # DPD 3 as of the next day


def test_case_actions_check_the_assignee_and_are_ops_writes() -> None:
    state = shard_with([make_loan(term=6)])
    day = DISBURSED
    while day <= FIRST_DUE:
        run_day(state, day)
        day += timedelta(days=1)
    (case_id,) = state.cases
    note = CaseAction(case_id=case_id, actor="alice", action="note", text="hi")
    assert is_write(note)
    replies, _ = apply_batch(state, [note], Prefetched(), ctx(day))
    assert replies[0].status == 403
    assign = CaseAction(case_id=case_id, actor="lead", action="assign", any_case=True,
                        assignee="collector:alice")
    replies, diff = apply_batch(state, [assign, note], Prefetched(), ctx(day))
    assert [r.status for r in replies] == [200, 200]
    assert [e.kind for e in diff.case_events] == [coll.EV_ASSIGNED, coll.EV_NOTE]
    unknown = CaseAction(case_id="CC-0000-0000000999", actor="lead", action="note",
                         any_case=True, text="x")
    replies, diff = apply_batch(state, [unknown], Prefetched(), ctx(day))
    assert replies[0].status == 404 and diff.is_empty()


def test_contact_logs_older_than_the_week_leave_memory_at_end_of_day() -> None:
    state = shard_with([make_loan(term=6)])
    day = FIRST_DUE - timedelta(days=4)  # plans the D−3 reminder: one contact
    for offset in range((day - DISBURSED).days):
        run_day(state, DISBURSED + timedelta(days=offset))
    state.contact_logs["CU-OLD"] = (day - timedelta(days=9),)
    run_day(state, day)
    assert set(state.contact_logs) == {"CU-0000-0000000000"}
