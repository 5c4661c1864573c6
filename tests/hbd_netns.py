# SPDX-License-Identifier: GPL-2.0-or-later
"""pytest side of the two-node hbd lab: the Lab itself is scripts/hbd_lab.py (scripts use it too)."""
from __future__ import annotations

from collections.abc import Iterator

from scripts.hbd_lab import ADDRS, PYTHON, REPO, SEED, VIP, Lab

__all__ = ["ADDRS", "PYTHON", "REPO", "SEED", "VIP", "Lab", "running_lab"]


def running_lab(tmp_path, *commands: str) -> Iterator[Lab]:
    """For a pytest fixture (`yield from running_lab(tmp_path, "ip")`): a set-up Lab, closed
    afterwards even when the test fails; skips without root or the named commands."""
    from tests.conftest import requires_commands, requires_root
    requires_root()
    requires_commands(*commands)
    lab = Lab(str(tmp_path))
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()
