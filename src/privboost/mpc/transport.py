"""Framed message channels between the parties and the dealer: in-process (tests) and TCP + TLS 1.3 (mutual auth).

Every message is one frame: a 13-byte prefix (kind: u8, header length: u32, payload length: u64, big-endian), a
short header and the payload. Payloads are numpy arrays (header ``<dtype>;<shape>``, raw little-endian bytes) or
raw bytes. An ``abort`` frame carries a UTF-8 reason: the receiver raises `PeerAborted` with it, so a failing party
tells its peers why before it exits. Every receive has a timeout (`TransportTimeout`); a vanished peer raises
`PeerDisconnected`. Counters: bytes and messages each way, and exchange rounds.

Sockets: TCP_NODELAY is set and frames up to 64 KiB leave in one write: with Nagle's algorithm a frame's second
write waited for the peer's delayed ACK (~40 ms per message on Linux). `SocketChannel.exchange` sends and receives at
the same time (one thread, non-blocking socket, `poll`): both directions of a round travel together instead of one
after the other. The bytes on the wire are the same frames in the same order as `send_array` + `recv_array`, so
either end may use either method. Writes are non-blocking and recorded, so `abort` can complete a frame cut off by a
timeout or an interrupt and still frame its reason; signal handlers use `raise_after_write` so that their exception
never falls between a write and its record. After an abort frame the sender reads until the peer closes (at most
1 s): closing with unread input would make TCP reset the connection, which can destroy the frame before it is read.

TLS: TLS 1.3 only, both sides present certificates signed by the deployment's CA (privboost.net.certs makes them),
and each side checks that the peer certificate's common name is the role it expects (``party0``, ``party1``,
``dealer``).
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import struct
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from privboost.net.certs import CertPaths

PREFIX = struct.Struct(">BIQ")
KIND_ARRAY, KIND_BYTES, KIND_ABORT, KIND_CLOSE = 1, 2, 3, 4
ALLOWED_DTYPES = {"<u8", "<i8", "|u1", "<f8", "<f4", "<i4", "|b1"}  # plain numbers only: never object arrays
MAX_HEADER = 1024
MAX_PAYLOAD = 1 << 40
DEFAULT_TIMEOUT_S = 60.0
_SEND_CHUNK = 1 << 20  # bytes handed to one non-blocking TLS write in `SocketChannel.exchange`
#: array payloads of this many bytes are received into buffers the channel keeps and reuses once nothing refers to
#: them: a fresh buffer per frame costs page faults and zeroing, about a third of the receiving CPU measured on
#: TLS loopback (2.2 vs 1.5 ms per MB), and 3.6 of 16 s for a party of the MPC bench's 300 permutations (131 MB
#: frames). Larger payloads (the MPC engine's biggest openings) always get fresh memory.
_SPARE_SIZES = (1 << 16, 256 << 20)
_SPARES = 2  # kept per channel at most: a frame being received and the previous one still in use
#: and all channels of a process together keep at most this many bytes (a hundred federated sites, or an MPC
#: party near its memory peak, must not hold much memory for reuse)
_SPARE_BYTES = 768 << 20
_spare_bytes_kept = 0
_spare_lock = threading.Lock()


class MpcError(RuntimeError):
    """Base of every error the MPC engine raises."""


class TransportError(MpcError):
    """A channel failed: the peer aborted, disconnected, timed out or sent something malformed."""


class PeerAborted(TransportError):
    """The peer sent an abort frame; ``reason`` says why."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer} aborted the computation: {reason}")
        self.reason = reason


class PeerDisconnected(TransportError):
    """The peer closed the connection or its process died."""


class TransportTimeout(TransportError):
    """Nothing arrived from the peer within the timeout."""


