"""One tree-ensemble type for every part of privboost.

`TreeEnsemble` loads an XGBoost model (a `Booster`, an `XGBClassifier`/`XGBRegressor`, an XGBoost JSON file or
its parsed dict), predicts in plaintext with numpy exactly as XGBoost's CPU predictor does, and exports back to
XGBoost JSON. Exactness rests on doing what XGBoost does, in the same precision:

* features are cast to float32 and compared as ``x < threshold`` in float32;
* a missing value (NaN) follows the node's default direction;
* a categorical split sends categories in the node's set to the right child, every other value (including
  negative or out-of-range codes) to the left;
* the margin starts at the base score converted to margin space in float32 and accumulates tree outputs in
  float32, tree by tree, in model order.

Categorical features are given as integer category codes (pandas categoricals are converted with their codes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_OBJECTIVES = (
    "binary:logistic",
    "reg:logistic",
    "reg:squarederror",
    "multi:softprob",
    "multi:softmax",
)
_LOGISTIC = ("binary:logistic", "reg:logistic")
_MULTI = ("multi:softprob", "multi:softmax")


class ModelFormatError(ValueError):
    """The model file or object is not a tree ensemble privboost can use."""


@dataclass
class Tree:
    """One regression tree in XGBoost's array layout (node 0 is the root; leaves have ``left == -1``)."""

    left: np.ndarray  # int32, -1 at leaves
    right: np.ndarray  # int32, -1 at leaves
    feature: np.ndarray  # int32 split feature index (0 at leaves)
    threshold: np.ndarray  # float32 split condition; at a leaf, the leaf value
    default_left: np.ndarray  # bool
    categorical: np.ndarray  # bool, True where the split is categorical
    categories: dict[int, np.ndarray] = field(default_factory=dict)  # node -> sorted int codes that go right
    base_weights: np.ndarray | None = None
    loss_changes: np.ndarray | None = None
    sum_hessian: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        """Number of nodes, leaves included."""
        return int(self.left.shape[0])

    @property
    def is_leaf(self) -> np.ndarray:
        """Boolean mask of leaf nodes."""
        return self.left < 0

    def depth(self) -> int:
        """Depth of the deepest leaf (a single leaf has depth 0)."""
        depth, frontier = 0, np.array([0])
        while True:
            frontier = frontier[self.left[frontier] >= 0]
            if frontier.size == 0:
                return depth
            frontier = np.concatenate([self.left[frontier], self.right[frontier]])
            depth += 1

    def leaf_index(self, x: np.ndarray) -> np.ndarray:
        """Index of the leaf each row of float32 matrix ``x`` (n × features) reaches."""
        n = x.shape[0]
        pos = np.zeros(n, dtype=np.int32)
        rows = np.arange(n)
        active = ~self.is_leaf[pos]
        while active.any():
            r, p = rows[active], pos[active]
            value = x[r, self.feature[p]]
            missing = np.isnan(value)
            go_left = value < self.threshold[p]
            cat_nodes = self.categorical[p]
            if cat_nodes.any():
                go_left[cat_nodes] = ~self._in_category_set(p[cat_nodes], value[cat_nodes])
            go_left = np.where(missing, self.default_left[p], go_left)
            pos[r] = np.where(go_left, self.left[p], self.right[p])
            active = ~self.is_leaf[pos]
        return pos

    def _in_category_set(self, nodes: np.ndarray, value: np.ndarray) -> np.ndarray:
        out = np.zeros(nodes.shape[0], dtype=bool)
        with np.errstate(invalid="ignore"):
            code = np.where(np.isfinite(value) & (value >= 0), np.trunc(value), -1).astype(np.int64)
        for node in np.unique(nodes):
            sel = nodes == node
            out[sel] = np.isin(code[sel], self.categories.get(int(node), ()))
        return out


