"""Routing every sample through a level's chosen splits without revealing any path.

Per node the trainer holds a shared one-hot of the chosen candidate (`candidates`). Instead of summing a per-slot
pattern over every feature (X·Z: n·F·slots work, or one secret shuffle per feature on the shuffle route), the
router first *selects* each sample's slot index in the chosen feature, then compares it with the chosen bin:

1. the n × F matrix of slot indices S is shared once as a fixed operand (SecureML's reused-mask matrix triples,
   `protocols.arithmetic.matmul_fixed`): per level, S·Φ for the shared feature one-hot Φ (F × nodes) gives every
   sample's slot in each node's chosen feature, opening only Φ − V (F × nodes words);
2. comparisons of that slot s with the chosen bin t (`protocols.compare`): [s < t], [s = t] and [s = missing];
   the go-left bit is their combination by the chosen candidate's kind (shared 0/1 selectors per node):
   forward [s <= t], backward [s < t] + [s = missing], category 1 − [s = t], category-and-missing
   1 − [s = t] − [s = missing]. Kinds that the public layout does not contain cost nothing: with only numerical
   features and no missing values it is one comparison per (sample, node).

Leakage: none (only uniformly masked values are opened); every message size depends only on n, F and the level.
"""

from __future__ import annotations

import numpy as np

from privboost.mpc.protocols.arithmetic import add_public, matmul_fixed, mul, share_fixed_operand
from privboost.mpc.protocols.compare import eq, ltz
from privboost.mpc.ring import DTYPE
from privboost.mpc.runtime import Party
from privboost.secure.candidates import BACKWARD, CATEGORY, CATEGORY_AND_MISSING, FORWARD, CandidateLayout


def slot_indices_of_onehot(onehot: np.ndarray, n_features: int, slots: int) -> np.ndarray:
    """Shares of each sample's slot index per feature (n × F) from shares of the one-hot matrix (n × F·slots)."""
    n = onehot.shape[0]
    weights = np.arange(slots, dtype=DTYPE)
    out = np.empty((n, n_features), DTYPE)
    step = max(1, (1 << 22) // max(1, n_features * slots))  # rows per chunk: bounded temporaries
    for start in range(0, n, step):
        block = onehot[start:start + step].reshape(-1, n_features, slots)
        out[start:start + step] = (block * weights).sum(axis=-1, dtype=DTYPE)
    return out


class Router:
    """Go-left bits of every sample for a level's chosen splits (see the module docstring)."""

    def __init__(self, party: Party, slot_indices: np.ndarray, layout: CandidateLayout) -> None:
        self.layout = layout
        self.fixed = share_fixed_operand(party, np.array(slot_indices, DTYPE))
        self.kinds = set(layout.kind.tolist())

    def go_left(self, party: Party, selection: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Shares (0/1) of "sample i goes left at node j", n × nodes; a node that does not split (``ok`` = 0)
        keeps every sample on its left path."""
        layout = self.layout
        chosen_feature = layout.feature_onehot(selection)  # (nodes, F)
        slot = matmul_fixed(party, self.fixed, np.ascontiguousarray(chosen_feature.T))  # n × nodes
        chosen_bin = (selection * layout.bin.astype(DTYPE)).sum(axis=1, dtype=DTYPE)  # (nodes,)
        if self.kinds == {FORWARD}:
            left = add_public(party, -ltz(party, chosen_bin - slot), 1)  # [s <= t] = 1 - [t - s < 0]
        else:
            left = self._combine(party, selection, slot, chosen_bin)
        # a node that does not split sends everyone left: left' = ok·(left - 1) + 1
        kept = mul(party, np.broadcast_to(ok, left.shape), add_public(party, left, -1))
        return add_public(party, kept, 1)

    def _combine(self, party: Party, selection: np.ndarray, slot: np.ndarray, chosen_bin: np.ndarray) -> np.ndarray:
        layout = self.layout
        kind = {k: (selection * (layout.kind == k).astype(DTYPE)).sum(axis=1, dtype=DTYPE) for k in range(4)}
        needs_missing = bool(self.kinds & {BACKWARD, CATEGORY_AND_MISSING})
        count = slot.size
        differences = [slot - chosen_bin, slot - chosen_bin]
        if needs_missing:
            differences.append(add_public(party, slot, -layout.max_bin))
        tested = np.concatenate([d.ravel() for d in differences])
        below = ltz(party, tested[:count]).reshape(slot.shape)
        equal = eq(party, tested[count:], np.zeros(tested.size - count, DTYPE))
        at_bin = equal[:count].reshape(slot.shape)
        missing = equal[count:].reshape(slot.shape) if needs_missing else np.zeros_like(slot)
        # left = [s<t]·(fwd + bwd) + [s=t]·(fwd − cat − cat&missing) + [s=missing]·(bwd − cat&missing)
        #        + cat + cat&missing
        scale_below = kind[FORWARD] + kind[BACKWARD]
        scale_at = kind[FORWARD] - kind[CATEGORY] - kind[CATEGORY_AND_MISSING]
        scale_missing = kind[BACKWARD] - kind[CATEGORY_AND_MISSING]
        products = mul(party, np.concatenate([below, at_bin, missing], axis=1),
                       np.concatenate([np.broadcast_to(s, slot.shape) for s in (scale_below, scale_at, scale_missing)],
                                      axis=1))
        nodes = slot.shape[1]
        total = products[:, :nodes] + products[:, nodes:2 * nodes] + products[:, 2 * nodes:]
        return total + kind[CATEGORY] + kind[CATEGORY_AND_MISSING]
