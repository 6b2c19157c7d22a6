"""Global bin edges for federated training from securely summed per-site counts on a public grid.

Each site counts its non-missing values of every feature in the buckets of a fixed public grid: the top
``GRID_BITS`` bits of the order-preserving 32-bit code of the float32 value (sign flip + exponent + top mantissa
bits, so bucket order is value order). The count vectors go through secure aggregation; the aggregator takes
weighted quantiles of the pooled counts, as XGBoost's hist sketch takes quantiles of the pooled data, and puts
every cut on a bucket boundary. A feature with at most ``max_bin`` non-empty buckets (binary and small-integer
columns) gets one bin per value, as XGBoost does for columns with few distinct values. Counts travel two per 64-bit
word (`pack_counts`), which halves the masking and the bytes and sums exactly below 2^32 rows in all.

Leakage: the aggregator learns the pooled per-feature histogram at grid resolution (1 sign, 8 exponent and
``GRID_BITS - 9`` mantissa bits: relative resolution 2^-7 at 16 bits), and no site's counts. The finished model's
thresholds are these bucket boundaries, which any model reveals anyway.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from privboost.crypto.floatcode import ordered_uint32_to_float32

GRID_BITS = 16
GRID_SIZE = 1 << GRID_BITS
#: the largest count a packed 32-bit lane holds (see `pack_counts`)
LANE_MAX = (1 << 32) - 1
_SHIFT = 32 - GRID_BITS


@njit(cache=True, boundscheck=False)
def _count_kernel(bits, counts):  # pragma: no cover - compiled
    # bits: the float32 values' bit patterns (n, F); the order-preserving code of `float32_to_ordered_uint32`,
    # computed inline: +-0 -> 0x80000000, non-negative -> bits | sign, negative -> ~bits; NaN skipped
    n, n_features = bits.shape
    block = 4096  # rows per pass: the block stays in cache while each feature's counts row is updated
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        for f in range(n_features):
            row = counts[f]
            for i in range(r0, r1):
                u = bits[i, f]
                magnitude = u & np.uint32(0x7FFFFFFF)
                if magnitude > np.uint32(0x7F800000):
                    continue  # NaN: missing
                if magnitude == 0:
                    code = np.uint32(0x80000000)
                elif u & np.uint32(0x80000000):
                    code = ~u
                else:
                    code = u | np.uint32(0x80000000)
                row[code >> np.uint32(_SHIFT)] += 1


def bucket_counts(values: np.ndarray) -> np.ndarray:
    """Per-feature counts of non-missing values in each public grid bucket: uint64 (F, GRID_SIZE)."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"values must be a 2-D (rows, features) array, got shape {x.shape}")
    counts = np.zeros((x.shape[1], GRID_SIZE), dtype=np.uint64)
    _count_kernel(x.view(np.uint32), counts)
    return counts


def pack_counts(counts: np.ndarray) -> np.ndarray:
    """Two counts per uint64 word (bucket 2j in the low 32 bits, 2j+1 in the high): (F, GRID_SIZE) -> (F,
    GRID_SIZE / 2). Halves what secure aggregation masks and sends. Sums of packed words are the packed sums as long
    as every summed count stays below 2^32, i.e. fewer than 2^32 rows in all (the aggregator checks the total)."""
    counts = np.asarray(counts, np.uint64)
    if counts.size and int(counts.max()) > LANE_MAX:
        raise ValueError(f"a bucket count exceeds {LANE_MAX}: too many rows for the packed sketch")
    return counts[:, 0::2] | (counts[:, 1::2] << np.uint64(32))


def unpack_counts(packed: np.ndarray) -> np.ndarray:
    """Inverse of `pack_counts`: (F, GRID_SIZE / 2) uint64 -> (F, GRID_SIZE) uint64."""
    packed = np.asarray(packed, np.uint64)
    counts = np.empty((packed.shape[0], 2 * packed.shape[1]), np.uint64)
    counts[:, 0::2] = packed & np.uint64(LANE_MAX)
    counts[:, 1::2] = packed >> np.uint64(32)
    return counts


def _upper_bounds(buckets: np.ndarray) -> np.ndarray:
    """Smallest float32 above every value of each bucket (its successor's first code); top bucket: +inf."""
    codes = (buckets.astype(np.uint64) + 1) << np.uint64(_SHIFT)
    bounds = ordered_uint32_to_float32(np.minimum(codes, np.uint64(0xFFFFFFFF)).astype(np.uint32))
    return np.where(buckets >= GRID_SIZE - 1, np.float32(np.inf), bounds).astype(np.float32)


def edges_from_counts(counts: np.ndarray, max_bin: int) -> list[np.ndarray]:
    """Bin upper bounds per feature (float32, increasing; bin j holds u_{j-1} <= x < u_j) from pooled counts.

    A feature with no values gets a single bin.
    """
    if max_bin < 2:
        raise ValueError("max_bin must be at least 2")
    edges = []
    for row in np.asarray(counts, dtype=np.float64):
        occupied = np.flatnonzero(row)
        if occupied.size == 0:
            edges.append(np.array([np.inf], np.float32))
            continue
        if occupied.size <= max_bin:
            chosen = occupied
        else:
            cumulative = np.cumsum(row[occupied])
            targets = cumulative[-1] * np.arange(1, max_bin) / max_bin
            # the bucket where each quantile target is reached closes a bin; the last occupied bucket closes the last
            chosen = np.unique(np.append(occupied[np.searchsorted(cumulative, targets)], occupied[-1]))
        edges.append(np.unique(_upper_bounds(chosen)))
    return edges


def feature_minimums(counts: np.ndarray) -> np.ndarray:
    """Lower bound of each feature's lowest occupied bucket (the threshold XGBoost uses to send every value right)."""
    result = np.full(counts.shape[0], -np.inf, np.float32)
    for f, row in enumerate(counts):
        occupied = np.flatnonzero(row)
        if occupied.size:
            code = np.array([int(occupied[0]) << _SHIFT], np.uint32)
            result[f] = ordered_uint32_to_float32(code)[0]
    return result
