"""How shards keep loans in memory (lending/memory.py, ShardState.keep_*): a frozen loan
holds exactly what the loan held, thaws back to it, decodes from its Postgres row (either
form) to the same thing, computes the same, and cannot be written in place."""

from __future__ import annotations

import gc
from datetime import date, timedelta

import msgspec
import pytest
from hypothesis import given
from loan_factory import make_loan, shard_context
from test_loans import HISTORY_SETTINGS, State, histories

from lending.commands import SeedLoans
from lending.daily import ServicingPolicy, close_day
from lending.loans import Loan, apply_repayment
from lending.memory import (
    decode_loan_row,
    encode_loan_row,
    freeze_loan,
    is_frozen,
    loan_from_row,
    thaw_loan,
    unpack_installments,
    with_shared_values,
)
from lending.shard_state import (
    Application,
    Customer,
    Prefetched,
    ShardState,
    apply_batch,
)

DAY = date(2026, 3, 2)
CTX = shard_context(DAY)
ROW = msgspec.msgpack.Encoder()
LOAN_ROW = msgspec.msgpack.Decoder(Loan)  # a row as the plain Loan reads it


def plain(value: object) -> object:
    return msgspec.to_builtins(value)


@HISTORY_SETTINGS
@given(histories())
def test_a_frozen_loan_thaws_and_decodes_to_the_same_loan(state: State) -> None:
    loan = state.loan
    frozen = freeze_loan(with_shared_values(loan))
    assert is_frozen(frozen) and not is_frozen(loan)
    assert plain(thaw_loan(frozen)) == plain(loan)
    map_row = ROW.encode(loan)  # how rows were written before encode_loan_row
    row = encode_loan_row(frozen)
    assert row == encode_loan_row(loan)  # frozen or thawed: the same row
    assert len(map_row) - len(row) >= sum(map(len, Loan.__struct_fields__))  # no names
    for stored in (row, map_row):
        loaded = loan_from_row(stored)
        assert is_frozen(loaded) and type(loaded.installments) is bytes
        assert plain(thaw_loan(loaded)) == plain(decode_loan_row(stored)) == plain(loan)
        # the packed installments are the row's own bytes for them
        assert loaded.installments == frozen.installments
    assert plain(LOAN_ROW.decode(map_row)) == plain(loan)


@HISTORY_SETTINGS
@given(histories())
def test_servicing_a_thawed_loan_is_servicing_the_loan(state: State) -> None:
    loan, day = state.loan, state.as_of
    thawed = thaw_loan(freeze_loan(loan))
    assert plain(close_day(thawed, day, ServicingPolicy())) == plain(
        close_day(loan, day, ServicingPolicy()))
    due = sum(i.unpaid_total() for i in loan.installments if i.due_date <= day)
    if loan.status != "paid_off" and due > 0:
        assert plain(apply_repayment(thawed, "regular", due, day)) == plain(
            apply_repayment(loan, "regular", due, day))


def test_a_frozen_loan_is_untracked_read_only_and_fails_where_not_thawed() -> None:
    loan = make_loan(term=6)
    frozen = freeze_loan(loan)
    assert type(frozen.installments) is bytes
    assert not gc.is_tracked(frozen) and not gc.is_tracked(frozen.installments)
    assert plain(unpack_installments(frozen.installments)) == plain(loan.installments)
    with pytest.raises(TypeError):
        frozen.installments[0] = loan.installments[0]
    with pytest.raises(AttributeError):
        frozen.outstanding_principal()  # servicing code on a frozen loan: ints, not installments
    assert thaw_loan(loan) is loan  # not frozen: nothing to do
    assert freeze_loan(frozen) is frozen


def test_an_old_row_without_later_fields_loads_with_their_defaults() -> None:
    loan = make_loan(term=3)
    row = msgspec.to_builtins(loan)
    for later in ("installment_in_force", "last_closed_on", "prepayment_fees_paid"):
        del row[later]
    encoded = msgspec.msgpack.encode(row)
    assert plain(thaw_loan(loan_from_row(encoded))) == plain(LOAN_ROW.decode(encoded))
    # an array row of a Loan with fewer fields (they are only ever added at the end)
    values = msgspec.msgpack.decode(encode_loan_row(loan))
    short = msgspec.msgpack.encode(values[:-3])
    assert plain(decode_loan_row(short)) == plain(LOAN_ROW.decode(encoded))


def seeded_state(count: int) -> ShardState:
    state = ShardState(5)
    replies, diff = apply_batch(state, [SeedLoans(count, 11, DAY)], Prefetched(), CTX)
    assert replies[0].status == 200
    state.commit(diff)
    return state


def reloaded(state: ShardState) -> ShardState:
    """What storage.shard_store.load builds from the rows the commits wrote."""
    customers = msgspec.msgpack.Decoder(Customer)
    applications = msgspec.msgpack.Decoder(Application)
    loaded = ShardState(state.shard_id, state.next_seq)
    for customer in state.customers.values():
        loaded.keep_customer(customers.decode(ROW.encode(customer)))
    for app in state.applications.values():
        loaded.keep_application(applications.decode(ROW.encode(app)))
    for loan_id in state.loans:
        loaded.keep_loaded_loan(loan_from_row(encode_loan_row(state.loans[loan_id])))
    return loaded


@pytest.mark.parametrize("source", ["committed", "loaded"])
def test_the_shard_keeps_what_was_committed_with_one_object_per_value(source: str) -> None:
    committed = seeded_state(40)
    state = committed if source == "committed" else reloaded(committed)
    assert list(state.loans) == list(committed.loans)
    for loan_id, frozen in state.loans.items():
        assert is_frozen(frozen)
        loan = state.loan(loan_id)
        assert loan is not None and not is_frozen(loan)
        assert plain(loan) == plain(committed.loan(loan_id))
        customer = state.customers[loan.customer_id]
        app = state.applications[loan.application_id]
        assert loan.customer_id is customer.customer_id is app.customer_id
        assert loan.application_id is app.application_id
        assert loan.loan_id is app.loan_id is customer.loan_ids[0]
        assert loan.principal is app.approved_amount
        assert state.application_id_by_ref(app.partner_id, app.partner_application_id) == (
            app.application_id)
        assert state.customer_by_hash[customer.id_hash] == customer.customer_id
        assert isinstance(customer.partner_ids, tuple) and isinstance(app.reasons, tuple)
    loans = list(state.loans.values())
    # equal values are one object (seeded loans vary in status and disbursement date)
    shared: dict[object, object] = {}
    for n in loans:
        assert shared.setdefault(n.status, n.status) is n.status
        assert shared.setdefault(n.disbursed_on, n.disbursed_on) is n.disbursed_on
    assert len(shared) > 2
    assert len({id(c.partner_ids) for c in state.customers.values()}) == 1
    assert state.application_id_by_ref("demo", "no-such-ref") is None
    assert state.application_id_by_ref("other-partner", "SEED-x") is None


def test_the_next_day_closes_the_same_on_a_reloaded_shard() -> None:
    committed = seeded_state(30)
    state = reloaded(committed)
    day = DAY + timedelta(days=1)
    for loan_id in state.loans:
        ours, theirs = state.loan(loan_id), committed.loan(loan_id)
        assert ours is not None and theirs is not None
        assert plain(close_day(ours, day, ServicingPolicy())) == plain(
            close_day(theirs, day, ServicingPolicy()))
