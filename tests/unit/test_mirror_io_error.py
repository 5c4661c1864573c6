# SPDX-License-Identifier: GPL-2.0-or-later
"""The C data path when the local disk fails (disk { on-io-error }), without root.

A backing file fails on command: /dev/full is dup2()ed over the engine's fd (writes fail with
ENOSPC, reads return zeroes), and the file is put back to "repair" it. Two engines joined by a
socketpair, as in test_mirror_peer; NBD requests through the Session helper.

    pass_on    a failed write fails for the client and its blocks are marked out of sync, also
               a large (spliced) write and a write without a peer
    fail_over  the first error takes the disk out of use: the write is retried on the peer
               (flagged NOT_LOCAL: the peer marks it out of sync), later reads come from the
               peer (READ_REQUEST/READ_REPLY), no peer means EIO; a large (spliced) write too,
               from the duplicate kept while it streamed (the failed disk is never read back)
    Secondary  a failing Secondary NEG_ACKs and, failed over, writes nothing more: the Primary
               marks every such block
"""
import errno
import os
import socket
import struct

import pytest

from replica.mirror import Engine
from tests.unit.test_mirror_engine import DISC, FLUSH, FUA, READ, REQUEST, REQUEST_MAGIC, WRITE, Session
from tests.unit.test_mirror_peer import HEADER, SIZE, Pair, make_engine, settled

BLOCK = 4096


def read_frame(sock):
    """One frame sent by the engine, read by hand: (header fields, payload); EOF fails."""
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, f"the engine closed the link after {len(buf)} of {n} bytes"
            buf += chunk
        return buf
    fields = HEADER.unpack(exact(HEADER.size))
    return fields, exact(fields[5])


