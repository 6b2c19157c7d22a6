"""Secret-shared shuffles and applying a secret-shared permutation to shared vectors.

Constructions:
  * `new_shuffle` / `shuffle` / `unshuffle`: the secret-shared shuffle of Chase, Ghosh & Poburinnaya ("Secret-shared
    shuffle", ASIACRYPT 2020): the shuffle is pi = pi_0 then pi_1, where party p alone knows pi_p. Each of the two
    steps is a *permute-and-reshare*: the helper sends its share masked by a one-time pad ``a`` to the permuter, who
    permutes the sum and adds ``delta = a[P] + b``; the helper's new share is ``-b``. CGP obtain (a, b, delta) by a
    share-translation protocol; we take them from the trusted dealer instead, as XORBoost does (Deforth et al.,
    PoPETs 2022). Every application uses fresh masks, so one shuffle may be applied to any number of vectors.
  * `SharedPermutation`: applying a permutation sigma that is itself secret-shared (e.g. the order that sorts a
    feature) by the shuffle-then-reveal method (as in Hamada et al., ICISC 2012, and XORBoost's sort-once
    histograms): shuffle sigma's destination indices with a fresh shuffle pi, open sigma∘pi (a uniformly random
    permutation, independent of sigma, because no party knows pi), and afterwards apply sigma to any shared vector
    by shuffling it with pi and scattering it locally by the opened indices.

Leakage: each permute step sends ``x_h - a`` with ``a`` a fresh uniform mask (uniform to the permuter). The opened
sigma∘pi is a uniform random permutation to each party. The dealer knows pi_0, pi_1 and all masks (it must not
collude with a party). Traffic per application to an n×k array: each party sends n·k words once (one per step).
`shuffle_batch_shared` (H shuffles of one block x, as applying H prepared permutations to the same columns does)
masks the first step's input once: the permuter sees ``x_1 - a`` once and, for each h, its own random delta_h,
while the helper's new share is b_h = delta_h - a[P_h], uniform and independent across h because each delta_h
is fresh. So the views are as uniform as with H separate masks, and the first step sends n·k words instead of
H·n·k.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from privboost.mpc.dealer import gather_rows, gather_shared_rows, inverse_permutation
from privboost.mpc.ring import DTYPE
from privboost.mpc.runtime import Party


@dataclass
class Shuffle:
    """A secret shuffle of ``size`` rows: this party's own permutation ``own`` and the dealer's ``handle``."""

    handle: int
    own: np.ndarray

    @property
    def size(self) -> int:
        """Number of rows the shuffle permutes."""
        return int(self.own.size)


def new_shuffle(party: Party, size: int) -> Shuffle:
    """A fresh secret shuffle of ``size`` rows (no communication between the parties)."""
    if size < 1:
        raise ValueError("a shuffle needs at least one row")
    handle, own = party.correlations.permutation(size)
    return Shuffle(handle, own)


def _permute_step(party: Party, sh: Shuffle, step: int, inverse: bool, x: np.ndarray) -> np.ndarray:
    masks = party.correlations.permute_masks(sh.handle, step, inverse, x.shape)
    if party.party_id == step:  # the permuter
        perm = inverse_permutation(sh.own) if inverse else sh.own
        return (x + party.peer.recv_array())[perm] + masks["delta"]
    party.peer.send_array(x - masks["a"])
    return -masks["b"]


def shuffle(party: Party, sh: Shuffle, x: np.ndarray) -> np.ndarray:
    """Shares of ``x[pi_0][pi_1]`` (rows gathered by both secret permutations, along axis 0)."""
    x = np.ascontiguousarray(x, dtype=DTYPE)
    if x.shape[:1] != (sh.size,):
        raise ValueError(f"the shuffle permutes {sh.size} rows, the array has shape {x.shape}")
    return _permute_step(party, sh, 1, False, _permute_step(party, sh, 0, False, x))


def unshuffle(party: Party, sh: Shuffle, x: np.ndarray) -> np.ndarray:
    """Shares of the inverse shuffle of ``x``: ``unshuffle(shuffle(x)) == x``."""
    x = np.ascontiguousarray(x, dtype=DTYPE)
    if x.shape[:1] != (sh.size,):
        raise ValueError(f"the shuffle permutes {sh.size} rows, the array has shape {x.shape}")
    return _permute_step(party, sh, 0, True, _permute_step(party, sh, 1, True, x))


@dataclass
class ShuffleBatch:
    """Several independent secret shuffles of the same size, applied together (one message per step)."""

    shuffles: list[Shuffle]

    @property
    def own(self) -> np.ndarray:
        """This party's permutations, one row each (H, n)."""
        return np.stack([sh.own for sh in self.shuffles])


def new_shuffle_batch(party: Party, count: int, size: int) -> ShuffleBatch:
    """``count`` fresh secret shuffles of ``size`` rows each."""
    return ShuffleBatch([new_shuffle(party, size) for _ in range(count)])


def _permute_step_many(party: Party, batch: ShuffleBatch, own: np.ndarray, step: int, inverse: bool,
                       x: np.ndarray, shared: bool = False) -> np.ndarray:
    # shared: x is one block (n, ...) that every shuffle of the batch takes as input; the helper masks it once
    handles = [sh.handle for sh in batch.shuffles]
    shape = x.shape if shared else x.shape[1:]
    masks = party.correlations.permute_masks_many(handles, step, inverse, shape, shared=shared)
    if party.party_id == step:
        perms = np.argsort(own, axis=1) if inverse else own
        received = party.peer.recv_array()
        np.add(received, x, out=received)
        moved = (gather_shared_rows if shared else gather_rows)(received, perms)
        return np.add(moved, masks["delta"], out=moved)
    party.peer.send_array(x - masks["a"])
    b = masks["b"]() if callable(masks["b"]) else masks["b"]  # fetched after sending (see permute_masks_many)
    return np.negative(b, out=b)


