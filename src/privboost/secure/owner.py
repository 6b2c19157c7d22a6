"""Data owners: load a table, bin it, and secret-share it to the two compute parties.

Vertical split: every owner holds some columns of the same samples, keyed by an id column; each owner sorts its rows
by id and bins its own columns locally (XGBoost's sketch on the full column, so bins equal XGBoost's). Horizontal
split: every owner holds some rows of the same columns; bin edges come from `merge_cuts` over the owners' local
sketches (run by the analyst, see `job.py`).

Sharing: for each array the owner draws a fresh 256-bit seed, sends the seed to party 1 (whose share is the AES-CTR
stream of that seed) and value − stream to party 0, so party 1 receives 32 bytes per array.

Leakage: to each compute party, one uniformly random share per array, plus public job metadata: the number of rows
and columns per owner, column names, the number of bins, which columns are categorical and how many codes each
has, which columns have any missing value, which owner holds the label, a SHA-256 digest of the sorted ids
(vertical: so the parties can check that every owner holds the same samples), and for regression a power-of-two
bound on |label|. Horizontal split: the merger (the analyst) sees each owner's local quantile summary (its cut
points and the number of its rows between them, missing values not counted; for a categorical column its largest
code); every owner learns the merged cut points.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from privboost.data import DataError, feature_matrix, read_table
from privboost.mpc.prg import Prg, new_seed
from privboost.mpc.ring import as_ring, encode_fixed
from privboost.secure.binning import (
    BinnedColumns,
    bin_columns,
    bin_with_cuts,
    one_hot,
    slots,
    threshold_bits,
)


@dataclass
class OwnerTable:
    """One owner's rows: features (float32), optional labels, optional ids (rows sorted by id)."""

    feature_names: list[str]
    values: np.ndarray
    labels: np.ndarray | None
    ids: np.ndarray | None

    @property
    def rows(self) -> int:
        """Number of samples."""
        return self.values.shape[0]

    def ids_digest(self) -> str:
        """SHA-256 of the sorted ids ('' without ids): equal digests mean the same samples."""
        if self.ids is None:
            return ""
        return hashlib.sha256("\n".join(map(str, self.ids)).encode()).hexdigest()

    def label_bound(self) -> float:
        """The smallest power of two >= max |label| (public, to scale regression gradients)."""
        if self.labels is None or self.labels.size == 0:
            return 0.0
        top = float(np.max(np.abs(self.labels)))
        return 2.0 ** math.ceil(math.log2(top)) if top > 0 else 1.0


