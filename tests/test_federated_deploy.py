"""Federated training on Flower's deployment runtime (slow; ``pytest --runslow``).

Runs ``deploy/flower/run_local_deployment.sh``: a SuperLink and two SuperNodes with TLS on this machine, ``flwr run``
of the Flower App in ``deploy/flower`` - the deployment path across hosts, on one host - and checks the model it
writes predicts exactly like the direct in-process run (`LocalChannel`) with the same parameters. Takes minutes:
a deployed SuperNode starts a ClientApp process per message.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer

from privboost.data import feature_matrix, read_table
from privboost.federated.aggregator import FederatedAggregator, FederatedParams
from privboost.federated.channel import LocalChannel
from privboost.federated.site import Site, load_site_data

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "flower" / "run_local_deployment.sh"
TREES, DEPTH, ETA, BINS = 3, 3, 0.3, 32
RUN_CONFIG = f"n-estimators={TREES} max-depth={DEPTH} learning-rate={ETA} max-bin={BINS}"


@pytest.mark.slow
def test_deployed_flower_run_matches_direct_run(tmp_path):
    for tool in ("flower-superlink", "flower-supernode", "flwr", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH")
    bc = load_breast_cancer()
    names = [f"c{i}" for i in range(bc.data.shape[1])]
    x = bc.data.astype(np.float32)
    rng = np.random.default_rng(3)
    x[rng.random(x.shape) < 0.08] = np.nan  # missing values cross the deployment too
    paths = []
    for i, rows in enumerate(np.array_split(rng.permutation(len(x)), 2)):
        table = pd.DataFrame(x[rows], columns=names)
        table["outcome"] = bc.target[rows].astype(float)
        paths.append(tmp_path / f"site{i}.csv")
        table.to_csv(paths[-1], index=False)
    out = tmp_path / "model" / "model.json"

    command = ["bash", str(SCRIPT), *[a for p in paths for a in ("--data", str(p))], "--label", "outcome",
               "--out", str(out), "--run-config", RUN_CONFIG, "--workdir", str(tmp_path / "deployment"),
               "--timeout", "1500"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script's trap stops the SuperLink and SuperNodes
        stdout, stderr = proc.communicate(timeout=120)
        pytest.fail(f"deployment did not finish in time:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"{stdout[-3000:]}\n{stderr[-5000:]}"
    assert "finished:completed" in stderr

    booster = xgb.Booster(model_file=str(out))
    assert booster.num_boosted_rounds() == TREES
    sites = {i: Site(load_site_data(str(p), "outcome")) for i, p in enumerate(paths)}
    params = FederatedParams(n_estimators=TREES, max_depth=DEPTH, learning_rate=ETA, max_bin=BINS)
    direct = FederatedAggregator(LocalChannel(sites), params).train()
    pooled = feature_matrix(pd.concat([read_table(p) for p in paths]), names)
    np.testing.assert_allclose(booster.predict(xgb.DMatrix(pooled, feature_names=names)), direct.model.predict(pooled),
                               rtol=1e-6, atol=1e-7)
