# SPDX-License-Identifier: GPL-2.0-or-later
"""The control socket of both daemons: one JSON object per line, each way, over a unix socket.

    request:  {"cmd": "status", ...}
    reply:    {"ok": true, ...}  or  {"ok": false, "error": "<one sentence>"}

replicad (RUN_DIR/replicad.sock, driven by replicactl) and hbd (RUN_DIR/hbd.sock,
driven by hbctl) both serve it with ``ControlServer``; both CLIs ask with
``exchange``.  What the commands mean is the daemon's business (a handler
function); this module owns the framing, the limits, the socket's life and mode.

Rules:

* One request per connection, at most ``MAX_MESSAGE`` bytes, read within
  ``READ_TIMEOUT_S``; a request that is not a JSON object with a string ``cmd`` is
  answered ``control: malformed request: ...`` without calling the handler.
* The socket is mode 0600 (created under umask 0o177): only root, or the
  daemon's user, may steer the daemon.
* A server refuses to start while another daemon still answers on the path; it
  removes the path on close only while the path is still its own socket.
* The handler runs on the server's per-connection thread.  A daemon with an
  event loop hops onto its loop from there (hbd.control does).
* Subscriptions (``replicactl events``): a handler may answer with a ``Stream``
  instead of a dict; the server then hands it the connection, and the stream
  writes one JSON object per line for as long as it likes (until the client
  goes away).  The client reads them with ``open_stream``.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from hacommon.errors import HaError

MAX_MESSAGE = 1 << 20
READ_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0

Reply = dict[str, Any]
Handler = Callable[[dict[str, Any]], "Reply | Stream"]


class ControlError(HaError):
    """The daemon refused a command or could not be reached; the message says which."""


class NotListening(ControlError):
    """Nothing accepts connections on the control socket (the daemon is not running)."""

    def __init__(self, path: str, strerror: str):
        super().__init__(f"control: no daemon answers on {path}: {strerror}")
        self.path = path
        self.strerror = strerror


class BadReply(ControlError):
    """The daemon closed the connection without a reply, or the reply is not a JSON object."""

    def __init__(self, path: str, data: bytes):
        super().__init__(f"control: bad reply on {path}: {data[:80]!r}")
        self.path = path
        self.data = data


def exchange(path: str, req: Mapping[str, Any], timeout_s: float = 60.0) -> Reply:
    """Send one request to the daemon at `path`; return its reply object, ``ok`` true or not.

    Raises NotListening, BadReply, ControlError (reply too large) or OSError (timeout, reset)."""
    sock = _send_request(path, req, timeout_s)
    try:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_MESSAGE:
                raise ControlError(f"control: reply from {path} is over {MAX_MESSAGE} bytes")
    finally:
        sock.close()
    return _decode(path, data)


def _send_request(path: str, req: Mapping[str, Any], timeout_s: float) -> socket.socket:
    """Connect to the daemon at `path` (NotListening if nothing listens there) and send `req`;
    the caller reads the answer and closes the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotListening(path, exc.strerror or str(exc)) from exc
        sock.sendall(json.dumps(dict(req)).encode() + b"\n")
    except BaseException:
        sock.close()
        raise
    return sock


