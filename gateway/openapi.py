"""The OpenAPI 3.1 document of both ports, generated from the same Structs the code decodes
and renders, so the document cannot drift from the implementation."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.collections_desk import AssignIn, ContactIn, NoteIn, PromiseIn
from gateway.ops_access import OPS_ROUTES, ROLES
from gateway.ops_api import BlacklistIn, ShardMoveIn
from gateway.partner_api import BatchResponse
from gateway.reviews import ClaimView, ReleaseView, ReviewDecisionIn, ReviewPage
from gateway.schemas import ApplicationIn, BatchRepaymentItemIn, BookLoanIn, RepaymentIn
from gateway.webhooks_desk import EndpointIn
from lending import events as webhook_events
from lending.collections import CollectionCase
from lending.commands import ErrorBody
from lending.loans import REPAYMENT_KINDS
from lending.origination import APR_CAP, NO_PRICE_TIER
from lending.rules import RULE_ERROR
from lending.shard_state import Application, CaseActionResult, ReviewResult
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


class DailySummaryAccount(msgspec.Struct):
    """One account of a day's GL summary: balances before and after the day, positive on
    the account's normal side as in the trial balance; the day's debits and credits."""

    code: str
    name: str
    role: str
    opening: int
    debit: int
    credit: int
    closing: int


class DailySummary(msgspec.Struct):
    """总账日汇总 of one closed business date (`storage/gl_summary.py`), one book or all
    books summed (`book` null). Every account with entries up to that date is listed, moved
    that day or not; closing of a date = opening of the next. `balanced`: the day's
    total_debit == total_credit."""

    book: str | None
    business_date: str
    accounts: list[DailySummaryAccount]
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


class BusinessDate(msgspec.Struct):
    """会计日: the date every command carries; only end of day advances it."""

    business_date: str


# Blacklists and the audit trail. `gateway/ops_api.py` renders them as dicts
# (`BlacklistEntry.masked`, `storage/audit.history`); these Structs only describe them.
class BlacklistEntryView(msgspec.Struct):
    """One blacklist entry as operators see it: `value` is the device id, or for id_number
    and phone (`hashed` true) the first 12 hex characters of the keyed hash and `…`, never
    the number."""

    kind: str
    value: str
    hashed: bool
    reason: str
    added_by: str
    added_at: str


class BlacklistPage(msgspec.Struct):
    """Newest first, at most `limit`; `total` counts every entry of the kind asked for."""

    entries: list[BlacklistEntryView]
    total: int


class BlacklistAdded(msgspec.Struct):
    """`created` is false when the entry existed: its reason, added_by and added_at were
    replaced."""

    created: bool
    entry: BlacklistEntryView


class BlacklistDeleted(msgspec.Struct):
    deleted: BlacklistEntryView


class AuditEntry(msgspec.Struct):
    """One operator write: who (`actor`), what (`action`, `target`), when (`at`), and the
    object's JSON view before and after (null when it did not / does not exist)."""

    shard_id: int
    audit_id: int
    at: str
    actor: str
    action: str
    target: str
    before: Any
    after: Any


class AuditPage(msgspec.Struct):
    """The audit rows of one target, oldest first."""

    target: str
    entries: list[AuditEntry]


_TYPES: list[Any] = [
    ApplicationIn, BookLoanIn, RepaymentIn, BatchRepaymentItemIn, ApplicationView, LoanView,
    PayoffView, RepaymentView, CustomerView, BatchResponse, ErrorBody, TrialBalance,
    DailySummary,
    Reconciliation, ReviewPage, ClaimView, ReleaseView, ReviewDecisionIn, ReviewResult,
    BusinessDate, Application, BlacklistIn, BlacklistPage, BlacklistAdded, BlacklistDeleted,
    AuditPage, AssignIn, NoteIn, ContactIn, PromiseIn, CaseActionResult, CollectionCase,
    EndpointIn, ShardMoveIn, *webhook_events.PAYLOADS,
]

