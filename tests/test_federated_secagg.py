"""Shamir sharing and SecAgg+ secure aggregation: exact sums over many rounds, dropouts, privacy, refusals."""

import itertools
import secrets
from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy import stats

from privboost.crypto import shamir
from privboost.federated.secagg import (
    SecAggAggregator,
    SecAggConfig,
    SecAggError,
    SecAggSite,
    new_graph_seed,
)
from privboost.mpc.prg import Prg

TOP = np.uint64(2**64 - 1)
P_MIN = 1e-6  # significance for the statistical tests: false alarm 1e-6 per test, the sanity checks reach ~0


# ---------------------------------------------------------------------- Shamir
def test_shamir_any_threshold_subset_recovers():
    holders = [0, 4, 9, 17, 2, 30]
    for secret in (secrets.token_bytes(64), b"\x00\x00" + secrets.token_bytes(14), b"", b"\xff" * 64):
        shares = shamir.split(secret, 3, holders)
        assert set(shares) == set(holders) and all(len(s) == shamir.SHARE_BYTES for s in shares.values())
        for size in (3, 4, 6):
            for subset in itertools.combinations(holders, size):
                assert shamir.combine({h: shares[h] for h in subset}, max(len(secret), 1)) == secret.rjust(
                    max(len(secret), 1), b"\x00")


def test_shamir_below_threshold_refused_and_forging_the_threshold_gives_garbage():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 4, range(7))
    for subset in itertools.combinations(range(7), 3):
        with pytest.raises(ValueError, match="threshold is 4"):
            shamir.combine({h: shares[h] for h in subset}, 32)
        forged = {h: (3).to_bytes(2, "big") + shares[h][2:] for h in subset}  # pretend t = 3
        try:
            assert shamir.combine(forged, 32) != secret
        except ValueError:
            pass  # the interpolated value does not even fit in 32 bytes


def test_shamir_t_minus_one_shares_do_not_depend_on_the_secret():
    def low_bytes(secret: bytes, threshold: int) -> np.ndarray:
        counts = np.zeros((2, 256), dtype=np.int64)
        for _ in range(2000):
            shares = shamir.split(secret, threshold, [0, 1, 2])
            for row, holder in enumerate((0, 1)):  # t - 1 = 2 shares
                counts[row, shares[holder][-1]] += 1
        return counts.ravel()

    a, b = b"\x00" * 32, b"\x5a" * 32
    assert stats.chi2_contingency(np.stack([low_bytes(a, 3), low_bytes(b, 3)])).pvalue > P_MIN
    # sanity: with t = 1 a share is the secret itself, and the same test sees it at once
    assert stats.chi2_contingency(np.stack([low_bytes(a, 1), low_bytes(b, 1)]) + 1).pvalue < P_MIN


def test_shamir_combine_many_matches_combine():
    holders = [5, 1, 8, 3, 12, 7, 0]
    values = [secrets.token_bytes(64) for _ in range(25)]
    many = shamir.split_many(values, 4, holders)
    subset = {h: many[h] for h in (12, 3, 7, 0, 8)}
    got = shamir.combine_many(subset, 64)
    assert got == values
    assert got == [shamir.combine({h: subset[h][i] for h in subset}, 64) for i in range(len(values))]
    assert shamir.combine_many({h: [] for h in holders}, 64) == []


def test_shamir_rejects_malformed_input():
    shares = shamir.split(b"secret", 2, [0, 1, 2])
    with pytest.raises(ValueError):
        shamir.combine({0: shares[0][:-1], 1: shares[1]}, 6)  # truncated
    with pytest.raises(ValueError):
        shamir.combine({0: shares[0][:2] + b"\xff" * 66, 1: shares[1]}, 6)  # value >= p
    with pytest.raises(ValueError, match="disagree"):
        shamir.combine({0: shares[0], 1: (3).to_bytes(2, "big") + shares[1][2:], 2: shares[2]}, 6)
    with pytest.raises(ValueError):
        shamir.split(b"x" * 65, 2, [0, 1])
    with pytest.raises(ValueError):
        shamir.split(b"x", 3, [0, 1])
    with pytest.raises(ValueError):
        shamir.split(b"x", 2, [0, 0, 1])
    with pytest.raises(ValueError):
        shamir.split(b"x", 1, [-1, 1])
    with pytest.raises(ValueError):
        shamir.combine({}, 4)


