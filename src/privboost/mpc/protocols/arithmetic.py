"""Arithmetic on additive shares mod 2^64: local linear ops, Beaver products, matrix products, truncation.

Constructions and leakage:
  * add/sub/public constants/prefix sums: local, nothing is sent.
  * `mul`: Beaver (CRYPTO 1991). Opens e = x - a and f = y - b; a, b are fresh uniform dealer masks, so both
    opened values are uniform and independent of x, y. Each party sends 2 words per element.
  * `matmul`: matrix Beaver triples (U, V, W = U·V) as in SecureML (Mohassel & Zhang, S&P 2017); opens X - U, Y - V.
  * `share_fixed_operand` + `matmul_fixed_t`: SecureML's reused mask for a fixed operand X (n×m). X - U is opened
    once; each product X^T·Y then opens only F = Y - V with a *fresh* V (n×k) and uses W = U^T·V. Reuse is secure
    because E = X - U is a single one-time-pad opening of X, and every later opening F is padded by an independent
    V; the pair (E, F_1, F_2, ...) is jointly uniform. Reusing a V (or opening two different X under one U)
    would leak differences, so the API never does either. `precompute_products` moves the input-independent half
    E^T·V_p of future products to an offline phase: one V for all of them, split by columns (its columns are
    independent uniform masks, so each product still gets fresh ones), so E and the dealer's U are read once for
    the batch instead of once per product (the correlations are fetched in the same order either way).
  * `truncate`: dealer-assisted probabilistic truncation with the mask's top bit (Escudero, Ghosh, Keller,
    Rachuri, Scholl, CRYPTO 2020; Dalskov, Escudero, Keller, PETS 2020). For |x| < 2^62 it returns
    floor(x / 2^d) or floor(x / 2^d) + 1 (error below one unit in the last place), never a wrap-around error.
    It opens c = x + 2^62 + r with r uniform on Z_2^64, so c is uniform. The one-unit error is the borrow
    [c mod 2^d < r mod 2^d]; `protocols.fixedpoint.truncate_exact` removes it with one comparison.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from privboost.mpc.kernels import matmul_nn, matmul_tn
from privboost.mpc.ring import DTYPE, SAFE_MAGNITUDE_BITS, as_ring, encode_fixed, ring_constant
from privboost.mpc.runtime import Party

_TOP = np.uint64(63)
_OFFSET = ring_constant(1 << SAFE_MAGNITUDE_BITS)


def add_public(party: Party, x: np.ndarray, constant: np.ndarray | int) -> np.ndarray:
    """Share of x + c for a public ring constant/array c (party 0 adds it)."""
    return x + as_ring(constant) if party.is_leader else x + np.zeros_like(as_ring(constant))


def mul_public(x: np.ndarray, constant: np.ndarray | int) -> np.ndarray:
    """Share of x * c for a public integer c (or array), mod 2^64; no truncation."""
    c = as_ring(constant) if not isinstance(constant, int) else ring_constant(constant)
    return x * c


def prefix_sum(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Share of the inclusive prefix sums of x along ``axis`` (local: sharing is linear)."""
    return np.cumsum(x, axis=axis, dtype=DTYPE)


