# SPDX-License-Identifier: GPL-2.0-or-later
"""Runtime changes on a real pair in two namespaces: net-options / disk-options applied live
(the connection stays: no new handshake), `dump --running` shows them, `adjust` brings the
resource back to the file and a second adjust has nothing to do; a protocol change through
adjust reconnects; wait-sync returns after a resync and times out after wfc-timeout with exit 5
(drbdsetup's code)."""
import time

import pytest

from tests.conftest import requires_root
from tests.integration.netns import NODES, TwoNodes

pytestmark = pytest.mark.root


@pytest.fixture
def pair():
    requires_root()
    with TwoNodes(prefix="adj", startup="wfc-timeout 2; degr-wfc-timeout 2;") as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced()
        yield t


def handshakes(t: TwoNodes, node: str) -> int:
    return t.log(node).count(": handshake with ")


def running(t: TwoNodes, node: str) -> str:
    return t.ctl(node, "dump", "--running", "r0").stdout


def plan(t: TwoNodes, node: str) -> list[str]:
    return t.ctl(node, "adjust", "-d", "r0").stdout.splitlines()


def test_net_and_disk_options_live_then_adjust_back(pair):
    t = pair
    before = {n: handshakes(t, n) for n in NODES}
    out = t.ctl("alpha", "net-options", "r0", "--ping-timeout=10", "--ko-count=3").stdout
    assert "r0: net: ping-timeout 5 -> 10" in out and "r0: net: ko-count 7 -> 3" in out
    t.ctl("alpha", "disk-options", "r0", "--resync-rate=40M", "--on-io-error=pass_on")
    text = running(t, "alpha")
    assert "ping-timeout 10;" in text and "ko-count 3;" in text
    assert "resync-rate 40M;" in text and "on-io-error pass_on;" in text
    assert "ping-timeout 10;" not in t.ctl("alpha", "dump", "r0").stdout   # the file is as it was
    # the file's values come back with adjust, and nothing reconnected meanwhile
    assert plan(t, "alpha") == [
        "replicasetup disk-options r0 --on-io-error=detach --resync-rate=250K",
        "replicasetup net-options r0 --ko-count=7 --ping-timeout=5"]
    t.ctl("alpha", "adjust", "r0")
    assert plan(t, "alpha") == []
    assert "ping-timeout" not in running(t, "alpha")
    # an edited file: adjust applies only that
    t.net = t.net.replace("ping-int 3;", "ping-int 4;")
    t.write_config("alpha")
    assert plan(t, "alpha") == ["replicasetup net-options r0 --ping-int=4"]
    t.ctl("alpha", "adjust", "r0")
    assert plan(t, "alpha") == [] and "ping-int 4;" in running(t, "alpha")
    time.sleep(1.0)         # a dropped link would show within a ping interval
    assert {n: handshakes(t, n) for n in NODES} == before
    assert "connection to" not in t.log("alpha") and "connection to" not in t.log("beta")
    assert t.status("alpha")["connection"] == "Connected"


def test_bad_option_values_are_refused_with_the_config_words(pair):
    t = pair
    res = t.ctl("alpha", "net-options", "r0", "--ping-timeout=0", check=False)
    assert res.returncode == 20
    assert res.stderr.strip() == ("replicactl: net-options: r0: net: ping-timeout: expected an "
                                  "integer 1..300 tenths of a second, got '0'")
    res = t.ctl("alpha", "net-options", "r0", "--ping-int=1", check=False)  # timeout 15 > 1 s
    assert res.returncode == 1
    assert "r0: net: timeout (1.5 s) must be less than ping-int (1 s)" in res.stderr
    res = t.ctl("alpha", "net-options", "r0", "--protocol=A", check=False)
    assert res.returncode == 1
    assert "protocol: cannot change while a peer link exists" in res.stderr
    assert t.status("alpha")["protocol"] == "C"


def test_protocol_change_through_adjust_reconnects(pair):
    t = pair
    before = handshakes(t, "alpha")
    t.net = t.net.replace("protocol C;", "protocol A;")
    for node in NODES:
        t.write_config(node)
    assert plan(t, "alpha") == ["replicasetup disconnect r0",
                                "replicasetup connect r0 --protocol=A"]
    # alpha reconnects first and meets beta's protocol C: both StandAlone ("incompatible
    # communication protocols"), as DRBD; beta's adjust then connects with A, and alpha's
    # second adjust (it is StandAlone) connects again
    t.ctl("alpha", "adjust", "r0")
    t.ctl("beta", "adjust", "r0")
    t.ctl("alpha", "adjust", "r0")
    t.wait_connected()
    for node in NODES:
        assert t.status(node)["protocol"] == "A"
        assert plan(t, node) == []
    assert handshakes(t, "alpha") > before


def test_wait_sync_times_out_then_returns_after_the_resync(pair):
    t = pair
    # a slow fixed-rate resync (DRBD's c-plan-ahead 0): 32 MiB at 1 MiB/s
    for node in NODES:
        t.ctl(node, "disk-options", "r0", "--c-plan-ahead=0", "--resync-rate=1M")
    t.ctl("beta", "invalidate", "r0")
    t.wait("beta", lambda s: s["replication"] == "SyncTarget", "SyncTarget")
    start = time.monotonic()
    res = t.ctl("beta", "wait-sync", "r0", check=False)
    took = time.monotonic() - start
    assert res.returncode == 5, res.stderr
    assert "r0: wait-sync: not in sync after 2 s (wfc-timeout" in res.stderr \
        or "r0: wait-sync: not in sync after 2 s (degr-wfc-timeout" in res.stderr
    assert 1.9 <= took < 15, took
    # faster, live, while the resync runs; wait-sync, given time (the file's startup{}),
    # returns once it is done
    t.ctl("alpha", "disk-options", "r0", "--c-plan-ahead=20", "--resync-rate=100M")
    assert "resync controller: dynamic" in t.log("alpha")
    t.startup = "wfc-timeout 60; degr-wfc-timeout 60;"
    t.write_config("beta")
    res = t.ctl("beta", "wait-sync", "r0", check=False)
    assert res.returncode == 0, res.stderr
    st = t.status("beta")
    assert (st["replication"], st["disk_state"], st["peer_disk_state"]) == (
        "Established", "UpToDate", "UpToDate")
    assert "resync finished" in t.log("alpha")
    assert t.disks_equal()
