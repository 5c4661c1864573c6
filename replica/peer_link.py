# SPDX-License-Identifier: GPL-2.0-or-later
"""The peer link of one replicated resource: TCP connect/accept, handshake, reconnect, resync.

Owns: `PeerLink` (one thread per resource keeping the TCP link to the peer up) and
`ResyncRunner` (one thread per running resync on the SyncSource). Decisions about states and
UUIDs belong to the owners (replica.connection.PeerConnection for the link,
replica.sync.ResyncControl for the runner); this module moves bytes.

    PeerLink thread (one side connects, the other accepts: the node whose name sorts first
    connects, so both sides agree without a race)::

      ┌─► Connecting ── initiator: connect to the peer's address every connect-int s
      │                 acceptor:  accept on our own address
      │     TCP up ──► net { tls yes }: TLS handshake in C (the initiator is the TLS client),
      │       each side verifying the other's certificate against tls-cafile and for the peer's
      │       `on` name (mirror.TlsSession; fails: wrong CA, expired, no TLS ──► log, retry)
      │     ──► handshake (replica.protocol.repl, frames read one by one so that no byte
      │                 of the data stream is consumed, bounded by HANDSHAKE_TIMEOUT_S)
      │       fails: refused, malformed, version ──► log naming the peer, close, retry
      │       fails for good: authentication, incompatible net settings (protocol...) ──►
      │         log naming the peer, owner.discard_network_config(): StandAlone, thread ends
      │         (DRBD: "Authentication of peer failed", "Discarding network configuration.")
      │       (over the TLS session when there is one; C's data path then uses it too)
      │     HandshakeDone ──► owner.link_established(sock, done, peer_bitmap)
      │       False (split brain, unrelated data...) ──► StandAlone: the thread ends
      │       True  ──► Connected: wait for link_down() (peer lost, ping timeout, disconnect)
      └──────── close the socket, retry

    ResyncRunner (SyncSource)::

      csums-alg: the first pass sends digests instead of data (resync_csum_send: the peer
        compares, C clears the bits of equal blocks on both sides); once every answer is in,
        the passes below send the blocks that differed
      every STEP_S (0.1 s): blocked (pause-sync, peer paused, resync-after)? skip the step
        bytes = controller.step(acked, in flight)  (replica.rate_control: DRBD 8.4's controller,
                or resync-rate with c-plan-ahead 0); application I/O active and the resync
                above c-min-rate? send nothing; active and below? at most c-min-rate's share
        send that many dirty bytes from the cursor on, in linear order (resync_send)
      end of pass: wait until every RS_DATA sent was acknowledged (C clears the bits)
      bitmap empty ──► owner.resync_finished()    else ──► next pass

    A runner lives for one connection (the owner starts a new one after a reconnect). C's
    resync_bytes_sent/acked count since the engine started, across connections: what went out
    on a connection that died is never acknowledged, so the runner waits only for its own
    bytes, counted from the counters' values when it started. Its blocks are still dirty in
    the bitmap (C clears a bit on RS_DONE only), so the new connection's pass sends them again.
"""
import logging
import socket
import threading
import time

from replica import mirror
from replica.auth import hmac_digest, new_challenge
from replica.bitmap import Bitmap
from replica.errors import LocalProtocolError, RemoteProtocolError
from replica.protocol import repl_wire as wire
from replica.protocol.repl import (
    NEED_DATA,
    Authenticated,
    AuthFailed,
    HandshakeDone,
    HandshakeFailed,
    Incompatible,
    PeerBitmap,
    PeerHello,
    PeerRefused,
    ReplHandshake,
)
from replica.protocol.repl_codec import frame_length
from replica.protocol.repl_wire import RefuseCode
from replica.rate_control import STEP_S, AppIoThrottle, ControllerSettings, RateController
from replica.uuids import SplitBrainPolicy

