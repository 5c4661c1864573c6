# SPDX-License-Identifier: GPL-2.0-or-later
"""Failures of a replicated pair: Primary crash under protocol C (acknowledged writes survive,
resync bounded by the activity log), link loss (only the dirty part resyncs), split brain
(detected on both sides, handler run, nothing merged, --discard-my-data resolves it)."""
import os
import signal
import threading
import time

import pytest

from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.netns import NODES, MiB, TwoNodes

pytestmark = pytest.mark.root

BLOCK = 64 * 1024
AL_EXTENT = 4 * MiB


@pytest.fixture
def synced():
    """A connected pair, initial sync skipped, alpha Primary."""
    requires_root()
    requires_commands("ip")
    requires_module("nbd")
    handler = ('split-brain "echo $DRBD_RESOURCE $REPLICA_RESOURCE '
               '>> {dir}/{node}/split-brain.called";')
    with TwoNodes(size=32 * MiB, disk="resync-rate 100M;", handlers=handler) as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=10)
        t.ctl("alpha", "primary", "r0")
        yield t


class Writers:
    """Threads writing 64 KiB blocks through NBD, each thread its own slots, one write in flight.

    `acked[off]` is the last write to `off` that completed; `issued[off]` the last one sent,
    which may have reached the peer without its acknowledgement reaching us."""

    def __init__(self, uri: str, region: tuple[int, int], threads: int = 4):
        import nbd
        self.nbd = nbd
        self.uri, self.region, self.nthreads = uri, region, threads
        self.acked: dict[int, bytes] = {}
        self.issued: dict[int, bytes] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def __enter__(self):
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self._threads:
            th.join(timeout=60)

    def _run(self, i: int) -> None:
        h = self.nbd.NBD()
        try:
            h.connect_uri(self.uri)
            lo, hi = self.region
            slots = list(range(lo + i * BLOCK, hi, self.nthreads * BLOCK))
            n = 0
            while not self.stop.is_set():
                off = slots[n % len(slots)]
                data = os.urandom(BLOCK)
                with self._lock:
                    self.issued[off] = data
                h.pwrite(data, off)                  # returns once the write is acknowledged
                with self._lock:
                    self.acked[off] = data
                n += 1
        except self.nbd.Error as exc:
            self.errors.append(str(exc))
        finally:
            del h                                    # libnbd closes the handle


def test_primary_crash_keeps_acked_writes_and_resyncs_only_al_extents(synced):
    t = synced
    size = t.data_size()
    region = (4 * MiB, 12 * MiB)                     # exactly two activity-log extents
    with Writers(t.uri("alpha"), region) as w:
        time.sleep(1.0)
        t.kill_daemon("alpha")                       # kill -9 while writes are in flight
        w.stop.set()
    assert w.acked, f"no write was acknowledged: {w.errors}"
    assert w.errors, "the writers did not notice the crash"
    log_a = t.log("alpha")
    assert "lost" not in log_a, f"the link broke before the crash:\n{log_a[-3000:]}"
    # every write acknowledged under protocol C is on the Secondary's disk (or a newer write to
    # the same block that was in flight when the Primary died)
    for off, data in w.acked.items():
        got = t.read_disk("beta", off, BLOCK)
        assert got in (data, w.issued[off]), \
            f"offset {off}\n{log_a[-3000:]}\n--- beta ---\n{t.log('beta')[-3000:]}"
    t.wait("beta", lambda s: s["connection"] == "Connecting", "beta notices the crash")
    assert t.status("beta")["role"] == "Secondary"

    # restart the crashed node: the activity log bounds the resync
    t.ctl("alpha", "up", "r0")
    assert "crashed while Primary" in t.log("alpha")
    t.wait_synced()
    a = t.status("alpha")
    assert a["role"] == "Secondary"
    sent = a["stats"]["resync_bytes_sent"]
    assert 0 < sent <= 2 * AL_EXTENT, sent
    assert a["last_resync"]["bytes"] <= 2 * AL_EXTENT
    assert "by rule 42 (crashed-primary-both-off)" in t.log("alpha")
    assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"
    assert "crashed-primary" not in t.ctl("alpha", "dump-md", "r0").stdout


