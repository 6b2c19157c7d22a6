"""Bad input and security of the encrypted-prediction server (issue 3, "Bad input and security").

Nothing is mocked: real xgboost models trained here, real per-user keys (Paillier, CLWW ORE, Boldyreva OPE), real
encrypted models. HTTP-level refusals drive the FastAPI app in-process (`TestClient`); every refusal asserts the
exact 4xx status *and* that the database is byte-for-byte unchanged (users, token hashes, model versions and
blobs). Key confidentiality runs a real ``privboost server`` process behind a TCP relay written here that records
every byte in both directions, sets users up with the real proxy and predicts with the real client through it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import secrets
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from fastapi.testclient import TestClient
from sklearn.datasets import load_breast_cancer

from privboost.crypto.prf import derive_key
from privboost.demo import free_port
from privboost.inference.client import QueryCodec, link, predict_encrypted
from privboost.inference.format import OPE_OUT_BITS
from privboost.inference.keys import UserKeys
from privboost.inference.proxy import REGISTRATION_SECRET_ENV, encrypt_model, make_user_keys, setup_user
from privboost.inference.server import create_app
from privboost.model import TreeEnsemble

PREDICT = "/v1/users/{user}/models/{model}/predict"


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world():
    """A real binary model and three users' real keys and encrypted models (two ORE, one OPE)."""
    data = load_breast_cancer(as_frame=True)
    x, y = data.data.astype(np.float32), data.target
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "eta": 0.3}, xgb.DMatrix(x, y), 6)
    model = TreeEnsemble.from_xgboost(booster)
    keys = {
        "alice": make_user_keys(model, "alice", "m", paillier_bits=1024),
        "bob": make_user_keys(model, "bob", "m", paillier_bits=1024),
        "olga": make_user_keys(model, "olga", "m", scheme="ope", paillier_bits=1024),
    }
    blobs = {user: encrypt_model(model, k).to_bytes() for user, k in keys.items()}
    return {"x": x, "booster": booster, "model": model, "keys": keys, "blobs": blobs}


