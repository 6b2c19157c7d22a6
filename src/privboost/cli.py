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
app.add_typer(proxy_app, name="proxy")
app.add_typer(client_app, name="client")
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
) -> None:
    """Train XGBoost on NHANES health records, then predict for patients without the server seeing them."""
    from privboost.demo import run_demo

    try:
        run_demo(workdir, rows)
    except (*_known_errors(), RuntimeError) as exc:
        _fail(str(exc))


def main() -> None:
    """Entry point for ``python -m privboost``."""
    app(prog_name="privboost")


if __name__ == "__main__":
    sys.exit(main())
