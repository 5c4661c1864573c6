# SPDX-License-Identifier: GPL-2.0-or-later
"""Replication peer link: packet types, header and body layouts. Constants and structs only.

The frame header is FIXED (csrc/wire.h declares the same layout for the C data path)::

     0       4       6       8               16              24      28      32
     +-------+-------+-------+---------------+---------------+-------+-------+
     | magic | type  | flags |      id       |    offset     |length |  aux  |
     +-------+-------+-------+---------------+---------------+-------+-------+
     u32 magic 0x52504C31 (ASCII "RPL1"), u16 type, u16 flags, u64 id, u64 offset,
     u32 length (payload bytes that follow), u32 aux; all big-endian.

Data path packets (0x01-0x3F) are produced and consumed by C; the Python decoder knows them so it
can validate and log them. Handshake and control packets (0x40 and up) are Python's.

Bodies of handshake packets (all big-endian):

    HELLO           HELLO_FIXED, then node name (name_len bytes, UTF-8), cram-hmac-alg name
                    (alg_len bytes, ASCII; empty = no authentication), after-sb-0pri,
                    after-sb-1pri, after-sb-2pri, data-integrity-alg, csums-alg (ASCII, each with its
                    length in HELLO_FIXED; empty alg = off). The version pair comes first so
                    that any future layout can still be told "protocol version mismatch"
    AUTH_CHALLENGE  payload: random challenge, CHALLENGE_MIN..CHALLENGE_MAX bytes
    AUTH_RESPONSE   payload: HMAC digest, RESPONSE_MIN..RESPONSE_MAX bytes
    SYNC_DECISION   no payload; aux = decision (SyncDecision.hg as signed 32-bit), offset = rule
    BITMAP          payload: a slice of the encoded bitmap (replica.bitmap), offset = its byte
                    offset in the encoding, aux = total encoded length, flags BITMAP_LAST
    STATE           no payload; aux = role << 8 | disk, offset = current UUID
    UUIDS           UUIDS_BODY (current, bitmap, history0, history1, uuid flags)
    SYNC_UUID       no payload; offset = the sync UUID the target adopts (DRBD P_SYNC_UUID)
    OUTDATE         no payload: "mark your disk Outdated" (fencing / graceful disconnect)
    OUTDATE_REPLY   no payload; aux = 0 done, else errno-like refusal code
    DISCONNECT      no payload: graceful disconnect follows
    REFUSE          payload: one UTF-8 line, why the sender drops the connection; aux = a
                    RefuseCode (the peer gave up for good on AUTH and INCOMPATIBLE)
    OV_START        online verify begins (the sender is VerifyS): offset = first byte (4 KiB
                    aligned), payload = OV_START_BODY (end byte, u64) + verify-alg (ASCII)
    OV_END          online verify ends: aux = VerifyOutcome, offset = blocks found out of
                    sync by the sender, payload = UTF-8 reason (refused: why)
    SIZES           online resize (DRBD's P_SIZES): offset = the size asked for (0: the
                    largest both can hold) or agreed, aux = SizesFlag, payload = SIZES_BODY
                    (the sender's largest possible data size, u64) + UTF-8 refusal reason

Online verify and data-integrity-alg frames of the data path (C builds and checks them):

    OV_REQUEST      offset, aux = range length (<= MAX_VERIFY_CHUNK), flags = digest number
                    (mirror.h RM_DIGEST_*), payload = one digest per 4 KiB block of the range
    OV_REPLY        offset, aux = range length, payload empty (all equal) or a bit per block,
                    least significant bit first, 1 = differs
    DIGEST          payload = digest of the next DATA/RS_DATA frame's payload (same id, offset;
                    aux = its length)
"""
import enum
import struct

REPL_MAGIC = 0x52504C31              # ASCII "RPL1"
HEADER = struct.Struct(">IHHQQII")    # magic, type, flags, id, offset, length, aux
HEADER_SIZE = HEADER.size             # 32
assert HEADER_SIZE == 32

