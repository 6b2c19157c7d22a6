"""Oblivious XGBoost training on secret shares (XORBoost-style), run identically by both compute parties.

The trainer is a program over `privboost.mpc` (2 semi-honest parties + trusted dealer). It implements XGBoost's
second-order boosting (Chen & Guestrin, KDD 2016) with ``hist`` bins, depth-wise, on shares only, following the
structure of XORBoost (Deforth et al., PoPETs 2022):

* histograms: per-slot sums X^T·[g ⊙ m, h ⊙ m] of the one-hot matrix X (n × F·(B+1): B bins and a missing-value
  slot per feature, `binning`) by either route of `histograms`
  (reused-mask products with X, nothing revealed; or one secret shuffle per feature, revealing per-feature bin
  counts, memory n·F). Only left children are built; right children are parent − left (histogram subtraction), so
  which child is smaller is never needed (it would be data-dependent);
* gains G_L²/(H_L+λ) + G_R²/(H_R+λ) − G²/(H+λ) for every candidate of every node (`candidates`: numerical
  thresholds with missing values right, and left where a column has missing values; categorical one-vs-rest
  splits ``x == c`` going right, as XGBoost's one-hot splits) from local prefix sums, secure division
  (Catrina–Saxena reciprocal), candidates with a child hessian below ``min_child_weight`` masked out;
* the best split per node by a tree of comparisons (argmax → shared one-hot); a node splits only if its gain
  exceeds ``gamma`` (and its parent split), otherwise all its samples stay on the left path;
* routing without revealing any path (`routing`): each sample's slot in the chosen feature is selected by a
  reused-mask product with the shared slot-index matrix, compared with the chosen bin, and the shared
  node-membership vectors are updated with the go-left bits;
* leaf weights −G/(H+λ)·η by secure division, prediction update by shared membership × shared weights; for
  ``binary:logistic`` the gradients from a secure sigmoid, for ``multi:softprob`` from a secure softmax (max by
  argmax, e^-(max − m) by `protocols.fixedpoint.exp_neg`, one reciprocal of the sum in [1, K]) with XGBoost's
  g = p − y, h = 2p(1 − p), and one tree per class per round.

Every message size depends only on public sizes (n, F, B, depth, trees), never on the data.

Leakage: to the compute parties nothing (all opened values are uniformly masked) on the one-hot route, the
per-feature bin occupancy counts on the shuffle route; to the dealer nothing; to the
analyst, the finished trees (split features, thresholds, leaf weights, which nodes are leaves), as XGBoost's model.
Public: n, the number of features and bins, which features are categorical or have missing values at all, the
parameters, and a public bound on |gradient| used to scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from privboost.mpc.protocols.argmax import argmax
from privboost.mpc.protocols.arithmetic import (
    add_public,
    mul,
    scale_fixed,
    truncate,
)
from privboost.mpc.protocols.compare import eq, ltz
from privboost.mpc.protocols.fixedpoint import divide, exp_neg, reciprocal, sigmoid, truncate_exact
from privboost.mpc.ring import DTYPE, SAFE_MAGNITUDE_BITS, encode_fixed, ring_constant
from privboost.mpc.runtime import Party
from privboost.secure.candidates import CandidateLayout
from privboost.secure.histograms import OneHotRoute, ShuffleRoute
from privboost.secure.routing import Router, slot_indices_of_onehot

OBJECTIVES = ("binary:logistic", "reg:squarederror", "multi:softprob")
MAX_CLASSES = 64
_MASKED_GAIN = -(1 << 60)
#: gains closer than this (in units of 2^-f) are ties, resolved to the lowest (feature, bin) as XGBoost does;
#: fixed-point truncation makes equal gains differ by a few units
GAIN_TIE_ULPS = 64  # below any real (scaled) gain, above the argmax padding


class TrainingError(ValueError):
    """Parameters or sizes that secure training cannot handle (says which and what to change)."""


@dataclass(frozen=True)
class SecureParams:
    """XGBoost parameters of a secure training job (names as in ``xgboost.train``)."""

    objective: str = "binary:logistic"
    n_estimators: int = 10
    max_depth: int = 4
    learning_rate: float = 0.3
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1.0
    base_score: float | None = None  # None: 0.5 for logistic and softprob, the (secure) label mean for regression
    gradient_bound: float = 1.0  # public bound on |g| (1 for logistic; for regression from the label range)
    num_class: int = 0  # K for multi:softprob (labels 0..K-1, K trees per round), else 0

    @property
    def outputs(self) -> int:
        """Trees per boosting round: K for multi:softprob, else 1."""
        return self.num_class if self.objective == "multi:softprob" else 1

    @property
    def unit_hessians(self) -> bool:
        """Whether every sample's hessian is exactly 1 (reg:squarederror): H then counts samples."""
        return self.objective == "reg:squarederror"

    @property
    def hessian_max(self) -> float:
        """Bound on one sample's hessian: 1, p(1 − p) <= 1/4, or softmax's 2p(1 − p) <= 1/2."""
        return {"reg:squarederror": 1.0, "binary:logistic": 0.25, "multi:softprob": 0.5}[self.objective]

    def check(self) -> None:
        """Raise `TrainingError` on parameters outside what the trainer supports."""
        if self.objective not in OBJECTIVES:
            raise TrainingError(f"objective {self.objective!r} is not supported; use one of {OBJECTIVES}")
        if not 1 <= self.max_depth <= 10:
            raise TrainingError("max_depth must be between 1 and 10")
        if self.n_estimators < 1 or self.learning_rate <= 0 or self.reg_lambda <= 0:
            raise TrainingError("need n_estimators >= 1, learning_rate > 0 and reg_lambda > 0")
        if self.gamma < 0 or self.min_child_weight < 0 or self.gradient_bound <= 0:
            raise TrainingError("gamma and min_child_weight must be >= 0, gradient_bound > 0")
        if self.objective == "binary:logistic" and not 0 < (0.5 if self.base_score is None else self.base_score) < 1:
            raise TrainingError("base_score must be in (0, 1) for binary:logistic")
        if (self.objective == "multi:softprob") != (self.num_class != 0):
            raise TrainingError("num_class goes with objective multi:softprob (and only with it)")
        if self.objective == "multi:softprob" and not 2 <= self.num_class <= MAX_CLASSES:
            raise TrainingError(f"num_class must be between 2 and {MAX_CLASSES}")


