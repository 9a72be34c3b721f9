"""Stored responses (storage/packed.py pack_response / unpack_response): what is stored
reads back byte for byte, replies with a loan view shrink, and plain bodies stored before
compression existed read as they are."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from loan_factory import make_loan

from lending import views
from storage.packed import PACK_BYTES_MIN, pack_response, unpack_response


@given(st.binary(max_size=5000))
def test_any_body_reads_back_byte_for_byte(body: bytes) -> None:
    assert unpack_response(pack_response(body)) == body


@given(st.dictionaries(st.text(max_size=20), st.integers() | st.text(max_size=40),
                       max_size=60))
def test_json_bodies_read_back_byte_for_byte(document: dict[str, object]) -> None:
    body = msgspec.json.encode(document)
    assert unpack_response(pack_response(body)) == body


def test_a_reply_with_a_loan_view_is_stored_in_a_third_of_its_size() -> None:
    body = views.encode(views.loan_view(make_loan()))
    stored = pack_response(body)
    assert len(body) > 2000 and len(stored) < len(body) / 2
    assert unpack_response(stored) == body


def test_short_bodies_and_bodies_stored_before_stay_plain() -> None:
    error = b'{"error":{"code":"not_found","message":"no loan LN-1","field":null}}'
    assert len(error) < PACK_BYTES_MIN and pack_response(error) == error
    stored_before = views.encode(views.loan_view(make_loan()))  # plain JSON in the table
    assert unpack_response(stored_before) == stored_before
