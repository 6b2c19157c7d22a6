"""Secure aggregation for federated training: SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020) on top
of SecAgg (Bonawitz et al., CCS 2017), with keys set up once and then many aggregation rounds of uint64 vectors.

Construction. Sites are the nodes of a k-regular Harary graph H(n, k) whose nodes are relabelled by a permutation
derived from a public ``graph_seed`` (SecAgg+; k = n - 1 is SecAgg's complete graph). Key setup, once per training
(2 exchanges): every site u publishes two X25519 public keys, c_u (packets between neighbours travel AES-256-GCM
encrypted under HKDF-SHA256 of X25519(c_u, c_v), the associated data binding sender, recipient, purpose and round,
so a misrouted, replayed or altered packet is refused) and s_u (pairwise mask keys K_uv = X25519(s_u, s_v)); then
u sends each neighbour its Shamir shares (threshold t, `privboost.crypto.shamir`) of the secrets of its first
round. A round r (2 exchanges) with alive set A: u sends the aggregator

    y_u = x_u + PRG(b_u) + sum over alive neighbours v of (+PRG(p_uv) if u < v else -PRG(p_uv))   (mod 2^64)

where PRG is AES-256-CTR (`privboost.mpc.prg.Prg`), b_u a fresh self-mask seed (`secrets`) and p_uv = HKDF(K_uv,
info = pair and the round in which it was committed), together with encrypted packets giving its neighbours
Shamir shares of the NEXT round's secrets: a fresh b_u and its next pairwise seeds p_uv. Committing the next round's
secrets with this round's message gives fresh masks every round without an extra exchange. Then the aggregator names
survivors S (sent y) and dropped D = A - S; each survivor returns its shares of b_v for neighbours v in S and of
the pairwise seeds of neighbours in D. The aggregator reconstructs (any t shares suffice), subtracts the self masks
of S, cancels the pairwise masks between D and S, and obtains the sum over S of x exactly mod 2^64.

Why per-round pairwise seeds are shared rather than the key s_u (as in one-shot SecAgg): s_u is kept for the whole
training, and revealing it when u drops in a later round would let the aggregator strip u's pairwise masks from
every earlier y_u, whose self masks it already knows — exposing all of u's earlier inputs. Seeds of one round
reveal only that round's pairwise masks, for a round in which u sent nothing.

Degree. ``SecAggConfig.default`` uses the complete graph up to 12 sites, else k = min(n - 1, 2 ceil(log2 n) + 4),
t = floor(k/2) + 1. SecAgg+ shows k = O(log n) suffices against random dropouts and a fraction of corrupt sites,
its constants being tuned for statistical security at thousands of clients; for our tens to hundreds of sites the
constant here rests on deterministic facts: H(n, k) is k-vertex-connected, so any k - 1 sites dropped or colluding
in total never split the honest survivors (the aggregator learns only their total), and each neighbourhood
tolerates k - t = ceil(log2 n) + 1 dropouts; beyond that the random relabelling makes a bad neighbourhood unlikely.
Pass a larger degree for more margin. Each site does 1 + (alive neighbours) PRG expansions per round.

Threat model: semi-honest (honest-but-curious) aggregator, possibly colluding with up to t - 1 sites of any
neighbourhood; sites are semi-honest; public keys are relayed faithfully (no PKI). Honest sites enforce: survivors
and dropped are disjoint and partition the round's alive set, one unmask answer per round (never shares of both
the self mask and the pairwise seeds of one site in a round), a site revealed as dropped is never masked with
again, alive sets only shrink, round ids strictly increase. t > k/2 so that two disjoint parts of a neighbourhood
can never each reach the threshold.

Leakage: per round the aggregator learns the sum over survivors, the alive, surviving and dropped sets, and the
vector length; in setup, the public keys and who sends packets to whom (the public graph). Sites learn nothing about
other sites' vectors (they see only encrypted shares addressed to them and the public sets). A sum over few
survivors is revealing in itself: rounds with fewer than t survivors are refused.

State between messages. Flower runs a site's ClientApp in a fresh process per message, so ``SecAggSite`` state
round-trips through ``export_state`` / ``from_state`` as plain data (ints, bools, bytes, sorted lists of ints, dicts
keyed by str or non-negative int; no None or tuples), and ``from_state`` refuses (SecAggError) a state that is
malformed or inconsistent. The exported state holds the site's secrets — its X25519 private keys, channel and
pairwise keys, its unused self-mask and pairwise seeds, and the shares it holds of its neighbours' secrets — so it
belongs only in the site's own storage (Flower's per-node ``context.state``), never in a message to the aggregator
or another site: its pair keys give this site's pairwise masks of every round, which with the self-mask seeds the
aggregator reconstructs expose all of its earlier inputs; and the states of t neighbours of a site give that site's
next secrets.

Why not Flower's ``SecAggPlusWorkflow``: it quantises floats by stochastic rounding into 2^22 levels after clipping
to a range, summed mod 2^32 — inexact, while histogram sums must be exact for the model to equal centralised
training — and it runs its full 4-stage key setup every round, where we need hundreds of rounds per training.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privboost.crypto import shamir
from privboost.mpc.prg import SEED_BYTES, Prg, add_seeded_streams

GRAPH_SEED_BYTES = 32
SETUP_ROUND = -1  # round tag of the secrets committed during key setup (used by the first round)
KEY_NAMES = ("c", "s")  # advertised public keys: c for packet encryption, s for pairwise mask keys

_MAGIC = b"PBSA"
_VERSION = 1
_PURPOSE_SETUP = 1
_PURPOSE_NEXT = 2
_HEADER = struct.Struct(">4sBBqQQ")  # magic, version, purpose, round tag, sender, recipient
_NONCE_BYTES = 12
_MAX_SMALL_GRAPH = 12
UNMASK_THREADS = 2  # threads removing the masks from a round's sum (at most the cores there are)
_X25519_BYTES = 32
_STATE_FORMAT = "privboost/secagg-site"
_STATE_VERSION = 1
_STATE_KEYS = frozenset({"format", "version", "site_id", "config", "c_key", "s_key", "channel_keys", "pair_keys",
                         "alive", "committed", "held", "masked", "round_alive", "round_tag", "answered",
                         "revealed_dropped"})
_STATE_COMMITTED = frozenset({"tag", "own_self_seed", "own_pair_seeds"})  # present iff "committed"
_STATE_MASKED = frozenset({"round"})  # present iff "masked"
_STATE_CONFIG = frozenset({"sites", "degree", "threshold", "graph_seed"})


class SecAggError(Exception):
    """A secure-aggregation message or request was refused, or a sum cannot be recovered exactly."""


def new_graph_seed() -> bytes:
    """A fresh public graph seed, chosen by the aggregator."""
    return secrets.token_bytes(GRAPH_SEED_BYTES)


def _hkdf(material: bytes, info: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=salt, info=info).derive(material)


def _harary(sites: tuple[int, ...], degree: int, graph_seed: bytes) -> dict[int, tuple[int, ...]]:
    """Neighbours of each site in H(n, degree) with nodes relabelled by a permutation derived from graph_seed."""
    n = len(sites)
    order = Prg(_hkdf(graph_seed, b"privboost/secagg/graph", b"")).permutation(n)
    label = [sites[int(i)] for i in order]
    adjacent: dict[int, set[int]] = {site: set() for site in sites}
    offsets = list(range(1, degree // 2 + 1)) + ([n // 2] if degree % 2 else [])
    for position, u in enumerate(label):
        for offset in offsets:
            v = label[(position + offset) % n]
            adjacent[u].add(v)
            adjacent[v].add(u)
    return {site: tuple(sorted(adjacent[site])) for site in sites}


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters every site and the aggregator share: site ids, graph degree k, Shamir threshold t, seed."""

    sites: tuple[int, ...]
    degree: int
    threshold: int
    graph_seed: bytes
    _graph: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in sites):
            raise ValueError("site ids must be non-negative ints")
        if len(set(sites)) != len(sites) or len(sites) < 2:
            raise ValueError("need at least 2 distinct sites")
        n, k, t = len(sites), self.degree, self.threshold
        if not isinstance(k, int) or not 1 <= k <= n - 1 or (n * k) % 2:
            raise ValueError(f"degree must be in [1, {n - 1}] with n * degree even (a k-regular graph), got {k}")
        if not isinstance(t, int) or not k // 2 < t <= k:
            raise ValueError(f"threshold must exceed half the degree and be at most the degree: ({k // 2}, {k}]")
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != GRAPH_SEED_BYTES:
            raise ValueError(f"graph_seed must be {GRAPH_SEED_BYTES} bytes")
        object.__setattr__(self, "sites", tuple(sorted(sites)))
        object.__setattr__(self, "_graph", _harary(self.sites, k, self.graph_seed))

    @classmethod
    def default(cls, sites: tuple[int, ...], graph_seed: bytes) -> SecAggConfig:
        """Complete graph (SecAgg) up to 12 sites, else SecAgg+ degree min(n-1, 2 ceil(log2 n) + 4); t = k//2 + 1."""
        n = len(set(sites))
        degree = n - 1 if n <= _MAX_SMALL_GRAPH else min(n - 1, 2 * (n - 1).bit_length() + 4)
        return cls(tuple(sites), degree, degree // 2 + 1, graph_seed)

    def neighbours(self, site: int) -> list[int]:
        """The site's neighbours in the graph, ascending."""
        if site not in self._graph:
            raise ValueError(f"unknown site {site}")
        return list(self._graph[site])

    @property
    def pairwise_chunks(self) -> int:
        """Shamir secrets per site per round holding its pairwise seeds (two 32-byte seeds per 64-byte secret)."""
        return (self.degree + 1) // 2


def _load_public(keys: dict[str, bytes]) -> tuple[X25519PublicKey, X25519PublicKey]:
    try:
        return tuple(X25519PublicKey.from_public_bytes(bytes(keys[name])) for name in KEY_NAMES)  # type: ignore
    except (KeyError, TypeError, ValueError) as exc:
        raise SecAggError(f"malformed public keys: {exc}") from exc


def _parse_header(packet: bytes) -> tuple[int, int, int, int]:
    """(purpose, round tag, sender, recipient) of a packet."""
    if not isinstance(packet, bytes | bytearray) or len(packet) < _HEADER.size + _NONCE_BYTES + 16:
        raise SecAggError("malformed packet")
    magic, version, purpose, tag, sender, recipient = _HEADER.unpack_from(packet)
    if magic != _MAGIC or version != _VERSION:
        raise SecAggError("not a privboost secure-aggregation packet")
    return purpose, tag, sender, recipient


def _split_shares(blob: bytes, count: int) -> list[bytes]:
    if not isinstance(blob, bytes | bytearray) or len(blob) != count * shamir.SHARE_BYTES:
        raise SecAggError(f"expected {count} shares of {shamir.SHARE_BYTES} bytes")
    return [bytes(blob[i:i + shamir.SHARE_BYTES]) for i in range(0, len(blob), shamir.SHARE_BYTES)]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed(message: str) -> SecAggError:
    return SecAggError(f"malformed site state: {message}")


def _expect_keys(where: object, keys: frozenset[str], name: str) -> dict:
    if not isinstance(where, dict):
        raise _malformed(f"{name}: expected a dict, got {type(where).__name__}")
    got = set(where)
    if got != keys:
        missing, extra = sorted(keys - got), sorted(map(repr, got - keys))
        raise _malformed(f"{name}: missing keys {missing}, unexpected keys {extra}")
    return where


def _read(where: dict, key: str, kind: type) -> object:
    if key not in where:
        raise _malformed(f"missing {key!r}")
    value = where[key]
    if not (_is_int(value) if kind is int else type(value) is kind):
        raise _malformed(f"{key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _read_int(where: dict, key: str, minimum: int | None = None) -> int:
    value: int = _read(where, key, int)  # type: ignore[assignment]
    if minimum is not None and value < minimum:
        raise _malformed(f"{key!r} is {value}, below {minimum}")
    return value


def _read_bytes(where: dict, key: str, length: int) -> bytes:
    value: bytes = _read(where, key, bytes)  # type: ignore[assignment]
    if len(value) != length:
        raise _malformed(f"{key!r} must be {length} bytes")
    return value


def _read_ints(where: dict, key: str, within: frozenset[int] | None, ascending: bool = True) -> list[int]:
    """A list of distinct ints, all in ``within`` unless it is None, in ascending order if ``ascending``."""
    value: list = _read(where, key, list)  # type: ignore[assignment]
    if not all(_is_int(x) for x in value):
        raise _malformed(f"{key!r} must be a list of ints")
    if len(set(value)) != len(value) or (ascending and value != sorted(value)):
        raise _malformed(f"{key!r} must hold distinct ints" + (" in ascending order" if ascending else ""))
    if within is not None and not set(value) <= within:
        raise _malformed(f"{key!r} names unknown sites")
    return value


def _read_keyed_bytes(where: dict, key: str, allowed: list[int], length: int, complete: bool) -> dict[int, bytes]:
    """``{site: bytes of length}`` keyed by sites among ``allowed`` (all of them if ``complete``)."""
    value: dict = _read(where, key, dict)  # type: ignore[assignment]
    if not all(_is_int(k) and k in allowed for k in value) or (complete and set(value) != set(allowed)):
        raise _malformed(f"{key!r} must be keyed by {'all' if complete else 'some'} neighbours of this site")
    if not all(type(v) is bytes and len(v) == length for v in value.values()):
        raise _malformed(f"{key!r} values must be {length} bytes")
    return dict(value)


class SecAggSite:
    """One site's side: ``advertise``, ``share_keys``, ``receive`` once; then per round ``mask``, ``unmask``.

    Between messages the site may be saved with ``export_state`` and restored with ``from_state``.
    """

    def __init__(self, site_id: int, config: SecAggConfig) -> None:
        self.site_id = site_id
        self.config = config
        self._neighbours = config.neighbours(site_id)
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._channel_keys: dict[int, bytes] = {}  # AES-256 keys of the channels, kept for export_state
        self._channels: dict[int, AESGCM] = {}
        self._pair_keys: dict[int, bytes] = {}
        self._alive: frozenset[int] = frozenset()  # sites this site may still mask with
        self._tag: int | None = None  # round tag of this site's committed, not yet used secrets
        self._own: tuple[bytes, dict[int, bytes]] | None = None  # (b, {neighbour: pairwise seed}) for _tag
        self._held: dict[int, dict[int, list[bytes]]] = {}  # round tag -> sender -> its shares for this site
        self._round: int | None = None  # last masked round
        self._round_alive: frozenset[int] = frozenset()
        self._round_tag = SETUP_ROUND
        self._answered = True
        self._revealed_dropped: set[int] = set()

    def export_state(self) -> dict:
        """Everything this site must remember between messages, as plain data; `from_state` continues from it.

        The dict holds this site's secrets (private keys, channel and pair keys, self-mask seeds, shares of its
        neighbours' secrets): keep it only in this site's own storage, never send it anywhere. Its values are ints,
        bools, bytes, sorted lists of ints and dicts (str keys at the top, non-negative int keys inside: ``held``
        is keyed by round tag + 1, as transports may read only digit strings back as ints); absent values are
        missing keys, marked by the flags ``committed`` and ``masked``.
        """
        state: dict = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "site_id": self.site_id,
            "config": {"sites": list(self.config.sites), "degree": self.config.degree,
                       "threshold": self.config.threshold, "graph_seed": self.config.graph_seed},
            "c_key": self._c_key.private_bytes_raw(),
            "s_key": self._s_key.private_bytes_raw(),
            "channel_keys": dict(self._channel_keys),
            "pair_keys": dict(self._pair_keys),
            "alive": sorted(self._alive),
            "committed": self._tag is not None,
            "held": {tag - SETUP_ROUND: {sender: b"".join(shares) for sender, shares in by_sender.items()}
                     for tag, by_sender in self._held.items()},
            "masked": self._round is not None,
            "round_alive": sorted(self._round_alive),
            "round_tag": self._round_tag,
            "answered": self._answered,
            "revealed_dropped": sorted(self._revealed_dropped),
        }
        if self._tag is not None and self._own is not None:
            state["tag"] = self._tag
            state["own_self_seed"] = self._own[0]
            state["own_pair_seeds"] = dict(self._own[1])
        if self._round is not None:
            state["round"] = self._round
        return state

    @classmethod
    def from_state(cls, state: dict) -> SecAggSite:
        """The site saved by `export_state`; SecAggError if the state is malformed or inconsistent."""
        if not isinstance(state, dict):
            raise _malformed(f"expected a dict, got {type(state).__name__}")
        if _read(state, "format", str) != _STATE_FORMAT or _read_int(state, "version") != _STATE_VERSION:
            raise SecAggError("not a privboost secure-aggregation site state of a supported version")
        committed, masked = _read(state, "committed", bool), _read(state, "masked", bool)
        _expect_keys(state, _STATE_KEYS | (_STATE_COMMITTED if committed else frozenset())
                     | (_STATE_MASKED if masked else frozenset()), "top level")
        raw = _expect_keys(state["config"], _STATE_CONFIG, "config")
        try:
            config = SecAggConfig(tuple(_read_ints(raw, "sites", None, ascending=False)),
                                  _read_int(raw, "degree"), _read_int(raw, "threshold"),
                                  _read_bytes(raw, "graph_seed", GRAPH_SEED_BYTES))
        except ValueError as exc:
            raise _malformed(f"config: {exc}") from exc
        sites = frozenset(config.sites)
        site_id = _read_int(state, "site_id")
        if site_id not in sites:
            raise _malformed(f"site {site_id} is not in the config")
        neighbours = config.neighbours(site_id)

        site = cls.__new__(cls)
        site.site_id, site.config, site._neighbours = site_id, config, neighbours
        try:
            site._c_key = X25519PrivateKey.from_private_bytes(_read_bytes(state, "c_key", _X25519_BYTES))
            site._s_key = X25519PrivateKey.from_private_bytes(_read_bytes(state, "s_key", _X25519_BYTES))
        except ValueError as exc:
            raise _malformed(f"private keys: {exc}") from exc
        site._channel_keys = _read_keyed_bytes(state, "channel_keys", neighbours, SEED_BYTES, complete=False)
        site._pair_keys = _read_keyed_bytes(state, "pair_keys", neighbours, _X25519_BYTES, complete=False)
        if set(site._channel_keys) != set(site._pair_keys):
            raise _malformed("channel keys and pair keys are for different neighbours")
        site._channels = {v: AESGCM(key) for v, key in site._channel_keys.items()}
        site._alive = frozenset(_read_ints(state, "alive", sites))

        share_count = 1 + config.pairwise_chunks
        site._held = {}
        held: dict = _read(state, "held", dict)  # type: ignore[assignment]
        for key, by_sender in held.items():
            if not _is_int(key) or key < 0 or not isinstance(by_sender, dict):
                raise _malformed(f"held: key {key!r} must be a non-negative int (round tag + 1) mapped to a dict")
            tag = key + SETUP_ROUND
            site._held[tag] = {}
            for sender, blob in by_sender.items():
                if not _is_int(sender) or sender not in site._channel_keys:
                    raise _malformed(f"held[{tag}]: shares from {sender!r}, not a neighbour with keys")
                if type(blob) is not bytes:
                    raise _malformed(f"held[{tag}][{sender}] must be bytes")
                try:
                    site._held[tag][sender] = _split_shares(blob, share_count)
                except SecAggError as exc:
                    raise _malformed(f"held[{tag}][{sender}]: {exc}") from exc

        site._tag, site._own = None, None
        if committed:
            site._tag = _read_int(state, "tag", minimum=SETUP_ROUND)
            if site._tag not in site._held:
                raise _malformed(f"no held shares for the committed round tag {site._tag}")
            site._own = (_read_bytes(state, "own_self_seed", SEED_BYTES),
                         _read_keyed_bytes(state, "own_pair_seeds", neighbours, SEED_BYTES, complete=True))
        site._round = _read_int(state, "round", minimum=0) if masked else None
        site._round_alive = frozenset(_read_ints(state, "round_alive", sites))
        site._round_tag = _read_int(state, "round_tag", minimum=SETUP_ROUND)
        site._answered = _read(state, "answered", bool)
        site._revealed_dropped = set(_read_ints(state, "revealed_dropped", sites))
        if masked and not committed:
            raise _malformed("a masked round without committed secrets")
        if masked and (site_id not in site._round_alive or site._tag != site._round):
            raise _malformed("the last masked round does not match the committed secrets")
        if not masked and not site._answered:
            raise _malformed("an unmask answer is pending but no round was masked")
        return site

    def advertise(self) -> dict[str, bytes]:
        """Public keys ``{"c": X25519 for packets, "s": X25519 for pairwise masks}`` (32 bytes each)."""
        return {"c": self._c_key.public_key().public_bytes_raw(), "s": self._s_key.public_key().public_bytes_raw()}

    def share_keys(self, public_keys: dict[int, dict[str, bytes]]) -> dict[int, bytes]:
        """Derive channel and pairwise keys; encrypted packets ``{neighbour: packet}`` for the first round."""
        if self._tag is not None:
            raise SecAggError("keys were already shared")
        mine = public_keys.get(self.site_id)
        if mine is not None and {name: bytes(mine.get(name, b"")) for name in KEY_NAMES} != self.advertise():
            raise SecAggError("the public keys relayed for this site are not its own")
        for v in self._neighbours:
            if v not in public_keys:
                continue  # absent from setup: never alive
            c_public, s_public = _load_public(public_keys[v])
            lo, hi = sorted((self.site_id, v))
            try:
                channel_secret = self._c_key.exchange(c_public)
                self._pair_keys[v] = self._s_key.exchange(s_public)
            except ValueError as exc:
                raise SecAggError(f"bad public key of site {v}: {exc}") from exc
            info = b"privboost/secagg/channel" + struct.pack(">QQ", lo, hi)
            self._channel_keys[v] = _hkdf(channel_secret, info, self.config.graph_seed)
            self._channels[v] = AESGCM(self._channel_keys[v])
        known = set(public_keys) & set(self.config.sites)
        self._alive = frozenset(known | {self.site_id})
        return self._commit(SETUP_ROUND, self._alive)

    def _pair_seed(self, v: int, tag: int) -> bytes:
        lo, hi = sorted((self.site_id, v))
        info = b"privboost/secagg/pairwise" + struct.pack(">QQq", lo, hi, tag)
        return _hkdf(self._pair_keys[v], info, self.config.graph_seed)

    def _commit(self, tag: int, alive: frozenset[int]) -> dict[int, bytes]:
        """Fresh secrets for the round after ``tag``; their shares sealed for each alive neighbour."""
        b = secrets.token_bytes(SEED_BYTES)
        seeds = {v: self._pair_seed(v, tag) if v in alive and v in self._pair_keys else bytes(SEED_BYTES)
                 for v in self._neighbours}
        items = [seeds[v] for v in self._neighbours] + [bytes(SEED_BYTES)] * (len(self._neighbours) % 2)
        chunks = [items[i] + items[i + 1] for i in range(0, len(items), 2)]
        shares = shamir.split_many([b, *chunks], self.config.threshold, self._neighbours)
        self._own, self._tag = (b, seeds), tag
        self._held[tag] = {}
        purpose = _PURPOSE_SETUP if tag == SETUP_ROUND else _PURPOSE_NEXT
        return {v: self._seal(v, purpose, tag, b"".join(shares[v]))
                for v in self._neighbours if v in alive and v in self._channels}

    def _seal(self, recipient: int, purpose: int, tag: int, plaintext: bytes) -> bytes:
        header = _HEADER.pack(_MAGIC, _VERSION, purpose, tag, self.site_id, recipient)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return header + nonce + self._channels[recipient].encrypt(nonce, plaintext, header)

    def receive(self, packets: dict[int, bytes]) -> None:
        """Store the packets ``{sender: packet}`` routed to this site; refuses (all of them) any bad packet."""
        if self._tag is None:
            raise SecAggError("receive before share_keys")
        purpose = _PURPOSE_SETUP if self._tag == SETUP_ROUND else _PURPOSE_NEXT
        store = self._held[self._tag]
        opened: dict[int, list[bytes]] = {}
        for sender, packet in packets.items():
            if sender not in self._channels:
                raise SecAggError(f"packet from site {sender}, which is not a neighbour with keys")
            h_purpose, h_tag, h_sender, h_recipient = _parse_header(packet)
            if h_sender != sender or h_recipient != self.site_id:
                raise SecAggError(f"misrouted packet: from {h_sender} to {h_recipient}, delivered as from {sender} "
                                  f"to {self.site_id}")
            if h_purpose != purpose or h_tag != self._tag:
                raise SecAggError(f"stale or replayed packet from site {sender}: round tag {h_tag}, "
                                  f"expected {self._tag}")
            if sender in store:
                raise SecAggError(f"duplicate packet from site {sender} for round tag {self._tag}")
            header, nonce = packet[:_HEADER.size], packet[_HEADER.size:_HEADER.size + _NONCE_BYTES]
            try:
                plaintext = self._channels[sender].decrypt(nonce, packet[_HEADER.size + _NONCE_BYTES:], header)
            except InvalidTag as exc:
                raise SecAggError(f"packet from site {sender} failed authentication (tampered or forged)") from exc
            opened[sender] = _split_shares(plaintext, 1 + self.config.pairwise_chunks)
        store.update(opened)

    def mask(self, round_id: int, vector: np.ndarray, alive: Collection[int],
             in_place: bool = False) -> tuple[np.ndarray, dict[int, bytes]]:
        """Masked ``vector`` (uint64, any shape) for round ``round_id``, and packets for the next round.

        The masked vector is a copy, or, with ``in_place`` (a contiguous vector the caller no longer needs), the
        vector itself masked where it lies: no second vector's worth of fresh memory.
        """
        if self._tag is None or self._own is None:
            raise SecAggError("mask before share_keys")
        if not isinstance(round_id, int) or round_id < 0:
            raise SecAggError("round ids must be non-negative ints")
        if self._round is not None and round_id <= self._round:
            raise SecAggError(f"round ids must strictly increase: {round_id} after {self._round}")
        vector = np.asarray(vector)
        if vector.dtype != np.uint64:
            raise TypeError(f"vector must be uint64, got {vector.dtype}")
        alive = frozenset(alive)
        if self.site_id not in alive:
            raise SecAggError("asked to mask in a round where this site is not alive")
        again = alive & self._revealed_dropped
        if again:
            raise SecAggError(f"sites {sorted(again)} were revealed as dropped; refusing to mask with them again")
        if not alive <= self._alive:
            raise SecAggError(f"sites {sorted(alive - self._alive)} are not alive any more and cannot rejoin")
        b, seeds = self._own
        masked = vector if in_place and vector.flags.c_contiguous and vector.flags.writeable else vector.copy()
        streams = [(b, False)] + [(seeds[v], self.site_id > v) for v in self._neighbours if v in alive]
        add_seeded_streams(masked, streams)
        previous = self._tag
        packets = self._commit(round_id, alive)
        for tag in [tag for tag in self._held if tag not in (previous, round_id)]:
            del self._held[tag]
        self._alive = alive
        self._round, self._round_alive, self._round_tag, self._answered = round_id, alive, previous, False
        return masked, packets

    def unmask(self, round_id: int, survivors: Collection[int], dropped: Collection[int]) -> dict:
        """This site's shares: of b for surviving neighbours, of pairwise seeds for dropped neighbours.

        Returns ``{"self_mask": {site: share}, "pairwise": {site: concatenated shares}}``; answers once per round.
        """
        if self._round is None or round_id != self._round:
            raise SecAggError(f"unmask for round {round_id}, but the last round this site masked is {self._round}")
        if self._answered:
            raise SecAggError(f"already answered the unmask request of round {round_id}; refusing a second one")
        survivors, dropped = frozenset(survivors), frozenset(dropped)
        both = survivors & dropped
        if both:
            raise SecAggError(f"sites {sorted(both)} named both survivor and dropped; refusing")
        if survivors | dropped != self._round_alive:
            raise SecAggError("survivors and dropped must partition the round's alive set")
        if self.site_id not in survivors:
            raise SecAggError("this site sent its masked vector but is not named a survivor")
        again = survivors & self._revealed_dropped
        if again:
            raise SecAggError(f"sites {sorted(again)} were revealed as dropped; refusing to reveal their self masks")
        self._answered = True
        held = self._held.pop(self._round_tag, {})
        self._revealed_dropped |= dropped
        self._alive -= dropped
        return {"self_mask": {v: held[v][0] for v in self._neighbours if v in survivors and v in held},
                "pairwise": {v: b"".join(held[v][1:]) for v in self._neighbours if v in dropped and v in held}}


class SecAggAggregator:
    """The aggregator: relays keys and packets, tracks alive sites, unmasks each round's exact sum."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self.public_keys: dict[int, dict[str, bytes]] = {}
        self._alive: frozenset[int] = frozenset()
        self._phase = "keys"  # keys -> setup -> rounds
        self._round: int | None = None
        self._round_alive: frozenset[int] = frozenset()
        self._open = False

    @property
    def alive(self) -> frozenset[int]:
        """Sites that took part in every step so far; dropped sites never return."""
        return self._alive

    def collect_keys(self, adverts: dict[int, dict[str, bytes]]) -> dict[int, dict[str, bytes]]:
        """Check and keep the sites' public keys; returns the dict to send to every site for ``share_keys``."""
        if self._phase != "keys":
            raise SecAggError("keys were already collected")
        for site, keys in adverts.items():
            if site not in self.config.sites:
                raise SecAggError(f"unknown site {site}")
            _load_public(keys)
        self.public_keys = {site: {name: bytes(keys[name]) for name in KEY_NAMES} for site, keys in adverts.items()}
        self._alive = frozenset(adverts)
        self._phase = "setup"
        return {site: dict(keys) for site, keys in self.public_keys.items()}

    def begin_round(self, round_id: int) -> frozenset[int]:
        """Open round ``round_id`` (ids strictly increase); returns the alive set to send with the mask request."""
        if self._phase == "setup":
            raise SecAggError("route the key-setup packets before the first round")
        if not isinstance(round_id, int) or round_id < 0 or (self._round is not None and round_id <= self._round):
            raise SecAggError(f"round ids must be non-negative and strictly increase: {round_id} after {self._round}")
        t = self.config.threshold
        if len(self._alive) < t:
            raise SecAggError(f"only {len(self._alive)} sites are alive, fewer than the threshold {t}")
        for u in self._alive:
            count = len(set(self.config.neighbours(u)) & self._alive)
            if count < t:
                raise SecAggError(f"site {u} has {count} alive neighbours, fewer than the threshold {t}: "
                                  "its masks could not be removed")
        self._round, self._round_alive, self._open = round_id, self._alive, True
        return self._alive

    def _ensure_round(self, round_id: int) -> None:
        if not (self._open and round_id == self._round):
            self.begin_round(round_id)

    def route(self, packets_by_sender: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Regroup ``{sender: {recipient: packet}}`` as ``{recipient: {sender: packet}}`` (alive recipients only).

        The first call routes key-setup packets (sites that send none are out); later calls route the packets sent
        with the masked vectors of the current round.
        """
        if self._phase == "keys":  # collect_keys was skipped: every configured site may take part
            self._alive, self._phase = frozenset(self.config.sites), "setup"
        headers: dict[tuple[int, int], tuple[int, int]] = {}
        for sender, packets in packets_by_sender.items():
            if sender not in self.config.sites:
                raise SecAggError(f"packets from unknown site {sender}")
            neighbours = set(self.config.neighbours(sender))
            for recipient, packet in packets.items():
                h_purpose, h_tag, h_sender, h_recipient = _parse_header(packet)
                if (h_sender, h_recipient) != (sender, recipient) or recipient not in neighbours:
                    raise SecAggError(f"misrouted packet: sent by {sender} to {recipient}, labelled "
                                      f"{h_sender} -> {h_recipient}")
                headers[sender, recipient] = (h_purpose, h_tag)
        if self._phase == "setup":
            purpose, tag, allowed = _PURPOSE_SETUP, SETUP_ROUND, self._alive
        else:
            if not self._open:  # the round was not opened with begin_round: it is the one the packets name
                tags = {h_tag for _, h_tag in headers.values()}
                if not tags:
                    return {}
                if len(tags) != 1 or min(tags) < 0:
                    raise SecAggError(f"stale or replayed packets: round tags {sorted(tags)}, expected one round "
                                      f"after {self._round}")
                self.begin_round(tags.pop())
            purpose, tag, allowed = _PURPOSE_NEXT, self._round, self._round_alive
        routed: dict[int, dict[int, bytes]] = {}
        for sender, packets in packets_by_sender.items():
            if sender not in allowed:
                raise SecAggError(f"packets from site {sender}, which is not alive")
            for recipient, packet in packets.items():
                if headers[sender, recipient] != (purpose, tag):
                    raise SecAggError(f"stale or replayed packet from site {sender}: round tag "
                                      f"{headers[sender, recipient][1]}, expected {tag}")
                if recipient in allowed:
                    routed.setdefault(recipient, {})[sender] = packet
        if self._phase == "setup":
            self._alive = self._alive & frozenset(packets_by_sender)
            self._phase = "rounds"
        return routed

    def _reconstruct(self, jobs: dict[int, dict[int, list[bytes]]], length: int, what: str) -> dict[int, list[bytes]]:
        """Secrets of each owner from ``{owner: {holder: [shares]}}``, one Lagrange set per distinct holder set."""
        t = self.config.threshold
        groups: dict[tuple[int, ...], list[int]] = {}
        for owner, by_holder in jobs.items():
            if len(by_holder) < t:
                raise SecAggError(f"round {self._round}: {len(by_holder)} shares of the {what} of site {owner} "
                                  f"arrived, fewer than the threshold {t}; no sum is returned")
            groups.setdefault(tuple(sorted(by_holder)[:t]), []).append(owner)
        secrets_: dict[int, list[bytes]] = {}
        for holders, owners in groups.items():
            rows = {h: [share for owner in owners for share in jobs[owner][h]] for h in holders}
            try:
                values = shamir.combine_many(rows, length)
            except ValueError as exc:
                raise SecAggError(f"round {self._round}: inconsistent shares of the {what} of sites {owners}: "
                                  f"{exc}") from exc
            per = len(values) // len(owners)
            for i, owner in enumerate(owners):
                secrets_[owner] = values[i * per:(i + 1) * per]
        return secrets_

    def aggregate(self, round_id: int, masked: dict[int, np.ndarray], unmask_replies: dict[int, dict]) -> np.ndarray:
        """Exact sum mod 2^64 of the survivors' vectors; SecAggError if any needed secret has too few shares."""
        self._ensure_round(round_id)
        self._open = False
        t = self.config.threshold
        survivors = frozenset(masked)
        if not survivors <= self._round_alive:
            raise SecAggError(f"masked vectors from sites {sorted(survivors - self._round_alive)}, not alive")
        dropped = self._round_alive - survivors
        repliers = frozenset(unmask_replies)
        if not repliers <= survivors:
            raise SecAggError(f"unmask replies from sites {sorted(repliers - survivors)}, which sent no masked vector")
        self._alive = self._alive - dropped - (survivors - repliers)
        if len(survivors) < t:
            raise SecAggError(f"round {round_id}: only {len(survivors)} sites sent masked vectors, fewer than the "
                              f"threshold {t}")
        shapes = {np.asarray(y).shape for y in masked.values()}
        if len(shapes) != 1 or any(np.asarray(y).dtype != np.uint64 for y in masked.values()):
            raise SecAggError("masked vectors must all be uint64 of one shape")
        shape = shapes.pop()
        chunks = self.config.pairwise_chunks
        b_jobs: dict[int, dict[int, list[bytes]]] = {u: {} for u in survivors}
        p_jobs: dict[int, dict[int, list[bytes]]] = {}
        needs_pairwise = {u for u in dropped if survivors & set(self.config.neighbours(u))}
        for u in needs_pairwise:
            p_jobs[u] = {}
        for w, reply in unmask_replies.items():
            try:
                self_mask, pairwise = reply["self_mask"], reply["pairwise"]
            except (KeyError, TypeError) as exc:
                raise SecAggError(f"malformed unmask reply from site {w}") from exc
            neighbours = set(self.config.neighbours(w))
            for u, share in self_mask.items():
                if u not in survivors or u not in neighbours:
                    raise SecAggError(f"site {w} sent a self-mask share of site {u}, which it was not asked for")
                b_jobs[u][w] = _split_shares(share, 1)
            for u, blob in pairwise.items():
                if u not in dropped or u not in neighbours:
                    raise SecAggError(f"site {w} sent pairwise shares of site {u}, which it was not asked for")
                if u in p_jobs:
                    p_jobs[u][w] = _split_shares(blob, chunks)
        self_masks = self._reconstruct(b_jobs, SEED_BYTES, "self-mask seed")
        pair_seeds = self._reconstruct(p_jobs, 2 * SEED_BYTES, "pairwise seeds")
        total = np.zeros(shape, dtype=np.uint64)
        streams = [(self_masks[u][0], True) for u in sorted(survivors)]
        for u in sorted(pair_seeds):
            flat = b"".join(pair_seeds[u])
            for i, v in enumerate(self.config.neighbours(u)):
                if v in survivors:  # y_v holds +PRG(p_uv) if v < u else -PRG(p_uv)
                    streams.append((flat[i * SEED_BYTES:(i + 1) * SEED_BYTES], v < u))
        # the sites wait for this sum: use every core the aggregator has (two here)
        add_seeded_streams(total, streams, threads=min(UNMASK_THREADS, os.cpu_count() or 1),
                           arrays=tuple(np.asarray(y) for y in masked.values()))
        return total
