# SPDX-License-Identifier: GPL-2.0-or-later
"""Waiting for a condition: the one polling loop of the tests, the labs and the scripts.

Everything that waits for another process (a daemon to come up, a resync to finish, a VIP to
move) polls through `wait_for`, so every timeout reads the same way and names what was awaited:

    timed out after 15 s waiting for ha1 to hold the VIP, the disk and the services
    <details(): the last status, the tail of a log...>

It lives in scripts/ and not in tests/ because the labs (scripts/lab.py users) wait too, and
scripts never import from tests/. Time is CLOCK_MONOTONIC; the predicate is always evaluated
once more at the deadline, so a timeout of 0 is a single check.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The awaited condition did not hold in time (an AssertionError, so pytest reports it as a
    failed expectation, with the message)."""


def wait_for(pred: Callable[[], T], what: str, timeout_s: float, *, interval_s: float = 0.05,
             details: Callable[[], str] | None = None) -> T:
    """Call `pred()` every `interval_s` until it returns something truthy, and return that.

    After `timeout_s` raise WaitTimeout naming `what` (a phrase: "beta Outdated"), followed by
    `details()` when given (called only on timeout: the last status, a log tail).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
    message = f"timed out after {timeout_s:g} s waiting for {what}"
    if details is not None:
        message += "\n" + details()
    raise WaitTimeout(message)
