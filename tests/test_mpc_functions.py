"""Property tests of the higher-level MPC protocols against plaintext references, and their views.

Covered here (the ring ops, comparisons and fixed-point products are in test_mpc_protocols.py, their views in
test_mpc_views.py):
  * `protocols.argmax`: max and one-hot over the last axis, ties to the lowest index, with and without a tie tolerance
    (compared with a plaintext model of the same comparison tree);
  * `protocols.shuffle`: shuffle/unshuffle, shared permutations (apply/unapply), their batched versions, wrong
    shapes, and that the opened sigma∘pi is a uniformly random permutation independent of sigma and of each party's
    own permutation;
  * `protocols.fixedpoint`: the error bounds that the module docstring states, checked exactly (rationals) for
    reciprocal/divide and against float64 for exp_neg/sigmoid, at 12, 16 and 20 fractional bits and domain edges;
  * `protocols.arithmetic`: products with a fixed operand (X·Z, X^T·Y), precomputed products and their mismatches;
  * `protocols.boolean.msb` on ring edges and on chosen share pairs (long carries into bit 63);
  * the views (peer messages, dealer corrections, opened values) of shuffle / prepare_permutation / apply and of
    reciprocal / sigmoid: uniform words and the same distribution for two different secrets (chi-square).

Writing these tests found three library problems, since fixed: `argmax`'s and `divide`'s documented domains were
too wide (a tie tolerance, and the reciprocal's rounding, can push a value past 2^62), and
`SharedPermutation.unapply` lacked a row-count check.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from view_stats import PValues, same_distribution_pvalues, uniform_pvalues

from privboost.mpc.protocols import arithmetic as ar
from privboost.mpc.protocols import boolean as bo
from privboost.mpc.protocols import fixedpoint as fp
from privboost.mpc.protocols import shuffle as sh
from privboost.mpc.protocols.argmax import argmax
from privboost.mpc.ring import DTYPE, RING_BITS, encode_fixed, to_signed
from privboost.mpc.runtime import run_local
from privboost.mpc.shares import reconstruct_arith, reconstruct_bool
from privboost.mpc.transport import MpcError

MOD = 1 << RING_BITS
HALF = 1 << (RING_BITS - 1)
SAFE = 1 << 62  # |x| < 2^62: the precondition of truncation, comparisons and argmax

# every example starts two party threads and a dealer thread: few examples, many values per example
MPC = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(0, 2**32 - 1)
ring_ints = st.one_of(st.sampled_from([0, 1, 2, MOD - 1, MOD - 2, HALF, HALF - 1, HALF + 1, SAFE]),
                      st.integers(0, MOD - 1))


# ---------------------------------------------------------------------------------------------------------------
# helpers


def u64(values) -> np.ndarray:
    """Python ints (any sign), possibly nested in rectangular lists -> uint64 ring array of the same shape."""
    arr = np.asarray(values, dtype=object)
    return np.array([int(v) % MOD for v in arr.ravel()], dtype=DTYPE).reshape(arr.shape)


def ints(arr: np.ndarray) -> list[int]:
    """uint64 array -> Python ints in [0, 2^64), flattened."""
    return [int(v) for v in np.asarray(arr, DTYPE).ravel()]


def signed(arr: np.ndarray) -> list[int]:
    """uint64 array -> Python ints read as two's complement, flattened."""
    return [int(v) for v in to_signed(np.asarray(arr, DTYPE)).ravel()]


def run_arith(fn, *secrets: np.ndarray, frac_bits: int = 16):
    """Share each secret with `Party.input` (owners alternate 0, 1, 0, ...); both parties' results of fn."""

    def program(party):
        shares = [party.input(i % 2, s if party.party_id == i % 2 else None) for i, s in enumerate(secrets)]
        return fn(party, *shares)

    return run_local(program, frac_bits=frac_bits).results


def opened_result(fn, *secrets: np.ndarray, frac_bits: int = 16):
    """Run fn on shared secrets and open every array it returns (a single array or a tuple/list of arrays)."""

    def open_fn(party, *shares):
        out = fn(party, *shares)
        if isinstance(out, tuple | list):
            return [party.open(o) for o in out]
        return party.open(out)

    r0, r1 = run_arith(open_fn, *secrets, frac_bits=frac_bits)
    for a, b in zip(r0 if isinstance(r0, list) else [r0], r1 if isinstance(r1, list) else [r1], strict=True):
        assert np.array_equal(a, b)  # both parties open the same value
    return r0


def cause_of_failed_run(program) -> BaseException:
    with pytest.raises(MpcError) as info:
        run_local(program, timeout_s=10.0)
    assert info.value.__cause__ is not None
    return info.value.__cause__


def log_uniform_ints(rng: np.random.Generator, lo_bits: int, hi_bits: int, n: int) -> list[int]:
    """n ints in [2^lo_bits, 2^hi_bits) with a uniform bit length (every magnitude is represented)."""
    bits = rng.integers(lo_bits, hi_bits, n)
    return [int(rng.integers(1 << int(b), 1 << (int(b) + 1), dtype=np.uint64)) for b in bits]


def int_with_bits(lo_bits: int, hi_bits: int) -> st.SearchStrategy[int]:
    """Hypothesis ints in [2^lo_bits, 2^hi_bits) with a uniformly chosen bit length."""
    return st.integers(lo_bits, hi_bits - 1).flatmap(lambda b: st.integers(1 << b, (1 << (b + 1)) - 1))


# ---------------------------------------------------------------------------------------------------------------
# argmax.py


def first_argmax(row: list[int]) -> int:
    best = max(row)
    return row.index(best)


def tournament(row: list[int], tol: int) -> int:
    """Plaintext model of argmax's comparison tree: compare neighbours, a right candidate beats a left one iff it
    exceeds it by more than ``tol``; an odd one out goes up unchallenged. Returns the winner's index."""
    cand = [(v, i) for i, v in enumerate(row)]
    while len(cand) > 1:
        pairs = len(cand) // 2
        cand = [right if right[0] - left[0] > tol else left
                for left, right in zip(cand[0:2 * pairs:2], cand[1:2 * pairs:2], strict=True)] + cand[2 * pairs:]
    return cand[0][1]


