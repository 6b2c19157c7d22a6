"""Run the two-party engine as three separate processes (party 0, party 1, dealer) over TLS 1.3.

Deployment model:
  * Three hosts (one per role, the secure setting: no host may hold two roles), or one machine for trials
    (`write_local_configs` + `run_local_processes`, or ``privboost mpc local``).
  * Who connects to whom: party 0 and the dealer listen; party 1 connects to party 0; both parties connect to the
    dealer. Every connection is TLS 1.3 with mutual authentication: each side presents a certificate from the
    deployment's CA whose common name is its role, and checks that the peer's names the role it expects.
  * The dealer sees no data: it deals each party a seed and afterwards only answers party 1's requests for
    correlation corrections (kind + shape); no input, share or opened value ever reaches it (see `dealer`).

Start order does not matter: connecting roles retry until ``connect_timeout_s``. Both parties must run the same
program with the same ``[params]`` and ``frac_bits``; they check this before computing.

Config (TOML, one file per role; relative paths are relative to the file)::

    role = "party0"                  # "party0" | "party1" | "dealer"
    program = "selfcheck"            # parties only: a registered name or "package.module:function"
    timeout_s = 60                   # longest silence tolerated on any channel (default 60): keep it above the
                                     # longest local computation between two messages
    connect_timeout_s = 60           # how long to wait for the other roles to come up (default: timeout_s)
    frac_bits = 16                   # fixed-point fractional bits (default 16)
    report = "party0.report.json"    # optional: also write the JSON report here

    [party0]                         # party 0's listener (party 1 connects to it)
    host = "10.0.0.1"
    port = 7100
    # bind = "0.0.0.0"               # optional: listen address on party 0's host (default: host)

    [dealer]                         # the dealer's listener (both parties connect to it)
    host = "10.0.0.3"
    port = 7101

    [tls]
    ca = "certs/ca.pem"
    cert = "certs/party0.pem"
    key = "certs/party0.key"

    [params]                         # program parameters: must be identical on both parties
    n = 1000

    [local]                          # optional, this party only (e.g. its input file): params["local"]

A program is ``program(party: Party, params: dict) -> result`` (JSON-serialisable; numpy arrays are converted).
On any failure a role aborts all its channels with the reason, so every other role learns why, and the CLI exits
non-zero with a one-line message; on Ctrl-C the reason is "interrupted" (exit 130), on SIGTERM "terminated" (143).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
import resource
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privboost.mpc.dealer import DealerClient, TrustedDealer
from privboost.mpc.ring import DEFAULT_FRAC_BITS, decode_fixed, encode_fixed, to_signed
from privboost.mpc.runtime import Party
from privboost.mpc.transport import (
    Channel,
    MpcError,
    TlsListener,
    TransportTimeout,
    connect_tls,
    raise_after_write,
    tls_context,
)
from privboost.net.certs import CertPaths, make_certificates
from privboost.net.ports import free_ports

ROLES = ("party0", "party1", "dealer")
PROTOCOL = "privboost-mpc/1"
DEFAULT_TIMEOUT_S = 60.0
_TOP_KEYS = {"role", "program", "timeout_s", "connect_timeout_s", "frac_bits", "report", "party0", "dealer", "tls",
             "params", "local"}
_ENDPOINT_KEYS = {"host", "port", "bind"}
_TLS_KEYS = {"ca", "cert", "key"}

Program = Callable[[Party, dict], Any]


class ConfigError(MpcError):
    """A config file is missing, malformed or points at unusable files; the message says what to fix."""


class RunError(MpcError):
    """A role failed; the one-line message names the role and the cause (the original is ``__cause__``)."""


class Terminated(BaseException):  # a signal, like KeyboardInterrupt: not caught by `except Exception`
    """Raised in the main thread on SIGTERM (see `handle_signals`)."""


# ---------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class Endpoint:
    """A listener: ``host``/``port`` to connect to, ``bind`` the address the listening role binds."""

    host: str
    port: int
    bind: str


@dataclass(frozen=True)
class RunConfig:
    """One role's validated config (see the module docstring for the file format)."""

    role: str
    party0: Endpoint
    dealer: Endpoint
    certs: CertPaths
    program: str = ""
    params: dict = field(default_factory=dict)
    local: dict = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_TIMEOUT_S
    frac_bits: int = DEFAULT_FRAC_BITS
    report: Path | None = None
    source: Path | None = None

    @property
    def party_id(self) -> int:
        """0 or 1 (only for party roles)."""
        return {"party0": 0, "party1": 1}[self.role]


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _endpoint(raw: dict, name: str, where: str) -> Endpoint:
    table = raw.get(name)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: missing table [{name}] with host and port of the {name}'s listener")
    _check_keys(table, _ENDPOINT_KEYS, f"{where} [{name}]")
    host, port = table.get("host"), table.get("port")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}: [{name}] host must be a host name or IP address string")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}: [{name}] port must be an integer in 1..65535, got {port!r}")
    bind = table.get("bind", host)
    if not isinstance(bind, str) or not bind:
        raise ConfigError(f"{where}: [{name}] bind must be an address string")
    return Endpoint(host, port, bind)