# ---------------------------------------------------------------------- configuration and graph
def test_config_degrees_and_graph():
    for n in (2, 3, 10, 12, 13, 20, 64, 100):
        config = SecAggConfig.default(tuple(range(100, 100 + n)), new_graph_seed())
        k, t = config.degree, config.threshold
        assert k == n - 1 if n <= 12 else k <= n - 1
        assert t == k // 2 + 1
        graph = {u: config.neighbours(u) for u in config.sites}
        assert all(len(vs) == k and u not in vs for u, vs in graph.items())
        assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert SecAggConfig.default(tuple(range(20)), new_graph_seed()).degree < 19  # SecAgg+ regime
    seed = new_graph_seed()
    one, two = SecAggConfig.default(tuple(range(30)), seed), SecAggConfig.default(tuple(range(30)), seed)
    assert all(one.neighbours(u) == two.neighbours(u) for u in range(30))  # everyone computes the same graph
    other = SecAggConfig.default(tuple(range(30)), new_graph_seed())
    assert any(one.neighbours(u) != other.neighbours(u) for u in range(30))
    for bad in [((0, 1, 2), 2, 1), ((0, 1, 2), 3, 2), ((0, 1, 2), 1, 1), ((0, 0, 1), 1, 1), ((0,), 0, 1)]:
        with pytest.raises(ValueError):
            SecAggConfig(*bad, seed)
    with pytest.raises(ValueError):
        SecAggConfig((0, 1), 1, 1, b"short")


# ---------------------------------------------------------------------- protocol driver
@dataclass
class Session:
    config: SecAggConfig
    sites: dict[int, SecAggSite]
    aggregator: SecAggAggregator
    pending: dict[int, dict[int, bytes]] = field(default_factory=dict)
    log: list = field(default_factory=list)

    def round(self, round_id, inputs, drop_before=(), drop_after=()):
        """One round like the federated aggregator drives it; returns (sum, expected sum over survivors)."""
        alive = sorted(self.aggregator.alive)
        outputs = {}
        for u in alive:
            if u in drop_before:
                continue
            self.sites[u].receive(self.pending.get(u, {}))
            outputs[u] = self.sites[u].mask(round_id, inputs[u], alive)
        self.pending = self.aggregator.route({u: packets for u, (_, packets) in outputs.items()})
        survivors = sorted(outputs)
        dropped = [u for u in alive if u not in outputs]
        replies = {u: self.sites[u].unmask(round_id, survivors, dropped) for u in survivors if u not in drop_after}
        masked = {u: y for u, (y, _) in outputs.items()}
        self.log.append((round_id, masked, replies, survivors, dropped))
        expected = np.zeros_like(inputs[alive[0]])
        for u in survivors:
            expected += inputs[u]
        return self.aggregator.aggregate(round_id, masked, replies), expected


def session(ids, degree=None, threshold=None, collect_keys=True) -> Session:
    seed = new_graph_seed()
    config = (SecAggConfig.default(tuple(ids), seed) if degree is None
              else SecAggConfig(tuple(ids), degree, threshold, seed))
    sites = {u: SecAggSite(u, config) for u in config.sites}
    aggregator = SecAggAggregator(config)
    adverts = {u: s.advertise() for u, s in sites.items()}
    keys = aggregator.collect_keys(adverts) if collect_keys else adverts  # collect_keys only checks and keeps
    pending = aggregator.route({u: s.share_keys(keys) for u, s in sites.items()})
    return Session(config, sites, aggregator, pending)


