"""Servicing through the running system, for every kind of repayment and every sandbox
product (API.md "Sandbox conventions", DOMAIN.md §3–§4): regular, partial prepayment keeping
the term or the installment, payoff; the batch endpoint; and at the end, the books: every
loan reconciles with its journal lines and the trial balance of the own book balances.

Every loan is 1,000,000 fen on the business date 2026-11-29 (the disbursement day, so no
interest has run and nothing is due yet). Sandbox products charge no prepayment fee.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest
from factories import (
    assert_error,
    get_loan,
    new_loan,
    payoff_quote,
    reconciliation,
    ref,
    repay,
    repay_batch,
    trial_balance,
)

from loadtests.client import PartnerClient

P = 1_000_000
PREPAID = 300_000
BUSINESS_DATE = "2026-11-29"
REDUCE = "prepay_reduce_installment"
SHORTEN = "prepay_shorten_term"
KINDS = ("regular", REDUCE, SHORTEN, "payoff")
NOTHING = {"principal": 0, "interest": 0, "penalty": 0, "fee": 0}


class Product(NamedTuple):
    code: str
    method: str
    term: int
    installments: int
    shortens: bool  # prepay_shorten_term applies (an amortising installment to keep)
    merchant_id: str | None = None

    def __str__(self) -> str:
        return self.code


PRODUCTS = [
    Product("CASH_EI_12", "equal_installment", 12, 12, True),
    Product("CASH_EP_12", "equal_principal", 12, 12, True),
    Product("CASH_IF_12", "interest_first", 12, 12, False),
    Product("CASH_BL_3", "bullet", 3, 1, False),
    Product("INST_FEE_12", "installment_fee", 12, 12, True, "M-7001"),
]
SHORTENING = [p for p in PRODUCTS if p.shortens]
NOT_SHORTENING = [p for p in PRODUCTS if not p.shortens]
by_product = pytest.mark.parametrize("product", PRODUCTS, ids=str)

# Every loan this module books: the closing test checks each of them against the ledger.
BOOKED: list[str] = []


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(system: Any) -> Iterator[PartnerClient]:
    partner = system.client("demo")
    yield partner
    partner.close()


def book(client: PartnerClient, product: Product) -> dict[str, Any]:
    """A fresh 1,000,000 loan of the product, checked against the booking rules."""
    loan = new_loan(client, amount=P, product=product.code, term=product.term,
                    merchant_id=product.merchant_id)
    BOOKED.append(loan["loan_id"])
    assert loan["product_code"] == product.code
    assert loan["repayment_method"] == product.method
    assert (loan["status"], loan["principal"], loan["term"]) == ("active", P, product.term)
    assert loan["disbursed_on"] == BUSINESS_DATE
    assert (loan["non_accrual"], loan["written_off_on"]) == (False, None)
    assert len(loan["schedule"]) == loan["remaining_periods"] == product.installments
    assert loan["payee"] == (
        "borrower" if product.merchant_id is None else f"merchant:{product.merchant_id}"
    )
    check_loan(loan, principal_repaid=0)
    return loan


def check_loan(loan: dict[str, Any], principal_repaid: int) -> None:
    """What must hold of every loan view after any sequence of repayments on day 0."""
    schedule = loan["schedule"]
    assert sum(line["principal"] for line in schedule) == loan["principal"] == P
    unpaid = sum(line["principal"] - line["paid"]["principal"] for line in schedule)
    assert loan["outstanding"] == {
        "principal": P - principal_repaid, "interest": 0, "penalty": 0, "fee": 0,
    }, "on day 0 nothing has accrued: only principal is outstanding"
    assert unpaid == P - principal_repaid
    for line in schedule:
        assert line["total"] == line["principal"] + line["interest"] + line["fee"], line
        paid = line["paid"]
        for part in ("principal", "interest", "fee", "penalty"):
            owed = line[part]
            assert 0 <= paid[part] <= owed, line
        settled = all(paid[part] == line[part] for part in ("principal", "interest", "fee",
                                                            "penalty"))
        assert line["status"] == ("paid" if settled else "pending"), line
    dates = [line["due_date"] for line in schedule]
    assert dates == sorted(set(dates))
    assert [line["period"] for line in schedule] == list(range(1, len(schedule) + 1))
    assert loan["remaining_periods"] == sum(1 for line in schedule if line["status"] != "paid")
    if loan["remaining_periods"] == 0:
        assert loan["status"] == "paid_off"
    else:
        assert loan["status"] == "active"
    assert (loan["dpd"], loan["bucket"], loan["classification"]) == (0, "C", "normal")


def repaid(
    client: PartnerClient, loan: dict[str, Any], amount: int, kind: str
) -> dict[str, Any]:
    """A repayment that must succeed; its body is checked against the request and a GET."""
    external_ref = ref()
    response = repay(client, loan["loan_id"], amount, kind=kind, external_ref=external_ref)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["loan_id"], body["amount"], body["kind"]) == (loan["loan_id"], amount, kind)
    assert body["external_ref"] == external_ref
    assert body["value_date"] == BUSINESS_DATE
    assert set(body["allocation"]) == {"penalty", "fee", "interest", "principal"}
    assert sum(body["allocation"].values()) == amount, "the four components sum to the amount"
    assert body["prepayment_fee"] == 0  # no sandbox product charges one
    assert body["loan"] == get_loan(client, loan["loan_id"]), "the answer is what a GET shows"
    return body


def refused(
    client: PartnerClient, loan: dict[str, Any], amount: int, kind: str, status: int,
    code: str, field: str | None = None,
) -> None:
    """A refusal that must change nothing (API.md: a request that failed changed nothing)."""
    before = get_loan(client, loan["loan_id"])
    assert_error(repay(client, loan["loan_id"], amount, kind=kind), status, code, field)
    assert get_loan(client, loan["loan_id"]) == before


def totals(loan: dict[str, Any]) -> list[int]:
    return [line["total"] for line in loan["schedule"]]


def still_owed(line: dict[str, Any]) -> int:
    return line["total"] + line["penalty"] - sum(line["paid"].values())


def oldest_first(line: dict[str, Any], amount: int) -> dict[str, int]:
    """How `amount` splits inside one untouched installment: penalty → fee → interest →
    principal (the sandbox products' allocation, DOMAIN.md §3)."""
    split = {}
    for part in ("penalty", "fee", "interest", "principal"):
        split[part] = min(amount, line[part] - line["paid"][part])
        amount -= split[part]
    assert amount == 0
    return split


# ---- regular --------------------------------------------------------------------------------


@by_product
def test_regular_repayment_of_exactly_the_first_installment(
    client: PartnerClient, product: Product
) -> None:
    loan = book(client, product)
    first = loan["schedule"][0]

    body = repaid(client, loan, first["total"], "regular")

    assert body["allocation"] == {"penalty": 0, "fee": first["fee"],
                                  "interest": first["interest"], "principal": first["principal"]}
    after = body["loan"]
    check_loan(after, principal_repaid=first["principal"])
    assert after["schedule"][0]["status"] == "paid"
    assert after["schedule"][0]["paid"] == {"principal": first["principal"],
                                            "interest": first["interest"],
                                            "penalty": 0, "fee": first["fee"]}
    # A regular repayment does not rewrite the schedule.
    assert totals(after) == totals(loan)
    if product.installments == 1:  # bullet: the only installment was the whole loan
        assert after["status"] == "paid_off"
        assert after["outstanding"] == NOTHING
    else:
        assert after["status"] == "active"
        assert after["remaining_periods"] == product.installments - 1
        assert all(line["paid"] == NOTHING for line in after["schedule"][1:])


@by_product
def test_regular_partial_repayment_then_overpayment(
    client: PartnerClient, product: Product
) -> None:
    loan = book(client, product)
    first = loan["schedule"][0]

    partial = repaid(client, loan, 1_000, "regular")

    # INST_FEE_12's installment is fee + principal (the fee first); the others' interest.
    assert partial["allocation"] == oldest_first(first, 1_000)
    assert partial["allocation"]["principal"] == 0
    after = partial["loan"]
    check_loan(after, principal_repaid=0)
    assert after["schedule"][0]["status"] == "pending"
    rest = first["total"] - 1_000
    # A regular repayment may pay what is due plus the next installment: here the rest of
    # installment 1. One fen more (or everything owed) is refused and changes nothing.
    refused(client, loan, rest + 1, "regular", 422, "amount_exceeds_due", "amount")
    refused(client, loan, sum(totals(loan)), "regular", 422, "amount_exceeds_due", "amount")

    body = repaid(client, loan, rest, "regular")

    assert body["allocation"] == oldest_first(after["schedule"][0], rest)
    assert body["loan"]["schedule"][0]["status"] == "paid"
    check_loan(body["loan"], principal_repaid=first["principal"])


# ---- partial prepayment keeping the term (lower installment) --------------------------------


@by_product
def test_prepay_reduce_installment(client: PartnerClient, product: Product) -> None:
    loan = book(client, product)

    body = repaid(client, loan, PREPAID, REDUCE)

    # Day 0: nothing due, no interest to date: all of it is principal.
    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 0, "principal": PREPAID}
    after = body["loan"]
    check_loan(after, principal_repaid=PREPAID)
    before_lines, lines = loan["schedule"], after["schedule"]
    # The term is kept: as many periods, on the same dates.
    assert len(lines) == len(before_lines) == after["remaining_periods"]
    assert [line["due_date"] for line in lines] == [line["due_date"] for line in before_lines]
    # The prepaid principal is recorded on installment 1; what is still owed on it, and every
    # later installment, is lower than before.
    head = lines[0]
    assert head["paid"] == {"principal": PREPAID, "interest": 0, "penalty": 0, "fee": 0}
    assert still_owed(head) < before_lines[0]["total"]
    for old, new in zip(before_lines[1:], lines[1:], strict=True):
        assert new["total"] < old["total"], (old, new)
    assert sum(line["interest"] + line["fee"] for line in lines) < sum(
        line["interest"] + line["fee"] for line in before_lines
    )
    balance = P - PREPAID
    middle = lines[1:-1]
    if product.method == "equal_installment":
        assert len({line["total"] for line in middle}) == 1, "one new installment amount"
    elif product.method in ("equal_principal", "installment_fee"):
        assert len({line["principal"] for line in middle}) == 1
    elif product.method == "interest_first":
        assert [line["principal"] for line in lines] == [PREPAID] + [0] * 10 + [balance]
        # monthly interest on the new balance: 700,000 × 1.5% = 10,500
        assert {line["interest"] for line in lines[1:]} == {10_500}
    if product.method == "installment_fee":
        # the fee is charged on the new balance from period 2 on: 700,000 × 0.60% = 4,200
        assert {line["fee"] for line in lines[1:]} == {4_200}
        assert head["fee"] == before_lines[0]["fee"]
    assert payoff_quote(client, loan["loan_id"])["total"] == balance


