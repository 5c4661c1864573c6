# SPDX-License-Identifier: GPL-2.0-or-later
"""The control channel between replicactl and replicad: one JSON object per line, each way.

    request:  {"cmd": "up", "resource": "r0", ...}
    reply:    {"ok": true, ...}  or  {"ok": false, "error": "<one sentence>"}

A unix socket in the run directory, mode 0600: only root (or the daemon's user) may steer it.
"""
import json
import os
import socket
import threading

from replica.errors import ReplicaError

MAX_MESSAGE = 1 << 20


class ControlError(ReplicaError):
    """The daemon refused a command or could not be reached; the message says which."""


def request(path: str, cmd: str, timeout_s: float = 60.0, **fields) -> dict:
    """Send one command to the daemon at `path` and return its reply (raises ControlError)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"replicad is not running (no answer on {path}: {exc.strerror})") from exc
        sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
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
    if not data:
        raise ControlError(f"control: replicad closed {path} without a reply to {cmd!r}")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "replicad refused the command"))
    return reply


def is_daemon_running(path: str) -> bool:
    try:
        request(path, "ping", timeout_s=5)
        return True
    except (ControlError, OSError):
        return False


class ControlServer:
    """Accepts control connections and passes each request dict to handler(request) -> reply dict."""

    def __init__(self, path: str, handler):
        self.path = path
        self.handler = handler
        if os.path.exists(path):
            if is_daemon_running(path):
                raise ControlError(f"replicad is already running (it answers on {path})")
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
            conn.settimeout(10)
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
                    reply = {"ok": False, "error": f"control: malformed request: {exc}"}
                else:
                    conn.settimeout(None)
                    reply = self.handler(req)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                return
