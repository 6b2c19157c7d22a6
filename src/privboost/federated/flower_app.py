"""Federated training on Flower: the aggregator is a Flower ``ServerApp``, every site a ``ClientApp``.

The same two apps run in Flower's simulation on one machine (`run_simulation`, used by
``privboost train federated --local``) and, unchanged, deployed across hosts: a SuperLink, one SuperNode per site
started with ``--node-config "data-path='site.csv'"``, and ``flwr run deploy/flower`` (the Flower App in the
repository's ``deploy/flower/``, whose README has the commands). In deployment the apps read the job from Flower's
run config (``label``, ``n-estimators``, ...; ``out`` is a path on the SuperLink's host, best absolute); in
simulation the job is passed in directly.

A site keeps what it must remember between messages (secure-aggregation keys, bin edges, margins, each row's
node) in Flower's per-node ``context.state``, because a deployed SuperNode starts a fresh ClientApp process for
every message; its table and bin matrix are cached per process (Flower's simulation keeps one process here), so a
deployed site re-reads its file per message — prefer Parquet there. What crosses Flower's messages is only what
`privboost.federated.site` sends: public keys, encrypted share packets, masked vectors and Shamir shares.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from privboost.federated.aggregator import FederatedAggregator, FederatedError, FederatedParams, Progress
from privboost.federated.messages import flatten, payload_bytes, unflatten
from privboost.federated.partition import RowPartition
from privboost.federated.site import Site, SiteData, load_site_data


# ---------------------------------------------------------------------- messages <-> Flower records
def to_record(message: dict) -> RecordDict:
    """A protocol message (nested dicts of arrays, bytes, numbers, strings) as a Flower ``RecordDict``."""
    arrays, values = flatten(message)
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                       "config": ConfigRecord(values)})


def from_record(record: RecordDict) -> dict:
    """Inverse of `to_record`."""
    return unflatten({k: a.numpy() for k, a in record["arrays"].items()}, dict(record["config"].items()))


# ---------------------------------------------------------------------- aggregator side
class FlowerChannel:
    """The aggregator's `Channel` over a Flower ``Grid``: site ids 0..n-1 in the order of sorted node ids."""

    def __init__(self, grid: Grid, node_ids: list[int], timeout: float | None) -> None:
        self.grid = grid
        self.nodes = sorted(node_ids)
        self.timeout = timeout
        self.bytes_received = 0
        self.bytes_sent = 0

    def site_ids(self) -> list[int]:
        """Site ids (positions in the sorted node list)."""
        return list(range(len(self.nodes)))

    def exchange(self, requests: dict[int, dict]) -> dict[int, dict]:
        """One Flower message per site; sites that do not answer within the timeout count as dropped."""
        messages = []
        for site, request in requests.items():
            self.bytes_sent += payload_bytes(request)
            messages.append(Message(to_record(request), dst_node_id=self.nodes[site], message_type="query"))
        replies = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            site = self.nodes.index(reply.metadata.src_node_id)
            if reply.has_error():
                raise FederatedError(f"site {site} (node {self.nodes[site]}) failed: {reply.error.reason}")
            replies[site] = from_record(reply.content)
            self.bytes_received += payload_bytes(replies[site])
        return replies


@dataclass
class FederatedJob:
    """What the ServerApp needs: parameters, where to write the model, how many sites to wait for."""

    params: FederatedParams
    out: str
    sites: int
    round_timeout: float | None = None
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_run_config(cls, run_config: dict) -> FederatedJob:
        """Job from Flower's run config (``flwr run ... --run-config "n-estimators=10 ..."``)."""
        def get(name, default):
            return run_config.get(name, default)
        params = FederatedParams(objective=str(get("objective", "binary:logistic")),
                                 n_estimators=int(get("n-estimators", 10)), max_depth=int(get("max-depth", 6)),
                                 learning_rate=float(get("learning-rate", 0.3)), max_bin=int(get("max-bin", 256)),
                                 reg_lambda=float(get("reg-lambda", 1.0)), gamma=float(get("gamma", 0.0)),
                                 min_child_weight=float(get("min-child-weight", 1.0)))
        timeout = float(get("round-timeout", 0)) or None
        return cls(params, str(get("out", "model.json")), int(get("min-sites", 2)), timeout)


def run_aggregator(grid: Grid, job: FederatedJob, progress: Progress | None = None) -> None:
    """Wait for the job's sites, train, and write the model as XGBoost JSON (atomically)."""
    deadline = time.monotonic() + 300
    nodes = list(grid.get_node_ids())
    while len(nodes) < job.sites:
        if time.monotonic() > deadline:
            raise FederatedError(f"only {len(nodes)} of {job.sites} sites connected within 300 s")
        time.sleep(0.2)
        nodes = list(grid.get_node_ids())
    channel = FlowerChannel(grid, nodes, job.round_timeout)

    def report(event: dict) -> None:
        if progress is not None:
            progress({**event, "bytes_from_sites": channel.bytes_received})

    result = FederatedAggregator(channel, job.params, report).train()
    result.model.save(job.out)
    job.stats.update({"seconds": result.seconds, "rounds": result.rounds, "alive": len(result.alive),
                      "sites": len(nodes), "bytes_from_sites": channel.bytes_received,
                      "bytes_to_sites": channel.bytes_sent})


