"""The untrusted prediction server: stores encrypted models per user and evaluates encrypted queries.

HTTP API (FastAPI; OpenAPI docs at ``/docs``):

* ``POST /v1/users`` claims a user name and returns its token (once); with a registration secret configured, only
  callers presenting it (header ``X-Registration-Secret``, i.e. the proxy) may register.
* ``PUT/DELETE /v1/users/{user}/models/{model_id}``, ``GET /v1/users/{user}/models``: manage models (token).
* ``POST /v1/users/{user}/models/{model_id}/predict``: evaluate a batch of encrypted queries (token).

Leakage (what the server learns): the user names, the pseudonymised feature names, the number of trees and their
shapes, the Paillier modulus; per query, the order of each present value relative to every threshold of its
feature (under ORE also the most significant differing bit), hence the path through every tree, and which values
are missing. It learns no feature value, no threshold value, no leaf value and no score: it holds no decryption
key, no order key and no pseudonym key. Tokens are stored hashed; request bodies and tokens are never logged.
"""


import json
import logging
import re
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from privboost.inference.evaluate import CompiledModel
from privboost.inference.format import (
    EncryptedModel,
    EncryptedModelError,
    ciphertext_problem,
    decode_array,
    encode_array,
    value_shape,
)
from privboost.inference.parallel import ParallelScorer
from privboost.inference.store import Store, UserExistsError

log = logging.getLogger("privboost.server")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_MAX_BATCH = 10_000


class Registration(BaseModel):
    """Body of ``POST /v1/users``."""

    user: str = Field(..., description="user name to claim")


class EncryptedQuery(BaseModel):
    """Body of ``predict``: a batch of encrypted queries."""

    key_id: str
    features: list[str]
    count: int = Field(..., ge=1)
    values: str = Field(..., description="base64 order ciphertexts, shape (count, features[, 32])")
    missing: str = Field(..., description="base64 packbits of the (count, features) missing mask")


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with HTTP 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _reject(send, 413, "request body too large")
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _reject(send, 413, "request body too large")


class _BodyTooLarge(Exception):
    pass


