"""Boolean (XOR) shares: AND, OR, arithmetic-to-boolean conversion (A2B) and boolean-to-arithmetic (B2A).

Constructions and leakage:
  * `and_words`: Beaver's trick over GF(2)^64: opens e = x XOR a, f = y XOR b with fresh uniform dealer words, so
    the opened words are uniform. 64 ANDs per word; each party sends 2 words per word ANDed.
  * `a2b`: the arithmetic shares x0 (party 0) and x1 (party 1) are each a boolean input of one party; their sum is
    computed by a Kogge-Stone parallel-prefix adder (Kogge & Stone 1973) on 64-bit words, as in ABY (Demmler,
    Schneider, Zohner, NDSS 2015) and CrypTen: 1 + 6 rounds, 12 word-ANDs per element. Opens only AND masks.
  * `b2a_bits` / `bit_injection`: with a dealer bit r given both as XOR bit and as ring element, open c = b XOR r
    (uniform) and compute b = c + r - 2·c·r locally (the daBit method, Rotaru & Wood, INDOCRYPT 2019).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from privboost.mpc.dealer import word_bits
from privboost.mpc.ring import DTYPE
from privboost.mpc.runtime import Party

_ONE = np.uint64(1)
_TOP = np.uint64(63)


def and_words(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """XOR share of x AND y for XOR-shared uint64 words (one round)."""
    x, y = np.broadcast_arrays(np.asarray(x, DTYPE), np.asarray(y, DTYPE))
    a, b, c = party.correlations.and_triples(x.shape)
    opened = party.open_bool(np.concatenate([(x ^ a).ravel(), (y ^ b).ravel()]))
    e, f = opened[: x.size].reshape(x.shape), opened[x.size:].reshape(x.shape)
    z = c ^ (e & b) ^ (f & a)
    return z ^ (e & f) if party.is_leader else z


def or_words(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """XOR share of x OR y = x ^ y ^ (x AND y) (one round)."""
    return x ^ y ^ and_words(party, x, y)


def not_words(party: Party, x: np.ndarray) -> np.ndarray:
    """XOR share of NOT x (party 0 flips its share)."""
    return ~x if party.is_leader else x.copy()


def a2b(party: Party, x: np.ndarray) -> np.ndarray:
    """XOR shares of the 64 bits of the arithmetic-shared x (Kogge-Stone adder over x0 + x1, 7 rounds)."""
    x = np.asarray(x, DTYPE)
    zero = np.zeros_like(x)
    own_first, own_second = (x, zero) if party.is_leader else (zero, x)
    generate = and_words(party, own_first, own_second)  # carry generated at bit i: x0_i AND x1_i
    propagate = x.copy()  # x0 XOR x1, shared as (x0, x1)
    original_propagate = propagate
    for shift in (1, 2, 4, 8, 16):
        s = np.uint64(shift)
        both = and_words(party, np.stack([propagate, propagate]), np.stack([generate << s, propagate << s]))
        generate, propagate = generate ^ both[0], both[1]
    generate = generate ^ and_words(party, propagate, generate << np.uint64(32))
    return original_propagate ^ (generate << _ONE)  # sum bit i = p_i XOR carry into i


_LANE = np.uint64(0xFFFFFFFF)
_ALL = (1 << 64) - 1


def _pack_lanes(x: np.ndarray) -> np.ndarray:
    """Two elements per word: element 2i in bits 0-31, element 2i+1 in bits 32-63 (low 32 bits of each)."""
    flat = np.asarray(x, DTYPE).ravel()
    if flat.size % 2:
        flat = np.append(flat, np.uint64(0))
    return (flat[0::2] & _LANE) | (flat[1::2] << np.uint64(32))


def _unpack_lanes(words: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(2 * words.size, DTYPE)
    out[0::2], out[1::2] = words & _LANE, words >> np.uint64(32)
    return out[: int(np.prod(shape, dtype=np.int64))].reshape(shape)


def _up(words: np.ndarray, shift: int) -> np.ndarray:
    """Every lane shifted up by ``shift`` bits, zeros shifted in (nothing crosses from lane 0 to lane 1)."""
    return (words << np.uint64(shift)) & np.uint64(_ALL ^ (((1 << shift) - 1) << 32))


def _down(words: np.ndarray, shift: int) -> np.ndarray:
    """Every lane shifted down by ``shift`` bits, zeros shifted in."""
    return (words >> np.uint64(shift)) & np.uint64(_ALL ^ (((1 << shift) - 1) << (32 - shift)))


def top_bit_low32(party: Party, x: np.ndarray, low: int, high: int) -> np.ndarray:
    """XOR shares of the one-hot of x's top set bit, moved down by ``low`` bits, one word per element, for an
    arithmetic-shared x with 2^low <= x < 2^high <= 2^32.

    The Kogge-Stone adder (as `a2b`) and the prefix-OR run on two 32-bit lanes per word (each party packs the low
    32 bits of its share: their sum mod 2^32 is x), so they exchange half the words of the 64-bit versions.
    """
    if not 0 <= low < high <= 32:
        raise ValueError(f"need 0 <= low < high <= 32, got {low} and {high}")
    x = np.asarray(x, DTYPE)
    packed = _pack_lanes(x)
    zero = np.zeros_like(packed)
    own_first, own_second = (packed, zero) if party.is_leader else (zero, packed)
    generate = and_words(party, own_first, own_second)
    propagate = packed
    for shift in (1, 2, 4, 8, 16):
        both = and_words(party, np.stack([propagate, propagate]),
                         np.stack([_up(generate, shift), _up(propagate, shift)]))
        generate, propagate = generate ^ both[0], both[1]
    in_range = np.uint64(((1 << high) - 1) * ((1 << 32) + 1))  # bits below `high` in both lanes
    spread = (packed ^ _up(generate, 1)) & in_range  # sum bit i = p_i XOR carry into i
    shift = 1
    while shift < high - low:  # ones from the top set bit down, over the positions that can hold it
        spread = or_words(party, spread, _down(spread, shift))
        shift *= 2
    return _unpack_lanes(spread ^ _down(spread, 1), x.shape) >> np.uint64(low)


_LOW63 = np.uint64((1 << 63) - 1)
_GROUP_STARTS = {span: np.uint64(sum(1 << i for i in range(0, 64, 2 * span))) for span in (1, 2, 4, 8, 16, 32)}


@njit(cache=True, boundscheck=False)
def _level_operands(generate, propagate, span, starts):  # pragma: no cover - compiled
    # the AND operands of one carry-tree level, ``span`` elements per word: element e of each group moved up by
    # e bits. An operand's bits sit at multiples of ``span`` (group starts and starts + span), so the elements of
    # a group land on disjoint bits and packing is linear over XOR shares.
    n = generate.size
    words = (n + span - 1) // span
    left = np.zeros(words, np.uint64)
    right = np.zeros(words, np.uint64)
    s = np.uint64(span)
    for i in range(n):
        g, p = generate[i], propagate[i]
        p_high = (p >> s) & starts
        shift = np.uint64(i % span)
        left[i // span] |= ((g & starts) | ((p & starts) << s)) << shift
        right[i // span] |= (p_high | (p_high << s)) << shift
    return left, right


@njit(cache=True, boundscheck=False)
def _level_update(both, generate, propagate, span, starts):  # pragma: no cover - compiled
    # unpack each element's ANDs and combine: G = G_high XOR (P_high AND G_low), P = P_high AND P_low (in place)
    s = np.uint64(span)
    for i in range(generate.size):
        b = both[i // span] >> np.uint64(i % span)
        generate[i] = ((generate[i] >> s) & starts) ^ (b & starts)
        propagate[i] = (b >> s) & starts


def msb(party: Party, x: np.ndarray) -> np.ndarray:
    """XOR-shared top bit (0/1 per element) of the arithmetic-shared x: 1 iff x < 0 in two's complement.

    Only the carry into bit 63 is needed, so instead of a full adder the (generate, propagate) pairs of bits 0..62
    are combined in a binary tree (the carry-lookahead tree of Brent & Kung, 1982); both ANDs of a level travel in
    one word. Level ``span`` uses only the bits at multiples of ``span``, so ``span`` elements share one word
    (`_level_operands`): a comparison costs 1 + 1 + 1/2 + ... + 1/32 ≈ 3 word-ANDs in 7 rounds, against a2b's 12.
    """
    x = np.asarray(x, DTYPE)
    zero = np.zeros_like(x)
    generate = and_words(party, *((x, zero) if party.is_leader else (zero, x))) & _LOW63  # x0_i AND x1_i
    top = (x >> _TOP) & _ONE  # x0_63 XOR x1_63
    propagate = x & _LOW63
    if party.is_leader:  # bit 63 becomes the identity of the carry operator: generate 0, propagate 1
        propagate |= np.uint64(1 << 63)
    generate, propagate = generate.reshape(-1), propagate.reshape(-1)
    for span in (1, 2, 4, 8, 16, 32):
        starts = _GROUP_STARTS[span]
        both = and_words(party, *_level_operands(generate, propagate, span, starts))
        _level_update(both, generate, propagate, span, starts)
    return top ^ (generate.reshape(x.shape) & _ONE)


def warm_up() -> None:
    """Load the compiled carry-tree kernels (from numba's cache) now rather than inside the first comparison."""
    words = np.arange(4, dtype=DTYPE)
    for span in (1, 2):
        _level_update(_level_operands(words, words, span, _GROUP_STARTS[span])[0], words.copy(), words.copy(), span,
                      _GROUP_STARTS[span])


def b2a_bits(party: Party, bits: np.ndarray) -> np.ndarray:
    """Arithmetic share of XOR-shared single bits (0/1 uint64 per element), one round of bits packed 64/word."""
    bits = np.asarray(bits, DTYPE)
    r_bool, r_arith = party.correlations.random_bits(bits.shape)
    c = party.open_bits(bits ^ r_bool)
    share = r_arith - (c * r_arith << _ONE)
    return share + c if party.is_leader else share


def bit_injection(party: Party, words: np.ndarray, count: int = 64) -> np.ndarray:
    """Arithmetic shares of the low ``count`` bits of XOR-shared words, in a new last axis (bit j at index j)."""
    words = np.asarray(words, DTYPE)
    r_words, r_arith = party.correlations.random_word_bits(words.shape, count)
    c = word_bits(party.open_bool(words ^ r_words), count)
    share = r_arith - (c * r_arith << _ONE)
    return share + c if party.is_leader else share
