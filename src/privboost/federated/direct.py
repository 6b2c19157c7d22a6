"""Direct transport for federated training: every site a separate process, one TLS 1.3 connection to the aggregator.

The same `Site` and `FederatedAggregator` as on Flower, carried over `privboost.mpc.transport` (framed messages,
mutual TLS authentication by certificate common name: ``aggregator``, ``site0``, ``site1``, ...; timeouts; aborts
that carry their reason). A message is one JSON header (the non-array values; bytes base64-encoded) followed by one
array frame per array. Requests go to every site before any reply is read, so the sites compute in parallel, and
replies are read by a few threads at once, in whatever order the sites finish: decrypting one site's megabytes
(TLS releases the GIL) overlaps the others' work instead of waiting for site 0. The site
processes are forked by one launcher that has loaded the site code and its compiled kernels: starting a hundred
sites costs one import, not a hundred.

Why it exists beside Flower: Flower's runtime delivers messages by polling, about 0.35 s per exchange in its
simulation here, and federated boosting needs two exchanges per tree level (secure aggregation's masked input and
unmasking), so at depth 6 and 100 trees the messaging alone takes ~7 minutes. Over direct connections an
exchange costs what its bytes cost. Leakage is that of `privboost.federated.aggregator`: nothing else crosses.

    privboost train federated --local --engine direct --data a.csv --data b.csv --label y --out model.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from privboost.data import warm_up_readers
from privboost.federated.aggregator import FederatedAggregator, FederatedError, FederatedParams, Progress
from privboost.federated.messages import flatten, payload_bytes, unflatten
from privboost.federated.partition import warm_up
from privboost.federated.site import Site, load_site_data
from privboost.mpc.transport import (
    Channel,
    PeerAborted,
    PeerDisconnected,
    TlsListener,
    TransportError,
    TransportTimeout,
    connect_tls,
)
from privboost.net.certs import CertPaths, make_certificates

AGGREGATOR = "aggregator"
#: threads reading replies at once (each blocks in a TLS read with the GIL released)
RECEIVERS = 8


def _encode_value(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _decode_value(value: object) -> object:
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise TransportError("malformed message header value")
        return base64.b64decode(value["b64"], validate=True)
    return value


def send_message(channel: Channel, message: dict) -> None:
    """Send one protocol message: a JSON header, then its arrays in header order."""
    arrays, values = flatten(message)
    names = sorted(arrays)
    header = {"values": {k: _encode_value(v) for k, v in values.items()}, "arrays": names}
    channel.send_bytes(json.dumps(header).encode("utf-8"))
    for name in names:
        channel.send_array(arrays[name])


def recv_message(channel: Channel) -> dict:
    """Receive one protocol message sent by `send_message`; malformed input raises TransportError."""
    try:
        header = json.loads(channel.recv_bytes().decode("utf-8"))
        values = {str(k): _decode_value(v) for k, v in header["values"].items()}
        names = [str(n) for n in header["arrays"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TransportError(f"malformed message header: {exc}") from None
    arrays = {name: channel.recv_array() for name in names}
    return unflatten(arrays, values)


class DirectSites:
    """The aggregator's `Channel` over one TLS connection per site; a site that times out or vanishes is dropped."""

    def __init__(self, channels: dict[int, Channel]) -> None:
        self.channels = dict(channels)
        self.gone: set[int] = set()
        self.bytes_received = 0
        self._receivers = ThreadPoolExecutor(max_workers=max(1, min(RECEIVERS, len(channels))),
                                             thread_name_prefix="privboost-recv")

    def site_ids(self) -> list[int]:
        """All sites' ids (dropped ones included: the aggregator tracks who is alive)."""
        return sorted(self.channels)

    def _drop(self, site: int) -> None:
        self.gone.add(site)
        self.channels[site].close()

    def _receive(self, site: int) -> dict | TransportError:
        try:
            return recv_message(self.channels[site])
        except TransportError as exc:  # judged by the caller, in site order
            return exc

    def exchange(self, requests: dict[int, dict]) -> dict[int, dict]:
        """Send every request, then collect the replies of the sites that answer (read concurrently)."""
        sent = []
        for site, request in requests.items():
            if site in self.gone:
                continue
            try:
                send_message(self.channels[site], request)
                sent.append(site)
            except (PeerDisconnected, TransportTimeout):
                self._drop(site)
        outcomes = dict(zip(sent, self._receivers.map(self._receive, sent), strict=True))
        replies = {}
        for site in sent:
            outcome = outcomes[site]
            if isinstance(outcome, PeerAborted):
                raise FederatedError(f"site {site} failed: {outcome}") from outcome
            if isinstance(outcome, (PeerDisconnected, TransportTimeout)):
                self._drop(site)
            elif isinstance(outcome, TransportError):
                raise outcome
            else:
                replies[site] = outcome
                self.bytes_received += payload_bytes(outcome)
        return replies

    def close(self) -> None:
        """After the site processes have ended: wait for the reader threads (their reads fail on the closed
        connections), then close every channel. Idempotent."""
        self._receivers.shutdown(wait=True)
        for channel in self.channels.values():
            channel.close()

    def stop(self) -> None:
        """Tell every remaining site that training is over."""
        for site, channel in self.channels.items():
            if site not in self.gone:
                try:
                    send_message(channel, {"stage": "stop"})
                except TransportError:
                    pass
                channel.close()


