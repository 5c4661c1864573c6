# SPDX-License-Identifier: GPL-2.0-or-later
"""Detaching a daemon from its caller, shared by replicad and hbd (both stay in the foreground with -f)."""
import os


def daemonize() -> None:
    """Classic double fork: detach from the terminal and the caller's session; stdio to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