def _positive(raw: dict, key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where}: {key} must be a positive number of seconds, got {value!r}")
    return float(value)


def _certificates(raw: dict, role: str, base: Path, where: str) -> CertPaths:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import NameOID

    table = raw.get("tls")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: missing table [tls] with ca, cert and key "
                          "(PEM files; `privboost certs` makes them)")
    _check_keys(table, _TLS_KEYS, f"{where} [tls]")
    paths = {}
    for key in ("ca", "cert", "key"):
        value = table.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: [tls] {key} must be the path of a PEM file")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{where}: [tls] {key} = {value!r}: cannot read {path}: {exc.strerror or exc}") from None
        paths[key] = path
    certs = CertPaths(paths["cert"], paths["key"], paths["ca"])
    try:
        tls_context(certs, server=True)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{where}: [tls] files are not a usable PEM certificate/key pair and CA: {exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{where}: [tls] cannot parse a certificate: {exc}") from None
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [role]:
        raise ConfigError(f"{where}: [tls] cert {certs.cert} is a certificate for {names[0] if names else 'nobody'!r}, "
                          f"but this config's role is {role!r}; give this role's own certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: [tls] cert {certs.cert} was not issued by the CA in {certs.ca} ({exc!r}); "
                          "use the CA that signed the deployment's certificates") from None
    return certs


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read and validate a role's TOML config; raises `ConfigError` naming the file and what to fix."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text (UTF-8) file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    _check_keys(raw, _TOP_KEYS, where)
    role = raw.get("role")
    if role not in ROLES:
        got = "missing" if role is None else repr(role)
        raise ConfigError(f"{where}: role must be one of {', '.join(map(repr, ROLES))} (got {got})")
    party0 = _endpoint(raw, "party0", where)
    dealer = _endpoint(raw, "dealer", where)
    certs = _certificates(raw, role, path.parent, where)
    timeout_s = _positive(raw, "timeout_s", DEFAULT_TIMEOUT_S, where)
    connect_timeout_s = _positive(raw, "connect_timeout_s", timeout_s, where)
    frac_bits = raw.get("frac_bits", DEFAULT_FRAC_BITS)
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 1 <= frac_bits <= 30:
        raise ConfigError(f"{where}: frac_bits must be an integer in 1..30, got {frac_bits!r}")
    params, local = raw.get("params", {}), raw.get("local", {})
    if not isinstance(params, dict) or not isinstance(local, dict):
        raise ConfigError(f"{where}: [params] and [local] must be tables")
    program = raw.get("program", "")
    if role != "dealer":
        if not isinstance(program, str) or not program:
            raise ConfigError(f"{where}: program must name the computation: one of "
                              f"{', '.join(sorted(PROGRAMS))}, or 'package.module:function'")
        resolve_program(program, where)
    report = raw.get("report")
    if report is not None and not isinstance(report, str):
        raise ConfigError(f"{where}: report must be a file path string")
    report_path = None if report is None else (Path(report) if Path(report).is_absolute() else path.parent / report)
    return RunConfig(role, party0, dealer, certs, program, params, local, timeout_s, connect_timeout_s, frac_bits,
                     report_path, path)


# ---------------------------------------------------------------------------------------------------------------
# Programs

PROGRAMS: dict[str, Program] = {}


def register_program(name: str) -> Callable[[Program], Program]:
    """Decorator: make ``program(party, params)`` runnable by ``name`` from a config."""

    def add(fn: Program) -> Program:
        PROGRAMS[name] = fn
        return fn

    return add


def resolve_program(name: str, where: str = "config") -> Program:
    """The program registered as ``name``, or the callable at the dotted path ``"package.module:function"``."""
    if name in PROGRAMS:
        return PROGRAMS[name]
    if ":" not in name:
        raise ConfigError(f"{where}: unknown program {name!r}; registered: {', '.join(sorted(PROGRAMS))} "
                          "(or give 'package.module:function')")
    module_name, _, attr = name.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as under `python -m`, so `privboost mpc ...` finds modules where it runs
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail any way; report it as a config problem
        raise ConfigError(f"{where}: program {name!r}: cannot import {module_name!r}: {exc!r} "
                          "(is its directory on PYTHONPATH or the working directory?)") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise ConfigError(f"{where}: program {name!r}: {module_name} has no callable {attr!r}")
    return fn


def _private_rng() -> np.random.Generator:
    """A generator seeded from `secrets`: each party's inputs stay unknown to everyone else."""
    return np.random.default_rng(secrets.randbits(128))


@register_program("selfcheck")
def selfcheck(party: Party, params: dict) -> dict:
    """Share random inputs of both parties, run mul, matmul, truncate, ltz/lt and eq, open all and check vs numpy.

    params: ``n`` (elements, default 1000), ``rows``/``inner``/``cols`` (matmul shape, default 64, 32, 8).
    Raises `MpcError` if any opened result disagrees with numpy on the opened inputs; else returns a summary.
    """
    from privboost.mpc.protocols.arithmetic import matmul, mul, truncate
    from privboost.mpc.protocols.compare import eq, lt, ltz

    n = int(params.get("n", 1000))
    rows, inner, cols = (int(params.get(k, d)) for k, d in (("rows", 64), ("inner", 32), ("cols", 8)))
    f = party.frac_bits
    rng = _private_rng()
    mine = party.party_id
    x_own = encode_fixed(rng.uniform(-100, 100, n), f) if mine == 0 else None
    y_own = encode_fixed(rng.uniform(-100, 100, n), f) if mine == 1 else None
    a_own = encode_fixed(rng.uniform(-4, 4, (rows, inner)), f) if mine == 0 else None
    b_own = encode_fixed(rng.uniform(-4, 4, (inner, cols)), f) if mine == 1 else None
    u_own = rng.integers(-3, 3, n) if mine == 0 else None  # small ranges: eq must see many equal pairs
    v_own = rng.integers(-3, 3, n) if mine == 1 else None
    x, a, u = party.input(0, x_own), party.input(0, a_own), party.input(0, u_own)
    y, b, v = party.input(1, y_own), party.input(1, b_own), party.input(1, v_own)

    t0 = time.perf_counter()
    prod = truncate(party, mul(party, x, y))
    mm = truncate(party, matmul(party, a, b))
    is_neg = ltz(party, x)
    less = lt(party, x, y)
    same = eq(party, u, v)
    compute_s = time.perf_counter() - t0
    xo, yo, ao, bo, uo, vo, prod_o, mm_o, neg_o, less_o, same_o = party.open_many(
        x, y, a, b, u, v, prod, mm, is_neg, less, same)

    ulp = 2.0 ** -f
    errors = {
        "mul": float(np.max(np.abs(decode_fixed(prod_o, f) - decode_fixed(xo, f) * decode_fixed(yo, f)), initial=0)),
        "matmul": float(np.max(np.abs(decode_fixed(mm_o, f) - decode_fixed(ao, f) @ decode_fixed(bo, f)), initial=0)),
    }
    mismatches = {
        "ltz": int(np.sum(neg_o != (to_signed(xo) < 0))),
        "lt": int(np.sum(less_o != (to_signed(xo) < to_signed(yo)))),
        "eq": int(np.sum(same_o != (uo == vo))),
    }
    problems = [f"{k} error {e:.3g} > 1 ulp" for k, e in errors.items() if e > ulp * (1 + 1e-9)]
    problems += [f"{k}: {m} wrong" for k, m in mismatches.items() if m]
    if problems:
        raise MpcError(f"selfcheck failed: {'; '.join(problems)}")
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in (
        xo, yo, ao, bo, uo, vo, prod_o, mm_o, neg_o, less_o, same_o))).hexdigest()
    return {"ok": True, "n": n, "matmul": [rows, inner, cols], "max_error_ulp": {k: e / ulp for k, e in errors.items()},
            "mismatches": mismatches, "equal_pairs": int(np.sum(same_o)), "negatives": int(np.sum(neg_o)),
            "compute_s": round(compute_s, 4), "opened_sha256": digest}


