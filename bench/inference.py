"""Encrypted prediction benchmark, side by side with plaintext xgboost in the same run.

A 30-feature binary model (100 trees of depth 6, then 500 trees) trained on synthetic data so that trees are full.
Prints the proxy's set-up time per user, per-query latency split into client encrypt / server evaluate / client
decrypt, end-to-end throughput over HTTP (a real server process on loopback) for 1,000 queries in one batch and in a
per-query loop, and xgboost's figures. Last line: one JSON object with the 100-tree headline figures.

    python bench/inference.py [--trees 100 500] [--queries 1000] [--scheme ore]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import xgboost as xgb
from sklearn.datasets import make_classification

from privboost.demo import free_port, start_server
from privboost.inference.client import QueryCodec, ServerConnection, predict_encrypted
from privboost.inference.evaluate import CompiledModel
from privboost.inference.format import decode_array, encode_array, value_shape
from privboost.inference.proxy import encrypt_model, make_user_keys, setup_user
from privboost.model import TreeEnsemble


def timed(fn, repeat: int) -> float:
    """Mean seconds per call over ``repeat`` calls."""
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_model(trees: int, x: np.ndarray, y: np.ndarray, queries: int, scheme: str, url: str) -> dict:
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2},
                        xgb.DMatrix(x, y), num_boost_round=trees)
    model = TreeEnsemble.from_xgboost(booster)
    leaves = sum(int(t.is_leaf.sum()) for t in model.trees)
    q = x[:queries].astype(np.float32)
    q[np.random.default_rng(5).random(q.shape) < 0.05] = np.nan

    start = time.perf_counter()
    keys = make_user_keys(model, "bench", scheme=scheme)
    encrypted = encrypt_model(model, keys)
    blob = encrypted.to_bytes()
    proxy_s = time.perf_counter() - start

    codec = QueryCodec(keys)
    compiled = CompiledModel(encrypted)
    one = q[:1]
    batch = codec.encrypt(one)
    shape, dtype = value_shape(scheme, 1, model.num_features)
    values = decode_array(batch.body["values"], dtype, shape, "values")
    missing = np.isnan(one)
    result = compiled.evaluate(values, missing)
    width = (2 * keys.paillier_n.bit_length() + 7) // 8
    answer = {"slots": result.slots, "ciphertexts": encode_array(
        np.frombuffer(b"".join(c.to_bytes(width, "big") for c in result.ciphertexts), dtype=np.uint8))}
    reps = 200
    enc_ms = timed(lambda: codec.encrypt(one), reps) * 1e3
    server_ms = timed(lambda: compiled.evaluate(values, missing), reps) * 1e3
    dec_ms = timed(lambda: codec.decrypt(answer, 1), 50) * 1e3

    with tempfile.TemporaryDirectory() as tmp:
        setup_user(model, f"bench{trees}", Path(tmp) / "keys", url, scheme=scheme)
        from privboost.inference.keys import UserKeys

        user = UserKeys.load(Path(tmp) / "keys")
        predict_encrypted(user, q[:200])  # warm the server: model cache, worker processes
        start = time.perf_counter()
        got = predict_encrypted(user, q)  # the client splits large inputs into requests, two in flight
        batch_qps = queries / (time.perf_counter() - start)
        loop_n = min(queries, 100)
        conn, loop_codec = ServerConnection(url), QueryCodec(user)
        start = time.perf_counter()
        for i in range(loop_n):
            b = loop_codec.encrypt(q[i:i + 1])
            loop_codec.decrypt(conn.predict(user.user, user.token, user.model_id, b.body), 1)
        loop_qps = loop_n / (time.perf_counter() - start)
        conn.close()

    dm = xgb.DMatrix(q)
    xgb_batch_s = timed(lambda: booster.predict(dm), 5)
    single = xgb.DMatrix(q[:1])
    xgb_single_ms = timed(lambda: booster.predict(single), 100) * 1e3
    max_diff = float(np.max(np.abs(got[:, 0] - booster.predict(dm))))
    return {
        "trees": trees, "leaves": leaves, "model_mb": len(blob) / 1e6, "proxy_setup_s_per_user": proxy_s,
        "client_encrypt_ms_per_query": enc_ms, "server_ms_per_query": server_ms,
        "client_decrypt_ms_per_query": dec_ms, "batch_queries_per_s": batch_qps, "loop_queries_per_s": loop_qps,
        "xgboost_queries_per_s": queries / xgb_batch_s, "xgboost_ms_per_single_query": xgb_single_ms,
        "max_abs_diff_vs_xgboost": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--scheme", choices=["ore", "ope"], default="ore")
    args = parser.parse_args()
    x, y = make_classification(n_samples=20000, n_features=30, n_informative=20, random_state=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(Path(tmp) / "bench.db", port, extra=["--max-batch", str(max(args.queries, 1000))])
        try:
            for trees in args.trees:
                rows.append(bench_model(trees, x, y, args.queries, args.scheme, f"http://127.0.0.1:{port}"))
        finally:
            server.terminate()
            server.wait(timeout=10)
    header = ["trees", "leaves", "proxy s/user", "enc ms/q", "server ms/q", "dec ms/q", "batch q/s", "loop q/s",
              "xgb q/s", "xgb ms/1q", "max diff"]
    keys = ["trees", "leaves", "proxy_setup_s_per_user", "client_encrypt_ms_per_query", "server_ms_per_query",
            "client_decrypt_ms_per_query", "batch_queries_per_s", "loop_queries_per_s", "xgboost_queries_per_s",
            "xgboost_ms_per_single_query", "max_abs_diff_vs_xgboost"]
    print(f"encrypted prediction ({args.scheme}), 30 features, depth 6, {args.queries} queries over HTTP")
    print(" | ".join(f"{h:>12}" for h in header))
    for row in rows:
        print(" | ".join(f"{row[k]:>12.4g}" if isinstance(row[k], float) else f"{row[k]:>12}" for k in keys))
    head = rows[0]
    print(f"batch speed-up over a per-query loop: {head['batch_queries_per_s'] / head['loop_queries_per_s']:.1f}x")
    print(json.dumps({k: round(head[k], 4) for k in (
        "proxy_setup_s_per_user", "server_ms_per_query", "client_encrypt_ms_per_query",
        "client_decrypt_ms_per_query", "batch_queries_per_s", "xgboost_queries_per_s")}
        | {"trees": head["trees"], "scheme": args.scheme,
           "batch_vs_loop": round(head["batch_queries_per_s"] / head["loop_queries_per_s"], 2)}))


if __name__ == "__main__":
    main()
