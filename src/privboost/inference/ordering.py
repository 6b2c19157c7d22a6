"""Order encryption of float32 values, shared by the proxy (thresholds) and the client (query values).

Values are first mapped to uint32 by the exact order-preserving bit trick (`privboost.crypto.floatcode`), then
encrypted per feature, so values of different features are never comparable:

* ``ore`` (default): CLWW order-revealing encryption (Chenette et al., FSE 2016), one domain tag per feature,
  key ``HKDF(order_key, "ore")``. Fast (~0.1 ms per 30-feature query). See `privboost.crypto.ore` for leakage.
* ``ope``: Boldyreva et al.'s order-preserving encryption (EUROCRYPT 2009), as PPXGBoost uses, with key
  ``HKDF(order_key, "ope/<feature index>")`` per feature; 48-bit ciphertexts compared as integers. Milliseconds
  per value.
"""

from __future__ import annotations

import numpy as np

from privboost.crypto.floatcode import float32_to_ordered_uint32
from privboost.crypto.ore import CLWWORE
from privboost.crypto.prf import derive_key
from privboost.inference.format import OPE_OUT_BITS


class OrderCipher:
    """Encrypts float32 values of given features under one user's order key and scheme."""

    def __init__(self, scheme: str, order_key: bytes) -> None:
        if scheme not in ("ore", "ope"):
            raise ValueError(f"unknown order scheme {scheme!r}; use 'ore' or 'ope'")
        self.scheme = scheme
        self._order_key = order_key
        self._ore = CLWWORE(derive_key(order_key, "ore")) if scheme == "ore" else None
        self._ope: dict[int, object] = {}

    def encrypt(self, values: np.ndarray, feature: np.ndarray) -> np.ndarray:
        """Encrypt float32 ``values`` (no NaN) of features ``feature`` (same shape, or broadcastable).

        Returns uint64 ciphertexts of ``values.shape`` (packed trits for ORE, integers for OPE).
        """
        codes = float32_to_ordered_uint32(values)
        feat = np.broadcast_to(np.asarray(feature, dtype=np.int64), codes.shape)
        if self._ore is not None:
            return self._ore.encrypt(codes, feat.astype(np.uint32))
        out = np.zeros(codes.shape, dtype=np.uint64)
        for f in np.unique(feat):
            sel = feat == f
            out[sel] = self._ope_for(int(f)).encrypt_many(codes[sel])
        return out

    def _ope_for(self, feature: int):
        if feature not in self._ope:
            from privboost.crypto.ope import BoldyrevaOPE

            self._ope[feature] = BoldyrevaOPE(derive_key(self._order_key, f"ope/{feature}"), in_bits=32,
                                         out_bits=OPE_OUT_BITS)
        return self._ope[feature]