@dataclass
class SharedData:
    """One party's shares of the training data, as the owners dealt them.

    Exactly one of ``onehot`` (for the one-hot route) and ``bins`` (for the shuffle route) is given; see
    `histograms` for what each route costs and reveals. Every feature has ``n_bins`` bins and a missing-value slot
    (`binning`). `train` consumes ``onehot`` (overwrites it in place and drops it) to save memory: pass a copy if
    you still need it.
    """

    onehot: np.ndarray | None  # n × F·(B+1), 0/1 (integers, not fixed point)
    labels: np.ndarray  # n, fixed point (multi:softprob: n × K one-hot, fixed point)
    thresholds: np.ndarray  # F·2·B, float32 bit patterns of the split values (`binning.threshold_bits`)
    n_features: int
    n_bins: int
    bins: np.ndarray | None = None  # n × F slot indices (integers; n_bins = missing)
    categorical: np.ndarray | None = None  # F flags (public); None: no categorical feature
    has_missing: np.ndarray | None = None  # F flags (public): the feature has missing values; None: none has
    n_categories: np.ndarray | None = None  # F counts (public): codes of each categorical feature; None: n_bins

    @property
    def rows(self) -> int:
        """Number of samples."""
        return self.labels.shape[0]

    @property
    def slots(self) -> int:
        """Slots per feature: the bins and the missing slot."""
        return self.n_bins + 1

    def layout(self) -> CandidateLayout:
        """The public split candidates of this data's features."""
        none = np.zeros(self.n_features, bool)
        return CandidateLayout.build(none if self.categorical is None else self.categorical,
                                     none if self.has_missing is None else self.has_missing, self.n_bins,
                                     self.n_categories)


@dataclass
class TreeShares:
    """One party's shares of one finished tree (to be revealed to the analyst only)."""

    split: list[np.ndarray] = field(default_factory=list)  # per level: 0/1 per node
    feature: list[np.ndarray] = field(default_factory=list)  # per level: feature index per node
    threshold: list[np.ndarray] = field(default_factory=list)  # per level: float32 bits per node
    default_left: list[np.ndarray] = field(default_factory=list)  # per level: 0/1 per node (missing values go left)
    leaves: np.ndarray | None = None  # 2^depth leaf weights, fixed point


