"""Quantile bins for secure training, identical to XGBoost's ``hist`` bins, with a slot for missing values.

An owner bins the columns it holds locally. Cut points come from XGBoost's own quantile sketch
(``QuantileDMatrix(...).get_quantile_cut()``), so with the same ``max_bin`` every sample falls in the bin
``tree_method="hist"`` would give it and every candidate threshold is one XGBoost would try.

Numerical columns: cuts c_0 < c_1 < ... < c_{K-1} (XGBoost's c_0 lies below the column's minimum and c_{K-1}
above its maximum) give K-1 bins; x falls in bin ``#{j : c_j <= x} - 1`` (clipped to [0, K-2]). Candidate split t
sends bins <= t left (``x < c_{t+1}``) and the missing values right (XGBoost's forward scan); for a column with
missing values candidate t may also send bins < t and the missing values left (``x < c_t``, XGBoost's backward
scan, default left).

Categorical columns hold non-negative integer codes; XGBoost's cuts for them are 0, 1, ..., max code, so code c is
bin c. Splits are one category against the rest: ``x == c`` goes right, as in XGBoost's one-hot splits
(``max_cat_to_onehot`` above the number of categories).

Every column is padded to ``max_bin`` bins plus one *missing slot* (index ``max_bin``) that holds the samples whose
value is missing (NaN), so every column has ``max_bin + 1`` slots; padded candidates never separate any sample.

Leakage: none to the compute parties (bins and cut points are secret-shared); which columns are categorical and
how many category codes each has, and whether a column has missing values at all, are public metadata of the job.
The analyst learns the cut points and categories the finished trees use, as XGBoost's own model would show them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np


class BinningError(ValueError):
    """A column cannot be binned (wrong type, bad category codes, no rows)."""


@dataclass
class BinnedColumns:
    """An owner's columns as bin indices (n × k, int32; ``max_bin`` marks a missing value) with their cut points.

    ``categorical[j]`` says whether column j is categorical; ``has_missing[j]`` whether it has any missing value.
    """

    names: list[str]
    bins: np.ndarray
    cuts: list[np.ndarray]
    categorical: np.ndarray
    has_missing: np.ndarray

    @property
    def n_categories(self) -> np.ndarray:
        """Codes per column (K for a categorical column with codes 0..K-1, 0 for a numerical one)."""
        return np.array([c.size if cat else 0 for c, cat in zip(self.cuts, self.categorical, strict=True)], np.int64)


def slots(max_bin: int) -> int:
    """Slots per column in the shared layout: ``max_bin`` bins and the missing slot."""
    return max_bin + 1


def _check_values(values: np.ndarray, names: list[str], categorical: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise BinningError("need a non-empty 2-D table of numbers to bin")
    if np.isinf(x).any():
        bad = [names[j] for j in np.flatnonzero(np.isinf(x).any(axis=0))]
        raise BinningError(f"infinite values in {bad}: XGBoost cannot bin them")
    for j in np.flatnonzero(categorical):
        codes = x[:, j][~np.isnan(x[:, j])]
        if codes.size and (codes.min() < 0 or not np.array_equal(codes, np.round(codes))):
            raise BinningError(f"categorical column {names[j]!r} must hold non-negative integer category codes")
    return x


def categorical_mask(names: list[str], categorical: Collection[str]) -> np.ndarray:
    """Boolean mask over ``names``: which columns are declared categorical."""
    wanted = set(categorical)
    return np.array([name in wanted for name in names], dtype=bool)


def bin_columns(values: np.ndarray, names: list[str], max_bin: int,
                categorical: Collection[str] = ()) -> BinnedColumns:
    """Bin the columns of ``values`` (n × k) with XGBoost's quantile sketch at ``max_bin`` bins.

    Columns named in ``categorical`` hold integer category codes (at most ``max_bin`` codes: 0 .. max_bin-1).
    """
    import xgboost as xgb

    is_cat = categorical_mask(names, categorical)
    x = _check_values(values, names, is_cat)
    if not 2 <= max_bin <= 256:
        raise BinningError("max_bin must be between 2 and 256")
    types = ["c" if c else "q" for c in is_cat]
    matrix = xgb.QuantileDMatrix(x, max_bin=max_bin, feature_types=types, enable_categorical=bool(is_cat.any()))
    indptr, cut_values = matrix.get_quantile_cut()
    cuts = [np.asarray(cut_values[indptr[j]:indptr[j + 1]], dtype=np.float32) for j in range(x.shape[1])]
    return bin_with_cuts(x, names, cuts, max_bin, categorical)


def _bin_count(cuts: np.ndarray, is_categorical: bool) -> int:
    return cuts.size if is_categorical else cuts.size - 1


def bin_with_cuts(values: np.ndarray, names: list[str], cuts: list[np.ndarray], max_bin: int,
                  categorical: Collection[str] = ()) -> BinnedColumns:
    """Bin the columns of ``values`` with given cut points (one ascending float32 array per column).

    For a categorical column the cut points are its category codes 0, 1, ..., K-1.
    """
    is_cat = categorical_mask(names, categorical)
    x = _check_values(values, names, is_cat)
    if len(cuts) != x.shape[1]:
        raise BinningError(f"{len(cuts)} columns of cut points for {x.shape[1]} columns")
    bins = np.empty(x.shape, dtype=np.int32)
    missing = np.isnan(x)
    for j, c in enumerate(cuts):
        count = _bin_count(c, is_cat[j])
        if count > max_bin:
            what = "category codes" if is_cat[j] else "bins"
            raise BinningError(f"column {names[j]!r} has {count} {what}, more than max_bin = {max_bin}")
        if is_cat[j]:
            codes = np.where(missing[:, j], 0, x[:, j]).astype(np.int64)
            if count == 0 or codes.max() >= count:
                raise BinningError(f"categorical column {names[j]!r} has a code outside its categories 0..{count - 1}")
            bins[:, j] = codes
        else:
            if c.size < 2:
                raise BinningError(f"column {names[j]!r} needs at least two cut points")
            bins[:, j] = np.clip(np.searchsorted(c, x[:, j], side="right") - 1, 0, c.size - 2)
    bins[missing] = max_bin
    return BinnedColumns(list(names), bins, [np.asarray(c, np.float32) for c in cuts], is_cat, missing.any(axis=0))


def one_hot(bins: np.ndarray, n_slots: int) -> np.ndarray:
    """The n × (k·n_slots) 0/1 uint64 matrix with a one at (i, j·n_slots + bins[i, j])."""
    n, k = bins.shape
    out = np.zeros((n, k * n_slots), dtype=np.uint64)
    out[np.arange(n)[:, None], np.arange(k) * n_slots + bins] = 1
    return out


def threshold_bits(binned: BinnedColumns, max_bin: int) -> np.ndarray:
    """Split values of every candidate as float32 bit patterns, (k·2·max_bin,) uint64, laid out (column, scan, bin).

    Scan 0 (forward) candidate t of a numerical column is c_{t+1}; scan 1 (backward) candidate t is c_t; for a
    categorical column both are the category code t. Padded candidates get +inf (they are never chosen).
    """
    table = np.full((len(binned.cuts), 2, max_bin), np.inf, dtype=np.float32)
    for j, c in enumerate(binned.cuts):
        count = _bin_count(c, binned.categorical[j])
        if count > max_bin:
            raise BinningError(f"a column has {count} bins, more than {max_bin}")
        if binned.categorical[j]:
            table[j, :, :count] = c
        else:
            table[j, 0, :count] = c[1:]
            table[j, 1, :count] = c[:-1]
    return table.view(np.uint32).astype(np.uint64).ravel()