# The stable decision reason codes (API.md: `reasons` are stable codes): the `reason` of
# every rule of the shipped rule sets (config/risk/admission.toml, anti_fraud.toml,
# decision.toml), then the codes the pipeline itself gives. Risk staff may add codes with
# new rules; an officer's review decline carries the officer's own codes.
DECISION_REASONS: dict[str, tuple[str, ...]] = {
    "admission (准入), decline": (
        "id_checksum", "age_out_of_range", "income_low", "region_not_served",
        "purpose_not_allowed", "merchant_required", "new_customer_amount_high",
        "too_many_open_loans", "police_id_mismatch", "face_match_low"),
    "admission, manual review": (
        "face_match_review", "police_id_unavailable", "face_match_unavailable"),
    "anti-fraud (反欺诈), decline": (
        "blacklist_id", "blacklist_phone", "blacklist_device", "device_shared",
        "velocity_device", "velocity_ip", "velocity_id", "velocity_phone", "multi_partner",
        "fraud_score_high", "baiqishi_risk_flag"),
    "anti-fraud, manual review": ("multi_partner_review", "fraud_score_review"),
    "decision (决策), decline": (
        "bureau_bad", "overdue_accounts", "debt_high", "multi_lending", "lawsuits",
        "zhima_low", "score_low", "limit_exceeded"),
    "decision, manual review": (
        "bureau_unavailable", "overdue_review", "lawsuit_review", "multi_lending_review",
        "score_grey", "amount_review", "esign_unavailable", "esign_failed"),
    "pricing, decline": (NO_PRICE_TIER, APR_CAP),
    "any rule that fails to evaluate, manual review": (RULE_ERROR,),
}


def _reasons_note() -> str:
    groups = "; ".join(f"{group}: {', '.join(codes)}" for group, codes in
                       DECISION_REASONS.items())
    return (
        "stable snake_case codes, in rule order, without duplicates: the decline reasons of a "
        "declined application, the review reasons of one in manual_review, none when "
        "approved. A decline by a risk officer carries the officer's reasons. Codes of the "
        f"shipped rule sets (config/risk) — {groups}."
    )

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
    ("DecisionView", "reasons"): _reasons_note(),
    ("ApplicationView", "status"): "approved, declined or manual_review. Decided by the risk "
    "pipeline (admission, anti-fraud, external data, scorecard, decision rules, pricing); "
    "an external source that cannot be reached never fails the request: the rules decide "
    "(manual_review when an essential source such as the credit bureau is missing). "
    "manual_review lasts until a risk officer's decision is final (a maker's proposal "
    "awaiting a checker still shows manual_review)",
    ("Application", "status"): "as the partner sees it, except awaiting_confirmation: a "
    "maker's review proposal waits for a second officer (partners see manual_review)",
    ("Application", "reasons"): "as DecisionView.reasons",
    ("Application", "trace"): "how the risk pipeline decided (never shown to partners): "
    "rule-set versions and fingerprint, every stage, every rule that fired, the score and "
    "its breakdown, tier, rate, limit, APR and a summary of the facts without personal data. "
    "null for an application decided before the pipeline existed. Review decisions are in "
    "GET /ops/audit?target=application:{application_id}",
    ("DecisionTrace", "stopped_at"): "the stage that declined (admission, anti_fraud, "
    "decision, pricing); null when nothing declined",
    ("DecisionTrace", "versions"): "version of each config/risk file that decided: "
    "admission, anti_fraud, decision, scorecard, pricing",
    ("DecisionTrace", "fingerprint"): "SHA-256 of the five config/risk files' bytes",
    ("DecisionTrace", "fired"): "every rule whose `when` was true, in stage and rule order; a "
    "rule that failed to evaluate fired as review / rule_error with its `error`",
    ("StageTrace", "evaluated"): "rules evaluated (scorecard: features); fewer than total "
    "when a first_decline set stopped at its first decline (stopped_early)",
    ("FactsSummary", "sources"): "per external source: ok, unavailable (timeout, error, "
    "open circuit) or missing (not asked)",
    ("FactsSummary", "screened"): "the gateway ran the external-data connectors",
    ("ScoreLine", "bin"): "the bin of the value, [min, max), or missing / invalid",
    ("ScoreLine", "points"): "factor · log_odds of the bin, to the hundredth",
    ("ShardMoveIn", "to"): "a Ray node id (its least-loaded shard host; a unique prefix of "
    "at least 6 characters will do) or a shard host's actor name (GET /ops/cluster)",
    ("BlacklistIn", "kind"): "id_number, phone or device",
    ("BlacklistIn", "value"): "the clear ID number (check character verified) or mainland "
    "mobile number, stored only as its keyed hash (a 64-hex keyed hash is also accepted); "
    "or the device id, stored as given",
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
    errors: tuple[int, ...] = (401,), path_params: tuple[str, ...] = (),
    request: str | None = None,
) -> dict[str, Any]:
    schema = _ref(response) if response else {"type": "object"}
    op: dict[str, Any] = {
        "summary": summary, "security": [{"operatorBearer": []}],
        "responses": {"200": {"description": "OK", **_json(schema)}}
        | {str(code): {"description": "error", **_json(_ref("ErrorBody"))} for code in errors},
    }
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in path_params]
    params += [{"name": name, "in": "query", "required": False, "description": note,
                "schema": {"type": "string"}} for name, note in query]
    if params:
        op["parameters"] = params
    if request is not None:
        op["requestBody"] = {"required": True, **_json(_ref(request))}
    return op


