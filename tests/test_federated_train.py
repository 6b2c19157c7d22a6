"""Federated training end to end: parity with centralised xgboost hist, the aggregator's view, dropouts, Flower.

Most tests drive the sites directly (`LocalChannel`) so that they can script dropouts and record the aggregator's
whole view; the Flower tests run the real ``privboost train federated --local`` (Flower simulation) and check that
it produces exactly the model of the direct run.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.metrics import roc_auc_score

from privboost.datasets import load_nhanes_diabetes
from privboost.federated.aggregator import FederatedAggregator, FederatedError, FederatedParams
from privboost.federated.channel import LocalChannel
from privboost.federated.histograms import bin_matrix
from privboost.federated.site import Site, SiteData, SiteError


def _sites(x: np.ndarray, y: np.ndarray, sizes: list[float], names: list[str], seed: int = 0) -> dict[int, Site]:
    order = np.random.default_rng(seed).permutation(len(y))
    cuts = (np.cumsum(sizes)[:-1] / np.sum(sizes) * len(y)).astype(int)
    parts = np.split(order, cuts)
    return {i: Site(SiteData(x[p].astype(np.float32), y[p].astype(np.float64), names)) for i, p in enumerate(parts)}


def _train(sites: dict[int, Site], params: FederatedParams, **channel_options):
    channel = LocalChannel(sites, **channel_options)
    return FederatedAggregator(channel, params).train(), channel


def _centralised(x: np.ndarray, y: np.ndarray, edges: list[np.ndarray], params: FederatedParams, base: float):
    """xgboost hist on the pooled rows with the federated bin edges (each bin index its own xgboost bin)."""
    dtrain = xgb.DMatrix(_binned(x, edges, params.max_bin), label=y)
    booster = xgb.train({"tree_method": "hist", "max_bin": params.max_bin + 1, "max_depth": params.max_depth,
                         "eta": params.learning_rate, "lambda": params.reg_lambda, "gamma": params.gamma,
                         "min_child_weight": params.min_child_weight, "objective": params.objective,
                         "base_score": base}, dtrain, num_boost_round=params.n_estimators)
    return booster, lambda data: booster.predict(xgb.DMatrix(_binned(data, edges, params.max_bin)))


def _binned(data: np.ndarray, edges: list[np.ndarray], max_bin: int) -> np.ndarray:
    binned = bin_matrix(data, edges, max_bin).astype(np.float32)
    binned[binned == max_bin] = np.nan
    return binned


def _split_signature(booster: xgb.Booster, edges: list[np.ndarray]) -> list[list[tuple[int, int]]]:
    """Per tree, (feature, number of bins going left) of every split in breadth-first order.

    On bin indices xgboost writes "bins <= b go left" as x < b + 1, and "every value left" as x < 2·max + 1e-5.
    """
    out = []
    for doc in booster.get_dump(dump_format="json"):
        tree, queue, splits = json.loads(doc), [], []
        queue.append(tree)
        while queue:
            node = queue.pop(0)
            if "children" in node:
                f = int(node["split"][1:]) if node["split"].startswith("f") else int(node["split"])
                splits.append((f, min(int(np.ceil(node["split_condition"])), edges[f].size)))
                queue += sorted(node["children"], key=lambda c: c["nodeid"])
        out.append(splits)
    return out


def _our_signature(model, edges: list[np.ndarray]) -> list[list[tuple[int, int]]]:
    out = []
    for tree in model.trees:
        splits = []
        for node in range(tree.num_nodes):
            if tree.left[node] >= 0:
                f = int(tree.feature[node])
                # x < edge_b  <=>  bin <= b, which xgboost on bin indices writes as x < b + 1; below every edge: -1
                last_left = int(np.searchsorted(edges[f], tree.threshold[node])) if (
                    tree.threshold[node] >= edges[f][0]) else -1
                splits.append((f, last_left + 1))
        out.append(splits)
    return out


def _datasets():
    bc = load_breast_cancer()
    x_bc = bc.data.astype(np.float32)
    rng = np.random.default_rng(3)
    x_bc[rng.random(x_bc.shape) < 0.08] = np.nan  # missing values in every column
    db = load_diabetes()
    frame, labels = load_nhanes_diabetes()
    return {
        "breast_cancer": (x_bc, bc.target.astype(float), [f"c{i}" for i in range(30)], "binary:logistic"),
        "diabetes": (db.data.astype(np.float32), db.target.astype(float), list(db.feature_names), "reg:squarederror"),
        "nhanes": (frame.to_numpy(np.float32), np.asarray(labels, float), list(frame.columns), "binary:logistic"),
    }


DATASETS = _datasets()


@pytest.mark.parametrize("name,sizes", [("breast_cancer", [1, 1]), ("diabetes", [1, 1, 1, 1, 1]),
                                        ("nhanes", [40, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])])
def test_federated_model_is_the_centralised_model(name, sizes):
    """Same splits as xgboost hist on the pooled rows with the same bins; predictions and AUC/RMSE agree."""
    x, y, names, objective = DATASETS[name]
    params = FederatedParams(objective=objective, n_estimators=6, max_depth=4, learning_rate=0.3, max_bin=32,
                             min_child_weight=1.0)
    result, _ = _train(_sites(x, y, sizes, names), params)
    edges = result.stats["edges"]
    base = float(result.model.base_score[0])
    booster, predict = _centralised(x, y, edges, params, base)
    assert _our_signature(result.model, edges) == _split_signature(booster, edges)
    ours, theirs = result.model.predict(x), predict(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    if objective == "binary:logistic":
        assert abs(roc_auc_score(y, ours) - roc_auc_score(y, theirs)) <= 0.002
    else:
        rmse = [np.sqrt(np.mean((p - y) ** 2)) for p in (ours, theirs)]
        assert abs(rmse[0] - rmse[1]) <= 0.002 * rmse[1]
    # and it loads into xgboost itself, predicting the same
    booster_ours = result.model.to_booster()
    np.testing.assert_allclose(booster_ours.predict(xgb.DMatrix(x, feature_names=names)), ours, rtol=1e-5, atol=1e-6)


def test_federated_close_to_xgboost_on_raw_data():
    """Against xgboost with its own quantile cuts on the raw pooled data, accuracy is on par."""
    x, y, names, objective = DATASETS["nhanes"]
    train = np.random.default_rng(1).random(len(y)) < 0.75
    params = FederatedParams(objective=objective, n_estimators=20, max_depth=4, learning_rate=0.3, max_bin=64)
    result, _ = _train(_sites(x[train], y[train], [3, 2, 1], names), params)
    booster = xgb.train({"tree_method": "hist", "max_bin": 64, "max_depth": 4, "eta": 0.3, "objective": objective,
                         "base_score": float(result.model.base_score[0])},
                        xgb.DMatrix(x[train], label=y[train]), num_boost_round=20)
    auc_fed = roc_auc_score(y[~train], result.model.predict(x[~train]))
    auc_xgb = roc_auc_score(y[~train], booster.predict(xgb.DMatrix(x[~train])))
    assert abs(auc_fed - auc_xgb) < 0.01


def _recording_sites(sites: dict[int, Site]) -> dict[int, list[np.ndarray]]:
    """Record every plaintext vector each site hands to secure aggregation (test instrumentation only)."""
    inputs: dict[int, list[np.ndarray]] = {i: [] for i in sites}
    for i, site in sites.items():
        original = site._compute

        def compute(request, _original=original, _i=i):
            vector = _original(request)
            inputs[_i].append((request["round"], vector.copy()))
            return vector
        site._compute = compute
    return inputs


def _sums_seen(aggregator: FederatedAggregator) -> list[np.ndarray]:
    seen = []
    original = aggregator._secure_sum

    def secure_sum(task):
        total = original(task)
        seen.append(total.copy())
        return total
    aggregator._secure_sum = secure_sum
    return seen


def test_aggregator_view_depends_only_on_the_sums():
    """Moving rows between sites changes every site's histograms but not their sum: the aggregator then recovers
    the same sums and model, and what it receives from a site is uniformly random either way."""
    x, y, names, _ = DATASETS["breast_cancer"]
    params = FederatedParams(n_estimators=2, max_depth=3, max_bin=16)
    views, sums, models = [], [], []
    for seed in (0, 1):  # two different assignments of the same rows to 3 sites
        sites = _sites(x, y, [1, 1, 1], names, seed=seed)
        channel = LocalChannel(sites, record=True)
        aggregator = FederatedAggregator(channel, params)
        seen = _sums_seen(aggregator)
        result = aggregator.train()
        views.append(channel.view)
        sums.append(seen)
        models.append(result.model)
    assert len(sums[0]) == len(sums[1])
    for a, b in zip(sums[0], sums[1], strict=True):
        assert np.array_equal(a, b)
    np.testing.assert_array_equal(models[0].predict(x), models[1].predict(x))
    # site 0's masked vectors: uniform bytes in both runs, and the two runs indistinguishable
    masked = [np.concatenate([r["masked"].view(np.uint8) for s, r in view if s == 0 and "masked" in r])
              for view in views]
    for sample in masked:
        counts = np.bincount(sample, minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4
    table = np.vstack([np.bincount(m, minlength=256) for m in masked])
    assert stats.chi2_contingency(table).pvalue > 1e-4
    # sanity: the same test rejects a site's plaintext histograms
    site = _sites(x, y, [1, 1, 1], names)[0]
    inputs = _recording_sites({0: site})
    channel = LocalChannel({0: site, **{i: s for i, s in _sites(x, y, [1, 1, 1], names).items() if i}})
    FederatedAggregator(channel, FederatedParams(n_estimators=1, max_depth=2, max_bin=16)).train()
    plain = np.concatenate([v.view(np.uint8) for _, v in inputs[0]])
    assert stats.chisquare(np.bincount(plain, minlength=256)).pvalue < 1e-6


def test_no_site_plaintext_reaches_the_aggregator():
    """No vector the aggregator receives equals, or is a plain shift of, the site's own histogram vector."""
    x, y, names, _ = DATASETS["breast_cancer"]
    sites = _sites(x, y, [1, 1, 1], names)
    inputs = _recording_sites(sites)
    channel = LocalChannel(sites, record=True)
    FederatedAggregator(channel, FederatedParams(n_estimators=1, max_depth=3, max_bin=16)).train()
    received = {(s, k): r["masked"] for k, (s, r) in enumerate(channel.view) if "masked" in r}
    for site_id, rounds in inputs.items():
        masked = [m for (s, _), m in received.items() if s == site_id]
        for (_, plain), seen in zip(rounds, masked, strict=True):
            assert seen.shape == plain.shape
            assert np.mean(seen == plain) < 0.01
            assert len(np.unique(seen - plain)) > seen.size // 2  # not one mask word reused


