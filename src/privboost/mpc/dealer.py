"""Correlated randomness: the provider interface, the trusted dealer, and the parties' dealer client.

Model: a trusted dealer (as XORBoost, Deforth et al., PoPETs 2022) that sees no data and no opened value. At setup it
sends each party a fresh 256-bit seed (from `secrets`); each party expands *all* its random parts from its seed with
AES-256-CTR, and the dealer, which holds both seeds, expands the same streams and sends party 1 only the
*corrections* that make the correlation hold (e.g. c1 = a·b - c0 for a Beaver triple). Party 0 never hears from the
dealer after setup; party 1 sends small requests (kind + shape) and receives the corrections. Both parties must
request the same correlations in the same order (protocols are deterministic, so they do).

Correlations (party p's view; every array uniform on its own):
  beaver(shape)              a, b, c with c = a*b            Beaver, CRYPTO 1991
  and_triples(shape)         a, b, c words with c = a AND b  (boolean Beaver triples)
  matmul_triple(n, m, k)     U, V, W with W = U·V            matrix triples (SecureML, Mohassel-Zhang S&P 2017)
  fixed_mask(n, m)           U, the mask of a fixed operand X whose opening E = X - U is reused; then per product
  fixed_product(h, k)        V (fresh), W with W = U^T·V     (SecureML's reused-mask matrix triples)
  fixed_product_nn(h, k)     V (fresh, m×k), W with W = U·V  (the same, for products X·Z)
  trunc_pairs(shape, bits)   r, r >> bits, r >> 63           truncation pairs with the top bit (Escudero et al.,
                                                             CRYPTO 2020; Dalskov-Escudero-Keller, PETS 2020)
  random_bits(shape)         r as XOR bit and as ring element (bit injection / B2A)
  random_word_bits(shape, c) r words and their low c bits as ring elements (c-way bit injection, c <= 64)
  permutation(n)             pi_p (party p's own random permutation); the dealer keeps both
  permute_masks(h, step)     masks for one permute-and-reshare step (dealer-aided version of Chase-Ghosh-
                             Poburinnaya's share translation, ASIACRYPT 2020; as XORBoost); also batched
  shuffle_masks_many(hs)     both steps' masks of forward shuffles at once: the two share translations merged
                             into one correction c (party 1's intermediate share is never materialised), with
                             one input mask for a batch that shuffles the same block

Leakage to the dealer: it knows every mask, every random permutation it issued and their composition; it must not
collude with a party. A dealer-free offline phase (OT/HE triple generation) or a third replicated party can replace
it by implementing `CorrelationProvider`.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from privboost.mpc.gather import add_composed_difference, gather_rows, inverse_permutation
from privboost.mpc.kernels import matmul_nn, matmul_tn
from privboost.mpc.prg import Prg, StreamSlice, add_streams_into, new_seed
from privboost.mpc.ring import DTYPE
from privboost.mpc.transport import Channel, MpcError, PeerDisconnected, TransportError

Shape = tuple[int, ...]
_ONE = np.uint64(1)
_BIT_INDEX = np.arange(64, dtype=DTYPE)


def word_bits(words: np.ndarray, count: int = 64) -> np.ndarray:
    """Each uint64's low ``count`` bits as 0/1 uint64s, in a new last axis (bit j at index j)."""
    return (words[..., None] >> _BIT_INDEX[:count]) & _ONE