def random_inputs(ids, length, rng) -> dict[int, np.ndarray]:
    inputs = {}
    for u in ids:
        x = rng.integers(0, 2**64, length, dtype=np.uint64, endpoint=False)
        x[:4] = [0, TOP, TOP, 0]  # edge values: wrap-around in the sum
        inputs[u] = x
    return inputs


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("n", [2, 3, 10, 20])
def test_exact_sum_without_dropouts(n):
    rng = np.random.default_rng(n)
    ids = [7 * i + 3 for i in range(n)]  # arbitrary, non-contiguous ids
    s = session(ids)
    if n == 20:
        assert s.config.degree < n - 1  # SecAgg+: a sparse graph
    for r in range(3):
        total, expected = s.round(r, random_inputs(ids, 1001, rng))
        assert total.dtype == np.uint64 and np.array_equal(total, expected)
    assert s.aggregator.alive == frozenset(ids)


def test_many_rounds_increasing_ids_and_changing_lengths():
    rng = np.random.default_rng(1)
    ids = list(range(6))
    s = session(ids)
    for r in (0, 1, 2, 5, 6, 9, 30, 31, 32, 40):
        alive = s.aggregator.begin_round(r)
        assert alive == frozenset(ids)
        length = int(rng.integers(1, 3000))
        total, expected = s.round(r, random_inputs(ids, length, rng))
        assert np.array_equal(total, expected)
    with pytest.raises(SecAggError, match="strictly increase"):
        s.aggregator.begin_round(40)


def test_multidimensional_vectors_and_explicit_degree():
    ids = list(range(6))
    s = session(ids, degree=2, threshold=2, collect_keys=False)  # a ring: each site masks with 2 neighbours
    assert all(len(s.config.neighbours(u)) == 2 for u in ids)
    rng = np.random.default_rng(2)
    inputs = {u: rng.integers(0, 2**64, (3, 5, 7), dtype=np.uint64) for u in ids}
    total, expected = s.round(0, inputs)
    assert total.shape == (3, 5, 7) and np.array_equal(total, expected)


# ---------------------------------------------------------------------- dropouts
def test_dropouts_before_masking_within_threshold():
    rng = np.random.default_rng(3)
    ids = list(range(10))  # complete graph, k = 9, t = 5
    s = session(ids)
    total, expected = s.round(0, random_inputs(ids, 500, rng), drop_before={2, 5, 9})
    assert np.array_equal(total, expected)
    assert s.aggregator.alive == frozenset(ids) - {2, 5, 9}  # dropped sites stay out
    total, expected = s.round(1, random_inputs(ids, 500, rng), drop_before={0})
    assert np.array_equal(total, expected)
    total, expected = s.round(2, random_inputs(ids, 500, rng))
    assert np.array_equal(total, expected) and s.aggregator.alive == frozenset({1, 3, 4, 6, 7, 8})


def test_dropouts_in_secagg_plus_graph():
    rng = np.random.default_rng(4)
    ids = list(range(20))  # k = 14, t = 8
    s = session(ids)
    total, expected = s.round(0, random_inputs(ids, 300, rng), drop_before={1, 11, 17})
    assert np.array_equal(total, expected)
    total, expected = s.round(1, random_inputs(ids, 300, rng), drop_before={4}, drop_after={6, 13})
    assert np.array_equal(total, expected)
    total, expected = s.round(2, random_inputs(ids, 300, rng))
    assert np.array_equal(total, expected) and len(s.aggregator.alive) == 14


def test_dropouts_before_masking_beyond_threshold_refused():
    rng = np.random.default_rng(5)
    ids = list(range(10))
    s = session(ids)
    with pytest.raises(SecAggError, match="fewer than the threshold 5"):  # 5 survivors, 4 shares each
        s.round(0, random_inputs(ids, 100, rng), drop_before={0, 1, 2, 3, 4})
    s = session(ids)
    with pytest.raises(SecAggError, match="only 4 sites sent masked vectors"):
        s.round(0, random_inputs(ids, 100, rng), drop_before={0, 1, 2, 3, 4, 5})


def test_dropouts_between_masking_and_unmasking():
    rng = np.random.default_rng(6)
    ids = list(range(10))
    s = session(ids)
    total, expected = s.round(0, random_inputs(ids, 400, rng), drop_after={3, 8})
    assert np.array_equal(total, expected)  # 3 and 8 sent their vectors: they are in the sum
    assert s.aggregator.alive == frozenset(ids) - {3, 8}
    total, expected = s.round(1, random_inputs(ids, 400, rng), drop_before={0}, drop_after={1})
    assert np.array_equal(total, expected)
    s = session(ids)
    with pytest.raises(SecAggError, match="fewer than the threshold"):  # 5 repliers: 4 shares of a replier's b
        s.round(0, random_inputs(ids, 100, rng), drop_after={0, 1, 2, 3, 4})


