"""The ``privboost`` command (typer). Each sub-command is a thin shell over the library; errors exit non-zero with a
message saying what was wrong and what to do."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="privboost: privacy-preserving XGBoost.", no_args_is_help=True, add_completion=False)
proxy_app = typer.Typer(help="Trusted proxy: per-user keys and encrypted models.", no_args_is_help=True)
client_app = typer.Typer(help="Client app: encrypted queries, decrypted answers.", no_args_is_help=True)
mpc_app = typer.Typer(help="Secure two-party computation: party 0, party 1 and a trusted dealer over TLS.",
                      no_args_is_help=True)
app.add_typer(proxy_app, name="proxy")
app.add_typer(client_app, name="client")
app.add_typer(mpc_app, name="mpc")
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # messages quote user text: no markup
    raise typer.Exit(code)


def _known_errors() -> tuple[type[Exception], ...]:
    from privboost.data import DataError
    from privboost.inference.client import ServerError
    from privboost.inference.format import EncryptedModelError
    from privboost.inference.keys import KeyFileError
    from privboost.inference.proxy import UnsupportedModelError
    from privboost.model import ModelFormatError

    return (DataError, ServerError, EncryptedModelError, KeyFileError, UnsupportedModelError, ModelFormatError,
            ValueError, OSError)


@app.command()
def server(
    db: Annotated[Path, typer.Option(help="SQLite database file (created if absent)")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    registration_secret: Annotated[str | None, typer.Option(
        envvar="PRIVBOOST_REGISTRATION_SECRET", help="only callers presenting this secret may register users")] = None,
    max_batch: Annotated[int, typer.Option(help="largest accepted batch of queries")] = 10_000,
    max_body_mb: Annotated[int, typer.Option(help="largest accepted request body, MB")] = 64,
    workers: Annotated[int, typer.Option(help="processes for the Paillier work of large batches "
                                              "(default: one per core)")] = 0,
) -> None:
    """Serve encrypted predictions until stopped (the untrusted server)."""
    from privboost.inference.server import serve

    if (certfile is None) != (keyfile is None):
        _fail("give both --certfile and --keyfile for HTTPS, or neither")
    if certfile is None and host not in ("127.0.0.1", "localhost", "::1"):
        err.print("[yellow]warning:[/] serving plain HTTP beyond loopback: tokens would cross the network in clear;"
                  " pass --certfile/--keyfile")
    import os

    serve(str(db), host, port, str(certfile) if certfile else None, str(keyfile) if keyfile else None,
          registration_secret, max_body_mb * 1024 * 1024, max_batch, workers or os.cpu_count() or 1)


@proxy_app.command("setup")
def proxy_setup(
    model: Annotated[Path, typer.Option(help="XGBoost JSON model")],
    user: Annotated[str, typer.Option(help="user name to register")],
    keys_out: Annotated[Path, typer.Option(help="directory for the user's key file (0600)")],
    server_url: Annotated[str, typer.Option("--server", help="server URL, e.g. https://host:8443")],
    model_id: Annotated[str, typer.Option(help="model name on the server")] = "default",
    scheme: Annotated[str, typer.Option(help="threshold encryption: ore (CLWW, fast) or ope (Boldyreva)")] = "ore",
    ca: Annotated[Path | None, typer.Option(help="CA certificate to verify the server's HTTPS certificate")] = None,
    paillier_bits: Annotated[int, typer.Option(help="Paillier modulus size")] = 2048,
) -> None:
    """Make USER's keys, register USER with the server and upload USER's encrypted model."""
    from rich.progress import Progress

    from privboost.inference.proxy import setup_user
    from privboost.model import TreeEnsemble

    if scheme not in ("ore", "ope"):
        _fail(f"--scheme must be 'ore' or 'ope', not {scheme!r}")
    try:
        ensemble = TreeEnsemble.load(model)
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("encrypting leaves", total=None)
            keys = setup_user(ensemble, user, keys_out, server_url, model_id=model_id, scheme=scheme,
                              ca_file=str(ca) if ca else None, paillier_bits=paillier_bits,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    except _known_errors() as exc:
        _fail(str(exc))
    err.print(f"user [bold]{keys.user}[/] set up: keys in {keys_out / 'keys.json'}, model '{keys.model_id}' "
              f"({len(ensemble.trees)} trees, {keys.scheme}) uploaded to {server_url}")


@client_app.command("predict")
def client_predict(
    keys: Annotated[Path, typer.Option(help="the user's key directory")],
    input: Annotated[Path, typer.Option(help="CSV or Parquet with one row per query, columns named as features")],
    output: Annotated[Path, typer.Option(help="CSV or Parquet to write, one column per output")],
    server_url: Annotated[str | None, typer.Option("--server", help="server URL (default: from the keys)")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate to verify the server's HTTPS certificate")] = None,
    batch_size: Annotated[int, typer.Option(help="queries per request")] = 1000,
) -> None:
    """Encrypt queries, have the server evaluate them, decrypt and write the predictions."""
    import pandas as pd

    from privboost.data import feature_matrix, read_table, write_table
    from privboost.inference.client import predict_encrypted
    from privboost.inference.keys import UserKeys

    try:
        user_keys = UserKeys.load(keys)
        x = feature_matrix(read_table(input), user_keys.feature_names)
        result = predict_encrypted(user_keys, x, server=server_url, ca_file=str(ca) if ca else None,
                                   batch_size=batch_size)
        columns = ["prediction"] if result.shape[1] == 1 else [f"class_{k}" for k in range(result.shape[1])]
        write_table(pd.DataFrame(result, columns=columns), output)
    except _known_errors() as exc:
        _fail(str(exc))
    err.print(f"{x.shape[0]} encrypted predictions written to {output}")


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="directory for ca.pem and <role>.pem/.key")],
    role: Annotated[list[str], typer.Option(help="role to certify (repeat)")] = ["server"],  # noqa: B006
    host: Annotated[list[str], typer.Option(help="extra host name or IP for the certificates")] = [],  # noqa: B006
) -> None:
    """Make a local CA and certificates for TLS (lab and one-machine deployments)."""
    from privboost.net.certs import make_certificates

    made = make_certificates(out, role, host)
    for name, paths in made.items():
        err.print(f"{name}: {paths.cert} (key {paths.key})")
    err.print(f"CA: {out / 'ca.pem'}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where the demo writes its model, keys and database")] = Path(
        "privboost-demo"),
    rows: Annotated[int, typer.Option(help="number of patients to predict")] = 20,
    secure_trees: Annotated[int, typer.Option(help="trees in the secure-training step (0 skips it)")] = 5,
    federated_trees: Annotated[int, typer.Option(help="trees in the federated step (0 skips it)")] = 10,
) -> None:
    """Encrypted prediction on NHANES health records, then hospitals training together (secret shares; federated)."""
    from privboost.demo import run_demo

    try:
        run_demo(workdir, rows, secure_trees, federated_trees)
    except (*_known_errors(), RuntimeError) as exc:
        _fail(str(exc))


def _run_mpc_role(config: Path, expect_dealer: bool) -> None:
    """Load ``config``, run the role, print its JSON report line on stdout; map failures to exit codes."""
    from privboost.mpc.runner import (
        ConfigError,
        RunError,
        Terminated,
        handle_signals,
        load_config,
        run_dealer,
        run_party,
        write_report,
    )
    from privboost.mpc.transport import MpcError

    role = "?"
    try:
        with handle_signals():
            cfg = load_config(config)
            role = cfg.role
            if expect_dealer != (role == "dealer"):
                other = "dealer" if role == "dealer" else "party"
                raise ConfigError(f"{config}: role is {role!r}: run it with `privboost mpc {other} --config {config}`")
            def progress(message: str) -> None:
                err.print(message, markup=False, highlight=False, soft_wrap=True)

            report = run_dealer(cfg, progress) if expect_dealer else run_party(cfg, progress)
            line = write_report(cfg, report)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        _fail(f"{role}: interrupted", 130)
    except Terminated:
        _fail(f"{role}: terminated", 143)
    except (RunError, MpcError, OSError) as exc:
        _fail(str(exc) if isinstance(exc, RunError) else f"{role}: {exc}")
    print(line, flush=True)


@mpc_app.command("party")
def mpc_party(
    config: Annotated[Path, typer.Option(help="this party's TOML config (role party0 or party1)")],
) -> None:
    """Run one compute party: connect to the peer and the dealer, run the configured program, print a JSON report."""
    _run_mpc_role(config, expect_dealer=False)


@mpc_app.command("dealer")
def mpc_dealer(
    config: Annotated[Path, typer.Option(help="the dealer's TOML config (role dealer)")],
) -> None:
    """Run the trusted dealer: accept both parties, deal correlated randomness (it sees no data)."""
    _run_mpc_role(config, expect_dealer=True)


def _parse_param(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        _fail(f"--param must be KEY=VALUE, got {text!r}", 2)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # not JSON: a plain string


@mpc_app.command("local")
def mpc_local(
    program: Annotated[str, typer.Option(help="program to run: selfcheck, stall, exchange or package.module:function")],
    workdir: Annotated[Path | None, typer.Option(help="directory for configs, certificates, logs and reports "
                                                      "(default: a new temporary directory)")] = None,
    param: Annotated[list[str], typer.Option(help="program parameter KEY=VALUE, VALUE as JSON (repeat)")] = [],  # noqa: B006
    timeout_s: Annotated[float, typer.Option(help="per-message timeout of every channel, seconds")] = 60.0,
    frac_bits: Annotated[int, typer.Option(help="fixed-point fractional bits")] = 16,
) -> None:
    """Run party0, party1 and the dealer as three processes on this machine (TLS on loopback); print their reports."""
    import json

    from rich.table import Table

    from privboost.mpc.runner import ConfigError, LocalRunError, run_local_processes

    params = dict(_parse_param(p) for p in param)
    try:
        reports = run_local_processes(program, params, workdir, timeout_s=timeout_s, frac_bits=frac_bits)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except LocalRunError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    def size(n: int) -> str:
        return f"{n / 1e6:.2f} MB" if n >= 1e6 else (f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B")

    table = Table(title=f"privboost mpc local: {program}")
    for column in ("role", "wall s", "sent", "received", "rounds", "peak RSS MB", "of which"):
        table.add_column(column, justify="left" if column in ("role", "of which") else "right")
    for role in ("party0", "party1"):
        r = reports[role]
        table.add_row(role, f"{r['wall_s']:.2f}", size(r["bytes_sent_peer"] + r["bytes_sent_dealer"]),
                      size(r["bytes_received_peer"] + r["bytes_received_dealer"]), f"{r['rounds']:,}",
                      f"{r['peak_rss_mb']:.0f}",
                      f"dealer: sent {size(r['bytes_sent_dealer'])}, received {size(r['bytes_received_dealer'])}")
    d = reports["dealer"]
    table.add_row("dealer", f"{d['wall_s']:.2f}", size(d["bytes_sent_party0"] + d["bytes_sent_party1"]),
                  size(d["bytes_received_party1"]), "", f"{d['peak_rss_mb']:.0f}",
                  f"{d['requests_served']:,} requests; to party0 {size(d['bytes_sent_party0'])}")
    Console(width=max(120, Console().width)).print(table)
    Console().print("party0 result:", json.dumps(reports["party0"]["result"]), soft_wrap=True, markup=False,
                    highlight=False)


def main() -> None:
    """Entry point for ``python -m privboost``."""
    app(prog_name="privboost")


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------------------------------------ training
train_app = typer.Typer(help="Train XGBoost models without pooling the data.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _label_values(data: list[Path], label: str) -> set:
    from privboost.data import read_table

    for path in data:
        table = read_table(path)
        if label in table.columns:
            return set(table[label].dropna().unique().tolist())
    _fail(f"no data file has the label column {label!r}", 2)
    return set()


def _infer_objective(data: list[Path], label: str) -> str:
    return "binary:logistic" if _label_values(data, label) <= {0, 1} else "reg:squarederror"


def _infer_num_class(data: list[Path], label: str) -> int:
    values = _label_values(data, label)
    if not values or any(float(v) != int(v) or v < 0 for v in values):
        _fail("multi:softprob needs integer class labels 0..K-1 (or give --num-class)", 2)
    return int(max(values)) + 1


@train_app.command("secure")
def train_secure(
    config: Annotated[Path | None, typer.Option(help="run the one role this job file names "
                                                     "(owner, party0/1, dealer or analyst)")] = None,
    local: Annotated[bool, typer.Option("--local", help="run every role as a process on this machine")] = False,
    data: Annotated[list[Path], typer.Option(help="an owner's CSV/Parquet file (repeat, one per owner)")] = [],  # noqa: B006
    label: Annotated[str, typer.Option(help="label column (in whichever file has it)")] = "",
    split: Annotated[str, typer.Option(help="vertical (columns per owner, joined by --id-column), "
                                            "horizontal (rows per owner) or mixed (files with the same columns "
                                            "split rows; groups of columns joined by --id-column)")] = "vertical",
    id_column: Annotated[str | None, typer.Option(help="sample id column shared by the owners (vertical, "
                                                       "mixed)")] = None,
    out: Annotated[Path, typer.Option(help="where the analyst writes the XGBoost JSON model")] = Path("model.json"),
    n_estimators: Annotated[int, typer.Option(help="number of trees")] = 10,
    max_depth: Annotated[int, typer.Option(help="depth of every tree")] = 4,
    learning_rate: Annotated[float, typer.Option(help="shrinkage eta")] = 0.3,
    max_bin: Annotated[int, typer.Option(help="quantile bins per feature (2-256)")] = 32,
    objective: Annotated[str | None, typer.Option(help="binary:logistic, reg:squarederror or multi:softprob "
                                                       "(default: from the label's values)")] = None,
    reg_lambda: Annotated[float, typer.Option(help="L2 regularisation lambda")] = 1.0,
    gamma: Annotated[float, typer.Option(help="minimum loss reduction to split")] = 0.0,
    min_child_weight: Annotated[float, typer.Option(help="minimum hessian sum in a child")] = 1.0,
    base_score: Annotated[float | None, typer.Option(help="initial prediction (default 0.5 / label mean)")] = None,
    frac_bits: Annotated[int, typer.Option(help="fixed-point fractional bits")] = 16,
    timeout_s: Annotated[float, typer.Option(help="per-message network timeout, seconds")] = 120.0,
    histograms: Annotated[str, typer.Option(help="onehot (reveals nothing; memory n·features·bins) or shuffle "
                                                 "(memory n·features; reveals each feature's bin counts)")] = "onehot",
    categorical: Annotated[list[str], typer.Option(help="a column of integer category codes (repeat); split as "
                                                        "one category against the rest")] = [],  # noqa: B006
    num_class: Annotated[int | None, typer.Option(help="classes for multi:softprob (default: largest label + 1)")]
        = None,
) -> None:
    """Secure training on secret-shared data (XORBoost-style): owners, two compute parties, dealer, analyst.

    Missing values (empty cells) are allowed: every split learns where they go, as XGBoost does."""
    from privboost.mpc.transport import MpcError
    from privboost.secure.job import main_role
    from privboost.secure.trainer import SecureParams, TrainingError

    if config is not None:
        raise typer.Exit(main_role(str(config)))
    if not local:
        _fail("give --config JOB.toml (one role) or --local with --data files", 2)
    if not data or not label:
        _fail("--local needs --data (one per owner) and --label", 2)
    if split not in ("vertical", "horizontal", "mixed"):
        _fail("--split must be vertical, horizontal or mixed", 2)
    if histograms not in ("onehot", "shuffle"):
        _fail("--histograms must be onehot or shuffle", 2)
    if split in ("vertical", "mixed") and not id_column and len(data) > 1:
        _fail(f"a {split} split needs --id-column to join the owners' rows", 2)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from privboost.secure.local import run_local_job

    try:
        objective = objective or ("multi:softprob" if num_class else _infer_objective(data, label))
        if objective == "multi:softprob" and not num_class:
            num_class = _infer_num_class(data, label)
        params = SecureParams(objective=objective, n_estimators=n_estimators, max_depth=max_depth,
                              learning_rate=learning_rate, reg_lambda=reg_lambda, gamma=gamma,
                              min_child_weight=min_child_weight, base_score=base_score,
                              num_class=num_class if objective == "multi:softprob" else 0)
        params.check()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                      TimeElapsedColumn(), console=err, transient=False) as bar:
            task = bar.add_task("secure training", total=n_estimators * params.outputs * max_depth,
                                detail="starting roles")

            def show(event: dict) -> None:
                bar.update(task, completed=(event["tree"] - 1) * event["depth"] + event["level"],
                           detail=f"tree {event['tree']}/{event['trees']} level {event['level']}/{event['depth']}"
                                  f" · {event['bytes_sent'] / 1e6:,.0f} MB sent")

            reports = run_local_job(data, label, out, params, max_bin, split, id_column, frac_bits, timeout_s, show,
                                    histograms=histograms, categorical=categorical)
    except KeyboardInterrupt:
        _fail("interrupted: every role was stopped", 130)
    except (MpcError, TrainingError, ValueError, OSError) as exc:
        _fail(str(exc))
    party = reports.get("party0", {})
    err.print(f"model written to {out} ({n_estimators} trees); party 0 sent {party.get('bytes_sent', 0) / 1e6:,.1f} MB "
              f"in {party.get('rounds', 0):,} rounds")


def _federated_options_from_toml(config: Path) -> dict:
    import tomllib

    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _fail(f"cannot read job file {config}: {exc}", 2)
    job = doc.get("job", doc)
    known = {"data", "label", "out", "n_estimators", "max_depth", "learning_rate", "max_bin", "objective",
             "reg_lambda", "gamma", "min_child_weight", "base_score", "frac_bits", "round_timeout", "engine"}
    unknown = sorted(set(job) - known)
    if unknown:
        _fail(f"{config}: unknown keys {unknown}; known: {sorted(known)}", 2)
    return job


@train_app.command("federated")
def train_federated(
    config: Annotated[Path | None, typer.Option(help="a TOML job file with the options below under [job] "
                                                     "(data = [..], label = .., ...)")] = None,
    local: Annotated[bool, typer.Option("--local", help="run every site and the aggregator on this machine "
                                                        "in Flower's simulation")] = False,
    data: Annotated[list[Path], typer.Option(help="one site's CSV/Parquet file (repeat, one per site)")] = [],  # noqa: B006
    label: Annotated[str, typer.Option(help="label column (every site has it)")] = "",
    out: Annotated[Path, typer.Option(help="where the aggregator writes the XGBoost JSON model")] = Path("model.json"),
    n_estimators: Annotated[int, typer.Option(help="number of trees")] = 10,
    max_depth: Annotated[int, typer.Option(help="maximum depth of a tree")] = 6,
    learning_rate: Annotated[float, typer.Option(help="shrinkage eta")] = 0.3,
    max_bin: Annotated[int, typer.Option(help="bins per feature (2-1024)")] = 256,
    objective: Annotated[str | None, typer.Option(help="binary:logistic or reg:squarederror "
                                                       "(default: from the label's values)")] = None,
    reg_lambda: Annotated[float, typer.Option(help="L2 regularisation lambda")] = 1.0,
    gamma: Annotated[float, typer.Option(help="minimum loss reduction to split")] = 0.0,
    min_child_weight: Annotated[float, typer.Option(help="minimum hessian sum in a child")] = 1.0,
    base_score: Annotated[float | None, typer.Option(help="initial prediction (default: pooled label mean)")] = None,
    frac_bits: Annotated[int | None, typer.Option(help="fixed-point fractional bits of the summed histograms "
                                                       "(default: 32, fewer if the labels are large)")] = None,
    round_timeout: Annotated[float, typer.Option(help="seconds to wait for the sites in a round; "
                                                      "a site that misses it counts as dropped")] = 600.0,
    engine: Annotated[str, typer.Option(help="flower (Flower's simulation) or direct (each site a process with "
                                             "its own TLS connection: no per-message polling latency)")] = "flower",
) -> None:
    """Federated training on Flower with secure aggregation (SecAgg+): sites keep their rows."""
    if config is not None:
        job = _federated_options_from_toml(config)
        data = [Path(p) for p in job.get("data", data)]
        label = job.get("label", label)
        out = Path(job.get("out", out))
        n_estimators, max_depth = int(job.get("n_estimators", n_estimators)), int(job.get("max_depth", max_depth))
        learning_rate, max_bin = float(job.get("learning_rate", learning_rate)), int(job.get("max_bin", max_bin))
        objective, base_score = job.get("objective", objective), job.get("base_score", base_score)
        reg_lambda, gamma = float(job.get("reg_lambda", reg_lambda)), float(job.get("gamma", gamma))
        min_child_weight = float(job.get("min_child_weight", min_child_weight))
        frac_bits, round_timeout = job.get("frac_bits", frac_bits), float(job.get("round_timeout", round_timeout))
        engine = str(job.get("engine", engine))
    elif not local:
        _fail("give --local with --data files (one per site), or --config JOB.toml; to deploy across hosts use "
              "Flower's SuperLink/SuperNodes (see the README)", 2)
    if len(data) < 2 or not label:
        _fail("federated training needs --data for at least 2 sites and --label", 2)
    if engine not in ("flower", "direct"):
        _fail("--engine must be flower or direct", 2)
    for path in data:
        if not Path(path).is_file():
            _fail(f"data file not found: {path}", 2)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from privboost.federated.aggregator import FederatedError, FederatedParams
    from privboost.federated.flower_app import FederatedJob, run_simulation_job
    from privboost.federated.site import SiteError

    try:
        params = FederatedParams(objective=objective or _infer_objective(data, label), n_estimators=n_estimators,
                                 max_depth=max_depth, learning_rate=learning_rate, reg_lambda=reg_lambda,
                                 gamma=gamma, min_child_weight=min_child_weight, max_bin=max_bin,
                                 base_score=base_score, frac_bits=frac_bits)
        params.check()
        out.parent.mkdir(parents=True, exist_ok=True)
        job = FederatedJob(params, str(out.resolve()), len(data), round_timeout)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                      TimeElapsedColumn(), console=err, transient=False) as bar:
            task = bar.add_task("federated training", total=n_estimators * max_depth,
                                detail="starting Flower" if engine == "flower" else "starting the sites")

            def show(event: dict) -> None:
                bar.update(task, completed=(event["tree"] - 1) * max_depth + event["level"] + 1,
                           detail=f"tree {event['tree']}/{event['trees']} level {event['level']} · sites alive "
                                  f"{event['alive']}/{event['sites']} · {event['vector_words'] * 8 / 1e6:,.2f} MB "
                                  f"per site this round · {event['bytes_from_sites'] / 1e6:,.0f} MB in all")

            paths = [str(p.resolve()) for p in data]
            if engine == "direct":
                from privboost.federated.direct import run_direct_job

                stats = run_direct_job(paths, label, params, job.out, show, round_timeout)
            else:
                stats = run_simulation_job(paths, label, job, show)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except (FederatedError, SiteError, ValueError, OSError) as exc:
        _fail(str(exc))
    err.print(f"model written to {out} ({n_estimators} trees, {stats['alive']}/{stats['sites']} sites to the end, "
              f"{stats['mb_per_site_per_tree']:.2f} MB per site per tree, {stats['rounds']} secure rounds)")
