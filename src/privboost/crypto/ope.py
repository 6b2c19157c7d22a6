"""Order-preserving symmetric encryption of Boldyreva, Chenette, Lee and O'Neill (EUROCRYPT 2009), as PPXGBoost uses.

The scheme realises a pseudorandom order-preserving function from ``[0, 2^in_bits)`` to ``[0, 2^out_bits)`` by
lazy sampling: binary search over the range; at each step the number of domain points mapped at or below the range
midpoint is drawn from the hypergeometric distribution (the law of a uniformly random order-preserving function)
with coins from a PRF of the key and the step's description (domain, range, midpoint); once one domain point is
left, its ciphertext is drawn uniformly from the remaining range with coins from the PRF of that point.

PRF and coin tape: HMAC-SHA256 of the key and the step description gives a 256-bit AES key for an AES-CTR stream
(the paper's TapeGen). The hypergeometric sampler is Stadlober's ratio-of-uniforms algorithm (HRUA, 1989; the one
numpy uses) for large draws and direct simulation for small ones, driven by that tape, so it is deterministic.

Leakage: ciphertexts reveal the order of plaintexts and equality; Boldyreva et al. (CRYPTO 2011, "Order-preserving
encryption revisited") show they also reveal about the upper half of a plaintext's bits (its approximate value).
Use keys from `secrets` (see `privboost.crypto.prf.new_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privboost.crypto.prf import _check_key

_D1 = 1.7155277699214135
_D2 = 0.8989161620588988


class _Tape:
    """Deterministic coin stream: AES-256-CTR keyed by HMAC-SHA256(key, description)."""

    def __init__(self, key: bytes, description: bytes) -> None:
        aes_key = hmac.new(key, description, hashlib.sha256).digest()
        self._stream = Cipher(algorithms.AES(aes_key), modes.CTR(b"\x00" * 16)).encryptor()

    def next_uint64(self) -> int:
        return int.from_bytes(self._stream.update(b"\x00" * 8), "little")

    def next_double(self) -> float:
        return (self.next_uint64() >> 11) * (1.0 / 9007199254740992.0)

    def below(self, bound: int) -> int:
        """Uniform integer in [0, bound) by rejection (no modulo bias)."""
        bits = max(1, (bound - 1).bit_length())
        while True:
            value = 0
            for _ in range((bits + 63) // 64):
                value = (value << 64) | self.next_uint64()
            value &= (1 << bits) - 1
            if value < bound:
                return value


def _logfact(k: int) -> float:
    return math.lgamma(k + 1.0)


def _hypergeometric(good: int, bad: int, sample: int, tape: _Tape) -> int:
    """Number of good items among ``sample`` drawn without replacement from ``good + bad``."""
    popsize = good + bad
    computed = min(sample, popsize - sample)
    if computed <= 10:
        found, good_left, total_left = 0, good, popsize
        for _ in range(computed):
            if tape.below(total_left) < good_left:
                found += 1
                good_left -= 1
            total_left -= 1
        k = found
        if computed < sample:
            k = good - k
        return k
    mingb, maxgb = min(good, bad), max(good, bad)
    p, q = mingb / popsize, maxgb / popsize
    a = computed * p + 0.5
    var = (popsize - computed) * computed * p * q / (popsize - 1)
    c = math.sqrt(var + 0.5)
    h = _D1 * c + _D2
    m = (computed + 1) * (mingb + 1) // (popsize + 2)
    g = _logfact(m) + _logfact(mingb - m) + _logfact(computed - m) + _logfact(maxgb - computed + m)
    b = min(min(computed, mingb) + 1, math.floor(a + 16 * c))
    while True:
        u, v = tape.next_double(), tape.next_double()
        if u == 0.0:
            continue
        x = a + h * (v - 0.5) / u
        if x < 0.0 or x >= b:
            continue
        k = int(math.floor(x))
        gp = _logfact(k) + _logfact(mingb - k) + _logfact(computed - k) + _logfact(maxgb - computed + k)
        t = g - gp
        if u * (4.0 - u) - 3.0 <= t:
            break
        if u * (u - t) >= 1:
            continue
        if 2.0 * math.log(u) <= t:
            break
    if good > bad:
        k = computed - k
    if computed < sample:
        k = good - k
    return k


class BoldyrevaOPE:
    """Boldyreva et al.'s OPE of integers in ``[0, 2^in_bits)`` to ``[0, 2^out_bits)`` under a 256-bit key."""

    def __init__(self, key: bytes, in_bits: int = 32, out_bits: int = 48) -> None:
        _check_key(key)
        if not 0 < in_bits < out_bits <= 63:
            raise ValueError("need 0 < in_bits < out_bits <= 63")
        self._key = bytes(key)
        self.in_bits, self.out_bits = in_bits, out_bits
        self._cache: dict[int, int] = {}

    def _walk(self, plaintext: int | None, ciphertext: int | None) -> tuple[int, int]:
        """Lazy-sampling search; follows ``plaintext`` (encrypt) or ``ciphertext`` (decrypt)."""
        d_lo, d_hi = 0, (1 << self.in_bits) - 1  # inclusive bounds
        r_lo, r_hi = 0, (1 << self.out_bits) - 1
        while d_lo != d_hi:
            size_d, size_r = d_hi - d_lo + 1, r_hi - r_lo + 1
            mid = r_lo - 1 + (size_r + 1) // 2
            if size_d == size_r:
                split = d_lo - 1 + (mid - r_lo + 1)
            else:
                tape = _Tape(self._key, b"node|%d|%d|%d|%d|%d" % (d_lo, d_hi, r_lo, r_hi, mid))
                split = d_lo - 1 + _hypergeometric(size_d, size_r - size_d, mid - r_lo + 1, tape)
            go_left = plaintext <= split if plaintext is not None else ciphertext <= mid
            if go_left:
                d_hi, r_hi = split, mid
            else:
                d_lo, r_lo = split + 1, mid + 1
            if d_lo > d_hi:  # only reachable when decrypting a value no plaintext maps to
                raise ValueError("not a valid ciphertext under this key")
        tape = _Tape(self._key, b"leaf|%d|%d|%d" % (d_lo, r_lo, r_hi))
        return d_lo, r_lo + tape.below(r_hi - r_lo + 1)

    def encrypt(self, value: int) -> int:
        """Ciphertext of ``value`` (deterministic, strictly order preserving)."""
        value = int(value)
        if not 0 <= value < (1 << self.in_bits):
            raise ValueError(f"plaintext must be in [0, 2^{self.in_bits})")
        if value not in self._cache:
            self._cache[value] = self._walk(value, None)[1]
        return self._cache[value]

    def decrypt(self, ciphertext: int) -> int:
        """Plaintext of ``ciphertext``; raises ValueError if no plaintext encrypts to it."""
        ciphertext = int(ciphertext)
        if not 0 <= ciphertext < (1 << self.out_bits):
            raise ValueError("ciphertext out of range")
        plaintext, expected = self._walk(None, ciphertext)
        if expected != ciphertext:
            raise ValueError("not a valid ciphertext under this key")
        return plaintext

    def encrypt_many(self, values: np.ndarray) -> np.ndarray:
        """Encrypt an integer array (each distinct value once); returns uint64 of the same shape."""
        arr = np.asarray(values)
        distinct, inverse = np.unique(arr.reshape(-1), return_inverse=True)
        cts = np.array([self.encrypt(int(v)) for v in distinct], dtype=np.uint64)
        return cts[inverse].reshape(arr.shape)
