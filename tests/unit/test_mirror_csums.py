# SPDX-License-Identifier: GPL-2.0-or-later
"""csums-alg in C: the digests the SyncSource sends (test vectors against hashlib and RFC 3720's
crc32c check value), and RS_CSUM/RS_CSUM_REPLY between two engines on a socketpair: the equal
blocks' bits are cleared on both sides, the others stay dirty and no data moves; a malformed
RS_CSUM from the peer is a protocol event, not a crash."""
import hashlib
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica import mirror
from tests.unit.test_mirror_peer import HEADER, Pair, make_engine, settled

BLOCK = 4096
RS_CSUM = 0x34
MAGIC = 0x52504C31


@pytest.mark.parametrize("name", ["md5", "sha1", "sha224", "sha256", "sha384", "sha512",
                                  "sha3-224", "sha3-256", "sha3-384", "sha3-512"])
def test_digests_match_hashlib(name):
    data = bytes(range(256)) * 16 + b"tail"
    assert mirror.digest(name, data) == hashlib.new(name.replace("-", "_"), data).digest()


def test_crc32c_check_value():
    # RFC 3720 B.4 / the kernel's "crc32c" shash: ~crc, little endian
    assert mirror.digest("crc32c", b"123456789") == bytes.fromhex("839206e3")
    assert mirror.digest("crc32c", bytes(32)) == (0x8A9136AA).to_bytes(4, "little")


@given(st.binary(max_size=9000))
@settings(max_examples=50, deadline=None)
def test_crc32c_hardware_and_any_length_agree_with_a_bitwise_crc(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    assert mirror.digest("crc32c", data) == (crc ^ 0xFFFFFFFF).to_bytes(4, "little")


def _fill(fd, offset, data):
    os.pwrite(fd, data, offset)


@pytest.fixture
def pair_c(tmp_path):
    p = Pair(tmp_path, "C")
    yield p
    p.close()


@pytest.mark.parametrize("alg", ["crc32c", "sha256"])
def test_csum_clears_equal_blocks_on_both_sides_and_sends_no_data(pair_c, alg):
    p = pair_c
    same = os.urandom(64 * BLOCK)
    _fill(p.pfd, 0, same)
    _fill(p.sfd, 0, same)
    # blocks 5 and 40 differ (a flipped byte: a fixed one equals the random data 1 time in 256)
    _fill(p.sfd, 5 * BLOCK + 100, bytes([same[5 * BLOCK + 100] ^ 0xFF]))
    _fill(p.pfd, 40 * BLOCK, bytes([same[40 * BLOCK] ^ 0xFF]))
    for bm in (p.pbm, p.sbm):
        bm.set_range(0, 64 * BLOCK)
    p.primary.resync_csum_send(alg, 0, 64 * BLOCK)
    settled(lambda: p.primary.stats()["csum_bytes_done"] == 64 * BLOCK, "RS_CSUM_REPLY")
    st_p, st_s = p.primary.stats(), p.secondary.stats()
    assert st_p["csum_bytes_sent"] == 64 * BLOCK and st_s["csum_bytes_checked"] == 64 * BLOCK
    assert st_p["csum_bytes_equal"] == 62 * BLOCK
    assert st_p["resync_bytes_sent"] == 0 and st_s["resync_bytes_received"] == 0
    for bm in (p.pbm, p.sbm):
        assert list(bm.iter_dirty_runs()) == [(5, 6), (40, 41)]
    # the data pass then sends just those two
    for blk in (5, 40):
        p.primary.resync_send(blk * BLOCK, BLOCK)
    settled(lambda: p.pbm.count() == 0 and p.sbm.count() == 0, "bits cleared")
    assert os.pread(p.pfd, 64 * BLOCK, 0) == os.pread(p.sfd, 64 * BLOCK, 0)


def test_csum_of_a_partial_last_block_and_argument_checks(pair_c):
    p = pair_c
    size = 8 << 20
    p.pbm.set_range(size - 3 * BLOCK, 3 * BLOCK)
    p.primary.resync_csum_send("md5", size - 3 * BLOCK, 3 * BLOCK)
    settled(lambda: p.primary.stats()["csum_bytes_done"] == 3 * BLOCK, "reply")
    assert p.pbm.count() == 0                     # both files are zeros there
    with pytest.raises(OSError, match="resync csum send"):
        p.primary.resync_csum_send("md5", size - BLOCK, 2 * BLOCK)      # past the end
    with pytest.raises(OSError):
        p.primary.resync_csum_send("md5", 0, mirror.MAX_RESYNC_CHUNK + BLOCK)
    with pytest.raises(ValueError, match="csums-alg 'whirlpool'"):
        p.primary.resync_csum_send("whirlpool", 0, BLOCK)


SIZES = {v: len(mirror.digest(k, b"")) for k, v in mirror.DIGESTS.items()}


@given(alg=st.sampled_from([0, 1, 3, 12, 0xFFFF]), offset=st.sampled_from([0, 4096, 8 << 20, 1 << 40]),
       aux=st.sampled_from([0, 1, 4096, 8192, 8 << 20, (8 << 20) + 4096, 0xFFFFFFFF]),
       payload=st.binary(max_size=48))
@settings(max_examples=60, deadline=None)
def test_rs_csum_from_the_peer_is_answered_or_refused(tmp_path_factory, alg, offset, aux, payload):
    """Any RS_CSUM header: a valid one gets RS_CSUM_REPLY, anything else drops the link with a
    peer_protocol event; never a crash or a hang."""
    tmp = tmp_path_factory.mktemp("csum")
    eng, fd, _ = make_engine(tmp, "secondary", read_only=True)
    a, b = socket.socketpair()
    size = 8 << 20
    valid = (alg in SIZES and 0 < aux <= mirror.MAX_RESYNC_CHUNK and offset + aux <= size
             and len(payload) == -(-aux // BLOCK) * SIZES[alg])
    try:
        eng.peer_attach(a.fileno(), "C")
        b.sendall(HEADER.pack(MAGIC, RS_CSUM, alg, 1, offset, len(payload), aux) + payload)
        if valid:
            b.settimeout(5)
            head = HEADER.unpack(b.recv(HEADER.size, socket.MSG_WAITALL))
            assert head[1] == RS_CSUM + 1 and head[4] == offset and head[6] == aux
            assert eng.stats()["peer_connected"]
        else:
            settled(lambda: not eng.stats()["peer_connected"], "link dropped")
            assert [e.type for e in eng.next_events()] == ["peer_protocol"]
    finally:
        eng.close()
        a.close()
        b.close()
        os.close(fd)


def test_header_layout_is_the_one_the_test_packs():
    assert HEADER.size == 32 and struct.calcsize(">IHHQQII") == 32
