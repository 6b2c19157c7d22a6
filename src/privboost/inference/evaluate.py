"""Server-side evaluation of encrypted queries on an encrypted model (no key needed).

For a batch of queries the evaluator (1) decides every split of every tree at once by comparing the query's
order ciphertext of the split's feature with the split's threshold ciphertext (CLWW comparison, or integer
comparison of OPE ciphertexts), missing values taking the default direction; (2) walks all trees of all queries
in lock-step, level by level; (3) multiplies the Paillier ciphertexts of the reached leaves of each output
(homomorphic addition) and (4) packs up to ``slots_per_ciphertext`` scores into one ciphertext (Horner with
``2^SLOT_BITS`` shifts) so the client decrypts once per slot group instead of once per score.

What the evaluator learns is exactly what it computes: each query value's order relative to every threshold of
its feature (and, under ORE, the first differing bit), hence the path in every tree, and which values are missing.
It never sees a plaintext value, a leaf value or a score.
"""

from __future__ import annotations

from dataclasses import dataclass

import gmpy2
import numpy as np

from privboost.crypto.ore import ORE_CHUNK_ELEMENTS, ore_less_than
from privboost.crypto.paillier import PaillierPublicKey, add_ciphertexts, pack_ciphertexts, slots_per_ciphertext
from privboost.inference.format import SLOT_BITS, EncryptedModel


@dataclass
class PackedScores:
    """Encrypted scores of a batch: ``ciphertexts[i]`` packs ``slots[i]`` consecutive scores (query-major)."""

    ciphertexts: list[int]
    slots: list[int]


#: batches at least this large share the multiplications of common leaf pairs (smaller: plain loop)
PAIRWISE_MIN_QUERIES = 64


class CompiledModel:
    """An `EncryptedModel` prepared for repeated evaluation (ciphertexts as gmpy2 integers, tree depth known)."""

    def __init__(self, model: EncryptedModel) -> None:
        self.model = model
        self.nsquare = gmpy2.mpz(model.paillier_n) ** 2
        self.leaf_ciphertexts = [gmpy2.mpz(c) for c in model.leaf_ciphertexts]
        self.inner = np.flatnonzero(model.node_feature >= 0)
        self.inner_feature = model.node_feature[self.inner]
        self.inner_thresholds = model.thresholds[self.inner]
        self.depth = _max_depth(model)
        self.slots = slots_per_ciphertext(PaillierPublicKey(model.paillier_n), SLOT_BITS)
        self.trees_of_output = [np.flatnonzero(model.tree_output == k) for k in range(model.num_outputs)]

    def go_left(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Decision at every node for every query: bool (Q, N); leaves are False."""
        m = self.model
        q = values.shape[0]
        decision = np.zeros((q, m.num_nodes), dtype=bool)
        if self.inner.size == 0:
            return decision
        step = max(1, ORE_CHUNK_ELEMENTS // self.inner.size)
        for start in range(0, q, step):
            stop = min(q, start + step)
            chunk = values[start:stop, self.inner_feature]
            if m.scheme == "ore":
                less = ore_less_than(chunk, self.inner_thresholds[None])
            else:
                less = chunk < self.inner_thresholds[None]
            absent = missing[start:stop, self.inner_feature]
            decision[start:stop, self.inner] = np.where(absent, m.default_left[self.inner][None], less)
        return decision

    def reached_leaves(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Leaf slot reached in every tree by every query: int (Q, T)."""
        m = self.model
        decision = self.go_left(values, missing)
        q = values.shape[0]
        pos = np.broadcast_to(m.roots, (q, m.num_trees)).copy()
        rows = np.arange(q)[:, None]
        for _ in range(self.depth):
            inner = m.node_feature[pos] >= 0
            nxt = np.where(decision[rows, pos], m.left[pos], m.right[pos])
            pos = np.where(inner, nxt, pos)
        return m.leaf_slot[pos]

    def evaluate(self, values: np.ndarray, missing: np.ndarray) -> PackedScores:
        """Encrypted scores for a batch of encrypted queries (values already in model feature order)."""
        return self.scores_of_leaves(self.reached_leaves(values, missing))

    def scores_of_leaves(self, leaves: np.ndarray) -> PackedScores:
        """Homomorphic sums of the reached leaves (Q, T) per output, packed (the Paillier-heavy part)."""
        per_output = [self._sums(leaves[:, trees]) for trees in self.trees_of_output]
        scores = [sums[q] for q in range(leaves.shape[0]) for sums in per_output]
        packed, slots = [], []
        for start in range(0, len(scores), self.slots):
            group = scores[start:start + self.slots]
            packed.append(int(pack_ciphertexts(group, self.nsquare, SLOT_BITS)))
            slots.append(len(group))
        return PackedScores(packed, slots)

    def _sums(self, slots: np.ndarray) -> list:
        """Per query, the product mod n^2 of the leaf ciphertexts in its row of ``slots`` (Q, T).

        For a large batch, trees are combined pairwise, level by level, and each distinct pair of partial sums is
        multiplied once: queries that share leaves in neighbouring trees share the work. The products are the same
        numbers the row-by-row loop gives (multiplication mod n^2 is associative and commutative).
        """
        if slots.shape[0] < PAIRWISE_MIN_QUERIES or slots.shape[1] < 2:
            return [add_ciphertexts([self.leaf_ciphertexts[s] for s in row], self.nsquare) for row in slots]
        values = list(self.leaf_ciphertexts)  # level 0: partial sum id == leaf slot
        ids = slots.astype(np.int64)
        while ids.shape[1] > 1:
            if ids.shape[1] % 2:  # an odd column passes up unchanged, paired with "nothing" (id -1)
                ids = np.concatenate([ids, np.full((ids.shape[0], 1), -1, np.int64)], axis=1)
            width = len(values) + 1
            keys = ids[:, 0::2] * width + (ids[:, 1::2] + 1)  # one integer per (left, right) pair
            next_ids = np.empty(keys.shape, np.int64)
            next_values: list = []
            for column in range(keys.shape[1]):
                unique, inverse = np.unique(keys[:, column], return_inverse=True)
                base = len(next_values)
                for key in unique.tolist():
                    left, right = divmod(key, width)
                    next_values.append(values[left] if right == 0 else values[left] * values[right - 1] % self.nsquare)
                next_ids[:, column] = base + inverse
            values, ids = next_values, next_ids
        return [values[i] for i in ids[:, 0].tolist()]


def _max_depth(model: EncryptedModel) -> int:
    depth = np.zeros(model.num_nodes, dtype=np.int64)
    inner = np.flatnonzero(model.node_feature >= 0)
    for node in inner:  # children follow parents (validated), so one forward pass suffices
        depth[model.left[node]] = depth[model.right[node]] = depth[node] + 1
    return int(depth.max()) if depth.size else 0
