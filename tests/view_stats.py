"""Statistics for the MPC view tests: are uint64 words uniform, and do two samples share a distribution?

Shared by tests/test_mpc_views.py and tests/test_mpc_functions.py. Chi-square tests on byte values (per byte
position or pooled) and on bit-position frequencies, as far as the sample size allows, and a Bonferroni-corrected
collection of p-values that names the worst offender.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from privboost.mpc.ring import DTYPE

ALPHA = 1e-4
MIN_EXPECTED = 16  # smallest expected count per histogram cell for a chi-square test

_ROW_OFFSET = np.arange(8, dtype=np.int64) * 256


def _byte_rows(words: np.ndarray) -> np.ndarray:
    """8 x 256 histogram: row j counts the values of byte j (little-endian) over the words."""
    raw = np.ascontiguousarray(words, dtype=DTYPE).reshape(-1).view(np.uint8).reshape(-1, 8)
    return np.bincount((raw + _ROW_OFFSET).ravel(), minlength=8 * 256).reshape(8, 256)


def _bit_ones(words: np.ndarray) -> np.ndarray:
    """Number of words with bit j set, j = 0..63."""
    bits = np.unpackbits(np.ascontiguousarray(words, dtype=DTYPE).reshape(-1).view(np.uint8), bitorder="little")
    return bits.reshape(-1, 64).sum(axis=0)


def uniform_pvalues(words: np.ndarray, quick: bool = False) -> dict[str, float]:
    """p-values of 'these uint64 words are uniform': bytes per position, pooled bytes, bit positions (as far as the
    size allows: each histogram cell needs MIN_EXPECTED expected counts). ``quick``: only the first of these."""
    words = np.asarray(words, DTYPE).reshape(-1)
    n = words.size
    out: dict[str, float] = {}
    rows = _byte_rows(words)
    if n / 256 >= MIN_EXPECTED:  # every byte position separately: 8 x 255 dof
        expected = n / 256
        out["bytes_by_position"] = float(stats.chi2.sf(((rows - expected) ** 2 / expected).sum(), 8 * 255))
        if quick:
            return out
    if 8 * n / 256 >= MIN_EXPECTED:
        pooled, expected = rows.sum(axis=0), 8 * n / 256
        out["bytes"] = float(stats.chi2.sf(((pooled - expected) ** 2 / expected).sum(), 255))
    if n >= 16:
        z = (_bit_ones(words) - n / 2) / np.sqrt(n / 4)
        out["bits"] = float(stats.chi2.sf((z**2).sum(), 64))
    return out


def _two_sample_rows(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Pearson chi-square (statistic, dof) that the rows of histograms a and b (same row totals) are equal."""
    stat, dof = 0.0, 0
    for ra, rb in zip(np.atleast_2d(a), np.atleast_2d(b), strict=True):
        keep = (ra + rb) > 0
        ra, rb = ra[keep].astype(float), rb[keep].astype(float)
        if ra.size < 2:
            continue
        col = ra + rb
        ea, eb = col * ra.sum() / col.sum(), col * rb.sum() / col.sum()
        stat += float(((ra - ea) ** 2 / ea).sum() + ((rb - eb) ** 2 / eb).sum())
        dof += ra.size - 1
    return stat, dof


def same_distribution_pvalues(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """p-values of 'the words of a and of b come from the same distribution' (two-sample versions of the above)."""
    a, b = np.asarray(a, DTYPE).reshape(-1), np.asarray(b, DTYPE).reshape(-1)
    n = min(a.size, b.size)
    out: dict[str, float] = {}
    ra, rb = _byte_rows(a), _byte_rows(b)
    tests = {}
    if n / 256 >= MIN_EXPECTED / 2:
        tests["bytes_by_position"] = (ra, rb)
    if 8 * n / 256 >= MIN_EXPECTED / 2:
        tests["bytes"] = (ra.sum(axis=0), rb.sum(axis=0))
    for name, (ha, hb) in tests.items():
        stat, dof = _two_sample_rows(ha, hb)
        out[name] = float(stats.chi2.sf(stat, dof)) if dof else 1.0
    if n >= 16:
        pa, pb = _bit_ones(a) / a.size, _bit_ones(b) / b.size
        pooled = (pa * a.size + pb * b.size) / (a.size + b.size)
        var = pooled * (1 - pooled) * (1 / a.size + 1 / b.size)
        z = np.divide(pa - pb, np.sqrt(var), out=np.zeros(64), where=var > 0)
        out["bits"] = float(stats.chi2.sf((z**2).sum(), 64))
    return out


class PValues:
    """Collects named p-values; `check` applies the Bonferroni correction and names the worst offender."""

    def __init__(self) -> None:
        self.values: list[tuple[str, float]] = []

    def add(self, label: str, pvalues: dict[str, float]) -> None:
        self.values.extend((f"{label}: {name}", p) for name, p in pvalues.items())

    def worst(self) -> tuple[str, float]:
        return min(self.values, key=lambda item: item[1])

    def rejects(self, alpha: float = ALPHA) -> bool:
        return self.worst()[1] < alpha / len(self.values)

    def check(self, alpha: float = ALPHA) -> None:
        assert self.values, "nothing was tested"
        label, p = self.worst()
        assert not self.rejects(alpha), f"{label} has p = {p:.3g} < {alpha:g} / {len(self.values)} tests"
