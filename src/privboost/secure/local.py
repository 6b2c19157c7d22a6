"""Run a whole secure training job on one machine: every role a separate process, TLS on loopback.

`run_local_job` makes a CA and one certificate per role, writes one job file per role, starts
``python -m privboost train secure --config <role>.toml`` for the dealer, both parties, the analyst and one owner
per data file, relays party 0's progress, and returns the roles' reports. If any role fails the others are stopped
and the error names the role and its message; on Ctrl-C every role is interrupted and exits.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from privboost.data import table_columns
from privboost.mpc.runner import log_tail, toml_value
from privboost.net.certs import make_certificates
from privboost.net.ports import free_ports
from privboost.secure.job import JobError
from privboost.secure.trainer import SecureParams


def write_job_files(workdir: Path, data: list[Path], label: str, split: str, id_column: str | None,
                    out: Path, params: SecureParams, max_bin: int, frac_bits: int, timeout_s: float,
                    host: str = "127.0.0.1", histograms: str = "onehot",
                    categorical: list[str] | None = None) -> dict[str, Path]:
    """Certificates and one TOML job file per role in ``workdir``; returns role -> job file.

    Mixed split: owners whose files have the same feature columns form one column group, and the owners (only
    they) get a fresh key for the id pseudonyms.
    """
    owners = [f"owner{i}" for i in range(len(data))]
    groups = column_groups(data, label, id_column) if split == "mixed" else {}
    id_key = secrets.token_hex(32)
    roles = ["dealer", "party0", "party1", "analyst", *owners]
    certs = make_certificates(workdir / "certs", roles)
    ports = free_ports(4, host)
    addresses = dict(zip(("dealer", "party0", "party1", "analyst"), (f"{host}:{p}" for p in ports), strict=True))
    param_lines = [f"max_bin = {max_bin}"] + [f"{k} = {toml_value(v)}" for k, v in params.__dict__.items()
                                              if v is not None]
    files = {}
    for role in roles:
        job = {"role": role, "split": split, "label": label, "owners": owners, "frac_bits": frac_bits,
               "timeout_s": timeout_s, "histograms": histograms, "categorical": list(categorical or [])}
        if id_column:
            job["id_column"] = id_column
        if groups:
            job["groups"] = groups
        if role.startswith("owner"):
            job["data"] = str(Path(data[int(role[5:])]).resolve())
            if groups:
                job["id_key"] = id_key
        if role == "analyst":
            job["out"] = str(Path(out).resolve())
        text = ["[job]"] + [f"{k} = {toml_value(v)}" for k, v in job.items()]
        text += ["", "[addresses]"] + [f"{k} = {toml_value(v)}" for k, v in addresses.items()]
        text += ["", "[tls]", f"ca = {toml_value(certs[role].ca)}", f"cert = {toml_value(certs[role].cert)}",
                 f"key = {toml_value(certs[role].key)}"]
        text += ["", "[params]", *param_lines]
        path = workdir / f"{role}.toml"
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
        files[role] = path
    return files


def column_groups(data: list[Path], label: str, id_column: str | None) -> dict[str, str]:
    """owner -> column group for a mixed split: files with the same feature columns (besides the id and the
    label) hold rows of the same columns."""
    if not id_column:
        raise JobError("a mixed split needs --id-column to join the column groups")
    seen: dict[frozenset, str] = {}
    groups = {}
    for i, path in enumerate(data):
        columns = frozenset(table_columns(path)) - {label, id_column}
        groups[f"owner{i}"] = seen.setdefault(columns, f"group{len(seen)}")
    return groups


def _start(role: str, job_file: Path, log_dir: Path) -> tuple[subprocess.Popen, Path]:
    err = log_dir / f"{role}.err"
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "privboost", "train", "secure", "--config", str(job_file)],
        stdout=subprocess.PIPE, stderr=err.open("wb"), text=True, start_new_session=True)
    return proc, err


def run_local_job(data: list[Path], label: str, out: Path, params: SecureParams, max_bin: int,
                  split: str = "vertical", id_column: str | None = None, frac_bits: int = 16,
                  timeout_s: float = 120.0, progress: Callable[[dict], None] | None = None,
                  workdir: Path | None = None, histograms: str = "onehot",
                  categorical: list[str] | None = None) -> dict[str, dict]:
    """Run every role locally as its own process; returns each role's report. Raises JobError on failure."""
    if len(data) < 1:
        raise JobError("give at least one data file")
    for path in data:
        if not Path(path).is_file():
            raise JobError(f"data file not found: {path}")
    present = {column for path in data for column in table_columns(path)}
    unknown = sorted(set(categorical or []) - present)
    if unknown:  # say so now, not after every role has started
        raise JobError(f"categorical column(s) {unknown} are in no data file")
    with tempfile.TemporaryDirectory(prefix="privboost-secure-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        files = write_job_files(work, data, label, split, id_column, out, params, max_bin, frac_bits, timeout_s,
                                histograms=histograms, categorical=categorical)
        procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        reports: dict[str, dict] = {}
        outputs: dict[str, list[str]] = {}
        try:
            for role in ("dealer", "analyst", "party0", "party1", *[r for r in files if r.startswith("owner")]):
                procs[role] = _start(role, files[role], work)
            readers = [threading.Thread(target=_read_output, args=(role, proc, outputs, progress), daemon=True)
                       for role, (proc, _err) in procs.items()]
            for reader in readers:
                reader.start()
            _wait(procs)
            for reader in readers:
                reader.join(timeout=5)
        except BaseException:
            _stop(procs, signal.SIGINT)
            raise
        failed = {role: (proc.returncode, err) for role, (proc, err) in procs.items() if proc.returncode != 0}
        if failed:
            first = min(failed, key=lambda r: _first_error_time(failed[r][1]))
            raise JobError(f"{first} failed: {log_tail(failed[first][1]) or 'exit status ' + str(failed[first][0])}"
                           + "".join(f"\n  {r}: {log_tail(e, 1)}" for r, (_c, e) in failed.items() if r != first))
        for role, lines in outputs.items():
            for line in lines:
                doc = json.loads(line) if line.startswith("{") else {}
                if "report" in doc:
                    reports[role] = doc["report"]
        return reports


def _first_error_time(err: Path) -> float:
    try:
        return err.stat().st_mtime if err.stat().st_size else float("inf")
    except OSError:
        return float("inf")


def _read_output(role: str, proc: subprocess.Popen, outputs: dict, progress) -> None:
    lines = outputs.setdefault(role, [])
    for line in proc.stdout:
        line = line.strip()
        if line.startswith('{"progress"') and progress:
            progress(json.loads(line)["progress"])
        elif line:
            lines.append(line)


def _wait(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    """Wait for every role; as soon as one fails, give the others a moment to report, then stop them."""
    while True:
        codes = {role: proc.poll() for role, (proc, _e) in procs.items()}
        if all(code is not None for code in codes.values()):
            return
        if any(code not in (None, 0) for code in codes.values()):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(p.poll() is None for p, _e in procs.values()):
                time.sleep(0.1)
            _stop(procs, signal.SIGTERM)
            return
        time.sleep(0.1)


def _stop(procs: dict[str, tuple[subprocess.Popen, Path]], sig: int) -> None:
    for proc, _err in procs.values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + 10
    for proc, _err in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