def test_a_late_dropout_does_not_expose_earlier_rounds():
    """Site 0 survives round 0, then drops: what the aggregator reconstructs must not unmask its round-0 vector."""
    rng = np.random.default_rng(7)
    ids = list(range(5))  # k = 4, t = 3
    s = session(ids)
    inputs0 = random_inputs(ids, 256, rng)
    s.round(0, inputs0)
    s.round(1, random_inputs(ids, 256, rng), drop_before={0})
    (_, masked0, replies0, *_), (_, _, replies1, *_) = s.log
    b0 = shamir.combine({w: r["self_mask"][0] for w, r in replies0.items() if 0 in r["self_mask"]}, 32)
    blob = {w: r["pairwise"][0] for w, r in replies1.items() if 0 in r["pairwise"]}
    size = shamir.SHARE_BYTES
    seeds = b"".join(shamir.combine_many({w: [b[i:i + size] for i in range(0, len(b), size)]
                                          for w, b in blob.items()}, 64))
    neighbours = s.config.neighbours(0)
    guess = masked0[0] - Prg(b0).words(256)
    for i in range(len(neighbours)):
        guess -= Prg(seeds[32 * i:32 * i + 32]).words(256)  # 0 < v: round-0 masks were added
    assert np.mean(guess == inputs0[0]) < 0.01
    # sanity (white box): had the round-0 pairwise seeds been revealed, the same computation would expose x_0
    exposed = masked0[0] - Prg(b0).words(256)
    for v in neighbours:
        exposed -= Prg(s.sites[0]._pair_seed(v, -1)).words(256)
    assert np.array_equal(exposed, inputs0[0])


# ---------------------------------------------------------------------- privacy of the masked vector
def _byte_counts(vector: np.ndarray) -> np.ndarray:
    """Counts of each byte value at each of the 8 byte positions of the words: (8, 256)."""
    as_bytes = vector.view(np.uint8).reshape(-1, 8)
    return np.stack([np.bincount(as_bytes[:, j], minlength=256) for j in range(8)])


def _masked_of_site0(x0: np.ndarray) -> np.ndarray:
    ids = list(range(4))
    s = session(ids)
    inputs = {u: np.zeros_like(x0) for u in ids}
    inputs[0] = x0
    s.round(0, inputs)
    return s.log[0][1][0]


def test_masked_vector_is_uniform_and_independent_of_the_input():
    length = 1 << 15
    histogram = (np.arange(length, dtype=np.uint64) % 97) << np.uint64(24)  # fixed-point counts: very structured
    y_hist = _masked_of_site0(histogram)
    y_zero = _masked_of_site0(np.zeros(length, dtype=np.uint64))
    assert stats.chisquare(_byte_counts(y_hist).ravel()).pvalue > P_MIN
    assert stats.chisquare(_byte_counts(y_zero).ravel()).pvalue > P_MIN
    assert stats.chi2_contingency(np.stack([_byte_counts(y_hist).ravel(), _byte_counts(y_zero).ravel()])).pvalue > P_MIN
    # sanity: the same tests reject the unmasked vectors at once
    assert stats.chisquare(_byte_counts(histogram).ravel()).pvalue < P_MIN
    raw = np.stack([_byte_counts(histogram).ravel(), _byte_counts(np.full(length, TOP)).ravel()]) + 1
    assert stats.chi2_contingency(raw).pvalue < P_MIN


# ---------------------------------------------------------------------- packets
def _flip(packet: bytes, index: int) -> bytes:
    return packet[:index] + bytes([packet[index] ^ 1]) + packet[index + 1:]