MAX_PAYLOAD = 64 * 1024 * 1024        # any length above this is a protocol violation

PROTOCOL_VERSION_MIN = 2             # 2: HELLO carries the net settings both sides must share
PROTOCOL_VERSION_MAX = 2
VERSIONS = struct.Struct(">HH")      # the first 4 bytes of every HELLO, in every version


class ReplPacket(enum.IntEnum):
    DATA = 0x01
    TRIM = 0x02
    ZEROES = 0x03
    FLUSH = 0x04
    READ_REQUEST = 0x05       # a Diskless node reads through its peer: aux = length
    RECV_ACK = 0x10
    WRITE_ACK = 0x11
    FLUSH_ACK = 0x12
    NEG_ACK = 0x13
    READ_REPLY = 0x14         # answers READ_REQUEST id: payload = the data, or aux = errno
    PING = 0x20
    PING_ACK = 0x21
    RS_REQUEST = 0x30
    RS_DATA = 0x31
    RS_DONE = 0x32
    OV_REQUEST = 0x38
    OV_REPLY = 0x39
    DIGEST = 0x3A
    HELLO = 0x40
    AUTH_CHALLENGE = 0x41
    AUTH_RESPONSE = 0x42
    SYNC_DECISION = 0x43
    BITMAP = 0x44
    STATE = 0x45
    UUIDS = 0x46
    SYNC_UUID = 0x47
    OUTDATE = 0x48
    OUTDATE_REPLY = 0x49
    DISCONNECT = 0x4A
    REFUSE = 0x4B
    RESYNC_PAUSE = 0x58       # aux = 1: the sender paused the resync (pause-sync, resync-after)
    OV_START = 0x5A
    OV_END = 0x5B
    SIZES = 0x5C


class DataFlag(enum.IntFlag):
    """Flags of DATA/TRIM/ZEROES (csrc/wire.h RPL_FLAG_*)."""

    FUA = 0x0001
    NO_HOLE = 0x0002          # ZEROES: write zeroes, do not punch a hole
    NOT_LOCAL = 0x0004        # the sender's disk failed and lacks this write: mark it out of sync


BITMAP_LAST = 0x0001                  # BITMAP flags: this slice ends the encoding
MAX_CONTROL = 64 * 1024               # largest control frame C relays after the handshake


class Feature(enum.IntFlag):
    """HELLO feature bits; the connection uses the intersection of both sides."""

    TRIM = 0x0001
    ZEROES = 0x0002
    FUA = 0x0004
    FLUSH = 0x0008
    RLE_BITMAP = 0x0010


FEATURES_ALL = Feature.TRIM | Feature.ZEROES | Feature.FUA | Feature.FLUSH | Feature.RLE_BITMAP


class WireRole(enum.IntEnum):
    UNKNOWN = 0
    PRIMARY = 1
    SECONDARY = 2


class WireDisk(enum.IntEnum):
    DISKLESS = 0
    ATTACHING = 1
    FAILED = 2
    NEGOTIATING = 3
    INCONSISTENT = 4
    OUTDATED = 5
    DUNKNOWN = 6
    CONSISTENT = 7
    UPTODATE = 8


class WireProtocol(enum.IntEnum):
    """The replication protocol letter (`net { protocol A|B|C; }`), as DRBD numbers it."""

    A = 1
    B = 2
    C = 3


class NetFlag(enum.IntFlag):
    ALLOW_TWO_PRIMARIES = 0x01


class RefuseCode(enum.IntEnum):
    """REFUSE aux: why the sender drops the connection."""

    OTHER = 0                 # e.g. version mismatch, malformed frame: the sender retries
    AUTH = 1                  # authentication failed: the sender went StandAlone
    INCOMPATIBLE = 2          # net settings differ (protocol...): the sender went StandAlone


class VerifyOutcome(enum.IntEnum):
    """OV_END aux: how an online verify ended."""

    FINISHED = 0              # every block of the range compared
    STOPPED = 1               # stopped early (the sender's disconnect, a local error)
    REFUSED = 2               # the VerifyT would not start (verify-alg differs, busy...)


