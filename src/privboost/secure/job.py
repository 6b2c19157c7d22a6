"""A secure training job's roles as separate processes over mutually authenticated TLS 1.3.

Roles and connections (every role may run on its own host; certificates name the role):
  dealer     listens; party0 and party1 connect; hands out correlated randomness (sees no data)
  party0     listens; party1 and every owner connect to it; it connects to the dealer and the analyst
  party1     listens; every owner connects to it; it connects to party0, the dealer and the analyst
  owner<i>   connects to party0 and party1 (and, where several owners split the rows of the same columns, first
             to the analyst to merge bin edges); deals its secret shares and leaves

Splits: vertical (each owner some columns of the same samples, joined by id), horizontal (each owner some rows of
the same columns) or mixed (column groups joined by id, each group's rows split among its owners). In a mixed split
the owners share a key (``id_key``, in their job files only) and send each row's pseudonym HMAC-SHA256(key, id) to
both parties, which order every group's rows by pseudonym so each sample sits on the same row everywhere.
  analyst    listens; receives both parties' shares of the finished trees and writes the XGBoost JSON model

A job is described by one TOML file per role (`load_job`); `privboost train secure --config FILE` runs that role.
Any failure aborts every open channel with the reason, so the other roles stop with a clear message.
Leakage: see `owner.py` (what owners reveal as metadata), `trainer.py` (nothing during training), and the analyst
learns the model. Mixed split: the parties also see the rows' pseudonyms, i.e. which rows of different owners are
the same sample (and how many samples each owner holds), never the ids or the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import resource
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privboost.mpc.dealer import DealerClient, TrustedDealer
from privboost.mpc.prg import Prg
from privboost.mpc.runtime import Party
from privboost.mpc.transport import DEFAULT_TIMEOUT_S, Channel, MpcError, TlsListener, connect_tls
from privboost.net.certs import CertPaths
from privboost.secure.analyst import build_ensemble, reveal
from privboost.secure.binning import bin_columns, categorical_mask
from privboost.secure.histograms import ROUTES
from privboost.secure.owner import (
    OwnerTable,
    bin_rows,
    load_owner_table,
    local_summary,
    merge_cuts,
    prepare_shares,
    split_for_parties,
)
from privboost.secure.trainer import SecureParams, SharedData, TrainingError, TrainResult, TreeShares, train

ROLES = ("dealer", "party0", "party1", "analyst")
SPLITS = ("vertical", "horizontal", "mixed")
ANALYST_WAIT_S = 86_400.0  # how long the analyst waits for the parties to finish training
COLUMN_FLAGS = ("categorical", "has_missing", "n_categories")  # per-column metadata every owner deals
PSEUDONYM_BYTES = 32  # HMAC-SHA256 of a sample id under the owners' key (mixed split)


def pseudonyms(ids: np.ndarray, key: bytes) -> np.ndarray:
    """Rows' id pseudonyms HMAC-SHA256(key, id) as an (n, 32) uint8 array; without the owners' key they do not
    reveal the ids, and equal ids give equal pseudonyms in every owner's file."""
    if len(key) < 16:
        raise JobError("the owners' id key must be at least 16 bytes (32 hex digits)")
    out = np.empty((len(ids), PSEUDONYM_BYTES), np.uint8)
    for i, value in enumerate(ids):
        out[i] = np.frombuffer(hmac.new(key, str(value).encode(), hashlib.sha256).digest(), np.uint8)
    return out


class JobError(MpcError):
    """A job description or the data the owners dealt is unusable (says what to fix)."""


