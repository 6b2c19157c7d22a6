"""The analyst's side: combine the compute parties' shares of the finished trees into an XGBoost model.

Only the analyst ever holds both parties' shares of the trees. A node that did not split (its gain was not above
``gamma``, or an ancestor did not split) becomes a leaf whose value is that of its leftmost depth-D descendant: the
trainer kept all of its samples on that path, so that leaf's weight is the node's own weight. A split on a
categorical feature becomes an XGBoost categorical split whose category set is the one chosen code (it goes right).
"""

from __future__ import annotations

import numpy as np

from privboost.model import Tree, TreeEnsemble
from privboost.mpc.ring import decode_fixed
from privboost.secure.trainer import SecureParams, TreeShares


def reveal(shares0: list[TreeShares], shares1: list[TreeShares], frac_bits: int) -> list[dict]:
    """Plain trees from the two parties' shares: per tree, split/feature/threshold per level and leaf weights."""
    trees = []
    for a, b in zip(shares0, shares1, strict=True):
        trees.append({
            "split": [(x + y).astype(np.int64) for x, y in zip(a.split, b.split, strict=True)],
            "feature": [(x + y).astype(np.int64) for x, y in zip(a.feature, b.feature, strict=True)],
            "threshold": [(x + y).astype(np.uint32).view(np.float32) for x, y in
                          zip(a.threshold, b.threshold, strict=True)],
            "default_left": [(x + y).astype(np.int64) for x, y in zip(a.default_left, b.default_left, strict=True)],
            "leaves": decode_fixed(a.leaves + b.leaves, frac_bits).astype(np.float32),
        })
    return trees


def _build_tree(plain: dict, depth: int, categorical: np.ndarray) -> Tree:
    left, right, feature, threshold, default_left = [], [], [], [], []
    categories: dict[int, np.ndarray] = {}
    queue = [(0, 0)]  # (level, index in level), breadth first as XGBoost numbers nodes
    position = 0
    while position < len(queue):
        level, j = queue[position]
        position += 1
        if level < depth and plain["split"][level][j] == 1:
            left.append(len(queue))
            right.append(len(queue) + 1)
            queue += [(level + 1, 2 * j), (level + 1, 2 * j + 1)]
            feature.append(int(plain["feature"][level][j]))
            threshold.append(plain["threshold"][level][j])
            default_left.append(bool(plain["default_left"][level][j]))
            if categorical[feature[-1]]:
                categories[position - 1] = np.array([int(threshold[-1])], np.int64)
        else:
            left.append(-1)
            right.append(-1)
            feature.append(0)
            threshold.append(plain["leaves"][j << (depth - level)])
            default_left.append(False)
    is_categorical = np.zeros(len(left), bool)
    is_categorical[list(categories)] = True
    return Tree(np.array(left, np.int32), np.array(right, np.int32), np.array(feature, np.int32),
                np.array(threshold, np.float32), np.array(default_left, bool), is_categorical, categories)


def build_ensemble(plain_trees: list[dict], params: SecureParams, feature_names: list[str],
                   base_score: float, categorical: list[bool] | np.ndarray | None = None) -> TreeEnsemble:
    """An XGBoost-compatible ensemble (``TreeEnsemble``) from revealed trees and the revealed base score;
    ``categorical`` flags the categorical features (XGBoost feature type ``c``)."""
    flags = np.zeros(len(feature_names), bool) if categorical is None else np.asarray(categorical, bool)
    trees = [_build_tree(t, params.max_depth, flags) for t in plain_trees]
    outputs = params.outputs  # multi:softprob: round-major, one tree per class per round
    return TreeEnsemble(trees=trees, tree_group=(np.arange(len(trees)) % outputs).astype(np.int32),
                        feature_names=list(feature_names), feature_types=["c" if c else "float" for c in flags],
                        objective=params.objective, base_score=np.full(outputs, base_score, np.float32),
                        num_class=params.num_class)
