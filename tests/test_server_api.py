"""Server API: authentication, registration, and refusal of malformed input — each with nothing stored or changed.

Real keys, real encrypted models of a real xgboost model; the FastAPI app is driven in-process over HTTP semantics.
"""

import base64
import io

import numpy as np
import pytest
import xgboost as xgb
from fastapi.testclient import TestClient
from sklearn.datasets import load_breast_cancer

from privboost.inference.client import QueryCodec
from privboost.inference.format import EncryptedModel
from privboost.inference.proxy import encrypt_model, make_user_keys
from privboost.inference.server import create_app
from privboost.model import TreeEnsemble


@pytest.fixture(scope="module")
def setting():
    x, y = load_breast_cancer(return_X_y=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, y), 5)
    model = TreeEnsemble.from_xgboost(booster)
    keys_a = make_user_keys(model, "alice", paillier_bits=1024)
    keys_b = make_user_keys(model, "bob", paillier_bits=1024)
    return model, x.astype(np.float32), keys_a, keys_b, encrypt_model(model, keys_a), encrypt_model(model, keys_b)


def _client(tmp_path, **kwargs):
    return TestClient(create_app(str(tmp_path / "db.sqlite"), **kwargs))


def _register(client, user, model_blob, model_id="m"):
    token = client.post("/v1/users", json={"user": user}).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert client.put(f"/v1/users/{user}/models/{model_id}", content=model_blob, headers=auth).status_code == 201
    return auth


def _versions(client, user, auth):
    return client.get(f"/v1/users/{user}/models", headers=auth).json()["models"]


def test_tokens_and_ownership(tmp_path, setting):
    _, _, _, _, model_a, model_b = setting
    client = _client(tmp_path)
    auth_a = _register(client, "alice", model_a.to_bytes())
    auth_b = _register(client, "bob", model_b.to_bytes())
    before = _versions(client, "alice", auth_a)
    assert client.post("/v1/users", json={"user": "alice"}).status_code == 409  # claimed by the first
    for headers in ({}, {"Authorization": "Bearer wrong"}, auth_b, {"Authorization": "Basic x"}):
        assert client.put("/v1/users/alice/models/m", content=model_b.to_bytes(), headers=headers).status_code == 401
        assert client.delete("/v1/users/alice/models/m", headers=headers).status_code == 401
        assert client.get("/v1/users/alice/models", headers=headers).status_code == 401
    assert _versions(client, "alice", auth_a) == before
    assert client.post("/v1/users/alice/models/nope/predict", headers=auth_a,
                       json={"key_id": "x", "features": ["a"], "count": 1, "values": "", "missing": ""}
                       ).status_code == 404
    assert client.post("/v1/users", json={"user": "bad name!"}).status_code == 422
    assert client.put("/v1/users/alice/models/bad*id", content=b"x", headers=auth_a).status_code == 422
    assert client.delete("/v1/users/alice/models/m", headers=auth_a).status_code == 200
    assert _versions(client, "alice", auth_a) == []


def test_registration_secret(tmp_path, monkeypatch):
    client = _client(tmp_path, registration_secret="s3cret")
    assert client.post("/v1/users", json={"user": "eve"}).status_code == 403
    assert client.post("/v1/users", json={"user": "eve"}, headers={"X-Registration-Secret": "no"}).status_code == 403
    assert client.post("/v1/users", json={"user": "eve"},
                       headers={"X-Registration-Secret": "s3cret"}).status_code == 201


def _query(setting, rows=3, keys=None):
    _, x, keys_a, _, _, _ = setting
    return QueryCodec(keys or keys_a).encrypt(x[:rows]).body


def test_query_shape_and_key_errors(tmp_path, setting):
    _, x, keys_a, keys_b, model_a, model_b = setting
    client = _client(tmp_path, max_batch=50)
    auth_a = _register(client, "alice", model_a.to_bytes())
    auth_b = _register(client, "bob", model_b.to_bytes())
    url_a, url_b = "/v1/users/alice/models/m/predict", "/v1/users/bob/models/m/predict"
    good = _query(setting)
    assert client.post(url_a, json=good, headers=auth_a).status_code == 200
    assert client.post(url_b, json=good, headers=auth_b).status_code == 422  # alice's ciphertexts on bob's model
    assert client.post(url_a, json=_query(setting, keys=keys_b), headers=auth_a).status_code == 422

    def refused(body, status=422):
        response = client.post(url_a, json=body, headers=auth_a)
        assert response.status_code == status, response.text
        return response.json()["detail"]

    assert "missing" in refused({**good, "features": good["features"][:-1]})
    assert "unknown" in refused({**good, "features": good["features"][:-1] + ["deadbeef"]})
    assert "twice" in refused({**good, "features": good["features"][:-1] + good["features"][:1]})
    values = np.frombuffer(base64.b64decode(good["values"]), dtype=np.uint64).copy()
    values[0] = np.uint64(3)  # a 2-bit group holding 3 is no CLWW ciphertext
    assert "ORE" in refused({**good, "values": base64.b64encode(values.tobytes()).decode()})
    assert "bytes" in refused({**good, "values": base64.b64encode(values.tobytes()[:-8]).decode()})
    assert "base64" in refused({**good, "values": "***"})
    assert refused({**good, "count": 0})
    assert refused({**good, "count": "many"})
    big = QueryCodec(keys_a).encrypt(np.repeat(x[:1], 51, axis=0)).body
    assert "exceeds" in refused(big, 413)


def test_body_limit(tmp_path, setting):
    _, _, _, _, model_a, _ = setting
    client = _client(tmp_path, max_body_bytes=10_000)
    token = client.post("/v1/users", json={"user": "alice"}).json()["token"]
    response = client.put("/v1/users/alice/models/m", content=model_a.to_bytes(),
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 413
    assert client.get("/v1/users/alice/models", headers={"Authorization": f"Bearer {token}"}).json()["models"] == []


def _archive(model: EncryptedModel, **changes) -> bytes:
    arrays = dict(np.load(io.BytesIO(model.to_bytes()), allow_pickle=False))
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_malformed_models_are_refused_and_not_stored(tmp_path, setting):
    _, _, _, _, model_a, _ = setting
    client = _client(tmp_path)
    token = client.post("/v1/users", json={"user": "alice"}).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    left_back = model_a.left.copy()
    left_back[0] = 0
    right_out = model_a.right.copy()
    right_out[0] = model_a.num_nodes + 5
    cts = np.load(io.BytesIO(model_a.to_bytes()))["leaf_ciphertexts"].copy()
    cts[0, :] = 0xFF  # >= n^2
    blobs = {
        "random bytes": np.random.default_rng(0).bytes(5000),
        "truncated": model_a.to_bytes()[:-200],
        "child before parent": _archive(model_a, left=left_back),
        "child out of range": _archive(model_a, right=right_out),
        "ciphertext out of range": _archive(model_a, leaf_ciphertexts=cts),
        "wrong dtype": _archive(model_a, node_feature=model_a.node_feature.astype(np.float64)),
        "bad trit": _archive(model_a, thresholds=np.full(model_a.num_nodes, 3, dtype=np.uint64)),
    }
    for name, blob in blobs.items():
        response = client.put("/v1/users/alice/models/m", content=blob, headers=auth)
        assert response.status_code == 422, name
        assert "malformed" in response.json()["detail"], name
    assert client.get("/v1/users/alice/models", headers=auth).json()["models"] == []
