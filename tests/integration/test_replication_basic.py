# SPDX-License-Identifier: GPL-2.0-or-later
"""Two replicad nodes in two network namespaces: initial sync, mirrored writes, CLI outputs,
refusals, skip-initial-sync, authentication and the resync rate limit."""
import itertools
import json
import os
import sys
import time

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.netns import NODES, MiB, TwoNodes, sh

pytestmark = pytest.mark.root

SECRET_NET = ('protocol C; ping-int 3; ping-timeout 5; timeout 15; connect-int 2; '
              'cram-hmac-alg sha256; shared-secret "FooFunFactory";')


@pytest.fixture
def nodes():
    requires_root()
    requires_commands("ip")
    with TwoNodes(size=32 * MiB, net=SECRET_NET, disk="resync-rate 200M;") as t:
        yield t


def nbd_connect(uri):
    nbd = requires_module("nbd")
    h = nbd.NBD()
    h.connect_uri(uri)
    return nbd, h


def test_initial_sync_mirrors_writes_and_prints_like_drbdadm(nodes):
    t = nodes
    t.create_and_up()
    # two just-created disks: connected, nothing to sync until someone is forced Primary
    assert t.ctl("alpha", "status", "r0").stdout == (
        "r0 role:Secondary\n  disk:Inconsistent\n  beta role:Secondary\n"
        "    peer-disk:Inconsistent\n\n")
    assert t.ctl("alpha", "dstate", "r0").stdout == "Inconsistent/Inconsistent\n"
    assert "authenticated (cram-hmac-alg sha256)" in t.log("alpha")

    t.initial_sync("alpha")
    assert t.ctl("alpha", "role", "r0").stdout == "Primary/Secondary\n"
    assert t.ctl("beta", "role", "r0").stdout == "Secondary/Primary\n"
    assert t.ctl("alpha", "cstate", "r0").stdout == "Connected\n"
    assert t.ctl("beta", "dstate", "r0").stdout == "UpToDate/UpToDate\n"
    assert t.ctl("alpha", "status", "r0").stdout == (
        "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    peer-disk:UpToDate\n\n")
    assert t.ctl("beta", "status", "r0").stdout == (
        "r0 role:Secondary\n  disk:UpToDate\n  alpha role:Primary\n    peer-disk:UpToDate\n\n")
    size = t.data_size()
    assert size < t.size and size % 4096 == 0            # metadata at the end of the disk
    st = t.status("alpha")
    assert st["last_resync"]["bytes"] == size             # a full initial sync
    assert st["stats"]["resync_bytes_acked"] >= size

    nbd, h = nbd_connect(t.uri("alpha"))
    try:
        assert h.get_size() == size and not h.is_read_only()
        writes = [(0, os.urandom(64 * 1024)), (5 * MiB + 4096, os.urandom(1 * MiB)),
                  (size - 8192, os.urandom(8192)), (17 * MiB + 512, os.urandom(3000))]
        for off, data in writes:
            h.pwrite(data, off)
        h.zero(2 * MiB, 9 * MiB)
        h.trim(1 * MiB, 12 * MiB)
        h.pwrite(b"F" * 4096, 20 * MiB, nbd.CMD_FLAG_FUA)
        h.flush()
    finally:
        h.shutdown()
    for off, data in writes:
        assert t.read_disk("beta", off, len(data)) == data
    assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"

    # the Secondary serves its export read-only and says so
    nbd, h = nbd_connect(t.uri("beta"))
    try:
        assert h.is_read_only()
        assert h.pread(4096, 20 * MiB) == b"F" * 4096
        with pytest.raises(nbd.Error):
            h.pwrite(b"x" * 4096, 0)
    finally:
        h.shutdown()
    assert "read-only (Secondary: writes are refused with EPERM)" in t.log("beta")
    assert t.status("beta")["read_only"] is True


def _refused(res, sentence):
    assert res.returncode == 17, (res.returncode, res.stderr)
    assert res.stderr == f"r0: State change failed: {sentence}\n"


