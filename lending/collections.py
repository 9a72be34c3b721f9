"""Post-loan collections (贷后催收, DOMAIN.md §5): cases, promises to pay, reminders, contact
limits and withholding (代扣) plans. Pure: no IO, no clock; the shard calls these from its
end-of-day step and from operators' case actions (lending/shard_state.py).

A loan past due by `open_dpd` or more gets ONE open case. End of day follows it: the case
takes the loan's DPD and bucket (an escalation is an event, and from `agency_bucket` on the
case goes to a collection agency), a pending promise to pay is checked (kept when the loan
received the promised amount since the promise, broken once its date passed), and the case
closes when the loan is current again (cured) or paid off. Written-off loans keep their case
open: recoveries after write-off are still collected.

Reminders follow a strategy of offsets from an installment's due date (e.g. D−3, D0, D+1,
D+7): the run closing day D plans the messages to send on D + 1. Every contact with a
customer, automatic or by a collector, counts against the contact-frequency limits (per day
and per rolling week); a reminder over the limit is not sent and is counted as suppressed.

Rules chosen where DOMAIN.md is silent are in docs/domain-choices.md (collections).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

import msgspec

from lending.loans import LOAN_PAID_OFF, Installment, Loan

CASE_OPEN = "open"
CASE_CLOSED = "closed"
CLOSED_CURED = "cured"  # the loan is current again (DPD 0)
CLOSED_PAID_OFF = "paid_off"

PROMISE_PENDING = "pending"
PROMISE_KEPT = "kept"
PROMISE_BROKEN = "broken"
PROMISE_SUPERSEDED = "superseded"

# Case events (table collection_events).
EV_OPENED = "opened"
EV_BUCKET = "bucket_changed"
EV_ASSIGNED = "assigned"
EV_NOTE = "note"
EV_CONTACT = "contact"
EV_PROMISE = "promise"
EV_PROMISE_KEPT = "promise_kept"
EV_PROMISE_BROKEN = "promise_broken"
EV_PROMISE_SUPERSEDED = "promise_superseded"
EV_REMINDER = "reminder"
EV_CLOSED = "closed"

SYSTEM_ACTOR = "system"
ASSIGNEE_COLLECTOR = "collector"
ASSIGNEE_AGENCY = "agency"

# Channels of a contact a collector records, and what came of it (outcome tracking).
CONTACT_CHANNELS = ("call", "sms", "visit", "letter", "email")
CONTACT_OUTCOMES = (
    "reached", "no_answer", "wrong_number", "refused_to_pay", "dispute", "promised",
    "third_party", "hardship",
)
REMINDER_CHANNEL = "sms"

BUCKET_ORDER = ("C", "M1", "M2", "M3", "M4", "M5", "M6", "M6+")
NOTE_MAX_CHARS = 2000


class ReminderRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Send `template` on (due date + offset_days) while the installment is unpaid."""

    offset_days: int
    template: str


class CollectionsPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Config `[collections]` (docs/operations.md)."""

    open_dpd: int = 1  # a case opens when the loan is this many days past due
    agency_bucket: str = "M4"  # from this bucket on, a case goes to a collection agency
    agencies: list[str] = msgspec.field(default_factory=lambda: ["AGENCY-A", "AGENCY-B"])
    max_contacts_per_day: int = 2  # per customer, automatic and manual together
    max_contacts_per_week: int = 6  # per customer, over the last 7 business dates
    promise_max_days: int = 14  # a promise to pay is at most this far ahead
    promise_grace_days: int = 0  # a promise is broken this many days after its date
    reminders: list[ReminderRule] = msgspec.field(default_factory=lambda: [
        ReminderRule(-3, "upcoming"), ReminderRule(0, "due_today"),
        ReminderRule(1, "overdue_1"), ReminderRule(7, "overdue_7"),
    ])

    def validate(self) -> None:
        if self.open_dpd < 1:
            raise ValueError("collections open_dpd must be >= 1")
        if self.agency_bucket not in BUCKET_ORDER[1:]:
            raise ValueError(
                f"collections agency_bucket must be one of {list(BUCKET_ORDER[1:])}, "
                f"not {self.agency_bucket!r}")
        if not self.agencies or len(set(self.agencies)) != len(self.agencies):
            raise ValueError("collections agencies must be a non-empty list of distinct ids")
        if not 1 <= self.max_contacts_per_day <= self.max_contacts_per_week:
            raise ValueError(
                "collections needs 1 <= max_contacts_per_day <= max_contacts_per_week")
        if self.promise_max_days < 0 or self.promise_grace_days < 0:
            raise ValueError("collections promise_max_days and promise_grace_days must be >= 0")
        offsets = [rule.offset_days for rule in self.reminders]
        if len(set(offsets)) != len(offsets):
            raise ValueError(f"collections reminders repeat an offset: {offsets}")
        for rule in self.reminders:
            if not rule.template:
                raise ValueError("collections reminder templates must not be empty")


class Promise(msgspec.Struct, frozen=True):
    """A promise to pay (承诺还款): `amount` by `promised_on`. `paid_before` is what the loan
    had received in all when it was made, so "kept" is measured on payments after it."""

    amount: int
    promised_on: date
    made_on: date
    made_by: str
    paid_before: int
    status: str = PROMISE_PENDING


class CollectionCase(msgspec.Struct, frozen=True):
    case_id: str
    loan_id: str
    customer_id: str
    partner_id: str
    opened_on: date
    dpd: int
    bucket: str
    overdue_amount: int  # unpaid and past due (principal, interest, fee, penalty)
    status: str = CASE_OPEN
    assignee: str | None = None  # "collector:<operator>" or "agency:<id>"
    promise: Promise | None = None
    last_outcome: str | None = None
    last_contact_on: date | None = None
    contacts: int = 0
    follow_up_on: date | None = None  # a broken promise asks for a call on this date
    closed_on: date | None = None
    close_reason: str | None = None
    version: int = 0


class CaseEvent(msgspec.Struct, frozen=True):
    """One line of a case's history (table collection_events)."""

    case_id: str
    business_date: date
    kind: str
    actor: str
    detail: dict[str, Any]


class CaseChange(msgspec.Struct, frozen=True):
    case: CollectionCase | None  # None: no case (and none was needed)
    events: tuple[CaseEvent, ...] = ()


def total_paid(loan: Loan) -> int:
    """Everything the loan has received (every component, the prepayment fee included)."""
    return loan.prepayment_fees_paid + sum(
        i.paid_principal + i.paid_interest + i.paid_fee + i.paid_penalty
        for i in loan.installments
    )


def overdue_amount(loan: Loan, as_of: date) -> int:
    """Unpaid amounts of installments due before `as_of`."""
    return sum(i.unpaid_total() for i in loan.installments if i.due_date < as_of)


def bucket_rank(bucket: str) -> int:
    return BUCKET_ORDER.index(bucket)


def agency_for(case_id: str, policy: CollectionsPolicy) -> str:
    """A stable spread of cases over the agencies (the same case always goes to the same)."""
    seq = int(case_id.rsplit("-", 1)[1])
    return policy.agencies[seq % len(policy.agencies)]


def opens_case(loan: Loan, policy: CollectionsPolicy) -> bool:
    """Whether a loan without a case needs one (end of day, its DPD as of the next day)."""
    return loan.status != LOAN_PAID_OFF and loan.dpd >= policy.open_dpd


def promise_met(promise: Promise, loan: Loan) -> bool:
    """The loan received at least the promised amount since the promise was made."""
    return total_paid(loan) - promise.paid_before >= promise.amount


def follow_case(
    case: CollectionCase | None, loan: Loan, day: date, policy: CollectionsPolicy,
    new_case_id: str,
) -> CaseChange:
    """End of day `day` for the case of a loan just closed (its DPD is as of day + 1).
    `new_case_id` is used only when a case opens."""
    as_of = day + timedelta(days=1)
    if case is None:
        if not opens_case(loan, policy):
            return CaseChange(None)
        return _open_case(loan, day, as_of, policy, new_case_id)
    if loan.status == LOAN_PAID_OFF or loan.dpd == 0:
        return _close_case(case, loan, day, CLOSED_PAID_OFF if loan.status == LOAN_PAID_OFF
                           else CLOSED_CURED)
    events: list[CaseEvent] = []
    updated = msgspec.structs.replace(
        case, dpd=loan.dpd, overdue_amount=overdue_amount(loan, as_of), version=case.version + 1)
    if loan.bucket != case.bucket:
        updated = msgspec.structs.replace(updated, bucket=loan.bucket)
        events.append(CaseEvent(case.case_id, day, EV_BUCKET, SYSTEM_ACTOR,
                                {"from": case.bucket, "to": loan.bucket, "dpd": loan.dpd}))
    updated = _to_agency_if_due(updated, day, policy, events)
    updated = _check_promise(updated, loan, day, policy, events)
    return CaseChange(updated, tuple(events))


