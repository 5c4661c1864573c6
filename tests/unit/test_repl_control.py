# SPDX-License-Identifier: GPL-2.0-or-later
"""The control messages replicad exchanges after the handshake (replica.protocol.repl_control):
round trips,
exact refusals of malformed frames, and a hypothesis fuzz of decode_control (garbage in -> a
RemoteProtocolError, never another exception), plus the handshake frame reader of peer_link."""
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.errors import RemoteProtocolError
from replica.peer_link import read_frame
from replica.protocol import repl
from replica.protocol import repl_control as events
from replica.protocol.repl_codec import frame_length
from replica.protocol.repl_wire import HEADER, OV_START_BODY, REPL_MAGIC, ReplPacket, VerifyOutcome
from replica.states import DiskState, Role
from replica.uuids import GenerationUuids, UuidFlag


@pytest.mark.parametrize("role", [Role.Primary, Role.Secondary, Role.Unknown])
@pytest.mark.parametrize("disk", list(DiskState))
def test_state_round_trip(role, disk):
    msg = events.PeerState(role, disk, 0x1234)
    assert events.decode_control(events.encode_control(msg)) == msg


def test_verify_messages_round_trip_and_their_layout():
    msg = events.VerifyStart(1 << 20, 1 << 30, "sha256")
    frame = events.encode_control(msg)
    assert frame[4:6] == bytes([0, 0x5A]) and frame[16:24] == (1 << 20).to_bytes(8, "big")
    assert frame[32:] == (1 << 30).to_bytes(8, "big") + b"sha256"
    assert events.decode_control(frame) == msg
    end = events.VerifyEnd(VerifyOutcome.REFUSED, 0, "different verify-alg settings")
    assert events.decode_control(events.encode_control(end)) == end


def test_sync_uuid_uuids_and_simple_messages():
    assert events.decode_control(events.encode_control(events.SyncUuid(0xABCDEF00, True))) == \
        events.SyncUuid(0xABCDEF00, True)
    u = GenerationUuids(0x10, 0x20, (0x30, 0x40))
    assert events.decode_control(repl.encode_uuids(u, UuidFlag.SKIP_INITIAL_SYNC)) == \
        events.PeerUuids(u, UuidFlag.SKIP_INITIAL_SYNC)
    assert events.decode_control(events.encode_control(events.FullSyncRequest())) == events.FullSyncRequest()
    assert events.decode_control(repl.encode_simple(ReplPacket.OUTDATE)) == events.Outdate()
    assert events.decode_control(repl.encode_simple(ReplPacket.DISCONNECT)) == \
        events.PeerDisconnect()
    assert events.decode_control(repl.encode_refuse("going away")) == \
        events.PeerRefuse("going away")


@pytest.mark.parametrize("frame,message", [
    (repl.encode_simple(ReplPacket.STATE, aux=(9 << 8) | 8), "repl: STATE: invalid role/disk"),
    (repl.encode_simple(ReplPacket.STATE, aux=(1 << 8) | 99), "repl: STATE: invalid role/disk"),
    (repl.encode_simple(ReplPacket.SYNC_UUID, offset=0), "repl: SYNC_UUID: invalid"),
    (repl.encode_simple(ReplPacket.SYNC_UUID, offset=7, aux=2), "repl: SYNC_UUID: invalid"),
    (repl.encode_simple(ReplPacket.SYNC_DECISION, aux=1), "repl: unexpected control frame "
                                                          "SYNC_DECISION"),
    (repl.encode_simple(ReplPacket.PING), "repl: unexpected control frame PING"),
    (repl.encode_simple(ReplPacket.OUTDATE) + b"x", "repl: control frame: expected exactly one"),
    (repl.encode_simple(ReplPacket.OUTDATE)[:20], "repl: connection closed in the middle"),
    (b"", "repl: control frame: expected exactly one frame in 0 bytes"),
    (repl.encode_frame(repl.Frame(ReplPacket.OV_START, offset=100,
                                  payload=OV_START_BODY.pack(4096) + b"crc32c")),
     "repl: OV_START: invalid: start=100"),
    (repl.encode_frame(repl.Frame(ReplPacket.OV_START, offset=8192,
                                  payload=OV_START_BODY.pack(4096) + b"crc32c")),
     "repl: OV_START: invalid: start=8192 end=4096"),
    (repl.encode_frame(repl.Frame(ReplPacket.OV_START, payload=OV_START_BODY.pack(0) + b"\xff")),
     "repl: OV_START: invalid"),
    (HEADER.pack(REPL_MAGIC, ReplPacket.OV_START, 0, 0, 0, 8, 0) + OV_START_BODY.pack(0),
     "repl: invalid frame: OV_START: length=8 outside 9..72"),
    (repl.encode_simple(ReplPacket.OV_END, aux=3), "repl: OV_END: unknown outcome 3"),
    (repl.encode_frame(repl.Frame(ReplPacket.OV_START, aux=2,
                                  payload=OV_START_BODY.pack(0) + b"crc32c")),
     "repl: OV_START: invalid"),
    (HEADER.pack(REPL_MAGIC, ReplPacket.OV_REQUEST, 1, 0, 0, 0, 4096),
     "repl: invalid frame: OV_REQUEST: length=0"),
])
def test_malformed_control_frames_are_refused(frame, message):
    with pytest.raises(RemoteProtocolError) as exc:
        events.decode_control(frame)
    assert str(exc.value).startswith(message)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decode_control_random_bytes(raw):
    try:
        msg = events.decode_control(raw)
    except RemoteProtocolError:
        return
    assert msg is not None


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(list(ReplPacket)), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1),
       st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_fuzz_decode_control_valid_headers(ptype, flags, offset, aux, payload):
    raw = HEADER.pack(REPL_MAGIC, ptype, flags, 0, offset, len(payload), aux) + payload
    try:
        events.decode_control(raw)
    except RemoteProtocolError:
        pass