def server_app(job: FederatedJob, progress: Progress | None = None,
               failures: list[BaseException] | None = None) -> ServerApp:
    """A ServerApp running ``job`` (simulation: the job is given, not read from the run config).

    An exception is also appended to ``failures``, so the caller can report it rather than Flower's log line.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_aggregator(grid, job, progress)
        except BaseException as exc:
            if failures is not None:
                failures.append(exc)
            raise

    return app


# ---------------------------------------------------------------------- site side
_STATE = "privboost.site"
_DATA_CACHE: dict[tuple, SiteData] = {}
_BINS_CACHE: dict[tuple, np.ndarray] = {}
#: a site's rows grouped by node (`RowPartition`), kept while this process serves the site's next message; the
#: token stored beside the site's state says whether the cached arrangement belongs to that state
_ROWS_CACHE: dict[int, tuple[str, RowPartition | None]] = {}


def _site_data(path: str, label: str) -> SiteData:
    """The site's table, read once per process while the file is unchanged (a deployed ClientApp reads it anew)."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, label)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_site_data(path, label)
    return _DATA_CACHE[key]


def _bins_key(data: SiteData, edges: np.ndarray) -> tuple:
    """Cache key of a site's bin matrix: its (cached, so stable) table and the bin edges."""
    return id(data), hashlib.sha256(np.asarray(edges).tobytes()).hexdigest()


def _data_path(context: Context, data_paths: list[str] | None) -> str:
    if "data-path" in context.node_config:
        return str(context.node_config["data-path"])
    if data_paths is not None:
        return data_paths[int(context.node_config["partition-id"])]
    raise FederatedError("this SuperNode has no data: start it with --node-config \"data-path='site.csv'\"")


def handle_site_message(message: Message, context: Context, data_paths: list[str] | None = None,
                        label: str | None = None) -> Message:
    """One site request: restore the site from ``context.state``, answer, store its state back."""
    path = _data_path(context, data_paths)
    data = _site_data(path, label if label is not None else str(context.run_config.get("label", "label")))
    request = from_record(message.content)
    if request.get("stage") == "advertise":
        site = Site(data)
    elif _STATE + ".config" in context.state:
        stored = from_record(RecordDict({"arrays": context.state[_STATE + ".arrays"],
                                         "config": context.state[_STATE + ".config"]}))
        bins = _BINS_CACHE.get(_bins_key(data, stored["edges"])) if "edges" in stored else None
        site = Site.from_state(data, stored, bins)
        token, rows = _ROWS_CACHE.get(id(data), ("", None))
        if _STATE + ".rows" in context.state and context.state[_STATE + ".rows"].get("token") == token:
            site.rows = rows
    else:
        raise FederatedError("this site has no state for the run: it missed key setup")
    try:
        reply = site.handle(request)
    except Exception:
        _ROWS_CACHE.pop(id(data), None)  # the arrangement may be half-updated: never reuse it
        raise
    if site.bins is not None:  # binned on this message (first level) or restored: keep it for the next ones
        _BINS_CACHE.setdefault(_bins_key(data, site.edges), site.bins)
    record = to_record(site.export_state())
    context.state[_STATE + ".arrays"] = record["arrays"]
    context.state[_STATE + ".config"] = record["config"]
    token = secrets.token_hex(8)
    _ROWS_CACHE[id(data)] = (token, site.rows)
    context.state[_STATE + ".rows"] = ConfigRecord({"token": token})
    return Message(to_record(reply), reply_to=message)


def client_app(data_paths: list[str] | None = None, label: str | None = None) -> ClientApp:
    """A ClientApp for one site; ``data_paths`` by partition id in simulation, else node config ``data-path``."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return handle_site_message(message, context, data_paths, label)

    return app


def _deployed_main(grid: Grid, context: Context) -> None:
    from flwr.common import log  # Flower's logger: its lines reach ``flwr run --stream``

    job = FederatedJob.from_run_config(dict(context.run_config))
    run_aggregator(grid, job, lambda event: log(
        logging.INFO, "tree %d/%d level %d, sites alive %d/%d, %.1f MB received", event["tree"], event["trees"],
        event["level"], event["alive"], event["sites"], event["bytes_from_sites"] / 1e6))
    log(logging.INFO, "model written to %s", Path(job.out).resolve())


#: Entry points for a deployed run (``flwr run``; see ``deploy/flower/pyproject.toml``): job from the run config.
server = ServerApp()
server.main()(_deployed_main)
client = client_app()


# ---------------------------------------------------------------------- one machine: Flower's simulation
def quiet_flower() -> None:
    """Keep Flower's and Ray's per-round logging out of the user's terminal."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_simulation_job(data_paths: list[str], label: str, job: FederatedJob,
                       progress: Progress | None = None) -> dict:
    """Every site and the aggregator in Flower's simulation on this machine; returns the job's stats."""
    from flwr.simulation import run_simulation

    quiet_flower()
    cpus = max(1, os.cpu_count() or 1)
    # one actor holding every virtual site: their numba kernels use all cores, and their state stays in one place
    backend = {"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                             "logging_level": logging.ERROR, "log_to_driver": False}}
    failure: list[BaseException] = []
    app = server_app(job, progress, failure)
    run_simulation(app, client_app(data_paths, label), num_supernodes=job.sites, backend_config=backend)
    if failure:
        raise failure[0]
    if not Path(job.out).is_file():
        raise FederatedError("Flower's simulation ended without a model (see the log above)")
    return {**job.stats, "params": asdict(job.params), "sites": job.sites,
            "mb_per_site_per_tree": job.stats.get("bytes_from_sites", 0) / 1e6 / job.sites /
            max(1, job.params.n_estimators)}


