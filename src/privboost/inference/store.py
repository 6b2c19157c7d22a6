"""The server's embedded database (SQLite): users with hashed tokens, and their encrypted models.

Tokens are 256-bit random strings, so a plain SHA-256 of the token is a safe verifier (no dictionary to attack);
comparison is constant-time. Nothing in the database can decrypt anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    blob BLOB NOT NULL,
    info TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (user, model_id)
);
"""


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserExistsError(Exception):
    """The user name is already claimed."""


class Store:
    """Thread-safe SQLite store of users and encrypted models."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def create_user(self, name: str) -> str:
        """Claim ``name``; returns its new token. Raises `UserExistsError` if taken."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            try:
                self._db.execute("INSERT INTO users VALUES (?, ?, ?)", (name, _token_hash(token), time.time()))
            except sqlite3.IntegrityError as exc:
                raise UserExistsError(name) from exc
        return token

    def check_token(self, name: str, token: str) -> bool:
        """True if ``token`` is ``name``'s token (constant-time comparison)."""
        with self._lock:
            row = self._db.execute("SELECT token_sha256 FROM users WHERE name = ?", (name,)).fetchone()
        expected = row[0] if row else _token_hash(secrets.token_urlsafe(32))
        return hmac.compare_digest(expected, _token_hash(token)) and row is not None

    def delete_user(self, name: str) -> None:
        """Delete a user and all her models."""
        with self._lock:
            self._db.execute("DELETE FROM users WHERE name = ?", (name,))

    def put_model(self, user: str, model_id: str, blob: bytes, info: dict) -> int:
        """Insert or replace a model; returns its new version number."""
        with self._lock:
            row = self._db.execute("SELECT version FROM models WHERE user = ? AND model_id = ?",
                                   (user, model_id)).fetchone()
            version = (row[0] if row else 0) + 1
            self._db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                             (user, model_id, blob, json.dumps(info), version, time.time()))
        return version

    def get_model(self, user: str, model_id: str) -> tuple[bytes, int] | None:
        """The model's bytes and version, or None."""
        with self._lock:
            row = self._db.execute("SELECT blob, version FROM models WHERE user = ? AND model_id = ?",
                                   (user, model_id)).fetchone()
        return (bytes(row[0]), int(row[1])) if row else None

    def model_version(self, user: str, model_id: str) -> int | None:
        """Current version of a model, or None (cheap: no blob)."""
        with self._lock:
            row = self._db.execute("SELECT version FROM models WHERE user = ? AND model_id = ?",
                                   (user, model_id)).fetchone()
        return int(row[0]) if row else None

    def list_models(self, user: str) -> list[dict]:
        """Model ids and their public info for ``user``."""
        with self._lock:
            rows = self._db.execute("SELECT model_id, info, version FROM models WHERE user = ? ORDER BY model_id",
                                    (user,)).fetchall()
        return [{"model_id": r[0], "version": r[2], **json.loads(r[1])} for r in rows]

    def delete_model(self, user: str, model_id: str) -> bool:
        """Delete one model; returns whether it existed."""
        with self._lock:
            cur = self._db.execute("DELETE FROM models WHERE user = ? AND model_id = ?", (user, model_id))
        return cur.rowcount > 0
