"""Federated building blocks against references: histograms vs numpy, split finding vs a literal transcription of
xgboost's scan, and whole trees grown with them vs `xgboost.train(tree_method="hist")` on the same bins."""

from __future__ import annotations

import ctypes
import ctypes.util
import json

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes

from privboost.federated.histograms import (
    SINGLE_RUN_ROWS,
    bin_matrix,
    build_fixed_histograms,
    build_histograms,
    missing_code,
    node_totals,
)
from privboost.federated.splits import TreeParams, best_splits, leaf_weights
from privboost.mpc.ring import encode_fixed

# --------------------------------------------------------------------------------------------------- binning


def test_bin_matrix_follows_upper_bounds_and_missing_code():
    edges = [np.array([1.0, 2.0, 3.0], np.float32), np.array([0.5, np.inf], np.float32)]
    values = np.array([[0.0, 0.0], [1.0, 0.5], [2.5, np.nan], [3.0, 7.0], [99.0, -np.inf], [np.nan, np.inf]],
                      np.float32)
    bins = bin_matrix(values, edges)
    code = missing_code(3)
    assert bins.dtype == np.uint8 and bins.shape == values.shape
    # bin j holds u_{j-1} <= x < u_j; x >= the last bound stays in the last bin; NaN -> the missing code
    assert bins[:, 0].tolist() == [0, 1, 2, 2, 2, code]
    assert bins[:, 1].tolist() == [0, 1, code, 1, 0, 1]


@pytest.mark.parametrize("n_bins, dtype", [(40, np.uint8), (255, np.uint8), (256, np.uint16), (700, np.uint16)])
def test_bin_matrix_matches_searchsorted(n_bins, dtype):
    rng = np.random.default_rng(n_bins)
    values = rng.standard_normal((3000, 5)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    values[:50, 2] = np.float32(0.25)  # values sitting exactly on a bound go up
    edges = [np.unique(np.sort(rng.standard_normal(rng.integers(1, n_bins + 1)).astype(np.float32)))
             for _ in range(5)]
    edges[2] = np.append(edges[2][edges[2] < 0.25], np.float32(0.25))
    bins = bin_matrix(values, edges, n_bins)
    assert bins.dtype == dtype and bins.flags.c_contiguous
    for f, e in enumerate(edges):
        want = np.minimum(np.searchsorted(e, values[:, f], side="right"), e.size - 1)
        want[np.isnan(values[:, f])] = n_bins
        np.testing.assert_array_equal(bins[:, f], want)


def test_bin_matrix_rejects_bad_edges():
    values = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match="strictly increasing"):
        bin_matrix(values, [np.array([1.0, 1.0], np.float32)])
    with pytest.raises(ValueError, match="more than n_bins"):
        bin_matrix(values, [np.arange(1, 6, dtype=np.float32)], 4)
    with pytest.raises(ValueError, match="features"):
        bin_matrix(values, [np.ones(1, np.float32)] * 2)


# ------------------------------------------------------------------------------------------------ histograms


def _reference_histograms(bins, slot, g, h, n_slots, n_bins):
    out = np.zeros((n_slots, bins.shape[1], n_bins + 1, 2))
    rows = np.flatnonzero(slot >= 0)  # np.add.at adds in index order, i.e. row order, like the kernel
    for f in range(bins.shape[1]):
        np.add.at(out[:, f, :, 0], (slot[rows], bins[rows, f].astype(np.intp)), g[rows])
        np.add.at(out[:, f, :, 1], (slot[rows], bins[rows, f].astype(np.intp)), h[rows])
    return out


