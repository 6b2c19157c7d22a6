"""Secret-shared shuffles and applying a secret-shared permutation to shared vectors.

Constructions:
  * `new_shuffle` / `shuffle` / `unshuffle`: the secret-shared shuffle of Chase, Ghosh & Poburinnaya ("Secret-shared
    shuffle", ASIACRYPT 2020): the shuffle is pi = pi_0 then pi_1, where party p alone knows pi_p (as gather
    indices: shuffle(x) = x[pi_0][pi_1]). Each of the two steps is a *permute-and-reshare*: the helper sends its
    share masked by a one-time pad to the permuter, who permutes the sum and re-masks it. CGP obtain the masks'
    correlation by a share-translation protocol; we take it from the trusted dealer instead, as XORBoost does
    (Deforth et al., PoPETs 2022). Every application uses fresh masks, so one shuffle may be applied to any number
    of vectors.
  * Forward shuffles (`shuffle`, `shuffle_batch`, `shuffle_batch_shared`) run both steps on one dealer correlation
    (``shuffle_masks_many``): party 1 sends x_1 - a; party 0 sends m = (x_0 + x_1 - a)[P0] + r and keeps the
    result share s; party 1's result share is m[P1] + c with c = (a[P0] - r)[P1] - s from the dealer. This is the
    two permute-and-reshare steps with the dealer's two translations composed, so party 1's intermediate share is
    never formed: two messages of the data's size and one dense dealer correction per application (two dense
    dealer corrections in the step-by-step form). `unshuffle` runs the inverse steps one at a time.
  * `SharedPermutation`: applying a permutation sigma that is itself secret-shared (e.g. the order that sorts a
    feature) by the shuffle-then-reveal method (as in Hamada et al., ICISC 2012, and XORBoost's sort-once
    histograms): shuffle sigma's destination indices with a fresh shuffle pi, open sigma∘pi (a uniformly random
    permutation, independent of sigma, because no party knows pi), and afterwards apply sigma to any shared vector
    by shuffling it with pi and scattering it locally by the opened indices.

Leakage: party 0 sees x_1 - a (a uniform, unknown to it) and its own masks; party 1 sees m (padded by r, uniform
and fresh per application) and c (padded by s, uniform and independent of m). In an inverse step the permuter sees
the helper's share minus a fresh uniform mask. The opened sigma∘pi is a uniform random permutation to each party.
The dealer knows pi_0, pi_1 and all masks (it must not collude with a party). `shuffle_batch_shared` (H shuffles
of one block x, as applying H prepared permutations to the same columns does) masks party 1's input once: party 0
sees x_1 - a once, and each m_h is padded by its own r_h, so the views are as uniform as with H separate masks.
`precompute_shuffles` fetches the masks (and party 1's dealer correction) of future applications ahead: an offline
phase that does not depend on the data.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from privboost.mpc.gather import gather_add_into, gather_rows, inverse_permutation
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
    return shuffle_batch_shared(party, ShuffleBatch([sh]), x)[0]


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
    prepared: deque = field(default_factory=deque)  # masks fetched ahead by `precompute_shuffles`
    _parts: dict = field(default_factory=dict)  # shuffles per chunk -> [(slice, sub-batch)], see `chunks`

    @cached_property
    def own(self) -> np.ndarray:
        """This party's permutations, one row each (H, n) (the batch's shuffles never change)."""
        return np.stack([sh.own for sh in self.shuffles])

    def subset(self, part: slice) -> ShuffleBatch:
        """The batch of shuffles ``shuffles[part]`` (without prepared masks)."""
        return ShuffleBatch(self.shuffles[part])

    def chunks(self, block_words: int, words: int | None) -> list[tuple[slice, ShuffleBatch]]:
        """Consecutive sub-batches whose output is about ``words`` words each (one chunk if None), for blocks of
        ``block_words`` words. The same sub-batch objects every time, so masks prepared for a chunk stay with it."""
        count = len(self.shuffles)
        per = count if words is None else max(1, words // max(1, block_words))
        if per >= count:
            return [(slice(0, count), self)]
        if per not in self._parts:
            self._parts[per] = [(slice(i, min(count, i + per)), self.subset(slice(i, min(count, i + per))))
                                for i in range(0, count, per)]
        return self._parts[per]


def new_shuffle_batch(party: Party, count: int, size: int) -> ShuffleBatch:
    """``count`` fresh secret shuffles of ``size`` rows each."""
    return ShuffleBatch([new_shuffle(party, size) for _ in range(count)])


def _permute_step_many(party: Party, batch: ShuffleBatch, own: np.ndarray, step: int, inverse: bool,
                       x: np.ndarray) -> np.ndarray:
    handles = [sh.handle for sh in batch.shuffles]
    masks = party.correlations.permute_masks_many(handles, step, inverse, x.shape[1:])
    if party.party_id == step:
        perms = inverse_permutation(own) if inverse else own
        received = party.peer.recv_array()
        np.add(received, x, out=received)
        moved = gather_rows(received, perms)
        return np.add(moved, masks["delta"], out=moved)
    party.peer.send_array(x - masks["a"])
    b = masks["b"]() if callable(masks["b"]) else masks["b"]  # fetched after sending (see permute_masks_many)
    return np.negative(b, out=b)


def _block_shape(batch: ShuffleBatch, x: np.ndarray, shared: bool) -> tuple[int, ...]:
    """The shape (n, ...) of one block of x, after checking x against the batch."""
    count, size = len(batch.shuffles), batch.shuffles[0].size if batch.shuffles else 0
    block = x.shape if shared else x.shape[1:]
    if (shared and x.shape[:1] != (size,)) or (not shared and x.shape[:2] != (count, size)):
        expected = f"blocks of {size} rows" if shared else f"{count} blocks of {size} rows"
        raise ValueError(f"the batch shuffles {expected}, got shape {x.shape}")
    return tuple(block)


def _request_masks(party: Party, batch: ShuffleBatch, block: tuple[int, ...], shared: bool,
                   then: np.ndarray | None) -> dict:
    """Ask for this party's masks of one forward shuffle of ``batch`` (party 1's correction stays pending, so the
    dealer computes it meanwhile); party 0 moves its result share by the public gather ``then`` at once."""
    masks = party.correlations.shuffle_masks_many([sh.handle for sh in batch.shuffles], block, shared)
    masks["then"] = then
    if party.party_id == 0 and then is not None:
        masks["s"] = gather_rows(masks["s"], then)
    return masks


def _settle_masks(party: Party, batch: ShuffleBatch, masks: dict) -> dict:
    """Party 1 reads its correction and moves it by ``then`` (gathering party 0's message by P1[then] later)."""
    if party.party_id == 1 and "index" not in masks:
        then, correction, index = masks["then"], np.asarray(masks["c"]), batch.own
        if then is not None:
            correction, index = gather_rows(correction, then), np.take_along_axis(index, then, axis=1)
        masks["c"], masks["index"] = (correction if correction.flags.writeable else correction.copy()), index
    return masks


def _next_masks(party: Party, batch: ShuffleBatch, block: tuple[int, ...], shared: bool,
                then: np.ndarray | None) -> dict:
    """The prepared masks of the batch's next shuffle if any (checked against the operand), else fresh ones."""
    if not batch.prepared:
        return _request_masks(party, batch, block, shared, then)
    masks = batch.prepared.popleft()
    if (masks["block"], masks["shared"], masks["then"] is None) != (block, shared, then is None):
        raise ValueError(f"the next prepared shuffle is for blocks {masks['block']} (shared={masks['shared']}), "
                         f"the operand has blocks {block} (shared={shared}), or a different final gather")
    return masks


def precompute_shuffles(party: Party, batch: ShuffleBatch, block_shape: tuple[int, ...], shared: bool,
                        count: int = 1, then: np.ndarray | None = None, words: int | None = None) -> None:
    """Offline phase for ``count`` future forward shuffles of ``batch`` (in chunks of ``words``, as
    `shuffle_chunks` will run them) on blocks of ``block_shape`` (n, ...), followed by the public row gather
    ``then`` (H, n) if given: fetch the masks and party 1's dealer corrections now and move them by ``then``.
    Both parties must call this identically."""
    block = tuple(block_shape)
    waiting: list[tuple[ShuffleBatch, dict]] = []
    for _ in range(count):
        for part, sub in batch.chunks(int(np.prod(block)), words):
            masks = _request_masks(party, sub, block, shared, None if then is None else then[part])
            masks.update(block=block, shared=shared)
            waiting.append((sub, masks))
            if len(waiting) > 1:  # party 1 handles one correction while the dealer computes the next
                done, ready = waiting.pop(0)
                done.prepared.append(_settle_masks(party, done, ready))
    for sub, masks in waiting:
        sub.prepared.append(_settle_masks(party, sub, masks))


def shuffle_chunks(party: Party, batch: ShuffleBatch, x: np.ndarray, shared: bool, then: np.ndarray | None = None,
                   words: int | None = None):
    """Forward shuffles of ``batch`` in chunks of about ``words`` output words (all at once if None): yields
    (slice of the batch's shuffles, shares of their results (h, n, ...)), each block then gathered by the public
    ``then`` (H, n) if given. Two permute-and-reshare steps on one dealer correlation per chunk (module docstring);
    party 1 sends a chunk's masked input while it receives the previous chunk's message, so the parties overlap.
    The caller must take every chunk, and between chunks may compute locally but not use the channel or the
    correlations (the two parties' messages and dealer requests must stay in step)."""
    x = np.ascontiguousarray(x, dtype=DTYPE)
    block = _block_shape(batch, x, shared)
    parts = batch.chunks(int(np.prod(block)), words)

    def masks_of(j: int) -> tuple[dict, np.ndarray]:
        part, sub = parts[j]
        operand = x if shared else x[part]
        return _next_masks(party, sub, block, shared, None if then is None else then[part]), operand

    current, operand = masks_of(0)
    if party.party_id == 1:
        party.peer.send_array(operand - current["a"])
    for j, (part, sub) in enumerate(parts):
        last = j + 1 == len(parts)
        if party.party_id == 0:
            received = party.peer.recv_array()
            np.add(received, operand, out=received)  # x - a, the secret minus party 1's pad
            party.peer.send_array(gather_add_into(current["r"], received, sub.own, shared))  # r + (x - a)[P0]
            upcoming = None if last else masks_of(j + 1)  # party 0's next masks: while party 1 works
            yield part, current["s"]
        else:
            upcoming = None if last else masks_of(j + 1)  # the dealer computes them while this chunk runs
            message = (party.peer.recv_array() if upcoming is None
                       else party.peer.exchange(upcoming[1] - upcoming[0]["a"]))
            masks = _settle_masks(party, sub, current)
            yield part, gather_add_into(masks["c"], message, masks["index"])  # c[then] + m[P1[then]]
        if upcoming is not None:
            current, operand = upcoming


def _batch_operand(batch: ShuffleBatch, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x as contiguous uint64, this party's permutations), after checking x has the batch's shape."""
    x = np.ascontiguousarray(x, dtype=DTYPE)
    own = batch.own
    if x.shape[:2] != own.shape:
        raise ValueError(f"the batch shuffles {own.shape[0]} blocks of {own.shape[1]} rows, got shape {x.shape}")
    return x, own


def _whole(chunks) -> np.ndarray:
    ((_, result),) = tuple(chunks)  # words=None: one chunk
    return result


def shuffle_batch(party: Party, batch: ShuffleBatch, x: np.ndarray) -> np.ndarray:
    """Shares of every block x[h] (x of shape (H, n, ...)) shuffled by shuffle h."""
    return _whole(shuffle_chunks(party, batch, x, shared=False))


def shuffle_batch_shared(party: Party, batch: ShuffleBatch, x: np.ndarray) -> np.ndarray:
    """Shares of the one block x (n, ...) shuffled by every shuffle h of the batch: (H, n, ...), equal to
    `shuffle_batch` of x repeated H times, but party 1 sends its masked x once, not H times."""
    return _whole(shuffle_chunks(party, batch, x, shared=True))


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
        return inverse_permutation(self.revealed)  # scattering by revealed[h] is gathering by its inverse

    def precompute(self, party: Party, block_shape: tuple[int, ...], count: int = 1,
                   words: int | None = None) -> None:
        """Offline phase for ``count`` future `apply` / `apply_chunks` (with the same ``words``) calls on blocks
        of ``block_shape`` (n, ...): fetch the shuffles' masks (and party 1's dealer corrections) and move them to
        their final places now."""
        precompute_shuffles(party, self.batch, block_shape, True, count, then=self._gather, words=words)

    def apply_chunks(self, party: Party, x: np.ndarray, words: int | None = None):
        """`apply` in chunks of about ``words`` output words: yields (slice of the permutations, their (h, n, ...)
        results); see `shuffle_chunks`."""
        return shuffle_chunks(party, self.batch, x, True, then=self._gather, words=words)

    def apply(self, party: Party, x: np.ndarray) -> np.ndarray:
        """Shares of (H, n, ...) with block h = x (n, ...) moved by sigma_h: ``y[h][sigma_h[i]] = x[i]``."""
        return _whole(self.apply_chunks(party, x))


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