def serve_site(path: str, label: str, host: str, port: int, certs: CertPaths, timeout_s: float) -> None:
    """A site's process: connect to the aggregator, answer requests until told to stop."""
    site = Site(load_site_data(path, label))
    channel = connect_tls(host, port, certs, AGGREGATOR, send_first=False, timeout_s=timeout_s)
    try:
        while True:
            request = recv_message(channel)
            if request.get("stage") == "stop":
                return
            try:
                reply = site.handle(request)
            except Exception as exc:
                channel.abort(f"{type(exc).__name__}: {exc}")
                raise
            send_message(channel, reply)
    finally:
        channel.close()


def run_direct_job(data_paths: list[str], label: str, params: FederatedParams, out: str,
                   progress: Progress | None = None, timeout_s: float = 600.0) -> dict:
    """Every site as its own process on loopback over TLS, the aggregator here; writes the model to ``out``.

    One launcher process imports the site code and loads its compiled kernels once, then forks one process per
    site (`launch_sites`): each site is still a separate process with its own TLS connection, but ten or a hundred
    of them do not each pay ~2 s of imports and kernel loading on a machine with two cores.
    """
    names = [f"site{i}" for i in range(len(data_paths))]
    # sites on one machine share its cores: give each a fair share of threads instead of oversubscribing them;
    # numba's workqueue threading layer is the one that survives fork (GNU OpenMP refuses it)
    threads = max(1, (os.cpu_count() or 1) // len(names))
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "NUMBA_THREADING_LAYER": "workqueue", "PYTHONUNBUFFERED": "1"}
    launcher: subprocess.Popen | None = None
    with tempfile.TemporaryDirectory(prefix="privboost-federated-") as tmp:
        logs = Path(tmp)
        certs = make_certificates(tmp, [AGGREGATOR, *names])
        listener = TlsListener("127.0.0.1", 0, certs[AGGREGATOR])
        sites: DirectSites | None = None
        try:
            command = [sys.executable, "-m", "privboost.federated.direct", "--label", label,
                       "--port", str(listener.port), "--ca", str(certs[AGGREGATOR].ca), "--logs", tmp,
                       "--timeout", str(timeout_s)]
            for i, (name, path) in enumerate(zip(names, data_paths, strict=True)):
                command += ["--site", str(i), path, str(certs[name].cert), str(certs[name].key)]
            with open(logs / "launcher.log", "wb") as log:  # a file, so a chatty process never blocks on a pipe
                launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env,  # noqa: S603
                                            start_new_session=True)  # its own process group: one kill stops all
            channels = _accept_sites(listener, names, launcher, logs, timeout_s)
            sites = DirectSites(channels)
            start = time.perf_counter()

            def report(event: dict) -> None:
                if progress is not None:
                    progress({**event, "bytes_from_sites": sites.bytes_received})

            result = FederatedAggregator(sites, params, report).train()
            result.model.save(out)
            sites.stop()
            launcher.wait(timeout=30)
            return {"seconds": time.perf_counter() - start, "rounds": result.rounds, "alive": len(result.alive),
                    "sites": len(names), "bytes_from_sites": sites.bytes_received,
                    "mb_per_site_per_tree": sites.bytes_received / 1e6 / len(names) / params.n_estimators}
        except TransportError as exc:
            raise FederatedError(f"site connection failed: {exc}{_first_error(logs)}") from exc
        except FederatedError as exc:
            raise FederatedError(f"{exc}{_first_error(logs)}") from exc
        finally:
            listener.close()
            if launcher is not None:
                try:
                    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and every site it forked
                except ProcessLookupError:
                    pass
                launcher.wait()
            if sites is not None:  # after the kill: a reader still blocked on a site sees its connection end
                sites.close()


