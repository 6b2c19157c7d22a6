"""Order-revealing encryption of Chenette, Lewi, Weis and Wu ("Practical Order-Revealing Encryption with Limited
Leakage", FSE 2016, Section 3), on AES-256 as the PRF.

A ``b``-bit value ``x = x_1 … x_b`` (most significant bit first) encrypts to ``b`` trits

    u_i = F(k, (domain, i, x_1 … x_{i-1})) + x_i  (mod 3),

where ``F`` is AES-256 in ECB mode on one 16-byte block per bit (a PRP used as a PRF), reduced mod 3 from 64 bits
(bias 2^-64). Comparing two ciphertexts of the same domain: find the first index ``i`` where they differ; then
``u_i - v_i = 1 (mod 3)`` means ``x > y`` and ``2`` means ``x < y``; no difference means equal.

Leakage: to anyone holding ciphertexts of the same domain, their order and the index of the most significant bit
in which the two plaintexts differ (nothing else, under the PRF assumption). Ciphertexts are deterministic, so equal
plaintexts are visible. Different ``domain`` tags (we use one per feature) give unrelated ciphertexts, so values of
different features cannot be compared with each other.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privboost.crypto.prf import _check_key

BITS = 32
ORE_CHUNK_ELEMENTS = 8_000_000  # trits compared per numpy pass (bounds temporary memory)


class CLWWORE:
    """CLWW order-revealing encryption of 32-bit unsigned integers under one 256-bit key."""

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._cipher = Cipher(algorithms.AES(bytes(key)), modes.ECB())  # noqa: S305 - a PRF on distinct blocks

    def encrypt(self, values: np.ndarray, domain: np.ndarray | int) -> np.ndarray:
        """Encrypt uint32 ``values`` (any shape) under per-value ``domain`` tags (uint32, broadcastable).

        Returns uint8 trits of shape ``values.shape + (32,)``.
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
        prf = (out.reshape(flat_x.size, BITS, 2)[..., 0] % np.uint64(3)).astype(np.uint8)
        bit = ((flat_x[:, None] >> (np.uint32(BITS - 1) - i)) & np.uint32(1)).astype(np.uint8)
        return ((prf + bit) % 3).astype(np.uint8).reshape(x.shape + (BITS,))


def ore_compare(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Compare CLWW ciphertexts elementwise (broadcasting over leading axes).

    Returns int8: -1 where the left plaintext is smaller, 0 where equal, 1 where larger.
    """
    diff = (np.asarray(left, dtype=np.int16) - np.asarray(right, dtype=np.int16)) % 3
    first = np.argmax(diff != 0, axis=-1)
    at_first = np.take_along_axis(diff, first[..., None], axis=-1)[..., 0]
    return np.select([at_first == 1, at_first == 2], [1, -1], 0).astype(np.int8)


def ore_less_than(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Boolean array: the left plaintext is strictly smaller than the right one (shapes broadcast)."""
    diff = (np.asarray(left, dtype=np.int8) - np.asarray(right, dtype=np.int8)) % 3
    first = np.argmax(diff != 0, axis=-1)
    return np.take_along_axis(diff, first[..., None], axis=-1)[..., 0] == 2