def test_read_frame_reads_exactly_one_frame():
    a, b = socket.socketpair()
    try:
        one = repl.encode_refuse("first")
        a.sendall(one + repl.encode_simple(ReplPacket.PING))
        assert read_frame(b) == one
        assert read_frame(b) == repl.encode_simple(ReplPacket.PING)
        huge = HEADER.pack(REPL_MAGIC, ReplPacket.BITMAP, 0, 0, 0, 64 << 20, 0)
        a.sendall(huge)
        with pytest.raises(RemoteProtocolError, match="exceeds"):
            read_frame(b)
        a.sendall(b"GARBAGE!" * 4)
        with pytest.raises(RemoteProtocolError, match="invalid frame: magic=0x47415242"):
            read_frame(b)
        a.sendall(b"\x00" * 10)
        a.shutdown(socket.SHUT_WR)
        assert read_frame(b) == b"\x00" * 10          # short read at EOF: the decoder's problem
    finally:
        a.close()
        b.close()


def test_state_aux_layout_is_role_high_byte_disk_low_byte():
    frame = events.encode_control(events.PeerState(Role.Primary, DiskState.UpToDate, 5))
    aux = struct.unpack(">I", frame[28:32])[0]
    assert aux == (1 << 8) | 8


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.builds(events.PeerState, st.sampled_from(list(Role)), st.sampled_from(list(DiskState)),
              st.integers(0, 2**64 - 1)),
    st.builds(events.SyncUuid, st.integers(5, 2**64 - 1), st.booleans()),
    st.builds(events.PeerUuids, st.builds(GenerationUuids, st.integers(0, 2**64 - 1),
                                          st.integers(0, 2**64 - 1),
                                          st.tuples(st.integers(0, 2**64 - 1),
                                                    st.integers(0, 2**64 - 1))),
              st.sampled_from([UuidFlag(0), UuidFlag.SKIP_INITIAL_SYNC])),
    st.just(events.FullSyncRequest()), st.just(events.Outdate()), st.just(events.PeerDisconnect()),
    st.builds(events.PeerRefuse, st.text(max_size=40)),
    st.builds(lambda a, n, alg, ok: events.VerifyStart(a * 4096, a * 4096 + n, alg, ok),
              st.integers(0, 2**40), st.integers(0, 2**40),
              st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
              st.booleans()),
    st.builds(events.VerifyEnd, st.sampled_from(list(VerifyOutcome)), st.integers(0, 2**64 - 1),
              st.text(max_size=40))))
def test_fuzz_every_message_round_trips_through_the_one_codec(msg):
    assert events.decode_control(events.encode_control(msg)) == msg


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_fuzz_frame_length_refuses_or_bounds_any_header(head):
    try:
        n = frame_length(head, 4096)
    except RemoteProtocolError:
        return
    assert 0 <= n <= 4096
