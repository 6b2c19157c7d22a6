"""Quantile bins for secure training, identical to XGBoost's ``hist`` bins.

An owner bins the columns it holds locally. Cut points come from XGBoost's own quantile sketch
(``QuantileDMatrix(...).get_quantile_cut()``), so with the same ``max_bin`` every sample falls in the bin
``tree_method="hist"`` would give it and every candidate threshold is one XGBoost would try.

Convention: a feature with cuts c_0 < c_1 < ... < c_{K-1} puts x in bin ``#{j : c_j <= x} - 1`` (clipped to
[0, K-1]); candidate split t (0 <= t <= K-2) sends bins <= t left, i.e. ``x < c_{t+1}``, XGBoost's rule. Features are
padded to a common number of bins; padded candidates never separate any sample, so they are never chosen.

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

    @property
    def n_bins(self) -> int:
        """Largest number of bins of any column (columns are padded to it)."""
        return max((c.size for c in self.cuts), default=1)


def bin_columns(values: np.ndarray, names: list[str], max_bin: int) -> BinnedColumns:
    """Bin the columns of ``values`` (n × k) with XGBoost's quantile sketch at ``max_bin`` bins."""
    import xgboost as xgb

    x = np.asarray(values, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise BinningError("need a non-empty 2-D table of numbers to bin")
    if np.isnan(x).any():
        bad = [names[j] for j in np.flatnonzero(np.isnan(x).any(axis=0))]
        raise BinningError(f"missing values in {bad}: secure training does not handle missing values yet; "
                           "impute them before sharing")
    if not 2 <= max_bin <= 256:
        raise BinningError("max_bin must be between 2 and 256")
    indptr, cut_values = xgb.QuantileDMatrix(x, max_bin=max_bin).get_quantile_cut()
    cuts = [np.asarray(cut_values[indptr[j]:indptr[j + 1]], dtype=np.float32) for j in range(x.shape[1])]
    bins = np.empty(x.shape, dtype=np.int32)
    for j, c in enumerate(cuts):
        bins[:, j] = np.clip(np.searchsorted(c, x[:, j], side="right") - 1, 0, max(c.size - 1, 0))
    return BinnedColumns(list(names), bins, cuts)


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
        table[j, : max(c.size - 1, 0)] = c[1:]
    return table.view(np.uint32).astype(np.uint64).ravel()
