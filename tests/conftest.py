# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared test gates: every test that needs something the machine may lack skips with the exact reason.

Tiers. A test that needs root (network namespaces, loop devices, mounts, raw sockets) carries the
`root` marker (pyproject.toml), on the test or as the module's `pytestmark`, so that
`pytest -m "not root"` is the fast tier that any user can run. Without root, marked tests skip
before their fixtures run. The rule keeps itself: `requires_root()` (called by the labs'
fixtures and by tests) fails a test that needs root but is not marked.

Waiting for a condition is scripts/waiting.py's `wait_for`, for every test.
"""
from __future__ import annotations

import os
import shutil

import pytest

ROOT_REASON = "needs root: network namespaces, loop devices and mounts"
_current_item: pytest.Item | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _current_item
    _current_item = item
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip(ROOT_REASON)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    global _current_item
    _current_item = None


def requires_root():
    """Skip unless running as root; fail if the running test lacks the `root` marker."""
    item = _current_item
    if item is not None and item.get_closest_marker("root") is None:
        pytest.fail(f"{item.nodeid} needs root but has no `root` marker: add pytest.mark.root so that "
                    f"`pytest -m \"not root\"` stays the tier that runs without root", pytrace=False)
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)


def requires_commands(*names):
    """Skip unless every named program is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH (make deps installs them)")


def requires_module(name):
    """Import a module or skip naming it."""
    return pytest.importorskip(name, reason=f"needs Python module {name!r} (make deps installs it)")
