"""A site (hospital, clinic) in federated training: its rows stay here; only securely masked vectors leave.

Per request from the aggregator a site does its heavy work in plaintext on its own rows — counts on the public
sketch grid, gradients, per-node histograms, routing rows down the tree, updating its margins — quantises the result
to fixed point and hands it to secure aggregation (`privboost.federated.secagg`), which masks it so that the
aggregator can only recover the sum over sites.

Leakage: a site learns the public job parameters, the global bin edges, the base score and every split and leaf
of the model as it grows (the model is the output); it learns nothing about other sites' rows. What the aggregator
learns is stated in `privboost.federated.aggregator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from privboost.data import DataError, feature_matrix, read_table
from privboost.federated import sketch
from privboost.federated.histograms import bin_matrix, node_totals, route_rows
from privboost.federated.partition import RowPartition
from privboost.federated.secagg import SecAggConfig, SecAggSite
from privboost.mpc.ring import SAFE_MAGNITUDE_BITS, encode_fixed

OBJECTIVES = ("binary:logistic", "reg:squarederror")


class SiteError(RuntimeError):
    """A site cannot take part (bad data, a request out of order, a value too large for fixed point)."""


@dataclass
class SiteData:
    """One site's rows: float32 features (NaN = missing), float64 labels, and the column names."""

    values: np.ndarray
    labels: np.ndarray
    feature_names: list[str]

    @property
    def rows(self) -> int:
        """Number of rows held by this site."""
        return int(self.values.shape[0])


def load_site_data(path: str, label: str) -> SiteData:
    """Read a site's CSV/Parquet file: the label column plus every other column as a feature."""
    table = read_table(path)
    if label not in table.columns:
        raise DataError(f"{path}: no label column {label!r} (columns: {', '.join(map(str, table.columns[:10]))})")
    names = [str(c) for c in table.columns if c != label]
    if not names:
        raise DataError(f"{path}: no feature columns besides the label")
    values = feature_matrix(table, names)
    if np.isinf(values).any():
        raise DataError(f"{path}: infinite values; use empty cells for missing values")
    labels = feature_matrix(table, [label])[:, 0].astype(np.float64)
    if np.isnan(labels).any():
        raise DataError(f"{path}: the label column {label!r} has empty cells")
    if len(labels) == 0:
        raise DataError(f"{path}: no rows")
    return SiteData(values, labels, names)


