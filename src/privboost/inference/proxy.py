"""The trusted proxy (PPXGBoost, Meng & Feigenbaum 2020): per-user keys and a personalised encrypted model.

For each authorised user the proxy draws fresh keys (an order key for ORE/OPE, an HMAC key for feature
pseudonyms, a Paillier key pair), turns the plaintext model into that user's `EncryptedModel` (pseudonymised
feature names, encrypted thresholds, Paillier-encrypted fixed-point leaves with the base score folded in),
registers the user with the server, uploads the model and writes the user's key file.

Leakage: the proxy sees the plaintext model and all of the user's keys (it is trusted); the server receives only
the encrypted model (see `privboost.inference.server` for what it learns from it).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from privboost.crypto.paillier import KeyHolderEncryptor, generate_keypair
from privboost.crypto.prf import new_key
from privboost.inference.format import FIXED_POINT_BITS, SLOT_BITS, SLOT_OFFSET, EncryptedModel
from privboost.inference.keys import UserKeys
from privboost.inference.ordering import OrderCipher
from privboost.model import TreeEnsemble

REGISTRATION_SECRET_ENV = "PRIVBOOST_REGISTRATION_SECRET"  # noqa: S105 - a variable name, not a secret


class UnsupportedModelError(ValueError):
    """The model uses a feature encrypted prediction cannot evaluate."""


def make_user_keys(model: TreeEnsemble, user: str, model_id: str = "default", scheme: str = "ore",
                   paillier_bits: int = 2048) -> UserKeys:
    """Fresh keys for ``user`` and ``model`` (nothing is written or sent)."""
    _check_supported(model)
    _, private = generate_keypair(paillier_bits)
    return UserKeys(user=user, model_id=model_id, scheme=scheme, order_key=new_key(), name_key=new_key(),
                    paillier_p=int(private.p), paillier_q=int(private.q), feature_names=list(model.feature_names),
                    objective=model.objective, num_outputs=model.num_outputs)


def _check_supported(model: TreeEnsemble) -> None:
    if any(tree.categorical.any() for tree in model.trees):
        raise UnsupportedModelError("encrypted prediction does not support categorical splits yet; "
                                    "one-hot encode categorical features before training")


def leaf_fixed_point(values: np.ndarray) -> np.ndarray:
    """Leaf values as signed integers ``round(v · 2^FIXED_POINT_BITS)`` (object array of Python ints)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * float(1 << FIXED_POINT_BITS))
    limit = float(1 << (SLOT_BITS - 4))
    if np.any(np.abs(scaled) >= limit):
        raise UnsupportedModelError("a leaf value is too large for the fixed-point encoding")
    return scaled.astype(np.int64)


