# SPDX-License-Identifier: GPL-2.0-or-later
"""An interrupted resync resumes from the bitmap: after a link blip it goes on at the configured
rate (nothing sent on the dead connection is waited for on the new one), and after a crash of
the SyncSource it restarts from the persisted bitmap, not from 0 % (DRBD: the bitmap is the
truth of what remains)."""
import os
import re
import time

import pytest

from replica import metadata
from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.integration.netns import MiB, TwoNodes

pytestmark = pytest.mark.root

# pings every second, 0.5 s to answer: a 2 s blip is noticed on both sides and drops the link
BLIP_NET = "protocol C; ping-int 1; ping-timeout 5; timeout 5; connect-int 1;"
RATE = 4 * MiB
STALL = "acknowledgements missing"


def _pair(size: int) -> TwoNodes:
    # c-plan-ahead 0: the fixed rate (the dynamic controller would go faster and finish early)
    requires_root()
    requires_commands("ip")
    return TwoNodes(size=size, net=BLIP_NET, disk=f"resync-rate {RATE // MiB}M; c-plan-ahead 0;")


def _wait_done(t: TwoNodes, fraction: float) -> None:
    size = t.data_size()
    t.wait("alpha", lambda s: s["replication"] == "SyncSource"
           and s["out_of_sync_bytes"] <= size * (1 - fraction), f"{fraction:.0%} resynced", 30)


def test_resync_after_a_link_blip_goes_on_at_the_configured_rate():
    with _pair(16 * MiB) as t:
        t.create_and_up()
        t.ctl("alpha", "primary", "--force", "r0")       # full sync: 16 MiB at 4 MiB/s, ~4 s
        _wait_done(t, 0.2)
        t.link(False)
        cut = time.monotonic()
        # both sides drop the link on their ping timeout: the SyncSource's resync send sits
        # blocked on the full socket, but its monitor (and `status`) must not wait behind it
        for node in ("beta", "alpha"):
            t.wait(node, lambda s: s["connection"] != "Connected", f"{node} notices the cut", 10)
        time.sleep(max(0.0, 2.0 - (time.monotonic() - cut)))
        remaining = t.status("beta")["out_of_sync_bytes"]
        t.link(True)
        back = time.monotonic()
        # reconnect (connect-int 1 s) + the rest at the rate, three times over: a stall until a
        # 60 s acknowledgement timeout, or a restart from the whole disk, does not fit
        bound = 3 * remaining / RATE + 5.0
        t.wait_synced(timeout=bound)
        took = time.monotonic() - back
        assert STALL not in t.log("alpha"), t.log("alpha")[-3000:]
        starts = re.findall(r"resync started as SyncSource: \d+ KiB to send \((\w+)\)",
                            t.log("alpha"))
        assert starts == ["full", "bitmap"], starts
        last = t.status("alpha")["last_resync"]
        assert 0 < last["bytes"] <= remaining + MiB, (last, remaining)
        assert t.disks_equal(), f"first difference at {t.first_difference(t.data_size())}"
        print(f"blip: {remaining // 1024} KiB left, synced {took:.1f} s after the link came back "
              f"(bound {bound:.1f} s), resync {last}")


def _bitmap_on_disk(path) -> int:
    """Out-of-sync bytes in the bitmap stored on `path` (internal metadata), read only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        sb = metadata._find_sb(fd, external=False)
        md = metadata.Metadata(fd, False, str(path), sb, os.lseek(fd, 0, os.SEEK_END) - sb.md_size)
        return md.load_bitmap().dirty_bytes()
    finally:
        os.close(fd)


def test_resync_resumes_from_the_bitmap_after_a_sync_source_crash():
    with _pair(32 * MiB) as t:
        t.create_and_up()
        size = t.data_size()
        t.ctl("alpha", "primary", "--force", "r0")       # full sync: 32 MiB at 4 MiB/s, ~8 s
        _wait_done(t, 0.3)
        # kill -9 the SyncSource midway, 1.5 s after it last stored its bitmap: what it did
        # since then is lost with it, and is sent again (a bitmap stored every 2 s loses 6 MiB)
        stored = _bitmap_on_disk(t.disk_path("alpha"))
        wait_for(lambda: _bitmap_on_disk(t.disk_path("alpha")) != stored, "alpha to store its bitmap", 5,
                 interval_s=0.02)
        time.sleep(1.5)
        remaining = t.status("beta")["out_of_sync_bytes"]
        t.kill_daemon("alpha")
        t.wait("beta", lambda s: s["connection"] == "Connecting", "beta notices the crash")
        assert t.status("beta")["disk_state"] == "Inconsistent"
        t.ctl("alpha", "up", "r0")
        m = re.findall(r"attached: .*?, (\d+) KiB out of sync", t.log("alpha"))
        assert m, t.log("alpha")[-3000:]
        at_attach = int(m[-1]) * 1024
        # the bitmap is stored at least every 0.5 s while a resync runs: at 4 MiB/s that is
        # 2 MiB of progress it may not know about, plus a resync request or two in flight
        slack = 3 * MiB
        assert at_attach <= remaining + slack, (at_attach // 1024, remaining // 1024)
        t.wait_synced(timeout=3 * (remaining + slack) / RATE + 10)
        last = t.status("alpha")["last_resync"]
        assert last["bytes"] <= remaining + slack < size, (last, remaining)
        assert STALL not in t.log("alpha")
        assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"
        print(f"crash: {remaining // 1024} KiB left at the kill, {at_attach // 1024} KiB at "
              f"attach, resync {last}")