def _open_case(
    loan: Loan, day: date, as_of: date, policy: CollectionsPolicy, case_id: str
) -> CaseChange:
    case = CollectionCase(
        case_id=case_id, loan_id=loan.loan_id, customer_id=loan.customer_id,
        partner_id=loan.partner_id, opened_on=day, dpd=loan.dpd, bucket=loan.bucket,
        overdue_amount=overdue_amount(loan, as_of),
    )
    events = [CaseEvent(case_id, day, EV_OPENED, SYSTEM_ACTOR,
                        {"dpd": loan.dpd, "bucket": loan.bucket,
                         "overdue_amount": case.overdue_amount})]
    return CaseChange(_to_agency_if_due(case, day, policy, events), tuple(events))


def _close_case(case: CollectionCase, loan: Loan, day: date, reason: str) -> CaseChange:
    promise = case.promise
    events: list[CaseEvent] = []
    if promise is not None and promise.status == PROMISE_PENDING:
        # Cured or paid off while a promise was pending: it was kept if the money came.
        kept = promise_met(promise, loan)
        status = PROMISE_KEPT if kept else PROMISE_SUPERSEDED
        promise = msgspec.structs.replace(promise, status=status)
        if kept:
            events.append(_promise_event(case, day, EV_PROMISE_KEPT, promise))
    closed = msgspec.structs.replace(
        case, status=CASE_CLOSED, dpd=loan.dpd, bucket=loan.bucket, overdue_amount=0,
        promise=promise, follow_up_on=None, closed_on=day, close_reason=reason,
        version=case.version + 1,
    )
    events.append(CaseEvent(case.case_id, day, EV_CLOSED, SYSTEM_ACTOR, {"reason": reason}))
    return CaseChange(closed, tuple(events))


def _to_agency_if_due(
    case: CollectionCase, day: date, policy: CollectionsPolicy, events: list[CaseEvent]
) -> CollectionCase:
    """From `agency_bucket` on, a case not already with an agency is handed to one."""
    with_agency = case.assignee is not None and case.assignee.startswith(ASSIGNEE_AGENCY)
    if with_agency or bucket_rank(case.bucket) < bucket_rank(policy.agency_bucket):
        return case
    assignee = f"{ASSIGNEE_AGENCY}:{agency_for(case.case_id, policy)}"
    events.append(CaseEvent(case.case_id, day, EV_ASSIGNED, SYSTEM_ACTOR,
                            {"from": case.assignee, "to": assignee, "reason": "bucket"}))
    return msgspec.structs.replace(case, assignee=assignee)


def _promise_event(case: CollectionCase, day: date, kind: str, promise: Promise) -> CaseEvent:
    return CaseEvent(case.case_id, day, kind, SYSTEM_ACTOR, {
        "amount": promise.amount, "promised_on": promise.promised_on.isoformat()})


def _check_promise(
    case: CollectionCase, loan: Loan, day: date, policy: CollectionsPolicy,
    events: list[CaseEvent],
) -> CollectionCase:
    promise = case.promise
    if promise is None or promise.status != PROMISE_PENDING:
        return case
    if promise_met(promise, loan):
        kept = msgspec.structs.replace(promise, status=PROMISE_KEPT)
        events.append(_promise_event(case, day, EV_PROMISE_KEPT, kept))
        return msgspec.structs.replace(case, promise=kept, follow_up_on=None)
    if day >= promise.promised_on + timedelta(days=policy.promise_grace_days):
        broken = msgspec.structs.replace(promise, status=PROMISE_BROKEN)
        events.append(_promise_event(case, day, EV_PROMISE_BROKEN, broken))
        return msgspec.structs.replace(
            case, promise=broken, follow_up_on=day + timedelta(days=1))
    return case