@pytest.mark.parametrize("n_bins", [30, 255, 400])
@pytest.mark.parametrize("order", ["F", "C"])
def test_histograms_equal_numpy_reference_exactly(n_bins, order):
    rng = np.random.default_rng(n_bins)
    n, n_features, n_slots = 6000, 7, 5
    values = rng.standard_normal((n, n_features)).astype(np.float32)
    values[rng.random(values.shape) < 0.15] = np.nan
    edges = [np.append(np.sort(rng.standard_normal(rng.integers(1, n_bins))).astype(np.float32), np.inf)
             for _ in range(n_features)]
    edges = [np.unique(e)[-n_bins:] for e in edges]
    bins = bin_matrix(values, edges, n_bins)
    bins = np.asfortranarray(bins) if order == "F" else np.ascontiguousarray(bins)
    assert bins.dtype == (np.uint8 if n_bins <= 255 else np.uint16)
    slot = rng.integers(-1, n_slots, n).astype(np.int32)
    g, h = rng.standard_normal(n), rng.random(n)
    hist = build_histograms(bins, slot, g, h, n_slots, n_bins)
    assert hist.shape == (n_slots, n_features, n_bins + 1, 2)
    np.testing.assert_array_equal(hist, _reference_histograms(bins, slot, g, h, n_slots, n_bins))
    assert hist[:, :, n_bins].sum() != 0  # the missing bin is filled

    totals = node_totals(slot, g, h, n_slots)
    want = np.zeros((n_slots, 2))
    np.add.at(want, slot[slot >= 0], np.stack([g, h], 1)[slot >= 0])
    np.testing.assert_array_equal(totals, want)
    # every counted row lands in exactly one bin per feature (missing included)
    np.testing.assert_allclose(hist.sum(axis=2), np.broadcast_to(totals[:, None], (n_slots, n_features, 2)))