ARGMAX_LENGTHS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 70]
argmax_edges = [-(SAFE - 1), -(SAFE - 2), -(SAFE // 2), -1, 0, 1, SAFE // 2, SAFE - 2, SAFE - 1]


@st.composite
def argmax_rows(draw, m: int, limit: int, tol: int) -> list[int]:
    """One row of m values with |v| <= limit: free, all equal, few distinct values (many ties), clustered within a
    few tolerances of each other, or seeded bulk values."""
    values = st.one_of(st.sampled_from([v for v in argmax_edges if abs(v) <= limit]),
                       st.integers(-limit, limit), st.integers(-3, 3))
    kind = draw(st.sampled_from(["free", "equal", "few", "cluster", "bulk"]))
    if kind == "free":
        return draw(st.lists(values, min_size=m, max_size=m))
    if kind == "equal":
        return [draw(values)] * m
    if kind == "few":
        pool = draw(st.lists(values, min_size=1, max_size=3))
        return draw(st.lists(st.sampled_from(pool), min_size=m, max_size=m))
    if kind == "cluster":
        base = draw(values)
        spread = 2 * tol + 2
        return [min(limit, max(-limit, base + d))
                for d in draw(st.lists(st.integers(-spread, spread), min_size=m, max_size=m))]
    rng = np.random.default_rng(draw(seeds))
    return [int(v) for v in rng.integers(-limit, limit + 1, m, dtype=np.int64)]


@st.composite
def argmax_inputs(draw, with_tolerance: bool):
    tol = draw(st.one_of(st.sampled_from([1, 2, 1 << 16]), st.integers(1, 1 << 40))) if with_tolerance else 0
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 2), (2, 1, 2)]))
    m = draw(st.one_of(st.sampled_from(ARGMAX_LENGTHS), st.integers(1, 70)))
    # with a tolerance the values keep |v| < 2^62 - tol, see test_argmax_tolerance_at_the_top_of_the_domain
    limit = SAFE - 1 - tol
    rows = [draw(argmax_rows(m, limit, tol)) for _ in range(math.prod(lead))]
    return tol, lead, m, rows


def run_argmax(tol: int, lead: tuple[int, ...], m: int, rows: list[list[int]]):
    x = u64(rows).reshape(*lead, m)

    def fn(party, xs):
        best_share, onehot_share = argmax(party, xs, tol)
        assert best_share.shape == lead and onehot_share.shape == (*lead, m)
        return best_share, onehot_share

    best, onehot = opened_result(fn, x)  # (Party.open returns a 0-d share's value with shape (1,))
    return signed(best), [ints(r) for r in onehot.reshape(-1, m)]


@MPC
@given(argmax_inputs(with_tolerance=False))
def test_argmax_exact_ties_to_lowest_index(case):
    tol, lead, m, rows = case
    best, onehot = run_argmax(tol, lead, m, rows)
    for row, b, hot in zip(rows, best, onehot, strict=True):
        winner = first_argmax(row)
        assert b == max(row), (row, b)
        assert hot == [int(i == winner) for i in range(m)], (row, hot)


@MPC
@given(argmax_inputs(with_tolerance=True))
def test_argmax_with_tie_tolerance(case):
    """A later candidate wins a comparison only if it exceeds the earlier one by more than the tolerance: the
    result equals the plaintext comparison tree; consequences checked on that model: rows whose values are all
    within the tolerance of each other resolve to index 0, a maximum ahead of every other value by more than the
    tolerance always wins, and the winner is at most tol·log2(width) below the maximum."""
    tol, lead, m, rows = case
    best, onehot = run_argmax(tol, lead, m, rows)
    levels = max(0, (m - 1).bit_length())
    for row, b, hot in zip(rows, best, onehot, strict=True):
        winner = tournament(row, tol)
        assert hot == [int(i == winner) for i in range(m)], (row, tol, hot)
        assert b == row[winner]
        assert row[winner] >= max(row) - tol * levels
        if max(row) - min(row) <= tol:
            assert winner == 0
        top = first_argmax(row)
        if all(max(row) - v > tol for i, v in enumerate(row) if i != top):
            assert winner == top


def test_argmax_rejects_empty_last_axis():
    for shape in [(), (3, 0)]:
        cause = cause_of_failed_run(lambda party, s=shape: argmax(party, party.public(np.zeros(s, DTYPE))))
        assert isinstance(cause, ValueError) and "non-empty last axis" in str(cause)


def test_argmax_tolerance_at_the_top_of_the_domain():
    """With a tie tolerance the domain is |x| < 2^62 - tol (documented): its top value still wins against the padding.
    (Found while writing these tests: x = 2^62 - 1 with tol = 1 wrapped; the precondition now says so.)"""
    best, onehot = run_argmax(1, (), 3, [[0, 5, SAFE - 2]])
    assert best == [SAFE - 2] and onehot == [[0, 0, 1]]


# ---------------------------------------------------------------------------------------------------------------
# shuffle.py


@st.composite
def row_arrays(draw, n: int) -> np.ndarray:
    """A 1-D array of n ring values or a 2-D array of n rows."""
    cols = draw(st.sampled_from([None, 1, 3]))
    values = draw(st.lists(ring_ints, min_size=n * (cols or 1), max_size=n * (cols or 1)))
    arr = u64(values)
    return arr if cols is None else arr.reshape(n, cols)


@MPC
@given(st.one_of(st.sampled_from([1, 2, 3, 64]), st.integers(1, 40)), st.data())
def test_shuffle_unshuffle(n, data):
    """shuffle permutes rows (the same permutation, pi_0 then pi_1, for every array shuffled with one Shuffle, 1-D or
    2-D), unshuffle inverts it, and shuffle inverts unshuffle."""
    x = data.draw(row_arrays(n))
    y = data.draw(row_arrays(n))

    def fn(party, xs, ys, tag):
        s = sh.new_shuffle(party, n)
        assert s.size == n
        sx, sy, stag = sh.shuffle(party, s, xs), sh.shuffle(party, s, ys), sh.shuffle(party, s, tag)
        out = [sx, sy, stag, sh.unshuffle(party, s, sx), sh.shuffle(party, s, sh.unshuffle(party, s, ys))]
        return [party.open(o) for o in out] + [s.own]

    r0, r1 = run_arith(fn, x, y, np.arange(n, dtype=DTYPE))
    sx, sy, stag, back_x, back_y, own0 = r0
    own1 = r1[-1]
    perm = np.asarray(stag, np.int64)
    assert sorted(perm.tolist()) == list(range(n))  # a permutation
    assert np.array_equal(perm, own0[own1])  # x[pi_0][pi_1]
    assert sx.shape == x.shape and np.array_equal(sx, x[perm])
    assert sy.shape == y.shape and np.array_equal(sy, y[perm])  # the same permutation for every array
    assert np.array_equal(back_x, x) and np.array_equal(back_y, y)
    assert all(np.array_equal(a, b) for a, b in zip(r0[:5], r1[:5], strict=True))


permutations = st.integers(1, 40).flatmap(lambda n: st.permutations(list(range(n))))


