"""Maximum and argmax over the last axis of a shared array, by a tree of comparisons.

Construction: the tournament (tree) argmax used throughout secure ML (e.g. SecureML, Mohassel & Zhang S&P 2017;
XORBoost's best-split search): neighbours are compared in pairs with `compare.ltz` (MSB extraction), the larger kept
with a multiplexer, ceil(log2(m)) levels; an odd one out at the end of a level goes up unchallenged (no padding).
The winner's one-hot is then built top-down from the kept comparison bits: a node's weight w splits into
w·c (right) and w − w·c (left), one product per comparison, so the one-hot costs m − 1 products (not m·log m)
and no index is ever opened. Ties go to the lowest index, as xgboost keeps the first best split it meets.

Leakage: none beyond the public shape (every level compares all pairs, whatever the values). Precondition: values
satisfy |x| < 2^62 - tie_tolerance (ring units), so no compared difference wraps.
"""

from __future__ import annotations

import numpy as np

from privboost.mpc.protocols.arithmetic import add_public, mul
from privboost.mpc.protocols.compare import ltz
from privboost.mpc.ring import DTYPE
from privboost.mpc.runtime import Party


def argmax(party: Party, x: np.ndarray, tie_tolerance: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(shares of max over the last axis with shape x.shape[:-1], shares of the winner's one-hot, x.shape).

    A later candidate wins only if it exceeds the earlier one by more than ``tie_tolerance`` ring units, so values
    that are equal up to fixed-point rounding noise resolve to the lowest index.
    """
    x = np.asarray(x, DTYPE)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError("argmax needs a non-empty last axis")
    values = x
    bits = []  # per level: shares of "the right one of each pair wins"
    while values.shape[-1] > 1:
        pairs = values.shape[-1] // 2
        left, right = values[..., 0:2 * pairs:2], values[..., 1:2 * pairs:2]
        right_wins = ltz(party, add_public(party, left - right, tie_tolerance))  # ties keep the lower index
        winners = left + mul(party, right_wins, right - left)
        values = np.concatenate([winners, values[..., 2 * pairs:]], axis=-1)  # an odd one out goes up as it is
        bits.append(right_wins)
    weights = party.public(np.ones((*x.shape[:-1], 1), DTYPE))
    for right_wins in reversed(bits):
        pairs = right_wins.shape[-1]
        to_right = mul(party, weights[..., :pairs], right_wins)
        below = np.empty((*x.shape[:-1], 2 * pairs), DTYPE)
        below[..., 0::2], below[..., 1::2] = weights[..., :pairs] - to_right, to_right
        weights = np.concatenate([below, weights[..., pairs:]], axis=-1)
    return values[..., 0], weights
