"""Primitive wrappers: order encoding, CLWW ORE, key-holder Paillier, pseudonyms."""

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privboost.crypto.floatcode import float32_to_ordered_uint32, ordered_uint32_to_float32
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