@MPC
@given(permutations, st.data())
def test_shared_permutation_apply_unapply(sigma, data):
    """apply moves row i to destinations[i]; unapply inverts it (and on its own gathers y[sigma[i]]); the opened
    `revealed` is sigma∘pi for the shuffle pi = pi_0 then pi_1, the same for both parties."""
    n = len(sigma)
    x = data.draw(row_arrays(n))
    y = data.draw(row_arrays(n))

    def fn(party, dest, xs, ys):
        perm = sh.prepare_permutation(party, dest)
        moved = perm.apply(party, xs)
        out = [moved, perm.unapply(party, moved), perm.unapply(party, ys), perm.apply(party, ys)]
        return [party.open(o) for o in out] + [perm.revealed, perm.shuffle.own]

    r0, r1 = run_arith(fn, np.array(sigma, DTYPE), x, y)
    moved, back, gathered, moved_y, revealed, own0 = r0
    dest = np.array(sigma)
    expected = np.empty_like(x)
    expected[dest] = x
    assert moved.shape == x.shape and np.array_equal(moved, expected)
    assert np.array_equal(back, x)
    assert np.array_equal(gathered, y[dest])
    expected_y = np.empty_like(y)
    expected_y[dest] = y
    assert np.array_equal(moved_y, expected_y)
    assert np.array_equal(revealed, r1[4]) and revealed.dtype == np.int64
    assert np.array_equal(revealed, dest[own0[r1[5]]])  # sigma∘pi


@pytest.mark.parametrize("destinations", [[0, 0], [1, 1, 0], [0, 1, 3], [1, 2, 3], [0, MOD - 1, 1], [5],
                                          [2**63, 0]])
def test_prepare_permutation_rejects_a_non_permutation(destinations):
    def program(party):
        dest = party.input(0, u64(destinations) if party.is_leader else None)
        return sh.prepare_permutation(party, dest)

    cause = cause_of_failed_run(program)
    assert isinstance(cause, ValueError) and "not a permutation" in str(cause)


def _public(party, shape):
    return party.public(np.zeros(shape, DTYPE))


@pytest.mark.parametrize("case", ["shuffle_rows", "shuffle_scalar", "unshuffle_rows", "unshuffle_2d", "empty",
                                  "negative", "prepare_2d", "apply_rows"])
def test_shuffle_shape_errors_raise_value_error(case):
    def program(party):
        if case == "empty":
            return sh.new_shuffle(party, 0)
        if case == "negative":
            return sh.new_shuffle(party, -2)
        if case == "prepare_2d":
            return sh.prepare_permutation(party, party.public(np.arange(4, dtype=DTYPE).reshape(2, 2)))
        if case == "apply_rows":
            perm = sh.prepare_permutation(party, party.public(np.array([1, 0, 2], DTYPE)))
            return perm.apply(party, _public(party, (4,)))
        s = sh.new_shuffle(party, 3)
        fn = sh.shuffle if case.startswith("shuffle") else sh.unshuffle
        shape = {"shuffle_rows": (4,), "shuffle_scalar": (), "unshuffle_rows": (2,), "unshuffle_2d": (2, 3)}[case]
        return fn(party, s, _public(party, shape))

    cause = cause_of_failed_run(program)
    assert isinstance(cause, ValueError), cause


@MPC
@given(st.integers(1, 4), st.one_of(st.sampled_from([1, 2, 5]), st.integers(1, 20)), st.sampled_from([None, 2]),
       st.data())
def test_batched_shuffles_and_permutations(count, n, cols, data):
    """shuffle_batch shuffles block h by shuffle h (pi_0[h] then pi_1[h]), unshuffle_batch inverts it; the batched
    prepare_permutations + apply moves x's row i to sigma_h[i] in block h and reveals sigma_h∘pi_h."""
    sigmas = [data.draw(st.permutations(list(range(n)))) for _ in range(count)]
    shape = (count, n) if cols is None else (count, n, cols)
    blocks = u64(data.draw(st.lists(ring_ints, min_size=math.prod(shape), max_size=math.prod(shape)))).reshape(shape)
    x = u64(data.draw(st.lists(ring_ints, min_size=math.prod(shape[1:]), max_size=math.prod(shape[1:])))).reshape(
        shape[1:])

    def fn(party, bs, xs, dest, tags):
        batch = sh.new_shuffle_batch(party, count, n)
        shuffled = sh.shuffle_batch(party, batch, bs)
        out = [shuffled, sh.unshuffle_batch(party, batch, shuffled), sh.shuffle_batch(party, batch, tags)]
        perms = sh.prepare_permutations(party, dest)
        out.append(perms.apply(party, xs))
        out.append(sh.shuffle_batch_shared(party, batch, xs))  # one block through every shuffle, masked once
        return [party.open(o) for o in out] + [batch.own, perms.revealed, perms.batch.own]

    tags = np.broadcast_to(np.arange(n, dtype=DTYPE), (count, n)).copy()
    r0, r1 = run_arith(fn, blocks, x, u64(sigmas), tags)
    shuffled, back, stags, applied, shared, own0, revealed, perm_own0 = r0
    own1, perm_own1 = r1[5], r1[7]
    assert np.array_equal(back, blocks)
    for h in range(count):
        pi = own0[h][own1[h]]
        assert np.array_equal(stags[h], pi)
        assert np.array_equal(shuffled[h], blocks[h][pi])
        assert np.array_equal(shared[h], x[pi])
        expected = np.empty_like(x)
        expected[np.array(sigmas[h])] = x
        assert np.array_equal(applied[h], expected)
        assert np.array_equal(revealed[h], np.array(sigmas[h])[perm_own0[h][perm_own1[h]]])
    assert np.array_equal(revealed, r1[6])


@FEW
@given(st.integers(1, 5), st.integers(1, 12), st.sampled_from([1, 3]), st.sampled_from([None, 1, 2]), st.data())
def test_chunked_and_precomputed_shuffles(count, n, cols, per_chunk, data):
    """`shuffle_chunks` in chunks of ``per_chunk`` shuffles (None: one chunk) equals whole-batch shuffling, for
    shared and per-block inputs; `SharedPermutationBatch.apply_chunks` after `precompute` (twice, so two prepared
    applications queue per chunk) moves x's rows to sigma_h as `apply` does; chunks come in order, cover the batch."""
    sigmas = [data.draw(st.permutations(list(range(n)))) for _ in range(count)]
    x = u64(data.draw(st.lists(ring_ints, min_size=n * cols, max_size=n * cols))).reshape(n, cols)
    blocks = u64(data.draw(st.lists(ring_ints, min_size=count * n * cols, max_size=count * n * cols)))
    blocks = blocks.reshape(count, n, cols)
    words = None if per_chunk is None else per_chunk * n * cols

    def gather(chunks):
        parts, results = zip(*chunks, strict=True)
        assert [p.start for p in parts] == sorted(p.start for p in parts) and parts[0].start == 0
        assert parts[-1].stop == count
        return np.concatenate(results)

    def fn(party, xs, bs, dest):
        batch = sh.new_shuffle_batch(party, count, n)
        shared = gather(sh.shuffle_chunks(party, batch, xs, True, words=words))
        separate = gather(sh.shuffle_chunks(party, batch, bs, False, words=words))
        perms = sh.prepare_permutations(party, dest)
        perms.precompute(party, xs.shape, count=2, words=words)
        applied = [gather(perms.apply_chunks(party, xs, words=words)) for _ in range(2)]
        applied.append(gather(perms.apply_chunks(party, xs, words=words)))  # nothing prepared any more
        return [party.open(o) for o in [shared, separate, *applied]] + [batch.own]

    r0, r1 = run_arith(fn, x, blocks, u64(sigmas))
    shared, separate, *applied, own0 = r0
    own1 = r1[-1]
    for h in range(count):
        pi = own0[h][own1[h]]
        assert np.array_equal(shared[h], x[pi])
        assert np.array_equal(separate[h], blocks[h][pi])
        expected = np.empty_like(x)
        expected[np.array(sigmas[h])] = x
        for result in applied:
            assert np.array_equal(result[h], expected)