@dataclass
class TreeEnsemble:
    """A gradient-boosted tree ensemble in XGBoost's semantics."""

    trees: list[Tree]
    tree_group: np.ndarray  # int32: output (class) each tree adds to
    feature_names: list[str]
    feature_types: list[str]  # XGBoost codes: "float", "int", "i", "q", "c" (categorical)
    objective: str
    base_score: np.ndarray  # float32 per output, as XGBoost stores it (probability space for logistic)
    num_class: int = 0  # 0 for single-output objectives, K for multi:*
    objective_params: dict[str, Any] = field(default_factory=dict)
    names_given: bool = True  # False when XGBoost had no feature names (we then call them f0, f1, ...)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_xgboost(cls, model: Any) -> TreeEnsemble:
        """Load from an ``xgboost.Booster``, a scikit-learn ``XGBModel``, a JSON path, JSON text or dict."""
        if isinstance(model, Mapping):
            return cls._from_json_dict(model)
        if isinstance(model, str | os.PathLike):
            return cls.load(model)
        get_booster = getattr(model, "get_booster", None)
        booster = get_booster() if callable(get_booster) else model
        save_raw = getattr(booster, "save_raw", None)
        if not callable(save_raw):
            raise ModelFormatError(f"cannot read a tree model from {type(model).__name__}")
        return cls._from_json_dict(json.loads(bytes(save_raw("json"))))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TreeEnsemble:
        """Load an XGBoost JSON model file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ModelFormatError(f"model file not found: {path}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"cannot read model file {path}: {exc}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFormatError(f"{path} is not JSON ({exc}); save the model with booster.save_model('x.json')") \
                from exc
        return cls._from_json_dict(doc)

    @classmethod
    def _from_json_dict(cls, doc: Mapping[str, Any]) -> TreeEnsemble:
        try:
            learner = doc["learner"]
            booster = learner["gradient_booster"]
            if booster.get("name", "gbtree") not in ("gbtree", "dart"):
                raise ModelFormatError(f"booster {booster.get('name')!r} is not a tree booster")
            gbtree = booster["model"] if "model" in booster else booster["gbtree"]["model"]
            objective = learner["objective"]["name"]
            params = learner["learner_model_param"]
            num_feature = int(params["num_feature"])
            num_class = int(params.get("num_class", "0"))
            base_score = _parse_base_score(params["base_score"])
            trees = [_tree_from_json(t, num_feature) for t in gbtree["trees"]]
            tree_group = np.asarray(gbtree["tree_info"], dtype=np.int32)
        except ModelFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFormatError(f"not an XGBoost JSON tree model: {type(exc).__name__}: {exc}") from exc
        if objective not in SUPPORTED_OBJECTIVES:
            raise ModelFormatError(
                f"objective {objective!r} is not supported; use one of {', '.join(SUPPORTED_OBJECTIVES)}"
            )
        if int(params.get("num_target", "1")) != 1:
            raise ModelFormatError("multi-target models are not supported")
        n_out = max(num_class, 1)
        if len(tree_group) != len(trees) or (len(trees) and (tree_group.min() < 0 or tree_group.max() >= n_out)):
            raise ModelFormatError("tree_info does not match the trees and the number of classes")
        names_given = bool(learner.get("feature_names"))
        names = list(learner.get("feature_names") or [f"f{i}" for i in range(num_feature)])
        types = list(learner.get("feature_types") or ["float"] * num_feature)
        if len(names) != num_feature or len(types) != num_feature:
            raise ModelFormatError("feature_names/feature_types do not match num_feature")
        if base_score.size == 1 and n_out > 1:
            base_score = np.repeat(base_score, n_out)
        if base_score.size != n_out:
            raise ModelFormatError(f"base_score has {base_score.size} values for {n_out} outputs")
        obj_params = {k: v for k, v in learner["objective"].items() if k != "name"}
        return cls(trees, tree_group, names, types, objective, base_score, num_class, obj_params, names_given)

    # ---------------------------------------------------------------- properties
    @property
    def num_outputs(self) -> int:
        """Number of margin columns: K for multiclass, 1 otherwise."""
        return max(self.num_class, 1)

    @property
    def num_features(self) -> int:
        """Number of input features."""
        return len(self.feature_names)

    def base_margin(self) -> np.ndarray:
        """Base score in margin space, float32 per output, computed as XGBoost does."""
        base = self.base_score.astype(np.float32)
        if self.objective in _LOGISTIC:
            # float32 steps as XGBoost's -logf(1.0f / p - 1.0f); the log is taken in float64 and rounded once,
            # which matches a correctly rounded logf (numpy's float32 log can be 1 ulp off)
            odds = (np.float32(1.0) / base - np.float32(1.0)).astype(np.float32)
            with np.errstate(divide="ignore"):
                return (-np.log(odds.astype(np.float64))).astype(np.float32)
        return base

    # ---------------------------------------------------------------- prediction
    def as_matrix(self, data: Any) -> np.ndarray:
        """Turn a numpy array or DataFrame into the float32 matrix the trees read (columns matched by name)."""
        if hasattr(data, "columns"):
            missing = [name for name in self.feature_names if name not in data.columns]
            if missing:
                raise ValueError(f"input lacks the model's feature columns: {', '.join(missing[:10])}")
            cols = []
            for name in self.feature_names:
                col = data[name]
                if hasattr(col, "cat"):
                    codes = col.cat.codes.to_numpy().astype(np.float32)
                    codes[codes < 0] = np.nan
                    cols.append(codes)
                else:
                    cols.append(col.to_numpy(dtype=np.float32, na_value=np.nan))
            return np.column_stack(cols) if cols else np.zeros((len(data), 0), dtype=np.float32)
        x = np.asarray(data, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected a 2-D array with {self.num_features} columns, got shape {x.shape}")
        return x

    def predict_margin(self, data: Any) -> np.ndarray:
        """Raw margin, float32 of shape (n,) or (n, K) for multiclass."""
        x = self.as_matrix(data)
        margin = np.empty((x.shape[0], self.num_outputs), dtype=np.float32)
        margin[:] = self.base_margin()
        for tree, group in zip(self.trees, self.tree_group, strict=True):
            margin[:, group] += tree.threshold[tree.leaf_index(x)]
        return margin if self.num_class > 1 else margin[:, 0]

    def predict(self, data: Any) -> np.ndarray:
        """Prediction as ``Booster.predict`` gives it: probability, value, class probabilities or class."""
        return self.transform(self.predict_margin(data))

    def transform(self, margin: np.ndarray) -> np.ndarray:
        """Apply the objective's link to a margin (float32 in, float32 out)."""
        margin = np.asarray(margin, dtype=np.float32)
        if self.objective in _LOGISTIC:
            expo = np.exp(-margin.astype(np.float64)).astype(np.float32)  # a correctly rounded expf
            return (np.float32(1.0) / (np.float32(1.0) + expo)).astype(np.float32)
        if self.objective in _MULTI:
            shifted = margin - margin.max(axis=-1, keepdims=True)
            expo = np.exp(shifted)
            prob = (expo / expo.sum(axis=-1, keepdims=True)).astype(np.float32)
            if self.objective == "multi:softmax":
                return np.argmax(margin, axis=-1).astype(np.float32)
            return prob
        return margin

    # ---------------------------------------------------------------- export
    def to_json_dict(self) -> dict[str, Any]:
        """XGBoost JSON model document (``Booster.load_model`` accepts it)."""
        n_out = self.num_outputs
        trees = [_tree_to_json(t, i, self.num_features) for i, t in enumerate(self.trees)]
        per_iter = n_out
        n_iter = len(self.trees) // per_iter if per_iter else 0
        indptr = [i * per_iter for i in range(n_iter + 1)]
        objective = {"name": self.objective, **self.objective_params}
        if not self.objective_params:
            if self.objective in _MULTI:
                objective["softmax_multiclass_param"] = {"num_class": str(self.num_class)}
            else:
                objective["reg_loss_param"] = {"scale_pos_weight": "1"}
        base = ",".join(_fmt_float(v) for v in self.base_score)
        return {
            "learner": {
                "attributes": {},
                "feature_names": list(self.feature_names) if self.names_given else [],
                "feature_types": list(self.feature_types) if self.names_given else [],
                "gradient_booster": {
                    "model": {
                        "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(len(trees))},
                        "iteration_indptr": indptr,
                        "tree_info": [int(g) for g in self.tree_group],
                        "trees": trees,
                    },
                    "name": "gbtree",
                },
                "learner_model_param": {
                    "base_score": f"[{base}]",
                    "boost_from_average": "1",
                    "num_class": str(self.num_class),
                    "num_feature": str(self.num_features),
                    "num_target": "1",
                },
                "objective": objective,
            },
            "version": [3, 0, 0],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write XGBoost JSON atomically (no half-written file on failure)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_json_dict()), encoding="utf-8")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def to_booster(self) -> Any:
        """An ``xgboost.Booster`` holding this model."""
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(json.dumps(self.to_json_dict()).encode()))
        return booster