@dataclass
class Job:
    """One role's view of a secure training job."""

    role: str
    split: str
    label: str
    owners: list[str]
    addresses: dict[str, tuple[str, int]]
    certs: CertPaths
    params: SecureParams
    max_bin: int
    frac_bits: int = 16
    timeout_s: float = DEFAULT_TIMEOUT_S
    id_column: str | None = None
    data: str | None = None  # owners only
    out: str | None = None  # analyst only
    histograms: str = "onehot"  # or "shuffle" (see secure.histograms: memory vs leakage)
    categorical: list[str] = field(default_factory=list)  # columns holding integer category codes
    groups: dict[str, str] = field(default_factory=dict)  # mixed split: owner -> column group
    id_key: str | None = None  # mixed split, owners only: hex key of the id pseudonyms (never given to the parties)
    extra: dict = field(default_factory=dict)

    def group_owners(self, group: str) -> list[str]:
        """Owners of one column group (mixed split), in job order."""
        return [o for o in self.owners if self.groups.get(o) == group]

    def merges_bin_edges(self, owner: str) -> bool:
        """Whether ``owner`` bins with edges merged by the analyst (rows of its columns split among owners)."""
        if self.split == "mixed":
            return len(self.group_owners(self.groups[owner])) > 1
        return self.split == "horizontal"

    @property
    def histograms_array(self) -> str:
        """Name of the array the owners deal for this job's histogram route."""
        return "onehot" if self.histograms == "onehot" else "bins"