def _accept_sites(listener: TlsListener, names: list[str], launcher: subprocess.Popen, logs: Path,
                  timeout_s: float) -> dict[int, Channel]:
    """Every site's connection; fails at once, with the site's own message, if a site process exits first."""
    channels: dict[int, Channel] = {}
    deadline = time.monotonic() + timeout_s
    while len(channels) < len(names):
        try:
            channel = listener.accept(set(names) - {f"site{i}" for i in channels}, send_first=True,
                                      timeout_s=min(1.0, timeout_s))
        except TransportTimeout:
            exited = [i for i in range(len(names)) if i not in channels and (logs / f"site{i}.exit").exists()]
            if exited or launcher.poll() is not None:
                raise FederatedError("a site stopped before connecting") from None  # the caller adds its words
            if time.monotonic() > deadline:
                raise
            continue
        channel.set_timeout(timeout_s)
        channels[int(channel.peer_name.removeprefix("site"))] = channel
    return channels


def _first_error(logs: Path) -> str:
    for log in [*sorted(logs.glob("site*.log"), key=lambda p: int(p.stem[4:])), logs / "launcher.log"]:
        if log.is_file():
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            if lines:
                return f" ({log.stem} said: {lines[-1]})"
    return ""


def launch_sites(sites: list[tuple[int, str, CertPaths]], label: str, host: str, port: int, timeout_s: float,
                 logs: Path) -> int:
    """Fork one process per (index, data path, certificates) site and wait for all; returns 0 if all succeeded.

    Each child names itself ``privboost-s<index>`` (``/proc/<pid>/comm``), writes errors to
    ``logs/site<index>.log`` and, when it ends, its exit code to ``logs/site<index>.exit``.
    """
    if not hasattr(os, "fork"):
        print("the direct engine forks its site processes and needs Linux or macOS; use --engine flower",
              file=sys.stderr)
        return 2
    warm_up()  # compiled kernels loaded once here, inherited by every fork
    warm_up_readers()
    children: dict[int, int] = {}
    for index, path, certs in sites:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
            code = _run_forked_site(index, path, label, host, port, certs, timeout_s, logs)
            os._exit(code)
        children[pid] = index
    failed = False
    while children:
        pid, status = os.wait()
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        (logs / f"site{index}.exit").write_text(str(code))
        failed |= code != 0
    return 1 if failed else 0


def _run_forked_site(index: int, path: str, label: str, host: str, port: int, certs: CertPaths, timeout_s: float,
                     logs: Path) -> int:  # pragma: no cover - runs in a forked child
    try:
        Path("/proc/self/comm").write_text(f"privboost-s{index}"[:15])
    except OSError:
        pass
    with open(logs / f"site{index}.log", "ab", buffering=0) as log:
        os.dup2(log.fileno(), 2)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    try:
        serve_site(path, label, host, port, certs, timeout_s)
    except Exception as exc:  # the aggregator has the reason through the abort frame; say it here too
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the site launcher process (started by `run_direct_job`)."""
    ap = argparse.ArgumentParser(prog="python -m privboost.federated.direct", description="federated sites")
    ap.add_argument("--site", nargs=4, action="append", required=True, metavar=("INDEX", "DATA", "CERT", "KEY"))
    ap.add_argument("--label", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    sites = [(int(index), data, CertPaths(Path(cert), Path(key), Path(args.ca)))
             for index, data, cert, key in args.site]
    return launch_sites(sites, args.label, args.host, args.port, args.timeout, Path(args.logs))


if __name__ == "__main__":
    sys.exit(main())