HANDSHAKE_TIMEOUT_S = 30.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0           # a TLS handshake is two round trips; a silent peer is not TLS
HANDSHAKE_FRAME_MAX = 4 * 1024 * 1024     # bitmap slices are 1 MiB; anything bigger is hostile
ACK_WAIT_S = 60.0

log = logging.getLogger("replicad.peer")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes:
    """One whole frame (header + payload), or fewer bytes at EOF. Never reads past the frame."""
    return _read_frame_with(lambda n: _recv_exact(sock, n))


def _read_frame_with(recv_exact) -> bytes:
    head = recv_exact(wire.HEADER_SIZE)
    if len(head) < wire.HEADER_SIZE:
        return head
    return head + recv_exact(frame_length(head, HANDSHAKE_FRAME_MAX))


class _PlainStream:
    """The replication handshake's I/O on the socket itself."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.settimeout(HANDSHAKE_TIMEOUT_S)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        return read_frame(self.sock)


class _TlsStream:
    """The replication handshake's I/O through the TLS session (C reads and writes the records)."""

    def __init__(self, session: mirror.TlsSession):
        self.session = session

    def sendall(self, data: bytes) -> None:
        self.session.write_all(data)

    def _recv_exact(self, n: int) -> bytes:
        try:
            return self.session.read_exact(n, HANDSHAKE_TIMEOUT_S)
        except ConnectionResetError:
            return b""                  # EOF: the decoder reports the short frame

    def read_frame(self) -> bytes:
        return _read_frame_with(self._recv_exact)


