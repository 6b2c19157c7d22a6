"""Property tests of the 2-party MPC engine against plaintext integer arithmetic.

Every protocol of `privboost.mpc.protocols.{arithmetic,boolean,compare}` and the ring/shares helpers is run on
hypothesis-chosen values (biased towards ring edges: 0, 1, 2^62, 2^63, 2^64 - 1, ...) through `run_local` (two
party threads and an in-process dealer) and compared with Python integers reduced mod 2^64. Exact protocols must
match exactly; `truncate` must return floor(x / 2^d) or floor(x / 2^d) + 1; the fixed-point products have the
error bound stated in their test.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privboost.mpc.gather import add_composed_difference, gather_add_into, gather_rows
from privboost.mpc.prg import SEED_BYTES, Prg, add_seeded_streams, add_streams_into
from privboost.mpc.protocols import arithmetic as ar
from privboost.mpc.protocols import boolean as bo
from privboost.mpc.protocols import compare as cmp
from privboost.mpc.ring import (
    DTYPE,
    RING_BITS,
    as_ring,
    decode_fixed,
    encode_fixed,
    pack_bits,
    ring_constant,
    to_signed,
    unpack_bits,
)
from privboost.mpc.runtime import run_local
from privboost.mpc.shares import reconstruct_arith, reconstruct_bool, share_arith, share_bool
from privboost.mpc.transport import MpcError

MOD = 1 << RING_BITS
HALF = 1 << (RING_BITS - 1)
SAFE = 1 << 62  # truncation / comparison precondition |x| < 2^62

# run_local starts two party threads and a dealer thread per example: few examples, several values per example.
MPC = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOCAL = settings(max_examples=150, deadline=None)

# ---------------------------------------------------------------------------------------------------------------
# strategies

RING_EDGES = [0, 1, 2, 255, 256, 2**32 - 1, 2**32, 2**62 - 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**63 + 1,
              2**64 - 2**62, 2**64 - 2, 2**64 - 1]
ring_ints = st.one_of(st.sampled_from(RING_EDGES), st.integers(0, MOD - 1), st.integers(0, 1 << 16))
signed_ints = st.one_of(st.sampled_from([-HALF, -HALF + 1, -SAFE, -1, 0, 1, SAFE - 1, SAFE, HALF - 1]),
                        st.integers(-HALF, HALF - 1), st.integers(-(1 << 20), 1 << 20))
safe_edges = [-(SAFE - 1), -(SAFE - 2), -(SAFE // 2), -(1 << 16), -(1 << 16) - 1, -2, -1, 0, 1, 2, (1 << 16) - 1,
              1 << 16, SAFE // 2, SAFE - 2, SAFE - 1]
safe_ints = st.one_of(st.sampled_from(safe_edges), st.integers(-(SAFE - 1), SAFE - 1),
                      st.integers(-(1 << 24), 1 << 24))


def ring_lists(min_size: int = 1, max_size: int = 24) -> st.SearchStrategy[list[int]]:
    return st.lists(ring_ints, min_size=min_size, max_size=max_size)


# hypothesis lists are mostly short: each example also appends a batch of uniformly random values (seeded by
# hypothesis, so failures replay), which exercises long carry chains, many packed bit words, etc.
seeds = st.integers(0, 2**32 - 1)
BULK = 96


def bulk_ring(seed: int, n: int = BULK) -> list[int]:
    """n uniform ring elements."""
    return np.random.default_rng(seed).integers(0, MOD, n, dtype=np.uint64).tolist()


def bulk_safe(seed: int, n: int = BULK) -> list[int]:
    """n signed values with |x| < 2^62 and random magnitudes (bit lengths 0..62)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-(SAFE - 1), SAFE, n, dtype=np.int64) >> rng.integers(0, 63, n, dtype=np.int64)
    return values.tolist()


def bulk_bits(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 2, n).tolist()


def u64(values: list[int]) -> np.ndarray:
    """Python ints (any sign) -> uint64 ring array."""
    return np.array([v % MOD for v in values], dtype=DTYPE)


def ints(arr: np.ndarray) -> list[int]:
    """uint64 array -> Python ints in [0, 2^64)."""
    return [int(v) for v in np.asarray(arr, DTYPE).ravel()]


def signed(arr: np.ndarray) -> list[int]:
    """uint64 array -> Python ints read as two's complement."""
    return [int(v) for v in to_signed(np.asarray(arr, DTYPE)).ravel()]