@pytest.mark.parametrize("n_slots", [1, 6])
def test_large_histograms_split_over_threads_match_reference(n_slots):
    """Above SINGLE_RUN_ROWS rows the kernel splits rows over threads: several slots are cut at slot boundaries
    (still exact, row order per bin); one slot is cut inside (partial sums added: equal up to rounding)."""
    rng = np.random.default_rng(n_slots)
    n, n_features, n_bins = 3 * SINGLE_RUN_ROWS, 5, 256  # 256 bins, no NaN: uint8 codes
    values = rng.standard_normal((n, n_features)).astype(np.float32)
    edges = [np.append(np.sort(rng.standard_normal(255)).astype(np.float32), np.inf) for _ in range(n_features)]
    bins = bin_matrix(values, edges, n_bins)
    assert bins.dtype == np.uint8 and bins.max() == 255
    slot = rng.integers(-1, n_slots, n).astype(np.int32)
    g, h = rng.standard_normal(n), rng.random(n)
    hist = build_histograms(bins, slot, g, h, n_slots, n_bins)
    want = _reference_histograms(bins, slot, g, h, n_slots, n_bins)
    if n_slots > 1:
        np.testing.assert_array_equal(hist, want)
    else:
        np.testing.assert_allclose(hist, want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("n_slots", [1, 4])
def test_fixed_histograms_equal_encode_fixed_of_float_histograms_and_refuse_overflow(n_slots):
    rng = np.random.default_rng(n_slots)
    n, n_features, n_bins = 5000, 4, 20
    bins = rng.integers(0, n_bins + 1, (n, n_features)).astype(np.uint8)
    slot = rng.integers(-1, n_slots, n).astype(np.int32)
    g, h = rng.standard_normal(n) * 1e3, rng.random(n)
    g[:7] = [2.5 / 2**32, -2.5 / 2**32, 0.5 / 2**32, -0.0, 1e-300, -1e-300, 0.0]  # ties round to even, as rint
    want = encode_fixed(build_histograms(bins, slot, g, h, n_slots, n_bins), 32)
    np.testing.assert_array_equal(build_fixed_histograms(bins, slot, g, h, n_slots, n_bins, 32, 2.0**29), want)
    with pytest.raises(ValueError, match="exceeds"):
        build_fixed_histograms(bins, slot, g, h, n_slots, n_bins, 32, 10.0)
    g[10], slot[10] = np.nan, 0  # a counted row
    with pytest.raises(ValueError, match="not finite"):
        build_fixed_histograms(bins, slot, g, h, n_slots, n_bins, 32, 2.0**29)


def test_histograms_reject_inconsistent_inputs():
    bins = np.zeros((4, 2), np.uint8)
    g = h = np.ones(4)
    with pytest.raises(ValueError, match="slot"):
        build_histograms(bins, np.array([0, 1, 2, 0], np.int32), g, h, 2, 4)
    with pytest.raises(ValueError, match="exceeds the missing code"):
        build_histograms(np.full((4, 2), 9, np.uint8), np.zeros(4, np.int32), g, h, 1, 4)


# --------------------------------------------------------------------------- split finding, literally transcribed


class _Entry:
    """xgboost's SplitEntry: loss_chg, split index and the payload, replaced as NeedReplace says."""

    def __init__(self):
        self.loss, self.index, self.data = np.float32(0), 0, None

    def update(self, loss, index, data):
        if np.isinf(loss):
            return
        better = loss > self.loss if self.index <= index else not (self.loss > loss)
        if better:
            self.loss, self.index, self.data = loss, index, data


def _literal_best(hist, total, k, params):
    """EnumerateSplit<+1>/<-1> and EvaluateSplits of src/tree/hist/evaluate_splits.h, one value at a time."""
    lam, mcw = float(np.float32(params.reg_lambda)), float(np.float32(params.min_child_weight))

    def gain(grad, hess):
        return np.float32(0) if hess <= 0 else np.float32(grad * grad) / np.float32(hess + lam)

    root = gain(total[0], total[1])
    node = _Entry()
    for f in range(len(k)):
        best, lg, lh = _Entry(), 0.0, 0.0
        for i in range(k[f]):
            lg, lh = lg + hist[f, i, 0], lh + hist[f, i, 1]
            rg, rh = total[0] - lg, total[1] - lh
            if lh >= mcw and rh >= mcw:
                best.update(np.float32((gain(lg, lh) + gain(rg, rh)) - root), f, (i, False, (lg, lh), (rg, rh)))
        node.update(best.loss, best.index, best.data)
        if lg != total[0] or lh != total[1]:  # SplitContainsMissingValues
            best, ag, ah = _Entry(), 0.0, 0.0
            for i in range(k[f] - 1, -1, -1):
                ag, ah = ag + hist[f, i, 0], ah + hist[f, i, 1]
                cg, ch = total[0] - ag, total[1] - ah
                if ah >= mcw and ch >= mcw:
                    best.update(np.float32((gain(cg, ch) + gain(ag, ah)) - root), f, (i - 1, True, (cg, ch), (ag, ah)))
            node.update(best.loss, best.index, best.data)
    return node


@pytest.mark.parametrize("kind", ["integer", "float", "dense"])
@pytest.mark.parametrize("params", [TreeParams(), TreeParams(reg_lambda=0.0, min_child_weight=0.0),
                                    TreeParams(reg_lambda=0.5, gamma=0.3, min_child_weight=2.5)])
def test_best_splits_equal_literal_scan(kind, params):
    rng = np.random.default_rng(7)
    n_nodes, n_bins, per_node = 250, 6, 12
    k = np.array([n_bins, 3, 1, 5])
    n = n_nodes * per_node
    slot = np.repeat(np.arange(n_nodes, dtype=np.int32), per_node)
    bins = np.stack([rng.integers(0, kf, n) for kf in k], 1).astype(np.uint8)
    missing_rate = rng.choice([0.0, 0.3], (n_nodes, len(k)))  # some nodes have no missing value for a feature
    missing_rate[:, 0] = 0.0
    if kind != "dense":
        bins[rng.random((n, len(k))) < missing_rate[slot]] = missing_code(n_bins)
    if kind == "integer":  # small integers: exact sums and many exactly tied gains, to exercise the tie-breaking
        g, h = rng.integers(-3, 4, n).astype(np.float64), rng.integers(0, 3, n).astype(np.float64)
    else:
        g, h = rng.standard_normal(n), rng.random(n)
    hist = build_histograms(bins, slot, g, h, n_nodes, n_bins)
    totals = node_totals(slot, g, h, n_nodes)
    if kind == "dense":  # xgboost's root sums for data without missing values: feature 0's bins, in bin order
        totals = np.cumsum(hist[:, 0, :k[0]], axis=1)[:, -1]
    splits = best_splits(hist, totals, k, params)
    n_valid = n_backward = 0
    for i in range(n_nodes):
        ref = _literal_best(hist[i], totals[i], k, params)
        if ref.data is None:
            assert splits.feature[i] == -1 and not splits.valid[i]
            continue
        split_bin, default_left, left, right = ref.data
        assert (splits.loss_chg[i], splits.feature[i], splits.bin[i]) == (ref.loss, ref.index, split_bin), i
        assert splits.default_left[i] == default_left
        np.testing.assert_array_equal(splits.left[i], left)
        np.testing.assert_array_equal(splits.right[i], right)
        gamma = np.float32(params.gamma)
        valid = ref.loss > np.float32(1e-6) and left[1] != 0 and right[1] != 0 and not ref.loss < gamma
        assert splits.valid[i] == valid
        n_valid += valid
        n_backward += default_left
    assert n_valid > 50 and (n_backward > 10 or kind == "dense")


# ------------------------------------------------------- split finding against the former vectorised numpy code


def _numpy_gain(grad, hess, lam):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = (grad * grad).astype(np.float32) / (hess + lam).astype(np.float32)
    return np.where(hess <= 0, np.float32(0), out).astype(np.float32, copy=False)


def _numpy_loss_chg(left, right, root_gain, lam):
    with np.errstate(over="ignore", invalid="ignore"):
        split_gain = _numpy_gain(left[..., 0], left[..., 1], lam) + _numpy_gain(right[..., 0], right[..., 1], lam)
        return (split_gain - root_gain).astype(np.float32, copy=False)


def _numpy_best_splits(hist, totals, k, params):
    """best_splits as it was before the numba kernel (vectorised numpy, cumsum scans): the reference oracle."""
    lam, mcw = float(np.float32(params.reg_lambda)), float(np.float32(params.min_child_weight))
    gamma = np.float32(params.gamma)
    n_nodes, _, width, _ = hist.shape
    n_bins = width - 1
    in_range = np.arange(n_bins)[None, :] < k[:, None]
    part = np.where(in_range[None, :, :, None], hist[:, :, :n_bins, :], 0.0)
    parent = totals[:, None, None, :]
    root_gain = _numpy_gain(totals[:, 0], totals[:, 1], lam)[:, None, None]
    fwd_left = np.cumsum(part, axis=2)
    fwd_right = parent - fwd_left
    fwd_ok = in_range[None] & (fwd_left[..., 1] >= mcw) & (fwd_right[..., 1] >= mcw)
    fwd_chg = np.where(fwd_ok, _numpy_loss_chg(fwd_left, fwd_right, root_gain, lam), -np.inf)
    non_missing = fwd_left[:, :, -1, :]
    has_missing = (non_missing[..., 0] != totals[:, None, 0]) | (non_missing[..., 1] != totals[:, None, 1])
    bwd_acc = np.cumsum(part[:, :, ::-1, :], axis=2)[:, :, ::-1, :]
    bwd_left = parent - bwd_acc
    bwd_ok = in_range[None] & has_missing[:, :, None] & (bwd_acc[..., 1] >= mcw) & (bwd_left[..., 1] >= mcw)
    bwd_chg = np.where(bwd_ok, _numpy_loss_chg(bwd_left, bwd_acc, root_gain, lam), -np.inf)
    fwd_chg = np.where(np.isfinite(fwd_chg), fwd_chg, -np.inf)
    bwd_chg = np.where(np.isfinite(bwd_chg), bwd_chg, -np.inf)
    fwd_i = np.argmax(fwd_chg, axis=2)
    fwd_best = np.take_along_axis(fwd_chg, fwd_i[..., None], axis=2)[..., 0]
    bwd_i = n_bins - 1 - np.argmax(bwd_chg[:, :, ::-1], axis=2)
    bwd_best = np.take_along_axis(bwd_chg, bwd_i[..., None], axis=2)[..., 0]
    fwd_best = np.where(fwd_best > 0, fwd_best, 0).astype(np.float32)
    use_bwd = bwd_best > fwd_best
    feat_best = np.where(use_bwd, bwd_best, fwd_best).astype(np.float32)
    nodes = np.arange(n_nodes)
    f_best = np.argmax(feat_best, axis=1)
    loss_chg = feat_best[nodes, f_best]
    found = loss_chg > 0
    backward = use_bwd[nodes, f_best] & found
    i_fwd, i_bwd = fwd_i[nodes, f_best], bwd_i[nodes, f_best]
    left = np.where(backward[:, None], bwd_left[nodes, f_best, i_bwd], fwd_left[nodes, f_best, i_fwd])
    right = np.where(backward[:, None], bwd_acc[nodes, f_best, i_bwd], fwd_right[nodes, f_best, i_fwd])
    left = np.where(found[:, None], left, 0.0)
    right = np.where(found[:, None], right, 0.0)
    split_bin = np.where(backward, i_bwd - 1, i_fwd)
    valid = found & (loss_chg > np.float32(1e-6)) & (left[:, 1] != 0) & (right[:, 1] != 0) & ~(loss_chg < gamma)
    return dict(loss_chg=np.where(found, loss_chg, np.float32(0)).astype(np.float32),
                feature=np.where(found, f_best, -1).astype(np.int64),
                bin=np.where(found, split_bin, 0).astype(np.int64),
                default_left=backward, left=left, right=right, valid=valid)


def _random_histograms(rng, n_nodes, n_features, n_bins):
    """Histograms with ties, zero/-0.0/negative entries, missing mass (or exact sums), extreme scales."""
    k = rng.integers(1, n_bins + 1, n_features)
    k[rng.random(n_features) < 0.3] = n_bins
    kind = rng.integers(0, 4)
    shape = (n_nodes, n_features, n_bins + 1)
    if kind == 0:  # small integers: exact sums, has_missing decided exactly, many tied gains
        g, h = rng.integers(-3, 4, shape).astype(np.float64), rng.integers(0, 4, shape).astype(np.float64)
    else:
        g, h = rng.standard_normal(shape), rng.random(shape) * rng.integers(1, 20, shape)
        scale = [1.0, 10.0 ** rng.integers(-160, -20), 10.0 ** rng.integers(15, 160)][kind - 1]
        g, h = g * scale, h * scale
    h[rng.random(shape) < 0.2] = 0.0  # zero-hessian bins
    h[rng.random(shape) < 0.02] *= -1  # e.g. a sibling derived as parent - built, rounded below 0
    g[rng.random(shape) < 0.1] = -0.0
    h[rng.random(shape) < 0.05] = -0.0
    if rng.random() < 0.05:  # non-finite values
        g[rng.random(shape) < 0.01], h[rng.random(shape) < 0.01] = np.inf, np.nan
    hist = np.stack([g, h], -1)
    for _ in range(rng.integers(0, 4)):  # repeated identical bins and features
        i = rng.integers(0, n_bins)
        hist[:, :, i + 1:i + rng.integers(2, 4)] = hist[:, :, i:i + 1]
        if n_features > 1:
            f = rng.integers(0, n_features - 1)
            hist[:, f + 1] = hist[:, f]
            k[f + 1] = k[f]
    if rng.random() < 0.3:  # missing values unlike the rest: more backward (default left) splits
        hist[:, :, n_bins, 0] *= 20
    missing = rng.random((n_nodes, n_features)) < rng.choice([0.0, 0.5, 1.0])
    hist[:, :, n_bins] = np.where(missing[..., None], hist[:, :, n_bins], 0.0)
    # node sums: feature 0's bins in bin order with its missing bin (so features like it have no missing values),
    # or an arbitrary total
    f0 = np.where(np.arange(n_bins + 1)[:, None] < k[0], hist[:, 0], 0.0)
    totals = np.cumsum(f0, axis=1)[:, -1] + hist[:, 0, n_bins]
    if rng.random() < 0.2:
        with np.errstate(invalid="ignore"):
            totals = totals + rng.standard_normal(totals.shape) * np.abs(totals)
    return hist, totals, k


@pytest.mark.parametrize("params", [TreeParams(), TreeParams(reg_lambda=0.0, min_child_weight=0.0),
                                    TreeParams(reg_lambda=0.5, gamma=0.3, min_child_weight=2.5),
                                    TreeParams(reg_lambda=50.0, gamma=1e-3, min_child_weight=0.1),
                                    TreeParams(reg_lambda=1e-30, gamma=5.0, min_child_weight=1e-30)])
def test_best_splits_equal_numpy_reference_bit_for_bit(params):
    rng = np.random.default_rng(int(params.reg_lambda * 1000 + params.min_child_weight * 10))
    seen = {"found": 0, "none": 0, "valid": 0, "default_left": 0, "negative_zero": 0}
    shapes = [(int(rng.integers(1, 9)), int(rng.integers(1, 13)), int(rng.integers(2, 41))) for _ in range(400)]
    for shape in [(0, 3, 5), (3, 20, 256)] + shapes:
        hist, totals, k = _random_histograms(rng, *shape)
        got = best_splits(hist, totals, k, params)
        with np.errstate(invalid="ignore"):
            want = _numpy_best_splits(hist, totals, k, params)
        for name, ref in want.items():
            out = getattr(got, name)
            assert out.dtype == ref.dtype and out.shape == ref.shape, name
            # bit patterns, so -0.0 vs 0.0 and NaN payloads count too
            assert np.array_equal(np.ascontiguousarray(out).view(np.uint8), ref.view(np.uint8)), (name, shape)
        found = got.feature >= 0
        seen["found"] += found.sum()
        seen["none"] += (~found).sum()
        seen["valid"] += got.valid.sum()
        seen["default_left"] += got.default_left.sum()
        sums = np.concatenate([got.left, got.right])
        seen["negative_zero"] += (np.signbit(sums) & (sums == 0)).sum()
    assert all(v > 0 for v in seen.values()), seen


def test_backward_split_before_the_first_bin():
    # missing-vs-rest is forward at bin K-1 or backward at bin -1: the backward one wins only by rounding. Here the
    # forward hessian sum 0.7 + 0.2 + 0.1 = 0.9999999999999999 fails min_child_weight = 1, the backward
    # 0.1 + 0.2 + 0.7 = 1.0 passes: bin -1, every non-missing value right, missing values left
    hist = np.zeros((1, 2, 4, 2))
    hist[0, :, :3] = [[1.0, 0.7], [1.0, 0.2], [1.0, 0.1]]
    totals = np.array([[-5.0, 3.0]])  # missing: (-8, 2)
    for k in (np.array([3, 3]), np.array([3, 2])):  # feature 1 with K < B as well
        splits = best_splits(hist, totals, k, TreeParams())
        assert (splits.feature[0], splits.bin[0], splits.default_left[0], splits.valid[0]) == (0, -1, True, True)
        want = _numpy_best_splits(hist, totals, k, TreeParams())
        for name, ref in want.items():
            assert np.array_equal(np.ascontiguousarray(getattr(splits, name)).view(np.uint8), ref.view(np.uint8))


def test_split_needs_more_than_rt_eps_and_gamma():
    # two bins with tiny opposite gradients: the best split gains ~1e-8 > 0, below kRtEps = 1e-6
    hist = np.zeros((2, 1, 3, 2))
    hist[:, 0, :2] = [[1e-4, 2.0], [-1e-4, 2.0]]
    hist[1, 0, :2, 0] *= 100  # gains ~1e-4: a real split, unless gamma forbids it
    totals = hist[:, 0].sum(axis=1)
    tiny = best_splits(hist, totals, np.array([2]), TreeParams())
    assert tiny.feature.tolist() == [0, 0] and 0 < tiny.loss_chg[0] < 1e-6
    assert tiny.valid.tolist() == [False, True]
    strict = best_splits(hist, totals, np.array([2]), TreeParams(gamma=float(tiny.loss_chg[1]) * 1.01))
    assert strict.valid.tolist() == [False, False]
    exact = best_splits(hist, totals, np.array([2]), TreeParams(gamma=float(tiny.loss_chg[1])))
    assert exact.valid.tolist() == [False, True]  # loss_chg >= gamma suffices


def test_leaf_weights_and_params():
    params = TreeParams(learning_rate=0.3, reg_lambda=1.0, min_child_weight=2.0)
    sums = np.array([[3.0, 5.0], [-1.0, 1.5], [2.0, 0.0]])
    w = leaf_weights(sums, params)
    assert w[0] == np.float32(np.float32(-3.0 / 6.0) * np.float32(0.3))
    assert w[1] == 0 and w[2] == 0  # hess below min_child_weight, or zero
    assert leaf_weights(sums[0], params).shape == ()
    for bad in (dict(max_depth=0), dict(learning_rate=0.0), dict(reg_lambda=-1.0), dict(gamma=np.nan),
                dict(min_child_weight=-0.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TreeParams(**bad).check()


# ------------------------------------------------------------------------------- whole trees against xgboost

_LIBM = ctypes.util.find_library("m")


def _libm_float(name):
    fn = getattr(ctypes.CDLL(_LIBM), name)
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return np.frompyfunc(lambda v: fn(float(v)), 1, 1)


def _gradients(objective, margin, label):
    """xgboost's float32 gradients (src/objective/regression_loss.h), with libm's expf as its Sigmoid uses."""
    if objective == "reg:squarederror":
        return (margin - label).astype(np.float64), np.ones_like(margin, np.float64)
    x = np.minimum(-margin, np.float32(88.7))
    p = np.float32(1) / ((_libm_float("expf")(x).astype(np.float32) + np.float32(1)) + np.float32(1e-16))
    return (p - label).astype(np.float64), np.maximum(p * (np.float32(1) - p), np.float32(1e-16)).astype(np.float64)


def _grow(bins, k, n_bins, g, h, params, dense):
    """Level-wise tree from the federated building blocks, as a site + aggregator would grow it (in one place)."""
    n, code = len(g), missing_code(n_bins)
    everyone = np.zeros(n, np.int32)
    hist = build_histograms(bins, everyone, g, h, 1, n_bins)
    # xgboost's root sums: for data without missing values the sum of feature 0's bins, else of all rows
    totals = np.cumsum(hist[0, 0, :k[0]], axis=0)[-1:] if dense else node_totals(everyone, g, h, 1)
    tree, ids, position, next_id = {}, np.array([0]), np.zeros(n, np.int64), 1
    for depth in range(params.max_depth):
        splits = best_splits(hist, totals, k, params)
        for i in np.flatnonzero(~splits.valid):
            tree[int(ids[i])] = ("leaf", float(leaf_weights(totals[i], params)))
        chosen = np.flatnonzero(splits.valid)
        if chosen.size == 0:
            break
        left_id = next_id + 2 * np.arange(chosen.size)
        next_id += 2 * chosen.size
        lookup = np.full(next_id, -1)
        lookup[ids[chosen]] = np.arange(chosen.size)
        rows = np.flatnonzero(lookup[position] >= 0)
        which = lookup[position[rows]]
        value = bins[rows, splits.feature[chosen][which]].astype(np.int64)
        goes_left = np.where(value == code, splits.default_left[chosen][which], value <= splits.bin[chosen][which])
        for j, i in enumerate(chosen):
            missing = bool(np.any(value[which == j] == code))
            tree[int(ids[i])] = ("split", int(splits.feature[i]), int(splits.bin[i]), bool(splits.default_left[i]),
                                 int(left_id[j]), int(left_id[j]) + 1, missing)
        position[rows] = np.where(goes_left, left_id[which], left_id[which] + 1)
        left, right = splits.left[chosen], splits.right[chosen]
        ids = np.stack([left_id, left_id + 1], 1).ravel()
        totals = np.stack([left, right], 1).reshape(-1, 2)  # children's sums are the split's, as in xgboost
        if depth + 1 == params.max_depth:
            for node, sums in zip(ids, totals, strict=True):
                tree[int(node)] = ("leaf", float(leaf_weights(sums, params)))
            break
        # build the child with less hessian, derive its sibling from the parent (xgboost's AssignNodes)
        build_left = ~(right[:, 1] < left[:, 1])
        built_side = goes_left == build_left[which]
        slot = np.full(n, -1, np.int32)
        slot[rows[built_side]] = which[built_side]
        built = build_histograms(bins, slot, g, h, chosen.size, n_bins)
        sibling = hist[chosen] - built
        pick = build_left[:, None, None, None]
        hist = np.stack([np.where(pick, built, sibling), np.where(pick, sibling, built)], 1)
        hist = hist.reshape(-1, *built.shape[1:])
    return tree, position


def _assert_same_tree(tree, xtree, k, counts):
    left, right = xtree["left_children"], xtree["right_children"]
    feature, condition, default_left = xtree["split_indices"], xtree["split_conditions"], xtree["default_left"]
    stack = [(0, 0)]
    while stack:
        ours, theirs = stack.pop()
        node = tree[ours]
        if node[0] == "leaf":
            assert left[theirs] == -1, f"xgboost splits node {theirs}, we made a leaf"
            np.testing.assert_allclose(node[1], np.float32(condition[theirs]), rtol=1e-6, atol=1e-12)
            counts["leaves"] += 1
            continue
        _, f, split_bin, our_default, our_left, our_right, has_missing = node
        assert left[theirs] != -1, f"xgboost made node {theirs} a leaf, we split it"
        assert feature[theirs] == f
        # trained on bin indices, xgboost's "x < c" sends bins <= ceil(c) - 1 left
        assert int(np.clip(np.ceil(np.float32(condition[theirs])) - 1, -1, k[f] - 1)) == split_bin
        if has_missing:
            assert bool(default_left[theirs]) == our_default
            counts["missing"] += 1
            counts["default_left"] += our_default
        counts["splits"] += 1
        stack += [(our_left, left[theirs]), (our_right, right[theirs])]


def _quantile_edges(x, n_bins):
    # edges are data values (so no bin is globally empty and bin indices equal xgboost's), plus +inf on top
    edges = []
    for col in x.T:
        v = col[~np.isnan(col)].astype(np.float64)
        q = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1], method="inverted_cdf"))
        edges.append(np.append(q[q > v.min()], np.inf).astype(np.float32))
    return edges


