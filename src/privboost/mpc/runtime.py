"""The party runtime: who I am, the channel to my peer, my correlation provider, and opening values.

Protocols are functions ``protocol(party, *share_arrays)`` that every party calls in the same order with its own
shares (MPyC's split of runtime and secure types; CrypTen's arithmetic/binary share split). Opening reveals a value
to both parties; protocols only open values that are masked uniformly (their module docstrings say which).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from privboost.mpc.dealer import CorrelationProvider, DealerClient, start_dealer_thread
from privboost.mpc.prg import Prg, new_seed
from privboost.mpc.ring import DEFAULT_FRAC_BITS, DTYPE, as_ring, pack_bits, unpack_bits
from privboost.mpc.transport import (
    DEFAULT_TIMEOUT_S,
    Channel,
    InProcessChannel,
    MpcError,
    PeerAborted,
    in_process_pair,
)


class Party:
    """One compute party's context: ``party_id`` (0 or 1), ``peer`` channel, ``correlations``, ``frac_bits``."""

    def __init__(self, party_id: int, peer: Channel, correlations: CorrelationProvider,
                 frac_bits: int = DEFAULT_FRAC_BITS) -> None:
        if party_id not in (0, 1):
            raise ValueError("party_id must be 0 or 1")
        self.party_id = party_id
        self.peer = peer
        self.correlations = correlations
        self.frac_bits = frac_bits

    @property
    def is_leader(self) -> bool:
        """True for party 0, the one that adds public constants to its share."""
        return self.party_id == 0

    def public(self, value: np.ndarray) -> np.ndarray:
        """This party's share of a public ring array (party 0 holds it, party 1 holds zeros)."""
        ring = as_ring(value)
        return ring.copy() if self.is_leader else np.zeros_like(ring)

    def open(self, share: np.ndarray) -> np.ndarray:
        """Reveal an arithmetic-shared array to both parties (one round)."""
        share = np.ascontiguousarray(share, dtype=DTYPE)
        theirs = self.peer.exchange(share)
        if theirs.flags.writeable:  # add into the received buffer: no third array for large openings
            return np.add(theirs, share, out=theirs)
        return theirs + share

    def open_many(self, *shares: np.ndarray) -> list[np.ndarray]:
        """Reveal several arithmetic-shared arrays in one round."""
        flat = np.concatenate([np.asarray(s, DTYPE).ravel() for s in shares]) if shares else np.zeros(0, DTYPE)
        opened = self.open(flat)
        out, start = [], 0
        for s in shares:
            out.append(opened[start:start + s.size].reshape(s.shape))
            start += s.size
        return out

    def open_bool(self, words: np.ndarray) -> np.ndarray:
        """Reveal XOR-shared words to both parties (one round)."""
        words = np.ascontiguousarray(words, dtype=DTYPE)
        return words ^ self.peer.exchange(words)

    def open_bits(self, bits: np.ndarray) -> np.ndarray:
        """Reveal XOR-shared single bits (0/1 per element), sent packed 64 per word; returns 0/1 uint64."""
        bits = np.asarray(bits, DTYPE)
        packed = self.open_bool(pack_bits(bits.ravel()))
        return unpack_bits(packed, bits.size).astype(DTYPE).reshape(bits.shape)

    def input(self, owner: int, value: np.ndarray | None = None) -> np.ndarray:
        """Secret-share a ring array held by party ``owner``.

        The owner sends the shape and a fresh 256-bit seed; both expand the seed with AES-CTR into the peer's share
        (so a large input costs 32 bytes of traffic, not the array); the owner keeps value - share.
        """
        if self.party_id == owner:
            if value is None:
                raise ValueError("the owner must pass the value it inputs")
            ring = as_ring(value)
            seed = new_seed()
            self.peer.send_array(np.array(ring.shape, dtype=np.int64))
            self.peer.send_bytes(seed)
            return ring - Prg(seed).words(ring.shape)
        shape = tuple(int(d) for d in self.peer.recv_array())
        return Prg(self.peer.recv_bytes()).words(shape)

    def reveal_to(self, receiver: int, share: np.ndarray) -> np.ndarray | None:
        """Reveal an arithmetic-shared array to ``receiver`` only; the other party gets None."""
        share = np.ascontiguousarray(share, dtype=DTYPE)
        if self.party_id == receiver:
            return share + self.peer.recv_array()
        self.peer.send_array(share)
        return None


@dataclass
class ReceivedView:
    """What one party received during `run_local(record=True)`, in arrival order (copies).

    ``peer`` and ``dealer``: every array or byte string from that channel; ``opened``: every value this party learned
    by an opening (`Party.open`/`open_bool`/`reveal_to`: its own share combined with the peer's), one per opening.
    """

    peer: list[np.ndarray | bytes]
    dealer: list[np.ndarray | bytes]
    opened: list[np.ndarray]


