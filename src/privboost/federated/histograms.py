"""A site's plaintext building blocks of histogram XGBoost: bin its rows, sum gradients per (node, feature, bin),
route rows to child nodes.

Binning follows xgboost's ``hist`` method (``HistogramCuts::SearchBin``, src/common/hist_util.h): feature f has
bin upper bounds u_0 < ... < u_{K-1} (float32, as xgboost stores its cuts); value x goes to the first bin j with
x < u_j, and values >= u_{K-1} to the last bin K-1, so bin j holds u_{j-1} <= x < u_j. Missing values (NaN) get
the missing code ``missing_code(n_bins) == n_bins``, one past the largest bin of any feature.

Histograms have one extra bin, index ``n_bins``, for missing values: ``hist[slot, f, b] = (sum g, sum h)`` over
the rows of that slot (a node being built; slot -1 = row not counted) whose feature f is in bin b. Sums are in
float64 in row order, as xgboost accumulates its ``GradientPairPrecise`` histograms on one thread, so a
single-site histogram is bit-for-bit xgboost's single-threaded one, except a one-node histogram of
``SINGLE_RUN_ROWS`` counted rows or more: it is summed by threads over runs of rows and the runs added (as
xgboost's multi-threaded builder does), which changes only rounding in the last bits of the float64 sums. Secure
summation across sites happens elsewhere; `build_fixed_histograms` gives its fixed-point input.

Speed: `bin_matrix` returns a row-major matrix and `build_histograms` reads a counted row's F bins as one
contiguous run (xgboost's row-wise builder does the same). Measured on 1M x 100 over 10 sites, a thread-per-feature
kernel on column-major bins was 1.6x slower at the root and no faster at deep levels, where the counted rows are
sparse and each one costs a trip to memory either way.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

#: bins fit in uint8 up to this many bins per feature (the missing code, equal to n_bins, must fit as well)
UINT8_MAX_BINS = 255
#: and in uint16 beyond
UINT16_MAX_BINS = 65535
#: a one-node histogram of this many counted rows or more is split over threads and the partial histograms added;
#: below it, and for several nodes at any size, every bin is summed in row order (xgboost's single-threaded sums)
SINGLE_RUN_ROWS = 16384
#: bytes of histogram buffer one pass over a node's rows fills (features are taken in blocks of about this size)
_BLOCK_BYTES = 160 * 1024


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
    n_bins <= 255 (or 256 with no missing value), else uint16. Returns an (n, F) row-major array, the layout
    `build_histograms` reads fastest. Values are compared as float32, as xgboost does.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D (rows, features) array, got shape {values.shape}")
    checked = _check_edges(edges, values.shape[1])
    most = max((e.size for e in checked), default=1)
    n_bins = most if n_bins is None else int(n_bins)
    if most > n_bins:
        raise ValueError(f"a feature has {most} bins, more than n_bins={n_bins}")
    # without missing values the largest code is n_bins - 1: 256 bins (xgboost's default max_bin) still fit uint8,
    # which halves the memory every histogram pass reads
    dtype = bin_dtype(n_bins - 1 if n_bins == UINT8_MAX_BINS + 1 and not np.isnan(values).any() else n_bins)
    offsets = np.zeros(len(checked) + 1, np.int64)
    offsets[1:] = np.cumsum([e.size for e in checked])
    flat = np.concatenate(checked) if checked else np.zeros(0, np.float32)
    out = np.empty(values.shape, dtype)
    if values.size:
        _bin_kernel(np.ascontiguousarray(values, np.float32), flat, offsets, np.int64(missing_code(n_bins)), out)
    return out


@njit(cache=True, boundscheck=False)
def _rows_by_slot(slot, n_slots):  # pragma: no cover - compiled
    # counting sort of the counted rows (slot >= 0) by slot, ascending rows within a slot; starts[s] = first of s
    starts = np.zeros(n_slots + 1, np.int64)
    for r in range(slot.size):
        if slot[r] >= 0:
            starts[slot[r] + 1] += 1
    for s in range(n_slots):
        starts[s + 1] += starts[s]
    rows = np.empty(starts[n_slots], np.int64)
    fill = starts[:n_slots].copy()
    for r in range(slot.size):
        s = slot[r]
        if s >= 0:
            rows[fill[s]] = r
            fill[s] += 1
    return rows, starts


@njit(cache=True, boundscheck=False)
def _accumulate(bins, rows, lo, hi, g, h, n_bins, buf, check):  # pragma: no cover - compiled
    # rows[lo:hi] into one (F, width, 2) histogram, a block of features at a time: one block's part of the
    # buffer stays in L2 (all 100 features x 257 bins are 411 KB, and a core here has 512 KB), which measured
    # ~20% faster than all features per row though each row's bins are then read in several pieces. Within a
    # feature, rows are still added in row order, so every sum is the same bit for bit. ``check``: test every bin
    # code against n_bins (bins not known to be valid; a code past it would write outside the buffer).
    n_features = bins.shape[1]
    per_feature = buf.shape[1] * buf.shape[2] * 8
    n_blocks = max(1, (n_features * per_feature + _BLOCK_BYTES - 1) // _BLOCK_BYTES)
    block = (n_features + n_blocks - 1) // n_blocks
    if check:
        return _accumulate_checked(bins, rows, lo, hi, g, h, n_bins, buf, block)
    for f0 in range(0, n_features, block):
        f1 = min(n_features, f0 + block)
        # four rows per pass over the block's features: their updates are independent unless two rows share a
        # bin, so the core overlaps them instead of waiting on one load-add-store chain (measured 1.3-1.5x).
        # Each bin still receives its rows in ascending order: the same sums bit for bit.
        j = lo
        while j + 3 < hi:
            r0, r1, r2, r3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
            g0, h0, g1, h1 = g[r0], h[r0], g[r1], h[r1]
            g2, h2, g3, h3 = g[r2], h[r2], g[r3], h[r3]
            for f in range(f0, f1):
                _add(buf, f, bins[r0, f], g0, h0)
                _add(buf, f, bins[r1, f], g1, h1)
                _add(buf, f, bins[r2, f], g2, h2)
                _add(buf, f, bins[r3, f], g3, h3)
            j += 4
        while j < hi:
            r = rows[j]
            for f in range(f0, f1):
                _add(buf, f, bins[r, f], g[r], h[r])
            j += 1
    return False


@njit(inline="always", boundscheck=False)
def _add(buf, f, b, gv, hv):  # pragma: no cover - compiled, inlined into its callers
    buf[f, b, 0] += gv
    buf[f, b, 1] += hv


@njit(cache=True, boundscheck=False)
def _accumulate_checked(bins, rows, lo, hi, g, h, n_bins, buf, block):  # pragma: no cover - compiled
    # `_accumulate` testing every code first (the first pass over a bin matrix not yet known to be valid)
    bad = False
    n_features = bins.shape[1]
    for f0 in range(0, n_features, block):
        f1 = min(n_features, f0 + block)
        for j in range(lo, hi):
            r = rows[j]
            gj = g[r]
            hj = h[r]
            for f in range(f0, f1):
                b = bins[r, f]
                if b > n_bins:
                    bad = True
                    continue
                buf[f, b, 0] += gj
                buf[f, b, 1] += hj
    return bad


@njit(cache=True, boundscheck=False)
def _emit(buf, s, width, scale, limit, out_float, out_fixed):  # pragma: no cover - compiled
    # one slot's finished histogram to the result: float64 as is, or fixed point round(x * scale) mod 2^64
    bad = False
    for f in range(buf.shape[0]):
        for b in range(width):
            for k in range(2):
                x = buf[f, b, k]
                if out_fixed.size:
                    scaled = np.rint(x * scale)
                    if not abs(scaled) < limit:  # also catches NaN
                        bad = True
                        scaled = 0.0
                    out_fixed[s, f, b, k] = np.uint64(np.int64(scaled))
                else:
                    out_float[s, f, b, k] = x
    return bad


@njit(parallel=True, cache=True, boundscheck=False)
def _hist_kernel(bins, rows, starts, g, h, n_bins, cuts, split_rows, scale, limit, out_float,
                 out_fixed, check):  # pragma: no cover - compiled
    # Slots are summed one at a time in a small reused buffer that stays in cache, then written out in one
    # streaming pass: writing straight into an (S, F, width, 2) result of megabytes cost a cache miss per first
    # touch of each line. Run c takes slots cuts[c]..cuts[c+1]-1 (rows ascending within a slot, so every bin
    # sums its rows in row order), or, with ``split_rows`` (one slot), rows cuts[c]..cuts[c+1]-1 into its own
    # buffer, the buffers then added in run order. Returns 1 for a bin code past n_bins, 2 for an encoding overflow.
    n_features = bins.shape[1]
    width = n_bins + 1
    # a feature's (width x 2) float64 slab within a cache line of a multiple of 4 KiB (257 bins = 4 KiB + 16 B)
    # would put a row's F updates into the same few cache sets: pad such widths by 4 bins
    padded = width + 4 if (width * 16) % 4096 < 80 or (width * 16) % 4096 > 4096 - 80 else width
    n_runs = cuts.size - 1
    bad_bin = np.zeros(n_runs, np.bool_)
    bad_value = np.zeros(n_runs, np.bool_)
    if split_rows:
        bufs = np.zeros((n_runs, n_features, padded, 2), np.float64)
        for c in prange(n_runs):
            bad_bin[c] = _accumulate(bins, rows, cuts[c], cuts[c + 1], g, h, n_bins, bufs[c], check)
        for c in range(1, n_runs):
            bufs[0] += bufs[c]
        bad_value[0] = _emit(bufs[0], 0, width, scale, limit, out_float, out_fixed)
    else:
        for c in prange(n_runs):
            buf = np.empty((n_features, padded, 2), np.float64)
            for s in range(cuts[c], cuts[c + 1]):
                buf[:] = 0.0
                bad_bin[c] |= _accumulate(bins, rows, starts[s], starts[s + 1], g, h, n_bins, buf, check)
                bad_value[c] |= _emit(buf, s, width, scale, limit, out_float, out_fixed)
    return 1 if bad_bin.any() else (2 if bad_value.any() else 0)


def _cuts(starts: np.ndarray) -> tuple[np.ndarray, bool]:
    """Thread runs: slot ranges cut where the row counts are closest to equal shares (results do not depend on
    the cut); a single slot is cut into row ranges only from `SINGLE_RUN_ROWS` rows, where the buffer each extra
    run costs is small beside the work it takes over. Returns (cuts, cuts are row positions)."""
    n_slots, rows = starts.size - 1, int(starts[-1])
    threads = get_num_threads()
    if n_slots > 1 and threads > 1 and rows >= 1024:
        targets = np.arange(1, threads) * rows / threads
        nearest = np.abs(starts[None, :] - targets[:, None]).argmin(axis=1)
        return np.unique(np.concatenate([[0], nearest, [n_slots]])).astype(np.int64), False
    if n_slots == 1 and threads > 1 and rows >= SINGLE_RUN_ROWS:
        return np.linspace(0, rows, threads + 1).astype(np.int64), True
    return np.array([0, n_slots], np.int64), False


def _checked_inputs(bins: np.ndarray, slot: np.ndarray, g: np.ndarray, h: np.ndarray, n_slots: int,
                    n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    bins = np.asarray(bins)
    if bins.ndim != 2 or bins.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"bins must be a 2-D uint8/uint16 array, got {bins.dtype} of shape {bins.shape}")
    n = bins.shape[0]
    slot = np.ascontiguousarray(slot, np.int32)
    g = np.ascontiguousarray(g, np.float64)
    h = np.ascontiguousarray(h, np.float64)
    if slot.shape != (n,) or g.shape != (n,) or h.shape != (n,):
        raise ValueError(f"slot, g and h must have shape ({n},): got {slot.shape}, {g.shape}, {h.shape}")
    if n_slots < 0 or n_bins < 1:
        raise ValueError(f"need n_slots >= 0 and n_bins >= 1, got {n_slots} and {n_bins}")
    if n and (int(slot.max()) >= n_slots or int(slot.min()) < -1):
        raise ValueError(f"slot values must lie in [-1, {n_slots})")
    return np.ascontiguousarray(bins), slot, g, h


def _run_histograms(bins, rows, starts, g, h, n_bins, out_float, out_fixed, scale=1.0, limit=0.0,
                    check=True) -> None:
    """Fill ``out_float`` or ``out_fixed`` with the histogram of each slot k = rows[starts[k]:starts[k+1]]."""
    if bins.shape[1] == 0 or starts.size < 2:
        out_float[...] = 0.0
        out_fixed[...] = 0
        return
    cuts, split_rows = _cuts(starts)
    status = _hist_kernel(bins, rows, starts, g, h, n_bins, cuts, split_rows, scale, limit, out_float, out_fixed,
                          check)
    if status == 1:
        raise ValueError(f"a bin index exceeds the missing code {n_bins}: bins and n_bins disagree")
    if status == 2:
        raise ValueError(f"a histogram sum is not finite or exceeds {limit / scale:.3g} in magnitude")


_NO_FLOAT = np.empty((0, 0, 0, 0), np.float64)
_NO_FIXED = np.empty((0, 0, 0, 0), np.uint64)


def build_histograms(bins: np.ndarray, slot: np.ndarray, g: np.ndarray, h: np.ndarray, n_slots: int,
                     n_bins: int) -> np.ndarray:
    """Per-slot gradient histograms: float64 (n_slots, F, n_bins + 1, 2), [..., 0] = sum g, [..., 1] = sum h.

    ``bins`` (n, F) uint8/uint16 from `bin_matrix` (bin n_bins = missing), ``slot`` (n,) int32 in
    [-1, n_slots) (-1: row not counted), ``g``/``h`` (n,) float64. Sums run in row order.
    """
    bins, slot, g, h = _checked_inputs(bins, slot, g, h, n_slots, n_bins)
    out = np.empty((n_slots, bins.shape[1], n_bins + 1, 2), np.float64)
    _run_histograms(bins, *_rows_by_slot(slot, n_slots), g, h, n_bins, out, _NO_FIXED)
    return out


def build_fixed_histograms(bins: np.ndarray, slot: np.ndarray, g: np.ndarray, h: np.ndarray, n_slots: int,
                           n_bins: int, frac_bits: int, bound: float) -> np.ndarray:
    """`build_histograms` encoded as secure aggregation's input, in the same pass: uint64 (n_slots, F,
    n_bins + 1, 2) fixed-point round(x·2^frac_bits) mod 2^64, exactly `privboost.mpc.ring.encode_fixed` of the
    float64 histograms; raises ValueError unless every |sum| < ``bound``."""
    bins, slot, g, h = _checked_inputs(bins, slot, g, h, n_slots, n_bins)
    return _fixed(bins, *_rows_by_slot(slot, n_slots), g, h, n_bins, frac_bits, bound)


def build_fixed_histograms_at(bins: np.ndarray, g: np.ndarray, h: np.ndarray, ranges: list[tuple[int, int]],
                              n_bins: int, frac_bits: int, bound: float, bins_checked: bool = False) -> np.ndarray:
    """`build_fixed_histograms` where slot k is the contiguous run of rows ``ranges[k] = (start, end)`` (rows kept
    grouped by node, see `privboost.federated.partition`): rows are read front to back, in row order.

    ``bins_checked``: the caller has verified every code is <= ``n_bins`` (`bins_within`), so the kernel skips the
    per-value test; without it a code past ``n_bins`` raises ValueError."""
    lengths = np.array([end - start for start, end in ranges], np.int64)
    rows = np.concatenate([np.arange(start, end, dtype=np.int64) for start, end in ranges] or [np.zeros(0, np.int64)])
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return _fixed(np.ascontiguousarray(bins), rows, starts, np.ascontiguousarray(g, np.float64),
                  np.ascontiguousarray(h, np.float64), n_bins, frac_bits, bound, check=not bins_checked)


def bins_within(bins: np.ndarray, n_bins: int) -> bool:
    """True if every code of ``bins`` is at most ``n_bins`` (the missing code): safe for unchecked histograms."""
    return bins.size == 0 or int(bins.max()) <= n_bins


def _fixed(bins, rows, starts, g, h, n_bins, frac_bits, bound, check=True) -> np.ndarray:
    out = np.empty((starts.size - 1, bins.shape[1], n_bins + 1, 2), np.uint64)
    _run_histograms(bins, rows, starts, g, h, n_bins, _NO_FLOAT, out, float(2.0 ** frac_bits),
                    float(bound) * 2.0 ** frac_bits, check)
    return out


@njit(cache=True, boundscheck=False)
def _route_kernel(position, bins, lookup, features, split_bins, default_left, max_bin):  # pragma: no cover
    for r in range(position.size):
        node = position[r]
        k = lookup[node] if node < lookup.size else -1
        if k < 0:
            continue
        value = bins[r, features[k]]
        left = default_left[k] if value == max_bin else value <= split_bins[k]
        position[r] = 2 * node + (1 if left else 2)


def route_rows(position: np.ndarray, bins: np.ndarray, split_nodes: np.ndarray, split_features: np.ndarray,
               split_bins: np.ndarray, default_left: np.ndarray, missing: int) -> None:
    """Move rows of the split nodes to their children, in place in ``position`` (int32 heap indices).

    A row of node ``split_nodes[k]`` goes left when its bin of ``split_features[k]`` is <= ``split_bins[k]``, or,
    when missing (bin == ``missing``), when ``default_left[k]``.
    """
    split_nodes, split_features = np.asarray(split_nodes, np.int64), np.asarray(split_features, np.int64)
    split_bins, default_left = np.asarray(split_bins, np.int64), np.asarray(default_left, np.bool_)
    check_splits(split_nodes, split_features, split_bins, default_left, np.shape(bins)[1])
    lookup = np.full(int(split_nodes.max(initial=-1)) + 1, -1, np.int64)
    lookup[split_nodes] = np.arange(split_nodes.size)
    _route_kernel(position, np.ascontiguousarray(bins), lookup, split_features, split_bins, default_left, int(missing))


def check_splits(split_nodes: np.ndarray, split_features: np.ndarray, split_bins: np.ndarray,
                 default_left: np.ndarray, n_features: int) -> None:
    """Raise ValueError unless the split arrays are 1-D, one entry per node, nodes >= 0 and features < n_features
    (the compiled routing reads without bounds checks)."""
    shape = split_nodes.shape
    if len(shape) != 1 or split_features.shape != shape or split_bins.shape != shape or default_left.shape != shape:
        raise ValueError("split nodes, features, bins and default directions must be 1-D arrays of one length")
    if split_nodes.size and (split_nodes.min() < 0 or split_features.min() < 0 or split_features.max() >= n_features):
        raise ValueError(f"split nodes must be >= 0 and split features in [0, {n_features})")


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


def warm_up() -> None:
    """Load (or compile) every kernel a site runs, for both bin dtypes, on a few synthetic rows.

    A process that forks sites calls this first, so each site starts with the kernels in memory rather than
    loading them from numba's cache (~0.7 s per process).
    """
    values = np.linspace(-1.0, 1.0, 128, dtype=np.float32).reshape(64, 2)
    edges = [np.append(np.linspace(-1.0, 1.0, 256, dtype=np.float32)[1:], np.float32(np.inf))] * 2  # 256 bins
    with_missing = values.copy()
    with_missing[0, 0] = np.nan
    g = np.linspace(-1.0, 1.0, 64)
    h = np.full(64, 0.25)
    for data in (values, with_missing):  # uint8 and uint16 codes
        bins = bin_matrix(data, edges, 256)
        for n_slots in (1, 2):
            slot = (np.arange(64) % (n_slots + 1) - 1).astype(np.int32)
            build_fixed_histograms(bins, slot, g, h, n_slots, 256, 32, 2.0**29)
            node_totals(slot, g, h, n_slots)
        route_rows(np.zeros(64, np.int32), bins, np.array([0]), np.array([1]), np.array([100]), np.array([True]), 256)