def _breast_cancer():
    data = load_breast_cancer()
    x = data.data.copy()
    rng = np.random.default_rng(1)
    for col in rng.choice(x.shape[1], 10, replace=False):
        x[rng.random(len(x)) < 0.1, col] = np.nan
    return x, data.target.astype(np.float64)


def _diabetes():
    data = load_diabetes()
    return data.data, data.target.astype(np.float64)


def _nhanes():
    from privboost.datasets import load_nhanes_diabetes

    frame, labels = load_nhanes_diabetes()
    return frame.to_numpy(np.float64), labels.astype(np.float64)


CASES = {
    "breast_cancer": (_breast_cancer, "binary:logistic", 32, TreeParams(max_depth=4), 10, 0.5),
    "breast_cancer_gamma_mcw": (_breast_cancer, "binary:logistic", 32,
                                TreeParams(max_depth=6, learning_rate=0.5, reg_lambda=2.0, gamma=0.5,
                                           min_child_weight=3.0), 10, 0.5),
    "diabetes": (_diabetes, "reg:squarederror", 16, TreeParams(max_depth=5), 10, 152.0),
    "diabetes_gamma_mcw": (_diabetes, "reg:squarederror", 16,
                           TreeParams(max_depth=3, learning_rate=0.1, reg_lambda=0.5, gamma=100.0,
                                      min_child_weight=5.0), 10, 150.0),
    "nhanes": (_nhanes, "binary:logistic", 64, TreeParams(max_depth=6), 8, 0.5),
    "nhanes_uint16": (_nhanes, "binary:logistic", 300,
                      TreeParams(max_depth=5, gamma=0.2, min_child_weight=2.0), 5, 0.3),
}


