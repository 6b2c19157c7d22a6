"""Order-preserving encoding of float32 values as uint32 (exact, no rounding).

XGBoost compares ``float32(x) < float32(threshold)``. Mapping a float32's bit pattern to an unsigned integer so that
integer order equals float order makes every encrypted comparison take exactly XGBoost's branch:
non-negative floats get their sign bit set, negative floats have all bits flipped. ``-0.0`` is first normalised to
``+0.0`` (they compare equal as floats). NaN has no place in an order; callers must mask missing values first.
"""

from __future__ import annotations

import numpy as np

_SIGN = np.uint32(0x80000000)


def float32_to_ordered_uint32(values: np.ndarray) -> np.ndarray:
    """Map finite or infinite float32 values (no NaN) to uint32 with the same order; returns a uint32 array."""
    x = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 == +0.0
    if np.isnan(x).any():
        raise ValueError("NaN has no order: mask missing values before encoding")
    bits = x.view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN).astype(np.uint32)


def ordered_uint32_to_float32(codes: np.ndarray) -> np.ndarray:
    """Inverse of `float32_to_ordered_uint32` (``-0.0`` comes back as ``+0.0``); returns a float32 array."""
    bits = np.asarray(codes, dtype=np.uint32)
    return np.where(bits & _SIGN, bits & ~_SIGN, ~bits).astype(np.uint32).view(np.float32)
