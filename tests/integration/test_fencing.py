# SPDX-License-Identifier: GPL-2.0-or-later
"""Fencing with real replicad pairs in two namespaces: the fence-peer handler's exit codes on a
promotion without a peer (1, 6, 3, 5, 7) and on a Primary that loses its peer (1, 4), suspend-io
under resource-and-stonith until the handler succeeds or `resume-io`, unfence-peer after the
resync, `outdate`, and `peer-dead` from the cluster manager. The handler is a shell line whose
exit code the test writes into a file, and which records DRBD's environment."""
import threading
import time

import pytest

from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.netns import MiB, TwoNodes

pytestmark = pytest.mark.root

HANDLERS = ('fence-peer "env | grep -e ^DRBD_ -e ^REPLICA_ | sort > {dir}/{node}/fence.env; '
            'echo called >> {dir}/{node}/fence.calls; exit $(cat {dir}/{node}/fence.rc)"; '
            'unfence-peer "echo $DRBD_PEER >> {dir}/{node}/unfence.calls";')


def pair(fencing: str) -> TwoNodes:
    requires_root()
    requires_commands("ip")
    return TwoNodes(size=16 * MiB, disk=f"resync-rate 100M; fencing {fencing};", handlers=HANDLERS)


def synced_pair(t: TwoNodes) -> None:
    t.create_and_up()
    t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
    t.wait_synced(timeout=10)


def set_rc(t: TwoNodes, node: str, rc: int) -> None:
    (t.dir / node / "fence.rc").write_text(f"{rc}\n")


