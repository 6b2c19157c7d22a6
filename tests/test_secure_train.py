"""Secure training: parity with xgboost hist, identical splits, obliviousness of the message trace, CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine, make_classification
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from privboost.datasets import load_nhanes_diabetes
from privboost.model import TreeEnsemble
from privboost.mpc.ring import encode_fixed
from privboost.mpc.runtime import run_local
from privboost.mpc.shares import share_arith
from privboost.secure.analyst import build_ensemble, reveal
from privboost.secure.binning import bin_columns, one_hot, slots, threshold_bits
from privboost.secure.histograms import OneHotRoute, ShuffleRoute
from privboost.secure.owner import encode_labels
from privboost.secure.trainer import (
    HistogramPacking,
    SecureParams,
    SharedData,
    TrainingError,
    _level_histograms,
    train,
)


def secure_fit(x: np.ndarray, y: np.ndarray, params: SecureParams, max_bin: int, frac_bits: int = 16,
               route: str = "onehot", record: bool = False, categorical: tuple[int, ...] = ()):
    """Share (x, y) as owners would, train in-process, reveal as the analyst; returns (model, LocalRun)."""
    names = [f"f{j}" for j in range(x.shape[1])]
    binned = bin_columns(x, names, max_bin, [names[j] for j in categorical])
    matrix = one_hot(binned.bins, slots(max_bin)) if route == "onehot" else binned.bins.astype(np.uint64)
    shared_x, shared_y = share_arith(matrix), share_arith(encode_labels(y, frac_bits, params.num_class))
    shared_t = share_arith(threshold_bits(binned, max_bin))

    def program(party):
        i = party.party_id
        data = SharedData(shared_x[i] if route == "onehot" else None, shared_y[i], shared_t[i], x.shape[1], max_bin,
                          bins=shared_x[i] if route == "shuffle" else None, categorical=binned.categorical,
                          has_missing=binned.has_missing, n_categories=binned.n_categories)
        return train(party, data, params)

    run = run_local(program, frac_bits=frac_bits, timeout_s=300, record=record)
    trees = reveal(run.results[0].trees, run.results[1].trees, frac_bits)
    base = float(((run.results[0].base_score + run.results[1].base_score).view(np.int64) / 2.0**frac_bits)[0])
    return build_ensemble(trees, params, names, base, binned.categorical), run


def xgb_matrix(x: np.ndarray, y: np.ndarray | None = None, categorical: tuple[int, ...] = ()) -> xgb.DMatrix:
    """A DMatrix with the given columns typed categorical."""
    types = ["c" if j in categorical else "q" for j in range(x.shape[1])]
    return xgb.DMatrix(x, label=y, feature_types=types, enable_categorical=bool(categorical),
                       feature_names=[f"f{j}" for j in range(x.shape[1])])


def xgb_fit(x: np.ndarray, y: np.ndarray, params: SecureParams, max_bin: int, base: float,
            categorical: tuple[int, ...] = ()) -> xgb.Booster:
    """Plaintext xgboost hist with the same parameters (categorical splits one category against the rest)."""
    return xgb.train({"tree_method": "hist", "max_bin": max_bin, "max_depth": params.max_depth,
                      "eta": params.learning_rate, "objective": params.objective, "base_score": base,
                      "reg_lambda": params.reg_lambda, "min_child_weight": params.min_child_weight,
                      "gamma": params.gamma, "max_cat_to_onehot": 257, "nthread": 2},
                     xgb_matrix(x, y, categorical), params.n_estimators)


def _trees(booster: xgb.Booster) -> list[dict]:
    return json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]["model"]["trees"]


def test_splits_identical_to_xgboost_on_a_small_case():
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    params = SecureParams(n_estimators=4, max_depth=3, learning_rate=0.3, base_score=0.5)
    model, _ = secure_fit(x, y, params, max_bin=16, frac_bits=20)
    booster = xgb_fit(x, y, params, 16, 0.5)
    ours = model.to_booster().predict(xgb_matrix(x), pred_leaf=True)
    theirs = booster.predict(xgb_matrix(x), pred_leaf=True)
    for tree in range(params.n_estimators):  # every tree partitions the samples exactly as xgboost's does
        pairs = set(zip(ours[:, tree].tolist(), theirs[:, tree].tolist(), strict=True))
        assert len(pairs) == len(set(ours[:, tree])) == len(set(theirs[:, tree]))
    assert np.abs(model.predict(x) - booster.predict(xgb_matrix(x))).max() < 1e-4


def _mixed_columns() -> tuple[np.ndarray, np.ndarray]:
    """Breast cancer's first 8 columns, two with 15% missing values, plus two categorical columns: an informative
    one whose codes are missing more often for positives, and a noise one."""
    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(3)
    n = len(y)
    informative = np.where(y == 1, rng.integers(0, 3, n), rng.integers(2, 6, n)).astype(np.float32)
    informative[rng.random(n) < np.where(y == 1, 0.3, 0.05)] = np.nan
    x = np.column_stack([x[:, :8], informative, rng.integers(0, 4, n)]).astype(np.float32)
    for j in (0, 3):
        x[rng.random(n) < 0.15, j] = np.nan
    return x, y.astype(np.float64)


@pytest.mark.parametrize("route", ["onehot", "shuffle"])
def test_splits_identical_to_xgboost_with_missing_values_and_categories(route):
    x, y = _mixed_columns()
    categorical = (8, 9)
    params = SecureParams(n_estimators=4, max_depth=3, learning_rate=0.3, base_score=0.5)
    model, _ = secure_fit(x, y, params, max_bin=16, frac_bits=20, route=route, categorical=categorical)
    booster = xgb_fit(x, y, params, 16, 0.5, categorical)
    ours, theirs = _trees(model.to_booster()), _trees(booster)
    kinds = set()
    for mine, ref in zip(ours, theirs, strict=True):  # same structure, features, default directions, categories
        for key in ("left_children", "split_indices", "default_left", "split_type", "categories",
                    "categories_nodes"):
            assert mine[key] == ref[key], key
        inner = np.array(ref["left_children"]) >= 0
        kinds |= set(zip(np.array(ref["split_type"])[inner], np.array(ref["default_left"])[inner], strict=True))
    assert kinds == {(0, 0), (0, 1), (1, 0), (1, 1)}  # every kind of candidate was chosen somewhere
    gap = np.abs(model.predict(x) - booster.predict(xgb_matrix(x, categorical=categorical))).max()
    assert gap < 1e-5


@pytest.mark.parametrize("loader", [load_iris, load_wine])
def test_multiclass_trees_identical_to_xgboost(loader):
    x, y = loader(return_X_y=True)
    x = x.astype(np.float32)
    params = SecureParams(objective="multi:softprob", num_class=3, n_estimators=3, max_depth=3, learning_rate=0.3,
                          base_score=0.5)
    model, _ = secure_fit(x, y.astype(np.float64), params, max_bin=16, frac_bits=20)
    booster = xgb.train({"tree_method": "hist", "max_bin": 16, "max_depth": 3, "eta": 0.3, "base_score": 0.5,
                         "objective": "multi:softprob", "num_class": 3, "nthread": 2}, xgb_matrix(x, y), 3)
    ours, theirs = _trees(model.to_booster()), _trees(booster)
    assert len(ours) == len(theirs) == 9  # one tree per class per round, in xgboost's order
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine["left_children"] == ref["left_children"]
        assert mine["split_indices"] == ref["split_indices"]
    probabilities = model.predict(x)
    assert probabilities.shape == (len(y), 3)
    assert np.abs(probabilities - booster.predict(xgb_matrix(x))).max() < 1e-5


@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror"])
def test_packed_histograms_equal_the_two_column_ones(objective):
    """Gradient and hessian sums packed in one word and split by an exact truncation equal the unpacked sums
    exactly, on both routes; sizes that do not fit the ring are not packed."""
    rng = np.random.default_rng(4)
    n, n_features, max_bin = 500, 3, 8
    bins = rng.integers(0, max_bin + 1, (n, n_features))
    g = rng.uniform(-1, 1, n) if objective == "binary:logistic" else rng.uniform(-400, 400, n)
    h = rng.uniform(0, 0.25, n) if objective == "binary:logistic" else np.ones(n)
    members = rng.integers(0, 2, (n, 4))
    params = SecureParams(objective=objective, gradient_bound=1.0 if objective == "binary:logistic" else 1024.0)
    packing = HistogramPacking.choose(n, params, 16)
    assert packing is not None and packing.counts == (objective == "reg:squarederror")
    too_wide = SecureParams(objective="binary:logistic")  # gradients in [-1, 1] cannot spare their low bits
    assert HistogramPacking.choose(10**7, too_wide, 16) is None
    secrets = [encode_fixed(g, 16), encode_fixed(h, 16), members.astype(np.uint64), one_hot(bins, max_bin + 1),
               bins.astype(np.uint64)]
    shares = [share_arith(v) for v in secrets]

    def program(party):
        g_s, h_s, m_s, x_s, b_s = (v[party.party_id] for v in shares)
        data = SharedData(None, g_s, np.zeros(2 * n_features * max_bin, np.uint64), n_features, max_bin, bins=b_s)
        parent = (np.zeros((2, n_features, max_bin + 1), np.uint64),) * 2
        out = []
        for route in (OneHotRoute(party, x_s.copy()), ShuffleRoute(party, b_s, max_bin + 1)):
            for way in (None, packing):
                out += [party.open(a) for a in _level_histograms(party, route, g_s, h_s, m_s, *parent, data, way)]
        return out

    results = run_local(program).results[0]
    for route in (0, 4):
        np.testing.assert_array_equal(results[route], results[route + 2])  # G: packed == unpacked
        np.testing.assert_array_equal(results[route + 1], results[route + 3])  # H
    if objective == "reg:squarederror":  # labels so large that the gradient field loses its lowest bits
        wide = SecureParams(objective=objective, gradient_bound=2.0**40)
        dropping = HistogramPacking.choose(n, wide, 16)
        assert dropping is not None and dropping.drop > 0

        def packed_wide(party):
            g_s, h_s, m_s, x_s, b_s = (v[party.party_id] for v in shares)
            data = SharedData(None, g_s, np.zeros(2 * n_features * max_bin, np.uint64), n_features, max_bin, bins=b_s)
            parent = (np.zeros((2, n_features, max_bin + 1), np.uint64),) * 2
            route = ShuffleRoute(party, b_s, max_bin + 1)
            return [party.open(a) for a in _level_histograms(party, route, g_s, h_s, m_s, *parent, data, dropping)]

        wide_g, wide_h = run_local(packed_wide).results[0]
        np.testing.assert_array_equal(wide_h, results[5])  # counts stay exact
        error = np.abs(wide_g.view(np.int64) - results[4].view(np.int64)).max()
        assert error <= n * (1 << dropping.drop)  # each sample's g·m is off by less than 2^drop units
    want = np.zeros((n_features, max_bin + 1))
    np.add.at(want, (np.arange(n_features)[None, :].repeat(n, 0), bins), (g * members[:, 0])[:, None])
    got = results[0][0].view(np.int64) / 2.0**16
    assert np.abs(got - want).max() < n * 2.0**-16  # the sums are the plaintext ones (up to encoding)


def _nhanes():
    frame, labels = load_nhanes_diabetes()  # real missing values (NaN) are kept; "male" is categorical
    rows = np.random.default_rng(0).choice(len(frame), 2500, replace=False)
    return frame.iloc[rows].to_numpy(dtype=np.float32), labels[rows].astype(np.float64)


CASES = {
    "breast_cancer": (lambda: load_breast_cancer(return_X_y=True), "binary:logistic", "onehot", ()),
    "nhanes_diabetes": (_nhanes, "binary:logistic", "shuffle", (1,)),
    "diabetes_regression": (lambda: load_diabetes(return_X_y=True), "reg:squarederror", "onehot", ()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_accuracy_parity_with_xgboost_hist(case):
    loader, objective, route, categorical = CASES[case]
    x, y = loader()
    x_train, x_test, y_train, y_test = train_test_split(np.asarray(x, np.float32), np.asarray(y, np.float64),
                                                        test_size=0.3, random_state=1)
    logistic = objective == "binary:logistic"
    bound = 1.0 if logistic else 4 * 2.0 ** np.ceil(np.log2(np.abs(y_train).max()))
    params = SecureParams(objective=objective, n_estimators=6, max_depth=3, learning_rate=0.3,
                          gradient_bound=bound, base_score=None)
    model, _ = secure_fit(x_train, y_train, params, max_bin=32, route=route, categorical=categorical)
    base = 0.5 if logistic else float(model.base_score[0])
    if not logistic:
        assert base == pytest.approx(y_train.mean(), abs=1e-3)  # the securely computed label mean
    reference = xgb_fit(x_train, y_train, params, 32, base, categorical).predict(
        xgb_matrix(x_test, categorical=categorical))
    ours = model.predict(x_test)
    if logistic:
        assert abs(roc_auc_score(y_test, ours) - roc_auc_score(y_test, reference)) <= 0.005
    else:
        rmse = np.sqrt(np.mean((ours - y_test) ** 2))
        assert rmse <= 1.01 * np.sqrt(np.mean((reference - y_test) ** 2))


def _trace(view) -> list:
    return [("bytes", len(m)) if isinstance(m, bytes) else (m.dtype.str, m.shape) for m in view]


def test_message_trace_does_not_depend_on_the_data():
    params = SecureParams(n_estimators=2, max_depth=3, learning_rate=0.3, base_score=0.5, gamma=0.5)
    traces = []
    for seed in (1, 2):  # two unrelated datasets of the same shape
        x, y = make_classification(n_samples=300, n_features=6, n_informative=3, random_state=seed)
        if seed == 2:
            x, y = np.round(x), 1 - y  # different values, ties, flipped labels
        _, run = secure_fit(x.astype(np.float32), y.astype(np.float64), params, max_bin=8, record=True)
        traces.append(([_trace(v.peer) for v in run.received], [_trace(v.dealer) for v in run.received],
                       run.rounds, run.peer_bytes_sent, run.dealer_bytes))
    assert traces[0] == traces[1]
    assert traces[0][2][0] > 100  # a real protocol ran


def test_bad_parameters_are_refused():
    with pytest.raises(TrainingError, match="objective"):
        SecureParams(objective="rank:pairwise").check()
    with pytest.raises(TrainingError, match="num_class"):
        SecureParams(objective="multi:softprob").check()
    with pytest.raises(TrainingError, match="num_class"):
        SecureParams(objective="binary:logistic", num_class=3).check()
    with pytest.raises(TrainingError, match="between 2"):
        SecureParams(objective="multi:softprob", num_class=1).check()
    with pytest.raises(TrainingError, match="max_depth"):
        SecureParams(max_depth=0).check()


# ------------------------------------------------------------------------------------------ the CLI contract
def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "privboost", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def hospital_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hospitals")
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    table = x.rename(columns=lambda c: c.replace(" ", "_"))
    rng = np.random.default_rng(11)
    for column in ("mean_radius", "worst_texture"):  # records with gaps, as hospitals have them
        table.loc[rng.random(len(table)) < 0.1, column] = np.nan
    # a referring clinic's code (categorical), informative and sometimes unrecorded
    clinic = np.where(y == 1, rng.integers(0, 3, len(y)), rng.integers(2, 5, len(y))).astype(float)
    clinic[rng.random(len(y)) < 0.1] = np.nan
    table.insert(12, "clinic", clinic)
    table["patient"] = np.arange(len(table)) * 7 + 3
    table["malignant"] = y
    a = table[["patient", *table.columns[:13], "malignant"]].sample(frac=1.0, random_state=3)
    b = table[["patient", *table.columns[13:31]]]
    a.to_csv(folder / "A.csv", index=False)
    b.to_csv(folder / "B.csv", index=False)
    for i, idx in enumerate(np.array_split(np.random.default_rng(0).permutation(len(table)), 3)):
        table.drop(columns="patient").iloc[idx].to_csv(folder / f"H{i}.csv", index=False)
    return folder, table


def _auc_of(model_path: Path, table: pd.DataFrame) -> float:
    booster = xgb.Booster()
    booster.load_model(str(model_path))
    return roc_auc_score(table["malignant"], booster.predict(xgb.DMatrix(table[booster.feature_names])))


def test_cli_vertical_split_exact_contract(hospital_files):
    folder, table = hospital_files
    done = _run_cli(["train", "secure", "--local", "--data", "A.csv", "--data", "B.csv", "--label", "malignant",
                     "--split", "vertical", "--id-column", "patient", "--out", "model.json", "--n-estimators", "3",
                     "--max-depth", "3", "--learning-rate", "0.3", "--max-bin", "16"], folder)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((folder / "model.json").read_text())
    assert doc["learner"]["feature_names"][:2] == ["mean_radius", "mean_texture"]  # as the owners named them
    x = table[doc["learner"]["feature_names"]].to_numpy(np.float32)
    reference = xgb_fit(x, table["malignant"].to_numpy(), SecureParams(n_estimators=3, max_depth=3,
                                                                        learning_rate=0.3), 16, 0.5)
    expected = roc_auc_score(table["malignant"], reference.predict(xgb_matrix(x)))
    assert abs(_auc_of(folder / "model.json", table) - expected) <= 0.005


def test_cli_categorical_column_and_missing_values(hospital_files):
    folder, table = hospital_files
    done = _run_cli(["train", "secure", "--local", "--data", "A.csv", "--data", "B.csv", "--label", "malignant",
                     "--split", "vertical", "--id-column", "patient", "--out", "cat.json", "--n-estimators", "3",
                     "--max-depth", "3", "--learning-rate", "0.3", "--max-bin", "16", "--categorical", "clinic"],
                    folder)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = TreeEnsemble.load(folder / "cat.json")
    names = ours.feature_names
    assert ours.feature_types[names.index("clinic")] == "c"
    assert any(tree.categorical.any() for tree in ours.trees)  # the clinic code was split on, as a category
    x = table[names].to_numpy(np.float32)
    assert np.isnan(x).any()
    booster = xgb.Booster()
    booster.load_model(str(folder / "cat.json"))
    loaded = booster.predict(xgb.DMatrix(x, feature_names=names, feature_types=ours.feature_types,
                                         enable_categorical=True))
    np.testing.assert_allclose(loaded, ours.predict(x), atol=1e-6)  # xgboost reads the categorical splits
    categorical = (names.index("clinic"),)
    reference = xgb_fit(x, table["malignant"].to_numpy(), SecureParams(n_estimators=3, max_depth=3,
                                                                        learning_rate=0.3), 16, 0.5, categorical)
    expected = roc_auc_score(table["malignant"], reference.predict(xgb_matrix(x, categorical=categorical)))
    assert abs(roc_auc_score(table["malignant"], loaded) - expected) <= 0.005


def _hospital_model(folder: Path, files: list[str], split: list[str], out: str, extra: list[str]) -> TreeEnsemble:
    """Train 3 trees of depth 3 on the hospital files by the CLI (label "malignant") and load the model."""
    done = _run_cli(["train", "secure", "--local", *[arg for f in files for arg in ("--data", f)], "--label",
                     "malignant", *split, "--out", out, "--n-estimators", "3", "--max-depth", "3",
                     "--learning-rate", "0.3", "--max-bin", "16", *extra], folder)
    assert done.returncode == 0, done.stderr[-2000:]
    return TreeEnsemble.load(folder / out)


def _model_auc(model: TreeEnsemble, table: pd.DataFrame) -> float:
    return roc_auc_score(table["malignant"], model.predict(table[model.feature_names].to_numpy(np.float32)))


def test_cli_horizontal_split(hospital_files):
    folder, table = hospital_files
    model = _hospital_model(folder, ["H0.csv", "H1.csv", "H2.csv"], ["--split", "horizontal"], "h.json",
                            ["--histograms", "shuffle", "--categorical", "clinic"])
    assert model.feature_types[model.feature_names.index("clinic")] == "c"
    assert _model_auc(model, table) > 0.97


def test_cli_multiclass(tmp_path):
    x, y = load_wine(return_X_y=True, as_frame=True)
    table = x.assign(patient=np.arange(len(x)), cultivar=y)
    table[["patient", *x.columns[:6], "cultivar"]].to_csv(tmp_path / "A.csv", index=False)
    table[["patient", *x.columns[6:]]].to_csv(tmp_path / "B.csv", index=False)
    done = _run_cli(["train", "secure", "--local", "--data", "A.csv", "--data", "B.csv", "--label", "cultivar",
                     "--split", "vertical", "--id-column", "patient", "--out", "wine.json", "--n-estimators", "2",
                     "--max-depth", "2", "--learning-rate", "0.3", "--max-bin", "16", "--objective",
                     "multi:softprob"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    booster = xgb.Booster()
    booster.load_model(str(tmp_path / "wine.json"))
    probabilities = booster.predict(xgb.DMatrix(table[booster.feature_names]))
    assert probabilities.shape == (len(y), 3)  # num_class inferred from the labels 0..2
    assert (probabilities.argmax(axis=1) == y).mean() > 0.9


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# slow: once in six full-suite runs the interrupted CLI did not exit within 60 s (not reproduced alone; see
# STATUS). Until that is understood it stays out of the CI suite; on a hang it now fails with every thread's stack.
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the role processes")
def test_ctrl_c_stops_every_role(hospital_files):
    import os
    import signal
    import time

    folder, _ = hospital_files
    proc = subprocess.Popen([sys.executable, "-m", "privboost", "train", "secure", "--local", "--data", "A.csv",  # noqa: S603
                             "--data", "B.csv", "--label", "malignant", "--split", "vertical", "--id-column",
                             "patient", "--out", "stopped.json", "--n-estimators", "50", "--max-depth", "4",
                             "--max-bin", "32"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    deadline = time.monotonic() + 60
    roles: list[int] = []
    while time.monotonic() < deadline and len(roles) < 6:  # dealer, two parties, analyst, two owners
        time.sleep(0.5)
        roles = _children(proc.pid)
    assert len(roles) >= 4, "the roles did not start"
    time.sleep(3)  # into training
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack, to show where it hangs
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the interrupted CLI did not exit within 60 s:\n{err[-6000:]}")
    assert proc.returncode == 130
    assert "interrupted" in err
    time.sleep(1)
    assert not [pid for pid in roles if _alive(pid)]  # every role process has exited
    assert not (folder / "stopped.json").exists()


def _mixed_files(folder: Path, table: pd.DataFrame, drop_from_b: int = 0) -> None:
    """Two hospitals split the rows of the first 13 columns and the label; a lab holds the other columns of every
    patient (optionally missing a few), rows in its own order."""
    first = ["patient", *table.columns[:13], "malignant"]
    rows = np.random.default_rng(5).permutation(len(table))
    table.iloc[rows[:250]][first].to_csv(folder / "M0.csv", index=False)
    table.iloc[rows[250:]][first].to_csv(folder / "M1.csv", index=False)
    lab = table[["patient", *table.columns[13:31]]].sample(frac=1.0, random_state=8)
    lab.iloc[drop_from_b:].to_csv(folder / "M2.csv", index=False)


def test_cli_mixed_split(hospital_files):
    folder, table = hospital_files
    _mixed_files(folder, table)
    model = _hospital_model(folder, ["M0.csv", "M1.csv", "M2.csv"], ["--split", "mixed", "--id-column", "patient"],
                            "mixed.json", ["--categorical", "clinic"])
    assert set(model.feature_names) == set(table.columns[:31]) - {"patient"}  # both column groups joined
    assert _model_auc(model, table) > 0.97


def test_cli_mixed_split_refuses_groups_with_different_samples(hospital_files):
    folder, table = hospital_files
    _mixed_files(folder, table, drop_from_b=3)
    done = _run_cli(["train", "secure", "--local", "--data", "M0.csv", "--data", "M1.csv", "--data", "M2.csv",
                     "--label", "malignant", "--split", "mixed", "--id-column", "patient", "--out", "bad_mixed.json",
                     "--n-estimators", "1", "--max-depth", "2", "--max-bin", "8"], folder)
    assert done.returncode != 0
    assert "do not hold the same samples" in done.stderr
    assert not (folder / "bad_mixed.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--label", "nope", "--split", "vertical", "--id-column", "patient"], "label"),
    (["--label", "malignant", "--split", "vertical"], "--id-column"),
    (["--label", "malignant", "--split", "diagonal", "--id-column", "patient"], "--split"),
    (["--label", "malignant", "--split", "vertical", "--id-column", "patient", "--categorical", "ward"], "ward"),
    (["--label", "malignant", "--split", "vertical", "--id-column", "patient", "--categorical", "mean_area"],
     "integer category codes"),
])
def test_cli_refuses_bad_jobs_without_writing_a_model(hospital_files, args, message):
    folder, _ = hospital_files
    done = _run_cli(["train", "secure", "--local", "--data", "A.csv", "--data", "B.csv", *args,
                     "--out", "bad.json"], folder)
    assert done.returncode != 0
    assert message in done.stderr
    assert not (folder / "bad.json").exists()


@pytest.mark.slow
def test_synthetic_100k_by_100_parity():
    x, y = make_classification(n_samples=120_000, n_features=100, n_informative=20, random_state=5)
    x = x.astype(np.float32)
    params = SecureParams(n_estimators=5, max_depth=4, learning_rate=0.3, base_score=0.5)
    model, _ = secure_fit(x[:100_000], y[:100_000].astype(np.float64), params, max_bin=32, route="shuffle")
    reference = xgb_fit(x[:100_000], y[:100_000], params, 32, 0.5).predict(xgb_matrix(x[100_000:]))
    assert abs(roc_auc_score(y[100_000:], model.predict(x[100_000:]))
               - roc_auc_score(y[100_000:], reference)) <= 0.005


def test_killed_party_stops_every_role_with_a_clear_error(tmp_path):
    import os
    import signal
    import time

    from privboost.secure.job import JobError
    from privboost.secure.local import run_local_job

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    table = x.rename(columns=lambda c: c.replace(" ", "_"))
    table["id"] = np.arange(len(table))
    table["target"] = y
    table[["id", *table.columns[:10], "target"]].to_csv(tmp_path / "a.csv", index=False)
    table[["id", *table.columns[10:30]]].to_csv(tmp_path / "b.csv", index=False)
    work = tmp_path / "job"
    killed = []

    def kill_party0(event: dict) -> None:
        if not killed:  # training has started: kill party 0 outright (no chance to say goodbye)
            pid_of = subprocess.run(["pgrep", "-f", str(work / "party0.toml")], capture_output=True, text=True)
            for pid in pid_of.stdout.split():
                os.kill(int(pid), signal.SIGKILL)
            killed.append(time.monotonic())

    start = time.monotonic()
    with pytest.raises(JobError) as failure:
        run_local_job([tmp_path / "a.csv", tmp_path / "b.csv"], "target", tmp_path / "m.json",
                      SecureParams(n_estimators=20, max_depth=3), 16, "vertical", "id", timeout_s=15.0,
                      progress=kill_party0, workdir=work)
    assert killed, "training never reported progress"
    assert time.monotonic() - start < 90
    message = str(failure.value)
    assert "party0" in message or "party1" in message
    assert "closed the connection" in message or "-9" in message or "aborted" in message
    assert not (tmp_path / "m.json").exists()
    assert subprocess.run(["pgrep", "-f", str(work)], capture_output=True).returncode == 1  # nothing left running