@dataclass
class TrainResult:
    """One party's shares of the finished model: every tree and the base score (value space)."""

    trees: list[TreeShares]
    base_score: np.ndarray  # shape (1,), fixed point (multi:softprob: the same for every class)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase (setup, histograms, ...)


class _Clock:
    """Accumulates wall time per phase: ``with clock("gains"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._phase = ""
        self._start = 0.0

    def __call__(self, phase: str) -> _Clock:
        self._phase = phase
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + time.perf_counter() - self._start


def _base_margin(party: Party, data: SharedData, params: SecureParams) -> tuple[np.ndarray, np.ndarray]:
    """(shared starting margin per sample, shared base score) — the label mean for regression by default.

    multi:softprob: margin n × K, every class starting at the base score (softmax ignores a common shift, so any
    base score trains the same model; XGBoost stores it as given)."""
    f = party.frac_bits
    n = data.labels.shape[0]
    if params.objective == "multi:softprob":
        score = 0.5 if params.base_score is None else params.base_score
        base = encode_fixed(np.array([score]), f)
        return party.public(np.full((n, params.num_class), base[0], DTYPE)), party.public(base)
    if params.objective == "binary:logistic":
        score = 0.5 if params.base_score is None else params.base_score
        margin = party.public(np.full(n, encode_fixed(math.log(score / (1 - score)), f), DTYPE))
        return margin, party.public(encode_fixed(np.array([score]), f))
    if params.base_score is not None:
        base = party.public(encode_fixed(np.array([params.base_score]), f))
    else:  # mean label: exact sum, times the public 1/n
        total = data.labels.sum(dtype=DTYPE, keepdims=True)
        bits = min(40, 60 - f - max(0, math.ceil(math.log2(params.gradient_bound))))  # sum·2^bits/n < 2^62
        base = scale_fixed(party, total, 1.0 / n, bits=bits)
    return np.broadcast_to(base, (n,)).copy(), base


@dataclass
class Scaling:
    """Public fixed-point scaling chosen from public sizes so that no intermediate value overflows."""

    gain_shift: int  # gains are computed as (G · 2^-shift) · G/(H+λ)
    division_extra_bits: int
    #: every divisor H + λ lies in [2^(low - f), 2^(high - f))
    divisor_bits: tuple[int, int]

    @classmethod
    def choose(cls, n: int, params: SecureParams, frac_bits: int) -> Scaling:
        """Shifts for n samples at ``frac_bits``; raises TrainingError if no choice fits the ring."""
        g_bits = math.log2(max(n * params.gradient_bound, 1.0))  # |G| <= n·bound
        if params.unit_hessians:  # h = 1: |G| <= bound·H, so |G/(H+λ)| <= bound
            q_bits = math.log2(max(params.gradient_bound, 1.0))
        else:  # hessians may be tiny: |G/(H+λ)| <= n·bound/λ
            q_bits = g_bits - min(0.0, math.log2(params.reg_lambda))
        extra = min(8, 62 - 2 * frac_bits - math.ceil(q_bits) - 1)
        if extra < 0:
            raise TrainingError(f"{frac_bits} fractional bits leave no room for {n} samples with gradient bound "
                                f"{params.gradient_bound}; use fewer fractional bits")
        shift = max(0, math.ceil(g_bits + q_bits + 2 * frac_bits - 60))
        # divisors H + λ: hessians are clamped at 0 (`_gradients`) and exceed hessian_max by at most a few units
        low = max(0, math.floor(math.log2(params.reg_lambda)) + frac_bits)
        high = math.ceil(math.log2(n * (params.hessian_max + 2.0 ** (3 - frac_bits)) + params.reg_lambda)) + frac_bits
        return cls(shift, extra, (low, high))


Progress = Callable[[dict], None]


def train(party: Party, data: SharedData, params: SecureParams, progress: Progress | None = None) -> TrainResult:
    """Train ``params.n_estimators`` trees on shares; returns this party's shares of every tree."""
    params.check()
    f = party.frac_bits
    n, m = data.rows, data.n_features * data.slots
    if (data.onehot is None) == (data.bins is None):
        raise TrainingError("give the data either as a one-hot matrix or as bin indices")
    expected = (n, m) if data.onehot is not None else (n, data.n_features)
    given = data.onehot if data.onehot is not None else data.bins
    flags_ok = all(v is None or np.shape(v) == (data.n_features,)
                   for v in (data.categorical, data.has_missing, data.n_categories))
    if given.shape != expected or data.thresholds.shape != (2 * data.n_features * data.n_bins,) or not flags_ok:
        raise TrainingError(f"shared data shapes do not agree: {given.shape} for {n} rows, "
                            f"{data.n_features} features × {data.n_bins} bins (+ a missing slot)")
    if params.objective == "multi:softprob" and data.labels.shape != (n, params.num_class):
        raise TrainingError(f"multi:softprob needs one-hot labels of shape ({n}, {params.num_class}), "
                            f"got {data.labels.shape}")
    scaling = Scaling.choose(n, params, f)
    started = time.perf_counter()
    clock = _Clock()
    layout = data.layout()
    with clock("setup"):
        if data.onehot is not None:
            router = Router(party, slot_indices_of_onehot(data.onehot, data.n_features, data.slots), layout)
            route: OneHotRoute | ShuffleRoute = OneHotRoute(party, data.onehot)
            data.onehot = None  # opened and re-shared: the caller's copy is no longer needed
        else:
            router = Router(party, data.bins, layout)
            route = ShuffleRoute(party, data.bins, data.slots)
    margin, base_score = _base_margin(party, data, params)
    trees: list[TreeShares] = []
    total_trees = params.n_estimators * params.outputs

    def report(level: int) -> None:
        if progress:
            progress({"tree": len(trees) + 1, "trees": total_trees, "level": level + 1, "depth": params.max_depth,
                      "elapsed_s": time.perf_counter() - started, "bytes_sent": party.peer.stats.bytes_sent})

    grower = _TreeGrower(party, route, router, data, params, scaling, layout, clock, report)
    for _round in range(params.n_estimators):
        with clock("gradients"):
            gradients = _gradients(party, margin, data.labels, params)
        for output, (g, h) in enumerate(gradients):  # multi:softprob: one tree per class on this round's gradients
            shares, delta = grower.grow(g, h)
            trees.append(shares)
            if margin.ndim == 2:
                margin[:, output] += delta
            else:
                margin = margin + delta
    return TrainResult(trees, base_score, clock.seconds)


