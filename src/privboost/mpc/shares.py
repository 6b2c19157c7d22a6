"""Arithmetic (additive mod 2^64) and boolean (XOR, bit-packed) secret shares.

Two kinds of shares, as CrypTen's ArithmeticSharedTensor / BinarySharedTensor split:
  * arithmetic: x = x0 + x1 mod 2^64, each party holds one uint64 array of the same shape as x;
  * boolean: a uint64 word w = w0 XOR w1; each word carries 64 independent bits (either the 64 bits of one ring
    element, as in A2B, or 64 packed one-bit values, see ring.pack_bits).
A party's share array is a plain numpy uint64 array; the `Party` runtime (runtime.py) gives protocols their
context, as MPyC splits runtime from secure types. Each share alone is uniformly distributed and independent of x.

These functions are for whoever *inputs* or *receives* data outside the protocols (data owners, tests, analysts).
"""

from __future__ import annotations

import numpy as np

from privboost.mpc.prg import Prg, new_seed
from privboost.mpc.ring import DTYPE, as_ring


def share_arith(secret: np.ndarray, prg: Prg | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a ring array into two additive shares (x0 uniform from ``prg``, or a fresh AES-CTR seed)."""
    value = as_ring(secret)
    mask = (prg or Prg(new_seed())).words(value.shape)
    return mask, value - mask


def reconstruct_arith(share0: np.ndarray, share1: np.ndarray) -> np.ndarray:
    """x0 + x1 mod 2^64."""
    return np.asarray(share0, DTYPE) + np.asarray(share1, DTYPE)


def share_bool(secret_words: np.ndarray, prg: Prg | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split uint64 words into two XOR shares."""
    value = as_ring(secret_words)
    mask = (prg or Prg(new_seed())).words(value.shape)
    return mask, value ^ mask


def reconstruct_bool(share0: np.ndarray, share1: np.ndarray) -> np.ndarray:
    """w0 XOR w1."""
    return np.asarray(share0, DTYPE) ^ np.asarray(share1, DTYPE)
