# SPDX-License-Identifier: GPL-2.0-or-later
"""Local disk errors on a replicated pair (disk { on-io-error }, issue 9 item 2).

The failing node's backing file lives on a small tmpfs of the test's own that fills up on
command (tests.integration.failing_disk); its metadata is external, on the lab's tmpfs, so only
the data disk fails. Checked for each policy: what the clients see, the disk states `status`
reports, that the bitmap knows every block that may differ, and that after the repair the two
disks end byte-identical.
"""
import os
import time

import pytest

from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.failing_disk import FillableTmpfs
from tests.integration.netns import MiB, TwoNodes

BLOCK = 64 * 1024
pytestmark = pytest.mark.root


def _lab(failing: str, policy: str, fs: FillableTmpfs, handlers: str = "") -> TwoNodes:
    return TwoNodes(size=32 * MiB, disk=f"on-io-error {policy}; resync-rate 100M;",
                    handlers=handlers, external_md=True, disk_dirs={failing: fs.path})


def _synced_primary(t: TwoNodes) -> None:
    t.create_and_up()
    t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
    t.wait_synced(timeout=10)
    t.ctl("alpha", "primary", "r0")


def _connect(t: TwoNodes, node: str = "alpha"):
    import nbd
    h = nbd.NBD()
    h.connect_uri(t.uri(node))
    return h


def _gates():
    requires_root()
    requires_commands("ip", "mount", "umount")
    requires_module("nbd")


def _assert_equal(t: TwoNodes) -> None:
    size = t.data_size()
    assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"