@dataclass
class LocalRun:
    """Results of `run_local`: each party's return value, its channel statistics and the dealer's bytes.

    ``received`` is None unless ``record=True``: then it holds each party's `ReceivedView`.
    """

    results: tuple[Any, Any]
    peer_bytes_sent: tuple[int, int]
    rounds: tuple[int, int]
    dealer_bytes: int
    received: tuple[ReceivedView, ReceivedView] | None = None


class _RecordingChannel(InProcessChannel):
    """An in-process channel end that keeps a copy of every array and byte string it receives (tests only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[np.ndarray | bytes] = []

    def recv_array(self) -> np.ndarray:
        arr = super().recv_array()
        self.received.append(arr.copy())
        return arr

    def recv_bytes(self) -> bytes:
        data = super().recv_bytes()
        self.received.append(data)
        return data


class _RecordingParty(Party):
    """A `Party` that also keeps a copy of every value it opens (tests only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[np.ndarray] = []

    def open(self, share: np.ndarray) -> np.ndarray:
        value = super().open(share)
        self.opened.append(value.copy())
        return value

    def open_bool(self, words: np.ndarray) -> np.ndarray:
        value = super().open_bool(words)
        self.opened.append(value.copy())
        return value

    def reveal_to(self, receiver: int, share: np.ndarray) -> np.ndarray | None:
        value = super().reveal_to(receiver, share)
        if value is not None:
            self.opened.append(value.copy())
        return value


def _local_pair(name_a: str, name_b: str, timeout_s: float, record: bool) -> tuple[Channel, Channel]:
    if not record:
        return in_process_pair(name_a, name_b, timeout_s)
    a_to_b: queue.Queue = queue.Queue()
    b_to_a: queue.Queue = queue.Queue()
    return (_RecordingChannel(name_b, True, a_to_b, b_to_a, timeout_s),
            _RecordingChannel(name_a, False, b_to_a, a_to_b, timeout_s))


def run_local(program: Callable[[Party], Any], frac_bits: int = DEFAULT_FRAC_BITS,
              timeout_s: float = DEFAULT_TIMEOUT_S, record: bool = False) -> LocalRun:
    """Run ``program(party)`` for both parties in threads with an in-process dealer (tests and benchmarks).

    ``record=True`` (for view/leakage tests) also returns, per party, every array and byte string it received from
    its peer and from the dealer and every value it opened, in `LocalRun.received`; off by default.
    """
    p0_end, p1_end = _local_pair("party0", "party1", timeout_s, record)
    p0_to_dealer, dealer_to_p0 = _local_pair("party0", "dealer", timeout_s, record)
    p1_to_dealer, dealer_to_p1 = _local_pair("party1", "dealer", timeout_s, record)
    start_dealer_thread(dealer_to_p0, dealer_to_p1)
    results: list[Any] = [None, None]
    errors: list[BaseException | None] = [None, None]
    clients: list[DealerClient | None] = [None, None]
    parties: list[Party | None] = [None, None]
    party_class = _RecordingParty if record else Party

    def run(pid: int) -> None:
        peer = p0_end if pid == 0 else p1_end
        dealer_end = p0_to_dealer if pid == 0 else p1_to_dealer
        try:
            client = DealerClient.connect(pid, dealer_end)
            clients[pid] = client
            parties[pid] = party = party_class(pid, peer, client, frac_bits)
            results[pid] = program(party)
            client.finish()
        except BaseException as exc:  # reported to the caller below
            errors[pid] = exc
            peer.abort(f"party{pid} failed: {exc!r}")
            dealer_end.abort(f"party{pid} failed: {exc!r}")

    threads = [threading.Thread(target=run, args=(pid,), name=f"privboost-party{pid}") for pid in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures = sorted((e for e in errors if e is not None), key=lambda e: isinstance(e, PeerAborted))
    if failures:  # report the original failure, not the peer's reaction to it
        raise MpcError(f"local run failed: {failures[0]!r}") from failures[0]
    dealer_bytes = p0_to_dealer.stats.bytes_received + p1_to_dealer.stats.bytes_received
    received = None
    if record:
        received = tuple(ReceivedView(list(peer.received), list(dealer.received), list(party.opened))  # type: ignore
                         for peer, dealer, party in ((p0_end, p0_to_dealer, parties[0]),
                                                     (p1_end, p1_to_dealer, parties[1])))
    return LocalRun((results[0], results[1]), (p0_end.stats.bytes_sent, p1_end.stats.bytes_sent),
                    (p0_end.stats.rounds, p1_end.stats.rounds), dealer_bytes, received)