def test_tampered_packets_refused():
    s = session(range(4))
    packets = s.pending[1]
    sender = next(iter(packets))
    with pytest.raises(SecAggError, match="authentication"):
        s.sites[1].receive({sender: _flip(packets[sender], len(packets[sender]) - 1)})  # ciphertext / tag
    with pytest.raises(SecAggError, match="authentication"):
        s.sites[1].receive({sender: _flip(packets[sender], 30)})  # nonce
    with pytest.raises(SecAggError):
        s.sites[1].receive({sender: _flip(packets[sender], 5)})  # purpose in the header
    s.sites[1].receive(packets)  # the refused batches stored nothing


def test_misrouted_packets_refused():
    s = session(range(4))
    to_one = s.pending[1]
    sender = next(u for u in to_one if u != 2)
    with pytest.raises(SecAggError, match="misrouted"):
        s.sites[2].receive({sender: to_one[sender]})  # addressed to site 1
    relabelled = to_one[sender][:22] + (2).to_bytes(8, "big") + to_one[sender][30:]  # header says "to 2"
    with pytest.raises(SecAggError, match="authentication"):
        s.sites[2].receive({sender: relabelled})
    other = next(u for u in to_one if u != sender)
    with pytest.raises(SecAggError, match="misrouted"):
        s.sites[1].receive({other: to_one[sender]})  # from sender, presented as from another site
    with pytest.raises(SecAggError, match="misrouted"):
        s.aggregator.route({sender: {2: to_one[sender]}})


def test_replayed_packets_refused():
    rng = np.random.default_rng(8)
    ids = list(range(4))
    s = session(ids)
    setup_packets = {u: dict(p) for u, p in s.pending.items()}
    s.sites[1].receive(setup_packets[1])
    with pytest.raises(SecAggError, match="duplicate"):
        s.sites[1].receive(setup_packets[1])
    s.pending[1] = {}  # already delivered
    s.round(0, random_inputs(ids, 10, rng))
    with pytest.raises(SecAggError, match="stale or replayed"):
        s.sites[2].receive(setup_packets[2])  # a setup packet replayed in round 1
    round0_packets = {u: dict(p) for u, p in s.pending.items()}
    s.round(1, random_inputs(ids, 10, rng))
    with pytest.raises(SecAggError, match="stale or replayed"):
        s.sites[3].receive(round0_packets[3])  # round-0 packets replayed in round 2
    with pytest.raises(SecAggError, match="stale or replayed"):
        s.aggregator.route({u: {1: setup_packets[1][u]} for u in setup_packets[1]})  # setup packets, once more


# ---------------------------------------------------------------------- honest-site checks
def test_site_refuses_contradictory_unmask_requests():
    rng = np.random.default_rng(9)
    ids = list(range(5))
    s = session(ids)
    inputs = random_inputs(ids, 10, rng)
    outputs = {}
    for u in ids:
        s.sites[u].receive(s.pending[u])
        if u != 4:
            outputs[u] = s.sites[u].mask(0, inputs[u], ids)
    site = s.sites[0]
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        site.unmask(0, [0, 1, 2, 3, 4], [4])
    with pytest.raises(SecAggError, match="partition"):
        site.unmask(0, [0, 1, 2], [4])
    with pytest.raises(SecAggError, match="not named a survivor"):
        site.unmask(0, [1, 2, 3], [0, 4])
    with pytest.raises(SecAggError, match="last round this site masked"):
        site.unmask(1, [0, 1, 2, 3], [4])
    reply = site.unmask(0, [0, 1, 2, 3], [4])
    assert set(reply["self_mask"]) == {1, 2, 3} and set(reply["pairwise"]) == {4}
    with pytest.raises(SecAggError, match="already answered"):  # e.g. now claiming 4 survived and 3 dropped
        site.unmask(0, [0, 1, 2, 4], [3])
    with pytest.raises(SecAggError, match="revealed as dropped"):
        site.mask(1, inputs[0], ids)  # 4 is alive again?
    with pytest.raises(SecAggError, match="strictly increase"):
        site.mask(0, inputs[0], [0, 1, 2, 3])
    with pytest.raises(TypeError):
        site.mask(1, inputs[0].astype(np.int64), [0, 1, 2, 3])
    site.mask(1, inputs[0], [0, 1, 2, 3])
    s.sites[1].mask(1, inputs[1], [0, 1, 2, 3])  # site 1 never answered round 0, so never revealed 4's seeds
    with pytest.raises(SecAggError, match="cannot rejoin"):
        s.sites[1].mask(2, inputs[1], ids)


