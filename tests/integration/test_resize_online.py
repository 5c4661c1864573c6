# SPDX-License-Identifier: GPL-2.0-or-later
"""`replicactl resize` on a real pair in two namespaces: both backing files grow (truncate), the
resource grows online to the smaller of the two, a new NBD client sees the new size, data
written past the old end reaches the peer (the new area resynced first), the moved metadata
survives down/up; --assume-clean skips the resync; an implicit shrink is refused."""
import pytest

from tests.conftest import requires_module, requires_root
from tests.integration.netns import NODES, MiB, TwoNodes

pytestmark = pytest.mark.root


@pytest.fixture
def pair():
    requires_root()
    with TwoNodes(prefix="ads", size=32 * MiB, disk="resync-rate 200M;") as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced()
        t.ctl("alpha", "primary", "r0")
        yield t


def grow(t: TwoNodes, node: str, size: int) -> None:
    with open(t.disk_path(node), "r+b") as f:
        f.truncate(size)


def nbd_client(t: TwoNodes, node: str):
    nbd = requires_module("nbd")
    h = nbd.NBD()
    h.connect_uri(t.uri(node))
    return h


def test_grow_online_resyncs_the_new_area_and_survives_down_up(pair):
    t = pair
    old = t.data_size()
    h = nbd_client(t, "alpha")
    h.pwrite(b"A" * 4096, old - 4096)
    h.shutdown()
    grow(t, "alpha", 64 * MiB)
    grow(t, "beta", 48 * MiB)                    # the smaller one decides
    before = t.log("alpha").count(": handshake with ")
    out = t.ctl("alpha", "resize", "r0").stdout
    new = t.status("alpha")["size"]
    assert out == f"r0: size {old} -> {new} bytes (resync of the new area)\n"
    assert 40 * MiB < new < 48 * MiB and t.status("beta")["size"] == new
    t.wait_synced()
    assert "resync finished" in t.log("alpha")
    assert t.status("alpha")["last_resync"]["bytes"] == new - old    # the new area, no more
    h = nbd_client(t, "alpha")                   # a new client sees the new size
    try:
        assert h.get_size() == new
        assert h.pread(4096, old - 4096) == b"A" * 4096
        h.pwrite(b"B" * 8192, new - 8192)        # past the old end
        h.pwrite(b"C" * 4096, old)
        h.flush()
    finally:
        h.shutdown()
    assert t.read_disk("beta", new - 8192, 8192) == b"B" * 8192
    assert t.read_disk("beta", old, 4096) == b"C" * 4096
    assert t.disks_equal(new)
    assert t.log("alpha").count(": handshake with ") == before      # no reconnect
    # the moved metadata survives down/up: same size, same data, connected without a resync
    t.ctl("alpha", "secondary", "r0")
    for node in ("beta", "alpha"):
        t.ctl(node, "down", "r0")
    for node in NODES:
        t.ctl(node, "up", "r0")
    t.wait_synced()
    for node in NODES:
        st = t.status(node)
        assert st["size"] == new and st["out_of_sync_bytes"] == 0
    assert t.read_disk("alpha", new - 8192, 8192) == b"B" * 8192
    # and a second resize has nothing to do
    assert t.ctl("alpha", "resize", "r0").stdout == f"r0: size {new} -> {new} bytes\n"


def test_assume_clean_skips_the_resync_and_implicit_shrink_is_refused(pair):
    t = pair
    old = t.data_size()
    for node in NODES:
        grow(t, node, 64 * MiB)
    t.ctl("beta", "resize", "--assume-clean", "r0")      # from the Secondary this time
    new = t.status("beta")["size"]
    assert new > old and t.status("alpha")["size"] == new
    for node in NODES:
        assert t.status(node)["out_of_sync_bytes"] == 0
    assert t.disks_equal(new)                    # zeros on both (the old metadata zeroed too)
    res = t.ctl("alpha", "resize", "--size=16M", "r0", check=False)
    assert res.returncode == 0, res.stderr          # explicit shrink: done as asked
    assert t.status("beta")["size"] == 16 * MiB
    # without --size the disks' size is back: a grow again; a smaller peer would be a shrink
    grow(t, "beta", 64 * MiB)
    res = t.ctl("alpha", "resize", "--size=100G", "r0", check=False)
    assert res.returncode == 1
    assert "Low.dev. smaller than requested DRBD-dev. size." in res.stderr
    assert t.status("alpha")["size"] == 16 * MiB


def test_the_fuse_loop_device_follows_the_new_size(tmp_path):
    """device-kind fuse (this kernel has no nbd.ko): the loop device takes the new size at once
    (LOOP_SET_CAPACITY), while open; a write past the old end through it reaches the peer.
    (A mounted ext4 would then grow with resize2fs, given CAP_SYS_RESOURCE, which this
    sandbox lacks.)"""
    import os

    from tests.conftest import requires_commands
    requires_root()
    requires_commands("losetup")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: the FUSE+loop device cannot be made here")
    with TwoNodes(prefix="adf", size=32 * MiB, device="device minor 173; device-kind fuse;") as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced()
        t.ctl("alpha", "primary", "r0")
        fd = os.open("/dev/drbd173", os.O_RDWR)          # held open across the resize
        try:
            old = os.lseek(fd, 0, os.SEEK_END)
            for node in NODES:
                grow(t, node, 64 * MiB)
            t.ctl("alpha", "resize", "r0")
            new = t.status("alpha")["size"]
            assert os.lseek(fd, 0, os.SEEK_END) == new > 60 * MiB > old
            assert "resize" not in t.status("alpha")    # nothing stale to report
            os.pwrite(fd, b"D" * 65536, new - 65536)
            os.pwrite(fd, b"E" * 4096, old)
            os.fsync(fd)
        finally:
            os.close(fd)
        t.wait_synced()
        assert t.read_disk("beta", new - 65536, 65536) == b"D" * 65536
        assert t.read_disk("beta", old, 4096) == b"E" * 4096
        t.ctl("alpha", "secondary", "r0")
        assert t.disks_equal(new)
