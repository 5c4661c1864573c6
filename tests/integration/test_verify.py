# SPDX-License-Identifier: GPL-2.0-or-later
"""Online verify and data-integrity-alg between two replicad nodes in two network namespaces.

Verify compares the disks by digest: identical disks find nothing; blocks corrupted behind the
Secondary's back (its backing file written directly) are found exactly, logged as DRBD does
("Out of sync: start=S, size=N (sectors)"), marked out of sync on both nodes, reported to the
`out-of-sync` handler, and resynced by a disconnect/connect. data-integrity-alg crc32c carries a
digest on every data frame: a frame damaged between the nodes (by a proxy in the initiator's
namespace) is caught, dropped and resynced; different algs on the two nodes are refused at the
handshake.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.netns import NODES, MiB, TwoNodes

pytestmark = pytest.mark.root

NET = "protocol C; ping-int 3; ping-timeout 5; timeout 8; connect-int 1; verify-alg crc32c;"
HANDLERS = 'out-of-sync "echo $DRBD_RESOURCE >> {dir}/oos-{node}";'
BLOCK = 4096
ROOT = Path(__file__).resolve().parents[2]


def _verify(t: TwoNodes, *args: str) -> dict:
    """`replicactl verify` on alpha; both nodes' last_verify once it is done."""
    before = {n: (t.status(n).get("last_verify") or {}).get("ended_at") for n in NODES}
    t.ctl("alpha", "verify", "r0", *args)
    out = {}
    for node in NODES:
        st = t.wait(node, lambda s, node=node: s.get("last_verify") is not None
                    and s["last_verify"]["ended_at"] != before[node]
                    and s["replication"] == "Established", "verify done", 30)
        out[node] = st
    return out