def mul(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of x*y mod 2^64, elementwise (Beaver triple, one round); fixed-point inputs need `truncate` after."""
    x, y = np.broadcast_arrays(np.asarray(x, DTYPE), np.asarray(y, DTYPE))
    a, b, c = party.correlations.beaver(x.shape)
    e, f = party.open_many(x - a, y - b)
    z = c + e * b + f * a
    return z + e * f if party.is_leader else z


def truncate(party: Party, x: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Share of x / 2^bits (signed, bits defaults to frac_bits), error < 1 ulp; requires |x| < 2^62."""
    return truncate_with_borrow(party, x, bits)[0]


def truncate_with_borrow(party: Party, x: np.ndarray,
                         bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(`truncate`'s share of floor(x / 2^bits) + b, the public low bits c_lo and shares of the mask's low bits
    r_lo packed as c_lo − r_lo) where the unknown b = [c_lo < r_lo] is the borrow that makes the result exact;
    `protocols.fixedpoint.truncate_exact` subtracts it with one comparison."""
    bits = party.frac_bits if bits is None else bits
    if not 0 < bits <= SAFE_MAGNITUDE_BITS:
        raise ValueError(f"can truncate by 1..{SAFE_MAGNITUDE_BITS} bits, not {bits}")
    x = np.asarray(x, DTYPE)
    r, r_hi, r_msb = party.correlations.trunc_pairs(x.shape, bits)
    shifted = add_public(party, x, _OFFSET)  # now in [0, 2^63)
    c = party.open(shifted + r)
    c_hi, not_c_msb = c >> np.uint64(bits), (c >> _TOP) ^ np.uint64(1)
    overflow = r_msb * not_c_msb  # x + r wrapped mod 2^64 iff r's top bit is set and c's is not
    out = overflow * ring_constant(1 << (64 - bits)) - r_hi
    low_difference = add_public(party, -(r - (r_hi << np.uint64(bits))), c & ring_constant((1 << bits) - 1))
    return add_public(party, out, c_hi - ring_constant(1 << (SAFE_MAGNITUDE_BITS - bits))), low_difference


def mul_fixed(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of the fixed-point product x*y (Beaver product, then truncation by frac_bits)."""
    return truncate(party, mul(party, x, y))


def scale_fixed(party: Party, x: np.ndarray, factor: float, bits: int | None = None) -> np.ndarray:
    """Share of x * factor for a public real factor (encoded with ``bits`` fractional bits, then truncated)."""
    bits = party.frac_bits if bits is None else bits
    return truncate(party, x * encode_fixed(factor, bits), bits)


def matmul(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of X·Y mod 2^64 for X (n×m), Y (m×k), with a matrix Beaver triple (one round)."""
    x, y = np.asarray(x, DTYPE), np.asarray(y, DTYPE)
    n, m = x.shape
    if y.shape[0] != m:
        raise ValueError(f"cannot multiply {x.shape} by {y.shape}")
    u, v, w = party.correlations.matmul_triple(n, m, y.shape[1])
    e, f = party.open_many(x - u, y - v)
    z = w + matmul_nn(e, v) + matmul_nn(u, f)
    return z + matmul_nn(e, f) if party.is_leader else z


@dataclass
class FixedOperand:
    """A shared matrix X (n×m) whose masked opening E = X - U is reused for many products X^T·Y.

    ``left`` is this party's reshare of X that pairs with E (party 0: E + U_0, party 1: U_1), ``opened`` is E;
    ``prepared`` holds input-independent halves of future products made by `precompute_products`.
    """

    handle: int
    opened: np.ndarray
    left: np.ndarray
    prepared: deque = field(default_factory=deque)

    @property
    def shape(self) -> tuple[int, int]:
        """(n, m) of X."""
        return self.opened.shape


def share_fixed_operand(party: Party, x: np.ndarray, consume: bool = False) -> FixedOperand:
    """Open X - U once for a shared X (n×m); the result serves any number of `matmul_fixed_t` products.

    This party's share of U is a seed stream, expanded twice straight into one buffer (to mask X, then to form
    ``left``) and never held on its own. With ``consume=True`` the caller's ``x`` (a contiguous uint64 array) is
    that buffer, so a large operand costs two matrices of memory at the peak (the buffer and E) instead of three.
    """
    x = np.asarray(x, DTYPE)
    n, m = x.shape
    handle, mask = party.correlations.fixed_mask(n, m)
    reuse = consume and x.flags.writeable and x.flags.c_contiguous
    masked = x if reuse else np.array(x, dtype=DTYPE, order="C")
    mask.add_into(masked, subtract=True)  # X_p - U_p
    opened = party.open(masked)  # E = X - U
    left = masked  # now this party's reshare of X paired with E: party 0 E + U_0, party 1 U_1
    if party.is_leader:
        np.copyto(left, opened)
    else:
        left.fill(0)
    mask.add_into(left)
    return FixedOperand(handle, opened, left)


def precompute_products(party: Party, fixed: FixedOperand, widths: Sequence[int]) -> None:
    """Offline phase for future products X^T·Y with ``widths[i]`` columns each, in that order: fetch one (V, W)
    for all of them and compute E^T·V_p + W_p now, in one pass over E (split by columns afterwards).

    This half of each product does not depend on the right operand, so it can run before the data is there
    (both parties must call this identically, as every correlation request is ordered).
    """
    widths = [int(k) for k in widths]
    if any(k < 1 for k in widths):
        raise ValueError(f"product widths must be positive, got {widths}")
    if not widths:
        return
    v, w = party.correlations.fixed_product(fixed.handle, sum(widths))
    offline = matmul_tn(fixed.opened, v) + w
    start = 0
    for k in widths:
        columns = slice(start, start + k)
        fixed.prepared.append((np.ascontiguousarray(v[:, columns]), np.ascontiguousarray(offline[:, columns])))
        start += k


def matmul_fixed_t(party: Party, fixed: FixedOperand, y: np.ndarray) -> np.ndarray:
    """Share of X^T·Y (m×k) for the fixed operand X (n×m) and a shared Y (n×k); opens only Y - V (one round).

    With E = X - U public, F = Y - V public and X = left_0 + left_1:  X^T·Y = sum_p (left_p^T·F + E^T·V_p + W_p).
    Uses a precomputed (V, E^T·V_p + W_p) if `precompute_products` made one for this width.
    """
    y = np.asarray(y, DTYPE)
    if y.ndim != 2 or y.shape[0] != fixed.shape[0]:
        raise ValueError(f"right operand must have {fixed.shape[0]} rows, got shape {y.shape}")
    if fixed.prepared:
        v, offline = fixed.prepared.popleft()
        if v.shape != y.shape:
            raise ValueError(f"the next precomputed product has {v.shape[1]} columns, the operand {y.shape[1]}")
        return matmul_tn(fixed.left, party.open(y - v)) + offline
    v, w = party.correlations.fixed_product(fixed.handle, y.shape[1])
    f = party.open(y - v)
    return matmul_tn(fixed.left, f, fixed.opened, v) + w


def matmul_fixed(party: Party, fixed: FixedOperand, z: np.ndarray) -> np.ndarray:
    """Share of X·Z (n×k) for the fixed operand X (n×m) and a shared Z (m×k); opens only Z - V (one round).

    The same reused-mask construction as `matmul_fixed_t`: X·Z = sum_p (left_p·F + E·V_p + W_p), W = U·V.
    """
    z = np.asarray(z, DTYPE)
    if z.ndim != 2 or z.shape[0] != fixed.shape[1]:
        raise ValueError(f"right operand must have {fixed.shape[1]} rows, got shape {z.shape}")
    v, w = party.correlations.fixed_product_nn(fixed.handle, z.shape[1])
    f = party.open(z - v)
    return matmul_nn(fixed.left, f) + matmul_nn(fixed.opened, v) + w
