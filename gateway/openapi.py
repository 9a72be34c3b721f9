"""The OpenAPI 3.1 document of both ports, generated from the same Structs the code decodes
and renders, so the document cannot drift from the implementation."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.partner_api import BatchResponse
from gateway.schemas import ApplicationIn, BatchRepaymentItemIn, BookLoanIn, RepaymentIn
from lending.commands import ErrorBody
from lending.loans import REPAYMENT_KINDS
from lending.views import ApplicationView, CustomerView, LoanView, PayoffView, RepaymentView


# Operator reports. `storage/cluster_store.py` builds them as dicts; these Structs only
# describe them here (keep the two in step).
class TrialBalanceAccount(msgspec.Struct):
    """One account of the chart with its running totals; `balance` is positive on the
    account's normal side (debit − credit for debit accounts, credit − debit otherwise)."""

    code: str
    name: str
    role: str
    debit: int
    credit: int
    balance: int


class TrialBalance(msgspec.Struct):
    """试算平衡 from `account_balances`: one book (`?book=`), or all books summed (`book`
    null). `books` lists every book that has entries; `balanced` is total_debit ==
    total_credit."""

    book: str | None
    books: list[str]
    accounts: list[TrialBalanceAccount]
    total_debit: int
    total_credit: int
    balanced: bool


class ReconciliationDifference(msgspec.Struct):
    """An account where a loan's journal disagrees with its state (net debit, fen). A
    `loan_id` with no stored loan is reported with `expected` 0."""

    loan_id: str
    account: str
    role: str
    expected: int
    ledger: int


class Reconciliation(msgspec.Struct):
    """对账: every loan of the shards read, its state against its journal lines. At most
    100 differences are listed; `loans_with_differences` counts them all."""

    book: str | None
    shards: list[int]
    loans_checked: int
    loans_with_differences: int
    differences: list[ReconciliationDifference]
    reconciled: bool


_TYPES: list[Any] = [
    ApplicationIn, BookLoanIn, RepaymentIn, BatchRepaymentItemIn, ApplicationView, LoanView,
    PayoffView, RepaymentView, CustomerView, BatchResponse, ErrorBody, TrialBalance,
    Reconciliation,
]

# Descriptions of fields whose meaning the name alone does not give. A field missing from
# its schema fails the build, so a rename cannot leave a stale note behind.
_FIELD_NOTES: dict[tuple[str, str], str] = {
    ("RepaymentIn", "kind"): "regular (overdue, due, then the next installment); "
    "prepay_reduce_installment (partial prepayment, same term, lower installment); "
    "prepay_shorten_term (partial prepayment, same installment, fewer periods; not for "
    "interest_first or bullet); payoff (exactly the payoff quote's total)",
    ("BatchRepaymentItemIn", "kind"): "as in RepaymentIn",
    ("RepaymentView", "prepayment_fee"): "the part of allocation.fee that is the prepayment "
    "fee (0 unless the product charges one)",
    ("AllocationView", "fee"): "fees paid, including the prepayment fee, so that the four "
    "components sum to the amount",
    ("PayoffView", "fee"): "fees of installments due on or before as_of plus the prepayment "
    "fee (fees not yet due are waived)",
    ("PayoffView", "prepayment_fee"): "the part of fee that is the prepayment fee, on the "
    "principal not yet due",
    ("PayoffView", "interest"): "unpaid interest of installments due on or before as_of, plus "
    "interest to date at the daily rate on the principal not yet due",
    ("LoanView", "non_accrual"): "true while interest, penalty and fees are tracked off "
    "balance sheet (非应计: DPD over servicing.non_accrual_dpd, until the loan is current)",
    ("LoanView", "written_off_on"): "business date of the write-off (核销), null if not "
    "written off; repayments are still accepted as recoveries",
    ("LoanView", "remaining_periods"): "installments not yet paid",
    ("LoanView", "outstanding"): "unpaid principal; interest, penalty and fees recognised "
    "(accrued or charged) and unpaid, not the future schedule",
}

# Refusals of a repayment (lending/loans.py, lending/shard_state.py), also the `body` of a
# refused batch item. `field` is "kind" for kind_not_supported, else "amount".
_REPAYMENT_ERRORS: dict[int, str] = {
    400: "invalid_request: malformed body, unknown field, amount < 1, unknown kind",
    409: "invalid_state (the loan is paid off), duplicate_external_ref (the partner used "
    "this external_ref before), idempotency_key_reused, request_in_progress",
    422: "amount_exceeds_due (more than may be paid: regular above what is due plus the next "
    "installment, payoff above the quote, a prepayment whose principal part reaches the "
    "principal not yet due), amount_below_payoff (payoff below the quote's total), "
    "prepayment_below_due (a prepayment not above what is due now plus interest to date), "
    "nothing_to_prepay (no principal ahead of its due date), kind_not_supported "
    "(prepay_shorten_term on an interest_first or bullet loan; field kind), invalid_amount "
    "(amount not positive; the body check answers 400 first). Nothing changed.",
}