@register_program("stall")
def stall(party: Party, params: dict) -> dict:
    """A long computation for fault tests: ``rounds`` (default 10^6) repetitions of `ltz` on ``n`` (1000) elements.

    Optional ``sleep_s`` pauses between repetitions. Returns how many repetitions ran and the final count of
    negatives (opened once at the end).
    """
    from privboost.mpc.protocols.compare import ltz

    n, rounds, pause = int(params.get("n", 1000)), int(params.get("rounds", 10**6)), float(params.get("sleep_s", 0))
    x = party.input(0, _private_rng().integers(-(2**40), 2**40, n) if party.party_id == 0 else None)
    c = np.zeros(n, dtype=np.uint64)
    for _ in range(rounds):
        c = ltz(party, x)
        if pause:
            time.sleep(pause)
    return {"rounds": rounds, "n": n, "negatives": int(np.sum(party.open(c)))}


@register_program("exchange")
def exchange_bench(party: Party, params: dict) -> dict:
    """Time raw rounds: ``repeats`` (default 20) exchanges of a ``rows`` × ``cols`` uint64 array (25000 × 16)."""
    rows, cols, repeats = int(params.get("rows", 25000)), int(params.get("cols", 16)), int(params.get("repeats", 20))
    arr = _private_rng().integers(0, 2**63, (rows, cols), dtype=np.uint64)
    party.peer.exchange(arr)  # warm-up: first use of the buffers and TLS records
    t0 = time.perf_counter()
    for _ in range(repeats):
        party.peer.exchange(arr)
    per = (time.perf_counter() - t0) / repeats
    return {"shape": [rows, cols], "repeats": repeats, "ms_per_exchange": round(per * 1e3, 3),
            "mb_per_s_each_way": round(arr.nbytes / per / 1e6, 1)}