def test_dropout_above_threshold_continues_with_exact_survivor_sums():
    """Sites dropping before masking or between masking and unmasking: every later sum is exactly the survivors'."""
    x, y, names, _ = DATASETS["nhanes"]
    sites = _sites(x, y, [1] * 6, names)
    inputs = _recording_sites(sites)
    channel = LocalChannel(sites, drop_at={4: 3}, drop_after_mask={5: 5})
    aggregator = FederatedAggregator(channel, FederatedParams(n_estimators=3, max_depth=3, max_bin=16))
    seen = _sums_seen(aggregator)
    result = aggregator.train()
    assert result.alive == [0, 1, 2, 3]
    for round_id, total in enumerate(seen):
        contributors = [i for i in sites if any(r == round_id for r, _ in inputs[i])
                        and not (i == 4 and round_id >= 3)]
        expected = sum(v for i in contributors for r, v in inputs[i] if r == round_id)
        assert np.array_equal(total, np.asarray(expected, np.uint64)), f"round {round_id}"


def test_dropout_below_threshold_aborts():
    """Too few survivors to unmask: a clear error, never a model built on a wrong sum."""
    x, y, names, _ = DATASETS["breast_cancer"]
    sites = _sites(x, y, [1] * 4, names)
    with pytest.raises(FederatedError, match="needed to unmask|threshold|aborting"):
        _train(sites, FederatedParams(n_estimators=2, max_depth=3, max_bin=16), drop_at={1: 2, 2: 2, 3: 2})