# -------------------------------------------------------------------- JSON helpers
def _parse_base_score(raw: Any) -> np.ndarray:
    text = str(raw).strip()
    if text.startswith("["):
        text = text[1:-1]
    return np.asarray([np.float32(float(v)) for v in text.split(",") if v.strip()], dtype=np.float32)


def _fmt_float(value: float) -> str:
    return np.format_float_scientific(np.float32(value), unique=True, trim="-").upper()


def _tree_from_json(doc: Mapping[str, Any], num_feature: int) -> Tree:
    left = np.asarray(doc["left_children"], dtype=np.int32)
    right = np.asarray(doc["right_children"], dtype=np.int32)
    feature = np.asarray(doc["split_indices"], dtype=np.int32)
    threshold = np.asarray(doc["split_conditions"], dtype=np.float32)
    default_left = np.asarray(doc["default_left"], dtype=bool)
    n = left.shape[0]
    split_type = np.asarray(doc.get("split_type", [0] * n), dtype=np.int32)
    if not all(a.shape == (n,) for a in (right, feature, threshold, default_left, split_type)) or n == 0:
        raise ModelFormatError("tree arrays have inconsistent lengths")
    inner = left >= 0
    if np.any((right >= 0) != inner) or np.any(left[inner] >= n) or np.any(right[inner] >= n):
        raise ModelFormatError("tree has child indices out of range")
    _check_is_tree(left, right)
    if np.any(feature[inner] < 0) or np.any(feature[inner] >= num_feature):
        raise ModelFormatError("tree splits on a feature index out of range")
    categories: dict[int, np.ndarray] = {}
    flat = list(doc.get("categories", []))
    for node, start, size in zip(
        doc.get("categories_nodes", []), doc.get("categories_segments", []), doc.get("categories_sizes", []),
        strict=True,
    ):
        categories[int(node)] = np.asarray(flat[int(start) : int(start) + int(size)], dtype=np.int64)

    def optional(key: str) -> np.ndarray | None:
        return np.asarray(doc[key], dtype=np.float32) if key in doc else None

    return Tree(left, right, np.where(inner, feature, 0).astype(np.int32), threshold, default_left,
                (split_type == 1) & inner, categories,
                optional("base_weights"), optional("loss_changes"), optional("sum_hessian"))


