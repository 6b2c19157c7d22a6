"""XGBoost's ``hist`` split finding and leaf weights on (aggregated) gradient histograms, bit for bit.

Vectorised over nodes x features x bins. The rules below are those of xgboost 3.2 (C++ sources named per rule);
with the same histograms and node sums in, the same splits, gains and leaf values come out.

* Parameters are float32 in xgboost (``TrainParam``, src/tree/param.h): lambda, eta, gamma and min_child_weight are
  rounded to float32 first, then mixed with float64 sums as C++ promotes them. reg_alpha = 0 and
  max_delta_step = 0, no monotone or interaction constraints, no column sampling.
* Gain of a side with sums (G, H) (``SplitEvaluator::CalcGainGivenWeight``, src/tree/split_evaluator.h): 0 if
  H <= 0, else ``float(G*G) / float(H + lambda)``, a float32 division of float32-rounded operands. The split's
  gain is the float32 sum left + right; ``loss_chg = float(split_gain - root_gain)`` in float32, where the
  node's ``root_gain`` is the same formula on the node's own sums (``HistEvaluator::InitRoot``/``ApplyTreeSplit``).
* Candidates (``HistEvaluator::EnumerateSplit``, src/tree/hist/evaluate_splits.h): per feature a forward scan
  over bins 0..K-1 accumulating left = bins 0..i (float64, in bin order), right = parent - left, missing values
  right; split value = upper bound of bin i, i.e. bins <= i go left. A candidate counts only if both sides have
  hess >= min_child_weight (``IsValid``). Then, only if the feature's non-missing sum differs from the node's sums
  in either component (exact comparison, ``SplitContainsMissingValues``), a backward scan over bins K-1..0
  accumulating right = bins i..K-1, left = parent - right, missing values left (default_left); split value = upper
  bound of bin i-1, or the feature's minimum at i = 0 — here ``bin = i - 1``, so bin -1 sends every non-missing
  value right.
* Tie-breaking (``SplitEntry::NeedReplace``, src/tree/param.h): a scan starts from loss_chg 0 and keeps the first
  strictly better candidate (so loss_chg must be > 0; infinite gains are skipped); the backward scan replaces the
  forward one only if strictly better; across features the larger loss_chg wins and a tie goes to the lower
  feature index.
* A node is split (``CPUExpandEntry::IsValidImpl``, src/tree/hist/expand_entry.h and ``Driver::Push``,
  src/tree/driver.h) iff loss_chg > kRtEps = 1e-6f, both children have non-zero hessian, and
  loss_chg >= gamma (min_split_loss). The depth limit is the caller's.
* Children's sums are the split's left/right sums (``ApplyTreeSplit``), not fresh sums: pass them as the next
  level's ``totals`` to reproduce xgboost exactly. The root's sums in xgboost are the row-order sum of all
  gradients (`histograms.node_totals`), or for data without any missing value the sum of feature 0's bins.
  xgboost builds the histogram of the child with less hessian (the left one on ties) and takes its sibling as
  parent - built (``AssignNodes``, src/tree/hist/histogram.cc); do the same for identical histograms.
* Leaf value (``CalcWeight``, src/tree/param.h, times eta in ``ApplyTreeSplit``/``InitRoot``): 0 if
  H < min_child_weight or H <= 0, else ``float(-G / (H + lambda))`` (float64 division rounded to float32),
  then multiplied by float32 eta in float32.

tests/test_federated_splits.py grows trees with these functions and finds them identical to
``xgboost.train(tree_method="hist", nthread=1)`` on the same bins: splits, default directions, leaf values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: xgboost's kRtEps (include/xgboost/base.h): a split must gain more than this
RT_EPS = np.float32(1e-6)
#: histogram words (float64) evaluated at once
CHUNK_WORDS = 1 << 22


@dataclass(frozen=True)
class TreeParams:
    """XGBoost tree parameters used by split finding and leaf weights (xgboost's names and defaults)."""

    max_depth: int = 6
    learning_rate: float = 0.3
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1.0

    def check(self) -> TreeParams:
        """Raise ValueError naming the first out-of-range parameter; return self."""
        if isinstance(self.max_depth, bool) or int(self.max_depth) != self.max_depth or self.max_depth < 1:
            raise ValueError(f"max_depth must be an integer >= 1, got {self.max_depth!r}")
        limits = {"learning_rate": (self.learning_rate, False), "reg_lambda": (self.reg_lambda, True),
                  "gamma": (self.gamma, True), "min_child_weight": (self.min_child_weight, True)}
        for name, (value, zero_ok) in limits.items():
            v = float(value)
            if not np.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
                bound = ">= 0" if zero_ok else "> 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        return self


@dataclass(frozen=True)
class Splits:
    """Best split per node. ``feature`` is -1 where no candidate gained anything (then ``valid`` is False).

    ``bin``: bins <= bin go left (-1: every non-missing value goes right); missing values go left iff
    ``default_left``. ``left``/``right`` (nodes, 2): the children's (G, H) sums. ``valid``: split this node.
    """

    loss_chg: np.ndarray  # float32 (nodes,)
    feature: np.ndarray  # int64 (nodes,)
    bin: np.ndarray  # int64 (nodes,)
    default_left: np.ndarray  # bool (nodes,)
    left: np.ndarray  # float64 (nodes, 2)
    right: np.ndarray  # float64 (nodes, 2)
    valid: np.ndarray  # bool (nodes,)


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _gain(grad: np.ndarray, hess: np.ndarray, lam: float) -> np.ndarray:
    """CalcGainGivenWeight without constraints: float32(G^2) / float32(H + lambda), 0 where H <= 0."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        num = (grad * grad).astype(np.float32)
        den = (hess + lam).astype(np.float32)
        out = num / den
    return np.where(hess <= 0, np.float32(0), out).astype(np.float32, copy=False)


def _loss_chg(left: np.ndarray, right: np.ndarray, root_gain: np.ndarray, lam: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        split_gain = _gain(left[..., 0], left[..., 1], lam) + _gain(right[..., 0], right[..., 1], lam)
        return (split_gain - root_gain).astype(np.float32, copy=False)


def best_splits(hist: np.ndarray, totals: np.ndarray, n_bins_per_feature: np.ndarray, params: TreeParams) -> Splits:
    """XGBoost's best split for every node from histograms (nodes, F, B+1, 2) and node sums ``totals`` (nodes, 2).

    Bin B of ``hist`` holds missing values (it is not read: missing = totals - non-missing, as in xgboost);
    feature f uses bins 0..n_bins_per_feature[f]-1.
    """
    params.check()
    hist = np.asarray(hist, np.float64)
    totals = np.asarray(totals, np.float64)
    if hist.ndim != 4 or hist.shape[-1] != 2 or hist.shape[2] < 2 or hist.shape[1] < 1:
        raise ValueError(f"hist must have shape (nodes, features, bins + 1, 2), got {hist.shape}")
    n_nodes, n_features, width, _ = hist.shape
    n_bins = width - 1
    if totals.shape != (n_nodes, 2):
        raise ValueError(f"totals must have shape ({n_nodes}, 2), got {totals.shape}")
    k = np.asarray(n_bins_per_feature, np.int64).ravel()
    if k.shape != (n_features,) or (k.size and (k.min() < 1 or k.max() > n_bins)):
        raise ValueError(f"n_bins_per_feature must be {n_features} integers in [1, {n_bins}]")
    lam, mcw, gamma = float(_f32(params.reg_lambda)), float(_f32(params.min_child_weight)), _f32(params.gamma)
    # nodes in chunks of ~4M histogram words keep the temporaries (about ten hist-sized arrays) bounded
    step = max(1, CHUNK_WORDS // max(1, n_features * n_bins * 2))
    parts = [_evaluate(hist[i:i + step], totals[i:i + step], k, lam, mcw, gamma) for i in range(0, n_nodes, step)]
    if not parts:
        return _evaluate(hist, totals, k, lam, mcw, gamma)
    return Splits(*(np.concatenate([getattr(p, name) for p in parts]) for name in Splits.__dataclass_fields__))


def _evaluate(hist: np.ndarray, totals: np.ndarray, k: np.ndarray, lam: float, mcw: float,
              gamma: np.float32) -> Splits:
    n_nodes, n_features, width, _ = hist.shape
    n_bins = width - 1
    in_range = np.arange(n_bins)[None, :] < k[:, None]  # (F, B)
    # bins past a feature's last are ignored (zeroed) so both cumulative scans run over the feature's own bins
    part = np.where(in_range[None, :, :, None], hist[:, :, :n_bins, :], 0.0)
    parent = totals[:, None, None, :]
    root_gain = _gain(totals[:, 0], totals[:, 1], lam)[:, None, None]

    # forward scan: left = bins 0..i accumulated in bin order (np.cumsum is sequential), missing values right
    fwd_left = np.cumsum(part, axis=2)
    fwd_right = parent - fwd_left
    fwd_ok = in_range[None] & (fwd_left[..., 1] >= mcw) & (fwd_right[..., 1] >= mcw)
    fwd_chg = np.where(fwd_ok, _loss_chg(fwd_left, fwd_right, root_gain, lam), -np.inf)

    # does the node have missing values for the feature? non-missing sum != node sum, compared exactly
    non_missing = fwd_left[:, :, -1, :]
    has_missing = (non_missing[..., 0] != totals[:, None, 0]) | (non_missing[..., 1] != totals[:, None, 1])

    # backward scan: acc = bins i..K-1 accumulated from the top; the left child (with missing) = parent - acc
    bwd_acc = np.cumsum(part[:, :, ::-1, :], axis=2)[:, :, ::-1, :]
    bwd_left = parent - bwd_acc
    bwd_ok = in_range[None] & has_missing[:, :, None] & (bwd_acc[..., 1] >= mcw) & (bwd_left[..., 1] >= mcw)
    bwd_chg = np.where(bwd_ok, _loss_chg(bwd_left, bwd_acc, root_gain, lam), -np.inf)

    # NeedReplace: infinite (and NaN) gains never replace; a scan keeps the first strictly better candidate
    fwd_chg = np.where(np.isfinite(fwd_chg), fwd_chg, -np.inf)
    bwd_chg = np.where(np.isfinite(bwd_chg), bwd_chg, -np.inf)
    fwd_i = np.argmax(fwd_chg, axis=2)  # first maximum: lowest bin
    fwd_best = np.take_along_axis(fwd_chg, fwd_i[..., None], axis=2)[..., 0]
    bwd_i = n_bins - 1 - np.argmax(bwd_chg[:, :, ::-1], axis=2)  # the backward scan meets the highest bin first
    bwd_best = np.take_along_axis(bwd_chg, bwd_i[..., None], axis=2)[..., 0]
    fwd_best = np.where(fwd_best > 0, fwd_best, 0).astype(np.float32)
    use_bwd = bwd_best > fwd_best  # strictly better than the forward best (or than 0)
    feat_best = np.where(use_bwd, bwd_best, fwd_best).astype(np.float32)

    # across features: largest loss_chg, ties to the lower feature index (argmax returns the first)
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

    valid = found & (loss_chg > RT_EPS) & (left[:, 1] != 0) & (right[:, 1] != 0) & ~(loss_chg < gamma)
    return Splits(loss_chg=np.where(found, loss_chg, np.float32(0)).astype(np.float32),
                  feature=np.where(found, f_best, -1).astype(np.int64),
                  bin=np.where(found, split_bin, 0).astype(np.int64),
                  default_left=backward, left=left, right=right, valid=valid)


def leaf_weights(sums: np.ndarray, params: TreeParams) -> np.ndarray:
    """Leaf values (float64 holding xgboost's float32) for (G, H) sums of shape (..., 2): CalcWeight x eta."""
    params.check()
    sums = np.asarray(sums, np.float64)
    if sums.shape[-1:] != (2,):
        raise ValueError(f"sums must have a last axis of size 2 (G, H), got shape {sums.shape}")
    grad, hess = sums[..., 0], sums[..., 1]
    lam = float(_f32(params.reg_lambda))
    mcw = float(_f32(params.min_child_weight))
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = (-grad / (hess + lam)).astype(np.float32)
    weight = np.where((hess < mcw) | (hess <= 0), np.float32(0), weight).astype(np.float32)
    return (weight * _f32(params.learning_rate)).astype(np.float64)