class Api:
    """The server app on a fresh SQLite file, with helpers to act and to snapshot what is stored."""

    def __init__(self, db: Path, **options) -> None:
        self.db = db
        self.http = TestClient(create_app(str(db), **options), raise_server_exceptions=True)
        self.tokens: dict[str, str] = {}

    def register(self, user: str, headers: dict | None = None) -> str:
        response = self.http.post("/v1/users", json={"user": user}, headers=headers or {})
        assert response.status_code == 201, response.text
        self.tokens[user] = response.json()["token"]
        return self.tokens[user]

    def auth(self, user: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def upload(self, user: str, blob: bytes, model_id: str = "m") -> dict:
        response = self.http.put(f"/v1/users/{user}/models/{model_id}", content=blob, headers=self.auth(user))
        assert response.status_code == 201, response.text
        return response.json()

    def predict(self, user: str, body, headers: dict | None = None, model_id: str = "m"):
        return self.http.post(PREDICT.format(user=user, model=model_id), json=body,
                              headers=self.auth(user) if headers is None else headers)

    def state(self) -> tuple:
        """Everything stored: users with token hashes, models with versions and blob digests."""
        with sqlite3.connect(self.db) as conn:
            users = conn.execute("SELECT name, token_sha256 FROM users ORDER BY name").fetchall()
            models = conn.execute("SELECT user, model_id, version, info, blob FROM models ORDER BY user, model_id"
                                  ).fetchall()
        conn.close()
        return tuple(users), tuple((u, m, v, i, hashlib.sha256(b).hexdigest()) for u, m, v, i, b in models)

    def refused(self, response, status: int, state: tuple, reason: str | None = None) -> str:
        """Assert the exact status, a reason in the body, and that nothing stored changed."""
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert detail, "a refusal must say why"
        if reason is not None:
            assert reason in str(detail), detail
        assert self.state() == state, "a refused request changed what the server stores"
        return str(detail)


@pytest.fixture
def api(tmp_path, world):
    """alice and bob registered, each with her own encrypted model 'm' under her own keys."""
    server = Api(tmp_path / "db.sqlite")
    for user in ("alice", "bob"):
        server.register(user)
        server.upload(user, world["blobs"][user])
    return server


def _query(world, user: str, rows: int = 3, start: int = 0) -> dict:
    return QueryCodec(world["keys"][user]).encrypt(world["model"].as_matrix(world["x"].iloc[start:start + rows])).body


def _values(body: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(body["values"]), dtype=np.uint64).copy()


def _b64(arr: np.ndarray | bytes) -> str:
    return base64.b64encode(arr if isinstance(arr, bytes) else arr.tobytes()).decode()


# ------------------------------------------------------------------------------------------ authentication (401)
BAD_AUTH = {
    "missing token": None,
    "wrong token": "Bearer " + secrets.token_urlsafe(32),
    "empty bearer": "Bearer ",
    "not a bearer": "Basic YWxpY2U6cGFzcw==",
    "another user's token": "bob",
}


@pytest.mark.parametrize("case", list(BAD_AUTH))
def test_every_owner_action_needs_the_owners_token(api, world, case):
    value = BAD_AUTH[case]
    if value == "bob":
        value = f"Bearer {api.tokens['bob']}"
    headers = {} if value is None else {"Authorization": value}
    before = api.state()
    query = _query(world, "alice")
    attempts = [
        api.http.get("/v1/users/alice/models", headers=headers),
        api.http.put("/v1/users/alice/models/m", content=world["blobs"]["bob"], headers=headers),  # replace
        api.http.put("/v1/users/alice/models/new", content=world["blobs"]["bob"], headers=headers),  # add
        api.http.delete("/v1/users/alice/models/m", headers=headers),
        api.http.delete("/v1/users/alice", headers=headers),
        api.predict("alice", query, headers=headers),
    ]
    for response in attempts:
        detail = api.refused(response, 401, before)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "token" in detail
        if value is not None and value != "Bearer ":
            assert value.split(" ", 1)[1] not in response.text  # never echoed
    assert api.http.get("/v1/users/alice/models", headers=api.auth("alice")).json()["models"][0]["version"] == 1


def test_token_of_unknown_user_is_401_not_404(api):
    before = api.state()
    response = api.http.get("/v1/users/nobody/models", headers=api.auth("alice"))
    api.refused(response, 401, before, "wrong token")


def test_unknown_model_is_404(api, world):
    before = api.state()
    api.refused(api.predict("alice", _query(world, "alice"), model_id="nope"), 404, before, "no model 'nope'")
    api.refused(api.http.delete("/v1/users/alice/models/nope", headers=api.auth("alice")), 404, before, "nope")
    # bob's model "m" exists, but alice asking for a model id only bob has is still unknown to her
    api.upload("bob", world["blobs"]["bob"], "bobs-only")
    before = api.state()
    api.refused(api.predict("alice", _query(world, "alice"), model_id="bobs-only"), 404, before)


# --------------------------------------------------------------------------------------------- registration
def test_a_name_is_claimed_by_its_first_registration(tmp_path):
    server = Api(tmp_path / "db.sqlite")
    first = server.register("carol")
    assert len(first) >= 40
    before = server.state()
    again = server.http.post("/v1/users", json={"user": "carol"})
    detail = server.refused(again, 409, before, "already registered")
    assert "token" not in again.json() and first not in again.text and "carol" in detail
    # the first token still owns the name; no second token was issued
    assert server.http.get("/v1/users/carol/models", headers=server.auth("carol")).status_code == 200
    # tokens are stored hashed: the database holds SHA-256(token), never the token
    (name, digest), = before[0]
    assert name == "carol" and digest == hashlib.sha256(first.encode()).hexdigest()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))
    assert first.encode() not in stored and digest.encode() in stored


def test_registration_secret_restricts_registration(tmp_path):
    secret = secrets.token_urlsafe(24)
    server = Api(tmp_path / "db.sqlite", registration_secret=secret)
    empty = server.state()
    for headers in ({}, {"X-Registration-Secret": ""}, {"X-Registration-Secret": "wrong"},
                    {"X-Registration-Secret": secret[:-1]}, {"X-Registration-Secret": secret + "x"},
                    {"Authorization": f"Bearer {secret}"}):
        response = server.http.post("/v1/users", json={"user": "dave"}, headers=headers)
        server.refused(response, 403, empty, "registration secret")
        assert secret not in response.text
    assert empty == ((), ())
    server.register("dave", headers={"X-Registration-Secret": secret})  # 201
    before = server.state()
    assert [u for u, _ in before[0]] == ["dave"]
    server.refused(server.http.post("/v1/users", json={"user": "dave"}, headers={"X-Registration-Secret": secret}),
                   409, before)


def test_replacing_or_deleting_needs_the_token(api, world):
    assert api.upload("alice", world["blobs"]["alice"])["version"] == 2  # the owner replaces
    before = api.state()
    for headers in ({}, {"Authorization": f"Bearer {api.tokens['bob']}"}):
        api.refused(api.http.put("/v1/users/alice/models/m", content=world["blobs"]["bob"], headers=headers),
                    401, before)
        api.refused(api.http.delete("/v1/users/alice/models/m", headers=headers), 401, before)
        api.refused(api.http.delete("/v1/users/alice", headers=headers), 401, before)
    assert api.http.delete("/v1/users/alice/models/m", headers=api.auth("alice")).json() == {"deleted": "m"}
    assert api.http.get("/v1/users/alice/models", headers=api.auth("alice")).json() == {"models": []}
    assert api.http.delete("/v1/users/alice", headers=api.auth("alice")).status_code == 200
    assert api.http.get("/v1/users/alice/models", headers=api.auth("alice")).status_code == 401
    assert [u for u, _ in api.state()[0]] == ["bob"]


