"""A site's plaintext building blocks of histogram XGBoost: bin its rows, sum gradients per (node, feature, bin).

Binning follows xgboost's ``hist`` method (``HistogramCuts::SearchBin``, src/common/hist_util.h): feature f has
bin upper bounds u_0 < ... < u_{K-1} (float32, as xgboost stores its cuts); value x goes to the first bin j with
x < u_j, and values >= u_{K-1} to the last bin K-1, so bin j holds u_{j-1} <= x < u_j. Missing values (NaN) get
the missing code ``missing_code(n_bins) == n_bins``, one past the largest bin of any feature.

Histograms have one extra bin, index ``n_bins``, for missing values: ``hist[slot, f, b] = (sum g, sum h)`` over
the rows of that slot (a node being built; slot -1 = row not counted) whose feature f is in bin b. Sums are in
float64 in row order, as xgboost accumulates its ``GradientPairPrecise`` histograms on one thread, so a
single-site histogram is bit-for-bit xgboost's. Secure summation across sites happens elsewhere.

Speed: `bin_matrix` returns a column-major (Fortran-ordered) matrix because `build_histograms` streams one
feature's column per thread (prange over features, each owning its feature's slab of the histogram: no atomics, no
per-thread copies to reduce); row-major bins are first copied to column-major, so keep bin_matrix's layout.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: bins fit in uint8 up to this many bins per feature (the missing code, equal to n_bins, must fit as well)
UINT8_MAX_BINS = 255
#: and in uint16 beyond
UINT16_MAX_BINS = 65535


def missing_code(n_bins: int) -> int:
    """The bin code of a missing value when features have at most ``n_bins`` bins (int -> int)."""
    return int(n_bins)


def bin_dtype(n_bins: int) -> np.dtype:
    """The smallest unsigned dtype holding bins 0..n_bins-1 and the missing code n_bins (int -> dtype)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if n_bins <= UINT8_MAX_BINS:
        return np.dtype(np.uint8)
    if n_bins <= UINT16_MAX_BINS:
        return np.dtype(np.uint16)
    raise ValueError(f"at most {UINT16_MAX_BINS} bins per feature are supported, got {n_bins}")


@njit(parallel=True, cache=True, boundscheck=False)
def _bin_kernel(values, flat_edges, offsets, code, out):  # pragma: no cover - compiled
    n, n_features = values.shape
    block = 1024  # rows per task: the block of row-major values stays in cache across the feature loop
    n_blocks = (n + block - 1) // block
    for blk in prange(n_blocks):
        r0 = blk * block
        m = min(n, r0 + block) - r0
        xs = np.empty(m, values.dtype)
        base = np.empty(m, np.int64)
        for f in range(n_features):
            e = flat_edges[offsets[f]:offsets[f + 1]]
            k = e.shape[0]
            for j in range(m):
                xs[j] = values[r0 + j, f]
                base[j] = 0
            # upper_bound (number of edges <= x) for the whole block in lockstep: a fixed log2(k) steps of
            # independent selects, ~3x faster than one branchy binary search per value. The count stays within
            # [base, base + size]; NaN compares false everywhere and is overwritten below.
            size = k
            while size > 1:
                half = size >> 1
                for j in range(m):
                    b = base[j]
                    base[j] = b + half if e[b + half] <= xs[j] else b
                size -= half
            for j in range(m):
                x = xs[j]
                b = base[j]
                if x != x:
                    out[r0 + j, f] = code
                else:
                    out[r0 + j, f] = min(b + (1 if e[b] <= x else 0), k - 1)


def _check_edges(edges: list[np.ndarray], n_features: int) -> list[np.ndarray]:
    if len(edges) != n_features:
        raise ValueError(f"edges has {len(edges)} features, the values have {n_features}")
    checked = []
    for f, e in enumerate(edges):
        e = np.asarray(e, np.float32).ravel()
        if e.size == 0:
            raise ValueError(f"feature {f} has no bin edges: give at least one upper bound (e.g. inf)")
        if np.isnan(e).any() or (e.size > 1 and not np.all(e[1:] > e[:-1])):
            raise ValueError(f"feature {f}: bin edges must be strictly increasing float32 values without NaN")
        checked.append(e)
    return checked


