"""The aggregator of federated training: grows every tree level by level from securely summed histograms.

Per tree level there is one secure-aggregation round (two message exchanges: masked vectors in, unmasking shares
in). Every site sends fixed-point gradient/hessian histograms of the nodes being split; the aggregator recovers
only their sum over sites, finds the best split of every node exactly as XGBoost's ``hist`` method does
(`privboost.federated.splits`), and sends the splits back with the next round's request; the sites route their
rows themselves. Histogram subtraction: sites build only the smaller child of every split node and the aggregator
derives its sibling from the parent's summed histogram — exactly, since fixed-point sums are integers mod 2^64.
Before the first tree, one round sums the sites' counts on the public sketch grid (`privboost.federated.sketch`)
with the label sum and row count, giving the global bin edges and the base score (the pooled label mean).

Leakage (semi-honest aggregator, see `privboost.federated.secagg` for collusion bounds): the aggregator learns the
pooled per-feature value histogram at sketch resolution, the pooled label mean and row count, and per tree level
the pooled gradient/hessian histogram of every node being split (which determines the model), plus which sites
answered each round. It never sees a single site's counts, histograms, rows, labels or margins.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from privboost.federated import sketch
from privboost.federated.secagg import SecAggAggregator, SecAggConfig
from privboost.federated.site import OBJECTIVES
from privboost.federated.splits import TreeParams, best_splits, leaf_weights
from privboost.model import Tree, TreeEnsemble
from privboost.mpc.ring import DTYPE, SAFE_MAGNITUDE_BITS, decode_fixed

Progress = Callable[[dict], None]
SKETCH_FRAC_BITS = 16  # label sums in the sketch round


class FederatedError(RuntimeError):
    """Training cannot go on (too few sites, inconsistent schemas, a failed aggregation round)."""


class Channel(Protocol):
    """How the aggregator reaches the sites (Flower's grid in deployment, direct calls in tests)."""

    def site_ids(self) -> list[int]:
        """Ids of the sites taking part."""

    def exchange(self, requests: dict[int, dict]) -> dict[int, dict]:
        """Send each site its request; return the replies of the sites that answered (a missing site dropped)."""


@dataclass(frozen=True)
class FederatedParams:
    """Parameters of a federated training job (names as in ``xgboost.train``)."""

    objective: str = "binary:logistic"
    n_estimators: int = 10
    max_depth: int = 6
    learning_rate: float = 0.3
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1.0
    max_bin: int = 256
    base_score: float | None = None  # None: the pooled label mean, securely summed
    frac_bits: int | None = None  # fixed-point bits of the summed histograms; None: as many as the labels allow

    def check(self) -> None:
        """Raise `FederatedError` on unsupported parameters."""
        if self.objective not in OBJECTIVES:
            raise FederatedError(f"objective {self.objective!r} is not supported; use one of {OBJECTIVES}")
        if self.n_estimators < 1 or not 1 <= self.max_depth <= 16:
            raise FederatedError("need n_estimators >= 1 and 1 <= max_depth <= 16")
        if not 2 <= self.max_bin <= 1024:
            raise FederatedError("max_bin must be between 2 and 1024")
        if self.frac_bits is not None and not 8 <= self.frac_bits <= 40:
            raise FederatedError("frac_bits must be between 8 and 40")
        try:
            self.tree_params().check()
        except ValueError as exc:
            raise FederatedError(str(exc)) from exc

    def tree_params(self) -> TreeParams:
        """The split/leaf parameters shared with `privboost.federated.splits`."""
        return TreeParams(max_depth=self.max_depth, learning_rate=self.learning_rate, reg_lambda=self.reg_lambda,
                          gamma=self.gamma, min_child_weight=self.min_child_weight)


@dataclass
class FederatedResult:
    """The trained model and what the run cost."""

    model: TreeEnsemble
    seconds: float
    rounds: int
    alive: list[int]
    stats: dict = field(default_factory=dict)


@dataclass
class _GrowingTree:
    """Nodes by heap index (children of i: 2i+1, 2i+2): splits and leaf values."""

    splits: dict[int, tuple[int, float, bool, float, float]] = field(default_factory=dict)
    leaves: dict[int, tuple[float, float]] = field(default_factory=dict)  # node -> (value, hessian)
    last_level: dict = field(default_factory=dict)  # the deepest level's splits, which sites have not routed yet

    def to_tree(self) -> Tree:
        """XGBoost's array layout: nodes numbered breadth first, children in expansion order."""
        order, position = [0], 0
        left, right = [], []
        while position < len(order):
            node = order[position]
            position += 1
            if node in self.splits:
                left.append(len(order))
                right.append(len(order) + 1)
                order += [2 * node + 1, 2 * node + 2]
            else:
                left.append(-1)
                right.append(-1)
        feature = [self.splits[n][0] if n in self.splits else 0 for n in order]
        threshold = [self.splits[n][1] if n in self.splits else self.leaves[n][0] for n in order]
        default_left = [self.splits[n][2] if n in self.splits else False for n in order]
        gain = [self.splits[n][3] if n in self.splits else 0.0 for n in order]
        hess = [self.splits[n][4] if n in self.splits else self.leaves[n][1] for n in order]
        count = len(order)
        return Tree(np.array(left, np.int32), np.array(right, np.int32), np.array(feature, np.int32),
                    np.array(threshold, np.float32), np.array(default_left, bool), np.zeros(count, bool),
                    loss_changes=np.array(gain, np.float32), sum_hessian=np.array(hess, np.float32))


class FederatedAggregator:
    """Drives sites through key setup, the sketch round and one secure round per tree level."""

    def __init__(self, channel: Channel, params: FederatedParams, progress: Progress | None = None) -> None:
        params.check()
        self.channel = channel
        self.params = params
        self.progress = progress or (lambda event: None)
        self.secagg: SecAggAggregator | None = None
        self.pending: dict[int, dict[int, bytes]] = {}
        self.round = 0
        self.frac_bits = SKETCH_FRAC_BITS
        self.feature_names: list[str] = []

    # ------------------------------------------------------------------ secure aggregation
    def _setup(self) -> None:
        sites = sorted(self.channel.site_ids())
        if len(sites) < 2:
            raise FederatedError("federated training needs at least 2 sites")
        config = SecAggConfig.default(tuple(sites), secrets.token_bytes(32))
        self.secagg = SecAggAggregator(config)
        common = {"stage": "advertise", "sites": list(sites), "degree": config.degree, "threshold": config.threshold,
                  "graph_seed": config.graph_seed, "objective": self.params.objective}
        replies = self.channel.exchange({s: {**common, "site": s} for s in sites})
        missing = [s for s in sites if s not in replies]
        if missing:
            raise FederatedError(f"sites {missing} did not answer key setup; every site must be up at the start")
        names = {s: replies[s]["features"] for s in sites}
        reference = names[sites[0]]
        different = [s for s in sites if names[s] != reference]
        if different:
            raise FederatedError(f"sites {different} have different feature columns from site {sites[0]}; "
                                 "every site needs the same columns in the same order")
        self.feature_names = reference.split("\x1f")
        keys = {s: replies[s]["keys"] for s in sites}
        shared = self.channel.exchange({s: {"stage": "share_keys", "public_keys": keys} for s in sites})
        missing = [s for s in sites if s not in shared]
        if missing:
            raise FederatedError(f"sites {missing} dropped during key setup")
        self.pending = self.secagg.route({s: shared[s]["packets"] for s in sites})

    def _secure_sum(self, task: dict) -> np.ndarray:
        """One secure-aggregation round: every alive site's vector for ``task``, summed; raises on too few sites."""
        round_id = self.round
        self.round += 1
        alive = sorted(self.secagg.alive)
        requests = {s: {"stage": "mask", "round": round_id, "alive": alive, "packets": self.pending.get(s, {}),
                        **task} for s in alive}
        replies = self.channel.exchange(requests)
        masked = {s: r["masked"] for s, r in replies.items()}
        self.pending = self.secagg.route({s: r["packets"] for s, r in replies.items()})
        survivors = sorted(masked)
        dropped = [s for s in alive if s not in masked]
        if len(survivors) < self.secagg.config.threshold:
            raise FederatedError(f"only {len(survivors)} of {len(alive)} sites answered round {round_id}; "
                                 f"at least {self.secagg.config.threshold} are needed to unmask — aborting")
        unmask = self.channel.exchange({s: {"stage": "unmask", "round": round_id, "survivors": survivors,
                                            "dropped": dropped} for s in survivors})
        try:
            return self.secagg.aggregate(round_id, masked, {s: r["shares"] for s, r in unmask.items()})
        except Exception as exc:  # SecAggError and friends: never continue with a wrong sum
            raise FederatedError(f"secure aggregation failed in round {round_id}: {exc}") from exc

    # ------------------------------------------------------------------ training
    def train(self) -> FederatedResult:
        """Run the whole job; returns the model (an XGBoost-compatible `TreeEnsemble`)."""
        start = time.perf_counter()
        self._setup()
        features = len(self.feature_names)
        summed = self._secure_sum({"task": "sketch", "frac_bits": SKETCH_FRAC_BITS})
        label_sum, label_abs_sum = decode_fixed(summed[-3:-1], SKETCH_FRAC_BITS)
        rows = int(summed[-1])
        if rows > sketch.LANE_MAX:  # the packed bucket counts could have overflowed their 32-bit lanes
            raise FederatedError(f"{rows:,} rows in all: the sketch round supports at most {sketch.LANE_MAX:,}")
        counts = sketch.unpack_counts(summed[:features * sketch.GRID_SIZE // 2].reshape(features, -1))
        edges = sketch.edges_from_counts(counts, self.params.max_bin)
        minimums = sketch.feature_minimums(counts)
        base_score = self._base_score(float(label_sum), rows)
        logistic = self.params.objective == "binary:logistic"
        self.frac_bits = self._frac_bits(rows if logistic else float(label_abs_sum) + rows * abs(base_score))
        first = {"edges": np.concatenate(edges), "edge_offsets": np.cumsum([0] + [e.size for e in edges]),
                 "max_bin": self.params.max_bin, "base_margin": self._margin(base_score),
                 "frac_bits": self.frac_bits}
        n_bins = np.array([e.size for e in edges], np.int64)
        trees: list[Tree] = []
        carry: dict = first
        for t in range(self.params.n_estimators):
            grown = self._grow_tree(t, carry, edges, minimums, n_bins, start)
            trees.append(grown.to_tree())
            nodes = np.array(sorted(grown.leaves), np.int64)
            carry = {"leaf_nodes": nodes, "leaf_values": np.array([grown.leaves[n][0] for n in nodes], np.float32),
                     **{"last_" + key: value for key, value in grown.last_level.items()}}
        model = TreeEnsemble(trees=trees, tree_group=np.zeros(len(trees), np.int32),
                             feature_names=list(self.feature_names), feature_types=["float"] * features,
                             objective=self.params.objective, base_score=np.array([base_score], np.float32))
        return FederatedResult(model, time.perf_counter() - start, self.round, sorted(self.secagg.alive),
                               {"rows": rows, "edges": edges})

    def _frac_bits(self, gradient_bound: float) -> int:
        """Fixed-point bits for histograms: the given ones, else 32 unless the labels' size needs fewer.

        ``gradient_bound`` bounds any histogram sum: n for logistic loss (|g| <= 1), sum |y| + n·|base score| for
        squared error at the first tree; 8× headroom covers later trees, and each site still refuses a value
        that would not fit rather than wrap around.
        """
        if self.params.frac_bits is not None:
            return self.params.frac_bits
        bound = max(gradient_bound, 1.0) * 8 * len(self.channel.site_ids())
        bits = int(SAFE_MAGNITUDE_BITS - math.ceil(math.log2(bound)))
        if bits < 8:
            raise FederatedError("the labels are too large for fixed-point histograms; rescale the label")
        return min(32, bits)

    def _base_score(self, label_sum: float, rows: int) -> float:
        if self.params.base_score is not None:
            score = float(self.params.base_score)
        else:
            score = label_sum / max(rows, 1)
        if self.params.objective == "binary:logistic" and not 0 < score < 1:
            raise FederatedError(f"base score {score:g} is outside (0, 1): binary:logistic needs labels 0/1 of both "
                                 "kinds (or pass a base_score)")
        return score

    def _margin(self, base_score: float) -> float:
        """The starting margin as XGBoost derives it from the float32 base score (in float32)."""
        score = np.float32(base_score)
        if self.params.objective == "binary:logistic":
            return float(-np.log(np.float32(1.0) / score - np.float32(1.0)))
        return float(score)

    def _grow_tree(self, t: int, carry: dict, edges: list[np.ndarray], minimums: np.ndarray, n_bins: np.ndarray,
                   start: float) -> _GrowingTree:
        params = self.params
        tree_params = params.tree_params()
        features = len(edges)
        width = params.max_bin + 1
        grown = _GrowingTree()
        nodes = np.array([0], np.int64)  # heap indices of this level's nodes
        parent_hist: np.ndarray | None = None
        totals = None
        request: dict = {"task": "level", "tree": t, "level": 0, **carry}
        for level in range(params.max_depth):
            summed = self._secure_sum(request)
            if level == 0:
                hist = summed[:features * width * 2].reshape(1, features, width, 2)
                totals = decode_fixed(summed[features * width * 2:], self.frac_bits).reshape(1, 2)
            else:
                built = summed.reshape(-1, features, width, 2)
                sibling = parent_hist - built
                build_left = request["build_left"]
                hist = np.empty((2 * built.shape[0], features, width, 2), DTYPE)
                hist[0::2] = np.where(build_left[:, None, None, None], built, sibling)
                hist[1::2] = np.where(build_left[:, None, None, None], sibling, built)
            splits = best_splits(decode_fixed(hist, self.frac_bits), totals, n_bins, tree_params)
            valid = np.asarray(splits.valid, bool)
            for i in np.flatnonzero(~valid):
                grown.leaves[int(nodes[i])] = (float(leaf_weights(totals[i], tree_params)), float(totals[i, 1]))
            self.progress({"tree": t + 1, "trees": params.n_estimators, "level": level, "alive": len(self.secagg.alive),
                           "sites": len(self.channel.site_ids()), "elapsed": time.perf_counter() - start,
                           "vector_words": int(summed.size)})
            chosen = np.flatnonzero(valid)
            if chosen.size == 0:
                break
            for i in chosen:
                f, b = int(splits.feature[i]), int(splits.bin[i])
                threshold = float(edges[f][b]) if b >= 0 else float(minimums[f])
                grown.splits[int(nodes[i])] = (f, threshold, bool(splits.default_left[i]),
                                               float(splits.loss_chg[i]), float(totals[i, 1]))
            left, right = splits.left[chosen], splits.right[chosen]
            children = np.empty(2 * chosen.size, np.int64)
            children[0::2], children[1::2] = 2 * nodes[chosen] + 1, 2 * nodes[chosen] + 2
            child_totals = np.empty((2 * chosen.size, 2))
            child_totals[0::2], child_totals[1::2] = left, right
            routing = {"split_nodes": nodes[chosen], "split_features": splits.feature[chosen].astype(np.int64),
                       "split_bins": splits.bin[chosen].astype(np.int64),
                       "default_left": splits.default_left[chosen].astype(bool)}
            if level == params.max_depth - 1:
                grown.last_level = routing
                weights = leaf_weights(child_totals, tree_params)
                for node, w, h in zip(children, weights, child_totals[:, 1], strict=True):
                    grown.leaves[int(node)] = (float(w), float(h))
                break
            build_left = left[:, 1] <= right[:, 1]  # build the lighter child, derive its sibling
            request = {"task": "level", "tree": t, "level": level + 1, **routing, "build_left": build_left}
            parent_hist, nodes, totals = hist[chosen], children, child_totals
        return grown
