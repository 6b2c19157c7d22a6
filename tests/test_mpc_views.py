"""Statistical tests that each party's view is uniform and independent of the secret inputs.

A party's *view* is what it holds or receives: its own share arrays, everything its peer sends it (for each input
the public shape and a seed or mask; for each opening the peer's share), the value of every opening (own share
combined with the peer's: what the party learns), and what the dealer sends it (party 0: its seed; party 1: its seed
and the corrections). The views are recorded with ``run_local(record=True)`` while both parties run mul, mul_fixed
(Beaver + truncation), matmul, share_fixed_operand + matmul_fixed_t (two products reusing one fixed operand), ltz,
eq, a2b, bit_injection and select on *non-uniform* secrets (all zeros, small positive fixed-point values,
large/negative values).

No program here opens a result, so every opened value is one-time padded (x - a, x ^ a, x + 2^62 + r, X - U,
Y - V, ...) and so is every dealer correction (c1 = a·b - c0, ...): each must be uniform on 64-bit words, and so must
the difference and XOR of any two of them (a reused mask would show there). Testing the opened values, not only the
peer's shares, matters: a peer's share of x - a is uniform even when a is reused, the opened values are not. The
daBit openings of `Party.open_bits` (b2a_bits inside ltz and eq) carry one uniform bit per element, packed 64 per
word; here the bit counts are multiples of 64 (no zero padding), so their words are uniform too, and they are also
checked bit by bit.

Statistics (scipy): Pearson chi-square on the histogram of (byte position, byte value) of the words (8 independent
255-dof tests, summed: 2040 dof), or on pooled byte values (255 dof) for medium arrays, and on the 64 bit-position
frequencies (64 dof); two-sample versions of the same for the secret-independence tests. Each test collects many
p-values and applies a Bonferroni correction: it fails if min(p) < ALPHA / (number of p-values), ALPHA = 1e-4, so a
correct engine fails a test with probability below 1e-4. The sanity tests at the end show that the same statistics
reject a raw secret, a weak mask, a reused mask and a secret-dependent opening.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
from view_stats import ALPHA, PValues, same_distribution_pvalues, uniform_pvalues

from privboost.mpc.prg import Prg
from privboost.mpc.protocols import arithmetic as ar
from privboost.mpc.protocols import boolean as bo
from privboost.mpc.protocols import compare as cmp
from privboost.mpc.ring import DTYPE, encode_fixed, pack_bits, unpack_bits
from privboost.mpc.runtime import run_local

N = 4096  # elements per secret vector; a multiple of 64 so daBit openings have no padding bits
ROWS, COLS = 512, 8  # N reshaped as a matrix for the fixed operand
BIT_WORDS = N // 64  # size of one packed daBit opening of N bits (no other opened value has this size)
KINDS = ["zeros", "small_fixed", "large_negative"]


# ---------------------------------------------------------------------------------------------------------------
# the recorded program


def make_secrets(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Two non-uniform secret vectors of N elements (x owned by party 0, y by party 1)."""
    rng = np.random.default_rng(7)
    if kind == "zeros":
        return np.zeros(N, DTYPE), np.zeros(N, DTYPE)
    if kind == "small_fixed":  # small positive fixed-point values (16 fractional bits), as in gradient statistics
        return encode_fixed(rng.uniform(0, 4, N)), encode_fixed(rng.uniform(0, 1, N))
    if kind == "large_negative":  # large magnitudes, mostly negative, still |x*y| < 2^62 for the truncation
        x = -rng.integers(2**29, 2**30, N, dtype=np.int64)
        y = rng.integers(-(2**31), 2**20, N, dtype=np.int64)
        return x.view(DTYPE), y.view(DTYPE)
    raise ValueError(kind)


