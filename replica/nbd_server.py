# SPDX-License-Identifier: GPL-2.0-or-later
"""NBD server driver: listen, accept, run the sans-I/O handshake, hand the socket to C.

    listener ──► handshake loop (one thread, a selector: accepts and drives every handshake,
                 │                non-blocking, with replica.protocol.nbd, each bounded by a timeout)
                 ├─ EnterTransmission ──► serving thread: engine.serve_nbd(fd)
                 │                        (C, GIL released, until the client leaves)
                 └─ StartTls (ACK sent) ──► TLS thread: TLS handshake (C, GIL released), the rest
                                            of the option haggling over the session (whole reads
                                            of `bytes_needed`), then engine.serve_nbd(fd, tls=...)

Why one loop for every handshake: a flood of short connections (10,000 connect/close in 0.1 s,
or hundreds of clients sending garbage) costs one accept and a few microseconds of Python each,
never a thread; the loop accepts until the kernel's queue is empty every time it wakes, and the
listen backlog is the kernel's maximum, so a burst does not overflow it (libnbd reports an
overflowed unix-socket backlog as EAGAIN). Only a connection that reaches the transmission
phase gets its own thread, where the C loop blocks in recv/send without the GIL, so serving
threads cost nothing per request and a misbehaving client only ever ends its own connection.
When nothing happens the loop sleeps in the selector with no timeout.

TLS (NBD_OPT_STARTTLS, `tls=ExportTlsSetup`): the handshake is blocking C, so a client gets its
thread once its STARTTLS is acknowledged, and keeps it into the transmission phase, as a serving
client does. Those threads are capped (MAX_TLS_HANDSHAKES: past it a STARTTLS client is dropped)
and bounded by the same handshake deadline, and stop() shuts their sockets down to end them.
"""
import collections
import errno
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass

from replica.errors import RemoteProtocolError
from replica.mirror import Engine, TlsContext, TlsSession
from replica.protocol.nbd import (
    NEED_DATA,
    ClientAborted,
    ClientDisconnected,
    EnterTransmission,
    ExportInfo,
    NbdServerConnection,
    OptionRefused,
    StartTls,
    TlsMode,
)
from replica.protocol.nbd_wire import NbdRep

HANDSHAKE_TIMEOUT_S = 30.0
RECV_CHUNK = 65536
SOCKET_BUFFER = 4 * 1024 * 1024
# Out of file descriptors: stop accepting for this long (the clients wait in the backlog).
EMFILE_PAUSE_S = 0.1
# Replies a client has not read yet, past which we stop reading its options.
MAX_UNSENT = 65536
# Clients between their STARTTLS and the transmission phase (each holds a thread meanwhile).
MAX_TLS_HANDSHAKES = 64


@dataclass(frozen=True)
class ExportTlsSetup:
    """How an export speaks TLS: the mode, and the server context (None with TlsMode.OFF)."""
    mode: TlsMode = TlsMode.OFF
    context: TlsContext | None = None

log = logging.getLogger("replicad.nbd")


def open_listener(endpoint) -> socket.socket:
    """Bind the export endpoint (config.Endpoint: unix path or TCP host:port)."""
    if endpoint.kind == "unix":
        path = endpoint.path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a stale socket from a previous run
            else:
                raise OSError(f"nbd: export socket {path} is already served by another process")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((endpoint.host, endpoint.port))
    sock.listen(socket.SOMAXCONN)   # the kernel caps it at net.core.somaxconn
    sock.setblocking(False)
    return sock


class _Handshake:
    """One client in the handshake phase: its socket, codec, unsent bytes and deadline."""

    __slots__ = ("sock", "peer", "conn", "out", "deadline", "initial", "done", "starttls")

    def __init__(self, sock: socket.socket, peer, conn: NbdServerConnection, deadline: float):
        self.sock = sock
        self.peer = peer
        self.conn = conn
        self.out = b""
        self.deadline = deadline
        self.initial: bytes | None = None   # set once EnterTransmission arrived
        self.done = False                   # dropped or handed over
        self.starttls = False               # STARTTLS acknowledged: TLS once the ACK is out