def test_precomputed_shuffle_for_other_blocks_is_refused():
    """Masks prepared for blocks of one shape are not used on another: ValueError, not a wrong result."""
    def program(party):
        batch = sh.new_shuffle_batch(party, 2, 3)
        sh.precompute_shuffles(party, batch, (3, 2), shared=True)
        return sh.shuffle_batch_shared(party, batch, _public(party, (3, 4)))

    cause = cause_of_failed_run(program)
    assert isinstance(cause, ValueError), repr(cause)


@pytest.mark.parametrize("case", ["non_permutation", "one_dimensional", "batch_rows"])
def test_batched_permutation_errors_raise_value_error(case):
    def program(party):
        if case == "non_permutation":
            return sh.prepare_permutations(party, party.public(np.array([[0, 1, 2], [0, 0, 2]], DTYPE)))
        if case == "one_dimensional":
            return sh.prepare_permutations(party, party.public(np.array([0, 1, 2], DTYPE)))
        batch = sh.new_shuffle_batch(party, 2, 3)
        return sh.shuffle_batch(party, batch, _public(party, (2, 4)))

    cause = cause_of_failed_run(program)
    assert isinstance(cause, ValueError), repr(cause)


@pytest.mark.parametrize("rows", [4, 2])
def test_unapply_rejects_wrong_row_count(rows):
    """BUG (shuffle.py, `SharedPermutation.unapply`): unlike `apply`, it gathers ``y[self.revealed]`` before any
    shape check, so for a permutation of 3 rows a 4-row y is silently cut to 3 rows (y = [10, 11, 12, 13] with
    destinations [1, 0, 2] gives [11, 10, 12]) and a 2-row y raises IndexError instead of ValueError."""

    def program(party):
        perm = sh.prepare_permutation(party, party.public(np.array([1, 0, 2], DTYPE)))
        return perm.unapply(party, party.public(np.arange(10, 10 + rows, dtype=DTYPE)))

    cause = cause_of_failed_run(program)
    assert isinstance(cause, ValueError), repr(cause)


