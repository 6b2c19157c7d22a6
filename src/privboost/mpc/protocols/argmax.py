"""Maximum and argmax over the last axis of a shared array, by a tree of comparisons.

Construction: the tournament (tree) argmax used throughout secure ML (e.g. SecureML, Mohassel & Zhang S&P 2017;
XORBoost's best-split search): candidates are compared in pairs with `compare.ltz` (MSB extraction), the larger kept
with a multiplexer, log2(m) levels. Alongside the value every position carries a shared weight that stays 1 only on
the winner's path, so the result is a shared one-hot vector of the winner (no index is ever opened).
Ties go to the lowest index, as xgboost keeps the first best split it meets.

Leakage: none beyond the public shape (every level compares all pairs, whatever the values). Precondition: values
satisfy |x| < 2^62 - tie_tolerance (ring units), so no compared difference wraps.
"""

from __future__ import annotations

import numpy as np

from privboost.mpc.protocols.arithmetic import add_public, mul
from privboost.mpc.protocols.compare import ltz
from privboost.mpc.ring import DTYPE, ring_constant
from privboost.mpc.runtime import Party

_PAD = ring_constant(-(1 << 62))  # below every admissible value: padding never wins


def argmax(party: Party, x: np.ndarray, tie_tolerance: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(shares of max over the last axis with shape x.shape[:-1], shares of the winner's one-hot, x.shape).

    A later candidate wins only if it exceeds the earlier one by more than ``tie_tolerance`` ring units, so values
    that are equal up to fixed-point rounding noise resolve to the lowest index.
    """
    x = np.asarray(x, DTYPE)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError("argmax needs a non-empty last axis")
    lead, m = x.shape[:-1], x.shape[-1]
    width = 1 << max(0, (m - 1).bit_length())
    values = np.full((*lead, width), _PAD if party.is_leader else np.uint64(0), DTYPE)
    values[..., :m] = x
    weights = np.zeros((*lead, width), DTYPE)
    if party.is_leader:
        weights[..., :m] = 1
    group = 1  # every group of `group` positions shares one candidate value
    while values.shape[-1] > 1:
        left, right = values[..., 0::2], values[..., 1::2]
        right_wins = ltz(party, add_public(party, left - right, tie_tolerance))  # ties keep the lower index
        w = weights.reshape(*lead, width // (2 * group), 2, group)
        wins = np.broadcast_to(right_wins[..., None], w[..., 0, :].shape).reshape(*lead, -1)
        half = right_wins.shape[-1]
        # one Beaver round for every multiplexer of this level: the new maximum is left + c·(right - left); the
        # left group's weights become (1 - c)·w_left and the right group's c·w_right
        products = mul(party, np.concatenate([right_wins, wins, wins], axis=-1),
                       np.concatenate([right - left, w[..., 0, :].reshape(*lead, -1),
                                       w[..., 1, :].reshape(*lead, -1)], axis=-1))
        values = left + products[..., :half]
        moved_left = products[..., half:half + wins.shape[-1]].reshape(w[..., 0, :].shape)
        kept_right = products[..., half + wins.shape[-1]:].reshape(w[..., 1, :].shape)
        weights = np.stack([w[..., 0, :] - moved_left, kept_right], axis=-2).reshape(*lead, width)
        group *= 2
    return values[..., 0], weights[..., :m]