_SIGNED: list[dict[str, list[str]]] = [{"partnerHmac": []}]
_PARTNER_HEADERS: list[dict[str, Any]] = [
    {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
    for h in ("X-Partner-Id", "X-Timestamp", "X-Nonce", "X-Signature")
]
_IDEMPOTENCY: dict[str, Any] = {"name": "Idempotency-Key", "in": "header", "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
_PARTNER_ERRORS = (400, 401, 404, 409, 413, 422, 429, 503)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str, ok: int, response: str, request: str | None = None,
    path_param: str | None = None, errors: tuple[int, ...] = _PARTNER_ERRORS,
    error_notes: dict[int, str] | None = None,
) -> dict[str, Any]:
    params = list(_PARTNER_HEADERS)
    if request is not None:
        params.append(_IDEMPOTENCY)
    if path_param:
        params.append({"name": path_param, "in": "path", "required": True,
                       "schema": {"type": "string"}})
    notes = error_notes or {}
    op: dict[str, Any] = {
        "summary": summary,
        "security": _SIGNED,
        "parameters": params,
        "responses": {str(ok): {"description": "OK", **_json(_ref(response))}}
        | {str(code): {"description": notes.get(code, "error"), **_json(_ref("ErrorBody"))}
           for code in errors},
    }
    if request is not None:
        op["requestBody"] = {"required": True, **_json(_ref(request))}
    return op


def _ops_operation(
    summary: str, response: str | None = None, query: tuple[tuple[str, str], ...] = (),
    errors: tuple[int, ...] = (401,),
) -> dict[str, Any]:
    schema = _ref(response) if response else {"type": "object"}
    op: dict[str, Any] = {
        "summary": summary, "security": [{"operatorBearer": []}],
        "responses": {"200": {"description": "OK", **_json(schema)}}
        | {str(code): {"description": "error", **_json(_ref("ErrorBody"))} for code in errors},
    }
    if query:
        op["parameters"] = [
            {"name": name, "in": "query", "required": False, "description": note,
             "schema": {"type": "string"}}
            for name, note in query
        ]
    return op


def _annotate(components: dict[str, Any]) -> None:
    """Field notes, and the repayment kinds the gateway accepts as an enum."""
    for (schema, field), note in _FIELD_NOTES.items():
        components[schema]["properties"][field]["description"] = note
    for schema in ("RepaymentIn", "BatchRepaymentItemIn"):
        components[schema]["properties"]["kind"]["enum"] = list(REPAYMENT_KINDS)


def build_openapi() -> bytes:
    _, components = msgspec.json.schema_components(
        _TYPES, ref_template="#/components/schemas/{name}"
    )
    _annotate(components)
    plain = {"responses": {"200": {"description": "OK"}}}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "lendcore partner and operator API", "version": "1"},
        "paths": {
            "/v1/applications": {"post": _operation(
                "Submit an application", 201, "ApplicationView", "ApplicationIn")},
            "/v1/applications/{application_id}": {"get": _operation(
                "Read an application", 200, "ApplicationView", path_param="application_id")},
            "/v1/loans": {"post": _operation(
                "Book and disburse the approved offer", 201, "LoanView", "BookLoanIn")},
            "/v1/loans/{loan_id}": {"get": _operation(
                "Read a loan with its schedule", 200, "LoanView", path_param="loan_id")},
            "/v1/loans/{loan_id}/payoff": {"get": _operation(
                "Payoff quote (409 invalid_state once paid off)", 200, "PayoffView",
                path_param="loan_id")},
            "/v1/loans/{loan_id}/repayments": {"post": _operation(
                "Repay a loan: regular, partial prepayment (either kind) or payoff", 201,
                "RepaymentView", "RepaymentIn", path_param="loan_id",
                error_notes=_REPAYMENT_ERRORS)},
            "/v1/repayments/batch": {"post": {
                **_operation("Up to 1000 repayments, each alone (a refused item carries the "
                             "status and error body of a single repayment)", 200,
                             "BatchResponse"),
                "parameters": [*_PARTNER_HEADERS, _IDEMPOTENCY],
                "requestBody": {"required": True, **_json({
                    "type": "object", "additionalProperties": False, "required": ["items"],
                    "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 1000,
                                             "items": _ref("BatchRepaymentItemIn")}}})},
            }},
            "/v1/customers/{customer_id}": {"get": _operation(
                "Read a customer (masked)", 200, "CustomerView", path_param="customer_id")},
            "/ops/business-date": {"get": _ops_operation("Current business date")},
            "/ops/ledger/trial-balance": {"get": _ops_operation(
                "Trial balance, one book or all", "TrialBalance",
                (("book", "a book (e.g. own); absent: all books summed"),))},
            "/ops/ledger/reconciliation": {"get": _ops_operation(
                "Reconciliation of every loan's state against its journal (reads every loan "
                "and sums the journal per shard: use ?shard= on large books)",
                "Reconciliation",
                (("book", "only loans and journal lines of this book; absent: all books"),
                 ("shard", "one logical shard 0..logical_shards-1; absent: all shards")),
                errors=(400, 401))},
            "/ops/cluster": {"get": _ops_operation("Nodes, shard map, queues, restarts")},
            "/healthz": {"get": plain},
            "/readyz": {"get": plain},
            "/metrics": {"get": plain},
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "partnerHmac": {"type": "apiKey", "in": "header", "name": "X-Signature",
                                "description": "HMAC-SHA256, see API.md"},
                "operatorBearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
    return msgspec.json.encode(doc)
