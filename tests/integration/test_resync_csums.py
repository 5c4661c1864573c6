# SPDX-License-Identifier: GPL-2.0-or-later
"""csums-alg between two namespaces (DRBD's checksum-based resync): a full sync of identical
disks sends digests, not data (counted on the SyncSource's socket), a full sync of disks that
differ in a few blocks sends exactly those blocks, and csums-after-crash-only keeps an
ordinary resync (no Primary crashed) on plain data. Every case ends with identical disks."""
import os

import pytest

from tests.conftest import requires_root
from tests.integration.netns import DEFAULT_NET, MiB, TwoNodes

pytestmark = pytest.mark.root

SIZE = 32 * MiB
BLOCK = 4096


def _same_content(t: TwoNodes, seed: bytes) -> None:
    """Both backing files get the same non-zero 24 MiB (digests of zero blocks alone would
    not show that the data is compared)."""
    data = (seed * (MiB // len(seed) + 1))[:MiB]
    for node in ("alpha", "beta"):
        with open(t.disk_path(node), "r+b") as f:
            for i in range(24):
                f.write(bytes([i]) + data[1:])


def _full_sync(t: TwoNodes) -> tuple[dict, dict]:
    t.create_and_up()
    t.ctl("alpha", "primary", "--force", "r0")
    t.wait_synced(60)
    a = t.status("alpha")
    b = t.status("beta")
    assert b["disk_state"] == "UpToDate", b
    return a, b


def test_csums_resync_of_identical_disks_sends_no_data():
    requires_root()
    with TwoNodes(size=SIZE, net=DEFAULT_NET + " csums-alg sha1;") as t:
        _same_content(t, os.urandom(4096))
        a, _ = _full_sync(t)
        size = t.data_size()
        last = a["last_resync"]
        assert last["csums_alg"] == "sha1"
        assert last["csum_equal_bytes"] == last["csum_checked_bytes"] == size, last
        assert a["stats"]["resync_bytes_sent"] == 0 and last["data_sent_bytes"] == 0
        # digests (20 bytes per 4 KiB), frame headers, the handshake and the bitmap
        assert a["stats"]["peer_bytes_sent"] < size * 0.05, a["stats"]
        assert "csums-alg sha1: 8" in t.log("alpha") and "blocks equal, skipped; 0 to send" in t.log("alpha")
        assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"


def test_csums_resync_sends_exactly_the_blocks_that_differ():
    requires_root()
    with TwoNodes(size=SIZE, net=DEFAULT_NET + " csums-alg crc32c;") as t:
        _same_content(t, os.urandom(4096))
        differ = [0, 3, 100, 101, 4000, SIZE // BLOCK - 300]
        with open(t.disk_path("alpha"), "r+b") as f:
            for blk in differ:
                f.seek(blk * BLOCK + 17)
                f.write(os.urandom(3))
        a, _ = _full_sync(t)
        size = t.data_size()
        last = a["last_resync"]
        assert last["csum_equal_bytes"] == size - len(differ) * BLOCK, last
        assert a["stats"]["resync_bytes_sent"] == len(differ) * BLOCK, a["stats"]
        assert t.disks_equal(size), f"first difference at {t.first_difference(size)}"


def test_csums_after_crash_only_resyncs_plain_data_without_a_crash():
    requires_root()
    with TwoNodes(size=SIZE, net=DEFAULT_NET + " csums-alg md5; csums-after-crash-only;") as t:
        _same_content(t, os.urandom(4096))
        a, _ = _full_sync(t)
        size = t.data_size()
        assert "csums_alg" not in a["last_resync"]
        assert a["stats"]["resync_bytes_sent"] == size
        assert t.disks_equal(size)