def gradients(objective: str, margin: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and second derivatives of the loss at ``margin`` as float64 arrays.

    Computed in float32 from float32 margins and labels, as XGBoost's objectives do, so that the histograms sum
    exactly the gradient values centralised XGBoost would sum.
    """
    m = np.asarray(margin, np.float32)
    y = np.asarray(labels, np.float32)
    one = np.float32(1.0)
    if objective == "binary:logistic":
        p = one / (one + np.exp(-m))
        return (p - y).astype(np.float64), np.maximum(p * (one - p), np.float32(1e-16)).astype(np.float64)
    return (m - y).astype(np.float64), np.ones(m.shape, np.float64)


@dataclass
class Site:
    """The site's side of the protocol; `handle` answers one aggregator request (a dict) with a reply dict.

    Everything a site must remember between requests is in `export_state` (keys, bin edges, margins, each row's
    node), so a ClientApp process may end after every message; the bin matrix is derived from data and edges.
    """

    data: SiteData
    secagg: SecAggSite | None = None
    objective: str = "binary:logistic"
    frac_bits: int = 24
    n_sites: int = 1
    max_bin: int = 0
    edges: np.ndarray | None = None  # all features' bin upper bounds, concatenated
    edge_offsets: np.ndarray | None = None
    margin: np.ndarray | None = None
    position: np.ndarray | None = None  # heap index (children of i: 2i+1, 2i+2) of each row's node, this tree
    bins: np.ndarray | None = None
    _gradients: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # of the current margins
    rows: RowPartition | None = field(default=None, repr=False)  # rows grouped by node: a cache, not state

    # ------------------------------------------------------------------ state between messages
    def export_state(self) -> dict:
        """The site's memory as a message-like dict (holds secrets: keep it in the site's own storage only)."""
        state: dict = {"objective": self.objective, "frac_bits": self.frac_bits, "n_sites": self.n_sites,
                       "max_bin": self.max_bin}
        for name in ("edges", "edge_offsets", "margin", "position"):
            if getattr(self, name) is not None:
                state[name] = getattr(self, name)
        if self.secagg is not None:
            state["secagg"] = self.secagg.export_state()
        return state

    @classmethod
    def from_state(cls, data: SiteData, state: dict, bins: np.ndarray | None = None) -> Site:
        """A site restored from `export_state` output; ``bins`` may come from a cache keyed by data and edges."""
        try:
            site = cls(data, objective=str(state["objective"]), frac_bits=int(state["frac_bits"]),
                       n_sites=int(state["n_sites"]), max_bin=int(state["max_bin"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SiteError(f"stored site state is unusable: {exc}") from exc
        for name in ("edges", "edge_offsets", "margin", "position"):
            if name in state:
                setattr(site, name, np.asarray(state[name]))
        if "secagg" in state:
            site.secagg = SecAggSite.from_state(state["secagg"])
        if site.edges is not None:
            site.bins = bins if bins is not None else bin_matrix(site.data.values, site.edge_list(), site.max_bin)
        return site

    def edge_list(self) -> list[np.ndarray]:
        """Per-feature bin upper bounds."""
        offsets = self.edge_offsets
        return [self.edges[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]

    # ------------------------------------------------------------------ requests
    def handle(self, request: dict) -> dict:
        """Dispatch on ``request["stage"]``: advertise, share_keys, mask or unmask."""
        stage = request.get("stage")
        if stage == "advertise":
            return self._advertise(request)
        if self.secagg is None:
            raise SiteError(f"request {stage!r} before key setup")
        if stage == "share_keys":
            return {"packets": self.secagg.share_keys(request["public_keys"])}
        if stage == "mask":
            self.secagg.receive(request.get("packets", {}))
            vector = self._compute(request)
            masked, packets = self.secagg.mask(request["round"], vector, request["alive"], in_place=True)
            return {"masked": masked, "packets": packets}
        if stage == "unmask":
            return {"shares": self.secagg.unmask(request["round"], request["survivors"], request["dropped"])}
        raise SiteError(f"unknown request stage {stage!r}")

    def _advertise(self, request: dict) -> dict:
        self.objective = request["objective"]
        if self.objective not in OBJECTIVES:
            raise SiteError(f"objective {self.objective!r} is not supported")
        labels = self.data.labels
        if self.objective == "binary:logistic" and (labels.min() < 0 or labels.max() > 1):
            raise SiteError(f"binary:logistic needs labels in [0, 1]; this site has labels from {labels.min():g} "
                            f"to {labels.max():g}")
        config = SecAggConfig(tuple(request["sites"]), int(request["degree"]), int(request["threshold"]),
                              request["graph_seed"])
        self.n_sites = len(config.sites)
        self.secagg = SecAggSite(int(request["site"]), config)
        return {"keys": self.secagg.advertise(), "features": "\x1f".join(self.data.feature_names)}

    def _limit(self) -> float:
        # every site's contribution must leave room for the sum over all sites below 2^62
        return 2.0 ** (SAFE_MAGNITUDE_BITS - self.frac_bits) / self.n_sites

    def _too_large(self) -> SiteError:
        return SiteError(f"a histogram sum exceeds {self._limit():.3g}, too large for {self.frac_bits} fractional "
                         "bits; rescale the label or lower frac_bits")

    def _encode(self, values: np.ndarray) -> np.ndarray:
        if values.size and not float(np.max(np.abs(values))) < self._limit():
            raise self._too_large()
        return encode_fixed(values, self.frac_bits)

    def _compute(self, request: dict) -> np.ndarray:
        task = request["task"]
        if "frac_bits" in request:
            self.frac_bits = int(request["frac_bits"])
        if task == "sketch":
            counts = sketch.pack_counts(sketch.bucket_counts(self.data.values)).ravel()
            stats = self._encode(np.array([self.data.labels.sum(), np.abs(self.data.labels).sum()]))
            return np.concatenate([counts, stats, np.array([self.data.rows], np.uint64)])
        if task == "level":
            return self._level(request)
        raise SiteError(f"unknown task {task!r}")

    def _level(self, request: dict) -> np.ndarray:
        if "edges" in request:  # first level of the first tree: global bins and the base margin
            self.edges = np.asarray(request["edges"], np.float32)
            self.edge_offsets = np.asarray(request["edge_offsets"], np.int64)
            self.max_bin = int(request["max_bin"])
            self.bins = bin_matrix(self.data.values, self.edge_list(), self.max_bin)
            self.margin = np.full(self.data.rows, request["base_margin"], np.float32)  # float32, as XGBoost's
            self._gradients = None
        if self.bins is None or self.margin is None:
            raise SiteError("level request before the bin edges")
        if "leaf_nodes" in request:  # the previous tree's leaves: add them to this site's margins
            self._apply_leaves(request)
        if int(request["level"]) == 0:
            self.position = np.zeros(self.data.rows, np.int32)
            return self._root_histograms()
        return self._route_and_build(request)

    def _apply_leaves(self, request: dict) -> None:
        if self.position is None:
            raise SiteError("leaf values before any tree")
        if "last_split_nodes" in request:  # the tree's deepest splits: route rows into the leaves below them
            self._route(request, "last_")
        nodes = np.asarray(request["leaf_nodes"], np.int64)
        table = np.zeros(int(max(nodes.max(initial=0), self.position.max(initial=0))) + 1, np.float32)
        table[nodes] = np.asarray(request["leaf_values"], np.float32)
        self.margin = (self.margin + table[self.position]).astype(np.float32)
        self._gradients = None
        self.position = None

    def _route(self, request: dict, prefix: str = "") -> None:
        """Move rows of split nodes to their children (``position``)."""
        route_rows(self.position, self.bins, request[prefix + "split_nodes"], request[prefix + "split_features"],
                   request[prefix + "split_bins"], request[prefix + "default_left"], self.max_bin)

    def _route_and_build(self, request: dict) -> np.ndarray:
        if self.position is None:
            raise SiteError("level request without a tree in progress")
        g, h = self._current_gradients()
        if self.rows is None or self.rows.order.size != self.data.rows:  # e.g. a site restored mid-tree
            self.rows = RowPartition()
            self.rows.reset(self.bins, g, h, self.position)
        split_nodes = np.asarray(request["split_nodes"], np.int64)
        self.rows.route_and_split(self.position, split_nodes, request["split_features"], request["split_bins"],
                                  request["default_left"], self.max_bin)
        built = 2 * split_nodes + np.where(np.asarray(request["build_left"], bool), 1, 2)
        try:
            return self.rows.fixed_histograms(built, self.max_bin, self.frac_bits, self._limit()).ravel()
        except ValueError:
            raise self._too_large() from None

    def _current_gradients(self) -> tuple[np.ndarray, np.ndarray]:
        if self._gradients is None:  # margins change only between trees: once per tree, not per level
            self._gradients = gradients(self.objective, self.margin, self.data.labels)
        return self._gradients

    def _root_histograms(self) -> np.ndarray:
        # the root's histogram and node totals (children's totals are the split's left/right sums, as in XGBoost)
        g, h = self._current_gradients()
        if self.rows is None:
            self.rows = RowPartition()
        self.rows.reset(self.bins, g, h, self.position)
        try:
            hist = self.rows.fixed_histograms(np.array([0]), self.max_bin, self.frac_bits, self._limit())
        except ValueError:
            raise self._too_large() from None
        totals = node_totals(np.zeros(self.data.rows, np.int32), g, h, 1)
        return np.concatenate([hist.ravel(), self._encode(totals.ravel())])
