"""numba kernels for exact matrix products modulo 2^64 (uint64 multiply-add wraps in LLVM as in the ring).

numpy's ``uint64 @`` has no BLAS path and is ~50x slower; these `prange` kernels parallelise over row chunks
(A^T·B: one partial m×k sum per thread, A read row by row) or output rows (A·B).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from privboost.mpc.ring import DTYPE


@njit(parallel=True, cache=True, boundscheck=False)
def _tn_partial(a, b, parts):  # pragma: no cover - compiled
    # parts[t] accumulates A[rows of chunk t]^T B[rows of chunk t]; A is read row by row (contiguous).
    rows, cols = a.shape
    width = b.shape[1]
    n_parts = parts.shape[0]
    chunk = (rows + n_parts - 1) // n_parts
    for t in prange(n_parts):
        part = parts[t]
        for i in range(t * chunk, min(rows, (t + 1) * chunk)):
            b_row = b[i]
            a_row = a[i]
            for j in range(cols):
                x = a_row[j]
                acc = part[j]
                for c in range(width):
                    acc[c] += x * b_row[c]


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
    parts = np.zeros((max(1, numba.get_num_threads()), a.shape[1], b.shape[1]), DTYPE)
    _tn_partial(a, b, parts)
    if a2.shape[0]:
        _tn_partial(a2, b2, parts)
    return parts.sum(axis=0, dtype=DTYPE)


def matmul_nn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A·B mod 2^64 for uint64 A (n×m), B (m×k) -> (n×k)."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: {a.shape} vs {b.shape}")
    out = np.zeros((a.shape[0], b.shape[1]), DTYPE)
    _nn(a, b, out)
    return out
