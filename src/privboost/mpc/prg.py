"""Cryptographic pseudo-random generator: AES-256 in counter mode (`cryptography`/OpenSSL), keyed from `secrets`.

A `Prg` turns a 32-byte seed into a stream of uniform uint64 words. Two holders of one seed draw identical streams
as long as they make identical calls in identical order; the dealer relies on this to send only corrections.
"""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privboost.mpc.ring import DTYPE

SEED_BYTES = 32
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def new_seed() -> bytes:
    """A fresh 256-bit seed from the operating system's cryptographic source."""
    return secrets.token_bytes(SEED_BYTES)


class Prg:
    """AES-256-CTR key stream as uint64 words: ``Prg(seed).words(shape)``; ``words_drawn`` counts the output."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seed must be {SEED_BYTES} bytes")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        self.words_drawn = 0

    def words(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform uint64 array of ``shape``."""
        count = int(np.prod(shape, dtype=np.int64))
        self.words_drawn += count
        size = 8 * count
        # encrypt zeros chunk by chunk straight into the result (np.empty: no zero-filling pass over the memory;
        # update_into needs 15 spare bytes, hence the 2 extra words)
        buffer = np.empty(count + 2, dtype=DTYPE)
        view = memoryview(buffer).cast("B")
        for start in range(0, size, _CHUNK):
            length = min(_CHUNK, size - start)
            self._encryptor.update_into(_ZEROS[:length] if length < _CHUNK else _ZEROS, view[start:start + length + 15])
        return buffer[:count].reshape(shape)

    def add_into(self, out: np.ndarray, subtract: bool = False) -> None:
        """``out += words`` (or ``-=``) mod 2^64 in place, for a contiguous uint64 ``out``, drawing ``out.size`` words.

        Streams the key through one small reused buffer: no array of the stream's size is ever allocated, which
        for masks of millions of words saves the page faults of fresh memory and keeps the buffer in cache.
        """
        flat = out.reshape(-1)
        if flat.dtype != DTYPE or not flat.flags.c_contiguous:
            raise ValueError("add_into needs a contiguous uint64 array")
        self.words_drawn += flat.size
        per_chunk = _CHUNK // 8
        scratch = bytearray(_CHUNK + 15)
        view = memoryview(scratch)
        stream = np.frombuffer(scratch, dtype=DTYPE, count=per_chunk)
        combine = np.subtract if subtract else np.add
        for start in range(0, flat.size, per_chunk):
            count = min(per_chunk, flat.size - start)
            self._encryptor.update_into(_ZEROS[:8 * count] if count < per_chunk else _ZEROS, view[:8 * count + 15])
            combine(flat[start:start + count], stream[:count], out=flat[start:start + count])

    def bits(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform 0/1 uint64 array of ``shape`` (one bit drawn per element, 64 elements per word drawn)."""
        count = int(np.prod(shape, dtype=np.int64))
        words = self.words((count + 63) // 64)
        raw = np.unpackbits(words.view(np.uint8), count=count, bitorder="little")
        return raw.astype(DTYPE).reshape(shape)

    def permutation(self, size: int) -> np.ndarray:
        """A uniformly random permutation of range(size) as int64 indices (argsort of 64-bit random keys)."""
        return np.argsort(self.words(size), kind="stable").astype(np.int64)
