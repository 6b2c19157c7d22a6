"""``privboost demo``: the whole encrypted-prediction story on one machine, each role a separate process.

1. a hospital trains XGBoost on NHANES health records (diabetes) and saves it as XGBoost JSON;
2. the untrusted server starts on loopback with HTTPS (certificates from a local CA);
3. the trusted proxy makes patient "alice"'s keys and uploads her personalised encrypted model;
4. alice's client encrypts her records, the server evaluates them blind, the client decrypts;
5. the encrypted predictions are printed beside plaintext XGBoost's, with the largest difference;
6. two hospitals train a model together on secret shares (vertical split: demographics at one, labs at the other);
7. five hospitals of different sizes train together with federated learning (Flower + secure aggregation).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from privboost.datasets import load_nhanes_diabetes
from privboost.net.certs import make_certificates
from privboost.net.ports import free_ports

console = Console()


def free_port() -> int:
    """An unused TCP port on loopback."""
    return free_ports(1)[0]


def start_server(db: Path, port: int, cert: Path | None = None, key: Path | None = None,
                 ca: Path | None = None, extra: list[str] | None = None,
                 timeout: float = 60.0) -> subprocess.Popen:
    """Start ``privboost server`` as a child process and wait until it answers its health check."""
    cmd = [sys.executable, "-m", "privboost", "server", "--db", str(db), "--host", "127.0.0.1", "--port", str(port)]
    if cert and key:
        cmd += ["--certfile", str(cert), "--keyfile", str(key)]
    proc = subprocess.Popen(cmd + (extra or []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603 - our own CLI
    scheme = "https" if cert else "http"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            verify = ssl.create_default_context(cafile=str(ca)) if ca else True
            if httpx.get(f"{scheme}://127.0.0.1:{port}/v1/health", verify=verify,
                         timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within the timeout")


def _run(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "privboost", *args], capture_output=True, text=True,  # noqa: S603
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"privboost {args[0]} {args[1]} failed:\n{done.stderr[-3000:]}")


def run_demo(workdir: Path, rows: int = 20, secure_trees: int = 5, federated_trees: int = 10) -> float:
    """Run the demo in ``workdir`` (recreated); returns the largest |encrypted - xgboost| probability gap."""
    import xgboost as xgb
    from sklearn.model_selection import train_test_split

    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    features, labels = load_nhanes_diabetes()
    x_train, x_test, y_train, labels_test = train_test_split(features, labels, test_size=0.2, random_state=7,
                                                             stratify=labels)
    console.rule("[bold]1. a hospital trains XGBoost on NHANES 2017-18 health records (diabetes)")
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.1, "tree_method": "hist"},
                        xgb.DMatrix(x_train, y_train), num_boost_round=100)
    model_path = workdir / "diabetes_model.json"
    booster.save_model(model_path)
    console.print(f"{len(x_train)} training records, {features.shape[1]} features, 100 trees of depth 4 "
                  f"-> {model_path}")

    console.rule("[bold]2. the untrusted server starts (HTTPS on loopback)")
    certs = make_certificates(workdir / "certs", ["server"])["server"]
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = start_server(workdir / "server.db", port, certs.cert, certs.key, certs.ca)
    try:
        console.print(f"server at {url}, database {workdir / 'server.db'}")
        console.rule("[bold]3. the trusted proxy sets up patient 'alice'")
        t0 = time.perf_counter()
        keys_dir = workdir / "keys-alice"
        _run(["proxy", "setup", "--model", str(model_path), "--user", "alice", "--keys-out", str(keys_dir),
              "--server", url, "--ca", str(certs.ca)])
        console.print(f"keys in {keys_dir} (0600), encrypted model uploaded in {time.perf_counter() - t0:.1f} s")

        console.rule("[bold]4. alice's client encrypts her records; the server evaluates them blind")
        patients = x_test.iloc[:rows].reset_index(drop=True)
        patients_path, out_path = workdir / "patients.csv", workdir / "predictions.csv"
        patients.to_csv(patients_path, index=False)
        t0 = time.perf_counter()
        _run(["client", "predict", "--keys", str(keys_dir), "--server", url, "--input", str(patients_path),
              "--output", str(out_path), "--ca", str(certs.ca)])
        console.print(f"{rows} encrypted predictions in {time.perf_counter() - t0:.1f} s (process start included)")
    finally:
        server.terminate()
        server.wait(timeout=10)

    console.rule("[bold]5. encrypted predictions beside plaintext XGBoost")
    encrypted = pd.read_csv(out_path)["prediction"].to_numpy()
    plain = booster.predict(xgb.DMatrix(patients))
    table = Table("patient", "age", "bmi", "HbA1c %", "missing values", "encrypted P(diabetes)", "xgboost",
                  "|diff|")
    for i in range(rows):
        rec = patients.iloc[i]
        table.add_row(str(i), f"{rec['age']:.0f}", _fmt(rec["bmi"]), _fmt(rec["hba1c_percent"]),
                      str(int(rec.isna().sum())), f"{encrypted[i]:.6f}", f"{plain[i]:.6f}",
                      f"{abs(encrypted[i] - plain[i]):.1e}")
    console.print(table)
    gap = float(np.max(np.abs(encrypted - plain)))
    console.print(f"max |encrypted - xgboost| = [bold]{gap:.2e}[/] over {rows} patients")
    if secure_trees:
        _secure_training_step(workdir, x_train, y_train, x_test, labels_test, secure_trees)
    if federated_trees:
        _federated_step(workdir, x_train, y_train, x_test, labels_test, federated_trees)
    return gap


def _secure_training_step(workdir: Path, x_train: pd.DataFrame, y_train: np.ndarray, x_test: pd.DataFrame,
                          y_test: np.ndarray, trees: int) -> None:
    """Two hospitals train together on secret shares (vertical split by patient id); compare with pooled xgboost."""
    console.rule("[bold]6. two hospitals train a model together without pooling their records")
    train = x_train.reset_index(drop=True)  # missing values stay missing: every split learns where they go
    test = x_test
    train.insert(0, "patient_id", np.arange(len(train)) * 13 + 1000)
    train["diabetes"] = y_train
    demographics = ["patient_id", *train.columns[1:6], "diabetes"]
    labs = ["patient_id", *[c for c in train.columns[6:] if c != "diabetes"]]
    a, b = workdir / "hospital_a.csv", workdir / "hospital_b.csv"
    train[demographics].sample(frac=1.0, random_state=1).to_csv(a, index=False)
    train[labs].to_csv(b, index=False)
    console.print(f"hospital A: {len(demographics) - 2} demographic columns (sex as a category) + diagnosis; "
                  f"hospital B: {len(labs) - 1} lab columns; {len(train)} patients matched by id, "
                  f"{int(train.isna().to_numpy().sum())} values missing; compute parties, dealer and analyst start as "
                  "separate processes (TLS on loopback)")
    model_path = workdir / "secure_model.json"
    t0 = time.perf_counter()
    _run(["train", "secure", "--local", "--data", str(a), "--data", str(b), "--label", "diabetes",
          "--split", "vertical", "--id-column", "patient_id", "--out", str(model_path), "--n-estimators", str(trees),
          "--max-depth", "3", "--learning-rate", "0.3", "--max-bin", "16", "--categorical", "male"])
    seconds = time.perf_counter() - t0
    _compare_with_pooled(model_path, "secure (secret shares, never pooled)", {"max_depth": 3, "max_bin": 16,
                         "base_score": 0.5}, train, y_train, test, y_test, trees, f"secure training of {trees} trees",
                         seconds)


def _compare_with_pooled(model_path: Path, title: str, params: dict, x_train: pd.DataFrame, y_train: np.ndarray,
                         x_test: pd.DataFrame, y_test: np.ndarray, trees: int, what: str, seconds: float) -> None:
    """Test AUC of the jointly trained model beside xgboost trained on the pooled rows with the same parameters."""
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    model = xgb.Booster()
    model.load_model(str(model_path))
    names, types = model.feature_names, model.feature_types  # "c": a categorical column (one category vs the rest)

    def matrix(x: pd.DataFrame, y: np.ndarray | None = None) -> xgb.DMatrix:
        return xgb.DMatrix(x[names], y, feature_types=types, enable_categorical="c" in (types or []))

    pooled = xgb.train({"objective": "binary:logistic", "eta": 0.3, "tree_method": "hist", "max_cat_to_onehot": 257,
                        **params}, matrix(x_train, y_train), num_boost_round=trees)
    table = Table("model", "test AUC")
    for row, booster in ((title, model), ("xgboost on pooled data (for comparison)", pooled)):
        table.add_row(row, f"{roc_auc_score(y_test, booster.predict(matrix(x_test))):.4f}")
    console.print(table)
    console.print(f"{what} took {seconds:.0f} s; the model is XGBoost JSON: {model_path}")


def _federated_step(workdir: Path, x_train: pd.DataFrame, y_train: np.ndarray, x_test: pd.DataFrame,
                    y_test: np.ndarray, trees: int) -> None:
    """Five hospitals (rows split unevenly, missing values kept) train with Flower + SecAgg+; compare with pooled."""
    console.rule("[bold]7. five hospitals train together by federated learning with secure aggregation")
    table = x_train.reset_index(drop=True).copy()
    table["diabetes"] = y_train
    shares = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    bounds = np.round(np.cumsum(shares)[:-1] * len(table)).astype(int)
    order = np.random.default_rng(5).permutation(len(table))
    paths = []
    for i, rows in enumerate(np.split(order, bounds)):
        path = workdir / f"clinic_{i + 1}.csv"
        table.iloc[rows].to_csv(path, index=False)
        paths.append(path)
    console.print(f"{len(paths)} hospitals hold {', '.join(str(len(r)) for r in np.split(order, bounds))} patients "
                  "(missing lab values kept); each builds its histograms locally, the aggregator sees only their "
                  "sum (SecAgg+ masks), all in Flower's simulation")
    model_path = workdir / "federated_model.json"
    t0 = time.perf_counter()
    _run(["train", "federated", "--local", *[a for p in paths for a in ("--data", str(p))], "--label", "diabetes",
          "--out", str(model_path), "--n-estimators", str(trees), "--max-depth", "4", "--learning-rate", "0.3",
          "--max-bin", "64"])
    seconds = time.perf_counter() - t0
    _compare_with_pooled(model_path, "federated (5 hospitals, secure aggregation)",
                         {"max_depth": 4, "max_bin": 64, "base_score": float(np.mean(y_train))}, x_train, y_train,
                         x_test, y_test, trees, f"federated training of {trees} trees", seconds)


def _fmt(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.1f}"
