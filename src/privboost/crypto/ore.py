"""Order-revealing encryption of Chenette, Lewi, Weis and Wu ("Practical Order-Revealing Encryption with Limited
Leakage", FSE 2016, Section 3), on AES-256 as the PRF.

A ``b``-bit value ``x = x_1 … x_b`` (most significant bit first) encrypts to ``b`` trits

    u_i = F(k, (domain, i, x_1 … x_{i-1})) + x_i  (mod 3),

where ``F`` is AES-256 in ECB mode on one 16-byte block per bit (a PRP used as a PRF), reduced mod 3 from 64 bits
(bias 2^-64). Comparing two ciphertexts of the same domain: find the first index ``i`` where they differ; then
``u_i - v_i = 1 (mod 3)`` means ``x > y`` and ``2`` means ``x < y``; no difference means equal.

Leakage: to anyone holding ciphertexts of the same domain, their order and the index of the most significant bit
in which the two plaintexts differ (nothing else, under the PRF assumption). Ciphertexts are deterministic, so equal
plaintexts are visible. A ciphertext's 32 trits are packed two bits each into one uint64, so that the first
difference is found with a few word operations (xor, smear the top bit) instead of a scan.
Different ``domain`` tags (we use one per feature) give unrelated ciphertexts, so values of
different features cannot be compared with each other.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privboost.crypto.prf import _check_key

BITS = 32
ORE_CHUNK_ELEMENTS = 4_000_000  # ciphertexts compared per numpy pass (bounds temporary memory)


class CLWWORE:
    """CLWW order-revealing encryption of 32-bit unsigned integers under one 256-bit key."""

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._cipher = Cipher(algorithms.AES(bytes(key)), modes.ECB())  # noqa: S305 - a PRF on distinct blocks

    def encrypt(self, values: np.ndarray, domain: np.ndarray | int) -> np.ndarray:
        """Encrypt uint32 ``values`` (any shape) under per-value ``domain`` tags (uint32, broadcastable).

        Returns the 32 trits packed two bits each, most significant first, as uint64 of shape ``values.shape``.
        """
        x = np.asarray(values, dtype=np.uint32)
        dom = np.broadcast_to(np.asarray(domain, dtype=np.uint32), x.shape)
        flat_x, flat_dom = x.reshape(-1), dom.reshape(-1)
        i = np.arange(BITS, dtype=np.uint32)
        # prefix x_1 … x_{i-1}: keep the top i bits (i = 0 keeps none)
        keep = np.where(i == 0, np.uint32(0), (np.uint32(0xFFFFFFFF) << (np.uint32(BITS) - i)).astype(np.uint32))
        prefix = flat_x[:, None] & keep[None, :]
        blocks = np.zeros((flat_x.size, BITS, 4), dtype=np.uint32)
        blocks[..., 0] = flat_dom[:, None]
        blocks[..., 1] = i[None, :]
        blocks[..., 2] = prefix
        blocks[..., 3] = 0x4F524531  # fixed tag: "ORE1"
        encryptor = self._cipher.encryptor()
        out = np.frombuffer(encryptor.update(blocks.tobytes()) + encryptor.finalize(), dtype=np.uint64)
        prf = (out.reshape(flat_x.size, BITS, 2)[..., 0] % np.uint64(3)).astype(np.uint64)
        bit = ((flat_x[:, None] >> (np.uint32(BITS - 1) - i)) & np.uint32(1)).astype(np.uint64)
        trits = (prf + bit) % np.uint64(3)
        packed = (trits << _TRIT_SHIFT[None, :]).sum(axis=1, dtype=np.uint64)
        return packed.reshape(x.shape)


# trit i (most significant first) sits in bits 2·(31 - i) and 2·(31 - i) + 1 of one uint64
_TRIT_SHIFT = (2 * (BITS - 1 - np.arange(BITS))).astype(np.uint64)
_LOW_BITS = np.uint64(0x5555555555555555)


def is_valid_ciphertext(packed: np.ndarray) -> np.ndarray:
    """Boolean array: every 2-bit group of the packed ciphertext holds a trit (0, 1 or 2, never 3)."""
    x = np.asarray(packed, dtype=np.uint64)
    return (x & (x >> np.uint64(1)) & _LOW_BITS) == 0


def _first_difference(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trits of ``left`` and ``right`` at the first (most significant) position where they differ (0, 0 if equal)."""
    u, v = np.asarray(left, dtype=np.uint64), np.asarray(right, dtype=np.uint64)
    x = u ^ v
    for shift in (1, 2, 4, 8, 16, 32):  # smear the highest set bit downwards
        x |= x >> np.uint64(shift)
    top = x ^ (x >> np.uint64(1))
    low = np.where(top & _LOW_BITS, top, top >> np.uint64(1))  # low bit of that trit's 2-bit group
    high = low << np.uint64(1)
    a = ((u & high) != 0).astype(np.int8) * 2 + ((u & low) != 0)
    b = ((v & high) != 0).astype(np.int8) * 2 + ((v & low) != 0)
    return a, b


def ore_compare(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Compare packed CLWW ciphertexts elementwise (shapes broadcast).

    Returns int8: -1 where the left plaintext is smaller, 0 where equal, 1 where larger.
    """
    a, b = _first_difference(left, right)
    diff = (a - b) % 3
    return np.select([diff == 1, diff == 2], [1, -1], 0).astype(np.int8)


def ore_less_than(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Boolean array: the left plaintext is strictly smaller than the right one (packed ciphertexts, broadcast)."""
    a, b = _first_difference(left, right)
    return (a - b) % 3 == 2
