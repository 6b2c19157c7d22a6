"""Secure training benchmark (XORBoost's workload), side by side with plaintext xgboost in the same run.

Synthetic regression data (n × F, default 25,000 × 300) split vertically between two owners; 10 trees of depth 4;
both compute parties, the dealer, the analyst and the owners as separate processes over TLS on loopback (exactly
what ``privboost train secure --local`` runs). For each (bins, histogram route) it prints wall time per tree, the
time split (setup, gradients, histograms, gains/argmax, routing, leaves), MB per party per tree, peak RSS of all
processes together, the test RMSE, and xgboost's ``hist`` time per tree and RMSE on the same data.
Last line: one JSON object with the headline figures of the first configuration.

    python bench/secure_train.py [--n 25000] [--features 300] [--trees 10] [--depth 4] [--runs 128:shuffle 32:onehot]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.datasets import make_regression

from privboost.secure.local import run_local_job
from privboost.secure.trainer import SecureParams


def make_data(n: int, features: int, seed: int, folder: Path) -> tuple[list[Path], pd.DataFrame, np.ndarray]:
    """Two owners' Parquet files (vertical split, label with owner A) and the pooled table for xgboost."""
    x, y = make_regression(n_samples=n + n // 5, n_features=features, n_informative=min(30, features),
                           noise=10.0, random_state=seed)
    x = x.astype(np.float32)
    names = [f"x{j}" for j in range(features)]
    table = pd.DataFrame(x[:n], columns=names)
    table["id"] = np.arange(n)
    table["y"] = y[:n]
    half = features // 2
    a, b = folder / "owner_a.parquet", folder / "owner_b.parquet"
    table[["id", *names[:half], "y"]].sample(frac=1.0, random_state=seed).to_parquet(a, index=False)
    table[["id", *names[half:]]].to_parquet(b, index=False)
    test = pd.DataFrame(x[n:], columns=names)
    return [a, b], table, np.column_stack([test.to_numpy(), y[n:]])


def run_xgboost(table: pd.DataFrame, test: np.ndarray, params: SecureParams, max_bin: int, base: float) -> dict:
    """Plaintext xgboost hist with the same parameters; seconds per tree and test RMSE."""
    names = [c for c in table.columns if c.startswith("x")]
    dtrain = xgb.QuantileDMatrix(table[names].to_numpy(np.float32), label=table["y"], max_bin=max_bin)
    start = time.perf_counter()
    booster = xgb.train({"tree_method": "hist", "max_bin": max_bin, "max_depth": params.max_depth,
                         "eta": params.learning_rate, "objective": "reg:squarederror", "base_score": base,
                         "nthread": 2}, dtrain, num_boost_round=params.n_estimators)
    seconds = (time.perf_counter() - start) / params.n_estimators
    pred = booster.predict(xgb.DMatrix(test[:, :-1]))
    return {"s_per_tree": seconds, "rmse": float(np.sqrt(np.mean((pred - test[:, -1]) ** 2)))}


def run_secure(files: list[Path], test: np.ndarray, params: SecureParams, max_bin: int, route: str,
               folder: Path) -> dict:
    """One secure job as separate processes; wall time per tree from party 0's progress, plus its reports."""
    marks: list[tuple[int, float]] = []

    def progress(event: dict) -> None:
        if event["level"] == event["depth"]:
            marks.append((event["tree"], event["elapsed_s"]))

    out = folder / f"secure_{max_bin}_{route}.json"
    start = time.perf_counter()
    reports = run_local_job(files, "y", out, params, max_bin, "vertical", "id", timeout_s=600.0,
                            progress=progress, histograms=route)
    wall = time.perf_counter() - start
    party = reports["party0"]
    seconds = party["seconds"]
    train_s = sum(v for k, v in seconds.items() if k != "setup")
    booster = xgb.Booster()
    booster.load_model(str(out))
    names = [f"x{j}" for j in range(test.shape[1] - 1)]
    pred = booster.predict(xgb.DMatrix(pd.DataFrame(test[:, :-1], columns=names)[booster.feature_names]))
    return {
        "wall_s": wall,
        "s_per_tree": train_s / params.n_estimators,
        "setup_s": seconds.get("setup", 0.0),
        "phases": {k: v / params.n_estimators for k, v in seconds.items() if k != "setup"},
        "mb_per_party_per_tree": max(reports[p]["bytes_sent"] for p in ("party0", "party1")) / 1e6
        / params.n_estimators,
        "dealer_mb_per_tree": reports["party1"]["dealer_bytes"] / 1e6 / params.n_estimators,
        "peak_rss_gb": sum(r.get("peak_rss_gb", 0.0) for r in reports.values()),
        "rmse": float(np.sqrt(np.mean((pred - test[:, -1]) ** 2))),
        "marks": marks,
    }


def main() -> None:
    """Run the configurations and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25_000)
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--trees", type=int, default=10)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--runs", nargs="+", default=["128:shuffle", "32:onehot"],
                        help="BINS:ROUTE pairs, ROUTE onehot or shuffle")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="privboost-bench-") as tmp:
        folder = Path(tmp)
        files, table, test = make_data(args.n, args.features, 2026, folder)
        base = float(np.float32(table["y"].mean()))
        params = SecureParams(objective="reg:squarederror", n_estimators=args.trees, max_depth=args.depth,
                              learning_rate=0.3, base_score=base)
        print(f"secure training, {args.n} × {args.features} regression, {args.trees} trees of depth {args.depth}; "
              "parties, dealer, analyst and owners as processes over TLS on loopback")
        header = (f"{'bins':>5} {'route':>8} | {'secure s/tree':>13} {'xgb s/tree':>10} {'MB/party/tree':>13} "
                  f"{'dealer MB/tree':>14} {'peak GB':>8} {'setup s':>8} | {'RMSE':>9} {'xgb RMSE':>9}")
        print(header)
        results = []
        for run in args.runs:
            bins_text, _, route = run.partition(":")
            max_bin = int(bins_text)
            plain = run_xgboost(table, test, params, max_bin, base)
            secure = run_secure(files, test, params, max_bin, route or "onehot", folder)
            results.append((max_bin, route, secure, plain))
            print(f"{max_bin:>5} {route:>8} | {secure['s_per_tree']:>13.2f} {plain['s_per_tree']:>10.4f} "
                  f"{secure['mb_per_party_per_tree']:>13.1f} {secure['dealer_mb_per_tree']:>14.1f} "
                  f"{secure['peak_rss_gb']:>8.2f} {secure['setup_s']:>8.1f} | {secure['rmse']:>9.3f} "
                  f"{plain['rmse']:>9.3f}")
            print("      time per tree by phase: " + ", ".join(f"{k} {v:.2f} s" for k, v in secure["phases"].items()))
        max_bin, route, secure, plain = results[0]
        print(json.dumps({"secure_s_per_tree": round(secure["s_per_tree"], 3),
                          "xgboost_s_per_tree": round(plain["s_per_tree"], 4),
                          "mb_per_party_per_tree": round(secure["mb_per_party_per_tree"], 1),
                          "peak_rss_gb": round(secure["peak_rss_gb"], 2), "max_bin": max_bin, "route": route,
                          "secure_rmse": round(secure["rmse"], 4), "xgboost_rmse": round(plain["rmse"], 4)}))


if __name__ == "__main__":
    main()