class FailingDisk:
    """Makes `fd` fail on command by putting /dev/full in its place; repair() restores it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.saved = os.dup(fd)

    def fail(self) -> None:
        full = os.open("/dev/full", os.O_RDWR)
        os.dup2(full, self.fd)
        os.close(full)

    def repair(self) -> None:
        os.dup2(self.saved, self.fd)

    def close(self) -> None:
        os.close(self.saved)


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path, "C")
    p.pdisk, p.sdisk = FailingDisk(p.pfd), FailingDisk(p.sfd)
    yield p
    for d in (p.pdisk, p.sdisk):
        d.repair()
        d.close()
    p.close()


def io_events(eng):
    return [ev for ev in eng.next_events() if ev.type == "io_error"]


# --- pass_on ---------------------------------------------------------------------------------

def test_pass_on_failed_writes_fail_and_are_marked_out_of_sync(pair):
    pair.pdisk.fail()
    s = Session(pair.primary)
    s.send(WRITE, 5 * BLOCK, 2 * BLOCK, os.urandom(2 * BLOCK), cookie=1)
    assert s.reply() == (errno.ENOSPC, 1, b"")
    big = os.urandom(1 << 20)                    # large: streamed to the disk by splice
    s.send(WRITE, 1 << 20, len(big), big, cookie=2)
    assert s.reply()[:2] == (errno.ENOSPC, 2)
    s.send(DISC)
    s.finish()
    # the torn large write was neither mirrored nor marked before (issue 9: blocks differed)
    assert list(pair.pbm.iter_dirty_extents(1 << 20)) == [(5 * BLOCK, 2 * BLOCK), (1 << 20, 1 << 20)]
    assert io_events(pair.primary)
    assert not pair.primary.disk_failed()


def test_pass_on_failed_write_without_peer_is_marked_out_of_sync(pair):
    pair.disconnect()
    pair.pdisk.fail()
    s = Session(pair.primary)
    s.send(WRITE, 7 * BLOCK, BLOCK, os.urandom(BLOCK), cookie=3)
    assert s.reply() == (errno.ENOSPC, 3, b"")
    s.send(DISC)
    s.finish()
    assert list(pair.pbm.iter_dirty_extents(BLOCK)) == [(7 * BLOCK, BLOCK)]


# --- fail_over ---------------------------------------------------------------------------------

def test_fail_over_serves_writes_and_reads_through_the_peer(pair):
    pair.primary.set_on_io_error("fail_over")
    before = os.urandom(BLOCK)
    s = Session(pair.primary)
    s.send(WRITE, 0, BLOCK, before, cookie=1)
    assert s.reply() == (0, 1, b"")
    pair.pdisk.fail()
    small, big = os.urandom(2 * BLOCK), os.urandom(1 << 20)
    s.send(WRITE, 3 * BLOCK, len(small), small, cookie=2)   # fails here, retried on the peer
    assert s.reply() == (0, 2, b"")
    assert pair.primary.disk_failed()
    s.send(WRITE, 2 << 20, len(big), big, cookie=3)         # goes to the peer alone
    assert s.reply() == (0, 3, b"")
    s.send(FLUSH, cookie=4)
    assert s.reply() == (0, 4, b"")
    # the data lives on the peer only now; reads come from there (the local disk reads zeroes)
    assert os.pread(pair.sfd, len(small), 3 * BLOCK) == small
    assert os.pread(pair.sfd, len(big), 2 << 20) == big
    s.send(READ, 3 * BLOCK, len(small), cookie=5)
    assert s.reply(len(small)) == (0, 5, small)
    s.send(READ, 0, BLOCK, cookie=6)
    assert s.reply(BLOCK) == (0, 6, before)
    s.send(READ, 2 << 20, len(big), cookie=7)                # larger than the reply batch
    assert s.reply(len(big)) == (0, 7, big)
    s.send(DISC)
    s.finish()
    # the peer knows what this disk lacks; so does this node's own bitmap
    settled(lambda: pair.sbm.count() == 2 + 256, "the secondary to mark 258 blocks")
    assert (3 * BLOCK, 2 * BLOCK) in list(pair.sbm.iter_dirty_extents(2 * BLOCK))
    assert pair.pbm.count() >= 2 + 256
    assert io_events(pair.primary)


def _send_in_pieces(sock, data, piece):
    for i in range(0, len(data), piece):
        sock.sendall(data[i:i + piece])


def _large_write_meets_the_failure(pair, size, before_failure, flags=0, piece=1 << 30):
    """A `size`-byte write whose first `before_failure` bytes reach the disk before it fails,
    sent in `piece`-byte sends (each one at least a buffer of the pipes it is spliced into)."""
    pair.primary.set_on_io_error("fail_over")
    s = Session(pair.primary)
    s.send(WRITE, 0, BLOCK, b"o" * BLOCK, cookie=1)          # the link is up and in use
    assert s.reply() == (0, 1, b"")
    big = os.urandom(size)
    offset = 1 << 20
    s.sock.sendall(REQUEST.pack(REQUEST_MAGIC, flags, WRITE, 2, offset, size))
    _send_in_pieces(s.sock, big[:before_failure], piece)
    if before_failure:
        # the first part is on this disk (the page cache) before the disk fails under the rest
        settled(lambda: os.pread(pair.pfd, before_failure, offset) == big[:before_failure],
                "the first part of the payload on the primary's disk")
    pair.pdisk.fail()
    _send_in_pieces(s.sock, big[before_failure:], piece)
    assert s.reply() == (0, 2, b"")                            # served: the peer has it
    assert pair.primary.disk_failed()
    s.send(READ, offset, size, cookie=3)                       # from the peer now
    assert s.reply(size) == (0, 3, big)
    s.send(DISC)
    s.finish()
    assert os.pread(pair.sfd, size, offset) == big
    blocks = size // BLOCK
    # both bitmaps know: the peer marked the NOT_LOCAL write, this node marked its own copy
    settled(lambda: pair.sbm.count() == blocks, f"the secondary to mark {blocks} blocks")
    assert list(pair.sbm.iter_dirty_extents(size)) == [(offset, size)]
    assert (offset, size) in list(pair.pbm.iter_dirty_extents(size))
    assert pair.primary.remote_writes() == 1
    assert io_events(pair.primary)


def test_fail_over_large_write_meeting_the_first_failure_is_served_by_the_peer(pair):
    _large_write_meets_the_failure(pair, 1 << 20, 0)


def test_fail_over_large_write_failing_mid_payload_sends_all_of_it(pair):
    """The first half reached this disk before it failed: the peer still gets it, from the
    duplicate (the failed disk reads zeroes here, so reading it back would lose it)."""
    _large_write_meets_the_failure(pair, 1 << 20, 512 << 10, flags=FUA)


def test_fail_over_large_write_beyond_the_duplicate_pipe_is_served_by_the_peer(pair):
    """4 MiB in 1 KiB sends: 4096 pipe buffers, more than the duplicate's pipe holds (1024 at
    most), so most of it was moved to memory, before the failure and after."""
    _large_write_meets_the_failure(pair, 4 << 20, 3 << 20, piece=1024)


def test_fail_over_large_writes_without_failure_reach_both_disks(pair):
    """The duplicate is thrown away after each payload: nothing of it leaks into the next."""
    pair.primary.set_on_io_error("fail_over")
    s = Session(pair.primary)
    payloads = {i: os.urandom(size) for i, size in enumerate((1 << 20, 4 << 20, 256 << 10, 1 << 20))}
    offset, where = 0, {}
    for i, data in payloads.items():
        where[i] = offset
        s.send(WRITE, offset, len(data), cookie=i)
        _send_in_pieces(s.sock, data, 1024 if i == 1 else len(data))   # 4 MiB: spilled
        offset += len(data)
    assert sorted(s.reply()[:2] for _ in payloads) == [(0, i) for i in payloads]
    s.send(FLUSH, cookie=99)
    assert s.reply() == (0, 99, b"")
    s.send(DISC)
    s.finish()
    for i, data in payloads.items():
        assert os.pread(pair.pfd, len(data), where[i]) == data
        assert os.pread(pair.sfd, len(data), where[i]) == data     # protocol C: acked once written
    assert not pair.primary.disk_failed() and pair.pbm.count() == 0


def test_fail_over_without_peer_answers_eio(pair):
    pair.primary.set_on_io_error("fail_over")
    pair.disconnect()
    pair.pdisk.fail()
    s = Session(pair.primary)
    s.send(WRITE, 0, BLOCK, os.urandom(BLOCK), cookie=1)
    assert s.reply() == (errno.ENOSPC, 1, b"")             # the error that took the disk away
    assert pair.primary.disk_failed()
    s.send(WRITE, BLOCK, BLOCK, os.urandom(BLOCK), cookie=2)
    assert s.reply() == (errno.EIO, 2, b"")
    s.send(READ, 0, BLOCK, cookie=3)
    assert s.reply() == (errno.EIO, 3, b"")
    s.send(DISC)
    s.finish()
    assert pair.pbm.count() == 2


def test_disk_back_in_use_after_python_clears_the_flag(pair):
    pair.primary.set_on_io_error("fail_over")
    pair.pdisk.fail()
    s = Session(pair.primary)
    s.send(WRITE, 0, BLOCK, b"x" * BLOCK, cookie=1)
    assert s.reply() == (0, 1, b"")
    pair.pdisk.repair()
    pair.primary.set_disk_failed(False)
    s.send(WRITE, BLOCK, BLOCK, b"y" * BLOCK, cookie=2)
    assert s.reply() == (0, 2, b"")
    s.send(DISC)
    s.finish()
    assert os.pread(pair.pfd, BLOCK, BLOCK) == b"y" * BLOCK
    assert pair.primary.remote_writes() == 1
    with pytest.raises(ValueError, match="on-io-error: expected one of pass_on, fail_over"):
        pair.primary.set_on_io_error("detach")


# --- the Secondary's disk fails ----------------------------------------------------------------

def test_failing_secondary_neg_acks_and_the_primary_marks_out_of_sync(pair):
    pair.secondary.set_on_io_error("fail_over")
    s = Session(pair.primary)
    pair.sdisk.fail()
    for i in range(4):
        s.send(WRITE, (10 + i) * BLOCK, BLOCK, os.urandom(BLOCK), cookie=i)
        assert s.reply() == (0, i, b"")            # written here: the client is served
    s.send(DISC)
    s.finish()
    assert pair.secondary.disk_failed()
    assert io_events(pair.secondary)
    assert list(pair.pbm.iter_dirty_extents(4 * BLOCK)) == [(10 * BLOCK, 4 * BLOCK)]
    # failed over: later frames are refused without touching the disk (one io_error only)
    assert pair.secondary.stats()["io_errors"] == 1


# --- the wire: READ_REQUEST / READ_REPLY as C speaks them ----------------------------------------

def test_read_request_is_answered_with_read_reply(tmp_path):
    eng, fd, _ = make_engine(tmp_path, "secondary", read_only=True)
    a, b = socket.socketpair()
    b.settimeout(5)
    eng.peer_attach(a.fileno(), "C")
    try:
        data = os.urandom(3 * BLOCK)
        os.pwrite(fd, data, 8 * BLOCK)
        b.sendall(HEADER.pack(0x52504C31, 0x05, 0, 77, 8 * BLOCK, 0, len(data)))
        (magic, ptype, flags, fid, offset, length, aux), payload = read_frame(b)
        assert (magic, ptype, fid, offset, length, aux) == (0x52504C31, 0x14, 77, 8 * BLOCK,
                                                             len(data), 0)
        assert payload == data
        # out of range: a protocol error, the link is dropped
        b.sendall(HEADER.pack(0x52504C31, 0x05, 0, 78, SIZE - BLOCK, 0, 2 * BLOCK))
        settled(lambda: any(ev.type == "peer_protocol" for ev in eng.next_events()), "a peer_protocol event")
    finally:
        eng.close()
        a.close()
        b.close()
        os.close(fd)


def test_read_request_to_a_failed_disk_replies_eio(tmp_path):
    eng, fd, _ = make_engine(tmp_path, "secondary", read_only=True)
    eng.set_disk_failed(True)
    a, b = socket.socketpair()
    b.settimeout(5)
    eng.peer_attach(a.fileno(), "C")
    try:
        b.sendall(HEADER.pack(0x52504C31, 0x05, 0, 9, 0, 0, BLOCK))
        (_, ptype, _, fid, _, length, aux), _ = read_frame(b)
        assert (ptype, fid, length, aux) == (0x14, 9, 0, errno.EIO)
    finally:
        eng.close()
        a.close()
        b.close()
        os.close(fd)


def test_c_and_python_agree_on_the_new_wire_names():
    from pathlib import Path

    from replica.protocol.repl_wire import DataFlag, ReplPacket
    text = (Path(__file__).resolve().parents[2] / "csrc" / "repl_wire.h").read_text()

    def c_value(name):
        import re
        m = re.search(rf"\b{name}\s*=?\s*(0x[0-9A-Fa-f]+)", text)
        assert m, name
        return int(m[1], 16)
    assert c_value("RPL_READ_REQUEST") == ReplPacket.READ_REQUEST == 0x05
    assert c_value("RPL_READ_REPLY") == ReplPacket.READ_REPLY == 0x14
    assert c_value("RPL_FLAG_NOT_LOCAL") == DataFlag.NOT_LOCAL == 0x0004
    assert struct.calcsize(">IHHQQII") == 32
    assert Engine  # the extension exports the new calls


def test_python_codec_reads_and_writes_the_new_frames():
    from replica.protocol.repl_codec import Frame, ReplDecoder, encode_frame
    from replica.protocol.repl_wire import DataFlag, ReplPacket
    frames = [Frame(ReplPacket.READ_REQUEST, id=7, offset=8192, aux=4096),
              Frame(ReplPacket.READ_REPLY, id=7, offset=8192, payload=b"d" * 4096),
              Frame(ReplPacket.READ_REPLY, id=8, offset=0, aux=errno.EIO),
              Frame(ReplPacket.DATA, flags=DataFlag.NOT_LOCAL | DataFlag.FUA, payload=b"x" * 512),
              Frame(ReplPacket.ZEROES, flags=DataFlag.NOT_LOCAL | DataFlag.NO_HOLE, aux=4096)]
    raw = b"".join(encode_frame(f) for f in frames)
    # golden bytes of the request: the layout csrc/wire.h packs with rpl_pack
    assert raw[:32] == HEADER.pack(0x52504C31, 0x05, 0, 7, 8192, 0, 4096)
    dec = ReplDecoder()
    dec.receive_data(raw)
    assert [dec.next_event() for _ in frames] == frames


def test_fuzz_the_new_frames_never_crash_the_decoder():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from replica.errors import RemoteProtocolError
    from replica.protocol.repl_codec import CLOSED, NEED_DATA, Frame, ReplDecoder, encode_frame
    from replica.protocol.repl_wire import DataFlag, ReplPacket
    seed = b"".join(encode_frame(f) for f in (
        Frame(ReplPacket.READ_REQUEST, id=1, offset=4096, aux=4096),
        Frame(ReplPacket.READ_REPLY, id=1, offset=4096, payload=b"r" * 64),
        Frame(ReplPacket.TRIM, flags=DataFlag.NOT_LOCAL, aux=8192)))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), max_size=6),
           st.integers(0, len(seed)))
    def run(flips, cut):
        raw = bytearray(seed)
        for pos, val in flips:
            raw[pos] = val
        dec = ReplDecoder()
        dec.receive_data(bytes(raw[:cut]))
        try:
            for _ in range(5):
                ev = dec.next_event()
                if ev is NEED_DATA or ev is CLOSED:
                    break
                assert isinstance(ev, Frame)
        except RemoteProtocolError as exc:
            assert str(exc).startswith("repl")
    run()


def test_disk_is_handed_back_only_if_no_write_went_to_the_peer_alone_since(pair):
    """After the resync of a re-attached disk: a write sent to the peer alone after the resync
    was asked for may have raced it, so the disk stays out of use (Python resyncs again)."""
    pair.primary.set_on_io_error("fail_over")
    pair.primary.set_disk_failed(True)
    since = pair.primary.remote_writes()
    s = Session(pair.primary)
    s.send(WRITE, 0, BLOCK, b"z" * BLOCK, cookie=1)
    assert s.reply() == (0, 1, b"")
    assert not pair.primary.reuse_disk(since)
    assert pair.primary.disk_failed()
    assert pair.primary.reuse_disk(pair.primary.remote_writes())
    assert not pair.primary.disk_failed()
    s.send(WRITE, BLOCK, BLOCK, b"w" * BLOCK, cookie=2)     # local and mirrored again
    assert s.reply() == (0, 2, b"")
    s.send(DISC)
    s.finish()
    assert os.pread(pair.pfd, BLOCK, BLOCK) == b"w" * BLOCK
    assert os.pread(pair.pfd, BLOCK, 0) != b"z" * BLOCK      # never reached this disk


def test_write_fails_when_neither_disk_took_it(pair):
    """Primary failed over, then the peer's disk fails too: its NEG_ACK means no disk has the
    write, so the client gets EIO (never a success for data that is nowhere)."""
    pair.primary.set_on_io_error("fail_over")
    pair.secondary.set_on_io_error("fail_over")
    pair.primary.set_disk_failed(True)
    pair.secondary.set_disk_failed(True)
    s = Session(pair.primary)
    for i in range(20):
        s.send(WRITE, i * BLOCK, BLOCK, os.urandom(BLOCK), cookie=i)
        assert s.reply() == (errno.EIO, i, b"")
    s.send(DISC)
    s.finish()