class PeerLink:
    """Keeps `owner`'s resource connected to its peer until stop()."""

    def __init__(self, owner, *, node: str, peer: str, local_addr: tuple[str, int],
                 peer_addr: tuple[str, int], net):
        self.owner = owner
        self.name = owner.name
        self.node, self.peer = node, peer
        self.local_addr, self.peer_addr = local_addr, peer_addr
        self.net = net
        self.initiator = node < peer
        self.peer_text = f"{peer} ({peer_addr[0]}:{peer_addr[1]})"
        self._auth = None
        if net.shared_secret is not None:
            self._auth = (net.cram_hmac_alg or "sha1", net.shared_secret.encode("utf-8"))
        # net { tls yes }: the initiator is the TLS client; both demand and verify the other's
        # certificate (mutual authentication) and check that it names the peer's `on` host
        self._tls: mirror.TlsContext | None = None
        if getattr(net, "tls", False):
            try:
                self._tls = mirror.TlsContext(server=not self.initiator, certfile=net.tls_certfile,
                                              keyfile=net.tls_keyfile, cafile=net.tls_cafile, verify_peer=True)
            except mirror.TlsError as exc:
                raise mirror.TlsError(f"peer link: {self.name}: {exc}") from None
        self.tls_session: mirror.TlsSession | None = None
        self.tls_text = ""              # protocol, cipher, peer of the session in use
        self.tls_error = ""             # why the last TLS handshake failed ("" after one succeeded)
        self._stopping = threading.Event()
        self._down = threading.Event()
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.last_error = ""

    # --- owner API -----------------------------------------------------------------------

    def start(self) -> None:
        if not self.initiator:
            self._listener = self._listen()
        self._thread = threading.Thread(target=self._run, name=f"peer[{self.name}]", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop for good (disconnect/down). The owner has detached C from the socket first."""
        self._stopping.set()
        self._down.set()
        for s in (self._listener, self._sock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._listener is not None:
            self._listener.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def link_down(self) -> None:
        """The established link is gone (C detached): close it and reconnect."""
        self._down.set()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the thread ------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.local_addr[0] else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(self.local_addr)
        except OSError as exc:
            s.close()
            raise OSError(exc.errno, f"peer link: {self.name}: cannot listen on "
                          f"{self.local_addr[0]}:{self.local_addr[1]}: {exc.strerror}") from None
        s.listen(4)                 # blocking accept: no wake-up while nobody connects
        return s

    def _connect_once(self) -> socket.socket | None:
        if self.initiator:
            family = socket.AF_INET6 if ":" in self.peer_addr[0] else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(min(self.net.connect_int_s, 5.0))
            try:
                s.connect(self.peer_addr)
                return s
            except OSError as exc:
                s.close()
                self.last_error = f"connect to {self.peer_text}: {exc.strerror or exc}"
                self._stopping.wait(self.net.connect_int_s)
                return None
        if self._listener is None:
            return None
        try:
            s, addr = self._listener.accept()    # blocks; stop() shuts the listener down
        except (TimeoutError, OSError):
            return None
        if addr[0] != self.peer_addr[0]:
            log.warning("peer link: %s: refused connection from %s:%d: not the peer address %s",
                        self.name, addr[0], addr[1], self.peer_addr[0])
            s.close()
            return None
        return s

    def _run(self) -> None:
        while not self._stopping.is_set():
            sock = self._connect_once()
            if sock is None:
                continue
            self._sock = sock
            try:
                keep = self._session(sock)
            finally:
                self._sock = None
                self._close_tls()           # C has let go of it (owner detached first)
                sock.close()
            if not keep:                    # StandAlone: free the address for a new connect
                if self._listener is not None:
                    self._listener.close()
                return
            if not self._stopping.is_set() and self.initiator:
                self._stopping.wait(min(1.0, self.net.connect_int_s))
        log.debug("peer link: %s: stopped", self.name)

    def _session(self, sock: socket.socket) -> bool:
        """Handshake, then hold the link until it goes down. False = stop retrying."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for opt, size in ((socket.SO_SNDBUF, self.net.sndbuf_size),
                          (socket.SO_RCVBUF, self.net.rcvbuf_size)):
            if size:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
        stream: _PlainStream | _TlsStream = _PlainStream(sock)
        if self._tls is not None:
            try:
                self.tls_session = self._tls.handshake(sock.fileno(), TLS_HANDSHAKE_TIMEOUT_S, self.peer)
            except mirror.TlsError as exc:
                return self._tls_failed(exc)
            self.tls_text = self.tls_session.describe()
            log.info("peer link: %s: peer %s: %s", self.name, self.peer_text, self.tls_text)
            stream = _TlsStream(self.tls_session)
        try:
            done, bitmap = self._handshake(stream)
        except mirror.TlsError as exc:
            # TLS 1.3: a client learns that the server refused its certificate on its first read
            return self._tls_failed(exc)
        except (OSError, RemoteProtocolError, LocalProtocolError) as exc:
            self.last_error = f"handshake with {self.peer_text}: {exc}"
            log.warning("peer link: %s: %s", self.name, self.last_error)
            self._stopping.wait(min(1.0, self.net.connect_int_s))
            return True
        if not isinstance(done, HandshakeDone):
            if self._gives_up(done):
                self.owner.discard_network_config(self, self.last_error)
                return False
            self._stopping.wait(self.net.connect_int_s)
            return True
        if self.tls_session is None:
            sock.settimeout(None)       # (a TLS session keeps its fd non-blocking for C)
        self.tls_error = ""
        self._down.clear()
        if not self.owner.link_established(sock, done, bitmap):
            return False
        self._down.wait()
        return True

    def _tls_failed(self, exc: mirror.TlsError) -> bool:
        """A refused TLS handshake: log it naming the peer, stay Connecting and retry (DRBD)."""
        reason = str(exc).removeprefix("tls: ")
        self.tls_error = reason
        self.last_error = f"tls handshake with {self.peer_text} failed: {reason}"
        log.error("peer link: %s: %s", self.name, self.last_error)
        self._close_tls()
        self._stopping.wait(min(1.0, self.net.connect_int_s))
        return True

    def _close_tls(self) -> None:
        if self.tls_session is not None:
            self.tls_session.close()
            self.tls_session = None
            self.tls_text = ""

    def _gives_up(self, event) -> bool:
        """Log a failed handshake naming the peer; True if it is final (go StandAlone)."""
        code = event.code if isinstance(event, PeerRefused) else None
        if isinstance(event, AuthFailed) or code is RefuseCode.AUTH:
            log.error("peer link: %s: peer %s: Authentication of peer failed: %s", self.name,
                      self.peer_text, event.reason)
        elif isinstance(event, Incompatible) or code is RefuseCode.INCOMPATIBLE:
            log.error("peer link: %s: peer %s: %s", self.name, self.peer_text, event.reason)
        else:
            log.warning("peer link: %s: %s", self.name, self.last_error)
            return False
        log.warning("peer link: %s: Discarding network configuration.", self.name)
        return True

    def _handshake(self, sock: "_PlainStream | _TlsStream") -> tuple[object, Bitmap | None]:
        """(HandshakeDone, the peer's bitmap) or (the failure event, None)."""
        alg, secret = self._auth if self._auth else (None, None)
        hs = ReplHandshake(self.owner.hello_info(), secret=secret, alg=alg, mac=hmac_digest,
                           challenge=new_challenge() if secret else b"",
                           is_initiator=self.initiator, bitmap_source=self.owner.encoded_bitmap,
                           policy=SplitBrainPolicy.from_net(self.net),
                           may_demote=self.owner.may_demote())
        bitmap = None
        while True:
            event = hs.next_event()
            out = hs.data_to_send()
            if out:
                sock.sendall(out)
            if event is NEED_DATA:
                hs.receive_data(sock.read_frame() or b"")
            elif isinstance(event, PeerHello):
                log.info("peer link: %s: peer %s: hello: role %s, disk %s, uuids %s", self.name,
                         self.peer_text, event.info.role, event.info.disk,
                         event.info.uuids.text())
            elif isinstance(event, Authenticated):
                log.info("peer link: %s: peer %s authenticated (cram-hmac-alg %s)", self.name,
                         self.peer_text, alg)
            elif isinstance(event, PeerBitmap):
                bitmap = event.bitmap
            elif isinstance(event, (AuthFailed, HandshakeFailed, Incompatible, PeerRefused)):
                self.last_error = f"peer {self.peer_text}: {event.reason}"
                if isinstance(event, AuthFailed):
                    self.last_error = (f"peer {self.peer_text}: authentication of peer failed: "
                                       f"{event.reason}")
                return event, None
            elif isinstance(event, HandshakeDone):
                self.last_error = ""
                return event, bitmap


