"""Keyed pseudonyms and key derivation (HMAC-SHA256 and HKDF from `cryptography`).

A pseudonym is ``HMAC-SHA256(key, label || name)``: deterministic for the key holder, unlinkable to the name for
anyone without the key. Sub-keys are derived with HKDF-SHA256 (RFC 5869) so one user secret yields independent
keys per purpose and per feature.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32


def new_key() -> bytes:
    """A fresh 256-bit key from the OS's cryptographic source."""
    return secrets.token_bytes(KEY_BYTES)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes")


def pseudonym(key: bytes, name: str, label: str = "feature") -> str:
    """Keyed pseudonym of ``name`` (32 hex characters, 128 bits of HMAC-SHA256)."""
    _check_key(key)
    mac = hmac.HMAC(bytes(key), hashes.SHA256())
    mac.update(f"privboost/{label}\x00{name}".encode())
    return mac.finalize()[:16].hex()


def derive_key(key: bytes, purpose: str) -> bytes:
    """Independent 256-bit sub-key of ``key`` for ``purpose`` (HKDF-SHA256)."""
    _check_key(key)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=f"privboost/{purpose}".encode()).derive(bytes(key))
