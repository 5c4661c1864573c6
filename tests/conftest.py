# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared test gates: every test that needs something the machine may lack skips with the exact reason."""
import os
import shutil

import pytest


def requires_root():
    """Skip unless running as root (namespaces, loop devices, mounts, raw sockets)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, loop devices and mounts")


def requires_commands(*names):
    """Skip unless every named program is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH (make deps installs them)")


def requires_module(name):
    """Import a module or skip naming it."""
    return pytest.importorskip(name, reason=f"needs Python module {name!r} (make deps installs it)")
