# SPDX-License-Identifier: GPL-2.0-or-later
"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per message.

systemd runs a Type=notify service with NOTIFY_SOCKET set to an AF_UNIX datagram socket (a path,
or an abstract name written with a leading '@'); the service sends newline-separated
``KEY=VALUE`` assignments to it: ``READY=1`` when it is up, ``STATUS=...`` for `systemctl
status`, ``STOPPING=1``, ``RELOADING=1``. Outside systemd (no NOTIFY_SOCKET) every call is a
no-op that returns False, so daemons call it unconditionally.

``take_notify_socket()`` removes the variable from the environment as sd_notify's
``unset_environment`` does: children (replicactl, resource scripts) must not speak for us.
"""
import os
import socket
from collections.abc import MutableMapping

_taken: str | None = None


def take_notify_socket(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Remember NOTIFY_SOCKET for this process and remove it from the environment."""
    global _taken
    env = os.environ if environ is None else environ
    value = env.pop("NOTIFY_SOCKET", None)
    if value:
        _taken = value
    return _taken


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()            # Linux abstract socket namespace
    if not value.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET={value!r}: neither an absolute path nor an @abstract name")
    return value


def notify(*assignments: str, socket_path: str | None = None) -> bool:
    """Send ``assignments`` (e.g. "READY=1", "STATUS=r0 up") in one datagram.

    Returns True when sent, False when there is no notify socket. An unreachable socket raises
    OSError: a unit that waits for READY=1 would otherwise time out with no word why."""
    target = socket_path or _taken or os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message, _address(target))
    return True
