# SPDX-License-Identifier: GPL-2.0-or-later
"""The seed's setup end to end: hbd moves the VIP, the replicated disk and a database.

scripts/demo_failover.sh builds three network namespaces, runs replicad and hbd on two nodes
(haresources "ha1 VIP datadisk kvstore"), stores records through the VIP, kills ha1 the hard
way, and checks that ha2 serves every acknowledged record; then ha1 returns, resyncs and takes
the service back, and the two disks must be identical. The script exits non-zero on any of it.
"""
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import requires_commands, requires_module, requires_root

pytestmark = pytest.mark.root

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_failover.sh"


@pytest.mark.slow
def test_failover_keeps_every_acknowledged_record_and_fails_back():
    requires_root()
    requires_commands("ip", "curl")
    requires_module("nbd")
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TERM": "dumb"})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "records lost in the failover: 0 of 20" in out
    assert re.search(r"GET / -> 20 records, served by ha2", out), out[-4000:]
    assert re.search(r"GET / -> 25 records, served by ha1", out), out[-4000:]
    assert "the two disks are identical" in out
    # nothing left behind: the script's namespaces are gone
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hafo" not in left
