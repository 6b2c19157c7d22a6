"""A user's key file: what the proxy hands her and what her client app needs.

``DIR/keys.json`` (mode 0600, in a 0700 directory) holds the order key (ORE or OPE master key), the pseudonym
(HMAC) key, the Paillier primes, the server token and the model's public facts (feature names, objective, number of
outputs). Anyone with this file can query the model and read the answers: keep it like a password.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from privboost.crypto.paillier import PaillierPrivateKey, private_key_from_primes
from privboost.crypto.prf import pseudonym

KEY_FILE = "keys.json"


class KeyFileError(ValueError):
    """The key directory is missing, unreadable or corrupt."""


@dataclass
class UserKeys:
    """Everything one user's client needs to encrypt queries and decrypt answers."""

    user: str
    model_id: str
    scheme: str
    order_key: bytes
    name_key: bytes
    paillier_p: int
    paillier_q: int
    feature_names: list[str]
    objective: str
    num_outputs: int
    token: str = ""
    server: str = ""
    ca_file: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def private_key(self) -> PaillierPrivateKey:
        """The Paillier private key."""
        return private_key_from_primes(self.paillier_p, self.paillier_q)

    @property
    def paillier_n(self) -> int:
        """The Paillier modulus."""
        return self.paillier_p * self.paillier_q

    def pseudonyms(self) -> list[str]:
        """Pseudonyms of the model's features, in model order."""
        return [pseudonym(self.name_key, name) for name in self.feature_names]

    def key_id(self) -> str:
        """Public fingerprint binding a query to this key set (reveals nothing about the keys)."""
        digest = hashlib.sha256()
        digest.update(self.paillier_n.to_bytes((self.paillier_n.bit_length() + 7) // 8, "big"))
        digest.update(bytes.fromhex(pseudonym(self.name_key, "key-id", label="key-id")))
        digest.update(bytes.fromhex(pseudonym(self.order_key, "key-id", label="key-id")))
        return digest.hexdigest()[:32]

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``keys.json`` atomically with mode 0600 (directory 0700); returns its path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(out, 0o700)
        doc = asdict(self)
        doc["order_key"] = base64.b64encode(self.order_key).decode()
        doc["name_key"] = base64.b64encode(self.name_key).decode()
        doc["paillier_p"], doc["paillier_q"] = str(self.paillier_p), str(self.paillier_q)
        target = out / KEY_FILE
        tmp = out / f".{KEY_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> UserKeys:
        """Read ``DIR/keys.json``; raises `KeyFileError` saying what is wrong."""
        path = Path(directory) / KEY_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise KeyFileError(f"no key file at {path}; run `privboost proxy setup ... --keys-out {directory}`") \
                from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
        try:
            keys = cls(**{**doc, "order_key": base64.b64decode(doc["order_key"]),
                          "name_key": base64.b64decode(doc["name_key"]),
                          "paillier_p": int(doc["paillier_p"]), "paillier_q": int(doc["paillier_q"])})
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"key file {path} is corrupt: {exc}") from exc
        if len(keys.order_key) != 32 or len(keys.name_key) != 32:
            raise KeyFileError(f"key file {path} is corrupt: symmetric keys must be 32 bytes")
        return keys