def _decode(path: str, line: bytes) -> Reply:
    """One line from the daemon as a JSON object, else BadReply."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise BadReply(path, line) from None
    if not isinstance(obj, dict):
        raise BadReply(path, line)
    return obj


def is_answering(path: str) -> bool:
    """True while a daemon answers on `path` (any reply to ``ping`` counts, even a refusal)."""
    try:
        exchange(path, {"cmd": "ping"}, timeout_s=PROBE_TIMEOUT_S)
        return True
    except (ControlError, OSError):
        return False


class Stream:
    """A reply that goes on: the handler returns one, the server calls ``serve(conn)`` on the
    connection's thread and closes the connection when it returns. ``serve`` writes JSON lines
    (``send_line``) and should return once the client closed its end (readable, EOF)."""

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class Mailbox:
    """Objects handed from a daemon's thread to a Stream's thread: `put` never blocks (at most
    `limit` wait; more cut the reader off: `overflowed`), `fileno()` is readable while some
    wait, so the stream sleeps in select() with its client socket instead of polling."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self.overflowed = False
        self._items: list[Any] = []
        self._lock = threading.Lock()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def put(self, item: Any) -> None:
        with self._lock:
            if self._w < 0 or self.overflowed:
                return
            if len(self._items) >= self.limit:
                self.overflowed = True
                self._items.clear()
            else:
                self._items.append(item)
            if len(self._items) <= 1:
                self._wake_locked()

    def _wake_locked(self) -> None:
        """Make fileno() readable (the caller holds the lock; a byte already there is enough)."""
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass

    def fileno(self) -> int:
        return self._r

    def take(self) -> list[Any]:
        with self._lock:
            return self._take_locked()

    def _take_locked(self) -> list[Any]:
        items, self._items = self._items, []
        try:
            os.read(self._r, 4096)
        except BlockingIOError:
            pass
        return items

    def close(self) -> None:
        with self._lock:
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1


class MailboxStream(Stream):
    """A Stream of whatever reaches `box` (each a JSON object), after the reply `first`, until
    the client closes its end; `on_close` then runs (to unregister the box)."""

    def __init__(self, box: Mailbox, first: Reply, on_close: Callable[[], None]):
        self.box = box
        self.first = first
        self.on_close = on_close

    def serve(self, conn: socket.socket) -> None:
        import select
        try:
            send_line(conn, self.first)
            while True:
                ready, _, _ = select.select([conn.fileno(), self.box.fileno()], [], [])
                if conn.fileno() in ready:
                    return
                items = self.box.take()
                if self.box.overflowed:
                    send_line(conn, {"ok": False, "error": "control: this reader fell more than "
                                     f"{self.box.limit} messages behind: start again"})
                    return
                for item in items:
                    send_line(conn, item)
        except OSError:
            return
        finally:
            self.on_close()
            self.box.close()


def send_line(conn: socket.socket, obj: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(dict(obj), default=str).encode() + b"\n")


def open_stream(path: str, req: Mapping[str, Any], timeout_s: float = 60.0) -> Iterator[Reply]:
    """Send one request and yield each JSON object the daemon writes, the reply first, until it
    closes the connection. `timeout_s` bounds the connect and the first reply; after that
    the stream may stay silent for as long as nothing happens (no timeout, no polling).

    Raises NotListening, BadReply (a line that is not a JSON object) or OSError."""
    sock = _send_request(path, req, timeout_s)
    try:
        buf = b""
        first = True
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                if buf.strip():
                    raise BadReply(path, buf)
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                obj = _decode(path, line)
                if first:
                    sock.settimeout(None)
                    first = False
                yield obj
            if len(buf) > MAX_MESSAGE:
                raise ControlError(f"control: line from {path} is over {MAX_MESSAGE} bytes")
    finally:
        sock.close()


class ControlServer:
    """Accepts control connections and passes each request dict to handler(request) -> reply dict.

    `name` is the daemon's name for the "already running" refusal (replicad, hbd)."""

    def __init__(self, path: str, handler: Handler, *, name: str):
        self.path = path
        self.handler = handler
        if os.path.exists(path):
            if is_answering(path):
                raise ControlError(f"{name} is already running (it answers on {path})")
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        self._inode = os.stat(path).st_ino
        self.sock.listen(16)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting (connections already accepted still get their reply); idempotent.
        The path is removed only while it is still our socket: once we stopped listening, a
        new daemon may have bound the same path."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _loop(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(READ_TIMEOUT_S)
            data = b""
            try:
                while not data.endswith(b"\n") and len(data) < MAX_MESSAGE:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                try:
                    req = json.loads(data)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("expected an object with a string 'cmd'")
                except ValueError as exc:
                    reply: Reply | Stream = {"ok": False,
                                             "error": f"control: malformed request: {exc}"}
                else:
                    conn.settimeout(None)
                    reply = self.handler(req)
                    if isinstance(reply, Stream):
                        reply.serve(conn)
                        return
                conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
            except OSError:
                return
