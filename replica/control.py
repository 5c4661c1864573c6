# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl's side of the control socket: replicad's wording over hacommon.control.

    request:  {"cmd": "up", "resource": "r0", ...}
    reply:    {"ok": true, ...}  or  {"ok": false, "error": "<one sentence>"}

The framing, limits and server live in hacommon.control (shared with hbd); this
module only turns a refusal into ControlError and names replicad in messages.
"""
from hacommon.control import MAX_MESSAGE, BadReply, ControlError, ControlServer, NotListening, exchange

__all__ = ["MAX_MESSAGE", "ControlError", "ControlServer", "request", "is_daemon_running"]


def request(path: str, cmd: str, timeout_s: float = 60.0, **fields) -> dict:
    """Send one command to the daemon at `path` and return its reply (raises ControlError)."""
    try:
        reply = exchange(path, {"cmd": cmd, **fields}, timeout_s)
    except NotListening as exc:
        raise ControlError(f"replicad is not running (no answer on {path}: {exc.strerror})") from exc
    except BadReply as exc:
        if exc.data:
            raise
        raise ControlError(f"control: replicad closed {path} without a reply to {cmd!r}") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "replicad refused the command"))
    return reply


def is_daemon_running(path: str) -> bool:
    try:
        request(path, "ping", timeout_s=5)
        return True
    except (ControlError, OSError):
        return False
