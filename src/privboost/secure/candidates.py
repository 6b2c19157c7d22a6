"""The split candidates secure training evaluates per node, in XGBoost's order (`routing` sends samples by them).

A candidate is a (feature, kind, bin) triple; its left child's sums, its validity rules and the chosen feature's
one-hot are all *linear* in the shared histograms or in the shared one-hot of the chosen candidate, so this module
only does local arithmetic on shares, with public index arrays. Kinds (rules of xgboost 3.2's
``HistEvaluator::EnumerateSplit`` / ``EnumerateOneHot``, src/tree/hist/evaluate_splits.h):

* ``FORWARD`` t (numerical): bins <= t left, missing values right (default right);
* ``BACKWARD`` t (numerical, columns with missing values): bins < t and missing values left (default left);
  evaluated only where the node has missing values in that feature, as XGBoost does;
* ``CATEGORY`` c (categorical): category c right, every other category and missing values left (default left);
* ``CATEGORY_AND_MISSING`` c (categorical with missing values): category c and missing values right.

Categorical features have public category counts K (codes 0..K-1), so only those K categories are candidates.
Two categories with exactly the same sums in a node give exactly equal gains (common in small categories); XGBoost
keeps the lower code, and fixed-point noise must not decide instead, so every pair of categories of a feature is
compared (K(K-1)/2 equality tests per node) and a category equal to a lower one is marked a repeat.

Order within a feature is XGBoost's evaluation order (forward bins ascending, then backward bins descending; for a
categorical feature, per category the missing-left candidate first), features in index order, so "the first of
equal gains" — XGBoost's tie rule — is "the lowest candidate index".

Leakage: none; the layout is public (it depends only on which columns are categorical, their category counts, and
which have missing values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privboost.mpc.ring import DTYPE

FORWARD, BACKWARD, CATEGORY, CATEGORY_AND_MISSING = range(4)
_KINDS = 4
_DEFAULT_LEFT = {FORWARD: 0, BACKWARD: 1, CATEGORY: 1, CATEGORY_AND_MISSING: 0}


@dataclass(frozen=True)
class CandidateLayout:
    """Public description of every split candidate of a node (arrays of length C, one entry per candidate).

    Histograms come as (nodes, F, max_bin + 1) with the missing slot last (`binning`).
    """

    n_features: int
    max_bin: int
    feature: np.ndarray  # feature index
    kind: np.ndarray  # FORWARD, BACKWARD, CATEGORY or CATEGORY_AND_MISSING
    bin: np.ndarray  # t or c
    categorical: np.ndarray  # per feature (F,), bool
    pair_low: np.ndarray  # pairs of categories of one feature, as indices into a (F, max_bin + 1) array:
    pair_high: np.ndarray  # the lower and the higher code

    @classmethod
    def build(cls, categorical: np.ndarray, has_missing: np.ndarray, max_bin: int,
              n_categories: np.ndarray | None = None) -> CandidateLayout:
        """The layout for features flagged ``categorical`` / ``has_missing`` (bool arrays of length F) with
        ``n_categories`` codes per categorical feature (default ``max_bin``)."""
        categorical, has_missing = np.asarray(categorical, bool), np.asarray(has_missing, bool)
        if categorical.shape != has_missing.shape or categorical.ndim != 1:
            raise ValueError("need one categorical and one has-missing flag per feature")
        counts = np.full(categorical.size, max_bin) if n_categories is None else np.asarray(n_categories)
        if counts.shape != categorical.shape or np.any(counts[categorical] < 1) or np.any(counts > max_bin):
            raise ValueError(f"need 1..{max_bin} categories per categorical feature")
        ascending = np.arange(max_bin)
        features, kinds, bins, low, high = [], [], [], [], []
        for f, (is_cat, missing) in enumerate(zip(categorical, has_missing, strict=True)):
            if is_cat:
                codes = np.arange(counts[f])
                lo, hi = np.triu_indices(codes.size, k=1)
                low.append(f * (max_bin + 1) + lo)
                high.append(f * (max_bin + 1) + hi)
            if is_cat and missing:
                kind = np.tile([CATEGORY, CATEGORY_AND_MISSING], codes.size)
                where = np.repeat(codes, 2)
            elif is_cat:
                kind, where = np.full(codes.size, CATEGORY), codes
            elif missing:
                kind = np.repeat([FORWARD, BACKWARD], max_bin)
                where = np.concatenate([ascending, ascending[::-1]])
            else:
                kind, where = np.full(max_bin, FORWARD), ascending
            features.append(np.full(kind.size, f))
            kinds.append(kind)
            bins.append(where)
        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

        return cls(categorical.size, max_bin, joined(features), joined(kinds), joined(bins), categorical,
                   joined(low), joined(high))

    @property
    def size(self) -> int:
        """Number of candidates per node."""
        return self.feature.size

    @property
    def _stat_index(self) -> np.ndarray:
        """Index of each candidate in a (F, kinds, max_bin) array."""
        return (self.feature * _KINDS + self.kind) * self.max_bin + self.bin

    @property
    def default_left(self) -> np.ndarray:
        """0/1 per candidate (uint64): where missing values go."""
        return np.array([_DEFAULT_LEFT[k] for k in range(_KINDS)], DTYPE)[self.kind]

    @property
    def needs_missing(self) -> np.ndarray:
        """0/1 per candidate (uint64): valid only where the node has missing values in its feature."""
        return ((self.kind == BACKWARD) | (self.kind == CATEGORY_AND_MISSING)).astype(DTYPE)

    @property
    def threshold_index(self) -> np.ndarray:
        """Index of each candidate's split value in the (F, 2, max_bin) table of `binning.threshold_bits`."""
        scan = (self.kind == BACKWARD).astype(np.int64)
        return (self.feature * 2 + scan) * self.max_bin + self.bin

    def left_sums(self, hist: np.ndarray) -> np.ndarray:
        """Shares of each candidate's left-child sum, (nodes, C), from histogram shares (nodes, F, max_bin + 1)."""
        bins, missing = hist[..., : self.max_bin], hist[..., self.max_bin, None]
        total = hist[:, 0].sum(axis=-1, dtype=DTYPE)[:, None, None]  # every feature's slots cover the node
        cumulative = np.cumsum(bins, axis=-1, dtype=DTYPE)
        rest = total - bins
        stats = np.stack([cumulative, cumulative - bins + missing, rest, rest - missing], axis=2)
        return stats.reshape(hist.shape[0], -1)[:, self._stat_index]

    def pair_differences(self, hist: np.ndarray) -> np.ndarray:
        """Shares of (higher − lower category's sum) for every pair of categories, (nodes, pairs)."""
        flat = hist.reshape(hist.shape[0], -1)
        return flat[:, self.pair_high] - flat[:, self.pair_low]

    @property
    def duplicate_cells(self) -> np.ndarray:
        """The (F, max_bin + 1) cells, flattened, of categories that have a lower category to be compared with."""
        return np.unique(self.pair_high)

    def duplicate_counts(self, same: np.ndarray) -> np.ndarray:
        """Shares of "how many lower categories have exactly this category's sums" per `duplicate_cells` entry,
        (nodes, cells), from ``same`` (nodes, pairs): 1 where a pair's sums are equal."""
        out = np.zeros((self.duplicate_cells.size, same.shape[0]), DTYPE)
        np.add.at(out, np.searchsorted(self.duplicate_cells, self.pair_high), same.T)
        return out.T

    def repeats(self, empty: np.ndarray, duplicate: np.ndarray) -> np.ndarray:
        """Shares (0/1) of "this candidate repeats an earlier one of its feature", (nodes, C).

        ``empty`` (nodes, F, max_bin + 1) is 1 where a slot's gradient and hessian sums are both 0. A forward
        candidate whose bin is empty equals the one before it, a backward candidate whose bin is empty the one
        scanned before it (the next bin up). ``duplicate`` (same shape) is 1 for a category whose sums equal a
        lower category's. XGBoost keeps the earlier candidate, so these are marked rather than left to
        fixed-point noise. An empty category never makes a valid missing-left candidate (its right is empty).
        """
        first = (self.kind == FORWARD) & (self.bin == 0)
        scanned = (self.kind == FORWARD) | (self.kind == BACKWARD)
        index = self.feature * (self.max_bin + 1) + self.bin
        out = empty.reshape(empty.shape[0], -1)[:, index] * (scanned & ~first).astype(DTYPE)
        return out + duplicate.reshape(duplicate.shape[0], -1)[:, index] * (~scanned).astype(DTYPE)

    def missing_absent(self, empty: np.ndarray) -> np.ndarray:
        """Shares (0/1) of "this candidate needs missing values its node does not have", (nodes, C)."""
        return empty[:, self.feature, self.max_bin] * self.needs_missing

    def feature_onehot(self, selection: np.ndarray) -> np.ndarray:
        """Shares of the chosen feature's one-hot, (nodes, F), from the chosen candidate's one-hot (nodes, C)."""
        starts = np.flatnonzero(np.r_[True, self.feature[1:] != self.feature[:-1]])
        return np.add.reduceat(selection, starts, axis=1, dtype=DTYPE)