# ---------------------------------------------------------------------- state between messages
_SEP = "/"


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested dict as one flat dict of path keys (int keys become strings; empty dicts kept by a marker)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat[path + _SEP] = True
            flat.update(_flatten(value, path + _SEP))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: dict[str, object]) -> dict:
    """Inverse of `_flatten`: path parts made only of digits become int keys again (as a transport would)."""
    tree: dict = {}
    for path, value in flat.items():
        parts = [int(p) if p.isdigit() else p for p in path.split(_SEP)]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if parts[-1] != "":
            node[parts[-1]] = value
    return tree


def _check_plain(value, path="state", top=True) -> None:
    """Only the types a state may hold: str keys at the top, int or str keys inside, plain leaves."""
    if isinstance(value, dict):
        for key in value:
            if top:
                assert isinstance(key, str) and key, f"{path}: top-level key {key!r}"
            else:
                assert (isinstance(key, int) and not isinstance(key, bool) and key >= 0) or (
                    isinstance(key, str) and key), f"{path}: key {key!r}"
            _check_plain(value[key], f"{path}[{key!r}]", top=False)
    elif isinstance(value, list):
        assert all(isinstance(x, int) and not isinstance(x, bool) for x in value), f"{path}: list {value!r}"
    else:
        assert type(value) in (int, bool, bytes, str, np.ndarray), f"{path}: {type(value).__name__}"


def _reload(site: SecAggSite) -> SecAggSite:
    """A site as a fresh process sees it: exported, flattened for storage, read back and restored."""
    state = site.export_state()
    _check_plain(state)
    restored = _unflatten(_flatten(state))
    assert restored == state
    return SecAggSite.from_state(restored)


class ReloadingSites(dict):
    """Sites that are replaced by `_reload` of themselves after every call, as with one process per message."""

    def __getitem__(self, site_id):
        site = super().__getitem__(site_id)

        class Call:
            def __getattr__(_, name):
                def call(*args, **kwargs):
                    result = getattr(site, name)(*args, **kwargs)
                    self[site_id] = _reload(site)
                    return result
                return call
        return Call()


def test_state_round_trip_after_every_call_keeps_sums_exact():
    rng = np.random.default_rng(10)
    ids = [3, 8, 11, 20, 42]  # k = 4, t = 3
    seed = new_graph_seed()
    config = SecAggConfig.default(tuple(ids), seed)
    sites = ReloadingSites({u: _reload(SecAggSite(u, config)) for u in ids})
    aggregator = SecAggAggregator(config)
    keys = aggregator.collect_keys({u: sites[u].advertise() for u in ids})
    s = Session(config, sites, aggregator, aggregator.route({u: sites[u].share_keys(keys) for u in ids}))
    total, expected = s.round(0, random_inputs(ids, 257, rng))
    assert np.array_equal(total, expected)
    total, expected = s.round(1, random_inputs(ids, 257, rng), drop_before={11})
    assert np.array_equal(total, expected)
    total, expected = s.round(2, random_inputs(ids, 64, rng))
    assert np.array_equal(total, expected)
    total, expected = s.round(4, random_inputs(ids, 100, rng))
    assert np.array_equal(total, expected) and aggregator.alive == frozenset({3, 8, 20, 42})
    # the restored sites still refuse what the originals would: a second unmask, a dropped site rejoining
    with pytest.raises(SecAggError, match="already answered"):
        s.sites[3].unmask(4, [3, 8, 20, 42], [])
    with pytest.raises(SecAggError, match="revealed as dropped"):
        s.sites[3].mask(5, np.zeros(3, dtype=np.uint64), [3, 8, 11, 20])