def _check_is_tree(left: np.ndarray, right: np.ndarray) -> None:
    """Every node reachable from the root exactly once (no cycles, no shared children)."""
    seen = np.zeros(left.shape[0], dtype=bool)
    frontier = np.array([0])
    while frontier.size:
        if seen[frontier].any() or np.unique(frontier).size != frontier.size:
            raise ModelFormatError("tree nodes do not form a tree (a node is reached twice)")
        seen[frontier] = True
        frontier = frontier[left[frontier] >= 0]
        frontier = np.concatenate([left[frontier], right[frontier]])


def _tree_to_json(tree: Tree, tree_id: int, num_feature: int) -> dict[str, Any]:
    n = tree.num_nodes
    parents = np.full(n, 2147483647, dtype=np.int64)
    inner = np.flatnonzero(~tree.is_leaf)
    parents[tree.left[inner]] = inner
    parents[tree.right[inner]] = inner
    zeros = np.zeros(n, dtype=np.float32)
    cat_nodes = sorted(tree.categories)
    flat: list[int] = []
    segments, sizes = [], []
    for node in cat_nodes:
        segments.append(len(flat))
        sizes.append(len(tree.categories[node]))
        flat.extend(int(c) for c in tree.categories[node])

    def floats(arr: np.ndarray | None, fallback: np.ndarray) -> list[float]:
        return [float(v) for v in (fallback if arr is None else arr)]

    return {
        "base_weights": floats(tree.base_weights, np.where(tree.is_leaf, tree.threshold, 0)),
        "categories": flat,
        "categories_nodes": cat_nodes,
        "categories_segments": segments,
        "categories_sizes": sizes,
        "default_left": [int(v) for v in tree.default_left],
        "id": tree_id,
        "left_children": [int(v) for v in tree.left],
        "loss_changes": floats(tree.loss_changes, zeros),
        "parents": [int(v) for v in parents],
        "right_children": [int(v) for v in tree.right],
        "split_conditions": [float(v) for v in tree.threshold],
        "split_indices": [int(v) for v in tree.feature],
        "split_type": [int(v) for v in tree.categorical],
        "sum_hessian": floats(tree.sum_hessian, zeros),
        "tree_param": {"num_deleted": "0", "num_feature": str(num_feature), "num_nodes": str(n),
                       "size_leaf_vector": "1"},
    }
