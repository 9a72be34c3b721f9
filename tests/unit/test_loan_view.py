"""The loan view (lending.views.loan_view), which every repayment's reply carries: it walks
the installments once, so its figures are checked here against the Loan's own accessors over
serviced loans of every shape (overdue, non-accrual, prepaid, paid off)."""

from __future__ import annotations

import msgspec
from hypothesis import given
from loan_factory import make_loan
from test_loans import HISTORY_SETTINGS, State, histories

from lending import views
from lending.loans import INST_PAID


@HISTORY_SETTINGS
@given(histories())
def test_the_view_shows_what_the_loan_owes_period_by_period(state: State) -> None:
    loan = state.loan
    view = views.loan_view(loan)
    assert view.outstanding == views.Components(
        principal=loan.outstanding_principal(),
        interest=loan.outstanding_interest(),
        penalty=loan.outstanding_penalty(),
        fee=loan.outstanding_fee(),
    )
    assert view.remaining_periods == sum(1 for i in loan.installments if i.status != INST_PAID)
    assert len(view.schedule) == len(loan.installments)
    for item, inst in zip(view.schedule, loan.installments, strict=True):
        assert (item.period, item.due_date, item.status) == (
            inst.period, inst.due_date, inst.status)
        assert (item.principal, item.interest, item.fee, item.penalty) == (
            inst.principal, inst.interest, inst.fee, inst.penalty)
        assert item.total == inst.principal + inst.interest + inst.fee
        assert item.paid == views.Components(
            inst.paid_principal, inst.paid_interest, inst.paid_penalty, inst.paid_fee)


def test_the_view_renders_in_the_documented_field_order() -> None:
    # API.md's loan view: what partners parse. A field moved or renamed breaks them.
    document = msgspec.json.decode(views.encode(views.loan_view(make_loan())))
    assert list(document) == [
        "loan_id", "application_id", "customer_id", "product_code", "status", "principal",
        "annual_rate_bps", "apr_bps", "term", "repayment_method", "disbursed_on",
        "outstanding", "dpd", "bucket", "classification", "schedule", "product_version",
        "payee", "non_accrual", "written_off_on", "remaining_periods",
    ]
    assert document["outstanding"] == {"principal": 1_000_000, "interest": 0, "penalty": 0,
                                       "fee": 0}
    assert list(document["schedule"][0]) == [
        "period", "due_date", "principal", "interest", "fee", "total", "status", "paid",
        "penalty"]