def _batch_operand(batch: ShuffleBatch, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x as contiguous uint64, this party's permutations), after checking x has the batch's shape."""
    x = np.ascontiguousarray(x, dtype=DTYPE)
    own = batch.own
    if x.shape[:2] != own.shape:
        raise ValueError(f"the batch shuffles {own.shape[0]} blocks of {own.shape[1]} rows, got shape {x.shape}")
    return x, own


def shuffle_batch(party: Party, batch: ShuffleBatch, x: np.ndarray) -> np.ndarray:
    """Shares of every block x[h] (x of shape (H, n, ...)) shuffled by shuffle h."""
    x, own = _batch_operand(batch, x)
    return _permute_step_many(party, batch, own, 1, False, _permute_step_many(party, batch, own, 0, False, x))


def shuffle_batch_shared(party: Party, batch: ShuffleBatch, x: np.ndarray) -> np.ndarray:
    """Shares of the one block x (n, ...) shuffled by every shuffle h of the batch: (H, n, ...), equal to
    `shuffle_batch` of x repeated H times, but the first step's helper sends its masked x once, not H times."""
    x = np.ascontiguousarray(x, dtype=DTYPE)
    own = batch.own
    if x.shape[:1] != own.shape[1:]:
        raise ValueError(f"the batch shuffles blocks of {own.shape[1]} rows, got shape {x.shape}")
    first = _permute_step_many(party, batch, own, 0, False, x, shared=True)
    return _permute_step_many(party, batch, own, 1, False, first)


def unshuffle_batch(party: Party, batch: ShuffleBatch, x: np.ndarray) -> np.ndarray:
    """Inverse of `shuffle_batch`."""
    x, own = _batch_operand(batch, x)
    return _permute_step_many(party, batch, own, 0, True, _permute_step_many(party, batch, own, 1, True, x))


@dataclass
class SharedPermutation:
    """A secret permutation sigma prepared for repeated application (see `prepare_permutation`).

    ``revealed`` is sigma∘pi (uniformly random, public to both parties); ``shuffle`` is pi.
    """

    shuffle: Shuffle
    revealed: np.ndarray

    def apply(self, party: Party, x: np.ndarray) -> np.ndarray:
        """Shares of y with ``y[sigma[i]] = x[i]`` (x's rows moved to their destinations); one exchange per step."""
        moved = shuffle(party, self.shuffle, x)
        out = np.empty_like(moved)
        out[self.revealed] = moved
        return out

    def unapply(self, party: Party, y: np.ndarray) -> np.ndarray:
        """Inverse of `apply`: shares of x with ``x[i] = y[sigma[i]]``."""
        y = np.ascontiguousarray(y, dtype=DTYPE)
        if y.shape[:1] != (self.revealed.size,):
            raise ValueError(f"the permutation moves {self.revealed.size} rows, the array has shape {y.shape}")
        return unshuffle(party, self.shuffle, y[self.revealed])


def prepare_permutation(party: Party, destinations: np.ndarray) -> SharedPermutation:
    """Prepare the secret permutation whose shared ``destinations[i]`` is where row i goes (values 0..n-1).

    Opens sigma∘pi for a fresh shuffle pi; raises ValueError if the shared values are not a permutation.
    """
    destinations = np.asarray(destinations, DTYPE)
    if destinations.ndim != 1:
        raise ValueError("destinations must be a 1-D shared vector")
    sh = new_shuffle(party, destinations.size)
    revealed = party.open(shuffle(party, sh, destinations)).astype(np.int64)
    if not np.array_equal(np.sort(revealed), np.arange(destinations.size)):
        raise ValueError("the shared destinations are not a permutation of 0..n-1")
    return SharedPermutation(sh, revealed)


@dataclass
class SharedPermutationBatch:
    """Several secret permutations of the same size prepared together (see `prepare_permutations`)."""

    batch: ShuffleBatch
    revealed: np.ndarray  # (H, n): row h is sigma_h∘pi_h

    @cached_property
    def _gather(self) -> np.ndarray:
        # scattering by revealed[h] is gathering by its inverse: whole rows moved by np.take
        inverse = np.empty_like(self.revealed)
        np.put_along_axis(inverse, self.revealed, np.broadcast_to(np.arange(self.revealed.shape[1]),
                                                                  self.revealed.shape), axis=1)
        return inverse

    def apply(self, party: Party, x: np.ndarray) -> np.ndarray:
        """Shares of (H, n, ...) with block h = x (n, ...) moved by sigma_h: ``y[h][sigma_h[i]] = x[i]``."""
        return gather_rows(shuffle_batch_shared(party, self.batch, x), self._gather)


def prepare_permutations(party: Party, destinations: np.ndarray) -> SharedPermutationBatch:
    """`prepare_permutation` for H shared permutations at once (destinations of shape (H, n)), one opening."""
    destinations = np.ascontiguousarray(destinations, dtype=DTYPE)
    if destinations.ndim != 2:
        raise ValueError("destinations must be an (H, n) shared array")
    batch = new_shuffle_batch(party, *destinations.shape)
    revealed = party.open(shuffle_batch(party, batch, destinations)).astype(np.int64)
    if not np.array_equal(np.sort(revealed, axis=1), np.broadcast_to(np.arange(destinations.shape[1]),
                                                                      revealed.shape)):
        raise ValueError("the shared destinations are not permutations of 0..n-1")
    return SharedPermutationBatch(batch, revealed)