def test_link_loss_resyncs_only_the_dirty_part(synced):
    t = synced
    size = t.data_size()
    import nbd
    h = nbd.NBD()
    h.connect_uri(t.uri("alpha"))
    try:
        h.pwrite(os.urandom(MiB), 0)
        t.link(False)
        # writes go on while the link is cut: they block until the Primary gives up on the
        # peer (ping-timeout / timeout), then complete locally and are marked out of sync
        dirty = [(2 * MiB + i * 256 * 1024, os.urandom(BLOCK)) for i in range(24)]
        for off, data in dirty:
            h.pwrite(data, off)
        t.wait("alpha", lambda s: s["connection"] == "Connecting", "alpha notices the cut")
        st = t.status("alpha")
        assert BLOCK * len(dirty) <= st["out_of_sync_bytes"] <= BLOCK * len(dirty) + 4 * MiB
        assert "beta connection:Connecting" in t.ctl("alpha", "status", "r0").stdout
        t.wait("beta", lambda s: s["connection"] == "Connecting", "beta notices the cut")
        for off, data in dirty:
            assert t.read_disk("beta", off, BLOCK) != data
        before = st["stats"]["resync_bytes_sent"]
        oos = st["out_of_sync_bytes"]
        t.link(True)
        t.wait_synced(timeout=30)
    finally:
        h.shutdown()
    a = t.status("alpha")
    assert a["stats"]["resync_bytes_sent"] - before == oos
    assert oos < size // 4
    assert "by rule 70 (bitmap-self)" in t.log("alpha")
    assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"


def test_split_brain_detected_nothing_merged_discard_my_data_resolves(synced):
    t = synced
    size = t.data_size()
    import nbd

    def write(node, off, data):
        h = nbd.NBD()
        h.connect_uri(t.uri(node))
        try:
            h.pwrite(data, off)
            h.flush()
        finally:
            h.shutdown()

    common = os.urandom(MiB)
    write("alpha", 0, common)
    t.link(False)
    for node in NODES:
        t.wait(node, lambda s: s["connection"] == "Connecting", "partition noticed")
    t.ctl("beta", "primary", "--force", "r0")        # both Primary during the partition
    a_data, b_data = os.urandom(MiB), os.urandom(MiB)
    write("alpha", 4 * MiB, a_data)
    write("beta", 8 * MiB, b_data)
    t.link(True)
    for node in NODES:
        t.wait(node, lambda s: s["connection"] == "StandAlone", "split brain → StandAlone")
        assert "Split-Brain detected but unresolved, dropping connection!" in t.log(node)
        t.wait(node, lambda s, node=node: (t.dir / node / "split-brain.called").exists(), "handler ran", 10)
        assert (t.dir / node / "split-brain.called").read_text() == "r0 r0\n"
    # nothing merged: each side still has only its own changes
    assert t.read_disk("alpha", 4 * MiB, MiB) == a_data
    assert t.read_disk("beta", 4 * MiB, MiB) != a_data
    assert t.read_disk("beta", 8 * MiB, MiB) == b_data
    assert t.read_disk("alpha", 8 * MiB, MiB) != b_data
    assert t.ctl("alpha", "role", "r0").stdout == "Primary/Unknown\n"

    # manual recovery, as in the DRBD user's guide: beta is the victim
    t.ctl("beta", "disconnect", "r0")                # StandAlone already: succeeds
    t.ctl("beta", "secondary", "r0")
    t.ctl("beta", "connect", "--discard-my-data", "r0")
    t.ctl("alpha", "connect", "r0")
    t.wait_synced(timeout=30)
    assert "manually solved. Sync from peer node" in t.log("beta")
    assert t.read_disk("beta", 4 * MiB, MiB) == a_data
    assert t.read_disk("beta", 0, MiB) == common
    assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"
    assert t.ctl("alpha", "role", "r0").stdout == "Primary/Secondary\n"


def test_ko_count_expels_a_peer_that_stops_answering_writes():
    """DRBD's request timer: one write unanswered for ko-count * timeout drops the link, even
    though the peer's TCP stack still acknowledges (a frozen daemon, pings far apart). The write
    completes on the Primary, out of sync, and the resync after reconnecting carries it."""
    requires_root()
    requires_module("nbd")
    import nbd
    net = "protocol C; ping-int 120; ping-timeout 5; timeout 10; ko-count 2; connect-int 2;"
    with TwoNodes(size=16 * MiB, net=net) as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=10)
        t.ctl("alpha", "primary", "r0")
        beta = t.daemon_pid("beta")
        h = nbd.NBD()
        h.connect_uri(t.uri("alpha"))
        os.kill(beta, signal.SIGSTOP)
        try:
            start = time.monotonic()
            h.pwrite(os.urandom(BLOCK), 3 * MiB)       # waits for the ack that never comes
            took = time.monotonic() - start
            assert 2.0 <= took < 6.0, took
            assert "Remote failed to finish a request within" in t.log("alpha")
            assert "> ko-count (2) * timeout (10 * 0.1s)" in t.log("alpha")
            assert t.status("alpha")["connection"] != "Connected"
        finally:
            os.kill(beta, signal.SIGCONT)
            h.shutdown()
        t.wait_synced(timeout=30)
        assert t.disks_equal(t.data_size()), f"first difference at {t.first_difference(t.data_size())}"
