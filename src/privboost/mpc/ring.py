"""The ring Z_2^64 as numpy uint64 arrays, fixed-point encoding, and bit packing.

numpy's uint64 add, subtract, multiply, negate and shifts wrap modulo 2^64 on arrays, which is exactly ring
arithmetic. Signed values use two's complement: an element u represents u - 2^64 when its top bit is set.

Fixed point: a real x is encoded as round(x * 2^f) (f fractional bits, default 16) in two's complement. A product of
two encodings carries 2f fractional bits and must be truncated by f (see protocols.arithmetic.truncate).
"""

from __future__ import annotations

import numpy as np

RING_BITS = 64
DTYPE = np.dtype("<u8")
DEFAULT_FRAC_BITS = 16
#: Largest magnitude (in ring units) that the truncation and comparison protocols accept: |x| < 2^62.
SAFE_MAGNITUDE_BITS = 62


def as_ring(values: np.ndarray | int) -> np.ndarray:
    """Any integer array (signed or unsigned) reduced mod 2^64 into a uint64 array (two's complement)."""
    arr = np.asarray(values)
    if arr.dtype == DTYPE:
        return arr
    if arr.dtype.kind == "u":
        return arr.astype(DTYPE)
    if arr.dtype.kind in "ib":
        return arr.astype(np.int64).view(DTYPE)
    raise TypeError(f"ring elements must be integers, got dtype {arr.dtype}")


def to_signed(ring: np.ndarray) -> np.ndarray:
    """uint64 ring elements viewed as signed int64 (two's complement), no copy."""
    return np.asarray(ring, dtype=DTYPE).view(np.int64)


def encode_fixed(values: np.ndarray | float, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Reals -> uint64 fixed-point encodings round(x * 2^frac_bits); raises ValueError if |x| * 2^f >= 2^62."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * float(2**frac_bits))
    if not np.all(np.isfinite(scaled)) or np.any(np.abs(scaled) >= 2.0**SAFE_MAGNITUDE_BITS):
        raise ValueError(f"values must be finite with |x| < 2^{SAFE_MAGNITUDE_BITS - frac_bits} "
                         f"to be encoded with {frac_bits} fractional bits")
    return scaled.astype(np.int64).view(DTYPE)


def decode_fixed(ring: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """uint64 fixed-point encodings -> float64 reals (exact while |x| * 2^f < 2^53)."""
    return to_signed(ring).astype(np.float64) / float(2**frac_bits)


def ring_constant(value: int) -> np.uint64:
    """A Python int reduced mod 2^64 as a numpy uint64 scalar (for mixing into uint64 arrays without upcasts)."""
    return np.uint64(value % (1 << RING_BITS))


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """A 1-D array of 0/1 values -> uint64 words, 64 bits per word, bit i of word w = bits[64*w + i]."""
    flat = np.asarray(bits, dtype=np.uint8).ravel()
    n_words = (flat.size + 63) // 64
    packed = np.zeros(n_words * 8, dtype=np.uint8)
    raw = np.packbits(flat, bitorder="little")
    packed[: raw.size] = raw
    return packed.view(DTYPE)


def unpack_bits(words: np.ndarray, count: int) -> np.ndarray:
    """Inverse of pack_bits: the first ``count`` bits of ``words`` as a uint8 array of 0/1."""
    raw = np.ascontiguousarray(words, dtype=DTYPE).view(np.uint8)
    return np.unpackbits(raw, count=count, bitorder="little")