class CorrelationProvider(ABC):
    """Source of this party's part of each correlation. Protocols only ever call these methods."""

    party_id: int

    @abstractmethod
    def beaver(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shares of (a, b, a*b) mod 2^64, elementwise."""

    @abstractmethod
    def and_triples(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """XOR shares of words (a, b, a AND b)."""

    @abstractmethod
    def matmul_triple(self, n: int, m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shares of U (n×m), V (m×k) and W = U·V."""

    @abstractmethod
    def fixed_mask(self, n: int, m: int) -> tuple[int, StreamSlice]:
        """(handle, share of U (n×m) as the n·m words of a `StreamSlice`, row-major, expanded on demand): the mask
        of a fixed operand for `fixed_product`."""

    @abstractmethod
    def fixed_product(self, handle: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Shares of a fresh V (n×k) and of W = U^T·V (m×k) for the fixed mask ``handle``."""

    @abstractmethod
    def fixed_product_nn(self, handle: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Shares of a fresh V (m×k) and of W = U·V (n×k) for the fixed mask ``handle``."""

    @abstractmethod
    def trunc_pairs(self, shape: Shape, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shares of r (uniform), r >> bits (logical) and r >> 63."""

    @abstractmethod
    def random_bits(self, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
        """(XOR share of a random bit r as 0/1 uint64, arithmetic share of r)."""

    @abstractmethod
    def random_word_bits(self, shape: Shape, count: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(XOR share of random words r, arithmetic shares of r's low ``count`` bits in a new last axis)."""

    @abstractmethod
    def permutation(self, size: int) -> tuple[int, np.ndarray]:
        """(handle, this party's own random permutation of range(size) as gather indices)."""

    @abstractmethod
    def permute_masks_many(self, handles: list[int], step: int, inverse: bool, shape: Shape) -> dict[str, np.ndarray]:
        """`permute_masks` for several permutations at once: arrays of shape (len(handles), *shape)."""

    @abstractmethod
    def shuffle_masks_many(self, handles: list[int], shape: Shape, shared: bool = False) -> dict[str, np.ndarray]:
        """Masks of a whole forward shuffle (both steps) for each handle, on blocks of ``shape`` = (n, ...).

        Party 0 gets ``r`` and ``s`` (len(handles), *shape); party 1 gets ``a`` (``shape`` if ``shared``: one block
        read by every shuffle; else (len(handles), *shape)) and ``c`` = (a[P0] - r)[P1] - s per block, with P0, P1
        the two parties' permutations as gather indices.
        """

    @abstractmethod
    def permute_masks(self, handle: int, step: int, inverse: bool, shape: Shape) -> dict[str, np.ndarray]:
        """Masks of one permute-and-reshare step by party ``step``'s permutation (or its inverse).

        Permuter (party ``step``) gets ``delta``; helper gets ``a`` and ``b``; with P = the permutation (gather
        indices along axis 0): delta = a[P] + b.
        """


# ---------------------------------------------------------------------------------------------------------------
# One definition per correlation kind, shared by dealer and parties so both expand the seeds identically.
# draw(party, prg, params, state) -> party's random parts; correct(view0, view1, params, state) -> party 1's
# corrections; finish(party, view, corrections, params) -> what the provider method returns.


@dataclass
class _Kind:
    draw: Callable
    correct: Callable | None  # None when `serve` replaces draw + correct on the dealer's side
    finish: Callable
    n_corrections: int
    #: the dealer's own draw-and-correct, (prgs, params, state) -> corrections, where expanding both parties' parts
    #: separately (as `draw` + `correct` do) would hold two large arrays at once
    serve: Callable | None = None


def _shape(params: dict) -> Shape:
    return tuple(int(d) for d in params["shape"])


def _draw_beaver(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    shape = _shape(params)
    return [prg.words(shape) for _ in range(3 if party == 0 else 2)]


def _correct_beaver(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    return [(v0[0] + v1[0]) * (v0[1] + v1[1]) - v0[2]]


def _correct_and(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    return [((v0[0] ^ v1[0]) & (v0[1] ^ v1[1])) ^ v0[2]]


def _finish_triple(party: int, view: list, corr: list, params: dict):
    return tuple(view) if party == 0 else (view[0], view[1], corr[0])


def _draw_matmul(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    n, m, k = params["n"], params["m"], params["k"]
    parts = [prg.words((n, m)), prg.words((m, k))]
    return parts + [prg.words((n, k))] if party == 0 else parts


def _correct_matmul(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    return [matmul_nn(v0[0] + v1[0], v0[1] + v1[1]) - v0[2]]


def _draw_fixed_mask(party: int, prg: Prg, params: dict, state: dict) -> list[StreamSlice]:
    return [prg.split_off(params["n"] * params["m"])]  # expanded by the caller as it needs it (n×m can be gigabytes)


def _serve_fixed_mask(prgs: tuple[Prg, Prg], params: dict, state: dict) -> list[np.ndarray]:
    # U = U_0 + U_1 in one pass into one array: both parties' streams are added as they are expanded, so the dealer
    # holds one n×m matrix, not two (the streams advance exactly as the parties' `_draw_fixed_mask` does)
    mask = np.zeros((params["n"], params["m"]), DTYPE)
    add_streams_into(mask, [(prgs[0], False), (prgs[1], False)])
    state[("fixed", params["handle"])] = mask
    return []


def _finish_fixed_mask(party: int, view: list, corr: list, params: dict):
    return params["handle"], view[0]


def _draw_fixed_product(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    n, m, k = params["n"], params["m"], params["k"]
    parts = [prg.words((n, k))]
    return parts + [prg.words((m, k))] if party == 0 else parts


def _correct_fixed_product(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    mask = state[("fixed", params["handle"])]
    return [matmul_tn(mask, v0[0] + v1[0]) - v0[1]]


def _draw_fixed_product_nn(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    n, m, k = params["n"], params["m"], params["k"]
    parts = [prg.words((m, k))]
    return parts + [prg.words((n, k))] if party == 0 else parts


def _correct_fixed_product_nn(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    mask = state[("fixed", params["handle"])]
    return [matmul_nn(mask, v0[0] + v1[0]) - v0[1]]


def _finish_pair(party: int, view: list, corr: list, params: dict):
    return (view[0], view[1]) if party == 0 else (view[0], corr[0])


def _draw_trunc(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    shape = _shape(params)
    return [prg.words(shape) for _ in range(3 if party == 0 else 1)]


def _correct_trunc(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    r = v0[0] + v1[0]
    return [(r >> np.uint64(params["bits"])) - v0[1], (r >> np.uint64(63)) - v0[2]]


def _finish_trunc(party: int, view: list, corr: list, params: dict):
    return tuple(view) if party == 0 else (view[0], corr[0], corr[1])


def _draw_bits(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    shape = _shape(params)
    return [prg.bits(shape), prg.words(shape)] if party == 0 else [prg.bits(shape)]


def _correct_bits(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    return [(v0[0] ^ v1[0]) - v0[1]]


def _draw_word_bits(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    shape = _shape(params)
    count = int(params.get("count", 64))
    return [prg.words(shape), prg.words((*shape, count))] if party == 0 else [prg.words(shape)]


def _correct_word_bits(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    count = int(params.get("count", 64))
    return [word_bits(v0[0] ^ v1[0], count) - v0[1]]


def _draw_permutation(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    return [prg.permutation(params["size"])]


def _correct_permutation(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    state[("perm", params["handle"])] = (v0[0], v1[0])
    return []


def _finish_permutation(party: int, view: list, corr: list, params: dict):
    return params["handle"], view[0]


def _draw_permute(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    shape = _shape(params)
    permuter = params["step"]
    if party == permuter:
        return [prg.words(shape)] if party == 0 else []  # party 0's delta is random; party 1's is a correction
    return [prg.words(shape)] if party == 1 else [prg.words(shape), prg.words(shape)]  # helper: a (and b if p0)


def _correct_permute(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    perm = state[("perm", params["handle"])][params["step"]]
    if params["inverse"]:
        perm = inverse_permutation(perm)
    if params["step"] == 0:  # permuter party 0 holds random delta; helper party 1 holds a; b = delta - a[P]
        return [v0[0] - v1[0][perm]]
    return [v0[0][perm] + v0[1]]  # permuter party 1 gets delta = a[P] + b; helper party 0 holds a, b


def _correct_permute_many(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    perms = np.stack([state[("perm", h)][params["step"]] for h in params["handles"]])
    if params["inverse"]:
        perms = inverse_permutation(perms)
    if params["step"] == 0:
        return [v0[0] - gather_rows(v1[0], perms)]
    return [gather_rows(v0[0], perms) + v0[1]]


def _draw_shuffle(party: int, prg: Prg, params: dict, state: dict) -> list[np.ndarray]:
    shape = _shape(params)  # (H, n, ...)
    if party == 0:
        return [prg.words(shape), prg.words(shape)]  # r: pads the step-0 message; s: party 0's result share
    return [prg.words(shape[1:] if params.get("shared") else shape)]  # a: pads party 1's input


def _correct_shuffle(v0: list, v1: list, params: dict, state: dict) -> list[np.ndarray]:
    handles = params["handles"]
    first = np.stack([state[("perm", h)][0] for h in handles])
    second = np.stack([state[("perm", h)][1] for h in handles])
    r, s = v0
    correction = np.negative(s, out=s)  # c = (a[P0] - r)[P1] - s, built in s's memory
    return [add_composed_difference(correction, v1[0], r, first, second, shared=bool(params.get("shared")))]


def _finish_shuffle(party: int, view: list, corr: list, params: dict):
    return {"r": view[0], "s": view[1]} if party == 0 else {"a": view[0], "c": corr[0]}


def _finish_permute(party: int, view: list, corr: list, params: dict):
    if party == params["step"]:
        return {"delta": view[0] if party == 0 else corr[0]}
    return {"a": view[0], "b": view[1] if party == 0 else corr[0]}


KINDS: dict[str, _Kind] = {
    "beaver": _Kind(_draw_beaver, _correct_beaver, _finish_triple, 1),
    "and": _Kind(_draw_beaver, _correct_and, _finish_triple, 1),
    "matmul": _Kind(_draw_matmul, _correct_matmul, _finish_triple, 1),
    "fixed_mask": _Kind(_draw_fixed_mask, None, _finish_fixed_mask, 0, _serve_fixed_mask),
    "fixed_product": _Kind(_draw_fixed_product, _correct_fixed_product, _finish_pair, 1),
    "fixed_product_nn": _Kind(_draw_fixed_product_nn, _correct_fixed_product_nn, _finish_pair, 1),
    "trunc": _Kind(_draw_trunc, _correct_trunc, _finish_trunc, 2),
    "bits": _Kind(_draw_bits, _correct_bits, _finish_pair, 1),
    "word_bits": _Kind(_draw_word_bits, _correct_word_bits, _finish_pair, 1),
    "permutation": _Kind(_draw_permutation, _correct_permutation, _finish_permutation, 0),
    "permute": _Kind(_draw_permute, _correct_permute, _finish_permute, 1),
    "permute_many": _Kind(_draw_permute, _correct_permute_many, _finish_permute, 1),
    "shuffle_many": _Kind(_draw_shuffle, _correct_shuffle, _finish_shuffle, 1),
}


class DealerError(MpcError):
    """The dealer or its client received something it cannot serve."""


class PendingCorrection:
    """A correction party 1 has asked the dealer for but not yet read: read (in request order) on first use.

    Protocols mask with their own (seed-drawn) parts and exchange with the peer before they touch the correction,
    so the dealer computes while the parties communicate. It behaves as the numpy array it stands for.
    """

    __array_priority__ = 1000  # ndarray operators defer to ours, which resolve first

    def __init__(self, client: DealerClient) -> None:
        self._client = client
        self._value: np.ndarray | None = None

    def resolve(self) -> np.ndarray:
        """The correction (reads every earlier pending one first, as the dealer sent them in order)."""
        if self._value is None:
            self._client._drain(self)
        return self._value

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        value = self.resolve()
        return value if dtype is None else value.astype(dtype)

    def __getattr__(self, name: str):
        return getattr(self.resolve(), name)

    def __getitem__(self, index):
        return self.resolve()[index]

    def __neg__(self):
        return -self.resolve()


def _delegate(op: str):
    def forward(self, other):
        return getattr(self.resolve(), op)(np.asarray(other) if isinstance(other, PendingCorrection) else other)
    forward.__name__ = op
    return forward


for _op in ("add", "sub", "mul", "xor", "and", "or", "lshift", "rshift"):
    for _name in (f"__{_op}__", f"__r{_op}__"):
        setattr(PendingCorrection, _name, _delegate(_name))


@dataclass
class DealerClient(CorrelationProvider):
    """A party's provider backed by the trusted dealer: expands its seed; party 1 also fetches corrections.

    ``dealer`` is the channel to the dealer (party 0 may close it after `connect`, it is only used for the seed).
    """

    party_id: int
    prg: Prg
    dealer: Channel | None
    _next_handle: int = 0
    _fixed_shapes: dict[int, tuple[int, int]] = field(default_factory=dict)
    _perm_sizes: dict[int, int] = field(default_factory=dict)
    _pending: list = field(default_factory=list)

    @classmethod
    def connect(cls, party_id: int, dealer: Channel) -> DealerClient:
        """Receive this party's seed from the dealer; party 0 then needs the dealer no more."""
        seed = dealer.recv_bytes()
        return cls(party_id, Prg(seed), dealer if party_id == 1 else None)

    @property
    def dealer_bytes_received(self) -> int:
        """Bytes this party received from the dealer so far (seed + corrections)."""
        return self.dealer.stats.bytes_received if self.dealer is not None else 0

    def _get(self, kind_name: str, params: dict):
        kind = KINDS[kind_name]
        if self.party_id == 1 and self.dealer is not None:
            self.dealer.send_bytes(json.dumps({"kind": kind_name, "params": params}).encode())
        view = kind.draw(self.party_id, self.prg, params, {})
        corrections: list = []
        if self.party_id == 1 and kind.n_corrections:
            if self.dealer is None:
                raise DealerError("party 1 has no channel to the dealer")
            corrections = [PendingCorrection(self) for _ in range(kind.n_corrections)]
            self._pending.extend(corrections)
        return kind.finish(self.party_id, view, corrections, params)

    def _drain(self, until: PendingCorrection) -> None:
        """Read pending corrections from the dealer, oldest first, up to ``until``."""
        while self._pending:
            pending = self._pending.pop(0)
            pending._value = self.dealer.recv_array()
            if pending is until:
                return
        raise DealerError("a correction was read out of order")

    def settle(self) -> None:
        """Read every pending correction (before using the dealer channel for anything else)."""
        if self._pending:
            self._drain(self._pending[-1])

    def _handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    def beaver(self, shape: Shape):
        """See CorrelationProvider.beaver."""
        return self._get("beaver", {"shape": list(shape)})

    def and_triples(self, shape: Shape):
        """See CorrelationProvider.and_triples."""
        return self._get("and", {"shape": list(shape)})

    def matmul_triple(self, n: int, m: int, k: int):
        """See CorrelationProvider.matmul_triple."""
        return self._get("matmul", {"n": n, "m": m, "k": k})

    def fixed_mask(self, n: int, m: int):
        """See CorrelationProvider.fixed_mask."""
        handle = self._handle()
        self._fixed_shapes[handle] = (n, m)
        return self._get("fixed_mask", {"n": n, "m": m, "handle": handle})

    def fixed_product(self, handle: int, k: int):
        """See CorrelationProvider.fixed_product."""
        n, m = self._fixed_shapes[handle]
        return self._get("fixed_product", {"n": n, "m": m, "k": k, "handle": handle})

    def fixed_product_nn(self, handle: int, k: int):
        """See CorrelationProvider.fixed_product_nn."""
        n, m = self._fixed_shapes[handle]
        return self._get("fixed_product_nn", {"n": n, "m": m, "k": k, "handle": handle})

    def trunc_pairs(self, shape: Shape, bits: int):
        """See CorrelationProvider.trunc_pairs."""
        return self._get("trunc", {"shape": list(shape), "bits": bits})

    def random_bits(self, shape: Shape):
        """See CorrelationProvider.random_bits."""
        return self._get("bits", {"shape": list(shape)})

    def random_word_bits(self, shape: Shape, count: int = 64):
        """See CorrelationProvider.random_word_bits."""
        if not 1 <= count <= 64:
            raise DealerError("a word has 1 to 64 bits")
        return self._get("word_bits", {"shape": list(shape), "count": count})

    def permutation(self, size: int):
        """See CorrelationProvider.permutation."""
        handle = self._handle()
        self._perm_sizes[handle] = size
        return self._get("permutation", {"size": size, "handle": handle})

    def _check_sizes(self, handles: list[int], rows: int) -> None:
        for handle in handles:
            if rows != self._perm_sizes[handle]:
                raise DealerError(f"permutation {handle} has size {self._perm_sizes[handle]}, data {rows} rows")

    def permute_masks_many(self, handles: list[int], step: int, inverse: bool, shape: Shape):
        """See CorrelationProvider.permute_masks_many.

        When party 1 is the helper its ``b`` comes back as a zero-argument callable: the helper sends its masked
        share first and fetches ``b`` afterwards, so the dealer computes while the permuter works. The caller must
        call it before asking for any other correlation.
        """
        self._check_sizes(handles, shape[0])
        params = {"handles": list(handles), "step": step, "inverse": inverse, "shape": [len(handles), *shape]}
        if self.party_id == 1 and step == 0 and self.dealer is not None:
            self.settle()
            dealer = self.dealer
            dealer.send_bytes(json.dumps({"kind": "permute_many", "params": params}).encode())
            view = KINDS["permute_many"].draw(1, self.prg, params, {})
            return {"a": view[0], "b": dealer.recv_array}
        return self._get("permute_many", params)

    def shuffle_masks_many(self, handles: list[int], shape: Shape, shared: bool = False):
        """See CorrelationProvider.shuffle_masks_many (party 1's ``c`` is read from the dealer on first use)."""
        self._check_sizes(handles, shape[0])
        params = {"handles": list(handles), "shape": [len(handles), *shape]}
        if shared:
            params["shared"] = True
        return self._get("shuffle_many", params)

    def permute_masks(self, handle: int, step: int, inverse: bool, shape: Shape):
        """See CorrelationProvider.permute_masks."""
        if shape[0] != self._perm_sizes[handle]:
            raise DealerError(f"permutation {handle} has size {self._perm_sizes[handle]}, data has {shape[0]} rows")
        return self._get("permute", {"handle": handle, "step": step, "inverse": inverse, "shape": list(shape)})

    def finish(self) -> None:
        """Tell the dealer this party is done (party 1 only; the dealer then exits cleanly)."""
        if self.party_id == 1 and self.dealer is not None:
            self.settle()
            self.dealer.send_bytes(json.dumps({"kind": "done"}).encode())


class TrustedDealer:
    """The dealer's side: deals seeds, then serves party 1's requests until it says ``done``.

    ``bytes_sent`` counts everything sent to both parties (seeds and corrections).
    """

    def __init__(self) -> None:
        self._seeds = (new_seed(), new_seed())
        self._prgs = (Prg(self._seeds[0]), Prg(self._seeds[1]))
        self._state: dict = {}
        self.requests_served = 0

    def serve(self, to_party0: Channel, to_party1: Channel) -> None:
        """Run the dealer: send the seeds, answer requests; on any failure abort both channels with the reason."""
        try:
            to_party0.send_bytes(self._seeds[0])
            to_party1.send_bytes(self._seeds[1])
            to_party0.close()
            while True:
                request = json.loads(to_party1.recv_bytes())
                if request.get("kind") == "done":
                    to_party1.close()
                    return
                for arr in self._serve_one(request):
                    to_party1.send_array(arr)
        except TransportError as exc:
            to_party1.abort(f"dealer stopped: {exc}")
            raise
        except (KeyError, ValueError, TypeError) as exc:
            to_party1.abort(f"dealer could not serve a request: {exc!r}")
            raise DealerError(f"bad request from party 1: {exc!r}") from exc

    def _serve_one(self, request: dict) -> list[np.ndarray]:
        kind = KINDS[request["kind"]]
        params = request["params"]
        self.requests_served += 1
        if kind.serve is not None:
            corrections = kind.serve(self._prgs, params, self._state)
        else:
            view0 = kind.draw(0, self._prgs[0], params, self._state)
            view1 = kind.draw(1, self._prgs[1], params, self._state)
            corrections = kind.correct(view0, view1, params, self._state)
        return [np.ascontiguousarray(c, dtype=DTYPE) for c in corrections]


def start_dealer_thread(to_party0: Channel, to_party1: Channel) -> tuple[TrustedDealer, threading.Thread]:
    """Run a `TrustedDealer` in a daemon thread (in-process tests and benchmarks)."""
    dealer = TrustedDealer()

    def run() -> None:
        try:
            dealer.serve(to_party0, to_party1)
        except (MpcError, PeerDisconnected):
            pass

    thread = threading.Thread(target=run, name="privboost-dealer", daemon=True)
    thread.start()
    return dealer, thread