BAD_NAMES = ["", "bad name", "a" * 65, "-alice", ".alice", "_alice", "alice\n", "alice\r\nX: y", "al\x00ice",
             "ålice", "alice!", "../alice", "alice/x", "al%ice"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_user_name_is_422(tmp_path, name):
    server = Api(tmp_path / "db.sqlite")
    empty = server.state()
    server.refused(server.http.post("/v1/users", json={"user": name}), 422, empty)


def test_malformed_registration_body_is_422(tmp_path):
    server = Api(tmp_path / "db.sqlite")
    empty = server.state()
    for body in ({}, {"user": 5}, {"user": None}, {"user": ["alice"]}, ["alice"], "alice"):
        server.refused(server.http.post("/v1/users", json=body), 422, empty)
    server.refused(server.http.post("/v1/users", content=b"{not json", headers={"Content-Type": "application/json"}),
                   422, empty)


@pytest.mark.parametrize("model_id", ["bad id", "a" * 65, "-m", ".m", "m!", "ümlaut", "m\n", "m%0A"])
def test_invalid_model_id_is_422(api, world, model_id):
    before = api.state()
    path = f"/v1/users/alice/models/{urllib.parse.quote(model_id, safe='')}"
    api.refused(api.http.put(path, content=world["blobs"]["alice"], headers=api.auth("alice")), 422, before,
                "invalid model id")
    api.refused(api.http.delete(path, headers=api.auth("alice")), 422, before, "invalid model id")
    api.refused(api.http.post(path + "/predict", json=_query(world, "alice"), headers=api.auth("alice")), 422, before)


def test_invalid_user_name_in_path_is_422(api, world):
    before = api.state()
    for user in ("bad name", "alice\n", "-x"):
        path = f"/v1/users/{urllib.parse.quote(user, safe='')}/models"
        api.refused(api.http.get(path, headers=api.auth("alice")), 422, before, "invalid user name")
        api.refused(api.http.put(path + "/m", content=world["blobs"]["alice"], headers=api.auth("alice")), 422,
                    before)


# ------------------------------------------------------------------------------------------------- queries
def test_own_queries_are_answered_correctly(api, world):
    """The baseline every refusal below departs from: each user's own query works and decrypts to xgboost's."""
    want = world["booster"].predict(xgb.DMatrix(world["x"].iloc[:3]))
    for user in ("alice", "bob"):
        body = _query(world, user)
        response = api.predict(user, body)
        assert response.status_code == 200, response.text
        margin = QueryCodec(world["keys"][user]).decrypt(response.json(), 3)
        np.testing.assert_allclose(link(margin, "binary:logistic")[:, 0], want, atol=1e-6)


def test_query_feature_mismatch_is_422(api, world):
    good = _query(world, "alice")
    features, values = good["features"], _values(good).reshape(3, -1)
    missing_one = {**good, "features": features[:-1], "values": _b64(np.ascontiguousarray(values[:, :-1])),
                   "missing": _b64(np.packbits(np.zeros((3, len(features) - 1), bool)))}
    extra_one = {**good, "features": [*features, "f" * 32],
                 "values": _b64(np.ascontiguousarray(np.hstack([values, values[:, :1]]))),
                 "missing": _b64(np.packbits(np.zeros((3, len(features) + 1), bool)))}
    renamed = {**good, "features": [*features[:-1], "0" * 32]}
    duplicated = {**good, "features": [*features[:-1], features[0]]}
    plaintext_names = {**good, "features": list(world["model"].feature_names)}
    before = api.state()
    assert "1 missing, 0 unknown" in api.refused(api.predict("alice", missing_one), 422, before)
    assert "0 missing, 1 unknown" in api.refused(api.predict("alice", extra_one), 422, before)
    assert "1 missing, 1 unknown" in api.refused(api.predict("alice", renamed), 422, before)
    api.refused(api.predict("alice", duplicated), 422, before, "twice")
    api.refused(api.predict("alice", plaintext_names), 422, before, "do not match")
    api.refused(api.predict("alice", {**good, "features": []}), 422, before)


def test_query_under_another_users_keys_is_422(api, world):
    a_query, b_query = _query(world, "alice"), _query(world, "bob")
    before = api.state()
    # bob's token, alice's ciphertexts, bob's model
    api.refused(api.predict("bob", a_query), 422, before, "other keys")
    # alice's token, bob's ciphertexts, alice's model
    api.refused(api.predict("alice", b_query), 422, before, "other keys")
    # alice's ciphertexts relabelled with bob's key id still name alice's pseudonyms: refused on bob's model
    api.refused(api.predict("bob", {**a_query, "key_id": b_query["key_id"]}), 422, before, "do not match")
    # alice's query sent to bob's model with alice's own token: not bob, so no answer at all
    api.refused(api.predict("bob", a_query, headers=api.auth("alice")), 401, before)
    # alice's model re-keyed by the proxy: queries under her old keys are now under other keys
    fresh = make_user_keys(world["model"], "alice", "m", paillier_bits=1024)
    api.upload("alice", encrypt_model(world["model"], fresh).to_bytes())
    before = api.state()
    api.refused(api.predict("alice", a_query), 422, before, "other keys")
    assert api.predict("alice", QueryCodec(fresh).encrypt(world["model"].as_matrix(world["x"].iloc[:2])).body
                       ).status_code == 200


def test_ciphertext_out_of_range_or_of_wrong_type_is_422(api, world):
    good = _query(world, "alice")
    values = _values(good)
    trit3 = values.copy()
    trit3[4] |= np.uint64(0b11 << 20)  # a 2-bit group holding 3 is no CLWW trit
    all3 = np.full_like(values, np.uint64(0xFFFFFFFFFFFFFFFF))
    cases = {
        "trit 3": ({"values": _b64(trit3)}, "CLWW"),
        "all trits 3": ({"values": _b64(all3)}, "CLWW"),
        "one value short": ({"values": _b64(values[:-1])}, "bytes"),
        "one byte extra": ({"values": _b64(values.tobytes() + b"\0")}, "bytes"),
        "float64 values": ({"values": _b64(values[:-1].astype(np.float64).tobytes() + b"\0" * 8)}, None),
        "not base64": ({"values": "*** not base64 ***"}, "base64"),
        "urlsafe alphabet": ({"values": good["values"].replace("+", "-").replace("/", "_") + "-_"}, "base64"),
        "base64 with junk": ({"values": good["values"] + "!"}, "base64"),
        "values not a string": ({"values": 12345}, None),
        "values a list": ({"values": values.tolist()}, None),
        "missing mask short": ({"missing": _b64(b"\0")}, "missing mask"),
        "missing mask not base64": ({"missing": "%%%"}, "base64"),
        "count larger than data": ({"count": 4}, "bytes"),
        "count smaller than data": ({"count": 2}, "bytes"),
        "count zero": ({"count": 0}, None),
        "count negative": ({"count": -1}, None),
        "count not a number": ({"count": "three"}, None),
        "features not a list": ({"features": "abc"}, None),
        "key id missing": ({"key_id": None}, None),
    }
    before = api.state()
    for name, (change, reason) in cases.items():
        body = {**good, **change}
        response = api.predict("alice", {k: v for k, v in body.items() if v is not None})
        try:
            api.refused(response, 422, before, reason)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    for body in (None, [good], "values"):
        api.refused(api.predict("alice", body), 422, before)
    api.refused(api.http.post(PREDICT.format(user="alice", model="m"), content=b"\x00\xff" * 10,
                              headers={**api.auth("alice"), "Content-Type": "application/json"}), 422, before)


def test_ope_ciphertext_out_of_range_is_422(tmp_path, world):
    server = Api(tmp_path / "db.sqlite")
    server.register("olga")
    server.upload("olga", world["blobs"]["olga"])
    good = _query(world, "olga")
    assert server.predict("olga", good).status_code == 200
    values = _values(good)
    before = server.state()
    for bad in (np.uint64(1 << OPE_OUT_BITS), np.uint64(2**64 - 1)):
        changed = values.copy()
        changed[7] = bad
        server.refused(server.predict("olga", {**good, "values": _b64(changed)}), 422, before, "out of range for OPE")
    # an ORE query (other scheme, other keys) on the OPE model
    server.refused(server.predict("olga", {**_query(world, "alice"), "key_id": good["key_id"]}), 422, before)


def test_oversized_batch_is_413(tmp_path, world):
    server = Api(tmp_path / "db.sqlite", max_batch=4)
    server.register("alice")
    server.upload("alice", world["blobs"]["alice"])
    assert server.predict("alice", _query(world, "alice", rows=4)).status_code == 200
    before = server.state()
    server.refused(server.predict("alice", _query(world, "alice", rows=5)), 413, before, "exceeds the limit of 4")
    # a huge declared count is refused before anything is decoded
    server.refused(server.predict("alice", {**_query(world, "alice", rows=1), "count": 10**12}), 413, before,
                   "exceeds")


def test_oversized_body_is_413(tmp_path, world):
    blob = world["blobs"]["alice"]
    limit = len(blob) + 64
    server = Api(tmp_path / "db.sqlite", max_body_bytes=limit)
    server.register("alice")
    server.upload("alice", blob)
    before = server.state()
    too_big = blob + b"\0" * 65
    auth = server.auth("alice")
    # declared by Content-Length
    server.refused(server.http.put("/v1/users/alice/models/m", content=too_big, headers=auth), 413, before,
                   "too large")
    server.refused(server.http.put("/v1/users/alice/models/m2", content=too_big, headers=auth), 413, before)

    def chunks():  # no Content-Length: chunked transfer, counted as it streams
        for start in range(0, len(too_big), 4096):
            yield too_big[start:start + 4096]

    server.refused(server.http.put("/v1/users/alice/models/m2", content=chunks(), headers=auth), 413, before,
                   "too large")
    big_query = _query(world, "alice", rows=200)  # 200 x 30 ciphertexts: far over the limit
    assert len(json.dumps(big_query)) > limit
    server.refused(server.predict("alice", big_query), 413, before, "too large")
    server.refused(server.http.post("/v1/users", json={"user": "x" * 40, "pad": "p" * limit}), 413, before)
    assert server.predict("alice", _query(world, "alice", rows=2)).status_code == 200  # still serving


# --------------------------------------------------------------------------------------- malformed model uploads
def _arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name].copy() for name in archive.files}