def _corrupt(t: TwoNodes, node: str, blocks: list[int]) -> None:
    with open(t.disk_path(node), "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK + 100)
            f.write(b"corrupted behind replicad's back")


def test_verify_finds_exactly_the_corrupted_blocks_and_a_reconnect_resyncs_them():
    requires_root()
    requires_commands("ip")
    with TwoNodes(size=32 * MiB, net=NET, disk="resync-rate 500M; c-plan-ahead 0;", handlers=HANDLERS) as t:
        t.create_and_up()
        t.initial_sync("alpha")

        done = _verify(t)
        for node in NODES:
            lv = done[node]["last_verify"]
            assert lv["outcome"] == "finished" and lv["oos_blocks"] == 0, lv
            assert done[node]["out_of_sync_bytes"] == 0
        assert lv["bytes"] == t.data_size()
        assert "Starting Online Verify from sector 0" in t.log("alpha")
        assert "Online verify done" in t.log("alpha") and "Online verify done" in t.log("beta")
        assert not (t.dir / "oos-alpha").exists()

        blocks = [3, 4, 1000, 5000]               # a run of two, two alone
        _corrupt(t, "beta", blocks)
        assert not t.disks_equal()
        done = _verify(t)
        for node in NODES:
            lv = done[node]["last_verify"]
            assert lv["oos_blocks"] == len(blocks), (node, lv)
            assert done[node]["out_of_sync_bytes"] == len(blocks) * BLOCK
            log = t.log(node)
            for start, size in ((24, 16), (8000, 8), (40000, 8)):
                assert f"Out of sync: start={start}, size={size} (sectors)" in log, log[-3000:]
            assert "Online verify found 4 4k block out of sync!" in log
        for node in NODES:                          # the handler ran on both nodes
            t.wait(node, lambda s, node=node: (t.dir / f"oos-{node}").exists(), "handler", 10)
            assert (t.dir / f"oos-{node}").read_text() == "r0\n"

        # DRBD 8.4: a disconnect/connect resyncs what verify marked (the Primary, left alone,
        # starts a new data generation, so the reconnect is a bitmap resync towards beta)
        t.ctl("alpha", "disconnect", "r0")
        t.ctl("alpha", "connect", "r0")
        t.wait_synced(timeout=30)
        for node in NODES:
            t.wait(node, lambda s: s["out_of_sync_bytes"] == 0, "bitmap clean", 20)
        assert t.disks_equal()

        # --start with a unit: only the second half is compared
        _corrupt(t, "beta", [10, 6000])
        done = _verify(t, "--start", "16M")
        for node in NODES:
            lv = done[node]["last_verify"]
            assert lv["oos_blocks"] == 1 and lv["start_sector"] == 16 * MiB // 512, lv
            assert lv["total_bytes"] == t.data_size() - 16 * MiB
        assert "Out of sync: start=48000, size=8 (sectors)" in t.log("alpha")


def test_verify_refusals():
    requires_root()
    requires_commands("ip")
    net = "protocol C; ping-int 3; ping-timeout 5; timeout 8; connect-int 1;"
    with TwoNodes(size=16 * MiB, net=net, disk="resync-rate 500M; c-plan-ahead 0;",
                  node_net={"alpha": "verify-alg sha1;", "beta": "verify-alg md5;"}) as t:
        t.create_and_up()
        res = t.ctl("alpha", "verify", "r0", check=False)     # both Inconsistent
        assert res.returncode == 17 and "Need access to UpToDate data" in res.stderr, res.stderr
        t.initial_sync("alpha")
        res = t.ctl("beta", "verify", "r0", "--start", "x1", check=False)
        assert res.returncode != 0 and "expected sectors or a size" in res.stderr
        # the peer's verify-alg differs: the VerifyT refuses, both stay Established
        t.ctl("alpha", "verify", "r0")
        st = t.wait("alpha", lambda s: s.get("last_verify") is not None, "verify refused", 10)
        assert st["last_verify"]["outcome"] == "refused" and st["replication"] == "Established"
        assert ("different verify-alg settings: me='md5' peer='sha1'" in t.log("beta")), \
            t.log("beta")[-2000:]
        assert "the peer refused the online verify" in t.log("alpha")
        t.ctl("alpha", "disconnect", "r0")
        res = t.ctl("alpha", "verify", "r0", check=False)
        assert res.returncode == 17 and "Need a connection to start verify or resync" in res.stderr


def test_data_integrity_alg_crc32c_mirrors_writes_and_differing_algs_are_refused():
    requires_root()
    requires_commands("ip")
    nbd = requires_module("nbd")
    net = NET + " data-integrity-alg crc32c;"
    with TwoNodes(size=16 * MiB, net=net, disk="resync-rate 500M; c-plan-ahead 0;") as t:
        t.create_and_up()
        t.initial_sync("alpha")
        h = nbd.NBD()
        h.connect_uri(t.uri("alpha"))
        try:
            for i, size in enumerate((4096, 65536, 1 << 20, 3 << 20)):
                h.pwrite(os.urandom(size), i * 4 * MiB, nbd.CMD_FLAG_FUA)
        finally:
            h.shutdown()
        assert t.disks_equal()
        st = t.status("beta")["stats"]
        assert st["integrity_failures"] == 0 and t.status("alpha")["connection"] == "Connected"

    with TwoNodes(size=16 * MiB, net=NET, node_net={"alpha": "data-integrity-alg crc32c;",
                                                    "beta": "data-integrity-alg sha1;"}) as t:
        t.create_and_up(connected=False)
        for node in NODES:
            t.wait(node, lambda s: s["connection"] == "StandAlone", "StandAlone", 15)
        assert "incompatible data-integrity-alg settings: local crc32c, peer sha1" in \
            t.log("alpha"), t.log("alpha")[-2000:]


def test_verify_progress_in_status_and_a_disconnect_stops_it():
    requires_root()
    requires_commands("ip")
    with TwoNodes(size=32 * MiB, net=NET, disk="resync-rate 8M; c-plan-ahead 0;") as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")    # blank disks: no sync
        t.wait_synced(timeout=10)
        t.ctl("alpha", "primary", "r0")
        t.ctl("alpha", "verify", "r0")                        # 32 MiB at 8 MiB/s: ~4 s
        st = t.wait("alpha", lambda s: (s.get("verify") or {}).get("percent", 0) > 10,
                    "verify under way", 10)
        assert st["replication"] == "VerifyS" and st["verify"]["role"] == "VerifyS"
        assert st["verify"]["rate_bps"] > 0 and st["verify"]["eta_s"] is not None
        text = t.ctl("alpha", "status", "r0").stdout
        assert "replication:VerifyS peer-disk:UpToDate done:" in text, text
        beta = t.wait("beta", lambda s: s["replication"] == "VerifyT", "VerifyT", 5)
        assert beta["verify"]["role"] == "VerifyT"
        res = t.ctl("beta", "verify", "r0", check=False)      # one at a time
        assert res.returncode == 17 and "already active" in res.stderr, res.stderr
        t.ctl("alpha", "disconnect", "r0")
        st = t.status("alpha")
        assert st["replication"] == "Off" and "verify" not in st
        assert "Online verify stopped (connection lost)" in t.log("alpha")
        t.wait("beta", lambda s: "verify" not in s and s["connection"] != "Connected",
               "beta stopped too", 15)
        assert "Online verify stopped (connection lost)" in t.log("beta")


def test_a_data_frame_damaged_on_the_wire_is_caught_dropped_and_resynced():
    """A proxy between the nodes flips a bit in one DATA payload (tests/integration/
    corrupting_proxy.py): beta logs the digest failure with the block's sector and drops the
    link without writing it; alpha marked the unacknowledged block, so the reconnect resyncs it."""
    requires_root()
    requires_commands("ip")
    nbd = requires_module("nbd")
    net = NET + " data-integrity-alg crc32c;"
    with TwoNodes(size=16 * MiB, net=net, disk="resync-rate 500M; c-plan-ahead 0;") as t:
        proxy_port = 17789
        text = t.config("alpha").read_text()
        beta_line = f"address {t.addr['beta']}:7789;"
        assert text.count(beta_line) == 1
        t.config("alpha").write_text(text.replace(beta_line, f"address 127.0.0.1:{proxy_port};"))
        trigger = t.dir / "corrupt-next"
        proxy = subprocess.Popen(
            ["ip", "netns", "exec", t.ns["alpha"], sys.executable, "-m",
             "tests.integration.corrupting_proxy", f"127.0.0.1:{proxy_port}",
             f"{t.addr['beta']}:7789", str(trigger)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
            t.create_and_up()
            t.initial_sync("alpha")
            trigger.touch()
            h = nbd.NBD()
            h.connect_uri(t.uri("alpha"))
            try:
                h.pwrite(os.urandom(65536), 5 * MiB, nbd.CMD_FLAG_FUA)   # answered from alpha
            finally:
                h.shutdown()
            assert (t.dir / "corrupt-next.done").read_text() == f"{5 * MiB} 65536\n"
            t.wait("beta", lambda s: "Digest integrity check FAILED" in t.log("beta"),
                   "digest failure logged", 10)
            assert f"Digest integrity check FAILED: {5 * MiB // 512}s +65536" in t.log("beta")
            t.wait_synced(timeout=30)                 # reconnected, the block resynced
            assert t.disks_equal()
            assert t.status("beta")["stats"]["integrity_failures"] == 1
        finally:
            proxy.kill()
            proxy.wait()
