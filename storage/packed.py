"""Stored response bodies, compressed: the idempotency table's copy (storage/shard_store.py)
and Redis's copy (gateway/guard.py), both read back only to replay a response.

A repayment's reply, with its loan view, is about 2.8 KB of JSON and 0.8 KB compressed by
lz4, in 3 us; a batch of 1,000 repayments answers 2.5 MB. A compressed body starts with a
zero byte, which no JSON response does, so bodies stored before (plain JSON) are read as
they are. Short bodies (an error, a small decision) stay plain: compression would not pay.
"""

from __future__ import annotations

import lz4.block

_PACKED = b"\x00"
PACK_BYTES_MIN = 256


def pack_response(body: bytes) -> bytes:
    """The stored form of a response body (unpack_response gives it back, byte for byte)."""
    if len(body) < PACK_BYTES_MIN and body[:1] != _PACKED:
        return body
    return _PACKED + lz4.block.compress(body)


def unpack_response(stored: bytes) -> bytes:
    if stored[:1] == _PACKED:
        return bytes(lz4.block.decompress(stored[1:]))
    return stored
