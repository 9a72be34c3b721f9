"""POST /v1/loans and GET /v1/loans/{id} over HTTP (API.md; schedules per DOMAIN.md §2).

Expected schedules are computed here from DOMAIN.md's table with exact fractions and
half-up rounding, independently of lending.schedules.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from math import floor
from typing import Any

import pytest
from factories import app_body, approved, assert_error, book, fresh_id

from loadtests.client import PartnerClient

DISBURSED_ON = date(2026, 11, 29)


# ---- helpers --------------------------------------------------------------------------------


def half_up(x: Fraction) -> int:
    assert x >= 0
    return floor(x + Fraction(1, 2))


def add_months(start: date, months: int) -> date:
    """Due date k: the disbursement day capped at 28, k months later (DOMAIN.md §1)."""
    month_index = start.month - 1 + months
    return date(start.year + month_index // 12, month_index % 12 + 1, min(start.day, 28))


def expected_schedule(
    method: str, principal: int, rate_bps: int, n: int, monthly_fee_bps: int = 0
) -> list[dict[str, Any]]:
    """DOMAIN.md §2, one dict per line: period, due_date, principal, interest, fee."""
    r = Fraction(rate_bps, 120_000)
    lines: list[tuple[int, int, int]] = []  # (principal, interest, fee)
    balance = principal
    if method == "equal_installment":
        total = half_up(principal * r / (1 - (1 + r) ** -n))
        for k in range(1, n + 1):
            interest = half_up(balance * r)
            part = balance if k == n else total - interest
            lines.append((part, interest, 0))
            balance -= part
    elif method in ("equal_principal", "installment_fee"):
        each = half_up(Fraction(principal, n))
        fee = half_up(Fraction(principal * monthly_fee_bps, 10_000))
        for k in range(1, n + 1):
            part = principal - each * (n - 1) if k == n else each
            interest = 0 if method == "installment_fee" else half_up(balance * r)
            lines.append((part, interest, fee if method == "installment_fee" else 0))
            balance -= part
    elif method == "interest_first":
        for k in range(1, n + 1):
            lines.append((principal if k == n else 0, half_up(principal * r), 0))
    elif method == "bullet":
        return [{"period": 1, "due_date": add_months(DISBURSED_ON, n).isoformat(),
                 "principal": principal, "interest": half_up(principal * r * n), "fee": 0}]
    else:
        raise AssertionError(method)
    return [
        {"period": k, "due_date": add_months(DISBURSED_ON, k).isoformat(),
         "principal": p, "interest": i, "fee": f}
        for k, (p, i, f) in enumerate(lines, start=1)
    ]


def irr_apr_bps(principal: int, payments: list[int]) -> Fraction:
    """Monthly IRR × 12 in bps, by bisection on exact fractions (DOMAIN.md §2, APR)."""
    def npv(rate: Fraction) -> Fraction:
        value = Fraction(-principal)
        factor = Fraction(1)
        for payment in payments:
            factor /= 1 + rate
            value += payment * factor
        return value

    low, high = Fraction(0), Fraction(1, 10)
    for _ in range(60):
        mid = (low + high) / 2
        if npv(mid) > 0:
            low = mid
        else:
            high = mid
    return low * 12 * 10_000


def schedule_core(line: dict[str, Any]) -> dict[str, Any]:
    return {key: line[key] for key in ("period", "due_date", "principal", "interest", "fee")}


# ---- booking --------------------------------------------------------------------------------


def test_booking_an_approved_application_returns_the_loan_view(demo: PartnerClient) -> None:
    app = approved(demo, amount=1_000_000, term=12, product="CASH_EI_12")

    response = book(demo, app["application_id"])

    assert response.status_code == 201, response.text
    loan = response.json()
    assert isinstance(loan["loan_id"], str) and loan["loan_id"]
    expected_fields = {
        "application_id": app["application_id"], "customer_id": app["customer_id"],
        "product_code": "CASH_EI_12", "status": "active", "principal": 1_000_000,
        "annual_rate_bps": 1800, "apr_bps": 1800, "term": 12,
        "repayment_method": "equal_installment", "disbursed_on": "2026-11-29",
        "outstanding": {"principal": 1_000_000, "interest": 0, "penalty": 0, "fee": 0},
        "dpd": 0, "bucket": "C", "classification": "normal",
    }
    assert {key: loan.get(key) for key in expected_fields} == expected_fields

    schedule = loan["schedule"]
    assert len(schedule) == 12
    assert schedule[0] == {
        **schedule[0],  # extra fields allowed; these must be exactly API.md's example
        "period": 1, "due_date": "2026-12-28", "principal": 76680, "interest": 15000,
        "fee": 0, "total": 91680, "status": "pending",
        "paid": {"principal": 0, "interest": 0, "penalty": 0, "fee": 0},
    }
    assert [schedule_core(line) for line in schedule] == expected_schedule(
        "equal_installment", 1_000_000, 1800, 12
    )
    assert sum(line["principal"] for line in schedule) == 1_000_000
    for line in schedule:
        assert line["total"] == line["principal"] + line["interest"] + line["fee"]
        assert line["status"] == "pending"
        assert line["paid"] == {"principal": 0, "interest": 0, "penalty": 0, "fee": 0}
    assert schedule[-1]["due_date"] == "2027-11-28"

    # GET returns the same view.
    read = demo.get(f"/v1/loans/{loan['loan_id']}")
    assert read.status_code == 200, read.text
    assert read.json() == loan

    # The application now knows its loan, and the customer its loan and limit.
    customer = demo.get(f"/v1/customers/{app['customer_id']}").json()
    assert customer["loan_ids"] == [loan["loan_id"]]
    assert customer["credit_limit"] == app["decision"]["credit_limit"]
    assert customer["available_limit"] == app["decision"]["credit_limit"] - 1_000_000


def test_booking_twice_is_409_already_booked(demo: PartnerClient) -> None:
    app = approved(demo)
    first = book(demo, app["application_id"])
    assert first.status_code == 201, first.text

    again = book(demo, app["application_id"])  # a new Idempotency-Key
    assert_error(again, 409, "already_booked")

    customer = demo.get(f"/v1/customers/{app['customer_id']}").json()
    assert customer["loan_ids"] == [first.json()["loan_id"]]
    assert customer["available_limit"] == app["decision"]["credit_limit"] - 1_000_000


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"sequence": 950}, "declined"),
        ({"amount": 6_000_000, "income": 4_000_000}, "manual_review"),
    ],
)
def test_booking_an_application_that_is_not_approved_is_409_invalid_state(
    demo: PartnerClient, kwargs: dict[str, Any], status: str
) -> None:
    if "sequence" in kwargs:
        kwargs = {"id_no": fresh_id(sequence=kwargs["sequence"])}
    response = demo.post("/v1/applications", app_body(**kwargs))
    assert response.status_code == 201, response.text
    app = response.json()
    assert app["status"] == status

    assert_error(book(demo, app["application_id"]), 409, "invalid_state")
    customer = demo.get(f"/v1/customers/{app['customer_id']}").json()
    assert customer["loan_ids"] == []


def test_booking_another_partners_application_is_404(
    demo: PartnerClient, demo2: PartnerClient
) -> None:
    app = approved(demo)
    assert_error(book(demo2, app["application_id"]), 404, "not_found")
    # Nothing happened: the owner can still book it.
    response = book(demo, app["application_id"])
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("ident", ["garbage", "AP-0003-9999999999", "LN-0003-0000000001"])
def test_booking_an_unknown_application_is_404(demo: PartnerClient, ident: str) -> None:
    assert_error(book(demo, ident), 404, "not_found")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"application_id": "AP-0000-0000000001", "amount": 5}', "amount"),
        (b"{}", "application_id"),
        (b'{"application_id": 7}', "application_id"),
        (b'{"application_id": ', None),
    ],
)
def test_invalid_booking_request_is_400(
    demo: PartnerClient, raw: bytes, field: str | None
) -> None:
    response = demo.request("POST", "/v1/loans", raw=raw)
    assert_error(response, 400, "invalid_request", field)


def test_booking_beyond_the_available_limit_is_422(demo: PartnerClient) -> None:
    """Two offers of one customer, each inside the limit, together above it: both are
    approved (nothing is booked yet); the first books, the second is 422. The amounts derive
    from the limit the decision reports (its formula is tested in test_api_applications;
    for income 1,200,000 it is 3,000,000, so the amounts are 2,000,000 and 1,010,000)."""
    id_no = fresh_id()
    first = approved(demo, id_no=id_no, amount=2_000_000, income=1_200_000)
    limit = first["decision"]["credit_limit"]
    second_amount = limit - 2_000_000 + 10_000
    assert 100_000 <= second_amount <= 5_000_000
    second = approved(demo, id_no=id_no, amount=second_amount, income=1_200_000)
    assert first["customer_id"] == second["customer_id"]

    booked = book(demo, first["application_id"])
    assert booked.status_code == 201, booked.text

    assert_error(book(demo, second["application_id"]), 422, "limit_exceeded")

    # Nothing changed: one loan, limit − 2,000,000 still available, the offer unbooked.
    customer = demo.get(f"/v1/customers/{first['customer_id']}").json()
    assert customer["loan_ids"] == [booked.json()["loan_id"]]
    assert customer["available_limit"] == limit - 2_000_000
    still = demo.get(f"/v1/applications/{second['application_id']}").json()
    assert still["status"] == "approved"
    assert still.get("loan_id") is None

    # A third application of the same person above what is left is declined...
    third = demo.post("/v1/applications", app_body(id_no=id_no, amount=limit - 2_000_000 + 1))
    assert third.status_code == 201, third.text
    assert third.json()["status"] == "declined"
    assert third.json()["decision"]["reasons"] == ["limit_exceeded"]
    # ...and one of exactly what is left is approved and books.
    fourth = approved(demo, id_no=id_no, amount=limit - 2_000_000)
    assert book(demo, fourth["application_id"]).status_code == 201
    customer = demo.get(f"/v1/customers/{first['customer_id']}").json()
    assert customer["available_limit"] == 0


def test_another_partner_cannot_read_the_loan(
    demo: PartnerClient, demo2: PartnerClient
) -> None:
    app = approved(demo)
    loan = book(demo, app["application_id"]).json()
    assert_error(demo2.get(f"/v1/loans/{loan['loan_id']}"), 404, "not_found")
    assert_error(demo2.get(f"/v1/loans/{loan['loan_id']}/payoff"), 404, "not_found")
    assert demo.get(f"/v1/loans/{loan['loan_id']}").status_code == 200


@pytest.mark.parametrize("ident", ["garbage", "LN-0000-9999999999", "LN-9999-0000000001"])
def test_unknown_loan_is_404(demo: PartnerClient, ident: str) -> None:
    assert_error(demo.get(f"/v1/loans/{ident}"), 404, "not_found")


# ---- every sandbox product ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product", "method", "term", "amount", "merchant_id"),
    [
        ("CASH_EI_12", "equal_installment", 12, 1_234_567, None),
        ("CASH_EI_12", "equal_installment", 24, 2_000_000, None),
        ("CASH_EP_12", "equal_principal", 12, 1_234_567, None),
        ("CASH_EP_12", "equal_principal", 6, 100_000, None),
        ("CASH_IF_12", "interest_first", 12, 1_234_567, None),
        ("CASH_BL_3", "bullet", 3, 1_234_567, None),
        ("CASH_BL_3", "bullet", 1, 1_000_000, None),
        ("INST_FEE_12", "installment_fee", 12, 1_234_567, "M-42"),
        ("INST_FEE_12", "installment_fee", 3, 100_001, "shop-7"),
    ],
)
def test_every_sandbox_product_books_with_its_schedule(
    demo: PartnerClient, product: str, method: str, term: int, amount: int,
    merchant_id: str | None,
) -> None:
    app = approved(demo, product=product, term=term, amount=amount, merchant_id=merchant_id)
    response = book(demo, app["application_id"])
    assert response.status_code == 201, response.text
    loan = response.json()

    assert loan["product_code"] == product
    assert loan["repayment_method"] == method
    assert loan["principal"] == amount
    assert loan["outstanding"]["principal"] == amount
    assert loan["term"] == term
    schedule = loan["schedule"]
    assert sum(line["principal"] for line in schedule) == amount
    for line in schedule:
        assert line["total"] == line["principal"] + line["interest"] + line["fee"]
        assert line["status"] == "pending"

    rate = 0 if method == "installment_fee" else 1800
    assert loan["annual_rate_bps"] == rate
    fee_bps = 60 if method == "installment_fee" else 0
    assert [schedule_core(line) for line in schedule] == expected_schedule(
        method, amount, rate, term, fee_bps
    )

    if method == "installment_fee":
        assert loan.get("payee") == f"merchant:{merchant_id}"
        assert all(line["fee"] > 0 and line["interest"] == 0 for line in schedule)
        assert all(line["fee"] == half_up(Fraction(amount * 60, 10_000)) for line in schedule)
        # The disclosed APR is the IRR of the borrower's cash flows (fees included).
        irr = irr_apr_bps(amount, [line["total"] for line in schedule])
        assert abs(loan["apr_bps"] - irr) <= 1, (loan["apr_bps"], float(irr))
        assert 0 < loan["apr_bps"] <= 2400
    else:
        assert loan.get("payee") in (None, "borrower")
        assert all(line["fee"] == 0 for line in schedule)
    if method == "bullet":
        assert len(schedule) == 1
        assert schedule[0]["interest"] == half_up(Fraction(amount * 15 * term, 1000))
        assert schedule[0]["due_date"] == add_months(DISBURSED_ON, term).isoformat()
    if method == "equal_installment":
        assert loan["apr_bps"] == 1800