def test_role_and_state_refusals(nodes):
    t = nodes
    res = t.ctl("alpha", "up", "r0", check=False)
    assert res.returncode == 1
    assert "no valid metadata found" in res.stderr and "replicactl create-md r0" in res.stderr
    t.create_and_up()
    _refused(t.ctl("alpha", "primary", "r0", check=False), "Need access to UpToDate data")
    _refused(t.ctl("alpha", "attach", "r0", check=False),
             "Device is attached to a disk (use detach first)")
    _refused(t.ctl("alpha", "create-md", "r0", check=False),
             "Device is attached to a disk (use detach first)")
    _refused(t.ctl("alpha", "connect", "r0", check=False),
             "Device has a net-config (use disconnect first)")
    _refused(t.ctl("alpha", "invalidate-remote", "r0", check=False),
             "Need access to UpToDate data")
    t.initial_sync("alpha")
    _refused(t.ctl("beta", "primary", "r0", check=False),
             "Multiple primaries not allowed by config")
    _refused(t.ctl("beta", "primary", "--force", "r0", check=False),
             "Multiple primaries not allowed by config")
    nbd, h = nbd_connect(t.uri("alpha"))
    try:
        held = f"Device is held open by someone (1 NBD client on {t.uri('alpha')})"
        _refused(t.ctl("alpha", "secondary", "r0", check=False), held)
        _refused(t.ctl("alpha", "down", "r0", check=False), held)
    finally:
        h.shutdown()
    t.wait("alpha", lambda s: s["stats"]["active_connections"] == 0, "NBD client gone")
    t.ctl("alpha", "disconnect", "r0")
    assert t.ctl("alpha", "cstate", "r0").stdout == "StandAlone\n"
    # a Primary without a peer keeps its data: detaching it would leave no UpToDate disk
    _refused(t.ctl("alpha", "detach", "r0", check=False), "Need access to UpToDate data")
    # graceful disconnect of a Primary outdates the Secondary
    t.wait("beta", lambda s: s["disk_state"] == "Outdated", "beta Outdated")
    _refused(t.ctl("beta", "primary", "r0", check=False), "Need access to UpToDate data")
    t.ctl("alpha", "connect", "r0")
    t.wait_synced()
    t.ctl("alpha", "secondary", "r0")
    t.ctl("beta", "primary", "r0")
    assert t.ctl("alpha", "role", "r0").stdout == "Secondary/Primary\n"
    for node in NODES:
        t.ctl(node, "down", "r0")
    assert t.ctl("alpha", "role", "r0", check=False).returncode == 10


def test_new_current_uuid_clear_bitmap_skips_initial_sync(nodes):
    t = nodes
    t.create_and_up()
    t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
    t.wait_synced(timeout=10)
    a, b = t.status("alpha"), t.status("beta")
    assert a["stats"]["resync_bytes_sent"] == 0 and b["stats"]["resync_bytes_received"] == 0
    assert a["uuids"].split(":")[0] == b["uuids"].split(":")[0]
    t.ctl("alpha", "primary", "r0")                    # UpToDate now: no --force needed
    assert t.ctl("alpha", "role", "r0").stdout == "Primary/Secondary\n"
    dump = t.ctl("beta", "dump-md", "r0").stdout
    assert "consistent" in dump and "was-up-to-date" in dump


def test_invalidate_resyncs_the_whole_local_disk(nodes):
    t = nodes
    t.create_and_up()
    t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
    t.wait_synced(timeout=10)
    size = t.data_size()
    with open(t.disk_path("beta"), "r+b") as f:     # damage beta behind replication's back
        f.seek(3 * MiB)
        f.write(b"\xee" * 8192)
    t.ctl("beta", "invalidate", "r0")
    t.wait_synced()
    assert t.status("alpha")["last_resync"]["bytes"] == size
    assert t.disks_equal(size)


def _never_connected(t):
    logs = t.log("alpha") + t.log("beta")
    assert "connection Connecting -> Connected" not in logs, logs[-3000:]


