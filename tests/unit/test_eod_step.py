"""The shard's end-of-day step (lending/shard_state.py EodStep): chunks in loan-id order,
all of a chunk in one Diff, idempotent through last_closed_on, refused for another date,
and exactly what lending.daily.close_day does to each loan."""

from __future__ import annotations

import json
from datetime import date, timedelta

import msgspec
from loan_factory import DISBURSED, make_loan

from lending import ledger, reconcile
from lending.commands import EodStep, is_write
from lending.daily import ServicingPolicy, close_day
from lending.decision import RiskPolicy
from lending.loans import LOAN_PAID_OFF, Loan
from lending.products import ProductCatalog
from lending.shard_state import (
    ApplyContext,
    Diff,
    Prefetched,
    ShardState,
    apply_batch,
    eod_cause,
)

POLICY = ServicingPolicy()


def ctx(day: date) -> ApplyContext:
    return ApplyContext(day, ProductCatalog([]), RiskPolicy(2400, 7), POLICY)


def loan(n: int, **kwargs: object) -> Loan:
    made = make_loan(**kwargs)  # type: ignore[arg-type]
    return msgspec.structs.replace(made, loan_id=f"LN-0000-{n:010d}")


def book(count: int) -> ShardState:
    state = ShardState(0, next_seq=1000)
    for n in range(count):
        state.loans[f"LN-0000-{n:010d}"] = loan(n, principal=100_000 * (n + 1))
    return state


def step(state: ShardState, day: date, max_loans: int) -> tuple[dict, Diff]:
    replies, diff = apply_batch(state, [EodStep(day, max_loans)], Prefetched(), ctx(day))
    assert replies[0].status == 200, replies[0].body
    state.commit(diff)
    return json.loads(replies[0].body), diff


def test_eod_step_is_an_ops_write() -> None:
    assert is_write(EodStep(DISBURSED, 10))


def test_chunks_in_loan_id_order_until_nothing_remains() -> None:
    state = book(5)
    first, diff = step(state, DISBURSED, 2)
    assert (first["processed"], first["remaining"]) == (2, 3)
    assert sorted(diff.loans) == ["LN-0000-0000000000", "LN-0000-0000000001"]
    assert first["book_buckets"] is None
    assert diff.eod is not None and not diff.eod.finished and diff.eod.remaining == 3
    second, _ = step(state, DISBURSED, 2)
    third, diff = step(state, DISBURSED, 2)
    assert (second["remaining"], third["processed"], third["remaining"]) == (1, 1, 0)
    assert diff.eod is not None and diff.eod.finished
    assert third["book_buckets"] == {"C": 5}
    assert third["book_classifications"] == {"normal": 5}
    assert all(n.last_closed_on == DISBURSED for n in state.loans.values())
    # idempotent: a rerun of the same date closes nothing and still reports done
    again, diff = step(state, DISBURSED, 2)
    assert (again["processed"], again["remaining"]) == (0, 0)
    assert diff.loans == {} and diff.entries == []


def test_same_result_as_close_day_and_journal_reconciles() -> None:
    """Run 40 days for a loan that is never repaid: each loan and its entries are exactly
    those of close_day; the journal reconciles with every loan; entries carry the cause."""
    state = book(3)
    originals = {k: v for k, v in state.loans.items()}
    entries: list[ledger.JournalEntry] = []
    from lending.loans import disbursement_posting

    for n in originals.values():
        entries.append(ledger.make_entry("JE-D-" + n.loan_id, DISBURSED, n.book, n.loan_id,
                                         n.loan_id, disbursement_posting(n)))
    expected = dict(originals)
    accrued = 0
    for offset in range(40):
        day = DISBURSED + timedelta(days=offset)
        result, diff = step(state, day, 100)
        entries.extend(diff.entries)
        assert {e.cause for e in diff.entries} <= {eod_cause(day)}
        assert all(e.business_date == day for e in diff.entries)
        day_interest = 0
        for loan_id, before in expected.items():
            closed = close_day(before, day, POLICY)
            expected[loan_id] = closed.loan
            day_interest += closed.accrued_interest
        assert result["accrued_interest"] == day_interest
        accrued += day_interest
    for loan_id, want in expected.items():
        assert msgspec.to_builtins(state.loan(loan_id)) == msgspec.to_builtins(want)
    net: dict[str, dict[str, int]] = {}
    for entry in entries:
        net.setdefault(entry.loan_id, {})
        for role, value in ledger.net_debits([entry]).items():
            net[entry.loan_id][role] = net[entry.loan_id].get(role, 0) + value
    for loan_id in state.loans:
        current = state.loan(loan_id)
        assert current is not None and reconcile.differences(current, net[loan_id]) == []
    assert accrued > 0
    # first due date 2026-12-28 (29 days after disbursement): DPD 11 on day 40's next day
    assert {n.dpd for n in state.loans.values()} == {(DISBURSED + timedelta(days=40)
                                                      - date(2026, 12, 28)).days}


def test_refuses_another_business_date_and_bad_chunk() -> None:
    state = book(1)
    replies, diff = apply_batch(
        state, [EodStep(DISBURSED + timedelta(days=1), 10)], Prefetched(), ctx(DISBURSED))
    assert replies[0].status == 409 and replies[0].code == "invalid_state"
    assert diff.is_empty()
    replies, diff = apply_batch(state, [EodStep(DISBURSED, 0)], Prefetched(), ctx(DISBURSED))
    assert replies[0].status == 400 and diff.is_empty()


def test_paid_off_loans_are_skipped() -> None:
    state = book(2)
    paid = msgspec.structs.replace(state.loans["LN-0000-0000000000"], status=LOAN_PAID_OFF)
    state.loans[paid.loan_id] = paid
    result, diff = step(state, DISBURSED, 10)
    assert result["processed"] == 1 and list(diff.loans) == ["LN-0000-0000000001"]
    assert result["book_buckets"] == {"C": 1}


def test_empty_shard_reports_done() -> None:
    result, diff = step(ShardState(3), DISBURSED, 10)
    assert (result["processed"], result["remaining"]) == (0, 0)
    assert diff.eod is not None and diff.eod.finished and not diff.is_empty()


def test_chunks_resume_from_the_worklist_and_pick_up_loans_booked_during_the_run() -> None:
    """After the first chunk, the next ones take ids from the worklist the first one made (a
    loan paid off since is skipped), and a loan booked during the run is closed too: the
    run reports 0 remaining only when a last pass over the shard finds nothing."""
    state = book(5)
    first, _ = step(state, DISBURSED, 2)
    assert (first["processed"], first["remaining"]) == (2, 3)
    assert state.eod_worklist is not None and state.eod_worklist.position == 2
    paid = msgspec.structs.replace(state.loans["LN-0000-0000000002"], status=LOAN_PAID_OFF)
    state.loans[paid.loan_id] = paid
    state.loans["LN-0000-0000000009"] = loan(9)  # booked while end of day runs
    second, diff = step(state, DISBURSED, 2)
    assert sorted(diff.loans) == ["LN-0000-0000000003", "LN-0000-0000000004"]
    assert second["remaining"] == 1  # the late loan, found when the worklist ran out
    third, diff = step(state, DISBURSED, 2)
    assert list(diff.loans) == ["LN-0000-0000000009"] and third["remaining"] == 0
    assert diff.eod is not None and diff.eod.finished
    assert state.eod_worklist is None  # dropped once the shard finished the day