# ---------------------------------------------------------------------------------------------------------------
# Running one role


@dataclass
class PartyReport:
    """What a party did: its program's result and traffic (bytes include frame headers), timing and memory."""

    role: str
    program: str
    result: Any
    bytes_sent_peer: int
    bytes_received_peer: int
    bytes_sent_dealer: int
    bytes_received_dealer: int
    rounds: int
    connect_s: float
    wall_s: float
    peak_rss_mb: float


@dataclass
class DealerReport:
    """What the dealer did: requests served, bytes to/from each party, timing and memory."""

    role: str
    requests_served: int
    bytes_sent_party0: int
    bytes_sent_party1: int
    bytes_received_party1: int
    connect_s: float
    wall_s: float
    peak_rss_mb: float


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1 << 20) if sys.platform == "darwin" else rss / 1024, 1)  # bytes on macOS, KiB on Linux


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, Terminated):
        return "terminated"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, MpcError) else f"{type(exc).__name__}: {text}"


@contextmanager
def _aborting(role: str, channels: list[Channel]) -> Iterator[None]:
    """On any failure abort every open channel with the reason (so the other roles learn it), raise `RunError`."""
    try:
        yield
    except BaseException as exc:
        reason = _one_line(exc)
        for channel in channels:
            channel.abort(f"{role} failed: {reason}")
        if isinstance(exc, KeyboardInterrupt | Terminated | ConfigError):
            raise
        raise RunError(f"{role}: {reason}") from exc


