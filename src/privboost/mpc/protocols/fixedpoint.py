"""Fixed-point functions on arithmetic shares: reciprocal, division, exp(-t) and the logistic sigmoid.

Constructions:
  * `reciprocal`: Catrina & Saxena ("Secure computation with fixed-point numbers", FC 2010): normalise x into
    [0.5, 1) by a shared power of two found from x's bit decomposition (A2B, prefix-OR, bit injection), start
    Newton-Raphson from the linear approximation 2.9142 - 2·x (relative error <= 0.0858), iterate
    y <- y·(2 - x·y) (the error squares each time: 3 iterations reach 3e-9), undo the normalisation.
    Domain: 2^-f <= x < 2^(max_bits - f). Bound (tested): |r - 1/x| <= 2^-f + 2^-20 / x.
  * `truncate_exact`: floor(x / 2^d) with no error: the probabilistic truncation's borrow bit
    [c_lo < r_lo] (public low bits of the opened value against the mask's shared low bits) by one `ltz`.
  * `divide`: n · reciprocal(d), the reciprocal kept at f + 8 fractional bits.
    Bound (tested): |q - n/d| <= 2^-f + |n|·2^-(f+8) + 2^-20·|n|/d.
  * `exp_neg`: exponentiation by bit decomposition (as in Aly & Smart, "Benchmarking privacy preserving scientific
    operations", ACNS 2019, for 2^x): with t = sum_j b_j 2^(j-f), e^-t = prod_j (1 + b_j·(e^(-2^(j-f)) - 1)); the bits
    come from A2B + bit injection, the 63 factors are multiplied in a 6-level tree at 28 fractional bits.
    Domain: t >= 0 (any magnitude). Bound (tested): |r - e^-t| <= 2^-f + 2^-22.
  * `sigmoid`: sigma(x) = 1 - sigma(-x) reduces to t = |x| >= 0 (one comparison); sigma(-t) = e^-t / (1 + e^-t)
    with the Newton-Raphson reciprocal on [1, 2] (no normalisation needed); the sign selects sigma or 1 - sigma.
    Domain: |x| < 2^(62 - f). Bound (tested): |r - sigma(x)| <= 2^-f + 2^-22.

Leakage: none; every opened value is a Beaver/truncation/daBit masked value. Preconditions on the (secret) inputs
cannot be checked and are the caller's to guarantee.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from privboost.mpc.protocols.arithmetic import add_public, mul, truncate, truncate_with_borrow
from privboost.mpc.protocols.boolean import a2b, bit_injection, or_words, top_bit_low32
from privboost.mpc.protocols.boolean import warm_up as boolean_warm_up
from privboost.mpc.protocols.compare import ltz
from privboost.mpc.ring import DTYPE, SAFE_MAGNITUDE_BITS, encode_fixed, ring_constant
from privboost.mpc.runtime import Party

#: fractional bits of the intermediate values of exp_neg and sigmoid
INTERNAL_BITS = 28
#: default bound on the reciprocal's input: x < 2^(38 - f) (2^22 = 4.2 million at f = 16)
DEFAULT_MAX_BITS = 38
#: extra fractional bits of the reciprocal inside `divide`
DIVISION_EXTRA_BITS = 8
_NR_START = 2.9142  # Catrina-Saxena: 1/x ~ 2.9142 - 2x on [0.5, 1], max relative error 0.0858
_NR_ITERATIONS = 3


def _newton_reciprocal(party: Party, x: np.ndarray, bits: int) -> np.ndarray:
    """Shares of 1/x at ``bits`` fractional bits for x in [0.5, 1] encoded with ``bits`` fractional bits."""
    two = encode_fixed(2.0, bits)
    y = add_public(party, -(x << np.uint64(1)), encode_fixed(_NR_START, bits))
    for _ in range(_NR_ITERATIONS):
        xy = truncate(party, mul(party, x, y), bits)
        y = truncate(party, mul(party, y, add_public(party, -xy, two)), bits)
    return y


@njit(cache=True, boundscheck=False)
def _weighted_bits(c, r_bits, width, leader):  # pragma: no cover - compiled
    # sum_j r_j·w_j·(1 − 2c_j) (+ sum_j c_j·w_j for the leader), w_j = 2^(width-1-j), mod 2^64, per element
    out = np.empty(c.size, np.uint64)
    one = np.uint64(1)
    for i in range(c.size):
        word = c[i]
        acc = np.uint64(0)
        for j in range(width):
            weight = one << np.uint64(width - 1 - j)
            if (word >> np.uint64(j)) & one:
                acc -= r_bits[i, j] * weight  # w_j·(1 − 2) = −w_j
                if leader:
                    acc += weight
            else:
                acc += r_bits[i, j] * weight
        out[i] = acc
    return out


def _msb_scale(party: Party, one_hot: np.ndarray, width: int) -> np.ndarray:
    """Arithmetic shares of sum_j b_j·2^(width-1-j) for XOR-shared words b (bits >= width are 0).

    Bit injection (daBits) fused with the public weights: with r the dealer's random word, c = b XOR r opened and
    r_j arithmetic-shared, b_j = c_j + r_j − 2·c_j·r_j, so the weighted sum is sum_j r_j·w_j·(1 − 2c_j) plus the
    public sum_j c_j·w_j (added by party 0) — one compiled pass over the bits, no per-bit arrays.
    """
    words = np.asarray(one_hot, DTYPE)
    r_words, r_bits = party.correlations.random_word_bits(words.shape, width)
    c = party.open_bool(words ^ r_words)
    share = _weighted_bits(np.ascontiguousarray(c).reshape(-1), np.ascontiguousarray(r_bits).reshape(-1, width),
                           width, party.is_leader)
    return share.reshape(words.shape)


def warm_up() -> None:
    """Load the compiled kernels of comparisons and reciprocals (numba's cache) now, not inside the first call."""
    boolean_warm_up()
    _weighted_bits(np.zeros(2, DTYPE), np.zeros((2, 3), DTYPE), 3, True)


def reciprocal(party: Party, x: np.ndarray, max_bits: int = DEFAULT_MAX_BITS,
               out_bits: int | None = None, min_bits: int = 0) -> np.ndarray:
    """Shares of 1/x at ``out_bits`` fractional bits (default f) for fixed-point x, 2^-f <= x < 2^(max_bits - f).

    A caller that knows x >= 2^(min_bits - f) too says so: only the bit positions min_bits .. max_bits - 1 can
    hold x's top bit, so the normalising power of two costs that many bit injections instead of max_bits, and for
    max_bits <= 32 the bit decomposition and prefix-OR run two elements per word (`boolean.top_bit_low32`).
    """
    f = party.frac_bits
    out_bits = f if out_bits is None else out_bits
    # R <= 2^(internal+1), c < 2^max_bits: R·c < 2^62; Newton's products x·y need 2·internal + 2 < 62 bits
    internal = min(SAFE_MAGNITUDE_BITS - max_bits - 1, SAFE_MAGNITUDE_BITS // 2 - 1)
    if internal < 8 or internal + max_bits - f - out_bits < 1:
        raise ValueError(f"max_bits={max_bits} and out_bits={out_bits} leave too little precision "
                         f"with {f} fractional bits")
    if not 0 <= min_bits < max_bits:
        raise ValueError(f"need 0 <= min_bits < max_bits, got {min_bits} and {max_bits}")
    x = np.asarray(x, DTYPE)
    if max_bits <= 32:
        top = top_bit_low32(party, x, min_bits, max_bits)
    else:
        spread = a2b(party, x) & np.uint64((1 << max_bits) - 1)  # bits >= max_bits are 0
        shift = 1
        while shift < max_bits - min_bits:  # ones from the top set bit down, over the positions that can hold it
            spread = or_words(party, spread, spread >> np.uint64(shift))
            shift *= 2
        top = (spread ^ (spread >> np.uint64(1))) >> np.uint64(min_bits)  # x's top bit, at position k - min_bits
    scale = _msb_scale(party, top, max_bits - min_bits)  # 2^(max_bits - 1 - k)
    product = mul(party, x, scale)  # in [2^(max_bits-1), 2^max_bits)
    drop = max_bits - internal  # to [0.5, 1) at `internal` bits: a truncation, or an exact shift for small x
    normalised = truncate(party, product, drop) if drop > 0 else product << np.uint64(-drop)
    inverse = _newton_reciprocal(party, normalised, internal)
    return truncate(party, mul(party, inverse, scale), internal + max_bits - f - out_bits)


def truncate_exact(party: Party, x: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Share of floor(x / 2^bits) exactly (signed x, |x| < 2^62): `truncate` minus its borrow bit, which one
    comparison of the public low bits of the opened value with the shared low bits of the mask decides (the
    dealer-assisted exact variant of the probabilistic truncation; Escudero et al., CRYPTO 2020)."""
    rounded, low_difference = truncate_with_borrow(party, x, bits)
    return rounded - ltz(party, low_difference)


def divide(party: Party, numerator: np.ndarray, denominator: np.ndarray, max_bits: int = DEFAULT_MAX_BITS,
           extra_bits: int = DIVISION_EXTRA_BITS, min_bits: int = 0) -> np.ndarray:
    """Shares of numerator / denominator (fixed point) for a positive denominator in reciprocal's domain
    (2^(min_bits - f) <= denominator < 2^(max_bits - f)).

    The reciprocal carries ``extra_bits`` more fractional bits so a large numerator keeps its precision; requires
    |n/d|·2^(2f + extra_bits) + |n|·2^f < 2^62 (the reciprocal may be rounded up by one unit).
    """
    bits = party.frac_bits + extra_bits
    return truncate(party, mul(party, numerator, reciprocal(party, denominator, max_bits, bits, min_bits)), bits)


def _exp_neg_internal(party: Party, t: np.ndarray) -> np.ndarray:
    """Shares of e^-t at INTERNAL_BITS fractional bits, t >= 0 at the party's fractional bits."""
    f, bits = party.frac_bits, INTERNAL_BITS
    t_bits = bit_injection(party, a2b(party, np.asarray(t, DTYPE)), 63)
    factors = np.array([round(math.exp(-math.ldexp(1.0, j - f)) * 2**bits) - 2**bits for j in range(63)],
                       dtype=np.int64).view(DTYPE)
    terms = add_public(party, t_bits * factors, ring_constant(1 << bits))  # 1 + b_j (e^(-2^(j-f)) - 1)
    while terms.shape[-1] > 1:
        if terms.shape[-1] % 2:
            terms = np.concatenate([terms, party.public(np.full((*terms.shape[:-1], 1), 1 << bits, DTYPE))], -1)
        terms = truncate(party, mul(party, terms[..., 0::2], terms[..., 1::2]), bits)
    return terms[..., 0]


def exp_neg(party: Party, t: np.ndarray) -> np.ndarray:
    """Shares of e^-t (fixed point) for fixed-point t >= 0."""
    return truncate(party, _exp_neg_internal(party, t), INTERNAL_BITS - party.frac_bits)


def sigmoid(party: Party, x: np.ndarray) -> np.ndarray:
    """Shares of 1 / (1 + e^-x) (fixed point) for fixed-point x with |x| < 2^(62 - f)."""
    f, bits = party.frac_bits, INTERNAL_BITS
    x = np.asarray(x, DTYPE)
    negative = ltz(party, x)
    t = x - (mul(party, negative, x) << np.uint64(1))  # |x|
    e = _exp_neg_internal(party, t)  # in (0, 1]
    half_z = add_public(party, e, ring_constant(1 << bits))  # 1 + e read with bits+1 fractional bits: z/2
    inv_half_z = _newton_reciprocal(party, half_z, bits + 1)  # 2/z at bits+1 bits = 1/z at bits+2 bits
    low = truncate(party, mul(party, e, inv_half_z), 2 * bits + 2 - f)  # sigma(-|x|) at f bits
    high = add_public(party, -low, ring_constant(1 << f))
    return high + mul(party, negative, low - high)