def _revealed_and_own(sigma: list[int], reps: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(party 0's own pi_0, party 1's own pi_1, revealed sigma∘pi) for ``reps`` fresh prepare_permutation calls."""

    def program(party):
        dest = party.input(1, np.array(sigma, DTYPE) if party.party_id == 1 else None)
        out = []
        for _ in range(reps):
            perm = sh.prepare_permutation(party, dest)
            out.append((perm.shuffle.own, perm.revealed))
        return out

    r0, r1 = run_local(program).results
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(r0, r1, strict=True))
    return [(a[0], b[0], a[1]) for a, b in zip(r0, r1, strict=True)]


PERMS3 = list(itertools.permutations(range(3)))


def _perm_index(p: np.ndarray) -> int:
    return PERMS3.index(tuple(int(v) for v in p))


def _independence_p(a: list[int], b: list[int]) -> float:
    """Chi-square p-value of independence of two categorical samples (6 x 6 table of permutations of 3)."""
    table = np.zeros((6, 6))
    np.add.at(table, (a, b), 1)
    return float(stats.chi2_contingency(table).pvalue)


REPS = 600  # 16.7 expected per cell of a 6 x 6 table


@pytest.fixture(scope="module")
def revealed_samples() -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    return {"identity": _revealed_and_own([0, 1, 2], REPS), "cycle": _revealed_and_own([2, 0, 1], REPS)}


def test_revealed_permutation_is_uniform_and_independent(revealed_samples):
    """The opened sigma∘pi is uniform over the 6 permutations of 3 for two different sigmas, has the same
    distribution for both, and is independent of each party's own permutation (which that party knows). Also
    checked: the shuffle pi = pi_0[pi_1] itself is uniform. Bonferroni over all p-values, alpha = 1e-4."""
    pvalues = {}
    revealed = {}
    for name, samples in revealed_samples.items():
        rev = [_perm_index(r) for _, _, r in samples]
        revealed[name] = rev
        pvalues[f"{name} uniform"] = float(stats.chisquare(np.bincount(rev, minlength=6)).pvalue)
        for party_id in (0, 1):
            own = [_perm_index(s[party_id]) for s in samples]
            pvalues[f"{name} independent of party {party_id}'s own"] = _independence_p(own, rev)
        pi = [_perm_index(s[0][s[1]]) for s in samples]
        pvalues[f"{name} shuffle uniform"] = float(stats.chisquare(np.bincount(pi, minlength=6)).pvalue)
    counts = np.array([np.bincount(revealed[name], minlength=6) for name in revealed_samples])
    pvalues["same for both sigmas"] = float(stats.chi2_contingency(counts).pvalue)
    worst = min(pvalues, key=pvalues.get)
    assert pvalues[worst] >= 1e-4 / len(pvalues), (worst, pvalues[worst])


def test_revealed_statistics_reject_a_leaky_opening(revealed_samples):
    """Sanity: the same statistics reject what a party would see if a step were missing: opening sigma∘pi_0 (pi_1
    skipped) is determined by party 0's own pi_0, and opening sigma itself is not uniform and depends on sigma."""
    samples = revealed_samples["cycle"]
    sigma = np.array([2, 0, 1])
    own0 = [_perm_index(s[0]) for s in samples]
    assert _independence_p(own0, [_perm_index(sigma[s[0]]) for s in samples]) < 1e-30
    constant = np.bincount([_perm_index(sigma)] * len(samples), minlength=6)
    assert stats.chisquare(constant).pvalue < 1e-30


# ---------------------------------------------------------------------------------------------------------------
# fixedpoint.py
#
# Inputs are drawn as ring encodings X (or as reals x that are then encoded); the reference is the value X / 2^f
# of the encoded input, i.e. decode(encode(x)). reciprocal and divide are checked with exact rationals; exp_neg and
# sigmoid against float64 math.exp, whose own error (< 1e-15 here) is allowed on top of the stated bound.

FRAC_BITS = [12, 16, 20]
FLOAT_SLACK = 1e-15
RECIPROCAL_MAX_BITS = 38  # the documented domain x < 2^(38 - f) (not read from the module: a change must show)
EXTRA_BITS = 8  # divide's reciprocal carries f + 8 fractional bits (the documented bound depends on it)


def _decode(arr: np.ndarray, f: int) -> list[Fraction]:
    return [Fraction(v, 1 << f) for v in signed(arr)]


@st.composite
def reciprocal_inputs(draw, f: int) -> list[int]:
    """Encodings X with 2^-f <= X / 2^f < 2^(38 - f), i.e. 1 <= X < 2^38: edges, log-uniform, encoded reals."""
    top = 1 << RECIPROCAL_MAX_BITS
    edges = [1, 2, 3, (1 << f) - 1, 1 << f, (1 << f) + 1, 1 << (f - 1), top // 2 - 1, top // 2, top - 2, top - 1]
    xs = draw(st.lists(st.one_of(int_with_bits(0, RECIPROCAL_MAX_BITS), st.integers(1, top - 1)), max_size=16))
    reals = draw(st.lists(st.floats(2.0**-f, 2.0 ** (RECIPROCAL_MAX_BITS - f - 1), allow_nan=False), max_size=8))
    xs += [int(v) for v in signed(encode_fixed(np.array(reals, float), f))] if reals else []
    rng = np.random.default_rng(draw(seeds))
    return edges + xs + log_uniform_ints(rng, 0, RECIPROCAL_MAX_BITS, 64)


@MPC
@given(st.sampled_from(FRAC_BITS), st.data())
def test_reciprocal_error_bound(f, data):
    """|r - 1/x| <= 2^-f + 2^-20 / x for 2^-f <= x < 2^(38 - f) (exact rational check)."""
    xs = [x for x in data.draw(reciprocal_inputs(f)) if 1 <= x < 1 << RECIPROCAL_MAX_BITS]
    out = _decode(opened_result(fp.reciprocal, u64(xs), frac_bits=f), f)
    for big_x, r in zip(xs, out, strict=True):
        x = Fraction(big_x, 1 << f)
        bound = Fraction(1, 1 << f) + Fraction(1, 1 << 20) / x
        assert abs(r - 1 / x) <= bound, (f, big_x, float(r), float(abs(r - 1 / x)), float(bound))


@MPC
@given(st.sampled_from([(16, 15, 31), (16, 0, 24), (12, 9, 32), (20, 19, 40)]), st.data())
def test_reciprocal_on_a_narrowed_domain(bounds, data):
    """With a known range 2^min_bits <= X < 2^max_bits (as the gains' hessian sums have) the reciprocal keeps its
    bound while bit-injecting only max_bits - min_bits positions (and, for max_bits <= 32, a shorter adder)."""
    f, low, high = bounds
    xs = [1 << low, (1 << low) + 1, (1 << high) - 1, 1 << (high - 1), (1 << (high - 1)) - 1]
    xs += data.draw(st.lists(int_with_bits(low, high), min_size=1, max_size=24))

    def narrowed(party, x):
        return fp.reciprocal(party, x, max_bits=high, min_bits=low)

    out = _decode(opened_result(narrowed, u64(xs), frac_bits=f), f)
    for big_x, r in zip(xs, out, strict=True):
        x = Fraction(big_x, 1 << f)
        bound = Fraction(1, 1 << f) + Fraction(1, 1 << 20) / x
        assert abs(r - 1 / x) <= bound, (f, big_x, float(r), float(abs(r - 1 / x)), float(bound))


@MPC
@given(st.integers(1, 61), st.lists(st.integers(-(1 << 62) + 1, (1 << 62) - 1), min_size=1, max_size=32))
def test_truncate_exact_is_floor(bits, values):
    """floor(x / 2^bits) with no error for every |x| < 2^62, at the ring's edges too (probabilistic truncation
    would be off by one for about half of the inputs)."""
    xs = values + [0, 1, -1, (1 << 62) - 1, -(1 << 62) + 1, (1 << bits) - 1, -(1 << bits)]
    out = signed(opened_result(lambda party, x: fp.truncate_exact(party, x, bits), u64(xs)))
    assert out == [x >> bits for x in xs]


def _divide_safe_top(big_d: int, f: int) -> int:
    """The largest |N| for the denominator D inside divide's stated domain (|n/d| < 2^(62-2f-8), |N| < 2^62) for
    which also |N|·R < 2^62 for the largest reciprocal R that `reciprocal` may return at f+8 fractional bits
    (R <= R_exact·(1 + 2^-19) + 1 with R_exact = 2^(2f+8) / D): see test_divide_at_the_top_of_its_domain."""
    shift = 2 * f + EXTRA_BITS
    stated_top = (SAFE * big_d - 1) >> shift
    r_max = Fraction(1 << shift, big_d) * (1 + Fraction(1, 1 << 19)) + 1
    return min(stated_top, SAFE - 1, math.ceil(SAFE / r_max) - 1)


@st.composite
def divide_inputs(draw, f: int) -> list[tuple[int, int]]:
    """(N, D) encodings: D in reciprocal's domain, N of either sign from 0 and ±tiny up to the top of the (safe)
    quotient domain for that D, incl. that top itself."""
    ds = draw(st.lists(st.one_of(int_with_bits(0, RECIPROCAL_MAX_BITS),
                                 st.sampled_from([1, 2, 1 << f, (1 << RECIPROCAL_MAX_BITS) - 1])), min_size=1,
                       max_size=12))
    pairs = []
    for d in ds:
        top = _divide_safe_top(d, f)
        mode = draw(st.sampled_from(["top", "tiny", "zero", "any", "bits"]))
        n = {"top": top, "tiny": draw(st.integers(1, 3)), "zero": 0, "any": draw(st.integers(0, top)),
             "bits": draw(int_with_bits(0, top.bit_length() + 1))}[mode]
        pairs.append((draw(st.sampled_from([1, -1])) * min(n, top), d))
    rng = np.random.default_rng(draw(seeds))
    for d in log_uniform_ints(rng, 0, RECIPROCAL_MAX_BITS, 48):
        top = _divide_safe_top(d, f)
        n = min(top, log_uniform_ints(rng, 0, top.bit_length() + 1, 1)[0])
        pairs.append((int(rng.choice([-1, 1])) * n, d))
    return pairs


@MPC
@given(st.sampled_from(FRAC_BITS), st.data())
def test_divide_error_bound(f, data):
    """|q - n/d| <= 2^-f + |n|·2^-(f+8) + 2^-20·|n|/d for d in reciprocal's domain and |n/d| < 2^(62-2f-8), except
    near the top of that quotient domain, where `divide` is broken (see test_divide_at_the_top_of_its_domain)."""
    pairs = data.draw(divide_inputs(f))
    assert all(abs(n) <= _divide_safe_top(d, f) for n, d in pairs)
    out = _decode(opened_result(fp.divide, u64([p[0] for p in pairs]), u64([p[1] for p in pairs]), frac_bits=f), f)
    extra = EXTRA_BITS
    for (big_n, big_d), q in zip(pairs, out, strict=True):
        n, d = Fraction(big_n, 1 << f), Fraction(big_d, 1 << f)
        bound = Fraction(1, 1 << f) + abs(n) / (1 << (f + extra)) + abs(n) / d / (1 << 20)
        assert abs(q - n / d) <= bound, (f, big_n, big_d, float(q), float(n / d), float(bound))


@st.composite
def exp_inputs(draw, f: int) -> list[int]:
    """Encodings T >= 0: 0, one ulp, around 1 and ln 2, where e^-t underflows, huge t up to 2^63 - 1."""
    edges = [0, 1, 2, (1 << f) - 1, 1 << f, (1 << f) + 1, round(math.log(2) * 2**f), 17 << f, 30 << f,
             (1 << 62) - 1, 1 << 62, HALF - 1]
    ts = draw(st.lists(st.one_of(int_with_bits(0, 63), st.integers(0, 40 << f)), max_size=16))
    reals = draw(st.lists(st.floats(0.0, 40.0, allow_nan=False), max_size=8))
    ts += [int(v) for v in signed(encode_fixed(np.array(reals, float), f))] if reals else []
    rng = np.random.default_rng(draw(seeds))
    return edges + ts + [int(v) for v in rng.integers(0, 40 << f, 400)] + log_uniform_ints(rng, 0, 63, 16)


@MPC
@given(st.sampled_from(FRAC_BITS), st.data())
def test_exp_neg_error_bound(f, data):
    """|r - e^-t| <= 2^-f + 2^-22 for every t >= 0."""
    ts = data.draw(exp_inputs(f))
    out = signed(opened_result(fp.exp_neg, u64(ts), frac_bits=f))
    bound = 2.0**-f + 2.0**-22 + FLOAT_SLACK
    for big_t, r in zip(ts, out, strict=True):
        t = big_t / 2**f
        err = abs(r / 2**f - math.exp(-t))
        assert err <= bound, (f, big_t, r / 2**f, err, bound)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


@st.composite
def sigmoid_inputs(draw, f: int) -> list[int]:
    """Encodings X with |X| < 2^62: 0, ±one ulp, ±1, the transition region, ±large up to the top of the domain."""
    edges = [0, 1, -1, 2, -2, 1 << f, -(1 << f), 20 << f, -(20 << f), SAFE - 1, -(SAFE - 1), SAFE - 2, -(SAFE - 2)]
    xs = draw(st.lists(st.one_of(int_with_bits(0, 62), st.integers(-(40 << f), 40 << f)), max_size=16))
    xs = [x * draw(st.sampled_from([1, -1])) for x in xs]
    reals = draw(st.lists(st.floats(-40.0, 40.0, allow_nan=False), max_size=8))
    xs += [int(v) for v in signed(encode_fixed(np.array(reals, float), f))] if reals else []
    rng = np.random.default_rng(draw(seeds))
    bulk = [int(v) for v in rng.integers(-(40 << f), 40 << f, 400)]
    bulk += [v * int(rng.choice([-1, 1])) for v in log_uniform_ints(rng, 0, 62, 16)]
    return edges + xs + bulk


@MPC
@given(st.sampled_from(FRAC_BITS), st.data())
def test_sigmoid_error_bound(f, data):
    """|r - sigmoid(x)| <= 2^-f + 2^-22 for |x| < 2^(62 - f)."""
    xs = data.draw(sigmoid_inputs(f))
    out = signed(opened_result(fp.sigmoid, u64(xs), frac_bits=f))
    bound = 2.0**-f + 2.0**-22 + FLOAT_SLACK
    for big_x, r in zip(xs, out, strict=True):
        err = abs(r / 2**f - _sigmoid(big_x / 2**f))
        assert err <= bound, (f, big_x, r / 2**f, err, bound)


def test_reciprocal_rejects_too_little_precision():
    cause = cause_of_failed_run(lambda party: fp.reciprocal(party, party.public(np.ones(2, DTYPE)), max_bits=54))
    assert isinstance(cause, ValueError) and "too little precision" in str(cause)


# ---------------------------------------------------------------------------------------------------------------
# arithmetic.py: fixed operands


def matrices(rows: int, cols: int) -> st.SearchStrategy[list[list[int]]]:
    return st.lists(st.lists(ring_ints, min_size=cols, max_size=cols), min_size=rows, max_size=rows)


def matmul_ref(x: list[list[int]], y: list[list[int]]) -> list[list[int]]:
    return [[sum(x[i][t] * y[t][j] for t in range(len(y))) % MOD for j in range(len(y[0]))] for i in range(len(x))]


def transpose(x: list[list[int]]) -> list[list[int]]:
    return [list(col) for col in zip(*x, strict=True)]


def as_lists(arr: np.ndarray) -> list[list[int]]:
    return [ints(row) for row in arr]


@MPC
@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1, max_size=3), st.booleans(),
       st.data())
