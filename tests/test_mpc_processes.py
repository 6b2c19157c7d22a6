"""The MPC engine as separate processes over TLS on loopback: the runner, the exact `privboost mpc` contract, faults
(a killed, interrupted or terminated role, foreign or wrong-role certificates, bad configs) and the full-duplex
socket exchange."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from privboost.mpc.runner import (
    ConfigError,
    RunError,
    load_config,
    run_dealer,
    run_local_processes,
    run_party,
    write_local_configs,
)
from privboost.mpc.transport import (
    PeerAborted,
    PeerDisconnected,
    TlsListener,
    TransportError,
    TransportTimeout,
    connect_tls,
)
from privboost.net.certs import make_certificates

PRIVBOOST = str(Path(sys.executable).with_name("privboost"))
TIMEOUT_S = 10


def start(role, config, cwd=None):
    """`privboost mpc party --config FILE` / `privboost mpc dealer --config FILE`, exactly as documented."""
    command = "dealer" if role == "dealer" else "party"
    return subprocess.Popen([PRIVBOOST, "mpc", command, "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)


def wait_for_line(proc, marker, limit_s=30):
    """Read ``proc``'s stderr until a line contains ``marker`` (its progress output); return the lines read."""
    lines, deadline = [], time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} from the process: {''.join(lines)}")


def finish(procs, limit_s):
    """Wait for every process; return role -> (exit code, stderr, stdout)."""
    out = {}
    for role, proc in procs.items():
        try:
            stdout, err = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"{role} hung: {err}") from None
        out[role] = (proc.returncode, err, stdout)
    return out


def error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# --- (a) three processes, selfcheck ----------------------------------------------------------------------------


def test_selfcheck_runs_as_three_processes(tmp_path):
    reports = run_local_processes("selfcheck", {"n": 300, "rows": 20}, tmp_path, timeout_s=30)
    p0, p1, dealer = reports["party0"], reports["party1"], reports["dealer"]
    for report in (p0, p1):
        assert report["result"]["ok"] and report["result"]["mismatches"] == {"ltz": 0, "lt": 0, "eq": 0}
        assert report["rounds"] > 0 and report["wall_s"] > 0 and report["peak_rss_mb"] > 10
    same = ("opened_sha256", "equal_pairs", "negatives", "max_error_ulp")
    assert {k: p0["result"][k] for k in same} == {k: p1["result"][k] for k in same}  # both opened the same values
    assert 0 < p0["result"]["equal_pairs"] < 300
    assert p0["bytes_sent_peer"] == p1["bytes_received_peer"] > 100_000
    assert p1["bytes_sent_peer"] == p0["bytes_received_peer"] > 100_000
    assert p0["rounds"] == p1["rounds"]
    # party 0 only gets its seed from the dealer; party 1 asks for and receives every correction
    assert p0["bytes_sent_dealer"] == 0 and p0["bytes_received_dealer"] == dealer["bytes_sent_party0"] > 32
    assert p1["bytes_received_dealer"] == dealer["bytes_sent_party1"] > 10_000
    assert p1["bytes_sent_dealer"] == dealer["bytes_received_party1"] > 0 and dealer["requests_served"] > 10