MAX_RESYNC_CHUNK = mirror.MAX_RESYNC_CHUNK


class ResyncRunner:
    """Sends the dirty blocks of `bitmap` to the peer (we are SyncSource), paced per STEP_S by
    the resync controller (replica.rate_control) and held back by application I/O (c-min-rate)
    and by `owner.resync_blocked()` (pause-sync, the peer's pause, resync-after)."""

    def __init__(self, owner, engine, bitmap: Bitmap, settings: ControllerSettings,
                 csums_alg: str | None = None):
        self.owner, self.engine, self.bitmap = owner, engine, bitmap
        self.csums_alg = csums_alg      # the first pass sends digests (None: data only)
        self.csum_pass = bool(csums_alg)
        self.settings = settings
        self.controller = RateController(settings)
        self.throttle = AppIoThrottle(settings.min_rate_bps)
        self.throttled = False          # the last step held back for application I/O
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"resync[{owner.name}]",
                                        daemon=True)
        self.bytes_sent = 0
        st = engine.stats()
        self._sent_base = _resync_sent(st)
        self._acked_base = _resync_acked(st)
        self._equal_base = st.get("csum_bytes_equal", 0)
        self.csum_bytes_checked = 0     # bytes the csums pass covered
        self.csum_bytes_equal = 0       # of those, found equal on both sides: no data sent

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _blocked(self) -> bool:
        blocked = getattr(self.owner, "resync_blocked", None)
        return bool(blocked and blocked())

    def _run(self) -> None:
        cursor, last_acked = 0, 0
        next_step = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if next_step > now and self._stop.wait(next_step - now):
                    return
                next_step = max(next_step + STEP_S, time.monotonic())
                if self._blocked():
                    continue
                st = self.engine.stats()
                acked = _resync_acked(st) - self._acked_base
                sent = _resync_sent(st) - self._sent_base
                budget = self.controller.step(acked - last_acked, sent - acked)
                last_acked = acked
                app = st.get("bytes_read", 0) + st.get("bytes_written", 0)
                self.throttled = self.throttle.should_slow_down(app, acked, time.monotonic())
                if self.throttled:
                    continue
                if self.throttle.app_active:
                    budget = min(budget, self.throttle.app_active_budget)
                cursor, pass_done = self._send(cursor, budget)
                if not pass_done:
                    continue
                if not self._wait_acks():
                    return
                if self.csum_pass:
                    self._end_csum_pass()
                if self.bitmap.count() == 0:
                    self.owner.resync_finished(self)
                    return
                cursor = 0
        except OSError as exc:
            # the link went away: C reports peer_lost and the owner stops us; just log
            log.warning("resync: %s: stopped: %s", self.owner.name, exc)

    def _send(self, cursor: int, budget: int) -> tuple[int, bool]:
        """Send up to `budget` bytes of dirty blocks from `cursor` on, in linear order.
        Returns (the new cursor, True when this pass reached the end of the bitmap)."""
        while budget > 0 and not self._stop.is_set():
            chunk = min(MAX_RESYNC_CHUNK, budget)
            extent = next(iter(self.bitmap.iter_dirty_extents(chunk, cursor)), None)
            if extent is None:
                return cursor, True
            offset, length = extent
            if self.csum_pass:
                self.engine.resync_csum_send(self.csums_alg, offset, length)
                self.csum_bytes_checked += length
            else:
                self.engine.resync_send(offset, length)
                self.bytes_sent += length
            budget -= length
            cursor = offset + length
        return cursor, False

    def _wait_acks(self) -> bool:
        deadline = time.monotonic() + ACK_WAIT_S
        while not self._stop.is_set():
            st = self.engine.stats()
            acked = _resync_acked(st) - self._acked_base
            sent = _resync_sent(st) - self._sent_base
            if acked >= sent or not st.get("peer_connected", 1):
                return bool(st.get("peer_connected", 1))
            if time.monotonic() > deadline:
                log.warning("resync: %s: acknowledgements missing after %.0f s: rescanning",
                            self.owner.name, ACK_WAIT_S)
                return True
            self._stop.wait(0.01)
        return False

    def _end_csum_pass(self) -> None:
        """Every RS_CSUM is answered: log what it saved; from now on blocks go as data."""
        self.csum_pass = False
        self.csum_bytes_equal = self.engine.stats().get("csum_bytes_equal", 0) - self._equal_base
        checked, equal = self.csum_bytes_checked // BLOCK, self.csum_bytes_equal // BLOCK
        log.info("resync: %s: csums-alg %s: %d of %d blocks equal, skipped; %d to send",
                 self.owner.name, self.csums_alg, equal, checked, self.bitmap.count())


BLOCK = 4096


def _resync_sent(st: dict) -> int:
    """Bytes the resync put in flight: RS_DATA payloads and ranges covered by RS_CSUM."""
    return st.get("resync_bytes_sent", 0) + st.get("csum_bytes_sent", 0)


def _resync_acked(st: dict) -> int:
    """Bytes of those answered: RS_DONE and RS_CSUM_REPLY."""
    return st.get("resync_bytes_acked", 0) + st.get("csum_bytes_done", 0)