def test_state_of_every_stage_uses_only_plain_types():
    config = SecAggConfig.default((0, 1, 2, 3), new_graph_seed())
    site = SecAggSite(0, config)
    states = [site.export_state()]  # fresh: no keys shared yet
    others = {u: SecAggSite(u, config) for u in (1, 2, 3)}
    keys = {u: s.advertise() for u, s in {0: site, **others}.items()}
    site.share_keys(keys)
    states.append(site.export_state())
    site.receive({u: others[u].share_keys(keys)[0] for u in others})
    site.mask(0, np.arange(5, dtype=np.uint64), [0, 1, 2, 3])
    states.append(site.export_state())
    site.unmask(0, [0, 1, 2], [3])
    states.append(site.export_state())
    for state in states:
        _check_plain(state)
        again = SecAggSite.from_state(state).export_state()
        assert again == state
    assert "tag" not in states[0] and "round" not in states[1] and states[2]["round"] == 0
    assert states[3]["revealed_dropped"] == [3] and states[3]["alive"] == [0, 1, 2]


def test_flower_record_round_trip():
    flower_app = pytest.importorskip("privboost.federated.flower_app")
    config = SecAggConfig.default((0, 1, 2), new_graph_seed())
    sites = {u: SecAggSite(u, config) for u in config.sites}
    keys = {u: s.advertise() for u, s in sites.items()}
    packets = {u: s.share_keys(keys) for u, s in sites.items()}
    sites[1].receive({0: packets[0][1]})  # held shares of the setup round (tag -1)
    state = sites[1].export_state()
    assert flower_app.from_record(flower_app.to_record(state)) == state


def _state_after_a_round() -> dict:
    ids = list(range(5))
    s = session(ids)
    s.round(0, random_inputs(ids, 8, np.random.default_rng(11)))
    s.sites[0].receive(s.pending[0])
    return s.sites[0].export_state()


def _tampered(state: dict, path: tuple, value=..., delete=False) -> dict:
    copy = _unflatten(_flatten(state))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


def test_malformed_state_refused():
    state = _state_after_a_round()
    SecAggSite.from_state(state)
    held_key = next(iter(state["held"]))
    sender = next(iter(state["held"][held_key]))
    pair = next(iter(state["pair_keys"]))
    bad = [
        _tampered(state, ("c_key",), delete=True),
        _tampered(state, ("config", "graph_seed"), delete=True),
        _tampered(state, ("extra",), 1),
        _tampered(state, ("version",), 2),
        _tampered(state, ("c_key",), state["c_key"][:-1]),
        _tampered(state, ("s_key",), bytearray(state["s_key"])),
        _tampered(state, ("site_id",), 99),
        _tampered(state, ("site_id",), True),
        _tampered(state, ("config", "degree"), 3),
        _tampered(state, ("config", "sites"), (0, 1, 2, 3, 4)),
        _tampered(state, ("pair_keys", pair), state["pair_keys"][pair][:31]),
        _tampered(state, ("pair_keys", str(pair)), state["pair_keys"][pair]),
        _tampered(state, ("channel_keys", pair), delete=True),
        _tampered(state, ("own_pair_seeds", pair), delete=True),
        _tampered(state, ("own_self_seed",), None),
        _tampered(state, ("tag",), delete=True),
        _tampered(state, ("round",), None),
        _tampered(state, ("masked",), 1),
        _tampered(state, ("answered",), "yes"),
        _tampered(state, ("alive",), [4, 3, 2, 1, 0]),
        _tampered(state, ("alive",), [0, 1, 1]),
        _tampered(state, ("alive",), [0, 1, 99]),
        _tampered(state, ("revealed_dropped",), frozenset({1})),
        _tampered(state, ("held", held_key, sender), state["held"][held_key][sender][:-1]),
        _tampered(state, ("held", held_key, 77), state["held"][held_key][sender]),
        _tampered(state, ("held", -1), {}),
        _tampered(state, ("held", state["tag"] + 1), delete=True),
        "not a dict",
        {},
    ]
    for malformed in bad:
        with pytest.raises(SecAggError):
            SecAggSite.from_state(malformed)
    truncated = dict(list(state.items())[:len(state) // 2])
    with pytest.raises(SecAggError):
        SecAggSite.from_state(truncated)
