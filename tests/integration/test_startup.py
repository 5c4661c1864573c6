# SPDX-License-Identifier: GPL-2.0-or-later
"""`replicactl startup` / `wait-connect` with startup{} as DRBD 8.4's init script uses it: both
nodes boot, wait for each other, and the one `become-primary-on` names is promoted; a node whose
peer stays away gives up after its degr-wfc-timeout with a clear message."""
import subprocess
import time

import pytest

from tests.conftest import requires_root
from tests.integration.netns import BIN, TwoNodes

pytestmark = pytest.mark.root


@pytest.fixture
def nodes():
    requires_root()
    with TwoNodes(startup="become-primary-on alpha; degr-wfc-timeout 2;") as t:
        for node in ("alpha", "beta"):
            t.ctl(node, "create-md", "--force", "r0")
        for node in ("alpha", "beta"):
            t.ctl(node, "up", "r0")
        t.wait_connected()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced()
        for node in ("beta", "alpha"):
            t.ctl(node, "down", "r0")
        yield t


def _startup(t: TwoNodes, node: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", t.ns[node], str(BIN / "replicactl"),
                             "--config", str(t.config(node)), "--node", node, "--run-dir",
                             str(t.run_dir(node)), "startup", "r0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_both_nodes_wait_for_each_other_and_become_primary_on_promotes(nodes):
    t = nodes
    alpha = _startup(t, "alpha")
    time.sleep(0.5)                         # alpha waits alone for a while: that is the point
    assert alpha.poll() is None
    beta = _startup(t, "beta")
    outs = {}
    for node, p in (("alpha", alpha), ("beta", beta)):
        outs[node], err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert "r0: Primary (become-primary-on)" in outs["alpha"] and "Primary" not in outs["beta"]
    assert t.status("alpha")["role"] == "Primary" and t.status("beta")["role"] == "Secondary"
    assert t.status("alpha")["connection"] == "Connected"


def test_a_lonely_node_gives_up_after_its_degr_wfc_timeout(nodes):
    t = nodes
    start = time.monotonic()
    res = t.ctl("alpha", "wait-connect", "r0", check=False)
    assert res.returncode == 10                      # nothing is up yet
    res = t.ctl("alpha", "up", "r0")
    res = t.ctl("alpha", "wait-connect", "r0", check=False)
    took = time.monotonic() - start
    assert res.returncode == 1
    assert "r0: wait-connect: not Connected after 2 s (degr-wfc-timeout" in res.stderr
    assert 2 <= took < 20
