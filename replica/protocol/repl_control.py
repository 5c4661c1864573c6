# SPDX-License-Identifier: GPL-2.0-or-later
"""Replication control messages after the handshake, sans-I/O: one encoder, one decoder.

Owns the messages a connected pair exchanges beside the data stream (C relays each whole
control frame to Python through its control queue; Python sends them with the engine's
send_control). `encode_control(msg)` turns a message into one frame, `decode_control(raw)` one
whole frame into its message or raises RemoteProtocolError naming the field. No I/O, clock or
logging; layouts in repl_wire.py, the frame codec in repl_codec.py.

    message          frame         fields                            meaning
    PeerState        STATE         aux = role << 8 | disk,           role/disk changed
                                   offset = current UUID
    SyncUuid         SYNC_UUID     offset = sync UUID, aux = full    SyncSource starts a resync
    PeerUuids        UUIDS         tuple + flags                     resync finished (target adopts
                                                                     it) or SKIP_INITIAL_SYNC
    FullSyncRequest  SYNC_DECISION aux = FullSyncSource              `invalidate` on the peer
    Outdate          OUTDATE                                         graceful disconnect of a Primary
    PeerDisconnect   DISCONNECT                                      `disconnect` on the peer
    PeerRefuse       REFUSE        payload = reason                  the peer drops the link
    ResyncPause      RESYNC_PAUSE  aux = paused (0/1)                pause-sync/resume-sync or
                                                                     resync-after on the peer
    VerifyStart      OV_START      offset = start, payload = end     `verify` on the peer: we
                                   + verify-alg, aux = accepted      become VerifyT (and answer
                                                                     it with accepted = 1)
    VerifyEnd        OV_END        aux = outcome, offset = blocks    verify finished, stopped
                                   out of sync, payload = reason     or refused
    Sizes            SIZES         offset = size, aux = SizesFlag,   online resize: asked,
                                   payload = max size + reason       agreed (REPLY), done (DONE)

Rules: a frame decodes to exactly one message (trailing bytes are an error); a STATE aux with
bits above the role byte, an unknown role or disk, a SYNC_UUID or RESYNC_PAUSE with aux other
than 0/1 or a reserved UUID (0, 4) are refused; so are an OV_START whose start is not 4 KiB
aligned or lies past its end, whose aux is not 0/1 or whose alg is not printable ASCII, and
an OV_END with an unknown outcome, and a SIZES whose sizes are not 4 KiB multiples or whose
aux has unknown bits; any other packet type is unexpected after the handshake.
"""
from dataclasses import dataclass

from replica.errors import RemoteProtocolError
from replica.protocol import repl_wire as wire
from replica.protocol.repl_codec import (
    Frame,
    ReplDecoder,
    decode_uuids,
    disk_from_wire,
    disk_to_wire,
    encode_frame,
    encode_refuse,
    encode_uuids,
    role_from_wire,
    role_to_wire,
)
from replica.protocol.repl_wire import ReplPacket
from replica.states import DiskState, Role
from replica.uuids import GenerationUuids, SyncDecision, UuidFlag

FULL_SYNC_SOURCE = SyncDecision.FullSyncSource.hg & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class PeerState:
    role: Role
    disk: DiskState
    current_uuid: int = 0


@dataclass(frozen=True, slots=True)
class SyncUuid:
    uuid: int
    full: bool


@dataclass(frozen=True, slots=True)
class PeerUuids:
    uuids: GenerationUuids
    flags: UuidFlag = UuidFlag(0)


@dataclass(frozen=True, slots=True)
class FullSyncRequest:
    pass


@dataclass(frozen=True, slots=True)
class Outdate:
    pass


@dataclass(frozen=True, slots=True)
class PeerDisconnect:
    pass


@dataclass(frozen=True, slots=True)
class PeerRefuse:
    reason: str


@dataclass(frozen=True, slots=True)
class ResyncPause:
    paused: bool


@dataclass(frozen=True, slots=True)
class VerifyStart:
    start: int              # first byte, 4 KiB aligned
    end: int                # one past the last byte
    alg: str                # verify-alg of the VerifyS: the VerifyT must have the same
    accepted: bool = False  # the VerifyT's answer: it is VerifyT now, requests may follow


@dataclass(frozen=True, slots=True)
class VerifyEnd:
    outcome: wire.VerifyOutcome
    oos_blocks: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Sizes:
    size: int               # asked (0: the largest both hold), agreed (REPLY; 0: refused)
    max_size: int           # the sender's largest possible data size now
    flags: wire.SizesFlag = wire.SizesFlag(0)
    reason: str = ""        # a REPLY with size 0: why the peer refused


ControlMessage = (PeerState | SyncUuid | PeerUuids | FullSyncRequest | Outdate | PeerDisconnect
                  | PeerRefuse | ResyncPause | VerifyStart | VerifyEnd | Sizes)