def view_program(x_secret: np.ndarray, y_secret: np.ndarray):
    """Both parties' program: share x (party 0) and y (party 1), run the protocols, open no result."""

    def program(party):
        x = party.input(0, x_secret if party.party_id == 0 else None)
        y = party.input(1, y_secret if party.party_id == 1 else None)
        shares = {"x": x, "y": y, "mul": ar.mul(party, x, y), "mul_fixed": ar.mul_fixed(party, x, y)}
        shares["matmul"] = ar.matmul(party, x.reshape(64, 64), y.reshape(64, 64))
        fixed = ar.share_fixed_operand(party, x.reshape(ROWS, COLS))
        shares["fixed_t_1"] = ar.matmul_fixed_t(party, fixed, y.reshape(ROWS, COLS))
        shares["fixed_t_2"] = ar.matmul_fixed_t(party, fixed, shares["mul_fixed"].reshape(ROWS, COLS))
        shares["ltz"] = cmp.ltz(party, x)
        shares["eq"] = cmp.eq(party, x, y)
        shares["a2b"] = bo.a2b(party, y)
        shares["bit_injection"] = bo.bit_injection(party, shares["a2b"][:32])
        shares["select"] = cmp.select(party, shares["ltz"], x, y)
        return shares

    return program


@pytest.fixture(scope="module")
def runs() -> dict[str, object]:
    """One recorded run per secret kind."""
    return {kind: run_local(view_program(*make_secrets(kind)), record=True) for kind in KINDS}


PUBLIC_DIMS = {N, ROWS, COLS, 64}  # array dimensions of the program (public: the shapes are not secret)


def view_arrays(run, party_id: int) -> dict[str, list[np.ndarray]]:
    """Party ``party_id``'s view as flat uint64 arrays: ``opened`` values (own share combined with the peer's),
    ``peer`` (everything the peer sent: shares of openings, input masks) and ``dealer`` (corrections).

    The rest of the view is checked here: byte strings must be 32-byte seeds (of the dealer, or of the peer's
    input masks), and any other array may only carry public shapes.
    """
    view = run.received[party_id]
    out: dict[str, list[np.ndarray]] = {"opened": [a.reshape(-1) for a in view.opened], "peer": [], "dealer": []}
    for source in ("peer", "dealer"):
        for item in getattr(view, source):
            if isinstance(item, bytes):
                assert len(item) == 32, "a byte message that is not a seed"
            elif item.dtype == DTYPE:
                out[source].append(item.reshape(-1))
            else:  # Party.input sends the public shape of an input as int64
                assert item.dtype == np.int64 and item.size <= 2 and set(item.tolist()) <= PUBLIC_DIMS, item
    assert all(a.dtype == DTYPE for arrays in out.values() for a in arrays)
    return out


