"""Primitive wrappers: order encoding, CLWW ORE, key-holder Paillier, pseudonyms."""

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privboost.crypto.floatcode import float32_to_ordered_uint32, ordered_uint32_to_float32
from privboost.crypto.ope import BoldyrevaOPE
from privboost.crypto.ore import CLWWORE, is_valid_ciphertext, ore_compare, ore_less_than
from privboost.crypto.paillier import (
    KeyHolderEncryptor,
    add_ciphertexts,
    generate_keypair,
    pack_ciphertexts,
    unpack_plaintext,
)
from privboost.crypto.prf import derive_key, new_key, pseudonym

floats32 = st.floats(width=32, allow_nan=False)


@given(st.lists(floats32, min_size=2, max_size=50))
def test_float_code_preserves_order_exactly(values):
    x = np.array(values, dtype=np.float32)
    code = float32_to_ordered_uint32(x)
    assert np.array_equal(code[:, None] < code[None, :], x[:, None] < x[None, :])
    assert np.array_equal(ordered_uint32_to_float32(code), x + np.float32(0))


def test_float_code_edges_and_nan():
    x = np.array([-np.inf, -3.4e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3.4e38, np.inf], dtype=np.float32)
    code = float32_to_ordered_uint32(x)
    assert code[4] == code[5]  # -0.0 == 0.0 as XGBoost compares them
    assert np.all(np.diff(code.astype(np.int64))[[0, 1, 2, 3, 5, 6, 7, 8]] > 0)
    with pytest.raises(ValueError, match="NaN"):
        float32_to_ordered_uint32(np.array([np.nan], dtype=np.float32))


@settings(max_examples=30, deadline=None)
@given(st.lists(floats32, min_size=1, max_size=40), st.lists(floats32, min_size=1, max_size=40))
def test_ore_comparison_is_exact(left, right):
    ore = CLWWORE(b"k" * 32)
    a, b = np.array(left, dtype=np.float32), np.array(right, dtype=np.float32)
    ea = ore.encrypt(float32_to_ordered_uint32(a), 7)[:, None]
    eb = ore.encrypt(float32_to_ordered_uint32(b), 7)[None, :]
    assert np.array_equal(ore_less_than(ea, eb), a[:, None] < b[None, :])
    want = (a[:, None] > b[None, :]).astype(np.int8) - (a[:, None] < b[None, :]).astype(np.int8)
    assert np.array_equal(ore_compare(ea, eb), want)


def test_ore_domains_and_keys_separate():
    values = np.arange(1000, dtype=np.uint32)
    ore = CLWWORE(new_key())
    same = ore.encrypt(values, 1)
    assert np.array_equal(same, ore.encrypt(values, 1))  # deterministic
    assert (same != ore.encrypt(values, 2)).all()  # another feature: unrelated ciphertexts
    assert (same != CLWWORE(new_key()).encrypt(values, 1)).all()
    assert is_valid_ciphertext(same).all() and not is_valid_ciphertext(np.array([3], np.uint64)).any()


def test_ore_trits_look_uniform():
    ore = CLWWORE(new_key())
    packed = ore.encrypt(np.random.default_rng(0).integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32), 0)
    trits = (packed[:, None] >> (2 * np.arange(16, dtype=np.uint64))) & np.uint64(3)  # the 16 last positions
    counts = np.bincount(trits.ravel().astype(np.int64), minlength=3)  # short prefixes repeat across values: skip them
    assert stats.chisquare(counts).pvalue > 1e-4
    with pytest.raises(ValueError):
        CLWWORE(b"short")


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(2048)


def test_key_holder_encryption_decrypts_and_adds(keypair):
    public, private = keypair
    enc = KeyHolderEncryptor(private)
    values = [0, 1, -1, 2**40, -(2**40), 123456789]
    cts = [enc.encrypt_int(v) for v in values]
    n = public.n
    assert [private.raw_decrypt(c) for c in cts] == [v % n for v in values]
    nsq = gmpy2.mpz(public.nsquare)
    assert private.raw_decrypt(int(add_ciphertexts([gmpy2.mpz(c) for c in cts], nsq))) == sum(values) % n
    assert len(set(enc.encrypt_int(5) for _ in range(20))) == 20  # fresh randomness every time
    packed = pack_ciphertexts([gmpy2.mpz(enc.encrypt_int(v)) for v in (3, 2**63, 7)], nsq, 64)
    assert unpack_plaintext(private.raw_decrypt(int(packed)), 3, 64) == [3, 2**63, 7]


def test_key_holder_ciphertexts_look_uniform(keypair):
    public, private = keypair
    enc = KeyHolderEncryptor(private)
    raw = b"".join(enc.encrypt_int(0).to_bytes(512, "big")[8:-8] for _ in range(300))
    counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_pseudonyms_are_keyed():
    key = new_key()
    assert pseudonym(key, "age") == pseudonym(key, "age") != pseudonym(key, "bmi")
    assert pseudonym(key, "age") != pseudonym(new_key(), "age")
    assert "age" not in pseudonym(key, "age")
    assert derive_key(key, "a") != derive_key(key, "b")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=30, unique=True))
def test_boldyreva_ope_strictly_preserves_order(values):
    ope = BoldyrevaOPE(b"o" * 32)
    values = sorted(values)
    cts = [ope.encrypt(v) for v in values]
    assert all(a < b for a, b in zip(cts, cts[1:], strict=False))
    assert all(0 <= c < 2**48 for c in cts)
    assert [ope.decrypt(c) for c in cts[:5]] == values[:5]


def test_boldyreva_ope_edges_keys_and_invalid_ciphertexts():
    key = new_key()
    ope = BoldyrevaOPE(key)
    edge = [0, 1, 2, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
    cts = [ope.encrypt(v) for v in edge]
    assert cts == sorted(cts) and len(set(cts)) == len(cts)
    assert BoldyrevaOPE(key).encrypt(12345) == ope.encrypt(12345)  # deterministic
    assert BoldyrevaOPE(new_key()).encrypt(12345) != ope.encrypt(12345)
    refused = 0
    for c in cts:
        try:
            ope.decrypt(c + 1)
        except ValueError:
            refused += 1
    assert refused >= len(cts) - 1  # a random neighbour of a ciphertext is almost never a ciphertext
    arr = np.array([[5, 7], [5, 2**32 - 1]], dtype=np.uint32)
    many = ope.encrypt_many(arr)
    assert many.shape == arr.shape and many[0, 0] == many[1, 0] == ope.encrypt(5)
    with pytest.raises(ValueError):
        BoldyrevaOPE(b"short")
    with pytest.raises(ValueError):
        ope.encrypt(2**32)


def test_boldyreva_ope_spreads_over_the_range():
    ope = BoldyrevaOPE(new_key(), in_bits=16, out_bits=32)
    cts = np.array([ope.encrypt(v) for v in range(0, 2**16, 512)], dtype=np.float64)
    gaps = np.diff(cts)
    expected = 512 * 2**16  # range points per sampled step
    assert 0.5 * expected < gaps.mean() < 2 * expected
    assert gaps.max() < 10 * expected  # not clustered