@dataclass
class ChannelStats:
    """Traffic counters of one channel end (frame bytes including prefixes and headers)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0


def _array_header(arr: np.ndarray) -> bytes:
    return f"{arr.dtype.str};{','.join(str(d) for d in arr.shape)}".encode()


def _parse_array(header: bytes, payload: bytes | bytearray) -> np.ndarray:
    dtype_str, _, shape_str = header.decode().partition(";")
    if dtype_str not in ALLOWED_DTYPES:
        raise TransportError(f"peer sent an array of unsupported dtype {dtype_str!r}")
    shape = tuple(int(d) for d in shape_str.split(",")) if shape_str else ()
    arr = np.frombuffer(payload, dtype=np.dtype(dtype_str))
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise TransportError("peer sent an array whose size does not match its shape")
    return arr.reshape(shape)


def _fresh_buffer(kind: int, size: int) -> bytearray | memoryview:
    """A new receive buffer; an array's is not zero-filled first (every byte is about to be received)."""
    return memoryview(np.empty(size, np.uint8)) if kind == KIND_ARRAY else bytearray(size)


class Channel(ABC):
    """One end of a reliable, ordered, framed connection to a named peer."""

    def __init__(self, peer_name: str, send_first: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.peer_name = peer_name
        self.send_first = send_first
        self.timeout_s = timeout_s
        self.stats = ChannelStats()
        self._closed = False

    @abstractmethod
    def _send_frame(self, kind: int, header: bytes, payload: memoryview) -> None: ...

    @abstractmethod
    def _recv_frame(self) -> tuple[int, bytes, bytes | bytearray]: ...

    @abstractmethod
    def _close_transport(self) -> None: ...

    def _send(self, kind: int, header: bytes, payload: memoryview) -> None:
        if self._closed:
            raise TransportError(f"channel to {self.peer_name} is closed")
        self._send_frame(kind, header, payload)
        self.stats.bytes_sent += PREFIX.size + len(header) + payload.nbytes
        self.stats.messages_sent += 1

    def _recv(self, expected_kind: int) -> tuple[bytes, bytes | bytearray]:
        if self._closed:
            raise TransportError(f"channel to {self.peer_name} is closed")
        kind, header, payload = self._recv_frame()
        return self._check_frame(kind, header, payload, expected_kind)

    def _check_frame(self, kind: int, header: bytes, payload: bytes | bytearray,
                     expected_kind: int) -> tuple[bytes, bytes | bytearray]:
        """Count a received frame; turn abort/close frames into exceptions; check the kind."""
        self.stats.bytes_received += PREFIX.size + len(header) + len(payload)
        self.stats.messages_received += 1
        if kind == KIND_ABORT:
            self._closed = True
            self._close_transport()
            raise PeerAborted(self.peer_name, bytes(payload).decode(errors="replace"))
        if kind == KIND_CLOSE:
            self._closed = True
            self._close_transport()
            raise PeerDisconnected(f"{self.peer_name} closed the connection")
        if kind != expected_kind:
            raise TransportError(f"{self.peer_name} sent frame kind {kind}, expected {expected_kind}")
        return header, payload

    def set_timeout(self, timeout_s: float) -> None:
        """Change how long any later send or receive may wait."""
        self.timeout_s = timeout_s

    def send_array(self, arr: np.ndarray) -> None:
        """Send one numpy array (uint64, int64, int32, uint8, bool, float64 or float32)."""
        arr = np.ascontiguousarray(arr)
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise TypeError(f"cannot send arrays of dtype {arr.dtype}")
        self._send(KIND_ARRAY, _array_header(arr), memoryview(arr.reshape(-1)).cast("B"))

    def recv_array(self) -> np.ndarray:
        """Receive one numpy array (writable, owned by the caller)."""
        header, payload = self._recv(KIND_ARRAY)
        return _parse_array(header, payload)

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes."""
        self._send(KIND_BYTES, b"", memoryview(data))

    def recv_bytes(self) -> bytes:
        """Receive raw bytes."""
        return bytes(self._recv(KIND_BYTES)[1])

    def exchange(self, arr: np.ndarray) -> np.ndarray:
        """Send ``arr`` and receive the peer's array of the same round (one round; ordered to avoid deadlock)."""
        self.stats.rounds += 1
        if self.send_first:
            self.send_array(arr)
            return self.recv_array()
        theirs = self.recv_array()
        self.send_array(arr)
        return theirs

    def abort(self, reason: str) -> None:
        """Tell the peer why this side stops (best effort), then close."""
        if self._closed:
            return
        try:
            self._send_frame(KIND_ABORT, b"", memoryview(reason.encode()))
        except (OSError, TransportError, ValueError):
            pass
        else:
            self._linger()
        self._closed = True
        self._close_transport()

    def _linger(self) -> None:
        """After an abort frame: give the peer a moment to read it before the connection goes (transports may wait)."""
        return None

    def close(self) -> None:
        """Close cleanly (the peer's next receive raises PeerDisconnected)."""
        if self._closed:
            return
        try:
            self._send_frame(KIND_CLOSE, b"", memoryview(b""))
        except (OSError, TransportError, ValueError):
            pass
        self._closed = True
        self._close_transport()


class InProcessChannel(Channel):
    """Channel end backed by two thread-safe queues; use `in_process_pair` to make both ends."""

    def __init__(self, peer_name: str, send_first: bool, outbox: queue.Queue, inbox: queue.Queue,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(peer_name, send_first, timeout_s)
        self._outbox, self._inbox = outbox, inbox

    def _send_frame(self, kind: int, header: bytes, payload: memoryview) -> None:
        self._outbox.put((kind, header, bytes(payload)))

    def _recv_frame(self) -> tuple[int, bytes, bytes | bytearray]:
        try:
            kind, header, payload = self._inbox.get(timeout=self.timeout_s)
        except queue.Empty:
            raise TransportTimeout(f"nothing from {self.peer_name} within {self.timeout_s:g} s") from None
        return kind, header, bytearray(payload) if kind == KIND_ARRAY else payload

    def _close_transport(self) -> None:
        pass


def in_process_pair(name_a: str, name_b: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Channel, Channel]:
    """Two connected channel ends: the first (held by ``name_a``) talks to ``name_b``; ``name_a`` sends first."""
    a_to_b: queue.Queue = queue.Queue()
    b_to_a: queue.Queue = queue.Queue()
    end_a = InProcessChannel(name_b, True, a_to_b, b_to_a, timeout_s)
    end_b = InProcessChannel(name_a, False, b_to_a, a_to_b, timeout_s)
    return end_a, end_b


class _WriteGuard(threading.local):
    """Per thread: how deep it is inside a socket write, and a stop request deferred until the write is recorded."""

    depth = 0
    pending: BaseException | None = None


_write_guard = _WriteGuard()


def raise_after_write(exc: BaseException) -> None:
    """For signal handlers: raise ``exc`` now, or, inside a socket write, as soon as its byte count is recorded.

    An exception landing between a TLS write and its bookkeeping would lose track of bytes already sent: the frame
    could then be neither completed nor followed by an abort frame, and the peer would not learn why this side
    stopped. The deferral lasts one non-blocking write call (microseconds).
    """
    if _write_guard.depth:
        _write_guard.pending = exc
        return
    raise exc


class SocketChannel(Channel):
    """Channel end over a connected (TLS) socket; `exchange` sends and receives concurrently.

    All writes are non-blocking and recorded (frame parts, position), so a frame cut by a timeout or an interrupt
    can be completed by `abort` before its abort frame; reads outside `exchange` are blocking with the timeout.
    """

    def __init__(self, sock: socket.socket, peer_name: str, send_first: bool,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(peer_name, send_first, timeout_s)
        self._sock = sock
        self._out: list[memoryview] = []  # the frame being written, in parts; _out_part == len(_out): none
        self._out_part = self._out_pos = 0
        self._spares: list[bytearray] = []  # receive buffers of array frames, see _spare_buffer
        sock.settimeout(timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket (e.g. a socketpair in tests): nothing to tune
            pass

    def set_timeout(self, timeout_s: float) -> None:
        """Change how long any later send or receive may wait (the socket's own timeout too)."""
        super().set_timeout(timeout_s)
        self._sock.settimeout(timeout_s)

    @property
    def _frame_in_flight(self) -> bool:
        return self._out_part < len(self._out)

    def _start_frame(self, kind: int, header: bytes, payload: memoryview) -> int:
        head = PREFIX.pack(kind, len(header), payload.nbytes) + header
        if payload.nbytes <= 1 << 16:  # one write, one TLS record: a small frame leaves in one segment
            self._out = [memoryview(head + bytes(payload))]
        else:
            self._out = [memoryview(head), payload]
        self._out_part = self._out_pos = 0
        return len(head) + payload.nbytes

    def _write_step(self) -> int:
        """One non-blocking write of the frame in flight; returns bytes written (TLS may raise SSLWant*Error).

        A write that TLS could not finish is retried with the same chunk, as OpenSSL requires.
        """
        guard = _write_guard
        guard.depth += 1
        try:
            part = self._out[self._out_part]
            n = self._sock.send(part[self._out_pos:self._out_pos + _SEND_CHUNK])
            self._out_pos += n
            if self._out_pos >= len(part):
                self._out_part, self._out_pos = self._out_part + 1, 0
        finally:
            guard.depth -= 1
            if guard.pending is not None and not guard.depth:
                exc, guard.pending = guard.pending, None
                raise exc  # the deferred stop request, now that the write is recorded
        return n

    def _send_frame(self, kind: int, header: bytes, payload: memoryview) -> None:
        if kind in (KIND_ABORT, KIND_CLOSE):
            # a failing side must not hang on a peer that no longer reads: bound the last words
            limit = min(self.timeout_s, 2.0)
            if self._frame_in_flight:  # finish the cut frame, or the abort frame would be read as its payload
                try:
                    self._pump(receive=False, timeout_s=limit)
                except TransportError:
                    raise TransportError(f"a frame to {self.peer_name} was cut off; cannot frame another") from None
            self._start_frame(kind, header, payload)
            self._pump(receive=False, timeout_s=limit)
            return
        if self._frame_in_flight:
            raise TransportError(f"a frame to {self.peer_name} was cut off; cannot frame another")
        self._start_frame(kind, header, payload)
        self._pump(receive=False, timeout_s=self.timeout_s)

    def _recv_exact(self, count: int, into: bytearray | memoryview | None = None) -> bytearray | memoryview:
        buf = bytearray(count) if into is None else into
        view = memoryview(buf)
        got = 0
        try:
            while got < count:
                n = self._sock.recv_into(view[got:], min(count - got, 1 << 24))
                if n == 0:
                    raise PeerDisconnected(f"{self.peer_name} closed the connection (process ended?)")
                got += n
        except TimeoutError:
            raise TransportTimeout(f"nothing from {self.peer_name} within {self.timeout_s:g} s") from None
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            raise PeerDisconnected(f"connection to {self.peer_name} lost: {exc}") from None
        return buf

    def _recv_frame(self) -> tuple[int, bytes, bytes | bytearray | memoryview]:
        kind, header_len, payload_len = PREFIX.unpack(self._recv_exact(PREFIX.size))
        if header_len > MAX_HEADER or payload_len > MAX_PAYLOAD or kind not in (1, 2, 3, 4):
            raise TransportError(f"malformed frame from {self.peer_name}")
        header = bytes(self._recv_exact(header_len))
        if kind == KIND_ARRAY:
            into = self._spare_buffer(payload_len)
            return kind, header, self._recv_exact(payload_len, _fresh_buffer(kind, payload_len) if into is None
                                                  else into)
        return kind, header, self._recv_exact(payload_len)

    def _spare_buffer(self, size: int) -> bytearray | memoryview | None:
        """A kept buffer of at least ``size`` bytes that no array refers to any more (the smallest such), a new
        kept one while fewer than `_SPARES` are kept, or None (receive into fresh memory)."""
        global _spare_bytes_kept
        if not _SPARE_SIZES[0] <= size <= _SPARE_SIZES[1]:
            return None
        best: bytearray | None = None
        for spare in self._spares:
            # referenced by the list, the loop variable and getrefcount's argument only: every array that was
            # made from it (np.frombuffer keeps its buffer alive) is gone
            if len(spare) >= size and (best is None or len(spare) < len(best)) and sys.getrefcount(spare) <= 3:
                best = spare
        if best is None:
            if len(self._spares) >= _SPARES:
                return None
            with _spare_lock:
                if _spare_bytes_kept + size > _SPARE_BYTES:
                    return None
                _spare_bytes_kept += size
            best = bytearray(size)
            self._spares.append(best)
        return best if len(best) == size else memoryview(best)[:size]

    def _release_spares(self) -> None:
        global _spare_bytes_kept
        with _spare_lock:
            _spare_bytes_kept -= sum(len(spare) for spare in self._spares)
        self._spares = []

    def exchange(self, arr: np.ndarray) -> np.ndarray:
        """Send ``arr`` while receiving the peer's array of the same round (one round, full duplex).

        Same frames and counters as `send_array` + `recv_array`. Raises `TransportTimeout` when neither direction
        moves for ``timeout_s``, `PeerAborted` if the peer's frame is an abort (even while this side still sends),
        `PeerDisconnected` if the connection breaks.
        """
        arr = np.ascontiguousarray(arr)
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise TypeError(f"cannot send arrays of dtype {arr.dtype}")
        if self._closed:
            raise TransportError(f"channel to {self.peer_name} is closed")
        if self._frame_in_flight:
            raise TransportError(f"a frame to {self.peer_name} was cut off; cannot frame another")
        self.stats.rounds += 1
        size = self._start_frame(KIND_ARRAY, _array_header(arr), memoryview(arr.reshape(-1)).cast("B"))
        received = self._pump(receive=True, timeout_s=self.timeout_s)
        assert received is not None
        kind, header, payload = received
        if not self._frame_in_flight:  # not when the peer's frame is an abort that stopped the sending
            self.stats.bytes_sent += size
            self.stats.messages_sent += 1
        header, payload = self._check_frame(kind, header, payload, KIND_ARRAY)
        return _parse_array(header, payload)

    def _pump(self, receive: bool, timeout_s: float) -> tuple[int, bytes, bytearray] | None:
        """Write the frame in flight and, if ``receive``, read one frame at the same time (non-blocking + poll).

        One thread drives both directions (an OpenSSL connection must not be used from two threads at once).
        Returns the received frame (early if it is not an array, e.g. an abort: the own frame stays in flight).
        Raises `TransportTimeout` after ``timeout_s`` without progress, `PeerDisconnected` on a broken connection.
        """
        sock = self._sock
        receiving = receive
        send_error: PeerDisconnected | None = None
        stage, buf, got = 0, bytearray(PREFIX.size), 0  # receive stages: 0 prefix, 1 header, 2 payload
        kind = payload_len = 0
        header = b""
        poller = select.poll()
        registered = 0
        sock.settimeout(0.0)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                progressed = False
                wait = 0
                # Read until TLS would block: poll cannot see decrypted bytes already buffered inside OpenSSL.
                while receiving:
                    if got == len(buf):  # this stage is complete (it may be empty)
                        if stage == 0:
                            kind, header_len, payload_len = PREFIX.unpack(buf)
                            if header_len > MAX_HEADER or payload_len > MAX_PAYLOAD or kind not in (1, 2, 3, 4):
                                raise TransportError(f"malformed frame from {self.peer_name}")
                            stage, buf, got = 1, bytearray(header_len), 0
                        elif stage == 1:
                            # fresh memory, not `_spare_buffer`: duplex exchanges carry the MPC engine's
                            # openings, near its memory peak, where kept buffers would add to the peak
                            stage, header, buf, got = 2, bytes(buf), _fresh_buffer(kind, payload_len), 0
                        else:
                            receiving = False
                        continue
                    try:
                        n = sock.recv_into(memoryview(buf)[got:], len(buf) - got)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        wait |= select.POLLIN
                        break
                    except ssl.SSLWantWriteError:
                        wait |= select.POLLOUT
                        break
                    except (ConnectionError, ssl.SSLError, OSError) as exc:
                        raise send_error or PeerDisconnected(f"connection to {self.peer_name} lost: {exc}") from None
                    if n == 0:
                        raise send_error or PeerDisconnected(f"{self.peer_name} closed the connection (process ended?)")
                    got += n
                    progressed = True
                sending = send_error is None and self._frame_in_flight
                if not receiving and (not sending or (receive and kind != KIND_ARRAY)):  # done, or peer aborted
                    if send_error is not None and not (receive and kind in (KIND_ABORT, KIND_CLOSE)):
                        raise send_error
                    return (kind, header, buf) if receive else None
                # Write after reading: an abort frame already waiting is seen before a write could fail on
                # the reset that follows it (a failed write ends the TLS connection, unread frames included).
                if sending:
                    try:
                        progressed = self._write_step() > 0 or progressed
                    except ssl.SSLWantReadError:
                        wait |= select.POLLIN
                    except (ssl.SSLWantWriteError, BlockingIOError):
                        wait |= select.POLLOUT
                    except (ConnectionError, ssl.SSLError, OSError) as exc:
                        send_error = PeerDisconnected(f"connection to {self.peer_name} lost while sending: {exc}")
                        if not receiving:
                            raise send_error from None
                        # keep reading briefly: the peer may have sent an abort frame (its reason) before closing
                        deadline = min(deadline, time.monotonic() + 1.0)
                now = time.monotonic()
                if progressed:
                    if send_error is None:
                        deadline = now + timeout_s
                    continue
                if now >= deadline or not wait:
                    raise send_error or TransportTimeout(
                        f"no progress {'exchanging with' if receive else 'sending to'} {self.peer_name} "
                        f"within {timeout_s:g} s")
                if wait != registered:
                    if registered:
                        poller.modify(sock, wait)
                    else:
                        poller.register(sock, wait)
                    registered = wait
                poller.poll(max(1, int((deadline - now) * 1000)))
        finally:
            if not self._closed:
                try:
                    sock.settimeout(self.timeout_s)
                except OSError:
                    pass

    def _linger(self, grace_s: float = 1.0) -> None:
        """Drop what the peer still sends until it closes, for at most ``grace_s``, before closing.

        Closing a TCP socket with unread input sends a reset, and a reset can reach the peer while it is still
        writing: its TLS connection then fails before it reads the abort frame, and the reason is lost.
        """
        deadline = time.monotonic() + grace_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                self._sock.settimeout(left)
                if not self._sock.recv(1 << 16):
                    return
        except (OSError, ValueError):  # timeout, reset, TLS alert: the peer is gone or slow; close anyway
            pass

    def _close_transport(self) -> None:
        self._release_spares()
        try:
            self._sock.close()
        except OSError:
            pass


def tls_context(certs: CertPaths, server: bool) -> ssl.SSLContext:
    """TLS 1.3-only context presenting ``certs`` and requiring a peer certificate from the same CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(certs.cert), str(certs.key))
    ctx.load_verify_locations(str(certs.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _peer_common_name(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


class TlsListener:
    """A listening TLS endpoint that accepts authenticated peers one at a time."""

    def __init__(self, host: str, port: int, certs: CertPaths) -> None:
        self._ctx = tls_context(certs, server=True)
        self._sock = socket.create_server((host, port))
        self.port: int = self._sock.getsockname()[1]

    def accept(self, allowed_peers: set[str], send_first: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> Channel:
        """Wait for a peer whose certificate names one of ``allowed_peers``; return its channel."""
        self._sock.settimeout(timeout_s)
        try:
            raw, _addr = self._sock.accept()
        except TimeoutError:
            raise TransportTimeout(f"no peer among {sorted(allowed_peers)} connected within {timeout_s:g} s") from None
        raw.settimeout(timeout_s)
        try:
            tls = self._ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise TransportError(f"TLS handshake with an incoming peer failed: {exc}") from None
        name = _peer_common_name(tls)
        if name not in allowed_peers:
            tls.close()
            raise TransportError(f"peer certificate names {name!r}, expected one of {sorted(allowed_peers)}")
        return SocketChannel(tls, name, send_first, timeout_s)

    def close(self) -> None:
        """Stop listening."""
        self._sock.close()


def connect_tls(host: str, port: int, certs: CertPaths, expected_peer: str, send_first: bool,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Channel:
    """Connect to ``host:port`` (retrying until the timeout while it is not up yet) and authenticate both ends."""
    ctx = tls_context(certs, server=False)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            raw = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            break
        except (ConnectionRefusedError, TimeoutError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise TransportTimeout(f"could not connect to {expected_peer} at {host}:{port}: {exc}") from None
            time.sleep(0.05)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise TransportError(f"TLS handshake with {expected_peer} at {host}:{port} failed: {exc}") from None
    name = _peer_common_name(tls)
    if name != expected_peer:
        tls.close()
        raise TransportError(f"peer at {host}:{port} presented a certificate for {name!r}, expected {expected_peer!r}")
    return SocketChannel(tls, name, send_first, timeout_s)
