"""The public sketch grid: bucket counts (numba kernel) against numpy, and the packed counts' exact sums."""

from __future__ import annotations

import numpy as np
import pytest

from privboost.crypto.floatcode import float32_to_ordered_uint32
from privboost.federated import sketch


def _reference_counts(values: np.ndarray) -> np.ndarray:
    counts = np.zeros((values.shape[1], sketch.GRID_SIZE), np.uint64)
    for f in range(values.shape[1]):
        column = values[:, f]
        present = column[~np.isnan(column)]
        counts[f] = np.bincount(float32_to_ordered_uint32(present) >> np.uint32(32 - sketch.GRID_BITS),
                                minlength=sketch.GRID_SIZE)
    return counts


def test_bucket_counts_equal_numpy_on_edge_values():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((9000, 6)) * rng.choice([1e-38, 1e-3, 1.0, 1e30], (9000, 6))).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    values[:9, 0] = [-0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, np.nan]
    np.testing.assert_array_equal(sketch.bucket_counts(values), _reference_counts(values))
    assert sketch.bucket_counts(values)[0].sum() == np.count_nonzero(~np.isnan(values[:, 0]))  # NaN: not counted


def test_packed_counts_sum_exactly_and_unpack():
    rng = np.random.default_rng(1)
    sites = [rng.integers(0, 1 << 29, (3, sketch.GRID_SIZE)).astype(np.uint64) for _ in range(7)]
    masks = [rng.integers(0, 1 << 63, (3, sketch.GRID_SIZE // 2), dtype=np.uint64) * np.uint64(2) for _ in sites]
    # what secure aggregation does: each packed vector masked mod 2^64, the masks' sum removed afterwards
    total = sum((sketch.pack_counts(c) + m for c, m in zip(sites, masks, strict=True)), np.uint64(0))
    total = total - sum(masks, np.uint64(0))
    np.testing.assert_array_equal(sketch.unpack_counts(total), sum(sites, np.uint64(0)))


def test_pack_refuses_counts_past_32_bits():
    counts = np.zeros((1, sketch.GRID_SIZE), np.uint64)
    counts[0, 5] = sketch.LANE_MAX + 1
    with pytest.raises(ValueError, match="too many rows"):
        sketch.pack_counts(counts)