# ---- contact-frequency limits ------------------------------------------------------------

WEEK_DAYS = 7


def contacts_in_window(log: Iterable[date], day: date) -> tuple[int, int]:
    """(contacts on `day`, contacts in the 7 days ending on `day`)."""
    week_start = day - timedelta(days=WEEK_DAYS - 1)
    today = week = 0
    for when in log:
        if week_start <= when <= day:
            week += 1
            today += when == day
    return today, week


def contact_allowed(log: Iterable[date], day: date, policy: CollectionsPolicy) -> bool:
    today, week = contacts_in_window(log, day)
    return today < policy.max_contacts_per_day and week < policy.max_contacts_per_week


def with_contact(log: tuple[date, ...], day: date) -> tuple[date, ...]:
    """The customer's contact log with one more contact on `day`, older days dropped (the
    log only ever needs the limits' window)."""
    week_start = day - timedelta(days=WEEK_DAYS - 1)
    return (*(when for when in log if when >= week_start), day)


# ---- reminders and withholding -----------------------------------------------------------


class Reminder(msgspec.Struct, frozen=True):
    send_on: date
    template: str
    period: int  # the installment reminded of
    due_date: date
    amount: int  # what the message asks for


class ReminderPlan(msgspec.Struct, frozen=True):
    """A strategy applied to one end of day: the send date (day + 1), the rules by offset
    (send date − due date, in days) with their place in config, and the due dates they
    reach. Made once per end-of-day chunk, not once per loan."""

    send_on: date
    rules: dict[int, tuple[int, ReminderRule]]
    earliest_due: date
    latest_due: date


def reminder_plan(policy: CollectionsPolicy, day: date) -> ReminderPlan | None:
    """The plan of end of day `day`, or None when the strategy has no rule."""
    if not policy.reminders:
        return None
    send_on = day + timedelta(days=1)
    rules = {rule.offset_days: (index, rule) for index, rule in enumerate(policy.reminders)}
    return ReminderPlan(send_on, rules, send_on - timedelta(days=max(rules)),
                        send_on - timedelta(days=min(rules)))


def plan_reminder(loan: Loan, plan: ReminderPlan | None) -> Reminder | None:
    """The reminder to send on the plan's send date for this loan, if the strategy asks for
    one: the first rule (in config order) whose offset lands an unpaid installment's due
    date on the send date. At most one message per loan per day. One pass over the
    installments: end of day asks this of every loan."""
    if plan is None or loan.status == LOAN_PAID_OFF:
        return None
    send_on, rules = plan.send_on, plan.rules
    best: tuple[int, ReminderRule, Installment] | None = None
    for inst in loan.installments:  # in due order
        if inst.due_date < plan.earliest_due:
            continue
        if inst.due_date > plan.latest_due:
            break
        hit = rules.get((send_on - inst.due_date).days)
        if hit is not None and (best is None or hit[0] < best[0]) and inst.unpaid_total() > 0:
            best = (*hit, inst)
    if best is None:
        return None
    _, rule, inst = best
    amount = (overdue_amount(loan, send_on) if rule.offset_days > 0
              else inst.unpaid_total() + overdue_amount(loan, inst.due_date))
    return Reminder(send_on, rule.template, inst.period, inst.due_date, amount)


def withholding_due(loan: Loan, due_on: date) -> int:
    """What a withholding (代扣) for the installment due on `due_on` collects: that
    installment and everything due before it, unpaid."""
    return sum(i.unpaid_total() for i in loan.installments if i.due_date <= due_on)


def plan_withholding(loan: Loan, day: date) -> int:
    """The amount to withhold on day + 1 when an unpaid installment falls due then, else 0."""
    due_on = day + timedelta(days=1)
    if loan.status == LOAN_PAID_OFF:
        return 0
    for inst in loan.installments:  # in due order: stop at the first one due later
        if inst.due_date > due_on:
            return 0
        if inst.due_date == due_on:
            return withholding_due(loan, due_on) if inst.unpaid_total() > 0 else 0
    return 0


# ---- what collectors do (operator API, through the shard) --------------------------------