def bin_matrix(values: np.ndarray, edges: list[np.ndarray], n_bins: int | None = None) -> np.ndarray:
    """Bin indices of ``values`` (n, F) float32 with NaN for missing, given per-feature upper bounds ``edges``.

    ``n_bins`` (default: the most edges of any feature) sets the missing code and the dtype: uint8 when
    n_bins <= 255, else uint16. Returns an (n, F) column-major array, the layout `build_histograms` reads fastest.
    Values are compared as float32, as xgboost does.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D (rows, features) array, got shape {values.shape}")
    checked = _check_edges(edges, values.shape[1])
    most = max((e.size for e in checked), default=1)
    n_bins = most if n_bins is None else int(n_bins)
    if most > n_bins:
        raise ValueError(f"a feature has {most} bins, more than n_bins={n_bins}")
    dtype = bin_dtype(n_bins)
    offsets = np.zeros(len(checked) + 1, np.int64)
    offsets[1:] = np.cumsum([e.size for e in checked])
    flat = np.concatenate(checked) if checked else np.zeros(0, np.float32)
    out = np.empty(values.shape, dtype, order="F")
    if values.size:
        _bin_kernel(np.ascontiguousarray(values, np.float32), flat, offsets, dtype.type(missing_code(n_bins)), out)
    return out


@njit(parallel=True, cache=True, boundscheck=False)
def _hist_by_feature(bins, rows, slot, g, h, n_bins, out):  # pragma: no cover - compiled
    # column-major bins: thread-per-feature over the counted rows only (ascending, so each column is read
    # forward); slot/g/h are already compacted to those rows. Returns a bad-bin flag.
    n_features = bins.shape[1]
    bad = np.zeros(n_features, np.bool_)
    for f in prange(n_features):
        col = bins[:, f]
        acc = out[:, f]  # this feature's (slots, bins, 2) slab: owned by this iteration only
        for j in range(rows.size):
            b = col[rows[j]]
            if b > n_bins:
                bad[f] = True
                continue
            s = slot[j]
            acc[s, b, 0] += g[j]
            acc[s, b, 1] += h[j]
    return bad.any()


@njit(parallel=True, cache=True, boundscheck=False)
def _to_columns(bins, out):  # pragma: no cover - compiled
    # row-major -> column-major copy by row blocks (numpy's own copy is ~4x slower for small integer types)
    n, n_features = bins.shape
    block = 2048
    for t in prange((n + block - 1) // block):
        r0 = t * block
        r1 = min(n, r0 + block)
        for f in range(n_features):
            for i in range(r0, r1):
                out[i, f] = bins[i, f]


def build_histograms(bins: np.ndarray, slot: np.ndarray, g: np.ndarray, h: np.ndarray, n_slots: int,
                     n_bins: int) -> np.ndarray:
    """Per-slot gradient histograms: float64 (n_slots, F, n_bins + 1, 2), [..., 0] = sum g, [..., 1] = sum h.

    ``bins`` (n, F) uint8/uint16 from `bin_matrix` (bin n_bins = missing), ``slot`` (n,) int32 in
    [-1, n_slots) (-1: row not counted), ``g``/``h`` (n,) float64. Sums run in row order.
    """
    bins = np.asarray(bins)
    if bins.ndim != 2 or bins.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"bins must be a 2-D uint8/uint16 array, got {bins.dtype} of shape {bins.shape}")
    n, n_features = bins.shape
    slot = np.ascontiguousarray(slot, np.int32)
    g = np.ascontiguousarray(g, np.float64)
    h = np.ascontiguousarray(h, np.float64)
    if slot.shape != (n,) or g.shape != (n,) or h.shape != (n,):
        raise ValueError(f"slot, g and h must have shape ({n},): got {slot.shape}, {g.shape}, {h.shape}")
    if n_slots < 0 or n_bins < 1:
        raise ValueError(f"need n_slots >= 0 and n_bins >= 1, got {n_slots} and {n_bins}")
    if n and (int(slot.max()) >= n_slots or int(slot.min()) < -1):
        raise ValueError(f"slot values must lie in [-1, {n_slots})")
    out = np.zeros((n_slots, n_features, n_bins + 1, 2), np.float64)
    if n == 0 or n_features == 0 or n_slots == 0:
        return out
    if not bins.flags.f_contiguous:
        columns = np.empty(bins.shape, bins.dtype, order="F")
        _to_columns(np.ascontiguousarray(bins), columns)
        bins = columns
    rows = np.flatnonzero(slot >= 0)  # deeper levels count only the rows of the children being built
    bad = _hist_by_feature(bins, rows, slot[rows], g[rows], h[rows], n_bins, out)
    if bad:
        raise ValueError(f"a bin index exceeds the missing code {n_bins}: bins and n_bins disagree")
    return out


def node_totals(slot: np.ndarray, g: np.ndarray, h: np.ndarray, n_slots: int) -> np.ndarray:
    """Per-slot (sum g, sum h) as float64 (n_slots, 2), summed in row order; slot -1 rows are left out."""
    slot = np.asarray(slot)
    keep = slot >= 0
    s = slot[keep].astype(np.intp)
    if s.size and int(s.max()) >= n_slots:
        raise ValueError(f"slot values must lie in [-1, {n_slots})")
    out = np.empty((n_slots, 2), np.float64)
    out[:, 0] = np.bincount(s, weights=np.asarray(g, np.float64)[keep], minlength=n_slots)
    out[:, 1] = np.bincount(s, weights=np.asarray(h, np.float64)[keep], minlength=n_slots)
    return out