# ---- partial prepayment keeping the installment (shorter term) ------------------------------


@pytest.mark.parametrize("product", SHORTENING, ids=str)
def test_prepay_shorten_term(client: PartnerClient, product: Product) -> None:
    loan = book(client, product)

    body = repaid(client, loan, PREPAID, SHORTEN)

    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 0, "principal": PREPAID}
    after = body["loan"]
    check_loan(after, principal_repaid=PREPAID)
    before_lines, lines = loan["schedule"], after["schedule"]
    assert len(lines) < len(before_lines), "fewer periods"
    assert after["remaining_periods"] == len(lines)
    assert after["term"] == product.term  # the contract term does not change
    assert [line["due_date"] for line in lines] == [
        line["due_date"] for line in before_lines[: len(lines)]
    ]
    assert lines[0]["paid"]["principal"] == PREPAID
    kept = before_lines[1]
    for line in lines[1:-1]:  # the installment is kept; the last one pays what is left
        if product.method == "equal_installment":
            assert line["total"] == kept["total"], line
        else:  # equal principal / installment fee keep their principal (and fee)
            assert (line["principal"], line["fee"]) == (kept["principal"], kept["fee"]), line
    assert 0 < lines[-1]["principal"] <= kept["principal"]
    assert lines[-1]["total"] <= kept["total"]
    assert sum(line["interest"] + line["fee"] for line in lines) < sum(
        line["interest"] + line["fee"] for line in before_lines
    )
    assert payoff_quote(client, loan["loan_id"])["total"] == P - PREPAID