def test_wrong_shared_secret_goes_standalone_and_connect_retries():
    """DRBD: "Authentication of peer failed", "Discarding network configuration.", StandAlone,
    no retry until `connect`. Garbage from the peer's address is only logged (no StandAlone)."""
    requires_root()
    base = "protocol C; ping-int 3; ping-timeout 5; timeout 8; connect-int 1; cram-hmac-alg sha1;"
    with TwoNodes(size=16 * MiB, net=base, node_net={"alpha": 'shared-secret "right";',
                                                     "beta": 'shared-secret "wrong";'}) as t:
        t.create_and_up(connected=False)
        for node in NODES:
            st = t.wait(node, lambda s: s["connection"] == "StandAlone", "StandAlone", 15)
            assert "wrong shared-secret" in st["link_error"] or \
                "peer refused the connection" in st["link_error"], st
            log = t.log(node)
            assert "Authentication of peer failed" in log
            assert log.index("Authentication of peer failed") < \
                log.index("Discarding network configuration.")
            assert t.ctl(node, "cstate", "r0").stdout == "StandAlone\n"
        assert "Authentication of peer failed: wrong shared-secret (cram-hmac-alg sha1)" in \
            t.log("alpha") + t.log("beta")
        # no retry: with connect-int 1 a retrying node would log another failure by now
        counts = [t.log(n).count("Authentication of peer failed") for n in NODES]
        time.sleep(3)
        assert [t.log(n).count("Authentication of peer failed") for n in NODES] == counts
        assert all(t.status(n)["connection"] == "StandAlone" for n in NODES)

        # `connect` on beta (the acceptor) listens again; garbage from alpha's address is
        # logged naming the peer, and beta carries on Connecting
        t.ctl("beta", "connect", "r0")
        t.wait("beta", lambda s: s["connection"] == "Connecting", "Connecting again", 10)
        probe = ("import socket; s = socket.create_connection(('%s', 7789)); "
                 "s.sendall(b'GARBAGE!' * 8); s.close()" % t.addr["beta"])
        sh("ip", "netns", "exec", t.ns["alpha"], sys.executable, "-c", probe)
        t.wait("beta", lambda s: "repl: invalid frame: magic=0x47415242" in t.log("beta"),
               "the garbage to be logged", 10)
        line = [x for x in t.log("beta").splitlines() if "magic=0x47415242" in x][0]
        assert f"handshake with alpha ({t.addr['alpha']}:7789)" in line
        time.sleep(1.5)
        assert t.status("beta")["connection"] == "Connecting"

        # `connect` on alpha retries the handshake: it fails again, both StandAlone again
        t.ctl("alpha", "connect", "r0")
        for node in NODES:
            t.wait(node, lambda s, node=node: s["connection"] == "StandAlone" and
                   t.log(node).count("Authentication of peer failed") > counts[NODES.index(node)],
                   "a second authentication failure", 15)
        _never_connected(t)


def test_different_protocols_are_incompatible_on_both_sides():
    requires_root()
    net = "ping-int 3; ping-timeout 5; timeout 8; connect-int 1;"
    with TwoNodes(size=16 * MiB, net=net, node_net={"alpha": "protocol A;",
                                                    "beta": "protocol C;"}) as t:
        t.create_and_up(connected=False)
        theirs = {"alpha": "C", "beta": "A"}
        for node in NODES:
            st = t.wait(node, lambda s: s["connection"] == "StandAlone", "StandAlone", 15)
            other = NODES[1 - NODES.index(node)]
            want = (f"peer {other} ({t.addr[other]}:7789): incompatible communication protocols: "
                    f"local protocol {theirs[other]}, peer protocol {theirs[node]}")
            assert want in t.log(node), t.log(node)[-3000:]
            assert st["link_error"].endswith(want.split(": ", 1)[1]) or \
                "peer refused the connection" in st["link_error"], st
            assert st["role"] == "Secondary" and st["peer_role"] == "Unknown"
        _never_connected(t)
        # the same protocol on both sides (fixed config, daemons restarted) connects
        for node in NODES:
            pid = t.daemon_pid(node)
            t.ctl(node, "down", "r0")                # the last resource down: replicad exits
            wait_for(lambda pid=pid: not pid or not os.path.exists(f"/proc/{pid}"), f"{node}: replicad {pid} to exit", 10)
        t.node_net = {}
        t.net = "protocol C; " + net
        for node in NODES:
            t.write_config(node)
            t.ctl(node, "up", "r0")
        t.wait_connected(timeout=20)


@pytest.mark.parametrize("protocol", ["A", "B"])
def test_protocols_a_and_b_mirror_writes(protocol):
    requires_root()
    requires_module("nbd")
    net = f"protocol {protocol}; ping-int 3; ping-timeout 5; timeout 15; connect-int 2;"
    with TwoNodes(size=16 * MiB, net=net) as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=10)
        t.ctl("alpha", "primary", "r0")
        assert t.status("alpha")["protocol"] == protocol
        nbd, h = nbd_connect(t.uri("alpha"))
        try:
            for i in range(16):
                h.pwrite(os.urandom(128 * 1024), i * 640 * 1024)
            h.flush()
        finally:
            h.shutdown()
        size = t.data_size()
        sent = t.status("alpha")["stats"]["peer_writes_sent"]
        assert sent >= 16
        # protocol A completes before the peer has the data: wait until it applied every frame
        t.wait("beta", lambda s: s["stats"]["peer_frames_applied"] >= sent, "writes applied")
        assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"