def load_owner_table(path: str, label: str, id_column: str | None) -> OwnerTable:
    """Read an owner's CSV/Parquet: every column except ``label`` and ``id_column`` is a feature."""
    table = read_table(path)
    if table.columns.duplicated().any():
        raise DataError(f"{path}: duplicate column names")
    ids = None
    if id_column is not None:
        if id_column not in table.columns:
            raise DataError(f"{path} has no id column {id_column!r}")
        if table[id_column].duplicated().any():
            raise DataError(f"{path}: ids in {id_column!r} are not unique")
        table = table.sort_values(id_column, kind="stable").reset_index(drop=True)
        ids = table[id_column].to_numpy()
    labels = None
    if label in table.columns:
        labels = pd.to_numeric(table[label], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(labels).any():
            raise DataError(f"{path}: label column {label!r} has missing or non-numeric values")
    names = [c for c in table.columns if c not in (label, id_column)]
    if not names and labels is None:
        raise DataError(f"{path} has neither feature columns nor the label {label!r}")
    return OwnerTable(names, feature_matrix(table, names), labels, ids)


def split_for_parties(values: np.ndarray) -> tuple[np.ndarray, bytes]:
    """(party 0's share, party 1's seed): party 1's share is ``Prg(seed).words(shape)``; party 0's is the values
    minus that stream, streamed into a copy of the values (no array of the stream is held: the one-hot block can be
    gigabytes)."""
    share0 = np.array(as_ring(values), dtype=np.uint64, order="C")
    seed = new_seed()
    Prg(seed).add_into(share0, subtract=True)
    return share0, seed


@dataclass
class OwnerShares:
    """What an owner deals: arrays (for party 0 as value − stream) and metadata for both parties."""

    meta: dict
    arrays: dict[str, np.ndarray]


def encode_labels(labels: np.ndarray, frac_bits: int, num_class: int = 0) -> np.ndarray:
    """Labels as the parties take them: fixed point, or for ``num_class`` classes (multi:softprob) the n × K
    one-hot of the class codes 0..K-1, fixed point. Raises DataError on codes outside 0..K-1."""
    labels = np.asarray(labels, np.float64)
    if not num_class:
        return encode_fixed(labels, frac_bits)
    codes = labels.astype(np.int64)
    if np.any(codes != labels) or np.any(codes < 0) or np.any(codes >= num_class):
        raise DataError(f"multi:softprob needs class labels 0..{num_class - 1}")
    return encode_fixed(np.eye(num_class)[codes], frac_bits)


def prepare_shares(table: OwnerTable, binned: BinnedColumns | None, n_bins: int, frac_bits: int,
                   route: str = "onehot", num_class: int = 0) -> OwnerShares:
    """The owner's one-hot block (or bin indices, for the shuffle route), thresholds and labels, to be shared."""
    arrays: dict[str, np.ndarray] = {}
    columns = {"categorical": [], "has_missing": [], "n_categories": []}
    if binned is not None and binned.names:
        if route == "onehot":
            arrays["onehot"] = one_hot(binned.bins, slots(n_bins))
        else:
            arrays["bins"] = binned.bins.astype(np.uint64)
        arrays["thresholds"] = threshold_bits(binned, n_bins)
        columns = {"categorical": binned.categorical.tolist(), "has_missing": binned.has_missing.tolist(),
                   "n_categories": binned.n_categories.tolist()}
    if table.labels is not None:
        arrays["labels"] = encode_labels(table.labels, frac_bits, num_class)
    meta = {"rows": table.rows, "features": table.feature_names, "n_bins": n_bins,
            "has_label": table.labels is not None, "ids_digest": table.ids_digest(),
            "label_bound": table.label_bound(), "arrays": sorted(arrays), **columns}
    return OwnerShares(meta, arrays)


def local_summary(table: OwnerTable, max_bin: int, categorical: list[str] = ()) -> list[list[float]]:
    """Horizontal split: this owner's sketch, per column [[cut_0, ..., cut_K], [count_0, ..., count_{K-1}]]
    (missing values not counted); for a categorical column [[0, ..., max code], []]."""
    binned = bin_columns(table.values, table.feature_names, max_bin, categorical)
    summary = []
    for j, cuts in enumerate(binned.cuts):
        if binned.categorical[j]:
            summary.append([cuts.astype(float).tolist(), []])
            continue
        present = binned.bins[:, j][binned.bins[:, j] < max_bin]
        counts = np.bincount(present, minlength=cuts.size)
        summary.append([cuts.astype(float).tolist(), counts.astype(float).tolist()])
    return summary


def merge_cuts(summaries: list[list], max_bin: int, categorical: np.ndarray | None = None) -> list[np.ndarray]:
    """Global cut points per column from the owners' local summaries, by weighted quantiles of their cuts; for a
    categorical column (flagged in ``categorical``) the codes 0 .. the largest code any owner has."""
    merged = []
    for j, column in enumerate(zip(*summaries, strict=True)):
        if categorical is not None and categorical[j]:
            merged.append(np.arange(max(len(cuts) for cuts, _ in column), dtype=np.float32))
            continue
        points = np.concatenate([np.asarray(cuts, np.float64) for cuts, _ in column])
        weights = np.concatenate([np.asarray(counts, np.float64) for _, counts in column])
        order = np.argsort(points, kind="stable")
        points, weights = points[order], weights[order]
        cumulative = np.cumsum(weights)
        targets = cumulative[-1] * np.arange(1, max_bin) / max_bin
        inner = points[np.minimum(np.searchsorted(cumulative, targets), points.size - 1)]
        lowest, highest = points[0], points[-1]
        cuts = np.unique(np.concatenate([[lowest], inner, [highest]]).astype(np.float32))
        merged.append(cuts)
    return merged


def bin_rows(table: OwnerTable, cuts: list[np.ndarray], max_bin: int, categorical: list[str] = ()) -> BinnedColumns:
    """Horizontal split: bin this owner's rows with the merged cut points."""
    return bin_with_cuts(table.values, table.feature_names, cuts, max_bin, categorical)