def test_inconsistent_schemas_and_bad_params_are_refused():
    x, y, names, _ = DATASETS["breast_cancer"]
    sites = _sites(x, y, [1, 1], names)
    sites[1].data.feature_names = list(reversed(names))
    with pytest.raises(FederatedError, match="different feature columns"):
        _train(sites, FederatedParams(n_estimators=1, max_depth=2, max_bin=16))
    with pytest.raises(FederatedError):
        FederatedParams(max_bin=1).check()
    with pytest.raises(FederatedError):
        FederatedParams(objective="multi:softmax").check()


# ------------------------------------------------------------------------------------------ Flower, real CLI
def _write_sites(tmp_path, x, y, names, sizes):
    paths = []
    for i, site in _sites(x, y, sizes, names).items():
        table = pd.DataFrame(site.data.values, columns=names)
        table["outcome"] = site.data.labels
        path = tmp_path / f"site{i}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    return paths


def test_cli_local_flower_simulation_matches_direct_run(tmp_path):
    """The exact contract, on Flower's simulation: writes XGBoost JSON equal to the direct run's model."""
    x, y, names, _ = DATASETS["breast_cancer"]
    paths = _write_sites(tmp_path, x, y, names, [2, 1, 1])
    out = tmp_path / "model.json"
    command = [sys.executable, "-m", "privboost", "train", "federated", "--local",
               *[a for p in paths for a in ("--data", str(p))], "--label", "outcome", "--out", str(out),
               "--n-estimators", "3", "--max-depth", "3", "--learning-rate", "0.3", "--max-bin", "32"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    booster = xgb.Booster(model_file=str(out))
    from privboost.data import feature_matrix, read_table
    from privboost.federated.site import load_site_data

    direct, _ = _train({i: Site(load_site_data(str(p), "outcome")) for i, p in enumerate(paths)},
                       FederatedParams(n_estimators=3, max_depth=3, learning_rate=0.3, max_bin=32))
    pooled = pd.concat([read_table(p) for p in paths])
    data = feature_matrix(pooled, names)
    np.testing.assert_allclose(booster.predict(xgb.DMatrix(data, feature_names=names)), direct.model.predict(data),
                               rtol=1e-6, atol=1e-7)
    assert "sites" in run.stderr and "model written" in run.stderr


def test_cli_refuses_bad_input_without_writing(tmp_path):
    x, y, names, _ = DATASETS["breast_cancer"]
    paths = _write_sites(tmp_path, x, y, names, [1, 1])
    out = tmp_path / "model.json"
    base = [sys.executable, "-m", "privboost", "train", "federated", "--local", "--out", str(out)]
    one = subprocess.run([*base, "--data", str(paths[0]), "--label", "outcome"], capture_output=True, text=True)
    assert one.returncode == 2 and "at least 2 sites" in one.stderr
    bad = subprocess.run([*base, "--data", str(paths[0]), "--data", str(paths[1]), "--label", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "nope" in bad.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------ direct engine
def _kill_site_process(path, index) -> bool:
    """SIGKILL site ``index`` of the direct engine whose launcher was given ``path``: a forked child named
    ``privboost-s<index>`` whose parent's command line holds the path."""
    import os
    import signal
    from pathlib import Path

    launchers = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"privboost.federated.direct" in cmdline and str(path).encode() in cmdline:
                launchers.add(entry.name)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
                parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
            if comm == f"privboost-s{index}" and parent in launchers:
                os.kill(int(entry.name), signal.SIGKILL)
                return True
    return False


def test_cli_direct_engine_matches_direct_run(tmp_path):
    """``--engine direct``: every site its own process over TLS; the same model as the in-process run."""
    x, y, names, _ = DATASETS["breast_cancer"]
    paths = _write_sites(tmp_path, x, y, names, [1, 1, 2])
    out = tmp_path / "model.json"
    command = [sys.executable, "-m", "privboost", "train", "federated", "--local", "--engine", "direct",
               *[a for p in paths for a in ("--data", str(p))], "--label", "outcome", "--out", str(out),
               "--n-estimators", "3", "--max-depth", "3", "--learning-rate", "0.3", "--max-bin", "32"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    from privboost.data import feature_matrix, read_table
    from privboost.federated.site import load_site_data

    direct, _ = _train({i: Site(load_site_data(str(p), "outcome")) for i, p in enumerate(paths)},
                       FederatedParams(n_estimators=3, max_depth=3, learning_rate=0.3, max_bin=32))
    data = feature_matrix(pd.concat([read_table(p) for p in paths]), names)
    booster = xgb.Booster(model_file=str(out))
    np.testing.assert_allclose(booster.predict(xgb.DMatrix(data, feature_names=names)), direct.model.predict(data),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kill", [1, 3])
def test_killed_site_processes(tmp_path, kill):
    """Site processes killed mid-training: one (4 sites, threshold 2) → training finishes with the survivors;
    three → a clear error and no model file."""
    from privboost.federated.direct import run_direct_job

    x, y, names, _ = DATASETS["breast_cancer"]
    paths = _write_sites(tmp_path, x, y, names, [1, 1, 1, 1])
    out = tmp_path / "model.json"
    killed: list[bool] = []

    def progress(event):
        if event["tree"] == 2 and event["level"] == 0 and not killed:
            killed.extend(_kill_site_process(p, len(paths) - kill + i) for i, p in enumerate(paths[-kill:]))

    params = FederatedParams(n_estimators=4, max_depth=3, max_bin=16)
    if kill == 1:
        stats = run_direct_job([str(p) for p in paths], "outcome", params, str(out), progress, timeout_s=60)
        assert killed == [True] and stats["alive"] == 3 and out.is_file()
        assert len(xgb.Booster(model_file=str(out)).get_dump()) == 4
    else:
        with pytest.raises(FederatedError, match="needed to unmask|aborting|too few|threshold"):
            run_direct_job([str(p) for p in paths], "outcome", params, str(out), progress, timeout_s=60)
        assert killed == [True] * 3 and not out.exists()


def test_logistic_labels_outside_0_1_are_refused():
    x, y, names, _ = DATASETS["diabetes"]
    with pytest.raises(SiteError, match=r"labels in \[0, 1\]"):
        _train(_sites(x, y, [1, 1], names), FederatedParams(objective="binary:logistic", n_estimators=1))


def test_direct_engine_fails_fast_with_the_sites_own_message(tmp_path):
    """A site process that cannot start (its file has no such label) stops the job at once, in its own words."""
    from privboost.federated.direct import run_direct_job

    x, y, names, _ = DATASETS["breast_cancer"]
    paths = _write_sites(tmp_path, x, y, names, [1, 1])
    out = tmp_path / "model.json"
    with pytest.raises(FederatedError, match=r"stopped before connecting \(site0 said: .*no label column 'nope'"):
        run_direct_job([str(p) for p in paths], "nope", FederatedParams(n_estimators=1), str(out), timeout_s=60)
    assert not out.exists()