def _agree(peer: Channel, config: RunConfig) -> None:
    """Both parties exchange what they are about to run; refuse to compute if the programs would not match."""
    digest = hashlib.sha256(json.dumps(config.params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    mine = {"protocol": PROTOCOL, "program": config.program, "frac_bits": config.frac_bits, "params": digest}
    if peer.send_first:
        peer.send_bytes(json.dumps(mine).encode())
        theirs = json.loads(peer.recv_bytes())
    else:
        theirs = json.loads(peer.recv_bytes())
        peer.send_bytes(json.dumps(mine).encode())
    if theirs != mine:
        diff = ", ".join(f"{k}: mine {mine.get(k)!r}, {peer.peer_name}'s {theirs.get(k)!r}"
                         for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"{config.role} and {peer.peer_name} would run different computations ({diff}); "
                          "give both parties the same program, [params] and frac_bits")


def _set_timeout(channel: Channel, timeout_s: float) -> None:
    # connect_tls/accept give the channel the connection timeout; computing uses the (usually shorter) message one
    channel.timeout_s = timeout_s
    sock = getattr(channel, "_sock", None)  # socket channels also apply it to their socket's blocking calls
    if sock is not None:
        sock.settimeout(timeout_s)


def _listen(config: RunConfig, endpoint: Endpoint) -> TlsListener:
    try:
        return TlsListener(endpoint.bind, endpoint.port, config.certs)
    except OSError as exc:
        raise RunError(f"{config.role}: cannot listen on {endpoint.bind}:{endpoint.port}: "
                       f"{exc.strerror or exc}") from exc


def run_party(config: RunConfig, progress: Callable[[str], None] | None = None) -> PartyReport:
    """Connect, check that both parties run the same computation, run the program; ``progress`` gets status lines.

    Order (no role waits on another in a cycle): party 0 opens its listener; both parties connect to the dealer and
    receive their seeds (the dealer deals once both are there, so a dealer-side failure reaches party 0 as an abort);
    then party 1 connects to party 0. Raises `RunError` (one-line message naming this role and the cause) after
    aborting every channel; KeyboardInterrupt/`Terminated` abort with "interrupted"/"terminated" and propagate.
    """
    if config.role not in ("party0", "party1"):
        raise ConfigError(f"{config.source}: role is {config.role!r}; run it with `privboost mpc dealer`")
    say = progress or (lambda message: None)
    program = resolve_program(config.program, str(config.source))
    pid, role = config.party_id, config.role
    channels: list[Channel] = []
    start = time.perf_counter()
    listener = _listen(config, config.party0) if pid == 0 else None
    try:
        with _aborting(role, channels):
            if listener is not None:
                say(f"{role}: listening on {config.party0.bind}:{listener.port}")
            dealer = connect_tls(config.dealer.host, config.dealer.port, config.certs, "dealer", send_first=True,
                                 timeout_s=config.connect_timeout_s)
            channels.append(dealer)
            say(f"{role}: connected to dealer at {config.dealer.host}:{config.dealer.port}")
            try:  # the dealer deals once both parties are connected to it: this waits for the other party
                client = DealerClient.connect(pid, dealer)
            except TransportTimeout:
                other = "party1" if pid == 0 else "party0"
                raise TransportTimeout(f"the dealer dealt no seed within {config.connect_timeout_s:g} s: is {other} "
                                       f"running and able to reach the dealer at {config.dealer.host}:"
                                       f"{config.dealer.port}?") from None
            if pid == 0:
                dealer.close()  # the dealer deals party 0 only its seed
            else:
                _set_timeout(dealer, config.timeout_s)
            if listener is not None:
                peer = listener.accept({"party1"}, send_first=True, timeout_s=config.connect_timeout_s)
                listener.close()
                listener = None
            else:
                peer = connect_tls(config.party0.host, config.party0.port, config.certs, "party0", send_first=False,
                                   timeout_s=config.connect_timeout_s)
            channels.append(peer)
            _set_timeout(peer, config.timeout_s)
            _agree(peer, config)
            connected = time.perf_counter()
            say(f"{role}: connected to {peer.peer_name}; running {config.program}")
            params = {**config.params, "local": config.local} if config.local else dict(config.params)
            result = program(Party(pid, peer, client, config.frac_bits), params)
            client.finish()
    finally:
        if listener is not None:
            listener.close()
    for channel in channels:
        channel.close()
    say(f"{role}: done")
    return PartyReport(role, config.program, result, peer.stats.bytes_sent, peer.stats.bytes_received,
                       dealer.stats.bytes_sent, dealer.stats.bytes_received, peer.stats.rounds,
                       round(connected - start, 4), round(time.perf_counter() - start, 4), _peak_rss_mb())


def run_dealer(config: RunConfig, progress: Callable[[str], None] | None = None) -> DealerReport:
    """Listen, accept party 0 and party 1 (either order), deal seeds and serve party 1 until it is done.

    Any refused peer (certificate from another CA, or naming a role that is not expected) stops the run: the dealer
    aborts the channels it has, so the parties learn why. Raises `RunError`; ``progress`` gets status lines.
    """
    if config.role != "dealer":
        raise ConfigError(f"{config.source}: role is {config.role!r}; run it with `privboost mpc party`")
    say = progress or (lambda message: None)
    start = time.perf_counter()
    channels: list[Channel] = []
    listener = _listen(config, config.dealer)
    try:
        with _aborting("dealer", channels):
            say(f"dealer: listening on {config.dealer.bind}:{listener.port}")
            deadline = time.monotonic() + config.connect_timeout_s
            by_role: dict[str, Channel] = {}
            while len(by_role) < 2:
                missing = {"party0", "party1"} - set(by_role)
                channel = listener.accept(missing, send_first=False,
                                          timeout_s=max(0.1, deadline - time.monotonic()))
                channels.append(channel)
                by_role[channel.peer_name] = channel
                say(f"dealer: {channel.peer_name} connected")
            listener.close()
            for channel in channels:
                _set_timeout(channel, config.timeout_s)
            connected = time.perf_counter()
            dealer = TrustedDealer()
            dealer.serve(by_role["party0"], by_role["party1"])
    finally:
        listener.close()
    say("dealer: done")
    p0, p1 = by_role["party0"], by_role["party1"]
    return DealerReport("dealer", dealer.requests_served, p0.stats.bytes_sent, p1.stats.bytes_sent,
                        p1.stats.bytes_received, round(connected - start, 4), round(time.perf_counter() - start, 4),
                        _peak_rss_mb())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return repr(obj)


def report_json(report: PartyReport | DealerReport) -> str:
    """The report as one JSON line (numpy values converted)."""
    return json.dumps(dataclasses.asdict(report), default=_jsonable)


def write_report(config: RunConfig, report: PartyReport | DealerReport) -> str:
    """Serialise ``report`` to one JSON line; also write it to ``config.report`` if set. Returns the line."""
    line = report_json(report)
    if config.report is not None:
        tmp = config.report.with_name(f".{config.report.name}.tmp")
        tmp.write_text(line + "\n", encoding="utf-8")
        os.replace(tmp, config.report)  # readers never see half a report
    return line


@contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM raises `Terminated` in the main thread.

    So a stopped role aborts its channels with a reason instead of vanishing. The exception waits for the end of a
    socket write in progress (`transport.raise_after_write`), so the abort frame can still be framed. SIGINT is
    re-armed because a child started from a non-interactive shell inherits it ignored.
    """

    def stop(signum: int, frame: object) -> None:
        raise_after_write(KeyboardInterrupt() if signum == signal.SIGINT else Terminated())

    previous = signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


# ---------------------------------------------------------------------------------------------------------------
# One machine: configs, certificates and three processes


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (bool, number, string or path, list, inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} into a TOML config")


def write_local_configs(out_dir: str | os.PathLike, program: str, params: dict | None = None,
                        host: str = "127.0.0.1", timeout_s: float = DEFAULT_TIMEOUT_S,
                        frac_bits: int = DEFAULT_FRAC_BITS) -> dict[str, Path]:
    """Make a CA and certificates for party0, party1 and dealer in ``out_dir/certs`` and one TOML per role.

    Listeners get free ports on ``host``. Returns role -> config path; each config names a report file
    ``<role>.report.json`` next to it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_certificates(out / "certs", list(ROLES), hosts=[] if host in ("127.0.0.1", "localhost", "::1") else [host])
    p0_port, dealer_port = free_ports(2, host)
    paths = {}
    for role in ROLES:
        lines = [f"role = {toml_value(role)}"]
        if role != "dealer":
            lines.append(f"program = {toml_value(program)}")
        lines += [f"timeout_s = {toml_value(float(timeout_s))}", f"frac_bits = {frac_bits}",
                  f"report = {toml_value(f'{role}.report.json')}", "",
                  "[party0]", f"host = {toml_value(host)}", f"port = {p0_port}", "",
                  "[dealer]", f"host = {toml_value(host)}", f"port = {dealer_port}", "",
                  "[tls]", 'ca = "certs/ca.pem"', f'cert = "certs/{role}.pem"', f'key = "certs/{role}.key"', ""]
        if role != "dealer" and params:
            lines.append("[params]")
            lines += [f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in params.items()]
            lines.append("")
        path = out / f"{role}.toml"
        path.write_text("\n".join(lines), encoding="utf-8")
        paths[role] = path
    return paths


def role_command(role: str, config: str | os.PathLike) -> list[str]:
    """The command line that runs ``role`` with ``config`` in a new process of this Python."""
    return [sys.executable, "-m", "privboost", "mpc", "dealer" if role == "dealer" else "party", "--config",
            str(config)]


class LocalRunError(MpcError):
    """A role of a local multi-process run exited non-zero; the message names it and quotes its stderr tail."""


def log_tail(path: Path, lines: int = 5) -> str:
    """The role's error line (the CLI prints exactly one), else the last ``lines`` lines (e.g. a crash)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    all_lines = [line.strip() for line in text.strip().splitlines()]
    errors = [line for line in all_lines if line.startswith("error:")]
    return errors[-1] if errors else " | ".join(all_lines[-lines:])


def run_local_processes(program: str, params: dict | None = None, workdir: str | os.PathLike | None = None,
                        timeout_s: float = DEFAULT_TIMEOUT_S, frac_bits: int = DEFAULT_FRAC_BITS,
                        env: dict[str, str] | None = None) -> dict[str, dict]:
    """Run party0, party1 and the dealer as three OS processes on loopback (TLS); return role -> report dict.

    Writes configs, certificates, ``<role>.stderr.log`` and reports into ``workdir`` (a new temporary directory
    if None). Children inherit the working directory, so a ``program = "package.module:function"`` found there is
    importable (``env`` adds variables, e.g. PYTHONPATH). Raises `ConfigError` for an unknown program name, and
    `LocalRunError` naming every failed role with its stderr tail: root causes first (roles that only report
    another's abort come after), then in order of exit.
    """
    if ":" not in program:
        resolve_program(program, "run_local_processes")  # fail here, not after three processes time out
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="privboost-mpc-"))
    configs = write_local_configs(work, program, params, timeout_s=timeout_s, frac_bits=frac_bits)
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    for role in ("dealer", "party0", "party1"):
        (work / f"{role}.report.json").unlink(missing_ok=True)
        logs[role] = work / f"{role}.stderr.log"
        with logs[role].open("wb") as err, open(os.devnull, "wb") as out:
            procs[role] = subprocess.Popen(role_command(role, configs[role]), stdout=out, stderr=err,  # noqa: S603
                                           env={**os.environ, **(env or {})})
    exited: dict[str, float] = {}
    grace_until: float | None = None
    try:
        while len(exited) < len(procs):
            for role, proc in procs.items():
                if role not in exited and proc.poll() is not None:
                    exited[role] = time.monotonic()
                    if proc.returncode != 0 and grace_until is None:
                        # the others learn of it through their channels; give them their timeout to say so
                        grace_until = time.monotonic() + timeout_s + 10
            if grace_until is not None and time.monotonic() > grace_until:
                for role, proc in procs.items():
                    if role not in exited:
                        proc.kill()
                        proc.wait()
                        exited[role] = time.monotonic()
            time.sleep(0.02)
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # only on an exception here (e.g. Ctrl-C): let them abort their channels
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # root causes first: a role that reports another's abort only reacted to it
    tails = {r: log_tail(logs[r]) for r in procs}
    failed = sorted((r for r in procs if procs[r].returncode != 0),
                    key=lambda r: ("aborted the computation" in tails[r], exited[r]))
    if failed:
        raise LocalRunError("; ".join(f"{r} exited with code {procs[r].returncode}: {tails[r] or '(no output)'}"
                                      for r in failed))
    return {role: json.loads((work / f"{role}.report.json").read_text(encoding="utf-8")) for role in ROLES}
