"""The untrusted server never holds a key and never sees plaintext: a real server process behind a recording relay.

Proxy set-up and an encrypted prediction run through a TCP relay that records every byte in both directions (plain
HTTP on loopback, so the bytes are inspectable). Neither the recording nor the server's SQLite file may contain the
order key, the pseudonym key, the Paillier primes or private exponent, a feature name or a query value.
"""

import base64
import os
import socket
import stat
import threading

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.datasets import load_breast_cancer

from privboost.demo import free_port, start_server
from privboost.inference.client import predict_encrypted
from privboost.inference.keys import UserKeys
from privboost.inference.proxy import setup_user
from privboost.model import TreeEnsemble


class RecordingRelay:
    """Forwards loopback TCP connections to ``target_port`` and records all traffic."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.recorded = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def _encodings(secret: bytes | int) -> list[bytes]:
    if isinstance(secret, int):
        raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
        return [raw, raw[::-1], str(secret).encode(), hex(secret)[2:].encode(), base64.b64encode(raw)]
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.urlsafe_b64encode(secret)]


def test_server_sees_no_key_and_no_plaintext(tmp_path):
    data = load_breast_cancer(as_frame=True)
    x, y = data.data, data.target
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, y), 8)
    model = TreeEnsemble.from_xgboost(booster)
    port = free_port()
    server = start_server(tmp_path / "server.db", port)
    relay = RecordingRelay(port)
    try:
        url = f"http://127.0.0.1:{relay.port}"
        setup_user(model, "alice", tmp_path / "keys", url, paillier_bits=2048)
        keys = UserKeys.load(tmp_path / "keys")
        rng = np.random.default_rng(11)
        queries = (x.iloc[:5].to_numpy() * (1 + rng.uniform(0.01, 0.02, (5, x.shape[1])))).astype(np.float32)
        queries[0, 3] = np.nan
        got = predict_encrypted(keys, queries, server=url)
    finally:
        relay.close()
        server.terminate()
        server.wait(timeout=10)
        stderr = server.stderr.read()
    np.testing.assert_allclose(got[:, 0], booster.predict(xgb.DMatrix(pd.DataFrame(queries, columns=x.columns))),
                               atol=1e-6)
    wire = bytes(relay.recorded)
    assert b"/v1/users/alice/models/default/predict" in wire  # the recording did see the traffic
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("server.db*"))
    private = keys.private_key
    secrets_ = [keys.order_key, keys.name_key, keys.paillier_p, keys.paillier_q, int(private.hp), int(private.hq)]
    for view_name, view in (("wire", wire), ("database", stored)):
        for secret in secrets_:
            for encoding in _encodings(secret):
                assert encoding not in view, f"a key appears on the {view_name}"
        for name in model.feature_names:
            assert name.encode() not in view, f"feature name {name!r} appears on the {view_name}"
        for value in queries[~np.isnan(queries)]:
            for text in (repr(float(value)), f"{value:.6g}", f"{value:.7g}"):
                if len(text.replace(".", "").lstrip("0")) >= 5:  # long enough to be unmistakable
                    assert text.encode() not in view, f"query value {text} appears on the {view_name}"
        for row in queries:  # raw float32 bytes as a client matrix would hold them (8 bytes: no chance match)
            for j in range(len(row) - 1):
                if not np.isnan(row[j:j + 2]).any():
                    assert row[j:j + 2].tobytes() not in view, f"raw query values appear on the {view_name}"
    assert keys.token.encode() not in stderr  # the server never logs tokens
    key_file = tmp_path / "keys" / "keys.json"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