@pytest.mark.skipif(_LIBM is None, reason="needs libm's expf/logf to compute xgboost's float32 gradients")
@pytest.mark.parametrize("case", list(CASES))
def test_trees_equal_xgboost_hist(case):
    load, objective, max_bins, params, n_trees, base_score = CASES[case]
    x, y = load()
    x = x.astype(np.float32)
    edges = _quantile_edges(x, max_bins)
    n_bins = max(e.size for e in edges)
    k = np.array([e.size for e in edges])
    bins = bin_matrix(x, edges, n_bins)
    code = missing_code(n_bins)
    # train xgboost on the bin indices themselves: with max_bin > the bin count each index is its own bin
    binned = np.where(bins == code, np.nan, bins).astype(np.float32)
    dense = not np.isnan(binned).any()
    booster = xgb.train({"tree_method": "hist", "max_depth": params.max_depth, "eta": params.learning_rate,
                         "lambda": params.reg_lambda, "gamma": params.gamma,
                         "min_child_weight": params.min_child_weight, "base_score": base_score,
                         "objective": objective, "max_bin": n_bins + 1, "nthread": 1},
                        xgb.DMatrix(binned, label=y, nthread=1), n_trees)
    xtrees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]

    label = y.astype(np.float32)
    if objective == "binary:logistic":  # ProbToMargin: -logf(1/b - 1) in float32
        base_margin = -_libm_float("logf")(np.float32(1) / np.float32(base_score) - np.float32(1))
    else:
        base_margin = base_score
    margin = np.full(len(y), base_margin, np.float32)
    counts = {"leaves": 0, "splits": 0, "missing": 0, "default_left": 0}
    for t in range(n_trees):
        g, h = _gradients(objective, margin, label)
        tree, position = _grow(bins, k, n_bins, g, h, params, dense)
        _assert_same_tree(tree, xtrees[t], k, counts)
        leaf = np.array([tree[p][1] for p in position], np.float32)
        margin = (margin + leaf).astype(np.float32)  # xgboost's float32 prediction cache
    np.testing.assert_allclose(margin, booster.predict(xgb.DMatrix(binned), output_margin=True), rtol=0, atol=1e-5)
    assert counts["splits"] >= 3 * n_trees
    if not dense:
        assert counts["missing"] > 0 and counts["default_left"] > 0
