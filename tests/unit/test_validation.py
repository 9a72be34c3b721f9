"""The gateways' input rules (gateway/validation.py) and error envelope (gateway/http.py):
one control-character rule for every text field, error messages in our words with the field
named, and a bug answered 500 in the envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Annotated, Any, Literal

import msgspec
import pytest

from gateway.collections_desk import PromiseIn
from gateway.http import HttpError, answers_bugs_with_the_envelope
from gateway.ops_api import BlacklistIn
from gateway.reviews import ReviewDecisionIn
from gateway.schemas import ApplicationIn, BatchRepaymentsIn, RepaymentIn
from gateway.validation import (
    ascii_int,
    check_text,
    decode_json,
    literal_values,
    query_params,
)


def refusal(body_type: Any, raw: bytes) -> HttpError:
    with pytest.raises(HttpError) as caught:
        decode_json(msgspec.json.Decoder(body_type), raw)
    error = caught.value
    assert (error.status, error.code) == (400, "invalid_request")
    return error


def application(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "partner_application_id": "A-1", "product_code": "CASH_EI_12", "amount": 1_000_000,
        "term": 12,
        "applicant": {"name": "张三", "id_number": "110105199003070017", "phone": "13800138000",
                      "monthly_income": 1_200_000, "region_code": "330100"},
        "device": {"device_id": "d-42", "ip": "10.1.2.3"},
        "purpose": "consumption", "merchant_id": None,
    }
    body.update(changes)
    return body


# ---- control characters: one rule, every text field ------------------------------------------


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f",
                                  "\x80", "\x85", "\x9f"])
def test_every_control_character_is_refused(char: str) -> None:
    with pytest.raises(HttpError) as caught:
        check_text(f"a{char}b", "name")
    assert (caught.value.status, caught.value.field) == (400, "name")
    assert caught.value.message == "name must not contain control characters"


@pytest.mark.parametrize("text", ["张三", "O'Brien-Smith", "a b", "\xa0", "😀", "~!@#$%^&*()",
                                  "\u200b", ""])
def test_printable_text_passes(text: str) -> None:
    assert check_text(text, "name") == text


@pytest.mark.parametrize(("field", "body"), [
    ("applicant.name", application(applicant={**application()["applicant"], "name": "a\0b"})),
    ("merchant_id", application(merchant_id="m\u0085")),
    ("purpose", application(purpose="con\nsumption")),
    ("device.device_id", application(device={"device_id": "d\x7f", "ip": "10.1.2.3"})),
    ("product_code", application(product_code="CASH\x00")),
])
def test_a_control_character_anywhere_in_an_application_names_its_field(
    field: str, body: dict[str, Any]
) -> None:
    error = refusal(ApplicationIn, msgspec.json.encode(body))
    assert error.field == field
    assert error.message == f"{field} must not contain control characters"


@pytest.mark.parametrize(("field", "body"), [
    ("value", {"kind": "device", "value": "a\u0000b", "reason": "r"}),
    ("reason", {"kind": "device", "value": "ab", "reason": "a\u0000b"}),
    ("kind", {"kind": "dev\u0000ice", "value": "ab", "reason": "r"}),
])
def test_operator_bodies_obey_the_same_rule(field: str, body: dict[str, Any]) -> None:
    assert refusal(BlacklistIn, msgspec.json.encode(body)).field == field


def test_list_items_are_named_by_index() -> None:
    raw = b'{"decision": "approve", "note": "ok", "reasons": ["fine", "b\\u0000"]}'
    assert refusal(ReviewDecisionIn, raw).field == "reasons[1]"


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\x1f", "\x7f", "\x80",
                                  "\x85", "\x9f"])
def test_a_control_character_is_found_however_the_json_spells_it(char: str) -> None:
    """Raw in the body where JSON allows it (U+007F and up), as msgspec writes it, and as a
    \\u escape: decode_json skips its walk over the strings only for bodies with none of
    these spellings."""
    spellings = {
        msgspec.json.encode({"decision": "approve", "note": f"a{char}b"}),
        b'{"decision": "approve", "note": "a\\u%04xb"}' % ord(char),
    }
    if ord(char) >= 0x7F:
        spellings.add(f'{{"decision": "approve", "note": "a{char}b"}}'.encode())
    for raw in spellings:
        assert refusal(ReviewDecisionIn, raw).field == "note", raw


def test_a_clean_body_decodes() -> None:
    decoded = decode_json(msgspec.json.Decoder(ApplicationIn),
                          msgspec.json.encode(application()))
    assert decoded.applicant.name == "张三"


@pytest.mark.parametrize(("query", "field"), [
    (b"target=%00", "target"), (b"after=a%01b", "after"), (b"book=own%0A", "book"),
    (b"ok=1&x%00=1", "query"),
])
def test_query_parameters_obey_the_same_rule(query: bytes, field: str) -> None:
    with pytest.raises(HttpError) as caught:
        query_params({"query_string": query})
    assert (caught.value.status, caught.value.field) == (400, field)


def test_clean_query_parameters_are_parsed_with_blank_values_kept() -> None:
    assert query_params({"query_string": b"book=own&shard=&t=%E5%BC%A0"}) == {
        "book": ["own"], "shard": [""], "t": ["张"]}


# ---- numbers in query strings --------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("15", 15), ("015", 15), ("0" * 5000 + "7", 7), ("16", None), ("-1", None),
    ("1.5", None), ("", None), ("٣", None), ("²", None), ("9" * 5000, None), (" 1", None),
])
def test_ascii_int(text: str, value: int | None) -> None:
    assert ascii_int(text, 15) == value


# ---- error messages: our words, the field named ------------------------------------------------


@pytest.mark.parametrize(("body_type", "raw", "field", "message"), [
    (RepaymentIn, b"{", None, "body is not valid JSON"),
    (RepaymentIn, b"", None, "body is not valid JSON"),
    (RepaymentIn, b'{"amount": 1, "external_ref": "R"} x', None, "body is not valid JSON"),
    (RepaymentIn, "{\"amount\": 1}".encode("utf-16"), None, "body is not valid JSON"),
    (RepaymentIn, b"[]", None, "body must be an object"),
    (RepaymentIn, b"null", None, "body must be an object"),
    (RepaymentIn, b'{"amount": 0, "external_ref": "R"}', "amount", "amount must be ≥ 1"),
    (RepaymentIn, b'{"amount": 1000000000001, "external_ref": "R"}', "amount",
     "amount must be ≤ 1000000000000"),
    (RepaymentIn, b'{"amount": "1", "external_ref": "R"}', "amount",
     "amount must be an integer"),
    (RepaymentIn, b'{"amount": 1.5, "external_ref": "R"}', "amount",
     "amount must be an integer"),
    (RepaymentIn, b'{"amount": true, "external_ref": "R"}', "amount",
     "amount must be an integer"),
    (RepaymentIn, b'{"external_ref": "R"}', "amount", "amount is required"),
    (RepaymentIn, b'{"amount": 1, "external_ref": "R", "x": 1}', "x", "x is not allowed"),
    (RepaymentIn, b'{"amount": 1, "external_ref": 7}', "external_ref",
     "external_ref must be a string"),
    (RepaymentIn, b'{"amount": 1, "external_ref": ""}', "external_ref",
     "external_ref must not be empty"),
    (RepaymentIn, b'{"amount": 1, "external_ref": "has space"}', "external_ref",
     "external_ref must match the pattern ^[\\x21-\\x7e]+$"),
    (ApplicationIn, msgspec.json.encode(application(merchant_id=7)), "merchant_id",
     "merchant_id must be a string or null"),
    (ApplicationIn, msgspec.json.encode(application(applicant={"name": "x"})),
     "applicant.id_number", "applicant.id_number is required"),
    (ApplicationIn, msgspec.json.encode(application(purpose="p" * 65)), "purpose",
     "purpose must have at most 64 characters"),
    (BatchRepaymentsIn, b'{"items": []}', "items", "items must have at least 1 item"),
    (ReviewDecisionIn, b'{"decision": "maybe"}', "decision",
     "decision must be one of approve, decline"),
    (ReviewDecisionIn, b'{"decision": "approve", "reasons": ["Bad"]}', "reasons[0]",
     "reasons[0] must match the pattern ^[a-z0-9_]{1,64}$"),
    (PromiseIn, b'{"amount": 1, "promised_on": "2026-13-01"}', "promised_on",
     "promised_on must be a date YYYY-MM-DD"),
    (PromiseIn, b'{"amount": 100000000000000000000000, "promised_on": "2026-12-01"}',
     "amount", "amount must be ≤ 1000000000000"),
])
def test_refusals_are_in_our_words(
    body_type: Any, raw: bytes, field: str | None, message: str
) -> None:
    error = refusal(body_type, raw)
    assert (error.field, error.message) == (field, message)
    assert "`" not in error.message and "Expected" not in error.message


class _Odd(msgspec.Struct):
    n: Annotated[int, msgspec.Meta(multiple_of=3)]


class _Inner(msgspec.Struct):
    mode: Literal["a", "b"] | None = None


class _Outer(msgspec.Struct):
    inner: list[_Inner]


def test_an_unrecognised_library_message_still_gets_our_words() -> None:
    error = refusal(_Odd, b'{"n": 4}')
    assert (error.field, error.message) == ("n", "n is invalid")


def test_literal_values_follow_the_path_through_options_and_lists() -> None:
    assert literal_values(_Outer, "inner[0].mode") == ["a", "b"]
    assert literal_values(_Outer, "inner") == []
    assert literal_values(_Outer, "nothing.here") == []


# ---- the envelope ------------------------------------------------------------------------------


def test_the_envelope_always_has_a_field() -> None:
    body = json.loads(HttpError(404, "not_found", "no loan x").body())
    assert body == {"error": {"code": "not_found", "message": "no loan x", "field": None}}


class _App:
    def __init__(self, failure: Exception, answer_first: bool = False) -> None:
        self.failure = failure
        self.answer_first = answer_first

    @answers_bugs_with_the_envelope
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise self.failure


def _call(app: _App) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_bug_is_answered_500_in_the_envelope() -> None:
    sent = _call(_App(KeyError("secret detail")))
    start, body = sent
    assert start["status"] == 500
    assert (b"content-type", b"application/json") in start["headers"]
    assert json.loads(body["body"]) == {
        "error": {"code": "internal_error", "message": "internal error", "field": None}}
    assert b"secret" not in body["body"]


def test_a_bug_after_the_answer_started_goes_to_the_server() -> None:
    with pytest.raises(KeyError):
        _call(_App(KeyError("late"), answer_first=True))
