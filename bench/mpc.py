"""MPC engine benchmark: both parties and the dealer as separate processes over TLS on loopback.

For n samples and F·B one-hot columns (default 25,000 and 300 features × 16 bins) with 16 right-hand columns it
prints: the one-off cost of sharing the one-hot matrix and opening its mask; per histogram product the time and
bytes per party (offline half E^T·V and online half separately) beside the same product in plaintext float64 numpy;
applying 300 shared permutations (one per feature) to 16 shared columns (offline masks and online half separately);
comparisons/s, reciprocals/s, MB per 10^6
comparisons; peak memory per party; and, for scale, plaintext xgboost training one depth-4 tree on the same shape.
Last line: one JSON object with the headline figures.

    python bench/mpc.py [--n 25000] [--features 300] [--bins 16] [--columns 16] [--comparisons 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from privboost.mpc.kernels import matmul_tn  # noqa: E402
from privboost.mpc.protocols.arithmetic import matmul_fixed_t, precompute_products, share_fixed_operand  # noqa: E402
from privboost.mpc.protocols.compare import ltz  # noqa: E402
from privboost.mpc.protocols.fixedpoint import reciprocal  # noqa: E402
from privboost.mpc.protocols.fixedpoint import warm_up as kernels_warm_up  # noqa: E402
from privboost.mpc.protocols.shuffle import (  # noqa: E402
    prepare_permutations,
)
from privboost.mpc.ring import encode_fixed  # noqa: E402
from privboost.mpc.runtime import Party  # noqa: E402


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _sent(party: Party) -> int:
    return party.peer.stats.bytes_sent


def _dealer_received(party: Party) -> int:
    provider = party.correlations
    return getattr(provider, "dealer_bytes_received", 0)


def _barrier(party: Party) -> None:
    party.open(np.zeros(1, np.uint64))  # both parties wait here for each other


def mpc_bench(party: Party, params: dict) -> dict:
    """The benchmark program each party runs (registered with the runner by its dotted path)."""
    n, features, bins, k = params["n"], params["features"], params["bins"], params["columns"]
    m = features * bins
    data = np.random.default_rng(params["seed"])  # benchmark data, not secrets
    out: dict = {}

    # -- one-hot histogram products ---------------------------------------------------------------------------
    start, sent0 = time.perf_counter(), _sent(party)
    onehot = None
    if party.party_id == 0:
        bin_of = data.integers(0, bins, (n, features))
        onehot = np.zeros((n, m), np.uint64)
        onehot[np.arange(n)[:, None], np.arange(features) * bins + bin_of] = 1
    x = party.input(0, onehot)
    del onehot
    fixed = share_fixed_operand(party, x)
    del x
    out["fixed_setup_s"] = time.perf_counter() - start
    out["fixed_setup_mb"] = (_sent(party) - sent0) / 1e6
    products = params["products"]
    start, cpu = time.perf_counter(), time.process_time()
    precompute_products(party, fixed, [k] * products)  # one pass over E for the batch
    out["product_offline_s"] = (time.perf_counter() - start) / products
    out["product_cpu_s"] = (time.process_time() - cpu) / products
    gradients = encode_fixed(data.normal(size=(n, k))) if party.party_id == 1 else None
    y = party.input(1, gradients)
    online = []
    sent0, cpu = _sent(party), time.process_time()
    for _ in range(products):
        start = time.perf_counter()
        hist = matmul_fixed_t(party, fixed, y)
        online.append(time.perf_counter() - start)
    out["product_cpu_s"] += (time.process_time() - cpu) / products  # this process's CPU (all threads), both halves
    out["product_online_s"] = float(np.median(online))
    out["product_mb"] = (_sent(party) - sent0) / 1e6 / products
    # check: party 0 learns Y (benchmark only) and compares with its plaintext one-hot product
    y_plain = party.reveal_to(0, y)
    h_plain = party.reveal_to(0, hist)
    if party.party_id == 0:
        bin_of = np.random.default_rng(params["seed"]).integers(0, bins, (n, features))
        onehot = np.zeros((n, m), np.uint64)
        onehot[np.arange(n)[:, None], np.arange(features) * bins + bin_of] = 1
        out["product_correct"] = bool(np.array_equal(h_plain, matmul_tn(onehot, y_plain)))
        del onehot
    del fixed

    # -- 300 shared permutations applied to 16 shared columns --------------------------------------------------
    order = None
    if party.party_id == 1:  # destinations = the rank of each sample by a random feature value
        order = np.argsort(np.argsort(data.normal(size=(features, n)), axis=1), axis=1)
    destinations = party.input(1, order)
    start = time.perf_counter()
    perms = prepare_permutations(party, destinations)  # all features in one batch
    out["perm_prepare_s"] = time.perf_counter() - start
    columns = party.input(0, data.integers(0, 1 << 40, (n, k)) if party.party_id == 0 else None)
    words = 1 << 22  # output words per message (32 MB): bounded memory, and the parties' work overlaps
    start, dealer0, cpu = time.perf_counter(), _dealer_received(party), time.process_time()
    perms.precompute(party, columns.shape, words=words)  # offline: masks and party 1's dealer corrections
    out["perm_offline_s"] = time.perf_counter() - start
    out["perm_dealer_mb"] = (_dealer_received(party) - dealer0) / 1e6
    _barrier(party)  # the online half starts when both parties have their masks
    start, sent0 = time.perf_counter(), _sent(party)
    moved = None
    for _, moved in perms.apply_chunks(party, columns, words=words):  # noqa: B007 - the last chunk is checked
        pass  # each chunk of results would be consumed here (training sums them per bin)
    out["perm_apply_s"] = time.perf_counter() - start
    out["perm_cpu_s"] = time.process_time() - cpu  # offline and online
    out["perm_apply_mb"] = (_sent(party) - sent0) / 1e6
    # the floor under any protocol that moves these words: one plain TLS transfer of as many bytes, party 0 -> 1
    block = np.zeros(min(words, n * k * features), np.uint64)
    _barrier(party)
    start = time.perf_counter()
    for _ in range(n * k * features // block.size):
        if party.party_id == 0:
            party.peer.send_array(block)
        else:
            party.peer.recv_array()
    _barrier(party)
    out["tls_transfer_s"] = time.perf_counter() - start
    last = party.reveal_to(0, moved[-1])
    plain_cols = party.reveal_to(0, columns)
    last_dest = party.reveal_to(0, destinations[features - 1])
    if party.party_id == 0:
        expected = np.empty_like(plain_cols)
        expected[last_dest.astype(np.int64)] = plain_cols
        out["perm_correct"] = bool(np.array_equal(last, expected))
    del perms, moved

    # -- comparisons and reciprocals ----------------------------------------------------------------------------
    count = params["comparisons"]
    values = party.input(0, encode_fixed(data.normal(size=count) * 100) if party.party_id == 0 else None)
    kernels_warm_up()  # loading compiled kernels is a one-off of the process, not of a comparison or reciprocal
    start, sent0, dealer0 = time.perf_counter(), _sent(party), _dealer_received(party)
    ltz(party, values)
    elapsed = time.perf_counter() - start
    out["comparisons_per_s"] = count / elapsed
    out["mb_per_million_comparisons"] = (_sent(party) - sent0) / 1e6 * 1e6 / count
    out["dealer_mb_per_million_comparisons"] = (_dealer_received(party) - dealer0) / 1e6 * 1e6 / count
    count = params["reciprocals"]
    positive = party.input(0, encode_fixed(data.uniform(1, 30_000, count)) if party.party_id == 0 else None)
    start = time.perf_counter()
    reciprocal(party, positive)
    out["reciprocals_per_s"] = count / (time.perf_counter() - start)
    out["peak_rss_gb"] = _peak_rss_gb()
    out["dealer_mb_received"] = _dealer_received(party) / 1e6
    return out


def plaintext_figures(n: int, features: int, bins: int, k: int, seed: int) -> dict:
    """The same histogram product in float64 numpy (BLAS) and plaintext xgboost on the same shape."""
    import xgboost as xgb

    data = np.random.default_rng(seed)
    bin_of = data.integers(0, bins, (n, features))
    onehot = np.zeros((n, features * bins))
    onehot[np.arange(n)[:, None], np.arange(features) * bins + bin_of] = 1.0
    y = data.normal(size=(n, k))
    start = time.perf_counter()
    for _ in range(3):
        onehot.T @ y
    product_s = (time.perf_counter() - start) / 3
    x = data.normal(size=(n, features)).astype(np.float32)
    target = x[:, 0] + data.normal(size=n)
    dtrain = xgb.DMatrix(x, label=target)
    start = time.perf_counter()
    xgb.train({"tree_method": "hist", "max_depth": 4, "max_bin": bins, "nthread": 2}, dtrain, num_boost_round=10)
    return {"plaintext_f64_s": product_s, "xgboost_s_per_tree": (time.perf_counter() - start) / 10}


def main() -> None:
    """Run the benchmark and print the table and the JSON line (run from the repository root)."""
    import os

    from privboost.mpc.runner import run_local_processes

    os.chdir(Path(__file__).resolve().parent.parent)  # the parties import this file as bench.mpc
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25_000)
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--columns", type=int, default=16)
    parser.add_argument("--products", type=int, default=3)
    parser.add_argument("--comparisons", type=int, default=1_000_000)
    parser.add_argument("--reciprocals", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    params = {"n": args.n, "features": args.features, "bins": args.bins, "columns": args.columns,
              "products": args.products, "comparisons": args.comparisons, "reciprocals": args.reciprocals,
              "seed": 2026}
    plain = plaintext_figures(args.n, args.features, args.bins, args.columns, params["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        reports = run_local_processes("bench.mpc:mpc_bench", params, Path(tmp), args.timeout)
    parties = [reports["party0"]["result"], reports["party1"]["result"]]
    m = args.features * args.bins
    print(f"MPC engine, 2 parties + dealer as processes over TLS on loopback; n={args.n}, F·B={m}, "
          f"{args.columns} right-hand columns")
    rows = [
        ("share + open fixed one-hot matrix (one-off)", "fixed_setup_s", "s"),
        ("  MB sent for it", "fixed_setup_mb", "MB"),
        ("histogram product, offline half (E^T·V)", "product_offline_s", "s"),
        ("histogram product, online half", "product_online_s", "s"),
        ("  MB sent per product", "product_mb", "MB"),
        ("  CPU per product, both halves (all threads)", "product_cpu_s", "s"),
        (f"prepare {args.features} permutations (one-off)", "perm_prepare_s", "s"),
        (f"apply {args.features} permutations to {args.columns} columns: offline", "perm_offline_s", "s"),
        ("  MB from the dealer for them", "perm_dealer_mb", "MB"),
        ("  online", "perm_apply_s", "s"),
        ("  MB sent for them", "perm_apply_mb", "MB"),
        ("  CPU for them, both halves (all threads)", "perm_cpu_s", "s"),
        ("  plain TLS transfer of as many bytes (0 -> 1)", "tls_transfer_s", "s"),
        ("comparisons per second", "comparisons_per_s", "/s"),
        ("MB sent per 10^6 comparisons", "mb_per_million_comparisons", "MB"),
        ("dealer MB per 10^6 comparisons", "dealer_mb_per_million_comparisons", "MB"),
        ("reciprocals per second", "reciprocals_per_s", "/s"),
        ("MB received from the dealer (whole run)", "dealer_mb_received", "MB"),
        ("peak RSS", "peak_rss_gb", "GB"),
    ]
    print(f"{'':48} {'party 0':>12} {'party 1':>12}")
    for label, key, unit in rows:
        print(f"{label:48} {parties[0][key]:>12.4g} {parties[1][key]:>12.4g}  {unit}")
    print(f"{'dealer peak RSS':48} {reports['dealer']['peak_rss_mb'] / 1024:>12.4g}  GB")
    print(f"{'plaintext float64 numpy product (BLAS)':48} {plain['plaintext_f64_s']:>12.4g}  s")
    print(f"{'plaintext xgboost, one depth-4 tree (hist)':48} {plain['xgboost_s_per_tree']:>12.4g}  s")
    print(f"checks: product exact {parties[0]['product_correct']}, permutation exact {parties[0]['perm_correct']}")
    product_s = max(p["product_offline_s"] + p["product_online_s"] for p in parties)
    print(json.dumps({
        "hist_product_s_per_party": round(product_s, 4),
        "hist_product_online_s_per_party": round(max(p["product_online_s"] for p in parties), 4),
        "perm_apply_s_per_party": round(max(p["perm_offline_s"] + p["perm_apply_s"] for p in parties), 4),
        "perm_apply_online_s_per_party": round(max(p["perm_apply_s"] for p in parties), 4),
        "plaintext_f64_s": round(plain["plaintext_f64_s"], 4),
        "comparisons_per_s": round(min(p["comparisons_per_s"] for p in parties)),
        "reciprocals_per_s": round(min(p["reciprocals_per_s"] for p in parties)),
        "mb_per_million_comparisons": round(max(p["mb_per_million_comparisons"] for p in parties), 2),
        "peak_rss_gb": round(max(p["peak_rss_gb"] for p in parties), 3),
        "xgboost_s_per_tree": round(plain["xgboost_s_per_tree"], 4),
    }))


if __name__ == "__main__":
    main()
