"""Row gathers by permutations, the hot loops of secret-shared shuffles (numba, parallel over row ranges).

All work on blocks of rows: ``values`` (Hv, n, w) with Hv = 1 (one block read by every permutation) or H, and
``perms`` (H, n) gather indices; block h of the result takes row ``perms[h, i]`` of block h (or of the one block).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from privboost.mpc.ring import DTYPE

_ROWS_PER_TASK = 4096  # rows per parallel task: many tasks even when one permutation is gathered


@njit(cache=True)
def _task_rows(task, n):  # pragma: no cover - compiled
    # task -> (block, first row, end row): each block's rows in ranges of _ROWS_PER_TASK
    per_block = (n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    lo = (task % per_block) * _ROWS_PER_TASK
    return task // per_block, lo, min(n, lo + _ROWS_PER_TASK)


@njit(parallel=True, cache=True, boundscheck=False)
def _gather(out, values, perms, add):  # pragma: no cover - compiled
    blocks, n = perms.shape
    width = out.shape[2]
    for task in prange(blocks * ((n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK)):
        h, lo, hi = _task_rows(task, n)
        src = values[h if values.shape[0] > 1 else 0]
        perm = perms[h]
        dst = out[h]
        for i in range(lo, hi):
            row = src[perm[i]]
            if add:
                for c in range(width):
                    dst[i, c] += row[c]
            else:
                for c in range(width):
                    dst[i, c] = row[c]


@njit(parallel=True, cache=True, boundscheck=False)
def _composed_difference(out, values, subtrahend, first, second):  # pragma: no cover - compiled
    # out[h, i] += values[h|0][first[h][second[h][i]]] - subtrahend[h][second[h][i]]
    blocks, n = second.shape
    width = out.shape[2]
    for task in prange(blocks * ((n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK)):
        h, lo, hi = _task_rows(task, n)
        src = values[h if values.shape[0] > 1 else 0]
        sub = subtrahend[h]
        outer = first[h]
        inner = second[h]
        dst = out[h]
        for i in range(lo, hi):
            j = inner[i]
            row = src[outer[j]]
            minus = sub[j]
            for c in range(width):
                dst[i, c] += row[c] - minus[c]


def _blocks(arr: np.ndarray, leading: int) -> np.ndarray:
    """``arr`` as a contiguous (blocks, n, w) uint64 view: the first ``leading`` axes are blocks and rows."""
    arr = np.ascontiguousarray(arr, dtype=DTYPE)
    if leading == 1:  # one block
        return arr.reshape(1, arr.shape[0], -1) if arr.size else arr.reshape(1, arr.shape[0], 0)
    return arr.reshape(arr.shape[0], arr.shape[1], -1) if arr.size else arr.reshape(*arr.shape[:2], 0)


def _check_perms(perms: np.ndarray, n: int) -> np.ndarray:
    perms = np.ascontiguousarray(perms, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[1] != n:
        raise ValueError(f"expected (H, {n}) gather indices, got shape {perms.shape}")
    if perms.size and (perms.min() < 0 or perms.max() >= n):
        raise ValueError("gather indices out of range")
    return perms


def gather_rows(values: np.ndarray, perms: np.ndarray, shared: bool = False) -> np.ndarray:
    """(H, n, ...) with block h = values[h][perms[h]] (values (H, n, ...)), or values[perms[h]] if ``shared``
    (values (n, ...), one block read by every permutation)."""
    values = np.asarray(values)
    rest = values.shape[1:] if shared else values.shape[2:]
    src = _blocks(values, 1 if shared else 2)
    perms = _check_perms(perms, src.shape[1])
    if not shared and src.shape[0] != perms.shape[0]:
        raise ValueError(f"{src.shape[0]} blocks but {perms.shape[0]} permutations")
    out = np.empty((perms.shape[0], src.shape[1], src.shape[2]), DTYPE)
    _gather(out, src, perms, False)
    return out.reshape(perms.shape[0], src.shape[1], *rest)


def gather_add_into(out: np.ndarray, values: np.ndarray, perms: np.ndarray, shared: bool = False) -> np.ndarray:
    """out (H, n, ...) += `gather_rows`(values, perms, shared), in place mod 2^64; returns out."""
    dst = _blocks(out, 2)
    if not np.shares_memory(dst, out):
        raise ValueError("out must be a contiguous uint64 array")
    src = _blocks(values, 1 if shared else 2)
    perms = _check_perms(perms, dst.shape[1])
    if src.shape[1:] != dst.shape[1:] or (not shared and src.shape[0] != dst.shape[0]):
        raise ValueError(f"cannot add rows of shape {values.shape} into {out.shape}")
    _gather(dst, src, perms, True)
    return out


def add_composed_difference(out: np.ndarray, values: np.ndarray, subtrahend: np.ndarray, first: np.ndarray,
                            second: np.ndarray, shared: bool = False) -> np.ndarray:
    """out[h] += values[h][first[h]][second[h]] - subtrahend[h][second[h]] (values (n, ...) if ``shared``), in
    place mod 2^64; returns out. (The dealer's correction of a two-step shuffle, in one pass.)"""
    dst = _blocks(out, 2)
    if not np.shares_memory(dst, out):
        raise ValueError("out must be a contiguous uint64 array")
    src = _blocks(values, 1 if shared else 2)
    sub = _blocks(subtrahend, 2)
    first, second = _check_perms(first, dst.shape[1]), _check_perms(second, dst.shape[1])
    if sub.shape != dst.shape or src.shape[1:] != dst.shape[1:] or first.shape != second.shape:
        raise ValueError("operands of the composed difference do not match")
    _composed_difference(dst, src, sub, first, second)
    return out


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """The gather indices of the inverse of ``perm`` (of each row, for (H, n)): x[perm][inv] == x."""
    perm = np.asarray(perm)
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[-1], dtype=perm.dtype), perm.shape), axis=-1)
    return inv
