# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl's side of the control socket: replicad's wording over hacommon.control.

    request:  {"cmd": "up", "resource": "r0", ...}
    reply:    {"ok": true, ...}  or  {"ok": false, "error": "<one sentence>"[, "refusal": NAME,
                                        "context": "r0"]}

A refused state change carries the Refusal's name (`NO_UP_TO_DATE_DISK`) and the resource
beside the sentence, so replicactl exits from the name, never by reading the sentence.
The framing, limits and server live in hacommon.control (shared with hbd); this module turns
a failed reply into ControlError (a refusal into replica.states.Refused) and names replicad.
"""
from typing import Any

from hacommon.control import MAX_MESSAGE, BadReply, ControlError, ControlServer, NotListening, exchange
from replica.errors import ReplicaError
from replica.states import Refusal, Refused

__all__ = ["MAX_MESSAGE", "ControlError", "ControlServer", "request", "is_daemon_running",
           "error_reply"]


def error_reply(exc: ReplicaError | OSError) -> dict[str, Any]:
    """The reply to a command that failed with `exc` (a Refused one names its Refusal)."""
    reply: dict[str, Any] = {"ok": False, "error": str(exc)}
    if isinstance(exc, Refused):
        reply["refusal"] = exc.refusal.name
        reply["context"] = exc.context
        if exc.detail:
            reply["detail"] = exc.detail
    return reply


def request(path: str, cmd: str, timeout_s: float = 60.0, **fields: Any) -> dict[str, Any]:
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
        name = reply.get("refusal")
        if isinstance(name, str) and name in Refusal.__members__:
            raise Refusal[name].error(str(reply.get("context") or fields.get("resource") or cmd),
                                      str(reply.get("detail") or ""))
        raise ControlError(reply.get("error", "replicad refused the command"))
    return reply


def is_daemon_running(path: str) -> bool:
    try:
        request(path, "ping", timeout_s=5)
        return True
    except (ControlError, OSError):
        return False