def _address(text: str, what: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit():
        raise JobError(f"address of {what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def load_job(path: str | os.PathLike) -> Job:
    """Read and validate one role's TOML job file."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise JobError(f"cannot read job file {path}: {exc}") from exc
    try:
        job, tls, params = doc["job"], doc["tls"], dict(doc.get("params", {}))
        role = str(job["role"])
        owners = [str(o) for o in job["owners"]]
        if role not in ROLES and role not in owners:
            raise JobError(f"role {role!r} is none of {ROLES} nor an owner {owners}")
        split = str(job.get("split", "vertical"))
        if split not in SPLITS:
            raise JobError(f"split must be one of {SPLITS}")
        addresses = {r: _address(doc["addresses"][r], r) for r in ROLES}
        certs = CertPaths(Path(tls["cert"]), Path(tls["key"]), Path(tls["ca"]))
        for p in (certs.cert, certs.key, certs.ca):
            if not p.is_file():
                raise JobError(f"certificate file {p} does not exist (make them with `privboost certs`)")
        max_bin = int(params.pop("max_bin", 256))
        secure_params = SecureParams(**params)
        secure_params.check()
        return Job(role=role, split=split, label=str(job["label"]), owners=owners, addresses=addresses,
                   certs=certs, params=secure_params, max_bin=max_bin, frac_bits=int(job.get("frac_bits", 16)),
                   timeout_s=float(job.get("timeout_s", DEFAULT_TIMEOUT_S)), id_column=job.get("id_column"),
                   data=job.get("data"), out=job.get("out"), histograms=_route_name(job.get("histograms", "onehot")),
                   categorical=[str(c) for c in job.get("categorical", [])], groups=_groups(job, split, owners, role),
                   id_key=job.get("id_key"))
    except KeyError as exc:
        raise JobError(f"job file {path} lacks {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise JobError(f"job file {path}: {exc}") from exc


def _groups(job: dict, split: str, owners: list[str], role: str) -> dict[str, str]:
    if split != "mixed":
        return {}
    groups = {str(k): str(v) for k, v in dict(job.get("groups", {})).items()}
    if set(groups) != set(owners):
        raise JobError("a mixed split needs `groups`, the column group of every owner")
    if not job.get("id_column"):
        raise JobError("a mixed split needs `id_column` to join the column groups")
    if role in owners and not job.get("id_key"):
        raise JobError("an owner in a mixed split needs `id_key`, the owners' shared key for id pseudonyms")
    return groups


def _route_name(name: str) -> str:
    if name not in ROUTES:
        raise JobError(f"histograms must be one of {ROUTES}, got {name!r}")
    return name


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# ----------------------------------------------------------------------------------------------- helpers
def _send_json(channel: Channel, doc: dict) -> None:
    channel.send_bytes(json.dumps(doc).encode())


def _recv_json(channel: Channel) -> dict:
    try:
        return json.loads(channel.recv_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobError(f"{channel.peer_name} sent a malformed message") from exc


def _connect(job: Job, peer: str) -> Channel:
    host, port = job.addresses[peer]
    return connect_tls(host, port, job.certs, peer, send_first=True, timeout_s=job.timeout_s)


def _accept_all(listener: TlsListener, names: set[str], timeout_s: float) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    while len(channels) < len(names):
        channel = listener.accept(names - set(channels), send_first=False, timeout_s=timeout_s)
        channels[channel.peer_name] = channel
    return channels


def _abort_all(channels: list[Channel], reason: str) -> None:
    for channel in channels:
        channel.abort(reason)


# ----------------------------------------------------------------------------------------------- roles
def run_dealer(job: Job) -> dict:
    """Serve correlated randomness to the two parties until party 1 says it is done."""
    listener = TlsListener(*job.addresses["dealer"], job.certs)
    try:
        channels = _accept_all(listener, {"party0", "party1"}, job.timeout_s)
    finally:
        listener.close()
    dealer = TrustedDealer()
    dealer.serve(channels["party0"], channels["party1"])
    return {"role": "dealer", "requests": dealer.requests_served,
            "bytes_sent": sum(c.stats.bytes_sent for c in channels.values()), "peak_rss_gb": _peak_rss_gb()}


def run_owner(job: Job) -> dict:
    """Load, bin and deal this owner's data to both parties."""
    table = load_owner_table(job.data or "", job.label, job.id_column if job.split != "horizontal" else None)
    opened: list[Channel] = []
    try:
        if job.merges_bin_edges(job.role):
            analyst = _connect(job, "analyst")
            opened.append(analyst)
            _send_json(analyst, {"features": table.feature_names,
                                 "summary": local_summary(table, job.max_bin, job.categorical)})
            reply = _recv_json(analyst)
            binned = bin_rows(table, [np.asarray(c, np.float32) for c in reply["cuts"]], job.max_bin, job.categorical)
            analyst.close()
        else:
            binned = (bin_columns(table.values, table.feature_names, job.max_bin, job.categorical)
                      if table.feature_names else None)
        shares = prepare_shares(table, binned, job.max_bin, job.frac_bits, job.histograms, job.params.num_class)
        meta = {**shares.meta, "owner": job.role, "group": job.groups.get(job.role, ""),
                "shapes": {k: list(v.shape) for k, v in shares.arrays.items()}}
        to0, to1 = _connect(job, "party0"), _connect(job, "party1")
        opened += [to0, to1]
        _send_json(to0, meta)
        _send_json(to1, meta)
        for name in meta["arrays"]:
            share0, seed = split_for_parties(shares.arrays.pop(name))  # the owner's copy goes as it is dealt
            to0.send_array(share0)
            to1.send_bytes(seed)
        if job.split == "mixed":  # both parties get every row's id pseudonym, to join the column groups
            names = pseudonyms(table.ids, bytes.fromhex(job.id_key or ""))
            to0.send_array(names)
            to1.send_array(names)
        for channel in (to0, to1):  # wait until the party has taken everything
            if _recv_json(channel).get("status") != "received":
                raise JobError(f"{channel.peer_name} did not confirm the data")
            channel.close()
        return {"role": job.role, "rows": table.rows, "features": len(table.feature_names),
                "peak_rss_gb": _peak_rss_gb()}
    except BaseException as exc:
        _abort_all(opened, f"{job.role} failed: {exc}")
        raise


def _receive_owner_data(job: Job, channels: dict[str, Channel], party_id: int) -> tuple[list[dict], list[dict]]:
    metas, arrays = [], []
    for owner in job.owners:
        channel = channels[owner]
        meta = _recv_json(channel)
        got = {}
        for name in meta["arrays"]:
            if party_id == 0:
                got[name] = channel.recv_array()
            else:
                got[name] = Prg(channel.recv_bytes()).words(tuple(meta["shapes"][name]))
            if list(got[name].shape) != meta["shapes"][name]:
                raise JobError(f"{owner} sent {name} of shape {got[name].shape}, announced {meta['shapes'][name]}")
        if job.split == "mixed":
            got["pseudonyms"] = channel.recv_array()
            if got["pseudonyms"].shape != (meta["rows"], PSEUDONYM_BYTES) or got["pseudonyms"].dtype != np.uint8:
                raise JobError(f"{owner} sent malformed id pseudonyms")
        metas.append(meta)
        arrays.append(got)
    return metas, arrays


def _assemble(job: Job, metas: list[dict], arrays: list[dict]) -> tuple[SharedData, list[str], float]:
    """SharedData from the owners' blocks; checks the owners agree; returns (data, feature names, label bound).

    Every split is a set of column groups whose owners split the group's rows: vertical, one owner per group (rows
    already in id order); horizontal, one group; mixed, groups named in the job, rows put in pseudonym order.
    """
    if any(m["n_bins"] != job.max_bin for m in metas):
        raise JobError("owners binned with different numbers of bins")
    if job.split == "vertical":
        if len({m["rows"] for m in metas}) != 1 or len({m["ids_digest"] for m in metas}) != 1:
            raise JobError("the owners do not hold the same samples (row counts or id sets differ)")
        groups = [[i] for i in range(len(metas))]
    elif job.split == "horizontal":
        groups = [list(range(len(metas)))]
    else:
        by_name: dict[str, list[int]] = {}
        for i, meta in enumerate(metas):
            by_name.setdefault(meta["group"], []).append(i)
        groups = list(by_name.values())
    orders = _pseudonym_orders(groups, arrays) if job.split == "mixed" else [None] * len(groups)
    blocks = [_column_group(job, metas, arrays, members, order) for members, order in zip(groups, orders, strict=True)]
    labelled = [block["labels"] for block in blocks if block["labels"] is not None]
    if len(labelled) != 1:
        raise JobError(f"exactly one owner (or, where owners split rows, one column group) must hold the label "
                       f"{job.label!r}; found {len(labelled)}")
    features = [block for block in blocks if block["names"]]
    if not features:
        raise JobError("no owner holds feature columns")
    names = [name for block in features for name in block["names"]]
    undeclared = sorted(set(job.categorical) - set(names))
    if undeclared:
        raise JobError(f"categorical column(s) {undeclared} are in no owner's features")
    matrix = np.concatenate([block["matrix"] for block in features], axis=1)
    thresholds = np.concatenate([block["thresholds"] for block in features])
    flags = {key: np.concatenate([block[key] for block in features]) for key in COLUMN_FLAGS}
    flags = {"categorical": flags["categorical"].astype(bool), "has_missing": flags["has_missing"].astype(bool),
             "n_categories": flags["n_categories"].astype(np.int64)}
    bound = max(m["label_bound"] for m in metas)
    if job.histograms == "onehot":
        return SharedData(matrix, labelled[0], thresholds, len(names), job.max_bin, **flags), names, bound
    return SharedData(None, labelled[0], thresholds, len(names), job.max_bin, bins=matrix, **flags), names, bound


def _pseudonym_orders(groups: list[list[int]], arrays: list[dict]) -> list[np.ndarray]:
    """Per column group, the order of its stacked rows that sorts them by id pseudonym; checks that every group
    holds the same samples, each once."""
    orders, reference = [], None
    for members in groups:
        keys = np.concatenate([arrays[i]["pseudonyms"] for i in members]).view(f"S{PSEUDONYM_BYTES}").ravel()
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if np.any(keys[1:] == keys[:-1]):
            raise JobError("a column group holds a sample id more than once")
        if reference is None:
            reference = keys
        elif keys.shape != reference.shape or np.any(keys != reference):
            raise JobError("the column groups do not hold the same samples (their id sets differ)")
        orders.append(order)
    return orders


def _column_group(job: Job, metas: list[dict], arrays: list[dict], members: list[int],
                  order: np.ndarray | None) -> dict:
    """One column group's shares, its owners' rows stacked (then put in ``order``), and its public column flags."""
    first = metas[members[0]]
    if any(metas[i]["features"] != first["features"] or metas[i]["categorical"] != first["categorical"]
           or metas[i]["n_categories"] != first["n_categories"] for i in members):
        raise JobError("owners that split the rows of the same columns must hold the same feature columns, "
                       "binned alike")

    def stacked(name: str) -> np.ndarray:
        rows = np.concatenate([arrays[i][name] for i in members]) if len(members) > 1 else arrays[members[0]][name]
        return rows if order is None else rows[order]

    with_label = [metas[i]["has_label"] for i in members]
    if any(with_label) and not all(with_label):
        raise JobError(f"some owners of the same columns hold the label {job.label!r} and some do not")
    block = {"names": first["features"] if "thresholds" in arrays[members[0]] else [],
             "labels": stacked("labels") if all(with_label) else None}
    if block["names"]:
        block.update(matrix=stacked(job.histograms_array),
                     thresholds=arrays[members[0]]["thresholds"],  # the group's owners bin with the same edges
                     categorical=np.array(first["categorical"]), n_categories=np.array(first["n_categories"]),
                     has_missing=np.any([metas[i]["has_missing"] for i in members], axis=0))
    return block


def _progress_printer(party_id: int):
    def show(event: dict) -> None:
        if party_id == 0:
            print(json.dumps({"progress": event}), flush=True)
    return show


def run_party(job: Job) -> dict:
    """Run compute party 0 or 1: receive the owners' shares, train, send the tree shares to the analyst."""
    party_id = 0 if job.role == "party0" else 1
    opened: list[Channel] = []
    try:
        dealer = _connect(job, "dealer")
        opened.append(dealer)
        correlations = DealerClient.connect(party_id, dealer)
        listener = TlsListener(*job.addresses[job.role], job.certs)
        try:
            if party_id == 1:
                peer = _connect(job, "party0")
                opened.append(peer)
                owners = _accept_all(listener, set(job.owners), job.timeout_s)
            else:
                accepted = _accept_all(listener, set(job.owners) | {"party1"}, job.timeout_s)
                peer = accepted.pop("party1")
                owners = accepted
                opened.append(peer)
        finally:
            listener.close()
        opened += list(owners.values())
        metas, arrays = _receive_owner_data(job, owners, party_id)
        for owner in job.owners:
            _send_json(owners[owner], {"status": "received"})
        data, names, label_bound = _assemble(job, metas, arrays)
        for block in arrays:  # the assembled copy is all that training needs
            block.clear()
        # both parties must have received the same metadata (an owner could not deal inconsistent shapes unseen)
        digest = hashlib.sha256(json.dumps(metas, sort_keys=True).encode()).digest()
        peer.send_bytes(digest)
        if peer.recv_bytes() != digest:
            raise JobError("the parties received different metadata from the owners")
        params = job.params
        if params.objective == "reg:squarederror":
            params = SecureParams(**{**params.__dict__, "gradient_bound": 4 * max(label_bound, 1.0)})
        party = Party(party_id, peer, correlations, job.frac_bits)
        result = train(party, data, params, _progress_printer(party_id))
        correlations.finish()
        analyst = _connect(job, "analyst")
        opened.append(analyst)
        _send_result(analyst, result, names, data.categorical, params, job.frac_bits)
        if _recv_json(analyst).get("status") != "received":  # closing before this could lose unread data
            raise JobError("the analyst did not confirm the model shares")
        analyst.close()
        return {"role": job.role, "bytes_sent": peer.stats.bytes_sent, "rounds": peer.stats.rounds,
                "dealer_bytes": correlations.dealer_bytes_received, "seconds": result.seconds,
                "peak_rss_gb": _peak_rss_gb()}
    except BaseException as exc:
        _abort_all(opened, f"{job.role} failed: {exc}")
        raise


def _send_result(analyst: Channel, result: TrainResult, names: list[str], categorical: np.ndarray,
                 params: SecureParams, frac_bits: int) -> None:
    _send_json(analyst, {"features": names, "categorical": [bool(c) for c in categorical],
                         "params": params.__dict__, "frac_bits": frac_bits, "trees": len(result.trees),
                         "depth": params.max_depth})
    analyst.send_array(result.base_score)
    for tree in result.trees:
        for level in range(params.max_depth):
            for arr in (tree.split[level], tree.feature[level], tree.threshold[level], tree.default_left[level]):
                analyst.send_array(arr)
        analyst.send_array(tree.leaves)


def _recv_result(channel: Channel) -> tuple[dict, np.ndarray, list[TreeShares]]:
    meta = _recv_json(channel)
    base = channel.recv_array()
    trees = []
    for _ in range(int(meta["trees"])):
        tree = TreeShares()
        for _level in range(int(meta["depth"])):
            tree.split.append(channel.recv_array())
            tree.feature.append(channel.recv_array())
            tree.threshold.append(channel.recv_array())
            tree.default_left.append(channel.recv_array())
        tree.leaves = channel.recv_array()
        trees.append(tree)
    return meta, base, trees


def run_analyst(job: Job) -> dict:
    """Merge bin edges (horizontal split), then receive the parties' shares and write the model."""
    if not job.out:
        raise JobError("the analyst's job file needs `out`, the model path to write")
    listener = TlsListener(*job.addresses["analyst"], job.certs)
    opened: list[Channel] = []
    try:
        merging = [o for o in job.owners if job.merges_bin_edges(o)]
        if merging:
            owners = _accept_all(listener, set(merging), job.timeout_s)
            opened += list(owners.values())
            groups: dict[str, list[str]] = {}
            for owner in merging:
                groups.setdefault(job.groups.get(owner, ""), []).append(owner)
            for members in groups.values():
                summaries = [_recv_json(owners[o]) for o in members]
                if any(s["features"] != summaries[0]["features"] for s in summaries):
                    raise JobError("owners that split the rows of the same columns must hold the same feature columns")
                cuts = merge_cuts([s["summary"] for s in summaries], job.max_bin,
                                  categorical_mask(summaries[0]["features"], job.categorical))
                for owner in members:
                    _send_json(owners[owner], {"cuts": [c.astype(float).tolist() for c in cuts]})
        # training may take long: the analyst waits up to a day for the parties
        parties = _accept_all(listener, {"party0", "party1"}, ANALYST_WAIT_S)
        opened += list(parties.values())
        meta0, base0, trees0 = _recv_result(parties["party0"])
        meta1, base1, trees1 = _recv_result(parties["party1"])
        for channel in parties.values():
            _send_json(channel, {"status": "received"})
        if meta0 != meta1:
            raise JobError("the two parties report different jobs")
        frac_bits = int(meta0["frac_bits"])
        params = SecureParams(**meta0["params"])
        plain = reveal(trees0, trees1, frac_bits)
        base = float(((base0 + base1).view(np.int64) / 2.0**frac_bits)[0])
        model = build_ensemble(plain, params, meta0["features"], base, meta0["categorical"])
        model.save(job.out)
        return {"role": "analyst", "out": job.out, "trees": len(plain), "base_score": base,
                "peak_rss_gb": _peak_rss_gb()}
    except BaseException as exc:
        _abort_all(opened, f"analyst failed: {exc}")
        raise
    finally:
        listener.close()


def run_role(job: Job) -> dict:
    """Run whichever role ``job`` names; returns a small JSON-able report."""
    if job.role == "dealer":
        return run_dealer(job)
    if job.role in ("party0", "party1"):
        return run_party(job)
    if job.role == "analyst":
        return run_analyst(job)
    return run_owner(job)


def main_role(path: str) -> int:
    """CLI entry: run the role in job file ``path``; exit status 0, 1 (failure) or 130 (interrupted)."""
    try:
        job = load_job(path)
        report = run_role(job)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MpcError, TrainingError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"report": report}), flush=True)
    return 0


__all__ = ["Job", "JobError", "OwnerTable", "load_job", "main_role", "run_role"]