@pytest.mark.parametrize("product", NOT_SHORTENING, ids=str)
def test_prepay_shorten_term_is_not_supported_without_an_amortising_installment(
    client: PartnerClient, product: Product
) -> None:
    """interest_first and bullet repay their principal in one piece at the end: there is no
    installment to keep (lending/loans.py); prepay_reduce_installment is their prepayment."""
    loan = book(client, product)
    refused(client, loan, PREPAID, SHORTEN, 422, "kind_not_supported", "kind")
    refused(client, loan, P, SHORTEN, 422, "kind_not_supported", "kind")
    assert get_loan(client, loan["loan_id"]) == loan


@pytest.mark.parametrize(
    ("product", "kind"),
    [(p, REDUCE) for p in PRODUCTS] + [(p, SHORTEN) for p in SHORTENING],
    ids=lambda value: str(value),
)
def test_prepayment_of_more_than_the_principal_is_refused(
    client: PartnerClient, product: Product, kind: str
) -> None:
    loan = book(client, product)
    refused(client, loan, P + 1, kind, 422, "amount_exceeds_due", "amount")
    assert get_loan(client, loan["loan_id"]) == loan


# ---- payoff ---------------------------------------------------------------------------------


@by_product
def test_payoff(client: PartnerClient, product: Product) -> None:
    loan = book(client, product)
    first = loan["schedule"][0]
    advance = repaid(client, loan, 1_000, "regular")  # fee or interest paid in advance
    quote = payoff_quote(client, loan["loan_id"])
    # Day 0: the principal; no interest to date; fees not yet due are waived; what was paid
    # in advance is not refunded (DOMAIN.md §3, docs/domain-choices.md).
    assert quote == {"as_of": BUSINESS_DATE, "principal": P, "interest": 0, "penalty": 0,
                     "fee": 0, "prepayment_fee": 0, "total": P}
    refused(client, loan, P - 1, "payoff", 422, "amount_below_payoff", "amount")
    refused(client, loan, P + 1, "payoff", 422, "amount_exceeds_due", "amount")

    body = repaid(client, loan, quote["total"], "payoff")

    assert body["allocation"] == {"penalty": 0, "fee": 0, "interest": 0, "principal": P}
    after = body["loan"]
    assert after["status"] == "paid_off"
    assert after["outstanding"] == NOTHING
    assert after["remaining_periods"] == 0
    assert all(line["status"] == "paid" for line in after["schedule"])
    check_loan(after, principal_repaid=P)
    paid_ahead = advance["allocation"]
    assert sum(line["paid"]["interest"] for line in after["schedule"]) == paid_ahead["interest"]
    assert sum(line["paid"]["fee"] for line in after["schedule"]) == paid_ahead["fee"]
    assert after["schedule"][0]["paid"]["interest"] + after["schedule"][0]["paid"]["fee"] == (
        min(1_000, first["interest"] + first["fee"])
    )
    # A paid-off loan takes no more money, of any kind, and has no quote.
    for kind in KINDS:
        refused(client, loan, 1, kind, 409, "invalid_state")
    assert_error(client.get(f"/v1/loans/{loan['loan_id']}/payoff"), 409, "invalid_state")
    assert get_loan(client, loan["loan_id"]) == after


