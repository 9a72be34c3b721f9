"""Personal data (DOMAIN.md §8): keyed hash for lookup, AES-GCM at rest, masks for display.

The gateway is the only place that sees ID numbers, phones and names in clear; what it
sends on to the shards is the hash, the ciphertexts and the masks.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


class PiiVault:
    def __init__(self, encryption_key: bytes, hash_key: bytes) -> None:
        if len(encryption_key) != 32 or len(hash_key) != 32:
            raise ValueError("PII keys must be 32 bytes")
        self._aead = AESGCM(encryption_key)
        self._hash_key = hash_key

    def lookup_hash(self, value: str) -> str:
        """Keyed, so that a leaked table cannot be reversed by hashing every possible ID."""
        return hmac.new(self._hash_key, value.encode(), hashlib.sha256).hexdigest()

    def encrypt(self, value: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode(), None)

    def decrypt(self, blob: bytes) -> str:
        return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], None).decode()
