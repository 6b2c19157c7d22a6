"""numba kernels for exact matrix products modulo 2^64 (uint64 multiply-add wraps in LLVM as in the ring).

numpy's ``uint64 @`` has no BLAS path and is ~50x slower; these `prange` kernels parallelise over output rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from privboost.mpc.ring import DTYPE

_BLOCK = 64


@njit(parallel=True, cache=True, boundscheck=False)
def _tn_accumulate(a1, b1, a2, b2, out):  # pragma: no cover - compiled
    rows, cols = a1.shape
    width = b1.shape[1]
    n_blocks = (cols + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        j0 = blk * _BLOCK
        j1 = min(cols, j0 + _BLOCK)
        acc = np.zeros((j1 - j0, width), dtype=np.uint64)
        for i in range(rows):
            for j in range(j0, j1):
                x = a1[i, j]
                for c in range(width):
                    acc[j - j0, c] += x * b1[i, c]
        for i in range(a2.shape[0]):
            for j in range(j0, j1):
                x = a2[i, j]
                for c in range(width):
                    acc[j - j0, c] += x * b2[i, c]
        for j in range(j0, j1):
            for c in range(width):
                out[j, c] = acc[j - j0, c]


@njit(parallel=True, cache=True, boundscheck=False)
def _nn(a, b, out):  # pragma: no cover - compiled
    rows, inner = a.shape
    width = b.shape[1]
    for i in prange(rows):
        for t in range(inner):
            x = a[i, t]
            for c in range(width):
                out[i, c] += x * b[t, c]


def _as_matrix(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=DTYPE)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {arr.shape}")
    return arr


def matmul_tn(a: np.ndarray, b: np.ndarray, a2: np.ndarray | None = None, b2: np.ndarray | None = None) -> np.ndarray:
    """A^T·B (+ A2^T·B2) mod 2^64 for uint64 A (n×m), B (n×k) [A2 (n2×m), B2 (n2×k)] -> (m×k)."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"row counts differ: {a.shape} vs {b.shape}")
    if a2 is None or b2 is None:
        a2 = np.zeros((0, a.shape[1]), DTYPE)
        b2 = np.zeros((0, b.shape[1]), DTYPE)
    a2, b2 = _as_matrix(a2), _as_matrix(b2)
    if a2.shape[1] != a.shape[1] or b2.shape[1] != b.shape[1] or a2.shape[0] != b2.shape[0]:
        raise ValueError("second product's shapes do not match the first")
    out = np.empty((a.shape[1], b.shape[1]), DTYPE)
    _tn_accumulate(a, b, a2, b2, out)
    return out


def matmul_nn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A·B mod 2^64 for uint64 A (n×m), B (m×k) -> (n×k)."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: {a.shape} vs {b.shape}")
    out = np.zeros((a.shape[0], b.shape[1]), DTYPE)
    _nn(a, b, out)
    return out