class SizesFlag(enum.IntFlag):
    """SIZES aux: which step of a resize (replica.resize) this is."""

    ASSUME_CLEAN = 0x1        # the grown area is not resynced (drbdadm resize --assume-clean)
    REPLY = 0x2               # the peer resized (offset = the agreed size) or refused (0, reason)
    DONE = 0x4                # the asking node resized too: the resync of the new area may start


SIZES_BODY = struct.Struct(">Q")      # the sender's largest possible data size; a reason follows
OV_START_BODY = struct.Struct(">Q")   # end byte of the range; the alg name follows
MAX_VERIFY_CHUNK = 1024 * 1024        # = RM_MAX_VERIFY_CHUNK (csrc/mirror.h)
DIGEST_MAX = 64                       # = RM_DIGEST_MAX_SIZE
BLOCK_SIZE = 4096


# HELLO fixed part: version_min u16, version_max u16, features u32, data_size u64,
# current u64, bitmap u64, history0 u64, history1 u64, bits u64 (dirty blocks in the bitmap,
# DRBD's "bits:" used by after-sb policies), uuid_flags u32, role u8, disk u8, name_len u8,
# alg_len u8, protocol u8 (WireProtocol), net_flags u8 (NetFlag), asb0_len u8, asb1_len u8,
# asb2_len u8, integrity_alg_len u8, csums_alg_len u8.
HELLO_FIXED = struct.Struct(">HHIQQQQQQIBBBBBBBBBBB")
NODE_NAME_MAX = 255
ALG_NAME_MAX = 64
POLICY_MAX = 80                       # "discard-node-" + a node name
HELLO_MAX = HELLO_FIXED.size + NODE_NAME_MAX + 3 * ALG_NAME_MAX + 3 * POLICY_MAX

UUIDS_BODY = struct.Struct(">QQQQI")

CHALLENGE_MIN = 16
CHALLENGE_MAX = 64
CHALLENGE_SIZE = 32
RESPONSE_MIN = 16
RESPONSE_MAX = 64
REFUSE_MAX = 1024
BITMAP_SLICE = 1024 * 1024            # encoder's slice size; the decoder accepts up to MAX_PAYLOAD

# Payload length rules per type: (min, max). Types absent here carry no payload (0, 0).
PAYLOAD_LIMITS: dict[ReplPacket, tuple[int, int]] = {
    ReplPacket.DATA: (0, MAX_PAYLOAD),
    ReplPacket.RS_DATA: (0, MAX_PAYLOAD),
    ReplPacket.READ_REPLY: (0, MAX_PAYLOAD),
    ReplPacket.HELLO: (VERSIONS.size, HELLO_MAX),   # the rest is checked once versions match
    ReplPacket.AUTH_CHALLENGE: (CHALLENGE_MIN, CHALLENGE_MAX),
    ReplPacket.AUTH_RESPONSE: (RESPONSE_MIN, RESPONSE_MAX),
    ReplPacket.BITMAP: (0, MAX_PAYLOAD),
    ReplPacket.UUIDS: (UUIDS_BODY.size, UUIDS_BODY.size),
    ReplPacket.REFUSE: (0, REFUSE_MAX),
    ReplPacket.OV_REQUEST: (4, MAX_VERIFY_CHUNK // BLOCK_SIZE * DIGEST_MAX),
    ReplPacket.OV_REPLY: (0, MAX_VERIFY_CHUNK // BLOCK_SIZE // 8),
    ReplPacket.DIGEST: (4, DIGEST_MAX),
    ReplPacket.OV_START: (OV_START_BODY.size + 1, OV_START_BODY.size + ALG_NAME_MAX),
    ReplPacket.OV_END: (0, REFUSE_MAX),
    ReplPacket.SIZES: (SIZES_BODY.size, SIZES_BODY.size + REFUSE_MAX),
}
