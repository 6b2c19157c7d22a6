"""Federated training benchmark, side by side with plaintext xgboost on the pooled data in the same run.

Synthetic binary classification (n × F, default 1,000,000 × 100) split over S sites (default 10 and 100); 100 trees
of depth 6. For each site count and engine it runs what ``privboost train federated --local [--engine E]`` runs,
with SecAgg+ secure aggregation: ``flower`` (every site and the aggregator in Flower's simulation), ``direct`` (every
site its own process with a TLS connection to the aggregator), and ``inprocess`` (sites called directly: the
protocol's own cost, no messaging). It prints wall time, MB sent per site per tree, rounds, peak memory of all
processes (Ray's and the sites' included; proportional set sizes, so pages that forked sites share count once) and
test AUC, beside ``xgboost.train(tree_method="hist")`` on the pooled data
(QuantileDMatrix build included in its time). Last line: one JSON object with the headline figures of the first site
count: ``federated_s``/``ratio``/``mb_per_site_per_tree`` of the engine named by ``engine`` (``direct`` when it ran:
every site a separate process over TLS, ``privboost train federated --local --engine direct``), and the other
engines' figures under ``flower_``/``protocol_`` prefixes (e.g. ``flower_s``, ``flower_ratio``).

    python bench/federated.py [--rows 1000000] [--features 100] [--sites 10 100] [--trees 100] [--depth 6]
                              [--max-bin 256] [--engines flower direct inprocess]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from privboost.federated.aggregator import FederatedAggregator, FederatedParams
from privboost.federated.channel import LocalChannel
from privboost.federated.direct import run_direct_job
from privboost.federated.flower_app import FederatedJob, run_simulation_job
from privboost.federated.site import Site, load_site_data


class PeakMemory:
    """Peak of the summed memory (PSS) of this process and all its descendants, sampled every 0.5 s from /proc.

    PSS (``smaps_rollup``) counts pages that forked site processes share copy-on-write once, but reading it walks
    every page table: ~150 ms of CPU for eleven processes of this bench, which sampled every 0.5 s took a quarter
    of one of this machine's two cores from the engine being measured. So each sample reads the cheap RSS
    (``statm``), and PSS only when the RSS sum reaches a new high (PSS <= RSS, and peaks with it): a few dozen
    PSS readings per run instead of hundreds.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._rss_trigger = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pids = _descendants(os.getpid())
            rss = sum(_process_rss(pid) for pid in pids)
            if rss > self._rss_trigger * 1.02:
                self._rss_trigger = rss
                self.peak = max(self.peak, sum(_process_memory(pid) for pid in pids))


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(stat[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _process_rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _process_memory(pid: int) -> int:
    """Proportional set size of ``pid`` (its RSS where PSS is unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _process_rss(pid)


def make_sites(rows: int, features: int, sites: int, folder: Path, seed: int = 7) -> tuple[list[str], np.ndarray,
                                                                                            np.ndarray]:
    """Site Parquet files of roughly equal size (rows shuffled), plus a held-out test set."""
    x, y = make_classification(n_samples=rows + 50_000, n_features=features, n_informative=min(20, features),
                               n_redundant=min(10, features // 4), flip_y=0.05, random_state=seed)
    x = x.astype(np.float32)
    names = [f"x{j}" for j in range(features)]
    paths = []
    for i, part in enumerate(np.array_split(np.arange(rows), sites)):
        table = pd.DataFrame(x[part], columns=names)
        table["label"] = y[part].astype(np.float32)
        path = folder / f"site{i:03d}.parquet"
        table.to_parquet(path, index=False)
        paths.append(str(path))
    return paths, x[rows:], y[rows:]


def run_xgboost(paths: list[str], params: FederatedParams, base: float, test_x: np.ndarray,
                test_y: np.ndarray) -> dict:
    """Plaintext xgboost hist on the pooled data; seconds include the QuantileDMatrix build."""
    pooled = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    x = pooled.drop(columns="label").to_numpy(np.float32)
    start = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(x, label=pooled["label"].to_numpy(), max_bin=params.max_bin, nthread=2)
    built = time.perf_counter()
    booster = xgb.train({"tree_method": "hist", "max_bin": params.max_bin, "max_depth": params.max_depth,
                         "eta": params.learning_rate, "objective": params.objective, "base_score": base,
                         "nthread": 2}, dtrain, num_boost_round=params.n_estimators)
    done = time.perf_counter()
    auc = roc_auc_score(test_y, booster.predict(xgb.DMatrix(test_x)))
    return {"xgboost_s": done - start, "dmatrix_s": built - start, "train_s": done - built, "auc": auc}


def run_engine(engine: str, paths: list[str], params: FederatedParams, out: Path, test_x: np.ndarray,
               test_y: np.ndarray) -> dict:
    """What ``privboost train federated --local --engine ENGINE`` runs: flower (simulation) or direct (processes)."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        if engine == "flower":
            stats = run_simulation_job(paths, "label", FederatedJob(params, str(out), len(paths), None))
        else:
            stats = run_direct_job(paths, "label", params, str(out))
        seconds = time.perf_counter() - start
    from privboost.model import TreeEnsemble

    model = TreeEnsemble.load(out)
    return {"federated_s": seconds, "aggregator_s": stats["seconds"], "rounds": stats["rounds"],
            "mb_per_site_per_tree": stats["mb_per_site_per_tree"], "peak_rss_gb": memory.peak / 1e9,
            "auc": roc_auc_score(test_y, model.predict(test_x))}


def run_inprocess(paths: list[str], params: FederatedParams, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """The same protocol with the sites called directly: its own cost without Flower's messaging."""
    sites = {i: Site(load_site_data(p, "label")) for i, p in enumerate(paths)}
    channel = LocalChannel(sites)
    with PeakMemory() as memory:
        result = FederatedAggregator(channel, params).train()
    sent = sum(channel.bytes_from_sites.values())
    return {"protocol_s": result.seconds, "rounds": result.rounds, "peak_rss_gb": memory.peak / 1e9,
            "mb_per_site_per_tree": sent / 1e6 / len(paths) / params.n_estimators,
            "auc": roc_auc_score(test_y, result.model.predict(test_x))}


def main() -> None:
    """Parse arguments, run every configuration, print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--sites", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--max-bin", type=int, default=256)
    ap.add_argument("--engines", nargs="+", default=["flower", "direct", "inprocess"],
                    choices=["flower", "direct", "inprocess"])
    args = ap.parse_args()
    params = FederatedParams(objective="binary:logistic", n_estimators=args.trees, max_depth=args.depth,
                             learning_rate=0.3, max_bin=args.max_bin)
    headline: dict | None = None
    with tempfile.TemporaryDirectory(prefix="privboost-fedbench-") as tmp:
        folder = Path(tmp)
        for count in args.sites:
            sub = folder / f"s{count}"
            sub.mkdir()
            paths, test_x, test_y = make_sites(args.rows, args.features, count, sub)
            base = float(np.mean(np.concatenate([pd.read_parquet(p, columns=["label"])["label"] for p in paths])))
            plain = run_xgboost(paths, params, base, test_x, test_y)
            print(f"{args.rows:,} x {args.features}, {count} sites, {args.trees} trees depth {args.depth}, "
                  f"max_bin {args.max_bin}:")
            print(f"  {'xgboost hist (pooled)':32s} {plain['xgboost_s']:8.1f} s  (QuantileDMatrix "
                  f"{plain['dmatrix_s']:.1f} s + train {plain['train_s']:.1f} s)   AUC {plain['auc']:.4f}", flush=True)
            results = {}
            for engine in args.engines:
                if engine in ("flower", "direct"):
                    results[engine] = run_engine(engine, paths, params, sub / f"{engine}.json", test_x, test_y)
                else:
                    local = run_inprocess(paths, params, test_x, test_y)
                    results[engine] = {**local, "federated_s": local["protocol_s"]}
                r = results[engine]
                label = {"flower": "federated, Flower simulation", "direct": "federated, sites as TLS processes",
                         "inprocess": "protocol only (sites called)"}[engine]
                print(f"  {label:32s} {r['federated_s']:8.1f} s  ({r['rounds']} secure rounds, "
                      f"{r['mb_per_site_per_tree']:.2f} MB per site per tree, peak memory {r['peak_rss_gb']:.2f} GB)   "
                      f"AUC {r['auc']:.4f}   {r['federated_s'] / plain['xgboost_s']:.1f}x xgboost", flush=True)
            if headline is None:
                headline = {"sites": count, "trees": args.trees, "xgboost_s": round(plain["xgboost_s"], 2),
                            "xgboost_auc": round(plain["auc"], 5)}
                headline_engine = "direct" if "direct" in results else next(iter(results), None)
                if headline_engine is not None:
                    headline["engine"] = headline_engine
                for engine, r in results.items():
                    prefix = "" if engine == headline_engine else {"flower": "flower_", "direct": "direct_",
                                                                    "inprocess": "protocol_"}[engine]
                    headline[f"{prefix}s" if prefix else "federated_s"] = round(r["federated_s"], 2)
                    headline[f"{prefix}ratio"] = round(r["federated_s"] / plain["xgboost_s"], 2)
                    headline[f"{prefix}mb_per_site_per_tree"] = round(r["mb_per_site_per_tree"], 3)
                    headline[f"{prefix}peak_rss_gb"] = round(r["peak_rss_gb"], 2)
                    headline[f"{prefix}auc"] = round(r["auc"], 5)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