def test_primary_disk_fails_under_detach_goes_diskless_and_serves_through_the_peer():
    _gates()
    handler = 'local-io-error "echo $DRBD_RESOURCE >> {dir}/{node}/local-io-error.called";'
    with FillableTmpfs(48 * MiB) as fs, \
            _lab("alpha", "call-local-io-error", fs, handler) as t:
        _synced_primary(t)
        h = _connect(t)
        try:
            before = os.urandom(MiB)
            h.pwrite(before, 0)
            fs.fill()
            # every write reaches the peer (the first one fails here and is retried there)
            written = {2 * MiB: os.urandom(BLOCK), 5 * MiB + 4096: os.urandom(4096),
                       12 * MiB: os.urandom(MiB)}
            for off, data in written.items():
                h.pwrite(data, off)
            h.flush()
            a = t.wait("alpha", lambda s: s["disk_state"] == "Diskless", "alpha Diskless")
            assert a["role"] == "Primary" and a["connection"] == "Connected"
            assert "Local IO failed in write. Detaching..." in t.log("alpha")
            assert "disk UpToDate -> Diskless" in t.log("alpha")
            text = t.ctl("alpha", "status", "r0").stdout
            assert "disk:Diskless" in text and "UpToDate" not in text.split("beta")[0], text
            t.wait("alpha", lambda s: (t.dir / "alpha" / "local-io-error.called").exists(),
                   "local-io-error handler ran", 10)
            assert (t.dir / "alpha" / "local-io-error.called").read_text() == "r0\n"
            t.wait("beta", lambda s: s["peer_disk_state"] == "Diskless", "beta sees Diskless")
            # reads and writes go on through the peer
            more = os.urandom(BLOCK)
            h.pwrite(more, 20 * MiB)
            assert h.pread(MiB, 0) == before
            for off, data in written.items():
                assert h.pread(len(data), off) == data
                assert t.read_disk("beta", off, len(data)) == data
            assert h.pread(BLOCK, 20 * MiB) == more
            # what alpha's disk lacks is out of sync on the peer
            oos = t.status("beta")["out_of_sync_bytes"]
            assert oos >= BLOCK + 4096 + MiB + BLOCK, oos

            # repair, attach: Inconsistent, SyncTarget, then UpToDate and identical; writes
            # during the resync reach the peer alone and are never lost to it
            fs.repair()
            st = t.status("alpha")
            t.ctl("alpha", "attach", "r0")
            during = {}
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                off = (16 + len(during) % 8) * MiB + (len(during) // 8) * BLOCK
                during[off] = os.urandom(BLOCK)
                h.pwrite(during[off], off)
            t.wait("alpha", lambda s: s["disk_state"] == "UpToDate"
                   and s["replication"] == "Established", "alpha resynced", 60)
            for off, data in during.items():
                assert t.read_disk("alpha", off, BLOCK) == data, off
            log = t.log("alpha")
            assert "disk Diskless -> Inconsistent" in log, log[-3000:]
            assert "SyncTarget" in log
            assert st["disk_state"] == "Diskless"
            after = os.urandom(BLOCK)                  # the disk is in use again
            h.pwrite(after, 24 * MiB)
            h.flush()
            assert t.read_disk("alpha", 24 * MiB, BLOCK) == after
            assert h.pread(MiB, 12 * MiB) == written[12 * MiB]
        finally:
            h.shutdown()
        t.wait_synced(timeout=30)
        _assert_equal(t)


def test_primary_disk_fails_under_pass_on_errors_reach_the_client_and_the_bitmap_knows():
    _gates()
    import nbd
    with FillableTmpfs(48 * MiB) as fs, _lab("alpha", "pass_on", fs) as t:
        _synced_primary(t)
        h = _connect(t)
        try:
            h.pwrite(os.urandom(MiB), 0)
            fs.fill(leave=256 * 1024)              # the next large write is torn here
            with pytest.raises(nbd.Error):
                h.pwrite(os.urandom(MiB), 8 * MiB)
            with pytest.raises(nbd.Error):
                h.pwrite(os.urandom(BLOCK), 16 * MiB)
            assert t.read_disk("alpha", 8 * MiB, 4096) != bytes(4096)   # partly written
            a = t.status("alpha")
            assert a["disk_state"] == "UpToDate" and a["connection"] == "Connected"
            assert a["out_of_sync_bytes"] >= MiB + BLOCK, a["out_of_sync_bytes"]
            assert "on-io-error pass_on: error passed on" in t.log("alpha")
        finally:
            h.shutdown()
        fs.repair()
        t.ctl("alpha", "disconnect", "r0")         # the marked blocks resync on reconnect
        t.ctl("alpha", "connect", "r0")
        t.wait_synced(timeout=30)
        assert t.status("alpha")["out_of_sync_bytes"] == 0
        _assert_equal(t)


def test_secondary_disk_fails_under_detach_primary_goes_on_and_marks_out_of_sync():
    _gates()
    with FillableTmpfs(48 * MiB) as fs, _lab("beta", "detach", fs) as t:
        _synced_primary(t)
        h = _connect(t)
        try:
            fs.fill()
            data = {i * MiB: os.urandom(BLOCK) for i in range(2, 10)}
            for off, d in data.items():
                h.pwrite(d, off)                   # served: alpha's disk has them
            h.flush()
            b = t.wait("beta", lambda s: s["disk_state"] == "Diskless", "beta Diskless")
            assert b["role"] == "Secondary"
            assert "Local IO failed in write. Detaching..." in t.log("beta")
            a = t.wait("alpha", lambda s: s["peer_disk_state"] == "Diskless",
                       "alpha sees peer-disk Diskless")
            assert a["disk_state"] == "UpToDate" and a["connection"] == "Connected"
            assert "peer-disk:Diskless" in t.ctl("alpha", "status", "r0").stdout
            h.pwrite(os.urandom(BLOCK), 20 * MiB)  # the Primary keeps going
            assert a["out_of_sync_bytes"] >= len(data) * BLOCK - BLOCK, a["out_of_sync_bytes"]
            assert t.status("alpha")["out_of_sync_bytes"] >= len(data) * BLOCK

            fs.repair()
            t.ctl("beta", "attach", "r0")
            t.wait_synced(timeout=60)
        finally:
            h.shutdown()
        time.sleep(0.2)
        _assert_equal(t)