class ExportServer:
    """Serves one resource's export on one endpoint until stop()."""

    def __init__(self, name: str, endpoint, engine: Engine, export: ExportInfo,
                 tls: ExportTlsSetup | None = None):
        self.name = name
        self.endpoint = endpoint
        self.engine = engine
        self.export = export
        self.tls = tls or ExportTlsSetup()
        if self.tls.mode is not TlsMode.OFF and self.tls.context is None:
            raise ValueError(f"nbd: {name}: TLS mode {self.tls.mode.value} needs a TLS context")
        self._tls_socks: set[socket.socket] = set()   # clients in their TLS handshake threads
        self.listener = open_listener(endpoint)
        self._stopping = False
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # Every handshake in progress, in arrival order. Deadlines are accept time + a constant,
        # so this is deadline order too: expiry looks at the front only, whatever the number
        # of clients. Finished ones (`done`) leave when they reach the front.
        self._by_deadline: collections.deque[_Handshake] = collections.deque()
        self._accept_paused_until = 0.0
        self._greeting = self._new_codec().data_to_send()
        self._loop_thread = threading.Thread(target=self._handshake_loop, name=f"nbd-accept[{name}]",
                                             daemon=True)
        self._loop_thread.start()

    def stop(self) -> None:
        """Stop accepting, end every connection, and wait for their threads."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._loop_thread.join(timeout=5)
        self.engine.shutdown()
        with self._lock:
            for sock in self._tls_socks:     # wake handshakes blocked in C (poll on the fd)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        if self.endpoint.kind == "unix":
            try:
                os.unlink(self.endpoint.path)
            except FileNotFoundError:
                pass

    def _new_codec(self) -> NbdServerConnection:
        return NbdServerConnection({self.export.name: self.export}, default_export=self.export.name,
                                   tls=self.tls.mode)

    # --- the handshake loop ----------------------------------------------------------------

    def _handshake_loop(self) -> None:
        try:
            self._run_loop()
        except Exception:
            # A bug here would leave the export silently dead: say so loudly.
            log.critical("nbd: %s: handshake loop failed: no new clients are accepted", self.name,
                         exc_info=True)
            raise

    def _run_loop(self) -> None:
        try:
            while not self._stopping:
                for key, events in self._selector.select(self._next_timeout()):
                    if key.fileobj is self.listener:
                        self._accept_all()
                    elif key.data is not None:
                        self._service(key.data, events)
                self._expire(time.monotonic())
        finally:
            for hs in [hs for hs in self._by_deadline if not hs.done]:
                self._drop(hs)
            self._selector.close()
            self.listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _next_timeout(self) -> float | None:
        # _expire ran last: the front of _by_deadline is a handshake still in progress
        deadlines = [self._by_deadline[0].deadline] if self._by_deadline else []
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _accept_all(self) -> None:
        """Take every connection the kernel has queued. The greeting goes out at once: a client
        already gone (a burst of connect/close) costs an accept, a failed send and a close."""
        while True:
            try:
                client, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("nbd: %s: accept: %s: pausing for %.0f ms", self.name,
                                os.strerror(exc.errno), EMFILE_PAUSE_S * 1000)
                    self._selector.unregister(self.listener)
                    self._accept_paused_until = time.monotonic() + EMFILE_PAUSE_S
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            try:
                client.setblocking(False)
                client.send(self._greeting)   # 18 bytes: always fits an empty socket
            except OSError:
                client.close()
                continue
            conn = self._new_codec()
            conn.data_to_send()   # the greeting, sent above
            hs = _Handshake(client, addr if addr else "unix", conn,
                            time.monotonic() + HANDSHAKE_TIMEOUT_S)
            self._by_deadline.append(hs)
            self._selector.register(client, selectors.EVENT_READ, hs)

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self.listener, selectors.EVENT_READ, None)
        while self._by_deadline and (self._by_deadline[0].done or self._by_deadline[0].deadline <= now):
            hs = self._by_deadline.popleft()
            if not hs.done:
                log.warning("nbd: %s: client %s: handshake not finished after %.0f s: dropped",
                            self.name, hs.peer, HANDSHAKE_TIMEOUT_S)
                self._drop(hs)

    def _service(self, hs: _Handshake, events: int) -> None:
        """Read what the client sent (when `events` says so) and move its handshake on; a
        client that breaks the protocol or the connection is dropped, and only it."""
        try:
            if events & selectors.EVENT_READ and hs.initial is None and not hs.starttls:
                hs.conn.receive_data(hs.sock.recv(RECV_CHUNK))
            self._advance(hs)
        except BlockingIOError:
            pass
        except (OSError, RemoteProtocolError) as exc:
            log.info("nbd: %s: client %s: handshake: %s", self.name, hs.peer, exc)
            self._drop(hs)

    def _advance(self, hs: _Handshake) -> None:
        """Run the codec until it needs data; send its replies; hand over on EnterTransmission."""
        while hs.initial is None and not hs.starttls:
            event = hs.conn.next_event()
            hs.out += hs.conn.data_to_send()
            if event is NEED_DATA:
                break
            if isinstance(event, EnterTransmission):
                log.info("nbd: %s: client %s: connected", self.name, hs.peer)
                hs.initial = hs.conn.trailing_data
            elif isinstance(event, StartTls):
                hs.starttls = True           # the next bytes are the client's TLS ClientHello
            elif isinstance(event, OptionRefused):
                # A clear-text client at a TLS-only export is worth a line; other refusals not.
                level = logging.INFO if event.reply == NbdRep.ERR_TLS_REQD else logging.DEBUG
                log.log(level, "nbd: %s: client %s: option refused: %s", self.name, hs.peer,
                        event.reason)
            elif isinstance(event, (ClientAborted, ClientDisconnected)):
                self._send_pending(hs)
                self._drop(hs)
                return
        if self._send_pending(hs) and (hs.initial is not None or hs.starttls):
            if hs.starttls:
                self._hand_over_tls(hs)
            else:
                self._hand_over(hs)
            return
        # Read more only while the client keeps up with our replies (a client that pipelines
        # options and never reads them must not grow our buffer).
        want = selectors.EVENT_WRITE if hs.out else 0
        if hs.initial is None and not hs.starttls and len(hs.out) < MAX_UNSENT:
            want |= selectors.EVENT_READ
        if self._selector.get_key(hs.sock).events != want:
            self._selector.modify(hs.sock, want, hs)

    def _send_pending(self, hs: _Handshake) -> bool:
        """Send what the codec queued; True once nothing is left (the client may not read)."""
        while hs.out:
            try:
                sent = hs.sock.send(hs.out)
            except BlockingIOError:
                return False
            hs.out = hs.out[sent:]
        return True

    def _drop(self, hs: _Handshake) -> None:
        self._forget(hs)
        hs.sock.close()

    def _forget(self, hs: _Handshake) -> None:
        hs.done = True
        try:
            self._selector.unregister(hs.sock)
        except (KeyError, ValueError):
            pass

    def _hand_over(self, hs: _Handshake) -> None:
        self._forget(hs)
        self._start_thread(hs, self._serve_client, (hs.sock, hs.peer, hs.initial))

    def _hand_over_tls(self, hs: _Handshake) -> None:
        self._forget(hs)
        with self._lock:
            busy = len(self._tls_socks) >= MAX_TLS_HANDSHAKES
            if not busy:
                self._tls_socks.add(hs.sock)
        if busy:
            log.warning("nbd: %s: client %s: %d TLS handshakes already in progress: dropped",
                        self.name, hs.peer, MAX_TLS_HANDSHAKES)
            hs.sock.close()
            return
        if not self._start_thread(hs, self._tls_client, (hs,)):
            with self._lock:
                self._tls_socks.discard(hs.sock)

    def _start_thread(self, hs: _Handshake, target, args) -> bool:
        thread = threading.Thread(target=target, args=args, name=f"nbd[{self.name}]", daemon=True)
        with self._lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:   # can't start new thread: this client only
            log.warning("nbd: %s: client %s: %s", self.name, hs.peer, exc)
            with self._lock:
                self._threads.discard(thread)
            hs.sock.close()
            return False
        return True

    # --- a TLS client: handshake and options over the session, then serving -----------------

    def _tls_client(self, hs: _Handshake) -> None:
        """After STARTTLS's ACK: the TLS handshake, the rest of the haggling through the session
        (whole reads of what the codec still needs, so requests pipelined after NBD_OPT_GO stay
        in the session for C), then the transmission phase over it."""
        session: TlsSession | None = None
        try:
            assert self.tls.context is not None
            hs.sock.setblocking(True)
            session = self.tls.context.handshake(hs.sock.fileno(), self._left(hs))
            hs.conn.tls_established()
            log.info("nbd: %s: client %s: TLS: %s", self.name, hs.peer, session.describe())
            initial = self._haggle_over_tls(hs, session)
            with self._lock:
                self._tls_socks.discard(hs.sock)
            if initial is not None:
                self._serve_client(hs.sock, hs.peer, initial, session)
                return
        except (OSError, RemoteProtocolError) as exc:
            # TlsError (a ConnectionError) carries C's reason: "certificate verify failed: ..."
            log.warning("nbd: %s: client %s: %s", self.name, hs.peer, exc)
        finally:
            with self._lock:
                self._tls_socks.discard(hs.sock)
                self._threads.discard(threading.current_thread())
        if session is not None:
            session.close()
        hs.sock.close()

    def _haggle_over_tls(self, hs: _Handshake, session: TlsSession) -> bytes | None:
        """Drive the codec over the session: the bytes for C once in transmission, or None when
        the client aborted."""
        while True:
            event = hs.conn.next_event()
            out = hs.conn.data_to_send()
            if out:
                session.write_all(out)
            if event is NEED_DATA:
                hs.conn.receive_data(session.read_exact(hs.conn.bytes_needed, self._left(hs)))
            elif isinstance(event, EnterTransmission):
                log.info("nbd: %s: client %s: connected over TLS", self.name, hs.peer)
                return hs.conn.trailing_data
            elif isinstance(event, OptionRefused):
                log.debug("nbd: %s: client %s: option refused: %s", self.name, hs.peer,
                          event.reason)
            else:       # ClientAborted, ClientDisconnected
                return None

    @staticmethod
    def _left(hs: _Handshake) -> float:
        """Seconds left of this client's handshake deadline; 0 has passed it (OSError)."""
        left = hs.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(errno.ETIMEDOUT, f"handshake not finished after "
                                                f"{HANDSHAKE_TIMEOUT_S:.0f} s")
        return left

    # --- a serving thread ------------------------------------------------------------------

    def _serve_client(self, client: socket.socket, peer, initial: bytes,
                      session: TlsSession | None = None) -> None:
        try:
            if session is None:
                client.setblocking(True)   # (a TLS session keeps its fd non-blocking)
            if client.family != socket.AF_UNIX:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Room for a few 1 MiB replies in the socket, so the C loop is not woken per 200 KiB.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            result = self.engine.serve_nbd(client.fileno(), initial, tls=session)
            detail = f": {os.strerror(result.errno)}" if result.errno else ""
            level = logging.INFO if result.clean else logging.WARNING
            log.log(level, "nbd: %s: client %s: %s%s", self.name, peer, result.reason, detail)
        except OSError as exc:
            log.warning("nbd: %s: client %s: %s", self.name, peer, exc)
        finally:
            if session is not None:
                session.close()          # close_notify, before the socket goes
            client.close()
            with self._lock:
                self._threads.discard(threading.current_thread())