def _gradients(party: Party, margin: np.ndarray, labels: np.ndarray,
               params: SecureParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shares of (g, h) per output: one pair, or one per class for multi:softprob (XGBoost's formulas)."""
    f = party.frac_bits
    one = ring_constant(1 << f)
    if params.unit_hessians:
        return [(margin - labels, party.public(np.full(margin.shape[0], one, DTYPE)))]
    p = sigmoid(party, margin) if params.objective == "binary:logistic" else _softmax(party, margin)
    h = truncate(party, mul(party, p, add_public(party, -p, one)))
    # p may exceed 1 by a unit of rounding, making p(1 − p) a unit below 0: clamp at 0, as XGBoost clamps at 1e-16
    h = mul(party, h, add_public(party, -ltz(party, h), 1))
    g = p - labels
    if params.objective == "binary:logistic":
        return [(g, h)]
    h = h << np.uint64(1)  # 2·p·(1 − p), as XGBoost's softmax
    return [(np.ascontiguousarray(g[:, k]), np.ascontiguousarray(h[:, k])) for k in range(margin.shape[1])]


def _softmax(party: Party, margin: np.ndarray) -> np.ndarray:
    """Shares of softmax over the last axis: e^-(max − m_k) / sum_j e^-(max − m_j), the sum in [1, K]."""
    f = party.frac_bits
    top, _ = argmax(party, margin)
    powers = exp_neg(party, top[:, None] - margin)  # the largest is e^0 = 1, so the sum is at least 1
    total = powers.sum(axis=1, dtype=DTYPE)
    inverse = reciprocal(party, total, min_bits=f - 1, max_bits=f + math.ceil(math.log2(margin.shape[1])) + 2)
    return truncate(party, mul(party, powers, np.broadcast_to(inverse[:, None], powers.shape)))


class _TreeGrower:
    """Grows one tree on shares for given gradients: histograms, gains, routing per level, then leaves."""

    def __init__(self, party: Party, route, router: Router, data: SharedData, params: SecureParams,
                 scaling: Scaling, layout: CandidateLayout, clock: _Clock, report: Callable[[int], None]) -> None:
        self.party, self.route, self.router, self.data = party, route, router, data
        self.params, self.scaling, self.layout, self.clock, self.report = params, scaling, layout, clock, report
        self.packing = HistogramPacking.choose(data.rows, params, party.frac_bits)

    def _histogram_widths(self) -> list[int]:
        """Columns of each level's histogram operand (`_level_histograms`): the root, then the left child of every
        node of the level above; one packed word per entry or a gradient and a hessian column each."""
        left_children = [1] + [2 ** (level - 1) for level in range(1, self.params.max_depth)]
        return [k if self.packing is not None else 2 * k for k in left_children]

    def grow(self, g: np.ndarray, h: np.ndarray) -> tuple[TreeShares, np.ndarray]:
        """(this party's shares of the tree, shares of each sample's output of the tree)."""
        party, params, scaling, clock, data = self.party, self.params, self.scaling, self.clock, self.data
        f, n = party.frac_bits, data.rows
        shares = TreeShares()
        membership = party.public(np.ones((n, 1), DTYPE))
        parent_ok = party.public(np.ones(1, DTYPE))
        hist_g = hist_h = None
        with clock("histograms"):
            self.route.prepare(party, self._histogram_widths())
        for level in range(params.max_depth):
            with clock("histograms"):
                hist_g, hist_h = _level_histograms(party, self.route, g, h, membership, hist_g, hist_h, data,
                                                   self.packing)
            with clock("gains_argmax"):
                ok, selection, feature, threshold, default_left = _best_splits(party, hist_g, hist_h, parent_ok, data,
                                                                               params, scaling, self.layout)
            shares.split.append(ok)
            shares.feature.append(feature)
            shares.threshold.append(threshold)
            shares.default_left.append(default_left)
            with clock("routing"):
                go_left = self.router.go_left(party, selection, ok)
                left = mul(party, membership, go_left)
                membership = np.stack([left, membership - left], axis=2).reshape(n, 2 * selection.shape[0])
            parent_ok = np.repeat(ok, 2)
            self.report(level)
        with clock("leaves"):
            leaf_g, leaf_h = np.split(_weighted_gradients(party, membership, g, h).sum(axis=0, dtype=DTYPE), 2)
            weight = divide(party, -leaf_g, add_public(party, leaf_h, encode_fixed(params.reg_lambda, f)),
                            extra_bits=scaling.division_extra_bits, min_bits=scaling.divisor_bits[0],
                            max_bits=scaling.divisor_bits[1])
            shares.leaves = truncate(party, weight * encode_fixed(params.learning_rate, f))
            delta = mul(party, membership, np.broadcast_to(shares.leaves, membership.shape)).sum(axis=1, dtype=DTYPE)
        return shares, delta


def _weighted_gradients(party: Party, members: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Shares of [g ⊙ m_j ..., h ⊙ m_j ...] (n × 2k) for membership columns m_j (0/1, so no truncation)."""
    k = members.shape[1]
    return mul(party, np.concatenate([members, members], axis=1),
               np.concatenate([np.repeat(g[:, None], k, 1), np.repeat(h[:, None], k, 1)], axis=1))


@dataclass(frozen=True)
class HistogramPacking:
    """Both histogram sums in one ring word per (sample, node), which halves the histogram work and traffic.

    A word is (g·m)·2^shift + (h·m): the gradient in the high field, the hessian in the low ``shift`` bits (signed,
    so a hessian rounded a unit below 0 cannot borrow from the gradient). Sums over any set of samples keep the
    two fields apart while |H| < 2^(shift-1) and |G|·2^shift < 2^61; after summing, an exact truncation
    (`protocols.fixedpoint.truncate_exact`) splits them with one comparison per histogram entry. For
    ``reg:squarederror`` h = 1, so the low field counts the samples and is scaled to fixed point afterwards.
    Where the gradient field is too wide (many samples, large labels), its lowest ``drop`` bits are truncated
    before packing (each sample's g·m off by less than 2^(drop-f), far below the gradients' scale: allowed only
    while 2^(drop-f) <= 2^-12 of the gradient bound). Chosen from public sizes only; None where the fields do not
    fit (then the sums travel as two columns).
    """

    shift: int
    counts: bool  # the low field holds m, not h·m (h = 1 exactly)
    drop: int = 0  # low gradient bits truncated before packing

    @classmethod
    def choose(cls, n: int, params: SecureParams, frac_bits: int) -> HistogramPacking | None:
        """The packing for n samples, or None if the two fields do not fit in the ring's safe range."""
        counts = params.unit_hessians
        h_max = 1.0 if counts else params.hessian_max * 2.0**frac_bits  # per sample, in the low field's units
        shift = math.ceil(math.log2(n * h_max + 2)) + 1  # |H| < 2^(shift-1), a unit of rounding to spare
        g_bits = math.ceil(math.log2(n * params.gradient_bound * 2.0**frac_bits + 1))
        drop = max(0, g_bits + shift - (SAFE_MAGNITUDE_BITS - 1))
        if drop > frac_bits + math.log2(params.gradient_bound) - 12:
            return None
        return cls(shift, counts, drop)

    def pack(self, party: Party, gm: np.ndarray, hm: np.ndarray) -> np.ndarray:
        """One word per entry from shares of g·m and of h·m (of m itself when ``counts``)."""
        if self.drop:
            gm = truncate(party, gm, self.drop)
        return (gm << np.uint64(self.shift)) + hm

    def unpack(self, party: Party, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shares of (G, H) in fixed point from shares of summed words."""
        gradient = truncate_exact(party, add_public(party, sums, 1 << (self.shift - 1)), self.shift)
        hessian = sums - (gradient << np.uint64(self.shift))
        return gradient << np.uint64(self.drop), (hessian << np.uint64(party.frac_bits)) if self.counts else hessian


def _level_histograms(party: Party, route, g: np.ndarray, h: np.ndarray, membership: np.ndarray,
                      parent_g: np.ndarray | None, parent_h: np.ndarray | None, data: SharedData,
                      packing: HistogramPacking | None) -> tuple[np.ndarray, np.ndarray]:
    """(G, H) histograms (nodes × F × slots) of this level's nodes: left children built, right = parent − left."""
    shape = (data.n_features, data.slots)
    members = party.public(np.ones((data.rows, 1), DTYPE)) if parent_g is None else membership[:, 0::2]
    k = members.shape[1]
    if packing is None:
        hist = route.histograms(party, _weighted_gradients(party, members, g, h))  # (F·S) × 2k
        built_g, built_h = hist[:, :k], hist[:, k:]
    else:
        if packing.counts:  # h = 1: the hessian column is the membership itself
            gm, hm = mul(party, members, np.broadcast_to(g[:, None], members.shape)), members
        else:
            weighted = _weighted_gradients(party, members, g, h)  # both products in one round
            gm, hm = weighted[:, :k], weighted[:, k:]
        built_g, built_h = packing.unpack(party, route.histograms(party, packing.pack(party, gm, hm)))
    left_g, left_h = built_g.T.reshape(k, *shape), built_h.T.reshape(k, *shape)
    if parent_g is None:
        return left_g, left_h
    out_g = np.stack([left_g, parent_g - left_g], axis=1).reshape(2 * k, *shape)
    out_h = np.stack([left_h, parent_h - left_h], axis=1).reshape(2 * k, *shape)
    return out_g, out_h


def _best_splits(party: Party, hist_g: np.ndarray, hist_h: np.ndarray, parent_ok: np.ndarray, data: SharedData,
                 params: SecureParams, scaling: Scaling, layout: CandidateLayout):
    """Per node: split flag, one-hot of the best candidate, its feature index, threshold bits and default_left."""
    f = party.frac_bits
    nodes = hist_g.shape[0]
    left_g, left_h = layout.left_sums(hist_g), layout.left_sums(hist_h)  # (nodes, C)
    total_g = hist_g[:, 0].sum(axis=-1, dtype=DTYPE)
    total_h = hist_h[:, 0].sum(axis=-1, dtype=DTYPE)
    right_g, right_h = total_g[:, None] - left_g, total_h[:, None] - left_h
    numerators = np.concatenate([left_g.ravel(), right_g.ravel(), total_g])
    hessians = np.concatenate([left_h.ravel(), right_h.ravel(), total_h])
    lam = encode_fixed(params.reg_lambda, f)
    quotients = divide(party, numerators, add_public(party, hessians, lam), extra_bits=scaling.division_extra_bits,
                       min_bits=scaling.divisor_bits[0], max_bits=scaling.divisor_bits[1])
    scaled = truncate(party, numerators, scaling.gain_shift) if scaling.gain_shift else numerators
    terms = truncate(party, mul(party, scaled, quotients))
    size = left_g.size
    gain = (terms[:size] + terms[size:2 * size]).reshape(left_g.shape) - terms[2 * size:, None]
    # a child lighter than min_child_weight (or empty) makes a candidate invalid
    floor = max(int(encode_fixed(params.min_child_weight, f)), 1)
    light = ltz(party, add_public(party, np.concatenate([left_h.ravel(), right_h.ravel()]), -floor))
    # a slot whose g and h sums are both 0 adds nothing, and a category whose sums equal a lower category's gives
    # the same gain: candidates that repeat an earlier one exactly are marked invalid (XGBoost keeps the first of
    # equal gains) rather than left to fixed-point noise; candidates that need missing values where the node has
    # none are skipped, as XGBoost skips them
    empty, duplicate = _repeated_sums(party, hist_g, hist_h, layout, params.unit_hessians)
    checks = mul(party, np.concatenate([add_public(party, -light[:size], 1),
                                        add_public(party, -layout.repeats(empty, duplicate).ravel(), 1)]),
                 np.concatenate([add_public(party, -light[size:], 1),
                                 add_public(party, -layout.missing_absent(empty).ravel(), 1)]))
    valid = mul(party, checks[:size], checks[size:])
    masked = add_public(party, mul(party, valid, add_public(party, gain.ravel(), -_MASKED_GAIN)), _MASKED_GAIN)
    best, selection = argmax(party, masked.reshape(nodes, -1), GAIN_TIE_ULPS)
    threshold_gain = encode_fixed(max(params.gamma, 1e-6) * 2.0 ** -scaling.gain_shift, f)
    above = ltz(party, add_public(party, -best, threshold_gain))  # [best > gamma]
    ok = mul(party, above, parent_ok)
    candidate_thresholds = data.thresholds[layout.threshold_index]
    picked = mul(party, selection, np.broadcast_to(candidate_thresholds, selection.shape))
    feature = (selection * layout.feature.astype(DTYPE)).sum(axis=1, dtype=DTYPE)
    default_left = (selection * layout.default_left).sum(axis=1, dtype=DTYPE)
    return ok, selection, feature, picked.sum(axis=1, dtype=DTYPE), default_left


def _repeated_sums(party: Party, hist_g: np.ndarray, hist_h: np.ndarray, layout: CandidateLayout,
                   unit_hessians: bool) -> tuple[np.ndarray, np.ndarray]:
    """Shares (0/1) of (slot has zero sums, category has the sums of a lower category), both (nodes, F, slots).

    With ``unit_hessians`` (h = 1 for every sample, reg:squarederror) a slot is empty iff its hessian sum is 0,
    so its gradient sum need not be tested.
    """
    diff_g, diff_h = layout.pair_differences(hist_g), layout.pair_differences(hist_h)
    size, pairs = hist_g.size, diff_g.size
    tested_g = diff_g.ravel() if unit_hessians else np.concatenate([hist_g.ravel(), diff_g.ravel()])
    tested_h = np.concatenate([hist_h.ravel(), diff_h.ravel()])
    zero = eq(party, np.concatenate([tested_g, tested_h]), np.zeros(tested_g.size + tested_h.size, DTYPE))
    zero_g, zero_h = zero[:tested_g.size], zero[tested_g.size:]
    if unit_hessians:  # empty iff the hessian sum is 0; only the pairs need both sums equal
        both = np.concatenate([zero_h[:size], mul(party, zero_g, zero_h[size:]) if pairs else zero_g])
    else:
        both = mul(party, zero_g, zero_h)
    empty, same = both[:size].reshape(hist_g.shape), both[size:]
    duplicate = np.zeros((hist_g.shape[0], hist_g[0].size), DTYPE)
    if pairs:
        counts = layout.duplicate_counts(same.reshape(diff_g.shape))
        duplicate[:, layout.duplicate_cells] = add_public(party, -eq(party, counts, np.zeros_like(counts)), 1)
    return empty, duplicate.reshape(hist_g.shape)

