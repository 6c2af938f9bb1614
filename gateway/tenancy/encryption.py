"""AES-256-GCM for prompt text kept in the audit trail under a retention policy.

The key is 32 bytes, given base64-encoded in LLMAAS_AUDIT_KEY (`llmaas audit new-key`). Each blob is
nonce (12 random bytes) || ciphertext+tag; the request id is bound as associated data, so a blob
moved to another record fails to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ENV = "LLMAAS_AUDIT_KEY"
_NONCE = 12


def load_key(value: str | None = None) -> bytes | None:
    text = value if value is not None else os.environ.get(KEY_ENV)
    if not text:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"{KEY_ENV}: the audit key is not base64") from None
    if len(key) != 32:
        raise ValueError(f"{KEY_ENV}: the audit key must be 32 bytes (base64), got {len(key)}")
    return key


def new_key() -> str:
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


class PromptCipher:
    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, text: str, request_id: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, text.encode(), request_id.encode())

    def decrypt(self, blob: bytes, request_id: str) -> str:
        return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], request_id.encode()).decode()