def test_matmul_fixed_exact(n, m, widths, consume, data):
    """X·Z exactly mod 2^64 for a fixed operand X, several Z, interleaved with X^T·Y products on the same X (also
    when share_fixed_operand consumes the caller's share array)."""
    x = data.draw(matrices(n, m))
    zs = [data.draw(matrices(m, k)) for k in widths]
    ys = [data.draw(matrices(n, k)) for k in widths]
    secrets = [u64(x)] + [u64(z) for z in zs] + [u64(y) for y in ys]

    def fn(party, xs, *rest):
        fixed = ar.share_fixed_operand(party, xs, consume=consume)
        out = []
        for z, y in zip(rest[: len(widths)], rest[len(widths):], strict=True):
            out.append(ar.matmul_fixed(party, fixed, z))
            out.append(ar.matmul_fixed_t(party, fixed, y))
        return out

    r0, r1 = run_arith(fn, *secrets)
    for i, (z, y) in enumerate(zip(zs, ys, strict=True)):
        nn, tn = reconstruct_arith(r0[2 * i], r1[2 * i]), reconstruct_arith(r0[2 * i + 1], r1[2 * i + 1])
        assert nn.shape == (n, widths[i]) and as_lists(nn) == matmul_ref(x, z)
        assert tn.shape == (m, widths[i]) and as_lists(tn) == matmul_ref(transpose(x), y)


@MPC
@given(st.integers(1, 5), st.integers(1, 4), st.lists(st.integers(1, 3), min_size=1, max_size=4),
       st.lists(st.integers(1, 3), max_size=2), st.lists(st.integers(1, 3), max_size=3), st.data())