def test_a_failing_program_names_the_role_and_the_cause(tmp_path):
    (tmp_path / "failing_prog.py").write_text("def boom(party, params):\n"
                                              "    if party.party_id == 1:\n"
                                              "        raise ValueError('bad input 42')\n"
                                              "    return party.open(party.public([1]))\n")
    done = subprocess.run([PRIVBOOST, "mpc", "local", "--program", "failing_prog:boom", "--workdir",
                           str(tmp_path / "run"), "--timeout-s", str(TIMEOUT_S)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    message = error_line(done.stderr)  # root cause first, then the roles that stopped because of it
    assert done.returncode == 1 and message.startswith("error: party1 exited with code 1: error: party1: ValueError")
    assert "bad input 42" in message and "party0 exited with code 1: error: party0: party1 aborted" in message
    assert "dealer exited with code 1: error: dealer: party1 aborted" in message


# --- (e) the exact CLI contract, with a program given as module:function -------------------------------------


def test_cli_contract_with_a_dotted_program(tmp_path):
    (tmp_path / "my_programs.py").write_text(
        "import numpy as np\n\n"
        "def total(party, params):\n"
        "    x = party.input(0, np.arange(params['n']) if party.party_id == 0 else None)\n"
        "    y = party.input(1, np.full(params['n'], 10) if party.party_id == 1 else None)\n"
        "    return {'total': int(party.open(x + y).sum()), 'local': params.get('local')}\n")
    configs = write_local_configs(tmp_path / "run", "my_programs:total", {"n": 5}, timeout_s=TIMEOUT_S)
    with configs["party1"].open("a") as fh:
        fh.write('[local]\nnote = "party 1 only"\n')
    procs = {role: start(role, configs[role], cwd=tmp_path) for role in ("dealer", "party0", "party1")}
    done = finish(procs, 60)
    reports = {}
    for role, (code, err, out) in done.items():
        assert code == 0 and "error" not in err, (role, err)
        reports[role] = json.loads(out)  # the report: one JSON line on stdout ...
        assert reports[role] == json.loads((tmp_path / "run" / f"{role}.report.json").read_text())  # ... and on file
    for role in ("party0", "party1"):
        assert reports[role]["result"]["total"] == sum(range(5)) + 50
        assert reports[role]["program"] == "my_programs:total"
    assert reports["party0"]["result"]["local"] is None
    assert reports["party1"]["result"]["local"] == {"note": "party 1 only"}
    assert reports["dealer"]["requests_served"] == 0 and reports["dealer"]["bytes_sent_party1"] > 0


# --- (b) a party dies mid-protocol; Ctrl-C and SIGTERM abort with a reason ------------------------------------


@pytest.mark.parametrize("victim", ["party0", "party1"])
def test_killed_party_stops_the_others_with_a_clear_error(tmp_path, victim):
    configs = write_local_configs(tmp_path, "stall", {"n": 500}, timeout_s=TIMEOUT_S)
    procs = {role: start(role, configs[role]) for role in ("dealer", "party0", "party1")}
    try:
        wait_for_line(procs[victim], "running stall")
        time.sleep(0.3)  # well inside the computation
        procs[victim].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        done = finish({r: p for r, p in procs.items() if r != victim}, TIMEOUT_S + 10)
        elapsed = time.monotonic() - t0
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert elapsed < TIMEOUT_S  # noticed from the dead connection, not by waiting for a timeout
    survivor = "party1" if victim == "party0" else "party0"
    code, err, _ = done[survivor]
    line = error_line(err)
    assert code == 1 and line.startswith(f"error: {survivor}: ") and victim in line
    assert "closed the connection" in line or "lost" in line
    code, err, _ = done["dealer"]
    line = error_line(err)
    assert code == 1 and line.startswith("error: dealer: ") and victim in line
    if victim == "party0":  # the dealer learns it from party 1's abort, with party 1's reason
        assert "party1 aborted the computation" in line


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupted_party_aborts_with_a_reason(tmp_path, sig, code, word):
    configs = write_local_configs(tmp_path, "stall", {"n": 500}, timeout_s=TIMEOUT_S)
    procs = {role: start(role, configs[role]) for role in ("dealer", "party0", "party1")}
    try:
        wait_for_line(procs["party0"], "running stall")
        time.sleep(0.3)
        procs["party0"].send_signal(sig)
        t0 = time.monotonic()
        done = finish(procs, TIMEOUT_S + 10)
        elapsed = time.monotonic() - t0
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert elapsed < TIMEOUT_S
    assert done["party0"][0] == code and error_line(done["party0"][1]) == f"error: party0: {word}"
    line = error_line(done["party1"][1])
    assert done["party1"][0] == 1 and f"party0 aborted the computation: party0 failed: {word}" in line
    assert done["dealer"][0] == 1 and word in error_line(done["dealer"][1])


# --- (c) certificates from another CA, or for another role, are refused ---------------------------------------


def _point_tls_at(config: Path, ca: Path, cert: Path, key: Path) -> None:
    text = config.read_text()
    head, _, tail = text.partition("[tls]")
    rest = tail.split("\n\n", 1)[1] if "\n\n" in tail else ""
    config.write_text(f'{head}[tls]\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n\n{rest}')


def test_party_with_a_certificate_from_another_ca_is_refused(tmp_path):
    configs = write_local_configs(tmp_path, "selfcheck", {"n": 10}, timeout_s=TIMEOUT_S)
    rogue = make_certificates(tmp_path / "rogue", ["party1"])["party1"]
    _point_tls_at(configs["party1"], rogue.ca, rogue.cert, rogue.key)  # a consistent set, but another CA
    procs = {role: start(role, configs[role]) for role in ("dealer", "party0")}
    wait_for_line(procs["party0"], "connected to dealer")
    procs["party1"] = start("party1", configs["party1"])
    done = finish(procs, TIMEOUT_S + 10)
    assert all(code != 0 for code, _, _ in done.values())
    dealer_line = error_line(done["dealer"][1])
    assert "TLS handshake with an incoming peer failed" in dealer_line
    assert "certificate verify failed" in error_line(done["party1"][1])  # and it does not trust the dealer either
    party0_line = error_line(done["party0"][1])
    assert "dealer aborted the computation" in party0_line and "TLS handshake" in party0_line


def test_connection_with_a_certificate_for_another_role_is_refused(tmp_path):
    configs = write_local_configs(tmp_path, "selfcheck", {"n": 10}, timeout_s=TIMEOUT_S)
    procs = {role: start(role, configs[role]) for role in ("dealer", "party0")}
    wait_for_line(procs["party0"], "connected to dealer")
    certs = tmp_path / "certs"
    from privboost.net.certs import CertPaths

    stolen = CertPaths(certs / "party0.pem", certs / "party0.key", certs / "ca.pem")  # party 0's, reused as party 1
    dealer = load_config(configs["dealer"]).dealer
    try:
        impostor = connect_tls(dealer.host, dealer.port, stolen, "dealer", send_first=True, timeout_s=5)
        with pytest.raises((PeerDisconnected, PeerAborted)):
            impostor.recv_bytes()
    except TransportError:
        pass  # refused during the handshake already
    done = finish(procs, TIMEOUT_S + 10)
    line = error_line(done["dealer"][1])
    assert done["dealer"][0] == 1 and "names 'party0', expected one of ['party1']" in line
    assert done["party0"][0] == 1 and "dealer aborted the computation" in error_line(done["party0"][1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    return make_certificates(base / "ok", ["party0", "party1", "dealer"]), make_certificates(base / "rogue", ["party1"])


def _tls_pair(listen_certs, connect_certs, timeout_s=5.0, expect="party1"):
    listener = TlsListener("127.0.0.1", 0, listen_certs)
    box = {}

    def accept():
        try:
            box["server"] = listener.accept({expect}, send_first=True, timeout_s=timeout_s)
        except Exception as exc:  # reported to the test
            box["error"] = exc

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        client = connect_tls("127.0.0.1", listener.port, connect_certs, "party0", send_first=False,
                             timeout_s=timeout_s)
    except TransportError as exc:
        client = exc
    thread.join()
    listener.close()
    return box.get("server", box.get("error")), client


def test_listener_refuses_wrong_role_and_foreign_ca(pki):
    ok, rogue = pki
    server, _client = _tls_pair(ok["party0"], ok["dealer"])  # the dealer's valid certificate, where party1 belongs
    assert isinstance(server, TransportError) and "names 'dealer', expected one of ['party1']" in str(server)
    server, client = _tls_pair(ok["party0"], rogue["party1"])
    assert isinstance(server, TransportError) and "handshake" in str(server)
    assert isinstance(client, TransportError) and "certificate verify failed" in str(client)


# --- (d) bad configs: a clear ConfigError, and from the CLI a one-line message without traceback ---------------


def test_malformed_config_files_exit_with_a_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('role = "party0"\n[party0\nhost = 1\n')
    done = subprocess.run([PRIVBOOST, "mpc", "dealer", "--config", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "not valid TOML" in error_line(done.stderr), done.stderr
    configs = write_local_configs(tmp_path / "ok", "selfcheck")
    done = subprocess.run([PRIVBOOST, "mpc", "party", "--config", str(configs["dealer"])], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "run it with `privboost mpc dealer" in error_line(done.stderr)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('role = "party1"', 'role = "party2"'), "role must be one of 'party0', 'party1', 'dealer'"),
    (lambda t: t.replace('role = "party1"\n', ""), "role must be one of"),
    (lambda t: t.replace("[dealer]", "[dealr]"), "unknown key(s) 'dealr'"),
    (lambda t: t.replace("timeout_s =", "timeout ="), "unknown key(s) 'timeout'"),
    (lambda t: t.replace('program = "selfcheck"', 'program = "nope"'), "unknown program 'nope'"),
    (lambda t: t.replace('program = "selfcheck"', 'program = "no_such_mod:f"'), "cannot import 'no_such_mod'"),
    (lambda t: t.replace('certs/party1.key', 'certs/missing.key'), "[tls] key = 'certs/missing.key': cannot read"),
    (lambda t: t.replace('certs/party1.', 'certs/dealer.'), "is a certificate for 'dealer', but this config's role"),
    (lambda t: t.replace('certs/party1.key', 'certs/dealer.key'), "not a usable PEM certificate/key pair"),
    (lambda t: t.replace("timeout_s = 60.0", "timeout_s = -1"), "timeout_s must be a positive number"),
    (lambda t: t.replace("frac_bits = 16", "frac_bits = 80"), "frac_bits must be an integer in 1..30"),
    (lambda t: t.split("[party0]")[0], "missing table [party0]"),
])
def test_config_errors_say_what_to_fix(tmp_path, edit, message):
    path = write_local_configs(tmp_path, "selfcheck")["party1"]
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config .*absent.toml"):
        load_config(tmp_path / "absent.toml")


def test_parties_refuse_to_run_different_computations(tmp_path):
    configs = write_local_configs(tmp_path, "stall", {"rounds": 1}, timeout_s=TIMEOUT_S)
    text = configs["party1"].read_text()
    configs["party1"].write_text(text.replace('"rounds" = 1', '"rounds" = 2'))
    loaded = {role: load_config(path) for role, path in configs.items()}
    errors = {}

    def run(role):
        try:
            (run_dealer if role == "dealer" else run_party)(loaded[role])
        except Exception as exc:  # collected for the asserts
            errors[role] = exc

    threads = [threading.Thread(target=run, args=(role,)) for role in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(errors["party0"], ConfigError) and isinstance(errors["party1"], ConfigError)
    assert "would run different computations (params:" in str(errors["party0"])
    assert isinstance(errors["dealer"], RunError) and "different computations" in str(errors["dealer"])


# --- full-duplex exchange over TLS sockets ----------------------------------------------------------------------


@pytest.fixture()
def tls_pair(pki):
    ok, _ = pki
    server, client = _tls_pair(ok["party0"], ok["party1"], timeout_s=1.0)
    yield server, client
    server.close()
    client.close()


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported to the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_duplex_exchange_matches_sequential_framing(tls_pair):
    a, b = tls_pair
    rng = np.random.default_rng(1)
    for shape in [(0,), (1,), (4800, 16), (1_000_000,)]:
        mine, theirs = (rng.integers(0, 2**63, shape, dtype=np.uint64) for _ in range(2))
        thread, box = _in_thread(lambda t=theirs: b.exchange(t))
        got = a.exchange(mine)
        thread.join()
        assert np.array_equal(got, theirs) and np.array_equal(box["value"], mine)
    # one end exchanging, the other sending and receiving in turn: same bytes on the wire
    thread, box = _in_thread(lambda: (b.recv_array(), b.send_array(np.arange(7, dtype=np.uint64)))[0])
    assert np.array_equal(a.exchange(np.arange(300_000, dtype=np.uint64)), np.arange(7))
    thread.join()
    assert np.array_equal(box["value"], np.arange(300_000))
    assert a.stats.bytes_sent == b.stats.bytes_received and b.stats.bytes_sent == a.stats.bytes_received
    assert a.stats.messages_sent == b.stats.messages_received == 5 and a.stats.rounds == 5


def test_received_arrays_reuse_buffers_only_once_nothing_refers_to_them(tls_pair):
    a, b = tls_pair
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 2**63, n, dtype=np.uint64) for n in (40_000, 40_000, 30_000, 40_000, 100)]

    def send_all():
        for frame in frames:
            b.send_array(frame)

    thread, _ = _in_thread(send_all)
    first = a.recv_array()
    address = first.__array_interface__["data"][0]
    second = a.recv_array()  # `first` is alive: a different buffer, and `first` keeps its values
    assert second.__array_interface__["data"][0] != address
    assert np.array_equal(first, frames[0]) and np.array_equal(second, frames[1])
    first[:] = 0  # received arrays are the caller's to write
    del first
    third = a.recv_array()  # smaller, into the freed buffer: no fresh memory
    assert third.__array_interface__["data"][0] == address and np.array_equal(third, frames[2])
    fourth = a.recv_array()  # `second` and `third` alive: neither of their buffers
    assert np.array_equal(second, frames[1]) and np.array_equal(third, frames[2])
    assert np.array_equal(fourth, frames[3])
    assert np.array_equal(a.recv_array(), frames[4])  # small frames: fresh memory
    thread.join()


def test_duplex_exchange_reports_the_peers_abort_while_still_sending(tls_pair):
    a, b = tls_pair
    thread, box = _in_thread(lambda: a.exchange(np.zeros(2_000_000, dtype=np.uint64)))
    time.sleep(0.3)  # a is stuck mid-frame: b reads nothing, so 16 MB cannot all be delivered
    t0 = time.monotonic()
    b.abort("party1 failed: disk full")
    thread.join(5)
    assert isinstance(box.get("error"), PeerAborted) and "disk full" in str(box["error"])
    assert time.monotonic() - t0 < 1  # b's linger ends as soon as a has read the reason and closed


def test_duplex_exchange_times_out_and_a_cut_frame_is_not_followed_by_garbage(tls_pair):
    a, b = tls_pair
    t0 = time.monotonic()
    with pytest.raises(TransportTimeout):
        a.exchange(np.zeros(4_000_000, dtype=np.uint64))  # b neither reads nor sends
    assert 0.9 < time.monotonic() - t0 < 6  # 1 s without progress (the kernel may still take a few late bytes)
    a.abort("gave up")  # a cannot complete its cut frame (b does not read), so it must not frame another
    with pytest.raises(PeerDisconnected):
        while True:
            b.recv_array()


def test_duplex_exchange_notices_a_vanished_peer(tls_pair):
    a, b = tls_pair
    b._sock.close()  # the process died: no abort frame
    with pytest.raises(PeerDisconnected):
        a.exchange(np.zeros(100_000, dtype=np.uint64))


def test_abort_completes_a_cut_frame_then_sends_its_reason(tls_pair):
    a, b = tls_pair
    big = np.arange(4_000_000, dtype=np.uint64)
    with pytest.raises(TransportTimeout):
        a.exchange(big)  # b is busy elsewhere for now: a's frame is cut off by the timeout
    got = []
    thread, box = _in_thread(lambda: [got.append(b.recv_array()) for _ in range(2)])  # now b reads again
    a.abort("party0 failed: gave up waiting")  # finishes the 32 MB frame, then frames the reason
    thread.join(10)
    assert len(got) == 1 and np.array_equal(got[0], big)  # the completed array, intact ...
    assert isinstance(box.get("error"), PeerAborted) and "gave up waiting" in str(box["error"])  # ... then the reason