def _savez(arrays: dict[str, np.ndarray], **changes) -> bytes:
    out = {**arrays, **changes}
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in out.items() if v is not None})
    return buf.getvalue()


def _header(arrays: dict, **changes) -> np.ndarray:
    header = json.loads(bytes(arrays["header"]))
    header.update(changes)
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _malformed(blob: bytes) -> dict[str, bytes]:
    a = _arrays(blob)
    n_nodes = a["node_feature"].size
    inner = np.flatnonzero(a["node_feature"] >= 0)
    deep = int(inner[inner > a["roots"][1]][1])  # an inner node of the second tree below its root

    def edit(name, index, value, arrays=a):
        arr = arrays[name].copy()
        arr[index] = value
        return arr

    cts = a["leaf_ciphertexts"]
    header = json.loads(bytes(a["header"]))
    n = int(header["paillier_n"])
    too_big = edit("leaf_ciphertexts", 0, 0xFF)  # 2^(8w) - 1 >= n^2
    exactly_nsq = cts.copy()
    exactly_nsq[0] = np.frombuffer((n * n).to_bytes(cts.shape[1], "big"), dtype=np.uint8)
    npy = io.BytesIO()
    np.save(npy, a["node_feature"])
    pickled = io.BytesIO()
    np.savez(pickled, **{**a, "roots": np.array([a["roots"][0], object()], dtype=object)})
    return {
        "random bytes": np.random.default_rng(3).bytes(6000),
        "empty": b"",
        "truncated archive (half)": blob[: len(blob) // 2],
        "truncated archive (tail)": blob[:-100],
        "a bare .npy array": npy.getvalue(),
        "pickled object array": pickled.getvalue(),
        "zip of text": _zip_of_text(),
        "header missing": _savez(a, header=None),
        "thresholds missing": _savez(a, thresholds=None),
        "header not JSON": _savez(a, header=np.frombuffer(b"{nope", np.uint8)),
        "header a JSON list": _savez(a, header=np.frombuffer(b"[1, 2]", np.uint8)),
        "header wrong format version": _savez(a, header=_header(a, format=99)),
        "header unknown scheme": _savez(a, header=_header(a, scheme="rot13")),
        "header modulus too small": _savez(a, header=_header(a, paillier_n=str(2**512 + 1))),
        "header negative modulus": _savez(a, header=_header(a, paillier_n=str(-n))),
        "header duplicate feature": _savez(a, header=_header(a, features=header["features"][:-1]
                                                             + header["features"][:1])),
        "child index pointing backwards (self)": _savez(a, left=edit("left", 0, 0)),
        "child index pointing backwards (ancestor)": _savez(a, right=edit("right", deep, int(a["roots"][1]))),
        "child index out of range": _savez(a, right=edit("right", 0, n_nodes + 5)),
        "child index negative at a split": _savez(a, left=edit("left", 0, -7)),
        "leaf with a child": _savez(a, left=edit("left", int(np.flatnonzero(a["node_feature"] < 0)[0]), n_nodes - 1)),
        "node in two trees": _savez(a, roots=edit("roots", 1, 1)),
        "split on a feature out of range": _savez(a, node_feature=edit("node_feature", 0, 30)),
        "tree adds to a missing output": _savez(a, tree_output=edit("tree_output", 0, 1)),
        "leaf ciphertext >= n^2 (all ones)": _savez(a, leaf_ciphertexts=too_big),
        "leaf ciphertext == n^2": _savez(a, leaf_ciphertexts=exactly_nsq),
        "leaf ciphertext zero": _savez(a, leaf_ciphertexts=edit("leaf_ciphertexts", 0, 0)),
        "leaf ciphertexts of the wrong width": _savez(a, leaf_ciphertexts=np.ascontiguousarray(cts[:, 1:])),
        "a leaf without a ciphertext": _savez(a, leaf_ciphertexts=np.ascontiguousarray(cts[:-1])),
        "threshold trit 3": _savez(a, thresholds=edit("thresholds", int(inner[0]), np.uint64(0b11 << 6))),
        "wrong dtype: node_feature int64": _savez(a, node_feature=a["node_feature"].astype(np.int64)),
        "wrong dtype: node_feature float": _savez(a, node_feature=a["node_feature"].astype(np.float64)),
        "wrong dtype: thresholds float": _savez(a, thresholds=a["thresholds"].astype(np.float64)),
        "wrong dtype: leaf ciphertexts uint16": _savez(a, leaf_ciphertexts=cts.astype(np.uint16)),
        "wrong dtype: header int32": _savez(a, header=a["header"].astype(np.int32)),
        "wrong dtype: default_left uint8": _savez(a, default_left=a["default_left"].astype(np.uint8)),
        "wrong shape: node_feature 2-D": _savez(a, node_feature=np.stack([a["node_feature"]] * 2, axis=1)),
        "wrong shape: roots 2-D": _savez(a, roots=a["roots"][:, None]),
        "wrong shape: left too short": _savez(a, left=a["left"][:-1]),
    }


def _zip_of_text() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("header.npy", "not an array")
    return buf.getvalue()


def test_malformed_model_uploads_are_422_and_not_stored(api, world):
    blobs = _malformed(world["blobs"]["alice"])
    before = api.state()
    failures = []
    for name, blob in blobs.items():
        for model_id in ("m", "fresh"):  # replacing the stored model, and adding a new one
            response = api.http.put(f"/v1/users/alice/models/{model_id}", content=blob, headers=api.auth("alice"))
            if response.status_code != 422 or "malformed encrypted model" not in response.json().get("detail", ""):
                failures.append(f"{name} -> {model_id}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert api.state() == before
    assert [m["version"] for m in api.http.get("/v1/users/alice/models", headers=api.auth("alice")).json()["models"]
            ] == [1]
    assert api.predict("alice", _query(world, "alice")).status_code == 200  # the stored model still serves


# ---------------------------------------------------------------------------- key confidentiality (real process)
class RecordingRelay:
    """Loopback TCP relay to ``target_port`` recording every byte of every connection, in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytearray] = []  # one per connection and direction
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.accepted += 1
                self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                buf = bytearray()
                with self.lock:
                    self.streams.append(buf)
                threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    buf.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def mark(self) -> list[int]:
        with self.lock:
            return [len(b) for b in self.streams]

    def streams_since(self, mark: list[int] | None = None) -> list[bytes]:
        with self.lock:
            return [bytes(b[(mark[i] if mark and i < len(mark) else 0):]) for i, b in enumerate(self.streams)]

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()


def _start_server_logged(db: Path, port: int, log_dir: Path) -> tuple[subprocess.Popen, Path, Path]:
    """``privboost server`` as a child process (plain HTTP on loopback), stdout and stderr captured to files."""
    out, err = log_dir / "server.stdout", log_dir / "server.stderr"
    cmd = [sys.executable, "-m", "privboost", "server", "--db", str(db), "--host", "127.0.0.1", "--port", str(port)]
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe)  # inherits PRIVBOOST_REGISTRATION_SECRET
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {err.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1.0).status_code == 200:
                return proc, out, err
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{12,}={0,2}")


def _expanded(view: bytes) -> bytes:
    """``view`` plus the decoding of every base64 run in it (a key hidden inside a base64 field is still found)."""
    decoded = [view]
    for match in _B64_RUN.finditer(view):
        text = match.group().rstrip(b"=")
        for alt in (None, b"-_"):
            try:
                decoded.append(base64.b64decode(text + b"=" * (-len(text) % 4), altchars=alt))
            except ValueError:
                pass
    return b"\x00|\x00".join(decoded)


def _int_encodings(value: int) -> list[bytes]:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return [raw, raw[::-1], str(value).encode(), f"{value:x}".encode(), f"{value:X}".encode(),
            base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]


def _bytes_encodings(value: bytes) -> list[bytes]:
    return [value, value.hex().encode(), value.hex().upper().encode(), base64.b64encode(value),
            base64.b64encode(value).rstrip(b"="), base64.urlsafe_b64encode(value).rstrip(b"="),
            str(list(value)).encode(), json.dumps(list(value)).encode()]


def _secrets_of(keys: UserKeys) -> dict[str, list[bytes]]:
    private = keys.private_key
    p, q = keys.paillier_p, keys.paillier_q
    found = {
        "order key": _bytes_encodings(keys.order_key),
        "HMAC name key": _bytes_encodings(keys.name_key),
        "Paillier p": _int_encodings(p),
        "Paillier q": _int_encodings(q),
        "Paillier phi": _int_encodings((p - 1) * (q - 1)),
        "Paillier hp": _int_encodings(int(private.hp)),
        "Paillier hq": _int_encodings(int(private.hq)),
    }
    if keys.scheme == "ore":
        found["derived ORE key"] = _bytes_encodings(derive_key(keys.order_key, "ore"))
    else:
        for i in range(len(keys.feature_names)):
            found[f"derived OPE key {i}"] = _bytes_encodings(derive_key(keys.order_key, f"ope/{i}"))
    return found


def _digits(text: str) -> int:
    mantissa = text.lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0")
    return len(mantissa)


def _decimal_forms(value: float) -> set[str]:
    v32 = np.float32(value)
    forms = {repr(float(v32)), str(v32), f"{float(v32):.6g}", f"{float(v32):.7g}", f"{float(v32):.8g}",
             f"{float(v32):.17g}", np.format_float_positional(v32), np.format_float_scientific(v32)}
    return {f for f in forms if _digits(f) >= 6}  # long enough that an accidental match is impossible


@pytest.fixture(scope="module")
def live(tmp_path_factory, world):
    """A real server process behind a recording relay; two users set up by the real proxy, then real predictions.

    The server runs with a registration secret taken from the environment variable the proxy also reads.
    """
    tmp = tmp_path_factory.mktemp("live")
    registration_secret = secrets.token_urlsafe(24)
    model, x = world["model"], world["x"]
    rng = np.random.default_rng(2024)
    queries = {  # real records, perturbed so every value has many significant digits; one missing value
        "alice": (x.iloc[10:13].to_numpy() * rng.uniform(1.0001, 1.01, (3, x.shape[1]))).astype(np.float32),
        "bob": (x.iloc[20:22].to_numpy() * rng.uniform(1.0001, 1.01, (2, x.shape[1]))).astype(np.float32),
    }
    queries["alice"][1, 4] = np.nan
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(REGISTRATION_SECRET_ENV, registration_secret)
        server, out_log, err_log = _start_server_logged(tmp / "server.db", port, tmp)
        relay = RecordingRelay(port)
        url = f"http://127.0.0.1:{relay.port}"
        try:
            keys = {
                "alice": setup_user(model, "alice", tmp / "keys-alice", url, paillier_bits=1024),
                "bob": setup_user(model, "bob", tmp / "keys-bob", url, scheme="ope", paillier_bits=1024),
            }
            mp.delenv(REGISTRATION_SECRET_ENV)
            refused_registration = httpx.post(f"{url}/v1/users", json={"user": "mallory"}).status_code
            bogus_token = secrets.token_urlsafe(32)
            refused_token = httpx.get(f"{url}/v1/users/alice/models",
                                      headers={"Authorization": f"Bearer {bogus_token}"}).status_code
            setup_mark = relay.mark()
            predictions = {user: predict_encrypted(UserKeys.load(tmp / f"keys-{user}"), queries[user], server=url)
                           for user in ("alice", "bob")}
            predict_streams = relay.streams_since(setup_mark)
            all_streams = relay.streams_since()
        finally:
            relay.close()
            server.terminate()
            server.wait(timeout=15)
    database = b"".join(p.read_bytes() for p in sorted(tmp.glob("server.db*")))
    with sqlite3.connect(tmp / "server.db") as conn:
        stored_users = [r[0] for r in conn.execute("SELECT name FROM users ORDER BY name")]
        stored_blobs = [bytes(r[0]) for r in conn.execute("SELECT blob FROM models")]
    conn.close()
    return {
        "tmp": tmp, "keys": keys, "queries": queries, "predictions": predictions, "accepted": relay.accepted,
        "wire": b"".join(all_streams), "predict_wire": b"".join(predict_streams), "database": database,
        "stored_users": stored_users, "stored_blobs": stored_blobs, "logs": out_log.read_bytes() + err_log.read_bytes(),
        "stderr": err_log.read_bytes(), "registration_secret": registration_secret, "bogus_token": bogus_token,
        "refused_registration": refused_registration, "refused_token": refused_token,
    }


def test_live_run_is_real_and_correct(live, world):
    """The relay really carried the proxy's and the client's traffic, and the answers are xgboost's."""
    assert live["accepted"] >= 2
    wire = live["wire"]
    assert b"POST /v1/users HTTP/1.1" in wire and b"PUT /v1/users/alice/models/default" in wire
    assert b"POST /v1/users/bob/models/default/predict" in live["predict_wire"]
    for user in ("alice", "bob"):
        assert live["keys"][user].pseudonyms()[0].encode() in wire  # the inspection can see what is sent
    assert all(blob in wire for blob in live["stored_blobs"]) and len(live["stored_blobs"]) == 2
    for user in ("alice", "bob"):
        frame = pd.DataFrame(live["queries"][user], columns=world["model"].feature_names)
        np.testing.assert_allclose(live["predictions"][user][:, 0], world["booster"].predict(xgb.DMatrix(frame)),
                                   atol=1e-6)


def test_registration_secret_from_the_environment(live):
    """The proxy presented the secret from PRIVBOOST_REGISTRATION_SECRET; a caller without it was refused."""
    assert live["refused_registration"] == 403
    assert live["stored_users"] == ["alice", "bob"]


def test_server_never_sees_a_key(live):
    views = {"wire": _expanded(live["wire"]), "database": _expanded(live["database"])}
    for user, keys in live["keys"].items():
        for secret_name, encodings in _secrets_of(keys).items():
            for view_name, view in views.items():
                for encoding in encodings:
                    assert encoding not in view, f"{user}'s {secret_name} appears in the {view_name}"


def test_server_never_sees_plaintext(live, world):
    raw_views = {"wire": live["wire"], "database": live["database"]}
    views = {name: _expanded(view) for name, view in raw_views.items()}
    for name in world["model"].feature_names:
        forms = {name, urllib.parse.quote(name), urllib.parse.quote_plus(name), json.dumps(name)[1:-1],
                 name.replace(" ", "_")}
        for view_name, view in views.items():
            for form in forms:
                assert form.encode() not in view, f"feature name {form!r} appears in the {view_name}"
    for user, queries in live["queries"].items():
        present = queries[~np.isnan(queries)]
        for view_name, view in views.items():
            for value in present:
                for text in _decimal_forms(float(value)):
                    assert text.encode() not in view, f"{user}'s query value {text} appears in the {view_name}"
                for raw in (np.float64(value).tobytes(), np.float64(value).byteswap().tobytes()):
                    assert raw not in view, f"{user}'s query value {value} (float64) appears in the {view_name}"
            for row in queries:
                for order in (row, row[::-1]):
                    for j in range(len(order) - 1):  # every adjacent pair of float32 values (8 bytes)
                        pair = order[j:j + 2]
                        if not np.isnan(pair).any():
                            for raw in (pair.tobytes(), pair.byteswap().tobytes()):
                                assert raw not in view, f"{user}'s float32 query values appear in the {view_name}"
        # single float32 values (4 bytes) are not searched: in ~1 MB of ciphertext a random 4-byte match is likely
        # nor the answer: the predicted probabilities never appear in clear
        for prob in live["predictions"][user][:, 0]:
            for view_name, view in views.items():
                assert repr(float(prob)).encode() not in view and np.float64(prob).tobytes() not in view, \
                    f"{user}'s prediction appears in the {view_name}"


def test_key_files_are_private(live):
    for user in ("alice", "bob"):
        directory = live["tmp"] / f"keys-{user}"
        assert stat.S_IMODE(os.stat(directory / "keys.json").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert UserKeys.load(directory).user == user
        assert not list(directory.glob(".*tmp*"))  # no leftover temporary copy of the keys


def test_server_logs_no_tokens_keys_or_bodies(live):
    logs = live["logs"]
    assert live["stderr"], "the server's stderr was captured"
    assert b"/v1/users" in logs  # requests were logged (access log), just not their secrets
    assert live["refused_token"] == 401
    tokens = [keys.token for keys in live["keys"].values()] + [live["bogus_token"]]
    for token in tokens:
        assert token.encode() not in logs
        assert hashlib.sha256(token.encode()).hexdigest().encode() not in logs
    assert b"Bearer" not in logs and b"Authorization" not in logs.replace(b"authorization", b"")
    assert live["registration_secret"].encode() not in logs
    for keys in live["keys"].values():
        for pseudonym in keys.pseudonyms():  # request bodies (queries and models) name every pseudonym
            assert pseudonym.encode() not in logs
        assert keys.key_id().encode() not in logs
        for secret_name, encodings in _secrets_of(keys).items():
            assert not any(e in logs for e in encodings), f"{secret_name} appears in the server's logs"