def encrypt_model(model: TreeEnsemble, keys: UserKeys,
                  progress: Callable[[int, int], None] | None = None) -> EncryptedModel:
    """Build ``keys.user``'s personalised encrypted model; ``progress(done, total)`` reports leaf encryption."""
    _check_supported(model)
    encryptor = KeyHolderEncryptor(keys.private_key)
    trees, outputs = list(model.trees), [int(g) for g in model.tree_group]
    for group in range(model.num_outputs):  # an output with no tree still needs a leaf to carry its base score
        if group not in outputs:
            trees.append(_single_leaf())
            outputs.append(group)
    feature, left, right, default_left, value, roots = [], [], [], [], [], []
    offset = 0
    for tree in trees:
        order = _breadth_first(tree)
        new_id = np.empty(tree.num_nodes, dtype=np.int64)
        new_id[order] = np.arange(order.size) + offset
        is_leaf = tree.is_leaf[order]
        roots.append(offset)
        feature.append(np.where(is_leaf, -1, tree.feature[order]))
        left.append(np.where(is_leaf, -1, new_id[np.maximum(tree.left[order], 0)]))
        right.append(np.where(is_leaf, -1, new_id[np.maximum(tree.right[order], 0)]))
        default_left.append(tree.default_left[order])
        value.append(tree.threshold[order])
        offset += order.size
    node_feature = np.concatenate(feature).astype(np.int32)
    value_all = np.concatenate(value).astype(np.float32)
    leaf = node_feature < 0
    inner = ~leaf

    cipher = OrderCipher(keys.scheme, keys.order_key)
    inner_ct = cipher.encrypt(value_all[inner], node_feature[inner])
    thresholds = np.zeros((node_feature.size,) + inner_ct.shape[1:], dtype=inner_ct.dtype)
    thresholds[inner] = inner_ct

    fixed = leaf_fixed_point(value_all).astype(object)
    base = leaf_fixed_point(model.base_margin())
    first_tree_seen: set[int] = set()
    node_tree = np.repeat(np.arange(len(trees)), np.diff(np.append(roots, offset)))
    for t, group in enumerate(outputs):
        if group not in first_tree_seen:
            first_tree_seen.add(group)
            sel = leaf & (node_tree == t)
            fixed[sel] = fixed[sel] + int(base[group]) + SLOT_OFFSET
    leaf_ids = np.flatnonzero(leaf)
    leaf_slot = np.full(node_feature.size, -1, dtype=np.int32)
    leaf_slot[leaf_ids] = np.arange(leaf_ids.size, dtype=np.int32)
    ciphertexts = []
    for i, node in enumerate(leaf_ids):
        ciphertexts.append(encryptor.encrypt_int(int(fixed[node])))
        if progress is not None and ((i + 1) % 256 == 0 or i + 1 == leaf_ids.size):
            progress(i + 1, leaf_ids.size)
    encrypted = EncryptedModel(
        scheme=keys.scheme, key_id=keys.key_id(), features=keys.pseudonyms(), num_outputs=model.num_outputs,
        paillier_n=keys.paillier_n, node_feature=node_feature, left=np.concatenate(left).astype(np.int32),
        right=np.concatenate(right).astype(np.int32), default_left=np.concatenate(default_left).astype(bool),
        thresholds=thresholds, leaf_slot=leaf_slot, leaf_ciphertexts=ciphertexts,
        roots=np.asarray(roots, dtype=np.int32), tree_output=np.asarray(outputs, dtype=np.int32),
    )
    encrypted.validate()
    return encrypted


def _breadth_first(tree) -> np.ndarray:
    order, frontier = [], np.array([0])
    while frontier.size:
        order.append(frontier)
        frontier = frontier[tree.left[frontier] >= 0]
        frontier = np.concatenate([tree.left[frontier], tree.right[frontier]])
    return np.concatenate(order)


def _single_leaf():
    from privboost.model import Tree

    minus = np.array([-1], dtype=np.int32)
    return Tree(minus, minus.copy(), np.zeros(1, np.int32), np.zeros(1, np.float32), np.ones(1, bool),
                np.zeros(1, bool))


def setup_user(model: TreeEnsemble, user: str, keys_dir: str | os.PathLike, server: str, *,
               model_id: str = "default", scheme: str = "ore", ca_file: str | None = None,
               registration_secret: str | None = None, paillier_bits: int = 2048,
               progress: Callable[[int, int], None] | None = None) -> UserKeys:
    """Make ``user``'s keys in ``keys_dir``, register her with ``server`` and upload her encrypted model.

    If ``keys_dir`` already holds this user's keys with a token, they are reused and the model is replaced (the
    token proves ownership). The key file is written as soon as the server issues a token, so a failed upload can
    be retried without losing the user name.
    """
    from privboost.inference.client import ServerConnection
    from privboost.inference.keys import KeyFileError

    secret = registration_secret if registration_secret is not None else os.environ.get(REGISTRATION_SECRET_ENV)
    try:
        previous = UserKeys.load(keys_dir)
    except KeyFileError:
        previous = None
    conn = ServerConnection(server, ca_file=ca_file)
    try:
        if previous is not None and previous.user == user and previous.token:
            keys = make_user_keys(model, user, model_id, scheme, paillier_bits)
            keys.token = previous.token
        else:
            keys = make_user_keys(model, user, model_id, scheme, paillier_bits)
            keys.token = conn.register(user, secret)
        keys.server, keys.ca_file = server, str(ca_file or "")
        encrypted = encrypt_model(model, keys, progress)
        keys.save(keys_dir)
        conn.upload_model(user, keys.token, model_id, encrypted.to_bytes())
    finally:
        conn.close()
    return keys