def encode_control(msg: ControlMessage) -> bytes:
    """One control message -> one whole frame."""
    if isinstance(msg, PeerState):
        return encode_frame(Frame(ReplPacket.STATE, offset=msg.current_uuid,
                                  aux=role_to_wire(msg.role) << 8 | disk_to_wire(msg.disk)))
    if isinstance(msg, SyncUuid):
        return encode_frame(Frame(ReplPacket.SYNC_UUID, offset=msg.uuid, aux=int(msg.full)))
    if isinstance(msg, PeerUuids):
        return encode_uuids(msg.uuids, msg.flags)
    if isinstance(msg, FullSyncRequest):
        return encode_frame(Frame(ReplPacket.SYNC_DECISION, aux=FULL_SYNC_SOURCE))
    if isinstance(msg, Outdate):
        return encode_frame(Frame(ReplPacket.OUTDATE))
    if isinstance(msg, PeerDisconnect):
        return encode_frame(Frame(ReplPacket.DISCONNECT))
    if isinstance(msg, ResyncPause):
        return encode_frame(Frame(ReplPacket.RESYNC_PAUSE, aux=int(msg.paused)))
    if isinstance(msg, VerifyStart):
        return encode_frame(Frame(ReplPacket.OV_START, offset=msg.start, aux=int(msg.accepted),
                                  payload=wire.OV_START_BODY.pack(msg.end)
                                  + msg.alg.encode("ascii")))
    if isinstance(msg, Sizes):
        return encode_frame(Frame(ReplPacket.SIZES, offset=msg.size, aux=int(msg.flags),
                                  payload=wire.SIZES_BODY.pack(msg.max_size)
                                  + msg.reason.encode("utf-8")[:wire.REFUSE_MAX]))
    if isinstance(msg, VerifyEnd):
        return encode_frame(Frame(ReplPacket.OV_END, aux=msg.outcome, offset=msg.oos_blocks,
                                  payload=msg.reason.encode("utf-8")[:wire.REFUSE_MAX]))
    return encode_refuse(msg.reason)


def decode_control(raw: bytes) -> ControlMessage:
    """One whole control frame (header + payload) -> its message; RemoteProtocolError otherwise."""
    dec = ReplDecoder(max_payload=wire.MAX_CONTROL)
    dec.receive_data(raw)
    dec.receive_data(b"")
    frame = dec.next_event()
    if not isinstance(frame, Frame) or dec.buffered:
        raise RemoteProtocolError(f"repl: control frame: expected exactly one frame in "
                                  f"{len(raw)} bytes")
    t = frame.type
    if t is ReplPacket.STATE:
        role, disk = role_from_wire((frame.aux >> 8) & 0xFF), disk_from_wire(frame.aux & 0xFF)
        if role is None or disk is None or frame.aux >> 16:
            raise RemoteProtocolError(f"repl: STATE: invalid role/disk: aux=0x{frame.aux:08x}")
        return PeerState(role, disk, frame.offset)
    if t is ReplPacket.SYNC_UUID:
        if frame.aux not in (0, 1) or frame.offset in (0, 4):
            raise RemoteProtocolError(f"repl: SYNC_UUID: invalid: uuid={frame.offset:016X} "
                                      f"aux={frame.aux}")
        return SyncUuid(frame.offset, bool(frame.aux))
    if t is ReplPacket.UUIDS:
        uuids, flags = decode_uuids(frame)
        return PeerUuids(uuids, flags)
    if t is ReplPacket.SYNC_DECISION and frame.aux == FULL_SYNC_SOURCE:
        return FullSyncRequest()
    if t is ReplPacket.OUTDATE:
        return Outdate()
    if t is ReplPacket.DISCONNECT:
        return PeerDisconnect()
    if t is ReplPacket.RESYNC_PAUSE:
        if frame.aux not in (0, 1) or frame.payload:
            raise RemoteProtocolError(f"repl: RESYNC_PAUSE: invalid: aux={frame.aux} "
                                      f"payload={len(frame.payload)} bytes")
        return ResyncPause(bool(frame.aux))
    if t is ReplPacket.REFUSE:
        return PeerRefuse(frame.payload.decode("utf-8", "replace"))
    if t is ReplPacket.OV_START:
        (end,) = wire.OV_START_BODY.unpack_from(frame.payload)
        alg = frame.payload[wire.OV_START_BODY.size:]
        if (frame.offset % wire.BLOCK_SIZE or frame.offset > end or frame.aux > 1 or not alg.isascii()
                or not alg.decode("ascii").isprintable()):
            raise RemoteProtocolError(f"repl: OV_START: invalid: start={frame.offset} end={end} "
                                      f"alg={alg!r}")
        return VerifyStart(frame.offset, end, alg.decode("ascii"), bool(frame.aux))
    if t is ReplPacket.OV_END:
        if frame.aux not in {o.value for o in wire.VerifyOutcome}:
            raise RemoteProtocolError(f"repl: OV_END: unknown outcome {frame.aux}")
        return VerifyEnd(wire.VerifyOutcome(frame.aux), frame.offset,
                         frame.payload.decode("utf-8", "replace"))
    if t is ReplPacket.SIZES:
        (max_size,) = wire.SIZES_BODY.unpack_from(frame.payload)
        if frame.aux & ~int(wire.SizesFlag(7)) or frame.offset % wire.BLOCK_SIZE \
                or max_size % wire.BLOCK_SIZE:
            raise RemoteProtocolError(f"repl: SIZES: invalid: size={frame.offset} "
                                      f"max={max_size} aux=0x{frame.aux:x}")
        return Sizes(frame.offset, max_size, wire.SizesFlag(frame.aux),
                     frame.payload[wire.SIZES_BODY.size:].decode("utf-8", "replace"))
    raise RemoteProtocolError(f"repl: unexpected control frame {t.name} (aux={frame.aux}) after "
                              "the handshake")
