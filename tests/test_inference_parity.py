"""Encrypted prediction agrees with xgboost's Booster.predict on real datasets, missing values included.

Each case trains real xgboost, makes a user's real keys (2048-bit Paillier, CLWW ORE or Boldyreva OPE), encrypts
the model, encrypts queries, evaluates them on the encrypted model exactly as the server does, and decrypts.
"""

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from privboost.datasets import load_nhanes_diabetes
from privboost.inference.client import QueryCodec, link
from privboost.inference.evaluate import CompiledModel
from privboost.inference.format import EncryptedModel, decode_array, encode_array, value_shape
from privboost.inference.proxy import _breadth_first, encrypt_model, make_user_keys
from privboost.model import TreeEnsemble


def _nhanes(task):
    x, y = load_nhanes_diabetes()
    if task == "regression":  # glycohemoglobin from everything else
        keep = ~np.isnan(x["hba1c_percent"].to_numpy())
        return x.loc[keep].drop(columns="hba1c_percent"), x.loc[keep, "hba1c_percent"].to_numpy()
    if task == "multiclass":  # age band (child / adult / senior) from the other records
        return x.drop(columns="age"), np.digitize(x["age"].to_numpy(), [18, 60])
    return x, y


def _sklearn(loader, missing_rate=0.1):
    x, y = loader(return_X_y=True, as_frame=True)
    x = x.copy()
    x[np.random.default_rng(1).random(x.shape) < missing_rate] = np.nan
    return x, y.to_numpy()


CASES = [
    ("breast_cancer", "binary:logistic", lambda: _sklearn(load_breast_cancer), {}),
    ("nhanes_diabetes", "binary:logistic", lambda: _nhanes("binary"), {}),
    ("diabetes", "reg:squarederror", lambda: _sklearn(load_diabetes), {}),
    ("nhanes_hba1c", "reg:squarederror", lambda: _nhanes("regression"), {}),
    ("wine", "multi:softprob", lambda: _sklearn(load_wine), {"num_class": 3}),
    ("nhanes_3class", "multi:softprob", lambda: _nhanes("multiclass"), {"num_class": 3}),
    ("wine_softmax", "multi:softmax", lambda: _sklearn(load_wine), {"num_class": 3}),
]


def _encrypted_predict(booster, x, scheme="ore"):
    model = TreeEnsemble.from_xgboost(booster)
    keys = make_user_keys(model, "alice", scheme=scheme)
    encrypted = EncryptedModel.from_bytes(encrypt_model(model, keys).to_bytes())  # as stored on the server
    compiled = CompiledModel(encrypted)
    codec = QueryCodec(keys)
    matrix = model.as_matrix(x)
    batch = codec.encrypt(matrix)
    shape, dtype = value_shape(encrypted.scheme, batch.count, len(encrypted.features))
    values = decode_array(batch.body["values"], dtype, shape, "values")
    missing = np.isnan(matrix)
    scores = compiled.evaluate(values, missing)
    width = (2 * encrypted.paillier_n.bit_length() + 7) // 8
    raw = np.frombuffer(b"".join(c.to_bytes(width, "big") for c in scores.ciphertexts), dtype=np.uint8)
    margin = codec.decrypt({"slots": scores.slots, "ciphertexts": encode_array(raw)}, batch.count)
    return link(margin, model.objective), compiled, compiled.reached_leaves(values, missing), model, matrix


def _expected_leaf_slots(model, matrix, compiled):
    """Leaf slot of xgboost's own path in every tree, in the encrypted model's numbering."""
    out = np.empty((matrix.shape[0], len(model.trees)), dtype=np.int64)
    for t, tree in enumerate(model.trees):
        order = _breadth_first(tree)
        new_id = np.empty(tree.num_nodes, dtype=np.int64)
        new_id[order] = np.arange(order.size) + compiled.model.roots[t]
        out[:, t] = compiled.model.leaf_slot[new_id[tree.leaf_index(matrix)]]
    return out


@pytest.mark.parametrize("name, objective, load, extra", CASES, ids=[c[0] for c in CASES])
def test_encrypted_prediction_matches_xgboost(name, objective, load, extra):
    x, y = load()
    assert np.isnan(x.to_numpy(dtype=float)).any(), "each case must exercise missing values"
    booster = xgb.train({"objective": objective, "max_depth": 6, "eta": 0.3, **extra}, xgb.DMatrix(x, y), 40)
    rows = x.iloc[:300]
    got, compiled, reached, model, matrix = _encrypted_predict(booster, rows)
    want = booster.predict(xgb.DMatrix(rows))
    if objective == "multi:softmax":  # Booster gives the class; the client returns the class probabilities
        assert np.array_equal(np.argmax(got, axis=1), want.astype(int))
        want = booster.predict(xgb.DMatrix(rows), output_margin=True)
        want = np.exp(want - want.max(axis=1, keepdims=True))
        want /= want.sum(axis=1, keepdims=True)
    if objective == "reg:squarederror":  # xgboost sums leaves in float32, we sum exactly: compare in float32 ulps
        np.testing.assert_allclose(got[:, 0], want, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-6)
    assert np.array_equal(reached, _expected_leaf_slots(model, matrix, compiled)), "left xgboost's path"


def test_boldyreva_ope_scheme_matches_xgboost():
    x, y = _sklearn(load_breast_cancer)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4}, xgb.DMatrix(x, y), 15)
    rows = x.iloc[:60]
    got, compiled, reached, model, matrix = _encrypted_predict(booster, rows, scheme="ope")
    np.testing.assert_allclose(got[:, 0], booster.predict(xgb.DMatrix(rows)), rtol=0, atol=1e-6)
    assert np.array_equal(reached, _expected_leaf_slots(model, matrix, compiled))