def calls(t: TwoNodes, node: str, what: str = "fence") -> int:
    try:
        return len((t.dir / node / f"{what}.calls").read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_promotion_without_peer_runs_fence_peer_and_obeys_its_exit_code():
    with pair("resource-only") as t:
        synced_pair(t)
        t.ctl("beta", "disconnect", "r0")
        set_rc(t, "beta", 1)                    # broken helper: no promotion
        r = t.ctl("beta", "primary", "r0", check=False)
        assert r.returncode == 17, r.stderr
        assert "Refusing to be Primary while peer is not outdated" in r.stderr
        assert "fence-peer helper broken, returned 1" in t.log("beta")
        env = (t.dir / "beta" / "fence.env").read_text()
        for line in ("DRBD_RESOURCE=r0", "DRBD_PEER=alpha", "DRBD_PEERS=alpha",
                     f"DRBD_CONF={t.config('beta')}", f"DRBD_BACKING_DEV={t.disk_path('beta')}",
                     f"DRBD_PEER_ADDRESS={t.addr['alpha']}", "DRBD_MY_AF=ipv4",
                     # the states at the call (a handler must not ask replicad: crm_fence.py)
                     "REPLICA_ROLE=Secondary", "REPLICA_DISK=UpToDate", "REPLICA_PEER_DISK=DUnknown"):
            assert line in env.splitlines(), env
        set_rc(t, "beta", 6)                    # the peer is Primary: outdate myself
        r = t.ctl("beta", "primary", "r0", check=False)
        assert r.returncode == 17 and "Need access to UpToDate data" in r.stderr, r.stderr
        assert t.ctl("beta", "dstate", "r0").stdout.strip() == "Outdated/DUnknown"
        assert "fence-peer helper returned 6 (peer is active)" in t.log("beta")
        assert "Peer is primary, outdating myself." in t.log("beta")
        for rc, text, peer_disk in ((3, "peer is inconsistent or worse", "Inconsistent"),
                                    (5, "peer is unreachable, assumed to be dead", "Outdated"),
                                    (7, "peer was stonithed", "Outdated")):
            t.ctl("beta", "connect", "r0")
            t.wait_synced(timeout=20)
            t.ctl("beta", "disconnect", "r0")
            set_rc(t, "beta", rc)
            before = calls(t, "beta")
            t.ctl("beta", "primary", "r0")
            assert calls(t, "beta") == before + 1
            assert f"fence-peer helper returned {rc} ({text})" in t.log("beta")
            if rc == 7:     # DRBD goes on, and says the handler should not have said so
                assert "fence-peer() = 7 && fencing != Stonith !!!" in t.log("beta")
            assert t.ctl("beta", "dstate", "r0").stdout.strip() == f"UpToDate/{peer_disk}"
            t.ctl("beta", "secondary", "r0")
            # the peer's disk is known not UpToDate now: promoting again asks nobody
            t.ctl("beta", "primary", "r0")
            assert calls(t, "beta") == before + 1
            t.ctl("beta", "secondary", "r0")


def test_primary_losing_its_peer_suspends_io_until_fenced_or_resume_io():
    requires_module("nbd")
    import nbd
    with pair("resource-and-stonith") as t:
        synced_pair(t)
        t.ctl("alpha", "primary", "r0")
        set_rc(t, "alpha", 1)
        h = nbd.NBD()
        h.connect_uri(t.uri("alpha"))
        try:
            t.ctl("beta", "disconnect", "r0")
            t.wait("alpha", lambda s: s["connection"] != "Connected", "peer gone", 10)
            wait_log(t, "alpha", "fence-peer helper broken, returned 1")
            assert "suspend-io: new requests wait" in t.log("alpha")
            done = threading.Event()
            writer = threading.Thread(target=lambda: (h.pwrite(b"s" * 4096, 0), done.set()),
                                      daemon=True)
            writer.start()
            assert not done.wait(0.5), "a write went through while I/O was suspended"
            t.ctl("alpha", "resume-io", "r0")
            assert done.wait(5), "resume-io did not let the waiting write go on"
            # the peer comes back: the resync makes its disk UpToDate, unfence-peer runs
            set_rc(t, "alpha", 4)
            t.ctl("beta", "connect", "r0")
            t.wait_synced(timeout=20)
            wait_for(lambda: calls(t, "alpha", "unfence") == 1, "unfence-peer called")
            assert (t.dir / "alpha" / "unfence.calls").read_text() == "beta\n"
            # lost again: this time the handler outdates the peer and I/O resumes by itself
            t.ctl("beta", "disconnect", "r0")
            wait_log(t, "alpha", "fence-peer helper returned 4 (peer was fenced)")
            t.wait("alpha", lambda s: s["peer_disk_state"] == "Outdated", "peer Outdated", 10)
            assert "resume-io: requests go on (fence-peer succeeded)" in t.log("alpha")
            t0 = time.monotonic()
            h.pwrite(b"t" * 4096, 8192)
            assert time.monotonic() - t0 < 2
        finally:
            h.shutdown()
        assert t.read_disk("beta", 0, 4096) == b"s" * 4096     # resynced after resume-io
        assert t.read_disk("alpha", 8192, 4096) == b"t" * 4096


def test_outdate_and_peer_dead():
    with pair("resource-only") as t:
        synced_pair(t)
        r = t.ctl("beta", "outdate", "r0", check=False)
        assert r.returncode == 17 and "Refusing to be Outdated while Connected" in r.stderr
        t.ctl("alpha", "primary", "r0")
        # the cluster manager says alpha is dead and STONITH reset it: beta drops the link at
        # once (no ping timeout) and counts alpha's disk as Outdated (DRBD's answer 7), so no
        # handler runs on promote (without --fenced: answer 5, in tests/e2e's failover)
        t0 = time.monotonic()
        t.ctl("beta", "peer-dead", "--fenced", "r0")
        st = t.status("beta")
        assert st["connection"] != "Connected" and st["peer_disk_state"] == "Outdated", st
        assert time.monotonic() - t0 < 3
        assert "cluster manager: peer alpha is dead, fenced by STONITH: peer was stonithed" \
            in t.log("beta")
        t.ctl("alpha", "disconnect", "r0")      # alpha is in fact alive: keep it apart
        t.ctl("beta", "disconnect", "r0")
        t.ctl("beta", "outdate", "r0")
        assert t.ctl("beta", "dstate", "r0").stdout.strip() == "Outdated/DUnknown"
        r = t.ctl("beta", "primary", "r0", check=False)
        assert r.returncode == 17 and "Need access to UpToDate data" in r.stderr
        assert calls(t, "beta") == 0
        t.ctl("beta", "invalidate", "r0")       # Inconsistent: outdate says so with exit 5
        r = t.ctl("beta", "outdate", "r0", check=False)
        assert r.returncode == 5 and "Disk state is lower than outdated" in r.stderr, r.stderr


def wait_for(pred, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.05)


def wait_log(t: TwoNodes, node: str, text: str, timeout: float = 10.0) -> None:
    try:
        wait_for(lambda: text in t.log(node), f"{node}: log: {text}", timeout)
    except AssertionError:
        raise AssertionError(f"{node}: no {text!r} in the log:\n{t.log(node)[-3000:]}") from None