# ---------------------------------------------------------------------------------------------------------------
# running protocols


def run_arith(fn, *secrets: np.ndarray, frac_bits: int = 16):
    """Secret-share each secret with `Party.input` (owners alternate 0, 1, 0, ...) and return both parties' results
    of ``fn(party, *shares)``."""

    def program(party):
        shares = []
        for i, secret in enumerate(secrets):
            owner = i % 2
            shares.append(party.input(owner, secret if party.party_id == owner else None))
        return fn(party, *shares)

    return run_local(program, frac_bits=frac_bits).results


def run_given_shares(fn, *share_pairs: tuple[np.ndarray, np.ndarray], frac_bits: int = 16):
    """Give party p the p-th element of each (share0, share1) pair and return both results of fn(party, *shares)."""

    def program(party):
        return fn(party, *(pair[party.party_id] for pair in share_pairs))

    return run_local(program, frac_bits=frac_bits).results


def arith_result(fn, *secrets: np.ndarray, frac_bits: int = 16) -> np.ndarray:
    r0, r1 = run_arith(fn, *secrets, frac_bits=frac_bits)
    return reconstruct_arith(r0, r1)


# ---------------------------------------------------------------------------------------------------------------
# ring and shares helpers (local, no parties)


@LOCAL
@given(ring_lists(0, 40), st.binary(min_size=SEED_BYTES, max_size=SEED_BYTES))
def test_share_reconstruct_arith(values, seed):
    secret = u64(values)
    s0, s1 = share_arith(secret)
    assert s0.dtype == DTYPE and s1.dtype == DTYPE and s0.shape == secret.shape
    assert ints(reconstruct_arith(s0, s1)) == values
    # a seeded Prg gives reproducible shares, still reconstructing to the secret
    t0, t1 = share_arith(secret, Prg(seed))
    u0, _ = share_arith(secret, Prg(seed))
    assert np.array_equal(t0, u0)
    assert ints(reconstruct_arith(t0, t1)) == values


@LOCAL
@given(ring_lists(0, 40))
def test_share_reconstruct_bool(values):
    secret = u64(values)
    s0, s1 = share_bool(secret)
    assert ints(reconstruct_bool(s0, s1)) == values
    assert ints(s0 ^ s1) == values


def test_shares_of_signed_inputs_and_2d():
    secret = np.array([[-1, 0, -(2**63)], [5, 2**63 - 1, -7]], dtype=np.int64)
    s0, s1 = share_arith(secret)
    assert s0.shape == (2, 3)
    assert np.array_equal(to_signed(reconstruct_arith(s0, s1)), secret)