class CaseActionRefused(ValueError):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _require_open(case: CollectionCase) -> None:
    if case.status != CASE_OPEN:
        raise CaseActionRefused(409, "invalid_state", f"case {case.case_id} is closed")


def _bump(case: CollectionCase, **changes: Any) -> CollectionCase:
    return msgspec.structs.replace(case, version=case.version + 1, **changes)


def assign(
    case: CollectionCase, assignee: str, actor: str, day: date, policy: CollectionsPolicy,
    collectors: frozenset[str],
) -> CaseChange:
    """Hand the case to a collector (`collector:<operator>`) or an agency (`agency:<id>`)."""
    _require_open(case)
    kind, _, name = assignee.partition(":")
    known = collectors if kind == ASSIGNEE_COLLECTOR else (
        frozenset(policy.agencies) if kind == ASSIGNEE_AGENCY else frozenset())
    if name not in known:
        raise CaseActionRefused(
            422, "unknown_assignee",
            f"{assignee!r} is neither collector:<a collector> nor agency:<a configured agency>",
            "assignee")
    if assignee == case.assignee:
        raise CaseActionRefused(409, "invalid_state", f"case is already with {assignee}",
                                "assignee")
    event = CaseEvent(case.case_id, day, EV_ASSIGNED, actor,
                      {"from": case.assignee, "to": assignee, "reason": "manual"})
    return CaseChange(_bump(case, assignee=assignee), (event,))


def add_note(case: CollectionCase, text: str, actor: str, day: date) -> CaseChange:
    if not text.strip() or len(text) > NOTE_MAX_CHARS:
        raise CaseActionRefused(
            422, "invalid_request", f"a note has 1 to {NOTE_MAX_CHARS} characters", "text")
    event = CaseEvent(case.case_id, day, EV_NOTE, actor, {"text": text})
    return CaseChange(_bump(case), (event,))


def record_contact(
    case: CollectionCase, channel: str, outcome: str, note: str, actor: str, day: date,
) -> CaseChange:
    """A contact a collector made (the caller checks the frequency limits first)."""
    _require_open(case)
    if channel not in CONTACT_CHANNELS:
        raise CaseActionRefused(422, "invalid_request",
                                f"channel must be one of {list(CONTACT_CHANNELS)}", "channel")
    if outcome not in CONTACT_OUTCOMES:
        raise CaseActionRefused(422, "invalid_request",
                                f"outcome must be one of {list(CONTACT_OUTCOMES)}", "outcome")
    if len(note) > NOTE_MAX_CHARS:
        raise CaseActionRefused(
            422, "invalid_request", f"a note has at most {NOTE_MAX_CHARS} characters", "note")
    event = CaseEvent(case.case_id, day, EV_CONTACT, actor,
                      {"channel": channel, "outcome": outcome, "note": note})
    updated = _bump(case, last_outcome=outcome, last_contact_on=day, contacts=case.contacts + 1)
    return CaseChange(updated, (event,))


def make_promise(
    case: CollectionCase, loan: Loan, amount: int, promised_on: date, actor: str, day: date,
    policy: CollectionsPolicy,
) -> CaseChange:
    """Record a promise to pay. A pending one is superseded by the new promise."""
    _require_open(case)
    owed = loan.unpaid_total()
    if not 0 < amount <= owed:
        raise CaseActionRefused(
            422, "invalid_request", f"a promise is for 1 to {owed} (what the loan owes)",
            "amount")
    latest = day + timedelta(days=policy.promise_max_days)
    if not day <= promised_on <= latest:
        raise CaseActionRefused(
            422, "invalid_request", f"promised_on must be between {day} and {latest}",
            "promised_on")
    events: list[CaseEvent] = []
    if case.promise is not None and case.promise.status == PROMISE_PENDING:
        events.append(CaseEvent(case.case_id, day, EV_PROMISE_SUPERSEDED, actor, {
            "amount": case.promise.amount,
            "promised_on": case.promise.promised_on.isoformat()}))
    promise = Promise(amount, promised_on, day, actor, total_paid(loan))
    events.append(CaseEvent(case.case_id, day, EV_PROMISE, actor, {
        "amount": amount, "promised_on": promised_on.isoformat()}))
    return CaseChange(_bump(case, promise=promise, follow_up_on=None), tuple(events))
