"""The client app: encrypt queries under the user's keys, ask the server, decrypt and link the scores.

Leakage: the client sends the server only the feature pseudonyms, the order ciphertext of every present value and
which values are missing; it receives packed Paillier ciphertexts that only its private key opens.
"""

from __future__ import annotations

import ipaddress
import math
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import numpy as np

from privboost.inference.format import (
    FIXED_POINT_BITS,
    SLOT_BITS,
    SLOT_OFFSET,
    decode_array,
    encode_array,
)
from privboost.inference.keys import UserKeys
from privboost.inference.ordering import OrderCipher

DEFAULT_BATCH = 1000
#: inputs of at least twice this many rows are split into about PIPELINE_PARTS requests, two in flight
PIPELINE_MIN_ROWS = 128
PIPELINE_PARTS = 4


class ServerError(RuntimeError):
    """The server refused a request or could not be reached; the message carries its reason."""


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerConnection:
    """HTTP(S) access to a privboost server; refuses to send tokens in clear beyond loopback."""

    def __init__(self, url: str, ca_file: str | None = None, timeout: float = 120.0,
                 allow_insecure_http: bool = False) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must look like https://host:port, got {url!r}")
        if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure_http:
            raise ValueError(f"refusing to send a token in clear to {parts.hostname}: use https:// "
                             "(start the server with --certfile/--keyfile)")
        verify: bool | ssl.SSLContext = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, verify=verify, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, token: str | None = None, **kwargs) -> dict:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServerError(f"server refused {method} {path} ({response.status_code}): {detail}")
        return response.json() if response.content else {}

    def register(self, user: str, registration_secret: str | None = None) -> str:
        """Claim ``user`` on the server; returns the token (shown only once)."""
        headers = {"X-Registration-Secret": registration_secret} if registration_secret else {}
        return self._call("POST", "/v1/users", json={"user": user}, headers=headers)["token"]

    def upload_model(self, user: str, token: str, model_id: str, blob: bytes) -> dict:
        """Store or replace ``user``'s encrypted model ``model_id``."""
        return self._call("PUT", f"/v1/users/{user}/models/{model_id}", token=token, content=blob,
                          headers={"Content-Type": "application/octet-stream"})

    def delete_model(self, user: str, token: str, model_id: str) -> dict:
        """Delete ``user``'s model ``model_id``."""
        return self._call("DELETE", f"/v1/users/{user}/models/{model_id}", token=token)

    def predict(self, user: str, token: str, model_id: str, query: dict) -> dict:
        """Send one encrypted batch; returns the server's JSON answer."""
        return self._call("POST", f"/v1/users/{user}/models/{model_id}/predict", token=token, json=query)


@dataclass
class EncryptedBatch:
    """A batch of encrypted queries as it goes on the wire."""

    body: dict
    count: int


class QueryCodec:
    """Encrypts query matrices and decrypts packed answers with one user's keys."""

    def __init__(self, keys: UserKeys) -> None:
        self.keys = keys
        self._cipher = OrderCipher(keys.scheme, keys.order_key)
        self._private = keys.private_key
        self._pseudonyms = keys.pseudonyms()
        self._key_id = keys.key_id()

    def encrypt(self, x: np.ndarray) -> EncryptedBatch:
        """Encrypt a float32 matrix (rows = queries, columns in the model's feature order; NaN = missing)."""
        x = np.asarray(x, dtype=np.float32)
        n_feat = len(self._pseudonyms)
        if x.ndim != 2 or x.shape[1] != n_feat:
            raise ValueError(f"queries must have {n_feat} columns (the model's features), got shape {x.shape}")
        missing = np.isnan(x)
        filled = np.where(missing, np.float32(0.0), x)
        values = self._cipher.encrypt(filled, np.arange(n_feat)[None, :])
        if missing.any():  # a missing cell carries no value: zero its slot so nothing about the filler leaks
            values[missing] = 0
        body = {
            "key_id": self._key_id, "features": self._pseudonyms, "count": int(x.shape[0]),
            "values": encode_array(values), "missing": encode_array(np.packbits(missing, axis=None)),
        }
        return EncryptedBatch(body, int(x.shape[0]))

    def decrypt(self, answer: dict, count: int) -> np.ndarray:
        """Decrypt a server answer into float64 margins of shape (count, num_outputs)."""
        outputs = self.keys.num_outputs
        slots = [int(s) for s in answer["slots"]]
        width = (2 * self.keys.paillier_n.bit_length() + 7) // 8
        cts = decode_array(answer["ciphertexts"], np.uint8, (len(slots), width), "answer ciphertexts")
        if sum(slots) != count * outputs:
            raise ServerError(f"server returned {sum(slots)} scores for {count} queries × {outputs} outputs")
        scores: list[int] = []
        mask = (1 << SLOT_BITS) - 1
        for row, k in zip(cts, slots, strict=True):
            plain = self._private.raw_decrypt(int.from_bytes(row.tobytes(), "big"))
            scores.extend((plain >> (SLOT_BITS * (k - 1 - j))) & mask for j in range(k))
        fixed = np.array([s - SLOT_OFFSET for s in scores], dtype=np.float64)
        return (fixed / float(1 << FIXED_POINT_BITS)).reshape(count, outputs)


def link(margin: np.ndarray, objective: str) -> np.ndarray:
    """Apply the objective's link to decrypted margins (n, K): sigmoid, softmax or identity."""
    if objective in ("binary:logistic", "reg:logistic"):
        return 1.0 / (1.0 + np.exp(-margin))
    if objective.startswith("multi:"):
        shifted = np.exp(margin - margin.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return margin


def predict_encrypted(keys: UserKeys, x: np.ndarray, server: str | None = None, ca_file: str | None = None,
                      batch_size: int = DEFAULT_BATCH, progress=None) -> np.ndarray:
    """End-to-end encrypted prediction of matrix ``x`` (model feature order): probabilities/values, (n, K).

    Large inputs go as several requests with two in flight, so the client encrypts and decrypts while the server
    computes; ``batch_size`` caps the queries per request.
    """
    conn = ServerConnection(server or keys.server, ca_file=ca_file or keys.ca_file or None)
    codec = QueryCodec(keys)
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], keys.num_outputs), dtype=np.float64)
    if x.shape[0] == 0:
        return out
    size = batch_size if x.shape[0] < 2 * PIPELINE_MIN_ROWS else min(
        batch_size, max(PIPELINE_MIN_ROWS, math.ceil(x.shape[0] / PIPELINE_PARTS)))
    chunks = [slice(i, min(x.shape[0], i + size)) for i in range(0, x.shape[0], size)]

    def run(rows: slice) -> slice:
        batch = codec.encrypt(x[rows])
        answer = conn.predict(keys.user, keys.token, keys.model_id, batch.body)
        out[rows] = codec.decrypt(answer, batch.count)
        return rows

    done = 0
    try:
        with ThreadPoolExecutor(max_workers=2 if len(chunks) > 1 else 1) as pool:
            futures = [pool.submit(run, rows) for rows in chunks]
            try:
                for future in futures:
                    rows = future.result()
                    done += rows.stop - rows.start
                    if progress is not None:
                        progress(done, x.shape[0])
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        conn.close()
    return link(out, keys.objective)