@LOCAL
@given(st.lists(st.integers(0, 1), max_size=300))
def test_pack_unpack_bits(bits):
    words = pack_bits(np.array(bits, dtype=np.uint8))
    assert words.dtype == DTYPE and words.shape == ((len(bits) + 63) // 64,)
    for i, b in enumerate(bits):  # bit i of word w is bits[64 w + i]
        assert (int(words[i // 64]) >> (i % 64)) & 1 == b
    if len(bits) % 64:  # the last word is padded with zero bits
        assert int(words[-1]) >> (len(bits) % 64) == 0
    assert unpack_bits(words, len(bits)).tolist() == bits


@LOCAL
@given(st.lists(ring_ints, max_size=10))
def test_unpack_pack_words(values):
    words = u64(values)
    assert np.array_equal(pack_bits(unpack_bits(words, 64 * len(values))), words)


@LOCAL
@given(st.lists(st.floats(-(2.0**30), 2.0**30, allow_nan=False), min_size=1, max_size=20),
       st.sampled_from([0, 1, 8, 16, 20]))
def test_encode_decode_fixed(values, frac_bits):
    enc = encode_fixed(np.array(values), frac_bits)
    assert enc.dtype == DTYPE
    scale = 2**frac_bits
    for v, e in zip(values, signed(enc), strict=True):
        assert e == round(v * scale)  # nearest, ties to even (as np.rint); v * 2^f is exact
    # |x| * 2^f <= 2^50 < 2^53: the decoding is exact, the only error is the rounding of the encoding
    assert np.all(np.abs(decode_fixed(enc, frac_bits) - np.array(values)) <= 2.0 ** -(frac_bits + 1))


def test_encode_fixed_rejects_out_of_range():
    for bad in (2.0**46, -(2.0**46), float("inf"), float("nan")):
        with pytest.raises(ValueError, match="fractional bits"):
            encode_fixed(np.array([1.0, bad]), 16)
    assert signed(encode_fixed(np.array([2.0**46 - 1]), 16)) == [(2**46 - 1) * 2**16]


def test_ring_helpers():
    assert as_ring(np.array([-1, 2], dtype=np.int64)).tolist() == [MOD - 1, 2]
    assert as_ring(np.array([True, False])).tolist() == [1, 0]
    assert as_ring(np.array([7], dtype=np.uint32)).dtype == DTYPE
    with pytest.raises(TypeError):
        as_ring(np.array([1.5]))
    assert int(ring_constant(-1)) == MOD - 1 and int(ring_constant(MOD + 3)) == 3
    with pytest.raises(ValueError, match="seed"):
        Prg(b"short")


@pytest.mark.parametrize("size, threads", [(0, 2), (1, 2), (7, 3), (4097, 2), (100_003, 2), (100_003, 1)])
def test_seeded_streams_in_parts_equal_whole_streams(size, threads):
    seeds = [bytes([i]) * SEED_BYTES for i in range(3)]
    signs = [False, True, False]
    start = np.arange(size, dtype=DTYPE) * np.uint64(0x9E3779B97F4A7C15)
    want = start.copy()
    add_streams_into(want, [(Prg(seed), sign) for seed, sign in zip(seeds, signs, strict=True)])
    got = start.copy()
    add_seeded_streams(got, list(zip(seeds, signs, strict=True)), threads=threads)
    np.testing.assert_array_equal(got, want)
    extra = [np.arange(size, dtype=DTYPE) * np.uint64(k + 3) - np.uint64(2**63) for k in range(2)]
    summed = start.copy()  # arrays added in the same pass: the plain modular sum
    add_seeded_streams(summed, list(zip(seeds, signs, strict=True)), threads=threads, arrays=tuple(extra))
    np.testing.assert_array_equal(summed, want + extra[0] + extra[1])
    with pytest.raises(ValueError, match="as many elements"):
        add_seeded_streams(start.copy(), [], arrays=(np.zeros(size + 1, DTYPE),))
    whole = Prg(seeds[0]).words(size + 6)
    np.testing.assert_array_equal(Prg(seeds[0], start_word=6).words(size), whole[6:])  # a stream from an offset
    with pytest.raises(ValueError, match="even"):
        Prg(seeds[0], start_word=3)


@pytest.mark.parametrize("before, count", [(0, 10), (3, 7), (5, 100), (4, 1), (2, 0)])
def test_split_off_stream_slices_equal_the_drawn_words(before, count):
    """A slice split off a stream (at even or odd word positions) expands to exactly the words that drawing would
    have given, as often as asked, and the stream goes on after it as if they had been drawn."""
    seed = bytes(range(SEED_BYTES))
    whole = Prg(seed).words(before + count + 20)
    prg = Prg(seed)
    prg.words(before)
    piece = prg.split_off(count)
    np.testing.assert_array_equal(prg.words(20), whole[before + count:])
    assert prg.words_drawn == before + count + 20
    for _ in range(2):
        np.testing.assert_array_equal(piece.words(count), whole[before:before + count])
    out = np.arange(count, dtype=DTYPE)
    piece.add_into(out, subtract=True)
    np.testing.assert_array_equal(out, np.arange(count, dtype=DTYPE) - whole[before:before + count])
    with pytest.raises(ValueError, match="words"):
        piece.add_into(np.zeros(count + 1, DTYPE))


@pytest.mark.parametrize("blocks, n, tail", [(1, 1, ()), (3, 5000, (2,)), (2, 9000, (3, 2)), (4, 7, ())])
def test_gathers_equal_numpy_fancy_indexing(blocks, n, tail):
    """The compiled gathers (several row ranges per block, run in parallel) equal numpy's indexing mod 2^64, for
    per-block and shared sources and any trailing shape; bad indices or shapes are refused."""
    rng = np.random.default_rng(n)
    values = rng.integers(0, 2**64, (blocks, n, *tail), dtype=DTYPE)
    one = values[0].copy()
    perms = np.stack([rng.permutation(n) for _ in range(blocks)])
    second = np.stack([rng.permutation(n) for _ in range(blocks)])
    out = rng.integers(0, 2**64, (blocks, n, *tail), dtype=DTYPE)
    expected_rows = np.stack([values[h][perms[h]] for h in range(blocks)])
    np.testing.assert_array_equal(gather_rows(values, perms), expected_rows)
    np.testing.assert_array_equal(gather_rows(one, perms, shared=True), np.stack([one[p] for p in perms]))
    np.testing.assert_array_equal(gather_add_into(out.copy(), values, perms), out + expected_rows)
    np.testing.assert_array_equal(gather_add_into(out.copy(), one, perms, shared=True),
                                  out + np.stack([one[p] for p in perms]))
    subtrahend = rng.integers(0, 2**64, (blocks, n, *tail), dtype=DTYPE)
    composed = np.stack([values[h][perms[h]][second[h]] - subtrahend[h][second[h]] for h in range(blocks)])
    np.testing.assert_array_equal(add_composed_difference(out.copy(), values, subtrahend, perms, second),
                                  out + composed)
    with pytest.raises(ValueError, match="out of range"):
        gather_rows(values, perms + 1)
    with pytest.raises(ValueError):
        gather_rows(values, perms[:, :-1] if n > 1 else np.zeros((blocks, 2), np.int64))
    if n > 1:  # a view with one row per block is contiguous anyway
        with pytest.raises(ValueError, match="contiguous"):
            gather_add_into(out[:, ::-1], values, perms)


# ---------------------------------------------------------------------------------------------------------------
# runtime opening helpers


@MPC
@given(ring_lists(1, 20), st.lists(st.integers(0, 1), min_size=1, max_size=130), seeds)
def test_open_reveal_helpers(values, bits, seed):
    values = values + bulk_ring(seed, 20)
    bits = bits + bulk_bits(seed, 200)
    x = u64(values)
    b = np.array(bits, dtype=DTYPE)
    bool_pair = share_bool(x)
    bit_mask = np.array(np.random.default_rng().integers(0, 2, b.size), dtype=DTYPE)
    bit_pair = (bit_mask, b ^ bit_mask)

    def program(party):
        xs = party.input(0, x if party.party_id == 0 else None)
        opened = party.open(xs)
        many = party.open_many(xs, xs.reshape(-1, 1) * ring_constant(3))
        words = party.open_bool(bool_pair[party.party_id])
        opened_bits = party.open_bits(bit_pair[party.party_id])
        to_one = party.reveal_to(1, xs)
        return opened, many, words, opened_bits, to_one

    r0, r1 = run_local(program).results
    for res in (r0, r1):
        assert ints(res[0]) == values
        assert ints(res[1][0]) == values and res[1][1].shape == (len(values), 1)
        assert ints(res[1][1]) == [3 * v % MOD for v in values]
        assert ints(res[2]) == values
        assert res[3].tolist() == bits
    assert r0[4] is None and ints(r1[4]) == values


def test_input_without_value_raises():
    with pytest.raises(MpcError) as info:
        run_local(lambda party: party.input(0, None))
    assert isinstance(info.value.__cause__, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# arithmetic.py


@MPC
@given(ring_lists(1, 16), st.integers(-HALF, MOD - 1), st.integers(-(MOD * 3), MOD * 3))
def test_add_public_mul_public(values, constant, factor):
    x = u64(values)
    const_array = u64([(v * 7 + 1) for v in values])

    def fn(party, xs):
        return (ar.add_public(party, xs, constant), ar.add_public(party, xs, const_array),
                ar.mul_public(xs, factor), ar.mul_public(xs, const_array), ar.mul_public(xs, np.int64(-3)))

    (a0, b0, c0, d0, e0), (a1, b1, c1, d1, e1) = run_arith(fn, x)
    assert ints(reconstruct_arith(a0, a1)) == [(v + constant) % MOD for v in values]
    assert ints(reconstruct_arith(b0, b1)) == [(v + (v * 7 + 1)) % MOD for v in values]
    assert ints(reconstruct_arith(c0, c1)) == [v * factor % MOD for v in values]
    assert ints(reconstruct_arith(d0, d1)) == [v * ((v * 7 + 1) % MOD) % MOD for v in values]
    assert ints(reconstruct_arith(e0, e1)) == [-3 * v % MOD for v in values]


@MPC
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_prefix_sum(rows, cols, data):
    values = data.draw(st.lists(ring_ints, min_size=rows * cols, max_size=rows * cols))
    x = u64(values).reshape(rows, cols)
    r0, r1 = run_arith(lambda party, xs: (ar.prefix_sum(xs), ar.prefix_sum(xs, axis=0)), x)
    along_cols, along_rows = reconstruct_arith(r0[0], r1[0]), reconstruct_arith(r0[1], r1[1])
    grid = [[int(v) for v in row] for row in x]
    for i in range(rows):
        for j in range(cols):
            assert int(along_cols[i, j]) == sum(grid[i][: j + 1]) % MOD
            assert int(along_rows[i, j]) == sum(grid[k][j] for k in range(i + 1)) % MOD


@MPC
@given(st.data(), st.integers(1, 24), seeds)
def test_mul_exact(data, n, seed):
    xs = data.draw(st.lists(ring_ints, min_size=n, max_size=n)) + bulk_ring(seed)
    ys = data.draw(st.lists(ring_ints, min_size=n, max_size=n)) + bulk_ring(seed + 1)
    z = arith_result(ar.mul, u64(xs), u64(ys))
    assert ints(z) == [a * b % MOD for a, b in zip(xs, ys, strict=True)]


def test_mul_broadcasts():
    x = u64([1, 2, 3, MOD - 1, 2**63, 5]).reshape(2, 3)
    y = u64([7, MOD - 2, 2**32])
    z = arith_result(ar.mul, x, y)
    assert z.shape == (2, 3)
    assert ints(z) == [a * b % MOD for a, b in zip(ints(x), ints(np.broadcast_to(y, (2, 3))), strict=True)]


def matmul_ref(x: list[list[int]], y: list[list[int]]) -> list[list[int]]:
    return [[sum(x[i][t] * y[t][j] for t in range(len(y))) % MOD for j in range(len(y[0]))] for i in range(len(x))]


def transpose(x: list[list[int]]) -> list[list[int]]:
    return [list(col) for col in zip(*x, strict=True)]


def matrices(rows: int, cols: int) -> st.SearchStrategy[list[list[int]]]:
    return st.lists(st.lists(ring_ints, min_size=cols, max_size=cols), min_size=rows, max_size=rows)


@MPC
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.data())
def test_matmul_exact(n, m, k, data):
    x = data.draw(matrices(n, m))
    y = data.draw(matrices(m, k))
    z = arith_result(ar.matmul, u64(sum(x, [])).reshape(n, m), u64(sum(y, [])).reshape(m, k))
    assert z.shape == (n, k)
    assert [ints(row) for row in z] == matmul_ref(x, y)


@MPC
@given(st.integers(1, 6), st.integers(1, 4), st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_matmul_fixed_t_reuses_one_fixed_operand(n, m, widths, data):
    x = data.draw(matrices(n, m))
    x2 = data.draw(matrices(n, 2))
    ys = [data.draw(matrices(n, k)) for k in widths]
    secrets = [u64(sum(x, [])).reshape(n, m), u64(sum(x2, [])).reshape(n, 2)]
    secrets += [u64(sum(y, [])).reshape(n, k) for y, k in zip(ys, widths, strict=True)]

    def fn(party, xs, x2s, *yss):
        fixed = ar.share_fixed_operand(party, xs)
        other = ar.share_fixed_operand(party, x2s)  # a second fixed operand interleaved with the first
        assert fixed.shape == (n, m)
        out = []
        for ys_ in yss:
            out.append(ar.matmul_fixed_t(party, fixed, ys_))
            out.append(ar.matmul_fixed_t(party, other, ys_))
        return out

    r0, r1 = run_arith(fn, *secrets)
    for i, y in enumerate(ys):
        assert [ints(row) for row in reconstruct_arith(r0[2 * i], r1[2 * i])] == matmul_ref(transpose(x), y)
        assert [ints(row) for row in reconstruct_arith(r0[2 * i + 1], r1[2 * i + 1])] == matmul_ref(transpose(x2), y)


@MPC
@given(st.lists(safe_ints, min_size=1, max_size=24), st.one_of(st.sampled_from([1, 16, 61, 62]), st.integers(1, 62)),
       seeds)
def test_truncate_within_one_ulp(values, bits, seed):
    values = values + [0, -1, 1, SAFE - 1, -(SAFE - 1), 1 << bits, -(1 << bits), (1 << bits) - 1] + bulk_safe(seed)
    values = [v for v in values if abs(v) < SAFE]
    out = signed(arith_result(lambda party, xs: ar.truncate(party, xs, bits), u64(values)))
    for v, t in zip(values, out, strict=True):
        assert t - (v >> bits) in (0, 1), (v, bits, t)  # Python's >> is floor division by 2^bits


@MPC
@given(st.lists(safe_ints, min_size=1, max_size=16), st.sampled_from([8, 16, 20]), seeds)
def test_truncate_default_bits_is_frac_bits(values, frac_bits, seed):
    values = values + bulk_safe(seed)
    out = signed(arith_result(ar.truncate, u64(values), frac_bits=frac_bits))
    for v, t in zip(values, out, strict=True):
        assert t - (v >> frac_bits) in (0, 1)


reals = st.floats(-(2.0**10), 2.0**10, allow_nan=False, allow_infinity=False)


@MPC
@given(st.lists(st.tuples(reals, reals), min_size=1, max_size=16), st.sampled_from([8, 16, 20]))
def test_mul_fixed_error_bound(pairs, frac_bits):
    """mul_fixed(enc(a), enc(b)) is floor(A*B / 2^f) or that + 1 for the encodings A, B, so as reals
    |result - a*b| <= 2^-f (truncation) + (|a| + |b|) * 2^-(f+1) + 2^-(2f+2) (rounding of the two encodings)."""
    a = np.array([p[0] for p in pairs] + [0.0, -1.5, 2.0**10])
    b = np.array([p[1] for p in pairs] + [-3.25, -1.5, -(2.0**10)])
    ea, eb = encode_fixed(a, frac_bits), encode_fixed(b, frac_bits)
    out = arith_result(ar.mul_fixed, ea, eb, frac_bits=frac_bits)
    for big_a, big_b, t in zip(signed(ea), signed(eb), signed(out), strict=True):
        assert t - ((big_a * big_b) >> frac_bits) in (0, 1)
    ulp = 2.0**-frac_bits
    bound = ulp + (np.abs(a) + np.abs(b)) * ulp / 2 + ulp * ulp / 4
    assert np.all(np.abs(decode_fixed(out, frac_bits) - a * b) <= bound * (1 + 1e-12))


@MPC
@given(st.lists(reals, min_size=1, max_size=16), st.floats(-256.0, 256.0, allow_nan=False),
       st.sampled_from([None, 8, 24]))
def test_scale_fixed_error_bound(xs, factor, bits):
    """scale_fixed(enc_f(x), c) is floor(X * C / 2^b) or + 1 for C = round(c 2^b), so with f = frac_bits:
    |result - x*c| <= 2^-f + |c| 2^-(f+1) + |x| 2^-(b+1) + 2^-(f+b+2)."""
    f = 16
    b = f if bits is None else bits
    x = np.array(xs + [0.0, -(2.0**10)])
    ex = encode_fixed(x, f)
    out = arith_result(lambda party, s: ar.scale_fixed(party, s, factor, bits), ex, frac_bits=f)
    big_c = round(factor * 2**b)  # encode_fixed's rounding (np.rint: nearest, ties to even, like round)
    for big_x, t in zip(signed(ex), signed(out), strict=True):
        assert t - ((big_x * big_c) >> b) in (0, 1)
    bound = 2.0**-f + abs(factor) * 2.0 ** -(f + 1) + np.abs(x) * 2.0 ** -(b + 1) + 2.0 ** -(f + b + 2)
    assert np.all(np.abs(decode_fixed(out, f) - x * factor) <= bound * (1 + 1e-12))


# ---------------------------------------------------------------------------------------------------------------
# boolean.py


@MPC
@given(st.data(), st.integers(1, 20), seeds)
def test_and_or_not_words(data, n, seed):
    xs = data.draw(st.lists(ring_ints, min_size=n, max_size=n)) + bulk_ring(seed)
    ys = data.draw(st.lists(ring_ints, min_size=n, max_size=n)) + bulk_ring(seed + 1)

    def fn(party, xw, yw):
        return bo.and_words(party, xw, yw), bo.or_words(party, xw, yw), bo.not_words(party, xw)

    r0, r1 = run_given_shares(fn, share_bool(u64(xs)), share_bool(u64(ys)))
    assert ints(reconstruct_bool(r0[0], r1[0])) == [a & b for a, b in zip(xs, ys, strict=True)]
    assert ints(reconstruct_bool(r0[1], r1[1])) == [a | b for a, b in zip(xs, ys, strict=True)]
    assert ints(reconstruct_bool(r0[2], r1[2])) == [a ^ (MOD - 1) for a in xs]


@MPC
@given(ring_lists(1, 24), seeds)
def test_a2b_exact(values, seed):
    values = values + [0, 2**63, MOD - 1, 1, 2**63 - 1] + bulk_ring(seed)
    r0, r1 = run_arith(bo.a2b, u64(values))
    assert ints(reconstruct_bool(r0, r1)) == values


@MPC
@given(st.lists(st.tuples(ring_ints, ring_ints), min_size=1, max_size=24), seeds)
def test_a2b_for_chosen_share_pairs(pairs, seed):
    """A2B adds the two shares with a carry chain: check all share pairs, incl. full-length carries (2^64-1 + 1)."""
    pairs = pairs + [(MOD - 1, 1), (2**63, 2**63), (MOD - 1, MOD - 1), (0, 0), (1, MOD - 1), (2**63 - 1, 1)]
    carries = [(MOD - (1 << j), 1 << j) for j in range(64)] + [((1 << j) - 1, 1) for j in range(1, 64)]
    pairs = pairs + carries + list(zip(bulk_ring(seed), bulk_ring(seed + 1), strict=True))
    s0, s1 = u64([p[0] for p in pairs]), u64([p[1] for p in pairs])
    r0, r1 = run_given_shares(bo.a2b, (s0, s1))
    assert ints(reconstruct_bool(r0, r1)) == [(a + b) % MOD for a, b in pairs]


@MPC
@given(ring_lists(1, 24), seeds)
def test_msb(values, seed):
    values = values + [0, 2**63, MOD - 1, 2**63 - 1] + bulk_ring(seed)
    r0, r1 = run_arith(bo.msb, u64(values))
    assert ints(reconstruct_bool(r0, r1)) == [v >> 63 for v in values]


@MPC
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=150), seeds)
def test_b2a_bits(pairs, seed):
    pairs = pairs + list(zip(bulk_bits(seed, 200), bulk_bits(seed + 1, 200), strict=True))
    bits = [b for b, _ in pairs]
    mask = np.array([m for _, m in pairs], dtype=DTYPE)
    shares = (mask, np.array(bits, dtype=DTYPE) ^ mask)
    r0, r1 = run_given_shares(bo.b2a_bits, shares)
    assert ints(reconstruct_arith(r0, r1)) == bits


@MPC
@given(ring_lists(1, 8), seeds)
def test_bit_injection(values, seed):
    values = values + [0, MOD - 1, 2**63] + bulk_ring(seed, 8)
    r0, r1 = run_given_shares(bo.bit_injection, share_bool(u64(values)))
    out = reconstruct_arith(r0, r1)
    assert out.shape == (len(values), 64)
    assert [ints(row) for row in out] == [[(v >> j) & 1 for j in range(64)] for v in values]


# ---------------------------------------------------------------------------------------------------------------
# compare.py


@MPC
@given(st.lists(signed_ints, min_size=1, max_size=24), seeds)
def test_ltz_exact_on_whole_ring(values, seed):
    values = values + [0, -1, 1, -HALF, HALF - 1] + signed(u64(bulk_ring(seed)))
    out = arith_result(cmp.ltz, u64(values))
    assert ints(out) == [int(v < 0) for v in values]


diff_ints = st.one_of(st.sampled_from([0, 1, -1, HALF - 1, -(HALF - 1), HALF - 2, -(HALF - 2)]),
                      st.integers(-(HALF - 1), HALF - 1), st.integers(-1000, 1000))


@st.composite
def comparable_pairs(draw) -> tuple[int, int]:
    """(x, y) int64 values with |x - y| < 2^63 (the precondition of lt/le/gt/ge)."""
    x = draw(signed_ints)
    d = draw(diff_ints)
    y = x + d if -HALF <= x + d < HALF else x - d
    return x, y


@MPC
@given(st.lists(comparable_pairs(), min_size=1, max_size=24), seeds)
def test_comparisons_exact(pairs, seed):
    xs = signed(u64(bulk_ring(seed)))
    ds = bulk_safe(seed + 1) + signed(u64(bulk_ring(seed + 2)))[: BULK // 2]
    pairs = pairs + [(x, x + d if -HALF <= x + d < HALF else x - d) for x, d in zip(xs, ds, strict=False)]
    pairs = pairs + [(0, 0), (-1, -1), (5, 5), (0, -1), (-1, 0), (HALF - 1, 0), (0, HALF - 1), (-(HALF - 1), 0),
                     (0, -(HALF - 1)), (-HALF, -1), (-1, -HALF), (HALF - 1, 1), (-HALF, 0)]
    pairs = [(x, y) for x, y in pairs if abs(x - y) < HALF]
    x, y = u64([p[0] for p in pairs]), u64([p[1] for p in pairs])

    def fn(party, xs, ys):
        return [cmp.lt(party, xs, ys), cmp.le(party, xs, ys), cmp.gt(party, xs, ys), cmp.ge(party, xs, ys)]

    r0, r1 = run_arith(fn, x, y)
    expected = [[int(a < b) for a, b in pairs], [int(a <= b) for a, b in pairs],
                [int(a > b) for a, b in pairs], [int(a >= b) for a, b in pairs]]
    got = [ints(reconstruct_arith(s0, s1)) for s0, s1 in zip(r0, r1, strict=True)]
    assert got == expected


@MPC
@given(ring_lists(1, 12), ring_lists(1, 12), seeds)
def test_eq_exact(xs, others, seed):
    xs = xs + bulk_ring(seed, 32)
    others = others + bulk_ring(seed + 1, 32)
    # equal, differing only in the top bit, only in the bottom bit, and arbitrary pairs
    left = xs + xs + xs + others + [0, 0, MOD - 1, 2**63]
    right = xs + [v ^ (1 << 63) for v in xs] + [v ^ 1 for v in xs] + list(reversed(others)) + [0, 2**63, 0, 2**63]
    out = arith_result(cmp.eq, u64(left), u64(right))
    assert ints(out) == [int(a == b) for a, b in zip(left, right, strict=True)]


@MPC
@given(st.lists(st.tuples(st.integers(0, 1), ring_ints, ring_ints), min_size=1, max_size=24), seeds)
def test_select(rows, seed):
    rows = rows + list(zip(bulk_bits(seed, BULK), bulk_ring(seed + 1), bulk_ring(seed + 2), strict=True))
    cond, a, b = ([r[i] for r in rows] for i in range(3))
    out = arith_result(cmp.select, u64(cond), u64(a), u64(b))
    assert ints(out) == [x if c else y for c, x, y in rows]


# ---------------------------------------------------------------------------------------------------------------
# wrong calls and failures


def _cause_of_failed_run(program) -> BaseException:
    with pytest.raises(MpcError) as info:
        run_local(program, timeout_s=10.0)
    assert info.value.__cause__ is not None
    return info.value.__cause__


def test_matmul_shape_mismatch_raises_value_error():
    def program(party):
        x = party.input(0, np.zeros((2, 3), DTYPE) if party.is_leader else None)
        y = party.input(1, np.zeros((2, 3), DTYPE) if not party.is_leader else None)
        return ar.matmul(party, x, y)

    cause = _cause_of_failed_run(program)
    assert isinstance(cause, ValueError) and "cannot multiply (2, 3) by (2, 3)" in str(cause)


def test_matmul_fixed_t_row_mismatch_raises_value_error():
    def program(party):
        fixed = ar.share_fixed_operand(party, party.public(np.ones((3, 2), DTYPE)))
        return ar.matmul_fixed_t(party, fixed, party.public(np.ones((4, 1), DTYPE)))

    cause = _cause_of_failed_run(program)
    assert isinstance(cause, ValueError) and "must have 3 rows" in str(cause)


@pytest.mark.parametrize("bits", [0, -1, 63, 64])
def test_truncate_bits_out_of_range_raises_value_error(bits):
    cause = _cause_of_failed_run(lambda party: ar.truncate(party, party.public(np.ones(3, DTYPE)), bits))
    assert isinstance(cause, ValueError) and "can truncate by 1..62 bits" in str(cause)


@pytest.mark.parametrize("failing", [0, 1])
@pytest.mark.parametrize("when", ["before", "middle"])
def test_run_local_surfaces_party_exception(failing, when):
    """One party raising must end the run promptly with MpcError caused by the original exception (not a hang, and
    not the other party's PeerAborted)."""

    class Boom(Exception):
        pass

    def program(party):
        x = party.input(0, np.arange(8, dtype=DTYPE) if party.is_leader else None)
        if when == "middle":
            x = ar.mul(party, x, x)
        if party.party_id == failing:
            raise Boom(f"party {failing} gives up")
        y = ar.mul(party, x, x)  # the other party waits for an opening that never comes
        return cmp.ltz(party, y)

    before = threading.active_count()
    start = time.monotonic()
    with pytest.raises(MpcError, match="gives up") as info:
        run_local(program, timeout_s=20.0)
    assert time.monotonic() - start < 5.0
    assert isinstance(info.value.__cause__, Boom)
    time.sleep(0.05)
    assert threading.active_count() <= before + 1  # party threads joined (the dealer daemon may still be exiting)
