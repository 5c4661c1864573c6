# SPDX-License-Identifier: GPL-2.0-or-later
"""Resync as in DRBD 8.4 between two namespaces: with no `disk {}` section the dynamic
controller runs (not the old fixed 250 KiB/s), and pause-sync/resume-sync on the SyncTarget
pause the SyncSource too (PausedSyncT/PausedSyncS, `suspended` user/peer in status)."""
import time

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_root
from tests.integration.netns import MiB, TwoNodes

pytestmark = pytest.mark.root


def test_default_controller_and_pause_resume_from_the_sync_target():
    requires_root()
    with TwoNodes(size=32 * MiB) as t:                # no disk {} section: DRBD's defaults
        t.create_and_up()
        size = t.data_size()
        t.ctl("alpha", "primary", "--force", "r0")
        t.wait("alpha", lambda s: s["replication"] == "SyncSource", "SyncSource")
        assert "dynamic: resync-rate 250 KiB/s" in t.log("alpha")

        t.ctl("beta", "pause-sync", "r0")
        a = t.wait("alpha", lambda s: s["replication"] == "PausedSyncS", "PausedSyncS")
        b = t.status("beta")
        assert b["replication"] == "PausedSyncT" and b["resync"]["suspended"] == ["user"]
        assert a["resync"]["suspended"] == ["peer"]
        time.sleep(0.3)                               # what was in flight lands
        got = t.status("beta")["stats"]["resync_bytes_received"]
        time.sleep(1.0)
        assert t.status("beta")["stats"]["resync_bytes_received"] == got, "paused resync moved"
        assert got < size

        t.ctl("beta", "resume-sync", "r0")
        t.wait("alpha", lambda s: s["replication"] == "SyncSource", "SyncSource again")
        assert t.status("beta")["replication"] == "SyncTarget"
        # the controller climbs past the old fixed rate (its chosen rate, not wall-clock speed)
        rates = []

        def fast_or_done() -> bool:
            s = t.status("alpha")
            if "resync" not in s:
                return True
            rates.append(s["resync"]["controller_rate_bps"])
            return rates[-1] > 2 * 250 * 1024
        wait_for(fast_or_done, "controller above 500 KiB/s", 30, interval_s=0.2)
        assert not rates or rates[-1] > 2 * 250 * 1024, rates
        t.wait_synced(60)
        assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"
