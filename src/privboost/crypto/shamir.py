"""Shamir secret sharing (Shamir 1979) over GF(p), p = 2^521 - 1 (a Mersenne prime), with Python ints.

A secret of at most 64 bytes, read as a big-endian integer s < 2^512 < p, is the constant term of a polynomial f of
degree t - 1 whose other t - 1 coefficients are drawn uniformly from GF(p) with `secrets.randbelow`. Holder ``i`` (a
non-negative id) receives f(i + 1). Any t shares give s = f(0) by Lagrange interpolation; any t - 1 shares are
uniformly distributed whatever s is, so they reveal nothing about it (information-theoretic; only the length bound
is public). A share is 68 bytes: the threshold t (2 bytes) then f(i + 1) (66 bytes), both big-endian.

Shares are not authenticated: a wrong share gives a wrong secret, caught only when the result does not fit in the
expected length (almost surely for secrets much shorter than 65 bytes). Carry shares in authenticated encryption.

Why not pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``: it shares only 16-byte secrets (GF(2^128)) and its
pure-Python combine costs milliseconds per secret (about 3 ms at t = 6), while secure aggregation reconstructs
thousands of seeds per training, mostly from a few recurring holder sets. ``combine_many`` computes the Lagrange
coefficients once per holder set (cached) and then costs t multiplications of Python ints per secret.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

PRIME = (1 << 521) - 1
MAX_SECRET_BYTES = 64
MAX_THRESHOLD = 0xFFFF
_VALUE_BYTES = 66
SHARE_BYTES = 2 + _VALUE_BYTES


def _check_holders(holders: Sequence[int]) -> tuple[int, ...]:
    ids = tuple(holders)
    for holder in ids:
        if not isinstance(holder, int) or isinstance(holder, bool) or not 0 <= holder < PRIME - 1:
            raise ValueError(f"holder ids must be non-negative ints, got {holder!r}")
    if len(set(ids)) != len(ids):
        raise ValueError("holder ids must be distinct")
    return ids


def _check_threshold(threshold: int, count: int) -> None:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold must be an int in [1, {MAX_THRESHOLD}], got {threshold!r}")
    if threshold > count:
        raise ValueError(f"threshold {threshold} exceeds the number of holders {count}")


def _poly_shares(secret: int, threshold: int, xs: Sequence[int], prime: int = PRIME) -> list[int]:
    """f(x) for each x, f of degree threshold - 1 with f(0) = secret and uniform other coefficients mod prime."""
    coefficients = [secrets.randbelow(prime) for _ in range(threshold - 1)]
    values = []
    for x in xs:
        acc = 0
        for coefficient in reversed(coefficients):  # Horner: ((c_{t-1} x + c_{t-2}) x + ...) x
            acc = (acc + coefficient) * x % prime
        values.append((acc + secret) % prime)
    return values


def split_many(secrets_: Sequence[bytes], threshold: int, holders: Sequence[int]) -> dict[int, list[bytes]]:
    """Shares of each secret (bytes, <= 64 long) for each holder: ``{holder: [share of secret 0, ...]}``."""
    ids = _check_holders(holders)
    _check_threshold(threshold, len(ids))
    xs = [holder + 1 for holder in ids]
    out: dict[int, list[bytes]] = {holder: [] for holder in ids}
    header = threshold.to_bytes(2, "big")
    for secret in secrets_:
        if not isinstance(secret, bytes | bytearray) or len(secret) > MAX_SECRET_BYTES:
            raise ValueError(f"secrets must be bytes of length <= {MAX_SECRET_BYTES}")
        values = _poly_shares(int.from_bytes(secret, "big"), threshold, xs)
        for holder, value in zip(ids, values, strict=True):
            out[holder].append(header + value.to_bytes(_VALUE_BYTES, "big"))
    return out


def split(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, bytes]:
    """``{holder: share}`` of ``secret`` (bytes, <= 64 long); any ``threshold`` shares recover it."""
    return {holder: shares[0] for holder, shares in split_many([secret], threshold, holders).items()}


@functools.lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum l_i f(x_i) for every f of degree < len(xs)."""
    coefficients = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def _decode(share: bytes) -> tuple[int, int]:
    if not isinstance(share, bytes | bytearray) or len(share) != SHARE_BYTES:
        raise ValueError(f"a share must be {SHARE_BYTES} bytes")
    threshold = int.from_bytes(share[:2], "big")
    value = int.from_bytes(share[2:], "big")
    if threshold < 1 or value >= PRIME:
        raise ValueError("malformed share")
    return threshold, value


def combine_many(shares: dict[int, list[bytes]], length: int) -> list[bytes]:
    """Secrets of ``length`` bytes from ``{holder: [share of secret 0, ...]}`` (same holders for every secret).

    Uses the ``threshold`` smallest holder ids; raises ValueError on fewer shares than the threshold, shares that
    disagree on it, malformed shares, or a result that does not fit in ``length`` bytes (inconsistent shares).
    """
    if not isinstance(length, int) or not 1 <= length <= MAX_SECRET_BYTES:
        raise ValueError(f"length must be in [1, {MAX_SECRET_BYTES}]")
    ids = sorted(_check_holders(list(shares)))
    if not ids:
        raise ValueError("no shares")
    count = len(shares[ids[0]])
    if any(len(shares[holder]) != count for holder in ids):
        raise ValueError("every holder must give one share per secret")
    decoded = {holder: [_decode(share) for share in shares[holder]] for holder in ids}
    thresholds = {threshold for row in decoded.values() for threshold, _ in row}
    if len(thresholds) > 1:
        raise ValueError("shares disagree on the threshold")
    if not thresholds:
        return []
    threshold = thresholds.pop()
    if len(ids) < threshold:
        raise ValueError(f"{len(ids)} shares given, the threshold is {threshold}")
    chosen = ids[:threshold]
    coefficients = _lagrange_at_zero(tuple(holder + 1 for holder in chosen))
    rows = [decoded[holder] for holder in chosen]
    out = []
    for k in range(count):
        secret = sum(c * row[k][1] for c, row in zip(coefficients, rows, strict=True)) % PRIME
        if secret >> (8 * length):
            raise ValueError(f"reconstructed value does not fit in {length} bytes: inconsistent or forged shares")
        out.append(secret.to_bytes(length, "big"))
    return out


def combine(shares: dict[int, bytes], length: int) -> bytes:
    """The secret (``length`` bytes) from ``{holder: share}``; ValueError on too few or malformed shares."""
    return combine_many({holder: [share] for holder, share in shares.items()}, length)[0]
