# SPDX-License-Identifier: GPL-2.0-or-later
"""before-resync-source and disconnected with real nodes: the handler runs to its end before
this node becomes SyncSource (and a failing one drops the connection, DRBD's "before-resync-source
handler returned N, dropping connection."); `disconnected` runs when the link goes."""
from pathlib import Path

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_root
from tests.integration.netns import MiB, TwoNodes

pytestmark = pytest.mark.root

HANDLERS = ('before-resync-source "echo $DRBD_RESOURCE >> {dir}/{node}.brs; exit $(cat {dir}/brs-rc)"; '
            'disconnected "echo $DRBD_PEER >> {dir}/{node}.disc";')


def test_before_resync_source_gates_the_resync_and_disconnected_runs():
    requires_root()
    with TwoNodes(size=16 * MiB, handlers=HANDLERS) as t:
        (t.dir / "brs-rc").write_text("1\n")
        t.create_and_up()
        t.ctl("alpha", "primary", "--force", "r0")
        # the handler said no: alpha drops the connection instead of resyncing
        st = t.wait("alpha", lambda s: s["connection"] == "StandAlone", "StandAlone after the handler")
        assert "before-resync-source handler returned 1" in st["link_error"]
        assert "before-resync-source handler returned 1, dropping connection." in t.log("alpha")
        assert Path(t.dir / "alpha.brs").read_text() == "r0\n"
        wait_for(lambda: (t.dir / "beta.disc").exists(), "beta's disconnected handler", 10)
        assert (t.dir / "beta.disc").read_text() == "alpha\n"
        # now it agrees: the resync runs after it
        (t.dir / "brs-rc").write_text("0\n")
        t.ctl("alpha", "connect", "r0")
        t.wait_synced(60)
        assert Path(t.dir / "alpha.brs").read_text() == "r0\nr0\n"
        assert t.disks_equal()