def test_full_activity_log_evicts_extents_with_writes_in_flight():
    """al-extents 7 on a disk of 8 extents: concurrent writes over all of them keep the AL
    evicting. An eviction waits for the writes in flight to its extent (acknowledged by the
    peer) before the transaction that drops it; nothing stalls and nothing diverges."""
    requires_root()
    requires_module("nbd")
    with TwoNodes(size=32 * MiB, net=SECRET_NET, disk="al-extents 7;") as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=10)
        t.ctl("alpha", "primary", "r0")
        nbd, h = nbd_connect(t.uri("alpha"))
        try:
            for rnd in range(4):
                for extent in range(8):
                    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(os.urandom(64 * 1024))),
                                 extent * 4 * MiB + rnd * 64 * 1024)
            deadline = time.monotonic() + 30
            while h.aio_in_flight() > 0:
                assert time.monotonic() < deadline, "writes stalled behind the activity log"
                h.poll(1000)
            h.flush()
        finally:
            h.shutdown()
        stats = t.status("alpha")["stats"]
        assert stats["al_misses"] >= 8 + 3          # every extent missed once, evictions after
        dump = json.loads(t.ctl("alpha", "dump-md", "--json", "r0").stdout)
        assert len(dump["al_hot"]) == 7
        assert "activity log" not in t.log("alpha")  # no AL error was logged
        size = t.data_size()
        t.wait("beta", lambda s: s["stats"]["peer_frames_applied"] >= stats["peer_writes_sent"], "applied")
        assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"


@pytest.mark.slow
def test_resync_at_a_low_rate_is_paced():
    """resync-rate 20M on 128 MiB: the resync is paced, not its exact speed (that is `make bench`'s
    job). Unpaced, tmpfs to tmpfs, it takes well under a second; paced, it must take at least
    size / (1.5 x rate) = 4.3 s and progress gradually, with percent and ETA in `status`. Only
    upper bounds on speed are asserted: a slow or busy machine can never make pacing look broken."""
    requires_root()
    size_mib, rate = 128, 20 * MiB
    with TwoNodes(size=size_mib * MiB, disk="resync-rate 20M; c-plan-ahead 0;") as t:
        t.create_and_up()
        size = t.data_size()
        t.ctl("alpha", "primary", "--force", "r0")
        t0 = time.monotonic()
        samples = []                 # (time, bytes received by the SyncTarget, progress) inside the sync

        def synced() -> bool:
            before = time.monotonic()
            st = t.status("beta")
            now = (before + time.monotonic()) / 2
            got = st["stats"]["resync_bytes_received"]
            if st["replication"] == "SyncTarget" and 0 < got < size:
                samples.append((now, got, st["resync"]))
            return st["disk_state"] == "UpToDate"
        wait_for(synced, "beta UpToDate after the full resync", 60, interval_s=0.2, details=lambda: t.log("alpha")[-3000:])
        took = time.monotonic() - t0
        assert took >= size / (1.5 * rate), f"{size_mib} MiB resynced in {took:.1f} s: resync-rate 20M not applied"
        # gradual: many samples in between, each step far from the whole disk at once
        assert len(samples) >= 5, samples
        steps = [b - a for (_, a, _), (_, b, _) in itertools.pairwise(samples)]
        assert max(steps) < size / 3, steps
        (ta, ba, _), (tb, bb, progress) = samples[0], samples[-1]
        assert (bb - ba) / (tb - ta) <= 1.5 * rate, f"{(bb - ba) / (tb - ta) / MiB:.1f} MiB/s at resync-rate 20M"
        assert 0 < progress["percent"] < 100 and progress["eta_s"] is not None
        last = t.status("alpha")["last_resync"]
        assert last["bytes"] == size and 0 < last["rate_bps"] <= 1.5 * rate, last
        assert "peer-disk:UpToDate" in t.ctl("alpha", "status", "--verbose", "r0").stdout
        assert t.disks_equal(size)


def test_external_metadata_exports_the_whole_disk():
    requires_root()
    requires_module("nbd")
    with TwoNodes(size=16 * MiB, external_md=True) as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=10)
        t.ctl("beta", "primary", "r0")
        assert t.data_size() == t.size                   # data offset N = disk offset N
        assert (t.dir / "beta.md").stat().st_size > 0
        nbd, h = nbd_connect(t.uri("beta"))
        try:
            data = os.urandom(MiB)
            h.pwrite(data, t.size - MiB)
            h.flush()
        finally:
            h.shutdown()
        assert t.read_disk("alpha", t.size - MiB, MiB) == data
        assert t.disks_equal(t.size)
