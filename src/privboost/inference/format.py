"""Wire formats of encrypted prediction: the personalised encrypted model and the encrypted query/answer.

An `EncryptedModel` is what the untrusted server stores for one user: the trees flattened into arrays (children
always after their parent), each split's feature as an index into the list of feature pseudonyms, its threshold as
an order-revealing (CLWW) or order-preserving (Boldyreva) ciphertext, default directions, and one Paillier
ciphertext per leaf holding ``round(leaf · 2^FIXED_POINT_BITS)`` (the base score and a positive offset folded into
the first tree of each output). It travels as an ``.npz`` archive read with ``allow_pickle=False``; every field
is validated before use, so a malformed upload is refused with a reason.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np

from privboost.crypto.ore import is_valid_ciphertext

SCHEMES = ("ore", "ope")  # CLWW order-revealing encryption; Boldyreva order-preserving encryption
OPE_OUT_BITS = 48
FIXED_POINT_BITS = 32
SLOT_BITS = 64
SLOT_OFFSET = 1 << 62  # added to every score so packed slots stay non-negative
FORMAT_VERSION = 1
MAX_NODES = 2_000_000
MAX_FEATURES = 100_000


class EncryptedModelError(ValueError):
    """An encrypted model or query is malformed; the message says what is wrong."""


@dataclass
class EncryptedModel:
    """A personalised encrypted tree ensemble (see module docstring)."""

    scheme: str
    key_id: str
    features: list[str]  # pseudonyms, in the column order queries use by default
    num_outputs: int
    paillier_n: int
    node_feature: np.ndarray  # int32 (N,), -1 at leaves
    left: np.ndarray  # int32 (N,), -1 at leaves
    right: np.ndarray  # int32 (N,), -1 at leaves
    default_left: np.ndarray  # bool (N,)
    thresholds: np.ndarray  # uint64 (N,): packed CLWW trits for "ore", Boldyreva ciphertext for "ope"; 0 at leaves
    leaf_slot: np.ndarray  # int32 (N,): index into leaf_ciphertexts at leaves, -1 elsewhere
    leaf_ciphertexts: list[int]
    roots: np.ndarray  # int32 (T,)
    tree_output: np.ndarray  # int32 (T,)

    @property
    def num_nodes(self) -> int:
        """Total nodes over all trees."""
        return int(self.node_feature.shape[0])

    @property
    def num_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        """Serialise as an npz archive (no pickles)."""
        width = (2 * self.paillier_n.bit_length() + 7) // 8
        cts = b"".join(int(c).to_bytes(width, "big") for c in self.leaf_ciphertexts)
        header = {
            "format": FORMAT_VERSION, "scheme": self.scheme, "key_id": self.key_id, "features": self.features,
            "num_outputs": self.num_outputs, "paillier_n": str(self.paillier_n), "ciphertext_bytes": width,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            node_feature=self.node_feature, left=self.left, right=self.right,
            default_left=self.default_left, thresholds=self.thresholds, leaf_slot=self.leaf_slot,
            leaf_ciphertexts=np.frombuffer(cts, dtype=np.uint8).reshape(len(self.leaf_ciphertexts), width),
            roots=self.roots, tree_output=self.tree_output,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedModel:
        """Parse and validate an uploaded model; raises `EncryptedModelError` with the reason."""
        try:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array, not an archive
                raise EncryptedModelError("got a bare .npy array, expected an .npz archive")
            with loaded as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise EncryptedModelError(f"not an encrypted model archive: {exc}") from exc
        try:
            header = json.loads(bytes(_need(arrays, "header", np.uint8)).decode())
            if not isinstance(header, dict):
                raise EncryptedModelError("model header must be a JSON object")
            if header.get("format") != FORMAT_VERSION:
                raise EncryptedModelError(f"unsupported model format {header.get('format')!r}")
            n = int(header["paillier_n"])
            width = int(header["ciphertext_bytes"])
            raw_cts = _need(arrays, "leaf_ciphertexts", np.uint8)
            if raw_cts.ndim != 2 or raw_cts.shape[1] != width or width != (2 * n.bit_length() + 7) // 8:
                raise EncryptedModelError("leaf ciphertexts have the wrong width")
            model = cls(
                scheme=str(header["scheme"]), key_id=str(header["key_id"]),
                features=[str(f) for f in header["features"]], num_outputs=int(header["num_outputs"]),
                paillier_n=n,
                node_feature=_need(arrays, "node_feature", np.int32), left=_need(arrays, "left", np.int32),
                right=_need(arrays, "right", np.int32), default_left=_need(arrays, "default_left", np.bool_),
                thresholds=arrays.get("thresholds"), leaf_slot=_need(arrays, "leaf_slot", np.int32),
                leaf_ciphertexts=[int.from_bytes(row.tobytes(), "big") for row in raw_cts],
                roots=_need(arrays, "roots", np.int32), tree_output=_need(arrays, "tree_output", np.int32),
            )
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, EncryptedModelError):
                raise
            raise EncryptedModelError(f"malformed model header: {exc}") from exc
        model.validate()
        return model

    def validate(self) -> None:
        """Check every structural invariant the evaluator relies on."""
        if self.scheme not in SCHEMES:
            raise EncryptedModelError(f"unknown scheme {self.scheme!r}; expected one of {SCHEMES}")
        if self.paillier_n <= 0 or self.paillier_n.bit_length() < 1024:
            raise EncryptedModelError("Paillier modulus is too small")
        if self.node_feature.ndim != 1:
            raise EncryptedModelError("node_feature must be one-dimensional")
        n_nodes, n_feat = self.num_nodes, len(self.features)
        if not 0 < n_feat <= MAX_FEATURES or len(set(self.features)) != n_feat:
            raise EncryptedModelError("feature list must be non-empty and without duplicates")
        if not 0 < n_nodes <= MAX_NODES or not 0 < self.num_outputs <= 10_000:
            raise EncryptedModelError("model size is out of range")
        for name in ("left", "right", "default_left", "leaf_slot"):
            if getattr(self, name).shape != (n_nodes,):
                raise EncryptedModelError(f"{name} must have one entry per node")
        leaf = self.node_feature < 0
        inner = np.flatnonzero(~leaf)
        if np.any(self.node_feature >= n_feat) or np.any(self.node_feature < -1):
            raise EncryptedModelError("a split refers to a feature that is not in the feature list")
        if np.any(self.left[leaf] != -1) or np.any(self.right[leaf] != -1):
            raise EncryptedModelError("leaves must have no children")
        if np.any(self.left[inner] <= inner) or np.any(self.right[inner] <= inner) \
                or np.any(self.left[inner] >= n_nodes) or np.any(self.right[inner] >= n_nodes):
            raise EncryptedModelError("children must come after their parent and inside the node array")
        parents = np.zeros(n_nodes, dtype=np.int64)
        np.add.at(parents, self.left[inner], 1)
        np.add.at(parents, self.right[inner], 1)
        if self.roots.ndim != 1 or self.roots.size == 0 or self.tree_output.shape != self.roots.shape:
            raise EncryptedModelError("roots and tree_output must be non-empty and of equal length")
        if np.any(self.roots < 0) or np.any(self.roots >= n_nodes) or np.any(parents[self.roots] != 0):
            raise EncryptedModelError("a tree root is out of range or has a parent")
        parents[self.roots] += 1
        if np.any(parents != 1):
            raise EncryptedModelError("every node must belong to exactly one tree")
        if np.any(self.tree_output < 0) or np.any(self.tree_output >= self.num_outputs):
            raise EncryptedModelError("a tree adds to an output that does not exist")
        n_leaves = len(self.leaf_ciphertexts)
        slots = self.leaf_slot[leaf]
        if np.any(self.leaf_slot[inner] != -1) or sorted(slots.tolist()) != list(range(n_leaves)):
            raise EncryptedModelError("leaf slots must number the leaves 0..L-1, one ciphertext each")
        nsq = self.paillier_n * self.paillier_n
        if any(not 0 < c < nsq for c in self.leaf_ciphertexts):
            raise EncryptedModelError("a leaf ciphertext is out of range for the Paillier modulus")
        if self.thresholds is None or self.thresholds.shape != (n_nodes,) or self.thresholds.dtype != np.uint64:
            raise EncryptedModelError(f"thresholds must be uint64 of shape ({n_nodes},)")
        problem = ciphertext_problem(self.scheme, self.thresholds)
        if problem:
            raise EncryptedModelError(f"threshold {problem}")


def _need(arrays: dict[str, np.ndarray], name: str, dtype: type) -> np.ndarray:
    if name not in arrays:
        raise EncryptedModelError(f"model archive lacks {name!r}")
    arr = arrays[name]
    if not isinstance(arr, np.ndarray):  # np.load hands back raw bytes for a zip member that is not .npy
        raise EncryptedModelError(f"{name} is not a numpy array")
    if arr.dtype != np.dtype(dtype):
        raise EncryptedModelError(f"{name} must be {np.dtype(dtype).name}, got {arr.dtype}")
    return arr


# ---------------------------------------------------------------------- queries
def encode_array(arr: np.ndarray) -> str:
    """Base64 of an array's C-order bytes."""
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()


def decode_array(text: str, dtype: type, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Inverse of `encode_array` with a size check; raises `EncryptedModelError`."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise EncryptedModelError(f"{what} is not valid base64") from exc
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != need:
        raise EncryptedModelError(f"{what} has {len(raw)} bytes, expected {need} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def value_shape(scheme: str, count: int, n_features: int) -> tuple[tuple[int, ...], type]:
    """Shape and dtype of a batch of encrypted query values (one uint64 ciphertext per cell, either scheme)."""
    return (count, n_features), np.uint64


def ciphertext_problem(scheme: str, values: np.ndarray) -> str:
    """Why ``values`` are not valid order ciphertexts of ``scheme`` ('' if they are)."""
    if scheme == "ore" and not is_valid_ciphertext(values).all():
        return "ciphertext is not a CLWW ORE ciphertext (a 2-bit group holds 3)"
    if scheme == "ope" and np.any(values >= np.uint64(1 << OPE_OUT_BITS)):
        return f"ciphertext is out of range for OPE (>= 2^{OPE_OUT_BITS})"
    return ""
