"""Quantile bins for secure training, identical to XGBoost's ``hist`` bins.

An owner bins the columns it holds locally. Cut points come from XGBoost's own quantile sketch
(``QuantileDMatrix(...).get_quantile_cut()``), so with the same ``max_bin`` every sample falls in the bin
``tree_method="hist"`` would give it and every candidate threshold is one XGBoost would try.

Convention: a feature with cuts c_0 < c_1 < ... < c_{K-1} (XGBoost's c_0 lies below the column's minimum and
c_{K-1} above its maximum) has K-1 bins; x falls in bin ``#{j : c_j <= x} - 1`` (clipped to [0, K-2]); candidate
split t (0 <= t <= K-2) sends bins <= t left, i.e. ``x < c_{t+1}``, XGBoost's rule. Every column is padded to
``max_bin`` bins; padded candidates (and t = K-2, which keeps everyone left) never separate any sample.

Leakage: none to the compute parties (bins and cut points are secret-shared); the analyst learns the cut points
that the finished trees use as thresholds, as XGBoost's own model would show them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class BinningError(ValueError):
    """A column cannot be binned (missing values, wrong type, no rows)."""


@dataclass
class BinnedColumns:
    """An owner's columns as bin indices (n × k, int32) with each column's cut points (float32)."""

    names: list[str]
    bins: np.ndarray
    cuts: list[np.ndarray]



def _check_values(values: np.ndarray, names: list[str]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise BinningError("need a non-empty 2-D table of numbers to bin")
    if np.isnan(x).any():
        bad = [names[j] for j in np.flatnonzero(np.isnan(x).any(axis=0))]
        raise BinningError(f"missing values in {bad}: secure training does not handle missing values yet; "
                           "impute them before sharing")
    return x


def bin_columns(values: np.ndarray, names: list[str], max_bin: int) -> BinnedColumns:
    """Bin the columns of ``values`` (n × k) with XGBoost's quantile sketch at ``max_bin`` bins."""
    import xgboost as xgb

    x = _check_values(values, names)
    if not 2 <= max_bin <= 256:
        raise BinningError("max_bin must be between 2 and 256")
    indptr, cut_values = xgb.QuantileDMatrix(x, max_bin=max_bin).get_quantile_cut()
    cuts = [np.asarray(cut_values[indptr[j]:indptr[j + 1]], dtype=np.float32) for j in range(x.shape[1])]
    if any(c.size - 1 > max_bin for c in cuts):
        raise BinningError("XGBoost's sketch returned more bins than max_bin")
    return bin_with_cuts(x, names, cuts)


def bin_with_cuts(values: np.ndarray, names: list[str], cuts: list[np.ndarray]) -> BinnedColumns:
    """Bin the columns of ``values`` with given cut points (one ascending float32 array per column)."""
    x = _check_values(values, names)
    if len(cuts) != x.shape[1]:
        raise BinningError(f"{len(cuts)} columns of cut points for {x.shape[1]} columns")
    bins = np.empty(x.shape, dtype=np.int32)
    for j, c in enumerate(cuts):
        if c.size < 2:
            raise BinningError(f"column {names[j]!r} needs at least two cut points")
        bins[:, j] = np.clip(np.searchsorted(c, x[:, j], side="right") - 1, 0, c.size - 2)
    return BinnedColumns(list(names), bins, [np.asarray(c, np.float32) for c in cuts])


def one_hot(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """The n × (k·n_bins) 0/1 uint64 matrix with a one at (i, j·n_bins + bins[i, j])."""
    n, k = bins.shape
    out = np.zeros((n, k * n_bins), dtype=np.uint64)
    out[np.arange(n)[:, None], np.arange(k) * n_bins + bins] = 1
    return out


def threshold_bits(cuts: list[np.ndarray], n_bins: int) -> np.ndarray:
    """Candidate thresholds as float32 bit patterns (k·n_bins, uint64): candidate t of column j is c_{t+1}.

    Padded candidates get +inf (they send every sample left and are never chosen).
    """
    table = np.full((len(cuts), n_bins), np.inf, dtype=np.float32)
    for j, c in enumerate(cuts):
        if c.size - 1 > n_bins:
            raise BinningError(f"a column has {c.size - 1} bins, more than {n_bins}")
        table[j, : c.size - 1] = c[1:]
    return table.view(np.uint32).astype(np.uint64).ravel()
