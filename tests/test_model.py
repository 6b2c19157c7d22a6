"""TreeEnsemble: exact plaintext prediction and XGBoost JSON round trip, against real xgboost."""

import json

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from privboost.model import ModelFormatError, TreeEnsemble


def _with_missing(x, rate=0.1, seed=0):
    x = np.array(x, dtype=np.float64)
    x[np.random.default_rng(seed).random(x.shape) < rate] = np.nan
    return x


CASES = {
    "binary:logistic": (load_breast_cancer, {}),
    "reg:squarederror": (load_diabetes, {}),
    "multi:softprob": (load_wine, {"num_class": 3}),
    "multi:softmax": (load_wine, {"num_class": 3}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request):
    loader, extra = CASES[request.param]
    x, y = loader(return_X_y=True)
    x = _with_missing(x)
    params = {"objective": request.param, "max_depth": 5, "eta": 0.3, **extra}
    booster = xgb.train(params, xgb.DMatrix(x, y), num_boost_round=30)
    return booster, x


def test_margin_is_bit_exact(trained):
    booster, x = trained
    model = TreeEnsemble.from_xgboost(booster)
    want = booster.predict(xgb.DMatrix(x), output_margin=True)
    np.testing.assert_array_equal(model.predict_margin(x), want)


def test_prediction_matches_booster(trained):
    booster, x = trained
    model = TreeEnsemble.from_xgboost(booster)
    np.testing.assert_allclose(model.predict(x), booster.predict(xgb.DMatrix(x)), rtol=0, atol=1e-6)


def test_json_round_trip_predicts_identically(trained, tmp_path):
    booster, x = trained
    model = TreeEnsemble.from_xgboost(booster)
    path = tmp_path / "m.json"
    model.save(path)
    reloaded = xgb.Booster()
    reloaded.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(xgb.DMatrix(x)), booster.predict(xgb.DMatrix(x)))
    again = TreeEnsemble.load(path)
    np.testing.assert_array_equal(again.predict_margin(x), model.predict_margin(x))


def test_sklearn_wrappers_and_feature_names():
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    clf = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y)
    model = TreeEnsemble.from_xgboost(clf)
    assert model.feature_names == list(x.columns)
    np.testing.assert_allclose(model.predict(x), clf.predict_proba(x)[:, 1], atol=1e-6)
    shuffled = x[list(reversed(x.columns))]
    np.testing.assert_allclose(model.predict(shuffled), clf.predict_proba(x)[:, 1], atol=1e-6)
    reg = xgb.XGBRegressor(n_estimators=10, max_depth=3).fit(x, y)
    np.testing.assert_allclose(TreeEnsemble.from_xgboost(reg).predict(x), reg.predict(x), atol=1e-6)


def test_categorical_splits_exact():
    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame({
        "a": rng.normal(size=n),
        "c": pd.Categorical(rng.integers(0, 8, n)),
        "d": pd.Categorical(rng.integers(0, 40, n)),
    })
    y = (frame.a + (frame.c.cat.codes % 3) + (frame.d.cat.codes % 5 == 1) + rng.normal(size=n) * 0.3 > 1)
    dm = xgb.DMatrix(frame, y.astype(int), enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "max_cat_to_onehot": 1}, dm, 20)
    model = TreeEnsemble.from_xgboost(booster)
    assert sum(int(t.categorical.sum()) for t in model.trees) > 0
    want = booster.predict(dm, output_margin=True)
    np.testing.assert_array_equal(model.predict_margin(frame), want)
    np.testing.assert_array_equal(model.to_booster().predict(dm, output_margin=True), want)


def test_edge_values_follow_xgboost():
    x, y = load_breast_cancer(return_X_y=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4}, xgb.DMatrix(x, y), 10)
    model = TreeEnsemble.from_xgboost(booster)
    thresholds = np.concatenate([t.threshold[~t.is_leaf] for t in model.trees])
    features = np.concatenate([t.feature[~t.is_leaf] for t in model.trees])
    probe = np.tile(np.float32(x[:1]), (len(thresholds) * 3, 1)).astype(np.float32)
    for i, (thr, f) in enumerate(zip(thresholds, features, strict=True)):  # exactly at, just below, just above
        probe[3 * i, f] = thr
        probe[3 * i + 1, f] = np.nextafter(thr, np.float32(-np.inf))
        probe[3 * i + 2, f] = np.nextafter(thr, np.float32(np.inf))
    np.testing.assert_array_equal(model.predict_margin(probe),
                                  booster.predict(xgb.DMatrix(probe), output_margin=True))


@pytest.mark.parametrize("text, reason", [
    ("not json", "not JSON"),
    ('{"learner": {}}', "not an XGBoost JSON tree model"),
    ('{"learner": {"objective": {"name": "rank:pairwise"}}}', "not an XGBoost"),
])
def test_malformed_model_files_are_refused(tmp_path, text, reason):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ModelFormatError, match=reason):
        TreeEnsemble.load(path)


def test_unsupported_objective_and_corrupt_tree_refused():
    x, y = load_breast_cancer(return_X_y=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(x, y), 2)
    doc = json.loads(booster.save_raw("json"))
    doc["learner"]["objective"]["name"] = "survival:cox"
    with pytest.raises(ModelFormatError, match="not supported"):
        TreeEnsemble.from_xgboost(doc)
    doc = json.loads(booster.save_raw("json"))
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"][0] = 0  # a cycle
    with pytest.raises(ModelFormatError):
        TreeEnsemble.from_xgboost(doc)
    with pytest.raises(ModelFormatError, match="not found"):
        TreeEnsemble.load("/nonexistent/model.json")
