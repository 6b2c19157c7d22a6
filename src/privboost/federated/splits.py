"""XGBoost's ``hist`` split finding and leaf weights on (aggregated) gradient histograms, bit for bit.

The rules below are those of xgboost 3.2 (C++ sources named per rule); with the same histograms and node sums in,
the same splits, gains and leaf values come out.

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

Speed: split finding is one compiled numba kernel over (node, feature) pairs, each scanning its
feature's bins once forward and once backward and writing only its own best candidate (no histogram-sized
temporaries); the reduction across features is numpy on (nodes, features) arrays. It runs in one thread: a
level's scan takes a millisecond or two, and the aggregator that runs it shares the machine with sites, whose
cores OpenMP's worker threads would otherwise spin on between scans.

tests/test_federated_splits.py grows trees with these functions and finds them identical to
``xgboost.train(tree_method="hist", nthread=1)`` on the same bins: splits, default directions, leaf values; and
checks `best_splits` bit for bit against the former vectorised numpy implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

#: xgboost's kRtEps (include/xgboost/base.h): a split must gain more than this
RT_EPS = np.float32(1e-6)


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


@njit(cache=True, error_model="numpy")
def _gain(grad, hess, lam):  # pragma: no cover - compiled
    """CalcGainGivenWeight without constraints: float32(G^2) / float32(H + lambda), 0 if H <= 0."""
    if hess <= 0:
        return np.float32(0)
    return np.float32(np.float32(grad * grad) / np.float32(hess + lam))


@njit(cache=True, boundscheck=False, error_model="numpy")
def _scan(hist, totals, k, lam, mcw, loss, split_bin, backward, sums):  # pragma: no cover - compiled
    """Best split per (node, feature): loss (0 if none), bin, backward (default_left), sums[..., side, (G, H)]."""
    n_nodes, n_features = loss.shape
    n_bins = hist.shape[2] - 1
    for job in range(n_nodes * n_features):
        node, f = job // n_features, job % n_features
        pg, ph = totals[node, 0], totals[node, 1]
        root = _gain(pg, ph, lam)
        kf = k[f]
        best, best_bin, best_bwd = np.float32(0), 0, False
        best_lg = best_lh = best_rg = best_rh = 0.0
        # forward scan: left = bins 0..i summed in bin order starting from bin 0's value, missing values right;
        # the first strictly better candidate wins, i.e. the lowest bin of the maximum
        lg, lh = hist[node, f, 0, 0], hist[node, f, 0, 1]
        for i in range(kf):
            if i > 0:
                lg += hist[node, f, i, 0]
                lh += hist[node, f, i, 1]
            rg, rh = pg - lg, ph - lh
            if lh >= mcw and rh >= mcw:
                chg = np.float32(np.float32(_gain(lg, lh, lam) + _gain(rg, rh, lam)) - root)
                if chg > best and chg != np.inf:  # NeedReplace: infinite and NaN gains never replace
                    best, best_bin, best_lg, best_lh, best_rg, best_rh = chg, i, lg, lh, rg, rh
        # backward scan, only if the feature has missing values (non-missing sum != node sum, exactly): right =
        # bins i..K-1 accumulated from the top, left = parent - right with the missing values; it meets the
        # highest bin first and replaces the forward best (or 0) only if strictly better
        if lg != pg or lh != ph:
            ag, ah = hist[node, f, kf - 1, 0], hist[node, f, kf - 1, 1]
            if kf < n_bins:  # the bins past K-1 count as 0.0 in this sum: 0.0 + x turns -0.0 into 0.0
                ag, ah = 0.0 + ag, 0.0 + ah
            for i in range(kf - 1, -1, -1):
                if i < kf - 1:
                    ag += hist[node, f, i, 0]
                    ah += hist[node, f, i, 1]
                cg, ch = pg - ag, ph - ah
                if ah >= mcw and ch >= mcw:
                    chg = np.float32(np.float32(_gain(cg, ch, lam) + _gain(ag, ah, lam)) - root)
                    if chg > best and chg != np.inf:
                        best, best_bin, best_bwd = chg, i - 1, True
                        best_lg, best_lh, best_rg, best_rh = cg, ch, ag, ah
        loss[node, f], split_bin[node, f], backward[node, f] = best, best_bin, best_bwd
        sums[node, f, 0, 0], sums[node, f, 0, 1] = best_lg, best_lh
        sums[node, f, 1, 0], sums[node, f, 1, 1] = best_rg, best_rh


def best_splits(hist: np.ndarray, totals: np.ndarray, n_bins_per_feature: np.ndarray, params: TreeParams) -> Splits:
    """XGBoost's best split for every node from histograms (nodes, F, B+1, 2) and node sums ``totals`` (nodes, 2).

    Bin B of ``hist`` holds missing values (it is not read: missing = totals - non-missing, as in xgboost);
    feature f uses bins 0..n_bins_per_feature[f]-1.
    """
    params.check()
    hist = np.ascontiguousarray(hist, np.float64)
    totals = np.ascontiguousarray(totals, np.float64)
    if hist.ndim != 4 or hist.shape[-1] != 2 or hist.shape[2] < 2 or hist.shape[1] < 1:
        raise ValueError(f"hist must have shape (nodes, features, bins + 1, 2), got {hist.shape}")
    n_nodes, n_features, width, _ = hist.shape
    n_bins = width - 1
    if totals.shape != (n_nodes, 2):
        raise ValueError(f"totals must have shape ({n_nodes}, 2), got {totals.shape}")
    k = np.ascontiguousarray(np.asarray(n_bins_per_feature, np.int64).ravel())
    if k.shape != (n_features,) or (k.size and (k.min() < 1 or k.max() > n_bins)):
        raise ValueError(f"n_bins_per_feature must be {n_features} integers in [1, {n_bins}]")
    lam, mcw, gamma = float(_f32(params.reg_lambda)), float(_f32(params.min_child_weight)), _f32(params.gamma)

    loss = np.empty((n_nodes, n_features), np.float32)
    split_bin = np.empty((n_nodes, n_features), np.int64)
    backward = np.empty((n_nodes, n_features), np.bool_)
    sums = np.empty((n_nodes, n_features, 2, 2), np.float64)
    _scan(hist, totals, k, lam, mcw, loss, split_bin, backward, sums)

    # across features: largest loss_chg, ties to the lower feature index (argmax returns the first); a node
    # without any candidate has loss 0 everywhere, so feature 0's zeros (bin 0, forward, zero sums) are its fields
    nodes = np.arange(n_nodes)
    f_best = np.argmax(loss, axis=1)
    loss_chg = loss[nodes, f_best]
    found = loss_chg > 0
    left, right = sums[nodes, f_best, 0], sums[nodes, f_best, 1]
    valid = found & (loss_chg > RT_EPS) & (left[:, 1] != 0) & (right[:, 1] != 0) & ~(loss_chg < gamma)
    return Splits(loss_chg=loss_chg, feature=np.where(found, f_best, -1).astype(np.int64),
                  bin=split_bin[nodes, f_best], default_left=backward[nodes, f_best], left=left, right=right,
                  valid=valid)


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
