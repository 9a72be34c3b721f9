"""Repayments, payoff, the customer view and batch repayments over HTTP (API.md, DOMAIN.md §3).

Every loan is CASH_EI_12, 1,000,000 fen, 12 months at 1800 bps unless said otherwise, so
its first installment is API.md's example: 76,680 principal + 15,000 interest = 91,680.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from factories import assert_error, fresh_id, get_loan, new_loan, ref, repay, repay_batch

from loadtests.client import PartnerClient

P = 1_000_000
FIRST_PRINCIPAL = 76_680
FIRST_INTEREST = 15_000
FIRST_TOTAL = 91_680


# ---- helpers --------------------------------------------------------------------------------


ZERO_PAID = {"principal": 0, "interest": 0, "penalty": 0, "fee": 0}


@pytest.fixture(scope="module")
def untouched_loan(system: Any) -> dict[str, Any]:
    """A loan that only ever receives refused requests: each test checks it is unchanged."""
    client = system.client("demo")
    try:
        return new_loan(client, amount=100_000)
    finally:
        client.close()


# ---- regular repayments ---------------------------------------------------------------------


def test_regular_repayment_of_the_first_installment(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    external_ref = ref()

    response = repay(demo, loan["loan_id"], FIRST_TOTAL, external_ref=external_ref)

    assert response.status_code == 201, response.text
    body = response.json()
    assert isinstance(body["repayment_id"], str) and body["repayment_id"]
    assert body["loan_id"] == loan["loan_id"]
    assert body["value_date"] == "2026-11-29"
    assert body["allocation"] == {
        "penalty": 0, "fee": 0, "interest": FIRST_INTEREST, "principal": FIRST_PRINCIPAL,
    }
    after = body["loan"]
    assert after["loan_id"] == loan["loan_id"]
    assert after["status"] == "active"
    assert after["outstanding"]["principal"] == P - FIRST_PRINCIPAL == 923_320
    first, second = after["schedule"][0], after["schedule"][1]
    assert first["status"] == "paid"
    assert first["paid"] == {
        "principal": FIRST_PRINCIPAL, "interest": FIRST_INTEREST, "penalty": 0, "fee": 0,
    }
    assert second["status"] == "pending"
    assert second["paid"] == ZERO_PAID
    # The schedule itself is not rewritten by a regular repayment.
    assert [(line["principal"], line["interest"]) for line in after["schedule"]] == [
        (line["principal"], line["interest"]) for line in loan["schedule"]
    ]
    # The response's loan is what a GET shows.
    assert get_loan(demo, loan["loan_id"]) == after


def test_partial_payment_goes_to_interest_first(demo: PartnerClient) -> None:
    loan = new_loan(demo)

    response = repay(demo, loan["loan_id"], 10_000)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 10_000, "principal": 0}
    first = body["loan"]["schedule"][0]
    assert first["status"] == "pending"
    assert first["paid"] == {"principal": 0, "interest": 10_000, "penalty": 0, "fee": 0}
    assert body["loan"]["outstanding"]["principal"] == P

    # The rest of the installment: 5,000 interest, then the principal.
    rest = repay(demo, loan["loan_id"], FIRST_TOTAL - 10_000)
    assert rest.status_code == 201, rest.text
    assert rest.json()["allocation"] == {
        "penalty": 0, "fee": 0, "interest": 5_000, "principal": FIRST_PRINCIPAL,
    }
    assert rest.json()["loan"]["schedule"][0]["status"] == "paid"
    assert rest.json()["loan"]["outstanding"]["principal"] == P - FIRST_PRINCIPAL


def test_regular_repayment_pays_at_most_the_next_installment_in_advance(
    demo: PartnerClient,
) -> None:
    """DOMAIN.md §3: regular = overdue, then due, then the next installment in advance;
    paying further ahead is a prepayment, so it is refused (never absorbed)."""
    loan = new_loan(demo)
    assert_error(repay(demo, loan["loan_id"], FIRST_TOTAL + 1), 422, "amount_exceeds_due")
    assert get_loan(demo, loan["loan_id"]) == loan

    assert repay(demo, loan["loan_id"], FIRST_TOTAL).status_code == 201
    # Installment 1 is paid: installment 2 is now the next one.
    second = loan["schedule"][1]
    response = repay(demo, loan["loan_id"], second["total"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["allocation"] == {
        "penalty": 0, "fee": 0, "interest": second["interest"], "principal": second["principal"],
    }
    schedule = body["loan"]["schedule"]
    assert [line["status"] for line in schedule[:3]] == ["paid", "paid", "pending"]
    assert body["loan"]["outstanding"]["principal"] == (
        P - FIRST_PRINCIPAL - second["principal"]
    )


def test_more_than_everything_owed_is_422_and_changes_nothing(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    owed = sum(line["total"] for line in loan["schedule"])
    external_ref = ref()

    response = repay(demo, loan["loan_id"], owed + 1, external_ref=external_ref)

    assert_error(response, 422, "amount_exceeds_due")
    assert get_loan(demo, loan["loan_id"]) == loan
    # The refused request did not use up its external_ref.
    ok = repay(demo, loan["loan_id"], FIRST_TOTAL, external_ref=external_ref)
    assert ok.status_code == 201, ok.text
    assert ok.json()["loan"]["outstanding"]["principal"] == P - FIRST_PRINCIPAL


@pytest.mark.parametrize("amount", [0, -1, -91_680, "x", "100", 1.5, None, True])
def test_invalid_amount_is_400(
    demo: PartnerClient, untouched_loan: dict[str, Any], amount: Any
) -> None:
    loan = untouched_loan
    assert_error(repay(demo, loan["loan_id"], amount), 400, "invalid_request", "amount")
    assert get_loan(demo, loan["loan_id"]) == loan


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 100, "external_ref": "R-1", "kind": "weekly"}, "kind"),
        ({"amount": 100, "external_ref": "R-1", "kind": "REGULAR"}, "kind"),
        ({"amount": 100, "external_ref": "R-1", "kind": 1}, "kind"),
        ({"amount": 100, "kind": "regular"}, "external_ref"),
        ({"amount": 100, "external_ref": "", "kind": "regular"}, "external_ref"),
        ({"amount": 100, "external_ref": "has space", "kind": "regular"}, "external_ref"),
        ({"amount": 100, "external_ref": "R-1", "kind": "regular", "loan": "x"}, "loan"),
        ({"external_ref": "R-1", "kind": "regular"}, "amount"),
    ],
)
def test_invalid_repayment_body_is_400(
    demo: PartnerClient, untouched_loan: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    loan = untouched_loan
    response = demo.post(f"/v1/loans/{loan['loan_id']}/repayments", body)
    assert_error(response, 400, "invalid_request", field)
    assert get_loan(demo, loan["loan_id"]) == loan


# ---- partial prepayments (提前部分还款) --------------------------------------------------------
# On the disbursement day nothing is due and no interest has run (0 days), so the whole
# amount goes to principal; the remaining schedule is rebuilt from the new balance on the
# original due dates, and the prepaid principal is recorded as paid on installment 1 (so the
# principals still sum to the loan amount). Installment 1's interest becomes interest to date
# on the old balance (0 here) + the rest of its period (29 days, 2026-11-29 → 2026-12-28) on
# the new balance at the daily rate: 700,000 × 18% × 29 / 360 = 10,150. Figures were checked
# against DOMAIN.md §2 with exact fractions (r = 1.5% a month).


def _schedule_rows(loan: dict[str, Any]) -> list[tuple[int, int, int]]:
    return [(line["principal"], line["interest"], line["fee"]) for line in loan["schedule"]]


def test_prepay_reduce_installment_keeps_the_term_and_lowers_the_installment(
    demo: PartnerClient,
) -> None:
    loan = new_loan(demo)

    response = repay(demo, loan["loan_id"], 300_000, kind="prepay_reduce_installment")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "prepay_reduce_installment"
    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 0, "principal": 300_000}
    assert body["prepayment_fee"] == 0
    after = body["loan"]
    assert after == get_loan(demo, loan["loan_id"])
    assert after["status"] == "active"
    assert after["term"] == 12
    assert after["remaining_periods"] == 12
    assert after["outstanding"] == {"principal": 700_000, "interest": 0, "penalty": 0, "fee": 0}
    assert [line["due_date"] for line in after["schedule"]] == [
        line["due_date"] for line in loan["schedule"]
    ]
    rows = _schedule_rows(after)
    # 700,000 over 12 periods: T = round(700,000·r / (1 − (1+r)^−12)) = 64,176;
    # period 1 principal T − 10,500 = 53,676 (+ the 300,000 prepaid), period 2 on 646,324.
    assert rows[0] == (353_676, 10_150, 0)
    assert rows[1] == (54_481, 9_695, 0)
    assert rows[11] == (63_227, 948, 0)
    assert {p + i for p, i, _ in rows[1:11]} == {64_176}
    assert sum(p for p, _, _ in rows) == P
    first = after["schedule"][0]
    assert first["paid"] == {"principal": 300_000, "interest": 0, "penalty": 0, "fee": 0}
    assert first["status"] == "pending"
    assert all(line["paid"] == ZERO_PAID for line in after["schedule"][1:])
    assert demo.get(f"/v1/loans/{loan['loan_id']}/payoff").json()["total"] == 700_000


def test_prepay_shorten_term_keeps_the_installment_with_fewer_periods(
    demo: PartnerClient,
) -> None:
    loan = new_loan(demo)

    response = repay(demo, loan["loan_id"], 300_000, kind="prepay_shorten_term")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "prepay_shorten_term"
    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 0, "principal": 300_000}
    assert body["prepayment_fee"] == 0
    after = body["loan"]
    assert after == get_loan(demo, loan["loan_id"])
    assert after["term"] == 12  # the contract term; the schedule is what got shorter
    assert after["remaining_periods"] == 9
    assert after["outstanding"]["principal"] == 700_000
    assert [line["due_date"] for line in after["schedule"]] == [
        line["due_date"] for line in loan["schedule"][:9]
    ]
    rows = _schedule_rows(after)
    # The installment 91,680 is kept: period 1 repays 91,680 − 10,500 = 81,180 (+ 300,000),
    # and 700,000 is gone after 9 periods, the last paying what is left.
    assert rows[0] == (381_180, 10_150, 0)
    assert rows[1] == (82_398, 9_282, 0)
    assert {p + i for p, i, _ in rows[1:8]} == {FIRST_TOTAL}
    assert rows[8] == (15_422, 231, 0)
    assert sum(p for p, _, _ in rows) == P


def test_prepayment_after_the_first_installment_rebuilds_from_the_second(
    demo: PartnerClient,
) -> None:
    """Installment 1 paid in advance keeps its figures (interest paid ahead is not
    refunded); the rebuild starts at installment 2 with 623,320 over 11 periods."""
    loan = new_loan(demo)
    assert repay(demo, loan["loan_id"], FIRST_TOTAL).status_code == 201

    response = repay(demo, loan["loan_id"], 300_000, kind="prepay_reduce_installment")

    assert response.status_code == 201, response.text
    after = response.json()["loan"]
    rows = _schedule_rows(after)
    assert rows[0] == (FIRST_PRINCIPAL, FIRST_INTEREST, 0)
    assert after["schedule"][0]["status"] == "paid"
    # T = round(623,320·r / (1 − (1+r)^−11)) = 61,892; period 2: 623,320 × 1.5% = 9,350.
    assert rows[1] == (300_000 + 52_542, 9_350, 0)
    assert {p + i for p, i, _ in rows[2:11]} == {61_892}
    assert rows[11] == (60_977, 915, 0)
    assert sum(p for p, _, _ in rows) == P
    assert after["outstanding"]["principal"] == P - FIRST_PRINCIPAL - 300_000
    assert after["remaining_periods"] == 11


@pytest.mark.parametrize("kind", ["prepay_reduce_installment", "prepay_shorten_term"])
def test_prepayment_of_exactly_the_payoff_total_settles_the_loan(
    demo: PartnerClient, kind: str
) -> None:
    loan = new_loan(demo)
    response = repay(demo, loan["loan_id"], P, kind=kind)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 0, "principal": P}
    assert body["loan"]["status"] == "paid_off"
    assert body["loan"]["remaining_periods"] == 0
    assert body["loan"]["outstanding"] == ZERO_PAID
    assert get_loan(demo, loan["loan_id"]) == body["loan"]


@pytest.mark.parametrize("kind", ["prepay_reduce_installment", "prepay_shorten_term"])
def test_prepayment_of_more_than_the_loan_is_422_and_changes_nothing(
    demo: PartnerClient, untouched_loan: dict[str, Any], kind: str
) -> None:
    loan = untouched_loan
    external_ref = ref()
    response = repay(demo, loan["loan_id"], loan["principal"] + 1, kind=kind,
                     external_ref=external_ref)
    assert_error(response, 422, "amount_exceeds_due", "amount")
    assert get_loan(demo, loan["loan_id"]) == loan
    # The refusal did not use up the reference.
    other = new_loan(demo, amount=100_000)
    assert repay(demo, other["loan_id"], 1_000, external_ref=external_ref).status_code == 201


def test_repaying_an_unknown_or_foreign_loan_is_404(
    demo: PartnerClient, demo2: PartnerClient
) -> None:
    loan = new_loan(demo)
    assert_error(repay(demo2, loan["loan_id"], 1_000), 404, "not_found")
    assert_error(repay(demo, "LN-0000-9999999999", 1_000), 404, "not_found")
    assert_error(repay(demo, "nope", 1_000), 404, "not_found")
    assert get_loan(demo, loan["loan_id"]) == loan


def test_duplicate_external_ref_is_409(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    external_ref = ref()
    assert repay(demo, loan["loan_id"], 1_000, external_ref=external_ref).status_code == 201

    again = repay(demo, loan["loan_id"], 2_000, external_ref=external_ref)  # new key
    assert_error(again, 409, "duplicate_external_ref")
    after = get_loan(demo, loan["loan_id"])
    assert after["schedule"][0]["paid"]["interest"] == 1_000


def test_external_ref_is_unique_per_partner_across_loans(
    demo: PartnerClient, demo2: PartnerClient
) -> None:
    """API.md: external_ref is unique per partner for good, whichever loan it pays.
    Loans of different customers usually live in different shards; the test makes sure it
    uses two loans that do (a loan id names its shard)."""
    first = new_loan(demo)
    others = [new_loan(demo, amount=100_000) for _ in range(3)]
    shard = first["loan_id"].split("-")[1]
    other = next((o for o in others if o["loan_id"].split("-")[1] != shard), others[0])
    external_ref = ref()
    assert repay(demo, first["loan_id"], 1_000, external_ref=external_ref).status_code == 201

    assert_error(
        repay(demo, other["loan_id"], 1_000, external_ref=external_ref),
        409, "duplicate_external_ref",
    )
    assert get_loan(demo, other["loan_id"]) == other

    # Another partner's references are its own.
    theirs = new_loan(demo2, amount=100_000)
    assert repay(demo2, theirs["loan_id"], 1_000, external_ref=external_ref).status_code == 201


# ---- payoff ---------------------------------------------------------------------------------


def test_payoff_quote_on_the_disbursement_day_is_the_principal(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    response = demo.get(f"/v1/loans/{loan['loan_id']}/payoff")
    assert response.status_code == 200, response.text
    quote = response.json()
    expected = {"as_of": "2026-11-29", "principal": P, "interest": 0, "penalty": 0, "fee": 0,
                "total": P}
    assert {key: quote.get(key) for key in expected} == expected


def test_payoff_after_a_regular_repayment_owes_the_remaining_principal(
    demo: PartnerClient,
) -> None:
    loan = new_loan(demo)
    assert repay(demo, loan["loan_id"], FIRST_TOTAL).status_code == 201
    quote = demo.get(f"/v1/loans/{loan['loan_id']}/payoff").json()
    # Day 0: no interest accrued; the interest paid in advance is not refunded.
    assert quote["principal"] == P - FIRST_PRINCIPAL
    assert quote["interest"] == 0
    assert quote["total"] == P - FIRST_PRINCIPAL


def test_payoff_with_exactly_the_total_pays_the_loan_off(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    total = demo.get(f"/v1/loans/{loan['loan_id']}/payoff").json()["total"]
    assert total == P

    response = repay(demo, loan["loan_id"], total, kind="payoff")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 0, "principal": P}
    after = body["loan"]
    assert after["status"] == "paid_off"
    assert after["outstanding"] == {"principal": 0, "interest": 0, "penalty": 0, "fee": 0}
    assert all(line["status"] == "paid" for line in after["schedule"])
    assert sum(line["paid"]["principal"] for line in after["schedule"]) == P
    assert sum(line["paid"]["interest"] for line in after["schedule"]) == 0
    assert get_loan(demo, loan["loan_id"]) == after

    # A paid-off loan takes no more money and has no quote.
    assert_error(repay(demo, loan["loan_id"], 1), 409, "invalid_state")
    assert_error(repay(demo, loan["loan_id"], 1, kind="payoff"), 409, "invalid_state")
    assert_error(demo.get(f"/v1/loans/{loan['loan_id']}/payoff"), 409, "invalid_state")
    assert get_loan(demo, loan["loan_id"]) == after

    # The whole limit is available again.
    customer = demo.get(f"/v1/customers/{after['customer_id']}").json()
    assert customer["credit_limit"] > 0
    assert customer["available_limit"] == customer["credit_limit"]


@pytest.mark.parametrize(("delta", "code"), [(-1, "amount_below_payoff"),
                                             (+1, "amount_exceeds_due")])
def test_payoff_with_another_amount_is_422(demo: PartnerClient, delta: int, code: str) -> None:
    loan = new_loan(demo)
    assert_error(repay(demo, loan["loan_id"], P + delta, kind="payoff"), 422, code)
    assert get_loan(demo, loan["loan_id"]) == loan


# ---- the customer view ----------------------------------------------------------------------


def test_customer_view_after_a_booking_and_a_repayment(demo: PartnerClient) -> None:
    id_no = fresh_id()
    loan = new_loan(demo, id_no=id_no, phone="13800138000")
    assert repay(demo, loan["loan_id"], FIRST_TOTAL).status_code == 201

    response = demo.get(f"/v1/customers/{loan['customer_id']}")

    assert response.status_code == 200, response.text
    customer = response.json()
    assert customer["customer_id"] == loan["customer_id"]
    # The limit itself is checked in test_api_applications (income × 250%, API.md).
    app = demo.get(f"/v1/applications/{loan['application_id']}").json()
    limit = app["decision"]["credit_limit"]
    assert customer["credit_limit"] == limit
    assert customer["available_limit"] == limit - (P - FIRST_PRINCIPAL)
    assert customer["loan_ids"] == [loan["loan_id"]]
    assert customer["name_masked"] == "张*"
    assert customer["id_number_masked"] == id_no[:4] + "**********" + id_no[-4:]
    assert len(customer["id_number_masked"]) == 18
    assert customer["phone_masked"] == "138****8000"
    # Nothing in clear, anywhere in the body (even in another field or an escape).
    for secret in (id_no, "13800138000", "张三", id_no[4:14]):
        assert secret not in response.text


# ---- batch ----------------------------------------------------------------------------------


def test_batch_of_ten_across_loans_answers_each_in_order(demo: PartnerClient) -> None:
    loans = [new_loan(demo, amount=500_000) for _ in range(3)]
    items = [
        {"loan_id": loans[i % 3]["loan_id"], "amount": 1_000 + i, "external_ref": ref(),
         "kind": "regular"}
        for i in range(10)
    ]
    key = uuid.uuid4().hex

    response = repay_batch(demo, items, key=key)

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(10))
    for i, result in enumerate(results):
        assert result["status"] == 201, result
        assert result["body"]["loan_id"] == items[i]["loan_id"]
        assert result["body"]["allocation"] == {
            "penalty": 0, "fee": 0, "interest": 1_000 + i, "principal": 0,
        }
    for n, loan in enumerate(loans):
        paid = sum(1_000 + i for i in range(10) if i % 3 == n)
        after = get_loan(demo, loan["loan_id"])
        assert after["schedule"][0]["paid"]["interest"] == paid
        assert after["outstanding"]["principal"] == 500_000

    # Replay: the same bytes, marked, and no second effect.
    replay = repay_batch(demo, items, key=key)
    assert replay.status_code == 200
    assert replay.content == response.content
    assert replay.headers.get("idempotent-replayed") == "true"
    assert response.headers.get("idempotent-replayed") is None
    for n, loan in enumerate(loans):
        paid = sum(1_000 + i for i in range(10) if i % 3 == n)
        assert get_loan(demo, loan["loan_id"])["schedule"][0]["paid"]["interest"] == paid


def test_batch_items_fail_alone(demo: PartnerClient, demo2: PartnerClient) -> None:
    loan = new_loan(demo)
    foreign = new_loan(demo2, amount=100_000)
    owed = sum(line["total"] for line in loan["schedule"])
    items: list[Any] = [
        {"loan_id": loan["loan_id"], "amount": FIRST_TOTAL, "external_ref": ref()},
        {"loan_id": "LN-0000-9999999999", "amount": 100, "external_ref": ref()},
        {"loan_id": loan["loan_id"], "amount": owed, "external_ref": ref()},  # > what is left
        {"loan_id": loan["loan_id"], "amount": "x", "external_ref": ref()},
        {"loan_id": "garbage", "amount": 100, "external_ref": ref()},
        {"loan_id": foreign["loan_id"], "amount": 100, "external_ref": ref()},
        {"loan_id": loan["loan_id"], "amount": 100, "external_ref": ref(), "kind": "nope"},
        {"loan_id": loan["loan_id"], "amount": 100, "external_ref": ref(), "extra": 1},
        {"loan_id": loan["loan_id"], "amount": 100, "external_ref": ref()},
    ]

    response = repay_batch(demo, items)

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    statuses = [r["status"] for r in results]
    assert statuses == [201, 404, 422, 400, 404, 404, 400, 400, 201]
    codes = [r["body"].get("error", {}).get("code") for r in results]
    assert codes == [None, "not_found", "amount_exceeds_due", "invalid_request", "not_found",
                     "not_found", "invalid_request", "invalid_request", None]
    assert results[3]["body"]["error"].get("field") == "amount"
    assert results[6]["body"]["error"].get("field") == "kind"
    assert results[0]["body"]["allocation"] == {
        "penalty": 0, "fee": 0, "interest": FIRST_INTEREST, "principal": FIRST_PRINCIPAL,
    }
    assert results[8]["body"]["allocation"]["interest"] == 100
    after = get_loan(demo, loan["loan_id"])
    assert after["outstanding"]["principal"] == P - FIRST_PRINCIPAL
    assert after["schedule"][1]["paid"]["interest"] == 100
    assert get_loan(demo2, foreign["loan_id"]) == foreign


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        ([{"loan_id": "LN-0000-0000000001", "amount": 1, "external_ref": f"R-{i}"}
          for i in range(1001)], "items"),
        ("x", "items"),
    ],
)
def test_batch_size_outside_1_to_1000_is_400(
    demo: PartnerClient, items: Any, field: str
) -> None:
    assert_error(repay_batch(demo, items), 400, "invalid_request", field)


def test_batch_of_exactly_1000_items_is_accepted(demo: PartnerClient) -> None:
    items = [{"loan_id": "LN-0000-9999999999", "amount": 1, "external_ref": ref()}
             for _ in range(1000)]
    response = repay_batch(demo, items)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1000
    assert {r["status"] for r in results} == {404}


def test_batch_with_unknown_top_level_field_is_400(
    demo: PartnerClient, untouched_loan: dict[str, Any]
) -> None:
    loan = untouched_loan
    body = {"items": [{"loan_id": loan["loan_id"], "amount": 1, "external_ref": ref()}],
            "x": 1}
    assert_error(demo.post("/v1/repayments/batch", body), 400, "invalid_request", "x")
    assert get_loan(demo, loan["loan_id"]) == loan


def test_batch_duplicate_external_ref_inside_one_batch(demo: PartnerClient) -> None:
    loan = new_loan(demo)
    same = ref()
    items = [{"loan_id": loan["loan_id"], "amount": 1_000, "external_ref": same},
             {"loan_id": loan["loan_id"], "amount": 2_000, "external_ref": same}]
    results = repay_batch(demo, items).json()["results"]
    assert [r["status"] for r in results] == [201, 409]
    assert results[1]["body"]["error"]["code"] == "duplicate_external_ref"
    assert get_loan(demo, loan["loan_id"])["schedule"][0]["paid"]["interest"] == 1_000
