"""The two routes to per-bin sums in secure training, chosen per job (``histograms = "onehot" | "shuffle"``).

Both give, for shared per-sample columns Y (n × k), the shared sums per (feature, slot) — X^T·Y for the one-hot
matrix X. (Routing is the same for both routes: `routing`.)

``OneHotRoute`` (default): X (n × F·B) is shared once and its masked opening reused for every product
(SecureML's reused-mask matrix triples, `protocols.arithmetic`). Reveals nothing. Memory: two n·F·B-word matrices
per party (E and this party's share), e.g. 3.8 GB at 25,000 × 300 × 32 bins; traffic per product n·k words.

``ShuffleRoute``: per feature f a secret shuffle pi_f (Chase–Ghosh–Poburinnaya, as XORBoost applies permutations
instead of re-sorting); the bins of feature f are shuffled by pi_f and *opened*. Each level, Y is shuffled by every
pi_f and summed per bin locally. Memory n·F words per party,
whatever the number of bins. Leakage: opening the shuffled bins of a feature reveals how many samples fall in each
of its bins (the feature's bin occupancy counts) — nothing about which sample is where, because no party knows
pi_f. Quantile bins hold about n/B samples each by construction, so this mostly reveals ties and discreteness (e.g.
how many samples have a binary feature set). Traffic per level F·n·k words per party.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from privboost.mpc.protocols.arithmetic import matmul_fixed_t, precompute_products, share_fixed_operand
from privboost.mpc.protocols.shuffle import new_shuffle_batch, shuffle_batch, shuffle_chunks
from privboost.mpc.ring import DTYPE
from privboost.mpc.runtime import Party

ROUTES = ("onehot", "shuffle")


@njit(cache=True, boundscheck=False)
def _bin_sums(moved, bins, out):  # pragma: no cover - compiled
    # out[f, bins[f, i], :] += moved[f, i, :] mod 2^64: one pass over the shuffled rows of each feature
    for f in range(moved.shape[0]):
        for i in range(moved.shape[1]):
            b = bins[f, i]
            for c in range(moved.shape[2]):
                out[f, b, c] += moved[f, i, c]


class OneHotRoute:
    """Histograms as products with the shared one-hot matrix (nothing revealed)."""

    def __init__(self, party: Party, onehot: np.ndarray) -> None:
        self.fixed = share_fixed_operand(party, onehot, consume=True)  # the one-off opening of X - U

    def prepare(self, party: Party, widths: list[int]) -> None:
        """Before a tree: the input-independent halves of its products (``widths``: columns of each level's Y), in
        one pass over the opened matrix instead of one per level (and one dealer pass over its mask)."""
        precompute_products(party, self.fixed, widths)

    def histograms(self, party: Party, columns: np.ndarray) -> np.ndarray:
        """Shares of X^T·Y, (F·B) × k."""
        return matmul_fixed_t(party, self.fixed, columns)


class ShuffleRoute:
    """Histograms through one secret shuffle per feature (reveals per-feature bin counts)."""

    #: words per shuffle message: features are shuffled in chunks so transient memory stays bounded and the two
    #: parties' work overlaps; 32 MB measured fastest (larger fresh arrays cost page faults, smaller ones overhead)
    CHUNK_WORDS = 1 << 22

    def __init__(self, party: Party, bins: np.ndarray, n_bins: int) -> None:
        n, n_features = bins.shape
        self.n_bins, self.n_features = n_bins, n_features
        self.batch = new_shuffle_batch(party, n_features, n)
        opened = party.open(shuffle_batch(party, self.batch, np.ascontiguousarray(bins.T)))  # (F, n)
        if np.any(opened >= np.uint64(n_bins)):
            raise ValueError("a shared bin index is out of range: the owners' data is inconsistent")
        self.bins = opened.astype(np.int64)

    def prepare(self, party: Party, widths: list[int]) -> None:
        """Nothing to prepare ahead on this route (its masks are fetched per level, while the parties work)."""

    def histograms(self, party: Party, columns: np.ndarray) -> np.ndarray:
        """Shares of the per-(feature, bin) sums of Y, (F·B) × k."""
        k = columns.shape[1]
        out = np.zeros((self.n_features, self.n_bins, k), DTYPE)
        for part, moved in shuffle_chunks(party, self.batch, columns, shared=True, words=self.CHUNK_WORDS):
            _bin_sums(np.ascontiguousarray(moved), self.bins[part], out[part])
        return out.reshape(-1, k)