# ---- every kind on one loan -----------------------------------------------------------------


@by_product
def test_every_kind_in_turn_on_one_loan(client: PartnerClient, product: Product) -> None:
    """regular → reduce → shorten (where it applies) → regular → payoff: each step starts
    from the schedule the previous one left."""
    loan = book(client, product)
    principal_repaid = 0
    current = loan
    steps: list[tuple[str, int]] = [(REDUCE, 200_000)]
    if product.installments > 1:
        steps.insert(0, ("regular", loan["schedule"][0]["total"]))
    if product.shortens:
        steps.append((SHORTEN, 100_000))
    for kind, amount in steps:
        body = repaid(client, current, amount, kind)
        principal_repaid += body["allocation"]["principal"]
        current = body["loan"]
        check_loan(current, principal_repaid)
    if product.installments > 1:
        # The next open installment, exactly, as a regular repayment.
        line = next(line for line in current["schedule"] if line["status"] != "paid")
        body = repaid(client, current, still_owed(line), "regular")
        principal_repaid += body["allocation"]["principal"]
        current = body["loan"]
        check_loan(current, principal_repaid)
    quote = payoff_quote(client, loan["loan_id"])
    assert quote["total"] == quote["principal"] == P - principal_repaid

    body = repaid(client, current, quote["total"], "payoff")

    assert body["loan"]["status"] == "paid_off"
    check_loan(body["loan"], P)


@pytest.mark.parametrize("kind", [REDUCE, SHORTEN, "payoff"])
def test_a_replayed_prepayment_or_payoff_applies_once(client: PartnerClient, kind: str) -> None:
    """API.md idempotency: the same key and body return the first answer byte for byte;
    the schedule is rebuilt once."""
    loan = book(client, PRODUCTS[0])
    amount = P if kind == "payoff" else PREPAID
    body = {"amount": amount, "external_ref": ref(), "kind": kind}
    key = f"replay-{ref()}"
    path = f"/v1/loans/{loan['loan_id']}/repayments"

    first = client.post(path, body, key=key)
    again = client.post(path, body, key=key)

    assert first.status_code == 201, first.text
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers.get("idempotent-replayed") == "true"
    after = get_loan(client, loan["loan_id"])
    assert after == first.json()["loan"]
    check_loan(after, principal_repaid=amount)


# ---- batch ----------------------------------------------------------------------------------