def _daily_summary_operation() -> dict[str, Any]:
    op = _ops_operation(
        "Daily GL summary (总账日汇总) of a closed business date: per account the opening "
        "balance, the day's debits and credits, the closing balance. Built by end of day: "
        "404 until that date's end of day built it",
        "DailySummary",
        (("business_date", "a closed business date, YYYY-MM-DD"),
         ("book", "a book (e.g. own); absent: all books summed; unknown: 404")),
        errors=(400, 401, 404))
    op["parameters"][0]["required"] = True  # business_date
    return op


def _review_operation(
    summary: str, response: str, request: str | None = None,
    errors: tuple[int, ...] = (401, 403, 404, 409, 503),
) -> dict[str, Any]:
    """POST /ops/reviews/{application_id}/... (risk_officer)."""
    return _ops_operation(summary, response, errors=errors, path_params=("application_id",),
                          request=request)


def _case_operation(summary: str, request: str) -> dict[str, Any]:
    """POST /ops/collections/cases/{case_id}/... (through the case's shard)."""
    return _ops_operation(summary, "CaseActionResult", path_params=("case_id",),
                          request=request, errors=(400, 401, 403, 404, 409, 413, 422, 503))


def _webhook_paths() -> dict[str, Any]:
    """/ops/webhooks/… (gateway/webhooks_desk.py)."""
    return {
        "/ops/webhooks/events": {"get": _ops_operation(
            "Partner webhook events, newest first, with attempts, next_attempt_at, "
            "last_status and last_error; counts of pending and failed events",
            query=(("status", "pending, delivered or failed"), ("partner_id", "a partner"),
                   ("loan_id", "one loan's events"),
                   ("event_type", ", ".join(webhook_events.EVENT_TYPES)),
                   ("limit", "1..500, default 50"),
                   ("after", "next_after of the previous page")),
            errors=(400, 401))},
        "/ops/webhooks/events/{event_id}": {"get": _ops_operation(
            "One event with the JSON document it delivers (payload)",
            path_params=("event_id",), errors=(401, 404))},
        "/ops/webhooks/events/{event_id}/redeliver": {"post": _ops_operation(
            "Send a delivered or failed event again: pending, due now, attempts reset "
            "(audited as webhook.redeliver); 409 invalid_state when it is pending",
            path_params=("event_id",), errors=(401, 404, 409))},
        "/ops/webhooks/endpoints": {"get": _ops_operation(
            "Every partner's webhook endpoint: source config (the partners file) or ops "
            "(registered here); never the secret")},
        "/ops/webhooks/endpoints/{partner_id}": {
            "put": _ops_operation(
                "Register or replace a partner's endpoint and signing secret (audited as "
                "webhook.endpoint_put); answered once every shard host writes events for "
                "the partner. 409 config_managed for an endpoint of the partners file",
                path_params=("partner_id",), request="EndpointIn",
                errors=(400, 401, 404, 409, 413, 503)),
            "delete": _ops_operation(
                "Remove a partner's endpoint (audited as webhook.endpoint_delete): its "
                "changes write no more events; its pending ones fail their attempts",
                path_params=("partner_id",), errors=(401, 404, 409, 503)),
        },
    }