async def _reject(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class CachedModel:
    """A stored model ready for evaluation, with the key and bytes worker processes need."""

    key: tuple[str, str, int]
    blob: bytes
    compiled: CompiledModel


class ModelCache:
    """Compiled models by (user, model id, version); least recently used evicted."""

    def __init__(self, size: int = 16) -> None:
        self._items: OrderedDict[tuple[str, str, int], CachedModel] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, store: Store, user: str, model_id: str) -> CachedModel:
        version = store.model_version(user, model_id)
        if version is None:
            raise HTTPException(404, f"user {user!r} has no model {model_id!r}")
        key = (user, model_id, version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        found = store.get_model(user, model_id)
        if found is None:
            raise HTTPException(404, f"user {user!r} has no model {model_id!r}")
        entry = CachedModel((user, model_id, found[1]), found[0], CompiledModel(EncryptedModel.from_bytes(found[0])))
        with self._lock:
            self._items[entry.key] = entry
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return entry


def create_app(db_path: str, registration_secret: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               max_batch: int = DEFAULT_MAX_BATCH, workers: int = 1) -> FastAPI:
    """The server application over the SQLite database at ``db_path``.

    ``workers`` > 1 spreads the Paillier work of large batches over that many worker processes.
    """
    store = Store(db_path)
    cache = ModelCache()
    scorer = ParallelScorer(workers)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        scorer.close()
        store.close()

    app = FastAPI(title="privboost encrypted prediction server", version="1", lifespan=lifespan,
                  description="Untrusted server: evaluates encrypted queries on encrypted XGBoost models.")
    app.state.store = store
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    def check_name(value: str, what: str) -> str:
        if not NAME_PATTERN.fullmatch(value):  # not match: "$" would accept a trailing newline
            raise HTTPException(422, f"invalid {what}: use 1-64 letters, digits, '_', '.', '@' or '-'")
        return value

    def authorised(user: str, authorization: Annotated[str | None, Header()] = None) -> str:
        check_name(user, "user name")
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not store.check_token(user, authorization[len("Bearer "):]):
            raise HTTPException(401, "wrong token for this user", headers={"WWW-Authenticate": "Bearer"})
        return user

    @app.get("/v1/health")
    def health() -> dict:
        """Liveness probe."""
        return {"status": "ok"}

    @app.post("/v1/users", status_code=201)
    def register(body: Registration,
                 x_registration_secret: Annotated[str | None, Header()] = None) -> dict:
        """Claim a user name; the response holds the user's token, shown only this once."""
        import hmac

        if registration_secret is not None and not hmac.compare_digest(
                (x_registration_secret or "").encode(), registration_secret.encode()):
            raise HTTPException(403, "registration requires the server's registration secret")
        user = check_name(body.user, "user name")
        try:
            token = store.create_user(user)
        except UserExistsError as exc:
            raise HTTPException(409, f"user {user!r} is already registered; use its token") from exc
        log.info("registered user %s", user)
        return {"user": user, "token": token}

    @app.delete("/v1/users/{user}")
    def delete_user(user: Annotated[str, Depends(authorised)]) -> dict:
        """Delete the user and all her models."""
        store.delete_user(user)
        return {"deleted": user}

    @app.put("/v1/users/{user}/models/{model_id}", status_code=201)
    async def put_model(model_id: str, request: Request, user: Annotated[str, Depends(authorised)]) -> dict:
        """Store or replace an encrypted model (body: the model archive, application/octet-stream)."""
        check_name(model_id, "model id")
        blob = await request.body()
        try:
            model = await run_in_threadpool(EncryptedModel.from_bytes, blob)
        except EncryptedModelError as exc:
            raise HTTPException(422, f"malformed encrypted model: {exc}") from exc
        info = {"scheme": model.scheme, "trees": model.num_trees, "nodes": model.num_nodes,
                "features": len(model.features), "outputs": model.num_outputs}
        version = store.put_model(user, model_id, blob, info)
        log.info("stored model %s/%s v%d (%d trees)", user, model_id, version, model.num_trees)
        return {"model_id": model_id, "version": version, **info}

    @app.get("/v1/users/{user}/models")
    def list_models(user: Annotated[str, Depends(authorised)]) -> dict:
        """The user's models."""
        return {"models": store.list_models(user)}

    @app.delete("/v1/users/{user}/models/{model_id}")
    def delete_model(model_id: str, user: Annotated[str, Depends(authorised)]) -> dict:
        """Delete one model."""
        if not store.delete_model(user, check_name(model_id, "model id")):
            raise HTTPException(404, f"user {user!r} has no model {model_id!r}")
        return {"deleted": model_id}

    @app.post("/v1/users/{user}/models/{model_id}/predict")
    def predict(model_id: str, query: EncryptedQuery, user: Annotated[str, Depends(authorised)]) -> dict:
        """Evaluate a batch of encrypted queries; returns packed Paillier ciphertexts of the scores."""
        cached = cache.get(store, user, check_name(model_id, "model id"))
        model = cached.compiled.model
        if query.count > max_batch:
            raise HTTPException(413, f"batch of {query.count} queries exceeds the limit of {max_batch}")
        if query.key_id != model.key_id:
            raise HTTPException(422, "query is encrypted under other keys than this model's")
        if len(set(query.features)) != len(query.features):
            raise HTTPException(422, "query lists a feature twice")
        position = {name: i for i, name in enumerate(query.features)}
        absent = [f for f in model.features if f not in position]
        extra = len(query.features) - (len(model.features) - len(absent))
        if absent or extra:
            raise HTTPException(422, f"query features do not match the model: {len(absent)} missing, "
                                     f"{extra} unknown")
        order = np.array([position[f] for f in model.features])
        shape, dtype = value_shape(model.scheme, query.count, len(model.features))
        try:
            values = decode_array(query.values, dtype, shape, "values")
            n_cells = query.count * len(model.features)
            packed = decode_array(query.missing, np.uint8, ((n_cells + 7) // 8,), "missing mask")
        except EncryptedModelError as exc:
            raise HTTPException(422, str(exc)) from exc
        problem = ciphertext_problem(model.scheme, values)
        if problem:
            raise HTTPException(422, f"query {problem}")
        missing = np.unpackbits(packed, count=n_cells).astype(bool).reshape(query.count, len(model.features))
        leaves = cached.compiled.reached_leaves(values[:, order], missing[:, order])
        result = scorer.scores(cached.key, cached.blob, cached.compiled, leaves)
        width = (2 * model.paillier_n.bit_length() + 7) // 8
        raw = np.frombuffer(b"".join(c.to_bytes(width, "big") for c in result.ciphertexts), dtype=np.uint8)
        return {"count": query.count, "outputs": model.num_outputs, "slots": result.slots,
                "ciphertexts": encode_array(raw)}

    return app


def serve(db_path: str, host: str = "127.0.0.1", port: int = 8000, certfile: str | None = None,
          keyfile: str | None = None, registration_secret: str | None = None,
          max_body_bytes: int = DEFAULT_MAX_BODY, max_batch: int = DEFAULT_MAX_BATCH, workers: int = 1,
          log_level: str = "info") -> None:
    """Run the server until stopped (HTTPS when a certificate and key are given)."""
    import uvicorn

    app = create_app(db_path, registration_secret, max_body_bytes, max_batch, workers)
    uvicorn.run(app, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile, log_level=log_level,
                timeout_graceful_shutdown=5)