def test_precomputed_products_exact(n, m, pre, live, later, data):
    """precompute_products then matmul_fixed_t is exact: products from precomputed halves (``pre``, one batch of
    mixed widths: one V split by columns), then on-the-fly products once the queue is empty (``live``), then a
    second precomputation (``later``); an X·Z product on the same operand and a second fixed operand with its own
    precomputed product are interleaved and must not disturb the queue."""
    x = data.draw(matrices(n, m))
    x2 = data.draw(matrices(n, 2))
    widths = pre + live + later
    ys = [data.draw(matrices(n, k)) for k in widths]
    y2 = data.draw(matrices(n, 2))
    z = data.draw(matrices(m, 2))

    def fn(party, xs, x2s, y2s, zs, *yss):
        fixed = ar.share_fixed_operand(party, xs)
        other = ar.share_fixed_operand(party, x2s)
        ar.precompute_products(party, fixed, [])  # nothing
        ar.precompute_products(party, fixed, pre)
        ar.precompute_products(party, other, [2])
        assert len(fixed.prepared) == len(pre) and len(other.prepared) == 1
        out, extra = [], []
        for i, ys_ in enumerate(yss):
            if i == len(pre) + len(live):
                ar.precompute_products(party, fixed, later)
            out.append(ar.matmul_fixed_t(party, fixed, ys_))
            if i == 0:
                extra = [ar.matmul_fixed_t(party, other, y2s), ar.matmul_fixed(party, fixed, zs)]
        assert not fixed.prepared and not other.prepared
        return out, extra

    (out0, extra0), (out1, extra1) = run_arith(fn, u64(x), u64(x2), u64(y2), u64(z), *[u64(y) for y in ys])
    for y, s0, s1 in zip(ys, out0, out1, strict=True):
        assert as_lists(reconstruct_arith(s0, s1)) == matmul_ref(transpose(x), y)
    assert as_lists(reconstruct_arith(extra0[0], extra1[0])) == matmul_ref(transpose(x2), y2)
    assert as_lists(reconstruct_arith(extra0[1], extra1[1])) == matmul_ref(x, z)


def test_precomputed_width_mismatch_raises_value_error():
    def program(party):
        fixed = ar.share_fixed_operand(party, party.public(np.ones((3, 2), DTYPE)))
        ar.precompute_products(party, fixed, [2])
        return ar.matmul_fixed_t(party, fixed, party.public(np.ones((3, 3), DTYPE)))

    cause = cause_of_failed_run(program)
    assert isinstance(cause, ValueError)
    assert "the next precomputed product has 2 columns, the operand 3" in str(cause)


@pytest.mark.parametrize("shape", [(3, 1), (2,), (2, 1, 1)])
def test_matmul_fixed_row_mismatch_raises_value_error(shape):
    def program(party):
        fixed = ar.share_fixed_operand(party, party.public(np.ones((3, 2), DTYPE)))
        return ar.matmul_fixed(party, fixed, party.public(np.ones(shape, DTYPE)))

    cause = cause_of_failed_run(program)
    assert isinstance(cause, ValueError) and "must have 2 rows" in str(cause)


# ---------------------------------------------------------------------------------------------------------------
# boolean.msb: ring edges and carries into bit 63


MSB_EDGES = sorted({0, 1, 2, HALF - 1, HALF, HALF + 1, MOD - 2, MOD - 1, SAFE, SAFE - 1, 3 * SAFE, 3 * SAFE - 1}
                   | {1 << j for j in range(64)} | {(1 << j) - 1 for j in range(1, 65)}
                   | {MOD - (1 << j) for j in range(64)})


@FEW
@given(st.lists(st.tuples(ring_ints, ring_ints), max_size=24), seeds)
def test_msb_edges_and_chosen_share_pairs(pairs, seed):
    """msb is the top bit for every uint64 edge (random shares), and for share pairs whose sum carries into or
    through bit 63 (x0 + x1 with long carry chains, wrapping and not)."""
    carries = [((1 << j) - 1, 1) for j in range(1, 65)] + [(MOD - (1 << j), 1 << j) for j in range(64)]
    carries += [(HALF - (1 << j), 1 << j) for j in range(63)] + [(HALF - (1 << j), (1 << j) - 1) for j in range(63)]
    carries += [(HALF, HALF), (MOD - 1, MOD - 1), (HALF - 1, HALF), (HALF - 1, HALF + 1), (0, 0), (0, HALF)]
    rng = np.random.default_rng(seed)
    share0 = rng.integers(0, MOD, len(MSB_EDGES), dtype=np.uint64)
    edges = list(zip(ints(share0), ints(u64(MSB_EDGES) - share0), strict=True))
    pairs = pairs + carries + [(b, a) for a, b in carries] + edges
    s0, s1 = u64([p[0] for p in pairs]), u64([p[1] for p in pairs])

    def program(party):
        return bo.msb(party, (s0, s1)[party.party_id])

    r0, r1 = run_local(program).results
    assert ints(reconstruct_bool(r0, r1)) == [((a + b) % MOD) >> 63 for a, b in pairs]


def test_msb_of_every_edge_with_random_shares():
    values = u64(MSB_EDGES)
    r0, r1 = run_arith(bo.msb, values)
    assert ints(reconstruct_bool(r0, r1)) == [v >> 63 for v in MSB_EDGES]


# ---------------------------------------------------------------------------------------------------------------
# views of shuffle / shared permutations and of reciprocal / sigmoid


N = 4096  # elements per secret vector: enough words for 8 x 256 byte histograms; a multiple of 64 (daBit words)


VIEW_KINDS = ["plain", "varied"]


def view_secrets(kind: str) -> dict[str, np.ndarray]:
    """Non-uniform secrets at 16 fractional bits: ``x`` in reciprocal's domain, ``w`` signed for sigmoid, ``sigma`` a
    permutation. "plain": x = 1.0, w = 0, sigma = identity; "varied": x, |w| over many magnitudes, a random sigma."""
    rng = np.random.default_rng(11)
    if kind == "plain":
        return {"x": encode_fixed(np.ones(N)), "w": np.zeros(N, DTYPE), "sigma": np.arange(N, dtype=DTYPE)}
    x = u64(log_uniform_ints(rng, 0, RECIPROCAL_MAX_BITS, N))
    w = np.array(log_uniform_ints(rng, 0, 40, N), dtype=np.int64) * rng.choice([-1, 1], N)
    return {"x": x, "w": w.view(DTYPE), "sigma": rng.permutation(N).astype(DTYPE)}


def view_program(secrets: dict[str, np.ndarray], functions: bool = True, leak: bool = False):
    """Share x (party 0), w (party 0) and sigma (party 1); shuffle/unshuffle x, prepare sigma and apply/unapply it
    to (x, w), reciprocal(x), sigmoid(w), three shuffles of (x, w) by `shuffle_batch_shared`. Nothing is opened
    but prepare_permutation's sigma∘pi (returned as ``revealed``). For the sanity test: ``functions=False`` stops
    after prepare_permutation; ``leak`` also opens the shuffled x (a result, i.e. the secret's values, not a masked
    value)."""

    def program(party):
        x = party.input(0, secrets["x"] if party.party_id == 0 else None)
        w = party.input(0, secrets["w"] if party.party_id == 0 else None)
        sigma = party.input(1, secrets["sigma"] if party.party_id == 1 else None)
        s = sh.new_shuffle(party, N)
        shares = {"x": x, "shuffled": sh.shuffle(party, s, x)}
        shares["unshuffled"] = sh.unshuffle(party, s, shares["shuffled"])
        if leak:
            party.open(shares["shuffled"])
        perm = sh.prepare_permutation(party, sigma)
        if functions:
            shares["applied"] = perm.apply(party, np.stack([x, w], axis=1))
            shares["unapplied"] = perm.unapply(party, shares["applied"])
            shares["reciprocal"] = fp.reciprocal(party, x)
            shares["sigmoid"] = fp.sigmoid(party, w)
            # three shuffles of one block, the first step masked once for all three (shuffle_batch_shared)
            batch = sh.new_shuffle_batch(party, 3, N)
            shares["batch_shared"] = sh.shuffle_batch_shared(party, batch, np.stack([x, w], axis=1)).reshape(-1)
        return shares, perm.revealed

    return program


