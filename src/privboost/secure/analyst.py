"""The analyst's side: combine the compute parties' shares of the finished trees into an XGBoost model.

Only the analyst ever holds both parties' shares of the trees. A node that did not split (its gain was not above
``gamma``, or an ancestor did not split) becomes a leaf whose value is that of its leftmost depth-D descendant: the
trainer kept all of its samples on that path, so that leaf's weight is the node's own weight.
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
            "leaves": decode_fixed(a.leaves + b.leaves, frac_bits).astype(np.float32),
        })
    return trees


def _build_tree(plain: dict, depth: int) -> Tree:
    left, right, feature, threshold = [], [], [], []
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
        else:
            left.append(-1)
            right.append(-1)
            feature.append(0)
            threshold.append(plain["leaves"][j << (depth - level)])
    count = len(left)
    return Tree(np.array(left, np.int32), np.array(right, np.int32), np.array(feature, np.int32),
                np.array(threshold, np.float32), np.zeros(count, bool), np.zeros(count, bool))


def build_ensemble(plain_trees: list[dict], params: SecureParams, feature_names: list[str],
                   base_score: float) -> TreeEnsemble:
    """An XGBoost-compatible ensemble (``TreeEnsemble``) from revealed trees and the revealed base score."""
    trees = [_build_tree(t, params.max_depth) for t in plain_trees]
    return TreeEnsemble(trees=trees, tree_group=np.zeros(len(trees), np.int32), feature_names=list(feature_names),
                        feature_types=["float"] * len(feature_names), objective=params.objective,
                        base_score=np.array([base_score], np.float32))
