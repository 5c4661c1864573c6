# SPDX-License-Identifier: GPL-2.0-or-later
"""A clean stop leaves the activity log clean; a crash applies it (DRBD's "clean" md flag).

A disconnected Primary writes one block in each of 15 activity-log extents. Stopped with
`secondary; down`, or with SIGTERM to replicad, and brought up again, it is out of sync by
exactly those blocks; killed with SIGKILL, by the 15 whole extents of its activity log."""
import os
import re
import signal

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.netns import MiB, TwoNodes

pytestmark = pytest.mark.root

AL_EXTENT = 4 * MiB
EXTENTS = 15
BLOCK = 4096


@pytest.fixture
def pair():
    requires_root()
    requires_commands("ip")
    requires_module("nbd")
    with TwoNodes(size=64 * MiB, disk="resync-rate 100M;") as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=10)
        yield t


def _write_disconnected(t: TwoNodes, at: int) -> int:
    """alpha Primary and StandAlone writes one block at `at` in each extent; returns the bytes
    now out of sync."""
    import nbd
    t.ctl("alpha", "disconnect", "r0")
    t.ctl("alpha", "primary", "r0")
    h = nbd.NBD()
    h.connect_uri(t.uri("alpha"))
    try:
        for e in range(EXTENTS):
            h.pwrite(os.urandom(BLOCK), e * AL_EXTENT + at)
        h.flush()
    finally:
        h.shutdown()
    oos = t.status("alpha")["out_of_sync_bytes"]
    assert oos == EXTENTS * BLOCK, oos
    return oos


def _out_of_sync_at_attach(t: TwoNodes) -> int:
    m = re.findall(r"attached: .*?, (\d+) KiB out of sync", t.log("alpha"))
    assert m, t.log("alpha")[-3000:]
    return int(m[-1]) * 1024


def _stop_with(t: TwoNodes, sig: int) -> None:
    pid = t.daemon_pid("alpha")
    os.kill(pid, sig)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), f"replicad {pid} to exit on signal {sig}", 20)


def _up_and_resync(t: TwoNodes, expect_oos: int, exact: bool) -> None:
    t.ctl("alpha", "up", "r0")
    at_attach = _out_of_sync_at_attach(t)
    if exact:
        assert at_attach == expect_oos, (at_attach // 1024, expect_oos // 1024)
    else:
        assert at_attach >= expect_oos, (at_attach // 1024, expect_oos // 1024)
    t.wait_synced(timeout=30)
    size = t.data_size()
    assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"


def test_clean_down_resyncs_only_what_was_out_of_sync(pair):
    t = pair
    oos = _write_disconnected(t, 0)
    t.ctl("alpha", "secondary", "r0")
    t.ctl("alpha", "down", "r0")
    _up_and_resync(t, oos, exact=True)
    assert "activity log" not in t.log("alpha")
    assert t.status("alpha")["last_resync"]["bytes"] == oos


def test_sigterm_resyncs_only_what_was_out_of_sync(pair):
    t = pair
    oos = _write_disconnected(t, 8 * BLOCK)
    _stop_with(t, signal.SIGTERM)                      # Primary: down at exit, cleanly
    assert "crashed while Primary" not in t.log("alpha")
    _up_and_resync(t, oos, exact=True)
    assert "crashed while Primary" not in t.log("alpha")
    assert t.status("alpha")["last_resync"]["bytes"] == oos


def test_sigkill_still_applies_the_activity_log(pair):
    t = pair
    _write_disconnected(t, 16 * BLOCK)
    _stop_with(t, signal.SIGKILL)
    # every extent written since the attach is in the activity log: all of it is resynced
    _up_and_resync(t, EXTENTS * AL_EXTENT, exact=False)
    assert "crashed while Primary" in t.log("alpha")
