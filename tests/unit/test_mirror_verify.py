# SPDX-License-Identifier: GPL-2.0-or-later
"""Online verify and data-integrity-alg in C: digests (test vectors), OV_REQUEST/OV_REPLY between
two engines joined by a socketpair, and the receiver's digest check fed by hand-made frames.

crc32c vectors: RFC 3720 (iSCSI) B.4 and the "123456789" check value 0xe3069283, in the byte
order of the kernel's crypto "crc32c" (little endian), which DRBD puts on the wire.
"""
import hashlib
import os
import socket
import struct
import threading

import pytest

from replica import mirror
from replica.bitmap import Bitmap
from replica.mirror import Engine
from tests.unit.test_mirror_engine import DISC, WRITE, Session
from tests.unit.test_mirror_peer import HEADER, Pair, make_engine, read_frame, settled

MAGIC = 0x52504C31
DATA, WRITE_ACK, OV_REQUEST, OV_REPLY, DIGEST = 0x01, 0x11, 0x38, 0x39, 0x3A


@pytest.mark.parametrize("data,crc", [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0x00000000),
])
def test_crc32c_known_values(data, crc):
    assert mirror.digest("crc32c", data) == struct.pack("<I", crc)


def test_crc32c_unaligned_and_long_inputs_agree_with_the_bytewise_definition():
    def crc32c_ref(data: bytes) -> int:
        c = 0xFFFFFFFF
        for byte in data:
            c ^= byte
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        return c ^ 0xFFFFFFFF
    blob = os.urandom(300)
    for start in range(0, 9):
        for end in (start, start + 1, start + 7, start + 8, start + 17, 300):
            assert mirror.digest("crc32c", blob[start:end]) == struct.pack("<I", crc32c_ref(blob[start:end]))


