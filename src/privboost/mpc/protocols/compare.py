"""Comparisons and selection on arithmetic shares; results are arithmetic shares of 0/1.

Constructions and leakage:
  * `ltz` (x < 0): MSB extraction over XOR shares: the carry into bit 63 of x0 + x1 by a carry-lookahead tree
    (boolean.msb), then the top bit is converted back with a dealer daBit (boolean.b2a_bits). Exact for every x in
    Z_2^64 read as two's complement. 8 rounds; each party sends ~6 words + 1 bit per comparison. Leaks nothing
    (only uniformly masked values are opened).
  * `lt`, `le`, `gt`, `ge`: ltz of a difference; exact when the difference does not wrap, i.e. |x - y| < 2^63.
  * `eq`: party 0 holds a = d0 and party 1 holds b = -d1 for d = x - y, so x == y iff a == b iff NOT(a XOR b) is all
    ones, which a 6-round AND tree over the 64 bits decides (the usual 2PC equality test, e.g. ABY). Exact.
  * `select`: c·(x - y) + y with one Beaver product (c must be a shared 0/1).
"""

from __future__ import annotations

import numpy as np

from privboost.mpc.protocols.arithmetic import add_public, mul
from privboost.mpc.protocols.boolean import and_words, b2a_bits, msb
from privboost.mpc.ring import DTYPE
from privboost.mpc.runtime import Party

_ONE = np.uint64(1)


def ltz(party: Party, x: np.ndarray) -> np.ndarray:
    """Share of [x < 0] (0/1) for arithmetic-shared x (two's complement, exact)."""
    return b2a_bits(party, msb(party, x))


def lt(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of [x < y]; exact when |x - y| < 2^63."""
    return ltz(party, np.asarray(x, DTYPE) - np.asarray(y, DTYPE))


def gt(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of [x > y]; exact when |x - y| < 2^63."""
    return lt(party, y, x)


def le(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of [x <= y]; exact when |x - y| < 2^63."""
    return add_public(party, -gt(party, x, y), 1)


def ge(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of [x >= y]; exact when |x - y| < 2^63."""
    return add_public(party, -lt(party, x, y), 1)


def eq(party: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Share of [x == y] (exact for all ring elements; 7 rounds)."""
    d = np.asarray(x, DTYPE) - np.asarray(y, DTYPE)
    word = ~d if party.is_leader else -d  # XOR shares of NOT(d0 XOR -d1): all ones iff d == 0
    for shift in (32, 16, 8, 4, 2, 1):
        word = and_words(party, word, word >> np.uint64(shift))
    return b2a_bits(party, word & _ONE)


def select(party: Party, condition: np.ndarray, if_true: np.ndarray, if_false: np.ndarray) -> np.ndarray:
    """Share of condition ? if_true : if_false for a shared 0/1 condition (one Beaver product)."""
    if_true, if_false = np.asarray(if_true, DTYPE), np.asarray(if_false, DTYPE)
    return if_false + mul(party, condition, if_true - if_false)
