"""The OpenAPI 3.1 document of both ports, generated from the same Structs the code decodes
and renders, so the document cannot drift from the implementation."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.partner_api import BatchResponse
from gateway.schemas import ApplicationIn, BatchRepaymentItemIn, BookLoanIn, RepaymentIn
from lending.commands import ErrorBody
from lending.views import ApplicationView, CustomerView, LoanView, PayoffView, RepaymentView

_TYPES: list[Any] = [
    ApplicationIn, BookLoanIn, RepaymentIn, BatchRepaymentItemIn, ApplicationView, LoanView,
    PayoffView, RepaymentView, CustomerView, BatchResponse, ErrorBody,
]

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
) -> dict[str, Any]:
    params = list(_PARTNER_HEADERS)
    if request is not None:
        params.append(_IDEMPOTENCY)
    if path_param:
        params.append({"name": path_param, "in": "path", "required": True,
                       "schema": {"type": "string"}})
    op: dict[str, Any] = {
        "summary": summary,
        "security": _SIGNED,
        "parameters": params,
        "responses": {str(ok): {"description": "OK", **_json(_ref(response))}}
        | {str(code): {"description": "error", **_json(_ref("ErrorBody"))} for code in errors},
    }
    if request is not None:
        op["requestBody"] = {"required": True, **_json(_ref(request))}
    return op


def _ops_operation(summary: str) -> dict[str, Any]:
    return {"summary": summary, "security": [{"operatorBearer": []}],
            "responses": {"200": {"description": "OK", **_json({"type": "object"})},
                          "401": {"description": "error", **_json(_ref("ErrorBody"))}}}


def build_openapi() -> bytes:
    _, components = msgspec.json.schema_components(
        _TYPES, ref_template="#/components/schemas/{name}"
    )
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
                "Payoff quote", 200, "PayoffView", path_param="loan_id")},
            "/v1/loans/{loan_id}/repayments": {"post": _operation(
                "Repay a loan", 201, "RepaymentView", "RepaymentIn", path_param="loan_id")},
            "/v1/repayments/batch": {"post": {
                **_operation("Up to 1000 repayments, each alone", 200, "BatchResponse"),
                "parameters": [*_PARTNER_HEADERS, _IDEMPOTENCY],
                "requestBody": {"required": True, **_json({
                    "type": "object", "additionalProperties": False, "required": ["items"],
                    "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 1000,
                                             "items": _ref("BatchRepaymentItemIn")}}})},
            }},
            "/v1/customers/{customer_id}": {"get": _operation(
                "Read a customer (masked)", 200, "CustomerView", path_param="customer_id")},
            "/ops/business-date": {"get": _ops_operation("Current business date")},
            "/ops/ledger/trial-balance": {"get": _ops_operation("Trial balance, optional ?book=")},
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