def test_crc32c_three_chain_path_agrees_with_a_table_reference():
    """Inputs long enough for the three-chain paths (3 x 8 KiB and 3 x 256 bytes) and their
    remainders, at every alignment mod 8."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)

    def ref(data: bytes) -> int:
        c = 0xFFFFFFFF
        for byte in data:
            c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF
    blob = os.urandom(3 * 8192 * 2 + 3 * 256 + 100)
    for start in range(8):
        for length in (768, 769, 3 * 8192, 3 * 8192 + 3 * 256 + 9, len(blob) - 8):
            part = blob[start:start + length]
            assert mirror.digest("crc32c", part) == struct.pack("<I", ref(part)), (start, length)


@pytest.mark.parametrize("name", ["md5", "sha1", "sha224", "sha256", "sha384", "sha512",
                                  "sha3-224", "sha3-256", "sha3-384", "sha3-512"])
def test_hashes_match_hashlib(name):
    data = os.urandom(4096)
    assert mirror.digest(name, data) == hashlib.new(name.replace("-", "_"), data).digest()


def test_unknown_algorithms_are_refused():
    assert mirror.digest_id("crc32") is None and mirror.digest_id("whirlpool") is None
    with pytest.raises(ValueError, match="unknown algorithm"):
        mirror.digest("crc32", b"")


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path, "C")
    yield p
    p.close()


def corrupt(fd: int, offset: int) -> None:
    """Change one byte of the backing file behind the engine's back (what verify is for):
    flipped, so it always differs (a fixed byte equals random data 1 time in 256)."""
    os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ 0xFF]), offset)


def fill_both(pair, size: int) -> None:
    s = Session(pair.primary)
    blob = os.urandom(size)
    for off in range(0, size, 1 << 20):
        s.send(WRITE, off, min(1 << 20, size - off), blob[off:off + (1 << 20)], cookie=off + 1)
        assert s.reply()[0] == 0
    s.send(DISC)
    s.finish()


def run_verify(pair, alg: str, start: int, end: int, chunk: int = 1 << 20) -> None:
    for off in range(start, end, chunk):
        pair.primary.verify_send(alg, off, min(chunk, end - off))
    settled(lambda: pair.primary.stats()["verify_bytes_done"] == end - start, "every OV_REPLY")


@pytest.mark.parametrize("alg", ["crc32c", "sha1", "md5"])
def test_verify_of_identical_disks_finds_nothing(pair, alg):
    fill_both(pair, 4 << 20)
    run_verify(pair, alg, 0, 8 << 20)
    for eng in (pair.primary, pair.secondary):
        st = eng.stats()
        assert st["verify_oos_blocks"] == 0
        assert not [e for e in eng.next_events() if e.type == "verify_oos"]
    assert pair.secondary.stats()["verify_bytes_checked"] == 8 << 20
    assert pair.pbm.count() == pair.sbm.count() == 0


def test_verify_finds_exactly_the_corrupted_blocks_and_marks_them_on_both_sides(pair):
    fill_both(pair, 4 << 20)
    # three blocks alone, a run of two across a chunk boundary, one byte in the last block
    for off in (0, 5 * 4096, 300 * 4096, (1 << 20) - 4096, 1 << 20, SIZE_LAST_BLOCK):
        corrupt(pair.sfd, off + 17)
    run_verify(pair, "crc32c", 0, 8 << 20)
    want = {0, 5, 300, 255, 256, SIZE_LAST_BLOCK // 4096}
    for eng, bm in ((pair.primary, pair.pbm), (pair.secondary, pair.sbm)):
        assert eng.stats()["verify_oos_blocks"] == len(want)
        assert {b for b in range(bm.nbits) if bm.test_bit(b)} == want
        runs = [(e.offset, e.length) for e in eng.next_events() if e.type == "verify_oos"]
        assert sorted(runs) == [(0, 4096), (5 * 4096, 4096), (255 * 4096, 4096), (256 * 4096, 4096),
                                (300 * 4096, 4096), (SIZE_LAST_BLOCK, 4096)]


SIZE_LAST_BLOCK = (8 << 20) - 4096


def test_verify_of_a_range_and_an_unaligned_tail(tmp_path):
    """A device whose size is not a multiple of 4 KiB: the last, short block is compared too."""
    size = (1 << 20) + 1000
    engines = []
    for name, ro in (("p", False), ("s", True)):
        fd = os.open(tmp_path / name, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, size)
        eng = Engine(fd, size, read_only=ro)
        bm = Bitmap(size)
        eng.set_bitmap(bm)
        engines.append((eng, fd, bm))
    a, b = socket.socketpair()
    (p, pfd, pbm), (s, sfd, sbm) = engines
    try:
        p.peer_attach(a.fileno(), "C")
        s.peer_attach(b.fileno(), "C")
        os.pwrite(sfd, b"x", size - 1)
        p.verify_send("sha256", 1 << 20, 1000)
        settled(lambda: p.stats()["verify_bytes_done"] == 1000, "reply")
        assert p.stats()["verify_oos_blocks"] == 1 and sbm.test_bit(256) and pbm.test_bit(256)
        with pytest.raises(OSError):
            p.verify_send("sha256", 1 << 20, 1001)                 # past the end
        with pytest.raises(OSError):
            p.verify_send("crc32c", 0, mirror.MAX_VERIFY_CHUNK + 4096)
    finally:
        for eng, fd, _ in engines:
            eng.close()
            os.close(fd)
        a.close()
        b.close()


def test_verify_without_a_peer_is_enotconn(tmp_path):
    eng, fd, _ = make_engine(tmp_path, "p")
    try:
        with pytest.raises(OSError) as exc:
            eng.verify_send("crc32c", 0, 4096)
        assert exc.value.errno == 107
    finally:
        eng.close()
        os.close(fd)


# --- the target side fed by hand: malformed verify frames are protocol errors ---------------

@pytest.fixture
def secondary_hand_peer(tmp_path):
    """A Secondary whose Primary is this test (integrity crc32c when asked)."""
    made = []

    def make(integrity=None):
        eng, fd, bitmap = make_engine(tmp_path, "secondary", read_only=True)
        a, b = socket.socketpair()
        eng.peer_attach(a.fileno(), "C", integrity)
        made.append((eng, fd, a, b))
        return eng, bitmap, b
    yield make
    for eng, fd, a, b in made:
        eng.close()
        a.close()
        b.close()
        os.close(fd)


@pytest.mark.parametrize("flags,length,aux", [
    (99, 4, 4096),                  # unknown digest number
    (1, 8, 4096),                   # two crc32c digests for one block
    (1, 4, 0),                      # empty range
    (1, 4 * 257, (1 << 20) + 4096), # more than RM_MAX_VERIFY_CHUNK
])
def test_malformed_ov_request_drops_the_link(secondary_hand_peer, flags, length, aux):
    eng, _, peer = secondary_hand_peer()
    peer.sendall(HEADER.pack(MAGIC, OV_REQUEST, flags, 1, 0, length, aux) + bytes(length))
    settled(lambda: eng.stats()["peer_connected"] == 0, "link dropped")
    assert eng.next_events()[-1].type == "peer_protocol"


def test_ov_request_is_answered_with_a_bit_per_differing_block(secondary_hand_peer):
    eng, bitmap, peer = secondary_hand_peer()
    zero = mirror.digest("crc32c", bytes(4096))
    digests = zero + mirror.digest("crc32c", b"x" * 4096) + zero + zero
    peer.sendall(HEADER.pack(MAGIC, OV_REQUEST, 1, 42, 8192, len(digests), 4 * 4096) + digests)
    (_, ptype, _, fid, offset, length, aux), payload = read_frame(peer)
    assert (ptype, fid, offset, aux, payload) == (OV_REPLY, 42, 8192, 4 * 4096, b"\x02")
    assert bitmap.test_bit(3) and bitmap.count() == 1


# --- data-integrity-alg --------------------------------------------------------------------

def data_frame(fid: int, offset: int, payload: bytes, digest: bytes) -> bytes:
    return (HEADER.pack(MAGIC, DIGEST, 0, fid, offset, len(digest), len(payload)) + digest
            + HEADER.pack(MAGIC, DATA, 0, fid, offset, len(payload), 0) + payload)


@pytest.mark.parametrize("size", [4096, 1 << 20])
def test_integrity_matching_digest_is_written_and_acked(secondary_hand_peer, tmp_path, size):
    eng, _, peer = secondary_hand_peer("crc32c")
    data = os.urandom(size)
    peer.sendall(data_frame(7, 65536, data, mirror.digest("crc32c", data)))
    (_, ptype, _, fid, _, _, _), _ = read_frame(peer)
    assert (ptype, fid) == (WRITE_ACK, 7)
    assert (tmp_path / "secondary").read_bytes()[65536:65536 + size] == data


@pytest.mark.parametrize("alg", ["crc32c", "sha1"])
@pytest.mark.parametrize("size,flip", [(8192, 100), (1 << 20, 700_000), (1 << 20, (1 << 20) - 1)])
def test_integrity_mismatch_is_logged_with_its_offset_not_written_and_drops_the_link(
        secondary_hand_peer, tmp_path, alg, size, flip):
    """Small payloads are checked from the receive buffer, large ones as they arrive (crc32c: a
    piece at a time): either way the damaged frame is not written."""
    eng, _, peer = secondary_hand_peer(alg)
    data = os.urandom(size)
    bad = bytearray(data)
    bad[flip] ^= 1                                  # damaged in flight
    threading.Thread(target=peer.sendall, args=(data_frame(9, 40960, bytes(bad), mirror.digest(alg, data)),),
                     daemon=True).start()
    settled(lambda: eng.stats()["peer_connected"] == 0, "link dropped")
    events = eng.next_events()
    assert [(e.type, e.offset, e.length) for e in events if e.type == "integrity"] == [
        ("integrity", 40960, size)]
    assert events[-1].type == "peer_lost" and events[-1].err == 74       # EBADMSG
    assert eng.stats()["integrity_failures"] == 1
    assert (tmp_path / "secondary").read_bytes()[40960:40960 + size] == bytes(size)


def test_integrity_data_without_its_digest_is_a_protocol_error(secondary_hand_peer):
    eng, _, peer = secondary_hand_peer("sha1")
    peer.sendall(HEADER.pack(MAGIC, DATA, 0, 1, 0, 4, 0) + b"data")
    settled(lambda: eng.stats()["peer_connected"] == 0, "link dropped")
    assert eng.next_events()[-1].type == "peer_protocol"


def test_digest_frame_without_integrity_is_a_protocol_error(secondary_hand_peer):
    eng, _, peer = secondary_hand_peer(None)
    peer.sendall(HEADER.pack(MAGIC, DIGEST, 0, 1, 0, 4, 4) + b"abcd")
    settled(lambda: eng.stats()["peer_connected"] == 0, "link dropped")
    assert eng.next_events()[-1].type == "peer_protocol"


@pytest.mark.parametrize("alg", ["crc32c", "sha256"])
def test_integrity_between_two_engines_mirrors_writes_and_resync(tmp_path, alg):
    p = Pair.__new__(Pair)
    p.tmp, p.protocol, p.socks = tmp_path, "C", []
    p.primary, p.pfd, p.pbm = make_engine(tmp_path, "primary")
    p.secondary, p.sfd, p.sbm = make_engine(tmp_path, "secondary", read_only=True)
    try:
        a, b = socket.socketpair()
        p.socks += [a, b]
        p.primary.peer_attach(a.fileno(), "C", alg)
        p.secondary.peer_attach(b.fileno(), "C", alg)
        fill_both(p, 3 << 20)                       # 1 MiB writes: sent by sendfile or writev
        os.pwrite(p.pfd, os.urandom(65536), 4096)   # resync these from the Primary's disk
        p.pbm.set_bits(1, 17)
        p.primary.resync_send(4096, 65536)
        settled(lambda: p.primary.stats()["resync_bytes_acked"] == 65536, "RS_DONE")
        assert p.disk("primary") == p.disk("secondary")
        assert p.secondary.stats()["integrity_failures"] == 0
        assert p.primary.stats()["peer_connected"] == 1
    finally:
        p.close()


def test_integrity_alg_is_refused_while_attached_and_when_unknown(tmp_path):
    eng, fd, _ = make_engine(tmp_path, "p")
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="not available"):
            eng.peer_attach(a.fileno(), "C", "crc32")
        eng.peer_attach(a.fileno(), "C", "crc32c")
        with pytest.raises(OSError):
            eng.peer_attach(a.fileno(), "C", "sha1")
    finally:
        eng.close()
        a.close()
        b.close()
        os.close(fd)


@pytest.mark.parametrize("alg", ["crc32c", "sha1"])
def test_integrity_beyond_the_mapped_view_reads_a_copy(tmp_path, alg):
    """The sender digests large frames in place through a mapping of the backing file made on
    first use; ranges past it (the file grew since, or is short) take the copying path."""
    fds, engines, bitmaps = [], [], []
    for name, ro in (("primary", False), ("secondary", True)):
        fd = os.open(tmp_path / name, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 1 << 20)                   # shorter than the 8 MiB device
        eng = Engine(fd, 8 << 20, read_only=ro)
        bm = Bitmap(8 << 20)
        eng.set_bitmap(bm)
        fds.append(fd)
        engines.append(eng)
        bitmaps.append(bm)
    a, b = socket.socketpair()
    p, s = engines
    try:
        p.peer_attach(a.fileno(), "C", alg)
        s.peer_attach(b.fileno(), "C", alg)
        sess = Session(p)
        blobs = {0: os.urandom(1 << 20), 4 << 20: os.urandom(1 << 20), (7 << 20) + 4096: os.urandom(65536)}
        for i, (off, blob) in enumerate(blobs.items()):
            sess.send(WRITE, off, len(blob), blob, cookie=i + 1)
            assert sess.reply()[0] == 0
        sess.send(DISC)
        sess.finish()
        secondary = (tmp_path / "secondary").read_bytes()
        for off, blob in blobs.items():
            assert secondary[off:off + len(blob)] == blob
        assert s.stats()["integrity_failures"] == 0 and p.stats()["peer_connected"] == 1
    finally:
        for eng in engines:
            eng.close()
        for fd in fds:
            os.close(fd)
        a.close()
        b.close()