def test_batch_accepts_every_kind(client: PartnerClient) -> None:
    ei, ep, fee, bullet, interest_first = (
        book(client, PRODUCTS[0]), book(client, PRODUCTS[1]), book(client, PRODUCTS[4]),
        book(client, PRODUCTS[3]), book(client, PRODUCTS[2]),
    )
    items = [
        {"loan_id": ei["loan_id"], "amount": PREPAID, "external_ref": ref(), "kind": REDUCE},
        {"loan_id": ep["loan_id"], "amount": PREPAID, "external_ref": ref(), "kind": SHORTEN},
        {"loan_id": fee["loan_id"], "amount": 1_000, "external_ref": ref(), "kind": "regular"},
        {"loan_id": bullet["loan_id"], "amount": P, "external_ref": ref(), "kind": "payoff"},
        {"loan_id": interest_first["loan_id"], "amount": PREPAID, "external_ref": ref(),
         "kind": SHORTEN},
        {"loan_id": interest_first["loan_id"], "amount": P - 1, "external_ref": ref(),
         "kind": "payoff"},
    ]

    response = repay_batch(client, items)

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    assert [r["status"] for r in results] == [201, 201, 201, 201, 422, 422]
    assert results[4]["body"]["error"]["code"] == "kind_not_supported"
    assert results[5]["body"]["error"]["code"] == "amount_below_payoff"
    for item, result in zip(items[:4], results[:4], strict=True):
        body = result["body"]
        assert (body["loan_id"], body["kind"], body["amount"]) == (
            item["loan_id"], item["kind"], item["amount"])
        assert body["loan"] == get_loan(client, item["loan_id"])
    assert results[0]["body"]["allocation"]["principal"] == PREPAID
    assert len(results[0]["body"]["loan"]["schedule"]) == 12
    assert len(results[1]["body"]["loan"]["schedule"]) < 12
    assert results[3]["body"]["loan"]["status"] == "paid_off"
    assert get_loan(client, interest_first["loan_id"]) == interest_first


# ---- the books ------------------------------------------------------------------------------


def test_the_books_agree_with_every_loan(
    client: PartnerClient, ops: httpx.Client, system: Any
) -> None:
    """Runs last: after all of the above, every loan reconciles with its journal lines
    (GET /ops/ledger/reconciliation), the own book's trial balance balances, and, checked
    here straight from Postgres, each loan's journal says what its repayments say."""
    if not BOOKED:  # run alone: service one loan per product first
        for product in PRODUCTS:
            loan = book(client, product)
            repaid(client, loan, 100_000, REDUCE)
    report = reconciliation(ops)
    assert report["reconciled"] is True, report["differences"]
    assert report["loans_checked"] >= len(BOOKED)
    own = reconciliation(ops, "?book=own")
    assert own["reconciled"] is True and own["loans_checked"] >= len(BOOKED)
    balance = trial_balance(ops, "?book=own")
    assert balance["book"] == "own"
    assert balance["total_debit"] == balance["total_credit"] > 0
    assert balance["balanced"] is True

    pool = system.pg()
    for loan_id in BOOKED:
        view = get_loan(client, loan_id)
        repayments = system.run(pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount), 0)::int8 AS amount,"
            " coalesce(sum(principal), 0)::int8 AS principal,"
            " coalesce(sum(interest), 0)::int8 AS interest, coalesce(sum(fee), 0)::int8 AS fee,"
            " coalesce(sum(penalty), 0)::int8 AS penalty,"
            " bool_and(amount = principal + interest + fee + penalty) AS whole"
            " FROM repayments WHERE loan_id = $1", loan_id,
        ))
        net = dict(system.run(pool.fetch(
            "SELECT account, (sum(debit) - sum(credit))::int8 FROM journal_lines"
            " WHERE loan_id = $1 GROUP BY account", loan_id,
        )))
        assert repayments["whole"] in (None, True), loan_id
        # Cash: out the disbursement (to the merchant's clearing account, 2241, when the
        # product pays the merchant: 受托支付), in every repayment.
        assert net.get("1001", 0) + net.get("2241", 0) == repayments["amount"] - P, loan_id
        assert net.get("1101", 0) + net.get("1102", 0) == view["outstanding"]["principal"]
        assert P - repayments["principal"] == view["outstanding"]["principal"], loan_id
        # Nothing accrues on day 0: interest and fees are income when collected.
        assert -net.get("6011", 0) == repayments["interest"], loan_id
        assert -net.get("6021", 0) == repayments["fee"], loan_id
        assert {code for code, amount in net.items() if amount} <= {
            "1001", "1101", "1102", "2241", "6011", "6021"}, (loan_id, net)
        assert ("2241" in net) == (view["payee"] != "borrower"), (loan_id, net)
        paid = {part: sum(line["paid"][part] for line in view["schedule"])
                for part in ("principal", "interest", "fee", "penalty")}
        assert paid == {part: repayments[part] for part in paid}, loan_id