def _webhooks() -> dict[str, Any]:
    """What lendcore POSTs to a partner's endpoint (OpenAPI 3.1 `webhooks`)."""
    headers = {
        name: {"required": True, "schema": {"type": "string"}, "description": note}
        for name, note in (
            ("X-Partner-Id", "the partner the event is for"),
            ("X-Timestamp", "unix seconds of this attempt"),
            ("X-Nonce", "fresh for every attempt"),
            ("X-Signature", "HMAC-SHA256 under the endpoint's secret, the partner API's "
                            "scheme: POST, the endpoint URL's path and query, timestamp, "
                            "nonce, SHA-256 of the body"),
            ("X-Event-Id", "dedupe by it: an event may come more than once"),
            ("X-Event-Type", ", ".join(webhook_events.EVENT_TYPES)),
            ("X-Delivery-Attempt", "1 for the first attempt"),
        )
    }
    envelope = {
        "type": "object",
        "required": ["event_id", "type", "partner_id", "occurred_on", "sequence",
                     "application_id", "loan_id", "data"],
        "properties": {
            "event_id": {"type": "string"},
            "type": {"type": "string", "enum": list(webhook_events.EVENT_TYPES)},
            "partner_id": {"type": "string"},
            "occurred_on": {"type": "string", "format": "date"},
            "sequence": {"type": "integer", "description": "orders the events of one loan"},
            "application_id": {"type": "string"},
            "loan_id": {"type": ["string", "null"]},
            "data": {"oneOf": [_ref(t.__name__) for t in webhook_events.PAYLOADS
                                if t is not webhook_events.LoanState]},
        },
    }
    return {"partnerEvent": {"post": {
        "summary": "A partner event, delivered at least once, in order per loan; answer 2xx "
                   "once stored (anything else is retried with backoff)",
        "parameters": [{"name": n, "in": "header", **h} for n, h in headers.items()],
        "requestBody": {"required": True, **_json(envelope)},
        "responses": {"200": {"description": "any 2xx: delivered"}},
    }}}


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
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "lendcore partner and operator API", "version": "1"},
        "paths": {
            "/v1/applications": {"post": _operation(
                "Submit an application; it is decided at once (approved, declined or "
                "manual_review). 503 when the anti-fraud store (Redis) is unavailable; an "
                "unreachable external data source never fails the request", 201,
                "ApplicationView", "ApplicationIn")},
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
            "/ops/business-date": {"get": _ops_operation(
                "Current business date", "BusinessDate")},
            "/ops/ledger/trial-balance": {"get": _ops_operation(
                "Trial balance, one book or all", "TrialBalance",
                (("book", "a book (e.g. own); absent: all books summed; unknown: 404"),),
                errors=(400, 401, 404))},
            "/ops/ledger/daily-summary": {"get": _daily_summary_operation()},
            "/ops/settlements": {"get": _ops_operation(
                "Settlement files (清算对账文件) of the books other than own (funder:<id>, "
                "guarantor:<partner>), built by end of day: {business_date, book, files: "
                "[{book, business_date, loans, totals (the total record's figures by "
                "column), sha256, bytes, generated_at, download}]}, newest date first",
                query=(("business_date", "a closed business date, YYYY-MM-DD; absent: the "
                        "latest files; not settled yet: 404"),
                       ("book", "a book with settlement files, e.g. funder:bank_a; unknown: "
                        "404"),
                       ("limit", "1..1000, default 100")),
                errors=(400, 401, 404))},
            "/ops/settlements/{book}/{business_date}": {"get": {
                **_ops_operation(
                    "One settlement file, its exact stored bytes (CSV; columns in "
                    "docs/operations.md \"Settlement files\"); header X-Checksum-SHA256 = "
                    "its checksum record's digest: SHA-256 of every byte before that record",
                    path_params=("book", "business_date"), errors=(400, 401, 404)),
                "responses": {
                    "200": {"description": "OK", "content": {"text/csv": {
                        "schema": {"type": "string"}}},
                        "headers": {"X-Checksum-SHA256": {"schema": {"type": "string"}}}},
                    **{str(code): {"description": "error", **_json(_ref("ErrorBody"))}
                       for code in (400, 401, 404)}},
            }},
            "/ops/ledger/reconciliation": {"get": _ops_operation(
                "Reconciliation of every loan's state against its journal (reads every loan "
                "and sums the journal per shard: use ?shard= on large books)",
                "Reconciliation",
                (("book", "only loans and journal lines of this book; absent: all books; "
                          "unknown: 404"),
                 ("shard", "one logical shard 0..logical_shards-1; absent: all shards")),
                errors=(400, 401, 404))},
            "/ops/cluster": {"get": _ops_operation(
                "Nodes, hosts, the versioned shard map (map_version; per shard: host, "
                "host_name, node, map_state serving|moving, lease epoch and owner, live "
                "state), queues, restarts, the coordinator's last moves")},
            "/ops/cluster/shards/{shard_id}/move": {"post": _ops_operation(
                "Move a shard to another node or shard host (admin; audited as shard.move, "
                "target shard:{id}). Answers when the move is done: old and new host and "
                "node, epochs, paused_s (how long the shard took no commands), map version. "
                "Requests for the shard meanwhile wait (or get 503 with Retry-After); 409 "
                "when it is already there or moving, 404 for an unknown shard or target",
                path_params=("shard_id",), request="ShardMoveIn",
                errors=(400, 401, 403, 404, 409, 413, 503))},
            "/ops/cluster/nodes/{node_id}/drain": {"post": _ops_operation(
                "Move every shard off a Ray node, one by one, to the least-loaded hosts of "
                "the other nodes, and give the node no shards from now on (admin; audited as "
                "node.drain and one shard.move each); body empty or {}. 409 when no other "
                "node has a shard host, 404 for an unknown node",
                path_params=("node_id",), errors=(400, 401, 403, 404, 409, 413, 503))},
            "/ops/eod": {
                "get": _ops_operation(
                    "The current or last end-of-day run: status, per-shard progress, report; "
                    "and the daily schedule (enabled, at, timezone, catch_up_max_days, "
                    "next_firing, last_run)"),
                "post": _ops_operation(
                    "Run (or resume) end of day for the current business date and advance it "
                    "(admin); body {} or {\"business_date\": \"YYYY-MM-DD\"}: a closed date "
                    "answers its stored report", errors=(400, 401, 403, 404, 409, 503)),
            },
            "/ops/seed": {"post": _ops_operation(
                "Bulk-create {\"loans\": N} (1..10,000,000) active loans of partner demo for "
                "benchmarks and demos (admin); answers loans, seconds, business_date, "
                "partner_id, sample_loan_ids", errors=(400, 401, 403, 413, 503))},
            "/ops/applications/{application_id}": {"get": _ops_operation(
                "An application with its decision trace (which rule-set versions ran, which "
                "rules fired, score and breakdown, tier, limit): why it was decided so. From "
                "Postgres, not the shard",
                "Application", path_params=("application_id",), errors=(401, 404))},
            "/ops/blacklist": {
                "get": _ops_operation(
                    "Blacklist entries (黑名单), newest first, masked",
                    "BlacklistPage",
                    (("kind", "id_number, phone or device; absent: all kinds"),
                     ("limit", "1..1000, default 100")),
                    errors=(400, 401)),
                "post": _ops_operation(
                    "Add an entry, or replace the reason of one that exists (risk_officer; "
                    "audited as blacklist.add, target blacklist:{kind}:{value_hash}). Takes "
                    "effect on the next screening",
                    "BlacklistAdded", request="BlacklistIn", errors=(400, 401, 403, 413)),
            },
            "/ops/blacklist/{kind}/{value}": {"delete": _ops_operation(
                "Remove an entry (risk_officer; audited as blacklist.remove). value: the "
                "clear ID number or phone (or its 64-hex keyed hash), or the device id "
                "(percent-encode /); 404 when there is no such entry",
                "BlacklistDeleted", path_params=("kind", "value"),
                errors=(400, 401, 403, 404))},
            "/ops/reviews": {"get": _ops_operation(
                "Manual review queue (人工审核), oldest first, with claims and proposals",
                "ReviewPage",
                (("status", "manual_review or awaiting_confirmation; absent: both"),
                 ("limit", "page size, 1..[review] page_max (default 50)"),
                 ("after", "next_after of the previous page (an application_id)")),
                errors=(400, 401, 503))},
            "/ops/reviews/{application_id}/claim": {"post": _review_operation(
                "Claim (or extend one's own claim on) an application in review; 409 "
                "already_claimed when another officer holds it, 409 invalid_state when not "
                "in review, 403 maker_checker for the maker of a pending proposal",
                "ClaimView")},
            "/ops/reviews/{application_id}/release": {"post": _review_operation(
                "Release one's own claim (released false when there was none)",
                "ReleaseView")},
            "/ops/reviews/{application_id}/decision": {"post": _review_operation(
                "Decide an application one holds the claim on (409 claim_required): final "
                "below [review] maker_checker_amount_over, else a maker's proposal that "
                "another officer confirms or rejects (403 maker_checker for the maker)",
                "ReviewResult", "ReviewDecisionIn",
                errors=(400, 401, 403, 404, 409, 413, 422, 503))},
            "/ops/audit": {"get": _ops_operation(
                "Audit trail of one object (who, what, when, before/after), oldest first",
                "AuditPage",
                query=(("target", "required: application:{application_id} (review claims, "
                        "releases and decisions), blacklist:{kind}:{value_hash}, "
                        "case:{case_id} (collections) or eod:{business_date}"),
                       ("limit", "1..1000, default 100")),
                errors=(400, 401))},
            "/ops/collections/cases": {"get": _ops_operation(
                "Collection cases (贷后催收), most overdue first: {cases: [CollectionCase], "
                "next_after}",
                query=(("status", "open (default) or closed"),
                       ("bucket", "M1 .. M6+"), ("assignee", "collector:<name> or agency:<id>"),
                       ("follow_up", "due: cases whose broken promise asks for a call"),
                       ("limit", "1..500, default 50"),
                       ("after", "next_after of the previous page")),
                errors=(400, 401))},
            "/ops/collections/cases/{case_id}": {"get": _ops_operation(
                "A case with its history (events: opened, bucket_changed, assigned, note, "
                "contact, promise, promise_kept, promise_broken, reminder, closed)",
                path_params=("case_id",), errors=(401, 404))},
            "/ops/collections/cases/{case_id}/assign": {"post": _case_operation(
                "Assign a case to a collector or an agency (role operator)", "AssignIn")},
            "/ops/collections/cases/{case_id}/notes": {"post": _case_operation(
                "Add a note (a collector on their own cases, or an operator)", "NoteIn")},
            "/ops/collections/cases/{case_id}/contacts": {"post": _case_operation(
                "Record a contact and its outcome; 422 contact_limit_reached beyond "
                "[collections] max_contacts_per_day / _per_week", "ContactIn")},
            "/ops/collections/cases/{case_id}/promises": {"post": _case_operation(
                "Record a promise to pay (承诺还款); a pending one is superseded",
                "PromiseIn")},
            "/ops/collections/summary": {"get": _ops_operation(
                "Open cases by bucket and assignee, promises by status, follow-ups due, "
                "closed cases by reason")},
            "/ops/connector-requests": {"get": _ops_operation(
                "End of day's SMS reminders and withholdings (代扣) with their results, and "
                "counts by kind and status",
                query=(("kind", "sms or withholding"),
                       ("status", "pending, sent, succeeded or failed"),
                       ("created_on", "the business date whose end of day planned them"),
                       ("limit", "1..500, default 50"), ("after", "a request_id")),
                errors=(400, 401))},
            "/ops/loans/{loan_id}": {"get": _ops_operation(
                "A loan from Postgres, not the shard: {loan (the partner's loan view with "
                "its schedule), partner_id, book, last_closed_on, repayments (newest 200: "
                "repayment_id, external_ref, kind, amount, value_date, allocation), journal "
                "{lines (newest 500: entry_id, line_no, business_date, book, cause, kind, "
                "account, account_name, role, debit, credit), total_lines}}",
                path_params=("loan_id",), errors=(401, 404))},
            "/ops/business-summary": {"get": _ops_operation(
                "The business date's figures (the dashboard's business panel): "
                "applications by status and reason, loans disbursed, repayments, the "
                "book's receivable and memo balances, delinquency (open collection cases, "
                "past the non-accrual and write-off DPD, written-off loans) and the last "
                "end of day's buckets and five-class classification")},
            "/ops/outbox/drain": {"post": _ops_operation(
                "Send the pending connector requests now (admin); end of day starts a "
                "drain by itself", errors=(401, 403))},
            **_webhook_paths(),
            "/healthz": {"get": plain},
            "/readyz": {"get": plain},
            "/metrics": {"get": plain},
        },
        "webhooks": _webhooks(),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "partnerHmac": {"type": "apiKey", "in": "header", "name": "X-Signature",
                                "description": "HMAC-SHA256, see API.md"},
                "operatorBearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
    _document_roles(doc["paths"])
    return msgspec.json.encode(doc)


def _document_roles(paths: dict[str, Any]) -> None:
    """Each operator route's roles, from the one table that enforces them
    (gateway/ops_access.py): in `x-roles`, in the description, and a 403 answer where some
    role is refused."""
    for route in OPS_ROUTES:
        operation = paths[route.pattern.replace("*}", "}")][route.method.lower()]
        roles = [role for role in ROLES if role in route.roles]
        operation["x-roles"] = roles
        operation["description"] = f"Roles: {', '.join(roles)}."
        if len(roles) < len(ROLES):
            operation["responses"]["403"] = {
                "description": "forbidden: none of the roles", **_json(_ref("ErrorBody"))}