def view_uniformity(run, party_id: int) -> PValues:
    """p-values that the view is uniform: every opened, peer and dealer array; all of them pooled; and, against mask
    reuse, the differences and XORs of every pair of equally long opened values, of the two halves of each opened
    value (an `open_many` of two masked arrays) and of every pair of equally long dealer corrections."""
    arrays = view_arrays(run, party_id)
    pv = PValues()
    every = [(f"{source} {i}", a) for source, group in arrays.items() for i, a in enumerate(group)]
    pv.add("all words", uniform_pvalues(np.concatenate([a for _, a in every])))
    for label, a in every:
        pv.add(f"{label} ({a.size} words)", uniform_pvalues(a))
    pairs = [(f"opened {i} half 0", f"opened {i} half 1", a[: a.size // 2], a[a.size // 2:])
             for i, a in enumerate(arrays["opened"]) if a.size % 2 == 0]
    for source in ("opened", "dealer"):
        pairs += [(f"{source} {i}", f"{source} {j}", a, b)
                  for (i, a), (j, b) in itertools.combinations(enumerate(arrays[source]), 2) if a.size == b.size]
    for la, lb, a, b in pairs:
        if a.size >= 256:
            pv.add(f"{la} - {lb}", uniform_pvalues(a - b, quick=True))
            pv.add(f"{la} ^ {lb}", uniform_pvalues(a ^ b, quick=True))
    return pv


def view_independence(run_a, run_b, party_id: int) -> PValues:
    """Two-sample p-values that the party's view has the same distribution in two runs of one program on different
    secrets: every corresponding array, all words pooled, and the party's own shares (if it returns a dict)."""
    view_a, view_b = view_arrays(run_a, party_id), view_arrays(run_b, party_id)
    pv = PValues()
    pooled = []
    for source in view_a:
        assert [a.size for a in view_a[source]] == [b.size for b in view_b[source]]  # same protocol, same sizes
        for i, (a, b) in enumerate(zip(view_a[source], view_b[source], strict=True)):
            pv.add(f"{source} {i}", same_distribution_pvalues(a, b))
            pooled.append((a, b))
    pv.add("all words", same_distribution_pvalues(np.concatenate([a for a, _ in pooled]),
                                                  np.concatenate([b for _, b in pooled])))
    shares_a, shares_b = run_a.results[party_id], run_b.results[party_id]
    if isinstance(shares_a, dict):
        for name, share in shares_a.items():
            pv.add(f"own share {name}", same_distribution_pvalues(share, shares_b[name]))
    return pv


# ---------------------------------------------------------------------------------------------------------------
# (a) uniformity of each party's view


def test_recording_captures_the_view(runs):
    run = runs["zeros"]
    for pid in (0, 1):
        view = run.received[pid]
        assert isinstance(view.dealer[0], bytes) and len(view.dealer[0]) == 32  # the seed
        # the share of the input owned by the peer (party 1: x, party 0: y) comes from what the peer sent: the
        # share itself, or a seed that expands into it
        own_input_share = run.results[pid]["x" if pid == 1 else "y"]
        candidates = [m for m in view.peer[:3] if isinstance(m, np.ndarray) and m.dtype == DTYPE]
        candidates += [Prg(m).words(N) for m in view.peer[:3] if isinstance(m, bytes)]
        assert any(np.array_equal(c, own_input_share) for c in candidates)
        assert sum(a.size for arrays in view_arrays(run, pid).values() for a in arrays) >= 20_000
    # both parties learn the same opened values, in the same order
    assert len(run.received[0].opened) == len(run.received[1].opened) > 20
    assert all(np.array_equal(a, b) for a, b in zip(run.received[0].opened, run.received[1].opened, strict=True))
    seeds = [m for r in runs.values() for v in r.received for m in v.peer + v.dealer if isinstance(m, bytes)]
    assert len(set(seeds)) == len(seeds)  # fresh seeds everywhere
    assert len(run.received[0].dealer) == 1  # party 0 hears from the dealer only at setup
    assert len(run.received[1].dealer) > 10
    assert run_local(view_program(*make_secrets("zeros"))).received is None  # recording is off by default


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("party_id", [0, 1])
def test_view_is_uniform(runs, kind, party_id):
    """Everything the party learns or receives is uniform words, and no two opened values share a mask."""
    view_uniformity(runs[kind], party_id).check()


@pytest.mark.parametrize("party_id", [0, 1])
def test_dabit_openings_are_uniform_bits(runs, party_id):
    """The daBit openings (`open_bits` in b2a_bits, for ltz and eq: N bits packed in N/64 words) are uniform bits."""
    pv = PValues()
    for kind in KINDS:
        openings = [a for a in view_arrays(runs[kind], party_id)["opened"] if a.size == BIT_WORDS]
        assert len(openings) == 2  # one for ltz, one for eq
        bits = np.concatenate([unpack_bits(a, N) for a in openings]).astype(np.int64)
        ones = int(bits.sum())
        pv.add(f"{kind} bit count", {"binomial": float(stats.binomtest(ones, bits.size, 0.5).pvalue)})
        pairs = np.bincount(2 * bits[0::2] + bits[1::2], minlength=4)  # adjacent bit pairs: 4 equally likely cells
        pv.add(f"{kind} bit pairs", {"chi2": float(stats.chisquare(pairs).pvalue)})
        pv.add(f"{kind} words", uniform_pvalues(np.concatenate(openings)))
        pv.add(f"{kind} ltz ^ eq", uniform_pvalues(openings[0] ^ openings[1]))
    pv.check()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("party_id", [0, 1])
def test_own_shares_are_uniform(runs, kind, party_id):
    """Each party's own share of every input and of every protocol output is uniform (also for 0/1 results)."""
    pv = PValues()
    for name, share in runs[kind].results[party_id].items():
        pv.add(name, uniform_pvalues(share))
    pv.check()


# ---------------------------------------------------------------------------------------------------------------
# (b) independence of the view from the secret


@pytest.mark.parametrize("other", ["small_fixed", "large_negative"])
@pytest.mark.parametrize("party_id", [0, 1])
def test_view_does_not_depend_on_the_secret(runs, other, party_id):
    """The same program on all-zero secrets and on very different secrets: every opened, peer and dealer array, the
    pooled view and the party's own shares have the same distribution (two-sample chi-square tests)."""
    view_independence(runs["zeros"], runs[other], party_id).check()


# ---------------------------------------------------------------------------------------------------------------
# sanity: the statistics above do reject non-uniform or secret-dependent data


def test_statistics_accept_uniform_words():
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    other = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    pv = PValues()
    pv.add("uniform", uniform_pvalues(words))
    pv.add("two uniform samples", same_distribution_pvalues(words, other))
    pv.check()


def test_statistics_reject_the_raw_secret():
    for kind in ("small_fixed", "large_negative"):
        secret = make_secrets(kind)[0]
        pv = PValues()
        pv.add(kind, uniform_pvalues(secret))
        assert pv.rejects() and pv.worst()[1] < 1e-30
        pv = PValues()
        pv.add(kind, same_distribution_pvalues(secret, np.random.default_rng(2).integers(0, 2**64, N, np.uint64)))
        assert pv.rejects() and pv.worst()[1] < 1e-30


def test_statistics_reject_a_weak_mask():
    """x + r with r uniform on only 60 bits: each opened word looks random except its top bits."""
    rng = np.random.default_rng(3)
    x = make_secrets("small_fixed")[0]
    weak = x + (rng.integers(0, 2**64, N, dtype=np.uint64) >> np.uint64(4))
    pv = PValues()
    pv.add("weak mask", uniform_pvalues(weak))
    assert pv.rejects()
    bits = pack_bits(rng.random(N) < 0.45)  # biased bits packed like a daBit opening
    assert stats.binomtest(int(unpack_bits(bits, N).sum()), N, 0.5).pvalue < ALPHA


def _reused_mask_program(party):
    """A broken Beaver product that masks x and y with the *same* a: opens x - a and y - a."""
    x = party.input(0, make_secrets("small_fixed")[0] if party.party_id == 0 else None)
    y = party.input(1, np.zeros(N, DTYPE) if party.party_id == 1 else None)
    a, _b, _c = party.correlations.beaver(x.shape)
    return party.open_many(x - a, y - a)


@pytest.mark.parametrize("party_id", [0, 1])
def test_view_test_rejects_a_reused_beaver_mask(party_id):
    """Each of x - a, y - a is uniform on its own, but together they leak x - y: `view_uniformity` must flag it."""
    run = run_local(_reused_mask_program, record=True)
    opened = view_arrays(run, party_id)["opened"][0]
    single = PValues()
    single.add("x - a", uniform_pvalues(opened[:N]))
    single.add("y - a", uniform_pvalues(opened[N:]))
    single.check()  # each opening alone looks uniform ...
    pv = view_uniformity(run, party_id)
    assert pv.rejects()  # ... but the pair does not
    assert "half" in pv.worst()[0] and pv.worst()[1] < 1e-100


def _weak_mask_program(secret: np.ndarray):
    """Opens x + r with r uniform on only 56 bits: leaks the top byte of x (up to a carry)."""

    def program(party):
        x = party.input(0, secret if party.party_id == 0 else None)
        r = party.public(np.random.default_rng().integers(0, 2**56, N, dtype=np.uint64))
        return {"x": x, "opened": party.open(x + r)}

    return program


@pytest.mark.parametrize("party_id", [0, 1])
def test_view_tests_reject_a_secret_dependent_opening(party_id):
    """`view_uniformity` flags the weak mask on the all-zero secret, and `view_independence` tells it from a large
    negative secret."""
    large = -np.random.default_rng(5).integers(2**58, 2**62, N, dtype=np.int64)  # large negative: top byte varies
    zeros = run_local(_weak_mask_program(make_secrets("zeros")[0]), record=True)
    negative = run_local(_weak_mask_program(large.view(DTYPE)), record=True)
    assert view_uniformity(zeros, party_id).rejects()
    independence = view_independence(zeros, negative, party_id)
    assert independence.rejects() and independence.worst()[0].startswith("opened")
