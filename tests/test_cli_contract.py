"""The exact CLI contracts of issue 3, run as separate processes (server, proxy, client) over real HTTP."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_wine

from privboost.demo import free_port, start_server

PRIVBOOST = str(Path(sys.executable).with_name("privboost"))


def run(*args, check=True):
    done = subprocess.run([PRIVBOOST, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srv")
    port = free_port()
    proc = start_server(tmp / "db.sqlite", port)  # privboost server --db PATH --host H --port N
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize("loader, params, columns", [
    (load_breast_cancer, {"objective": "binary:logistic"}, ["prediction"]),
    (load_wine, {"objective": "multi:softprob", "num_class": 3}, ["class_0", "class_1", "class_2"]),
])
def test_setup_and_predict_contract(server, tmp_path, loader, params, columns):
    data = loader(as_frame=True)
    x, y = data.data, data.target
    x.columns = [c.replace(" ", "_") for c in x.columns]
    booster = xgb.train({**params, "max_depth": 4}, xgb.DMatrix(x, y), 10)
    model_path = tmp_path / "MODEL.json"
    booster.save_model(model_path)
    user = f"user{len(columns)}"
    run("proxy", "setup", "--model", str(model_path), "--user", user, "--keys-out", str(tmp_path / "keys"),
        "--server", server)
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "keys.json").st_mode) == 0o600
    queries = x.iloc[:25].copy()
    queries.iloc[2, 1] = np.nan  # an empty cell is a missing value
    shuffled = queries[list(reversed(queries.columns))].assign(patient_id=range(25))  # order and extras ignored
    shuffled.to_csv(tmp_path / "in.csv", index=False)
    run("client", "predict", "--keys", str(tmp_path / "keys"), "--server", server, "--input",
        str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == columns and len(out) == 25
    want = booster.predict(xgb.DMatrix(queries)).reshape(25, -1)
    np.testing.assert_allclose(out.to_numpy(), want, atol=1e-6)

    queries.drop(columns=x.columns[0]).to_csv(tmp_path / "lacking.csv", index=False)
    done = run("client", "predict", "--keys", str(tmp_path / "keys"), "--server", server, "--input",
               str(tmp_path / "lacking.csv"), "--output", str(tmp_path / "none.csv"), check=False)
    assert done.returncode != 0 and x.columns[0] in done.stderr
    assert not (tmp_path / "none.csv").exists()


def test_malformed_model_file_is_refused(server, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"learner": 1}')
    done = run("proxy", "setup", "--model", str(bad), "--user", "mallory", "--keys-out", str(tmp_path / "k"),
               "--server", server, check=False)
    assert done.returncode != 0 and "not an XGBoost JSON tree model" in done.stderr
    assert not (tmp_path / "k" / "keys.json").exists()


def test_demo_runs_every_role_and_matches_xgboost(tmp_path):
    from privboost.demo import run_demo

    assert run_demo(tmp_path / "demo", rows=5, secure_trees=2, federated_trees=2) < 1e-6
    assert (tmp_path / "demo" / "secure_model.json").is_file()
    assert (tmp_path / "demo" / "federated_model.json").is_file()