@pytest.fixture(scope="module")
def view_runs():
    return {kind: run_local(view_program(view_secrets(kind)), record=True) for kind in VIEW_KINDS}


def view_arrays(run, party_id: int) -> dict[str, list[np.ndarray]]:
    """The party's view as flat uint64 arrays (opened values except sigma∘pi, peer messages, dealer corrections, and
    ``learned``: the secret-minus-mask that its own share and a shuffle message combine to); checks that byte
    messages are 32-byte seeds and other arrays carry only public shapes."""
    view = run.received[party_id]
    revealed = run.results[party_id][1]
    opened = [a.reshape(-1) for a in view.opened]
    is_revealed = [a.size == N and np.array_equal(a.astype(np.int64), revealed) for a in opened]
    assert sum(is_revealed) == 1  # prepare_permutation opens sigma∘pi once; it is tested on its own above
    out: dict[str, list[np.ndarray]] = {"opened": [a for a, r in zip(opened, is_revealed, strict=True) if not r],
                                        "peer": [], "dealer": []}
    for source in ("peer", "dealer"):
        for item in getattr(view, source):
            if isinstance(item, bytes):
                assert len(item) == 32, "a byte message that is not a seed"
            elif item.dtype == DTYPE:
                out[source].append(item.reshape(-1))
            else:  # Party.input sends the public shape of an input as int64
                assert item.dtype == np.int64 and item.size == 1 and int(item[0]) == N, item
    # what a permuter learns in a permute-and-reshare step: its own share of the step's input plus the helper's
    # message, i.e. the secret minus the dealer's mask a. Party 0 permutes in shuffle's first step (input: its
    # share of x; its first peer array); party 1 in unshuffle's first step (input: its share of the shuffled x;
    # its second peer array, after shuffle's second step).
    own_input = run.results[party_id][0]["x" if party_id == 0 else "shuffled"]
    out["learned"] = [(own_input + out["peer"][party_id]).reshape(-1)]
    return out


def view_uniformity(run, party_id: int) -> PValues:
    """Every opened, peer and dealer array is uniform, and so is everything pooled. Against reused masks: the
    difference and XOR of any two opened values of N words (an opening per element: truncations, bit injections,
    the halves of the open_many in each Beaver product ...) and the difference of any two peer messages of N words
    (the shuffle's masked shares x_h - a among them)."""
    arrays = view_arrays(run, party_id)
    pv = PValues()
    every = [(f"{source} {i}", a) for source, group in arrays.items() for i, a in enumerate(group)]
    pv.add("all words", uniform_pvalues(np.concatenate([a for _, a in every])))
    for label, a in every:
        pv.add(f"{label} ({a.size} words)", uniform_pvalues(a))
    halves = [(f"opened {i} half", a[: a.size // 2], a[a.size // 2:]) for i, a in enumerate(arrays["opened"])
              if a.size == 2 * N]
    for source in ("peer", "opened"):
        same_size = [(i, a) for i, a in enumerate(arrays[source]) if a.size == N]
        for (i, a), (j, b) in itertools.combinations(same_size, 2):
            pv.add(f"{source} {i} - {source} {j}", uniform_pvalues(a - b, quick=True))
            if source == "opened":
                pv.add(f"{source} {i} ^ {source} {j}", uniform_pvalues(a ^ b, quick=True))
    for label, a, b in halves:
        pv.add(f"{label} 0 - 1", uniform_pvalues(a - b, quick=True))
        pv.add(f"{label} 0 ^ 1", uniform_pvalues(a ^ b, quick=True))
    return pv


def view_independence(run_a, run_b, party_id: int) -> PValues:
    """Two-sample tests that each array of the view, the pooled view and the party's own shares are distributed
    the same in two runs on different secrets."""
    view_a, view_b = view_arrays(run_a, party_id), view_arrays(run_b, party_id)
    pv = PValues()
    for source in view_a:
        assert [a.size for a in view_a[source]] == [b.size for b in view_b[source]]
        for i, (a, b) in enumerate(zip(view_a[source], view_b[source], strict=True)):
            pv.add(f"{source} {i}", same_distribution_pvalues(a, b))
    pv.add("all words", same_distribution_pvalues(np.concatenate([a for g in view_a.values() for a in g]),
                                                  np.concatenate([b for g in view_b.values() for b in g])))
    shares_a, shares_b = run_a.results[party_id][0], run_b.results[party_id][0]
    for name, share in shares_a.items():
        pv.add(f"own share {name}", same_distribution_pvalues(share, shares_b[name]))
    return pv


@pytest.mark.parametrize("party_id", [0, 1])
def test_shuffle_and_fixedpoint_views_are_uniform_and_secret_independent(view_runs, party_id):
    """During shuffle/unshuffle, prepare_permutation, apply/unapply, reciprocal and sigmoid every peer message,
    dealer correction and opened value (except sigma∘pi, see test_revealed_permutation_...) is uniform for two very
    different secrets, and the view has the same distribution for both."""
    views = [view_arrays(view_runs[kind], party_id) for kind in VIEW_KINDS]
    assert len(views[0]["peer"]) >= 4 and len(views[0]["opened"]) > 20  # the shuffle steps and the openings
    for kind in VIEW_KINDS:
        view_uniformity(view_runs[kind], party_id).check()
    view_independence(view_runs["plain"], view_runs["varied"], party_id).check()


@pytest.mark.parametrize("party_id", [0, 1])
def test_view_statistics_reject_non_uniform_data(party_id):
    """Sanity: the statistics reject the raw secrets and sigma∘pi as words, and a program that opens the shuffled
    secret (a result, not a masked value) fails both the uniformity and the secret-independence test."""
    for kind in VIEW_KINDS:
        for name, secret in view_secrets(kind).items():
            pv = PValues()
            pv.add(f"{kind} {name}", uniform_pvalues(secret))
            assert pv.rejects(), (kind, name)
    leaky = {kind: run_local(view_program(view_secrets(kind), functions=False, leak=True), record=True)
             for kind in VIEW_KINDS}
    assert view_uniformity(leaky["plain"], party_id).rejects()
    independence = view_independence(leaky["plain"], leaky["varied"], party_id)
    assert independence.rejects() and independence.worst()[0].startswith("opened")
