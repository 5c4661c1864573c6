# SPDX-License-Identifier: GPL-2.0-or-later
"""Replication peer link, sans-I/O: the frame codec and the bodies of handshake/control packets.

Owns: `ReplDecoder` (bytes -> validated `Frame`s, any peer link packet; NEED_DATA, CLOSED),
`encode_frame`, and the encoders/decoders of each body: HELLO (`HelloInfo` with the
`LinkSettings` both sides must share), UUIDS, REFUSE, BITMAP slices and header-only
packets. Control messages after the handshake: repl_control.py.
Layouts: repl_wire.py. The connect handshake built on it: repl.py. No I/O, clock or
logging; every malformed input raises RemoteProtocolError naming the field.
"""
from dataclasses import dataclass
from typing import Protocol

from replica.errors import LocalProtocolError, RemoteProtocolError
from replica.protocol import repl_wire as wire
from replica.protocol.repl_wire import (
    BITMAP_LAST,
    DataFlag,
    Feature,
    NetFlag,
    RefuseCode,
    ReplPacket,
    WireDisk,
    WireProtocol,
    WireRole,
)
from replica.states import DiskState, Role
from replica.uuids import GenerationUuids, UuidFlag


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class NetOptions(Protocol):
    """The net options a LinkSettings is made from (replica.config's net section)."""

    @property
    def protocol(self) -> str: ...
    @property
    def allow_two_primaries(self) -> bool: ...
    @property
    def after_sb_0pri(self) -> str: ...
    @property
    def after_sb_1pri(self) -> str: ...
    @property
    def after_sb_2pri(self) -> str: ...
    @property
    def data_integrity_alg(self) -> str | None: ...
    @property
    def csums_alg(self) -> str | None: ...


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")

_ROLE_TO_WIRE = {Role.Unknown: WireRole.UNKNOWN, Role.Primary: WireRole.PRIMARY,
                 Role.Secondary: WireRole.SECONDARY}
_WIRE_TO_ROLE: dict[int, Role] = {int(v): k for k, v in _ROLE_TO_WIRE.items()}
_DISK_TO_WIRE = {d: WireDisk[d.name.upper()] for d in DiskState}
_WIRE_TO_DISK: dict[int, DiskState] = {int(v): k for k, v in _DISK_TO_WIRE.items()}


def role_to_wire(role: Role) -> int:
    return int(_ROLE_TO_WIRE[role])


def disk_to_wire(disk: DiskState) -> int:
    return int(_DISK_TO_WIRE[disk])


def role_from_wire(value: int) -> Role | None:
    """The Role numbered `value` on the wire, None if no role has that number."""
    return _WIRE_TO_ROLE.get(value)


def disk_from_wire(value: int) -> DiskState | None:
    return _WIRE_TO_DISK.get(value)
_ALLOWED_FLAGS = {ReplPacket.DATA: DataFlag.FUA | DataFlag.NOT_LOCAL,
                  ReplPacket.TRIM: DataFlag.FUA | DataFlag.NOT_LOCAL,
                  ReplPacket.ZEROES: DataFlag.FUA | DataFlag.NO_HOLE | DataFlag.NOT_LOCAL,
                  ReplPacket.BITMAP: BITMAP_LAST, ReplPacket.HELLO: 0x1,
                  ReplPacket.OV_REQUEST: 0xFF}           # OV_REQUEST: the digest number


# --- frames ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Frame:
    type: ReplPacket
    flags: int = 0
    id: int = 0
    offset: int = 0
    aux: int = 0
    payload: bytes = b""


def frame_length(header: bytes, max_payload: int) -> int:
    """The payload length announced by one whole frame header (HEADER_SIZE bytes), for a driver
    that must read exactly one frame and no byte beyond it; RemoteProtocolError on a bad magic
    or a length above `max_payload`."""
    magic, _t, _f, _id, _o, length, _a = wire.HEADER.unpack(header)
    if magic != wire.REPL_MAGIC:
        raise RemoteProtocolError(f"repl: invalid frame: magic=0x{magic:08x}, expected "
                                  f"0x{wire.REPL_MAGIC:08x} (\"RPL1\")")
    if length > max_payload:
        raise RemoteProtocolError(f"repl handshake: frame of {length} bytes exceeds {max_payload}")
    return int(length)


def encode_frame(frame: Frame) -> bytes:
    """Header + payload; raises LocalProtocolError if the frame breaks the wire rules."""
    try:
        _check_frame(frame.type, frame.flags, len(frame.payload), ctx="encode")
    except RemoteProtocolError as e:
        raise LocalProtocolError(str(e)) from None
    return wire.HEADER.pack(wire.REPL_MAGIC, frame.type, frame.flags, frame.id, frame.offset,
                            len(frame.payload), frame.aux) + frame.payload


def _check_frame(ptype: ReplPacket, flags: int, length: int, ctx: str = "invalid frame") -> None:
    lo, hi = wire.PAYLOAD_LIMITS.get(ptype, (0, 0))
    if not lo <= length <= hi:
        raise RemoteProtocolError(f"repl: {ctx}: {ptype.name}: length={length} "
                                  f"outside {lo}..{hi}")
    if flags & ~int(_ALLOWED_FLAGS.get(ptype, 0)):
        raise RemoteProtocolError(f"repl: {ctx}: {ptype.name}: flags=0x{flags:04x} "
                                  f"has unknown bits")


class ReplDecoder:
    """Stream decoder for peer-link frames: `receive_data(bytes)`, then `next_event()`.

    Returns a Frame, NEED_DATA, or CLOSED after EOF (b"") on a frame boundary. Every field is
    validated as soon as the 32-byte header is complete, before any payload is buffered.
    """

    def __init__(self, max_payload: int = wire.MAX_PAYLOAD):
        self._buf = bytearray()
        self._eof = False
        self._header: tuple[ReplPacket, int, int, int, int, int] | None = None
        self._error: RemoteProtocolError | None = None
        self.max_payload = min(max_payload, wire.MAX_PAYLOAD)

    def receive_data(self, data: bytes) -> None:
        if self._eof and data:
            raise LocalProtocolError("repl: receive_data after EOF")
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """Hand the unparsed bytes over (e.g. to the C data path after the handshake)."""
        data, self._buf = bytes(self._buf), bytearray()
        return data

    def next_event(self) -> "Frame | _Sentinel":
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as e:
            self._error = e
            raise

    def _next(self) -> "Frame | _Sentinel":
        if self._header is None:
            if len(self._buf) < wire.HEADER_SIZE:
                return self._need()
            magic, ptype, flags, fid, offset, length, aux = wire.HEADER.unpack_from(self._buf)
            if magic != wire.REPL_MAGIC:
                raise RemoteProtocolError(f"repl: invalid frame: magic=0x{magic:08x}, "
                                          f"expected 0x{wire.REPL_MAGIC:08x} (\"RPL1\")")
            try:
                packet = ReplPacket(ptype)
            except ValueError:
                raise RemoteProtocolError(f"repl: invalid frame: type=0x{ptype:04x}: "
                                          "unknown packet type") from None
            if length > self.max_payload:
                raise RemoteProtocolError(f"repl: invalid frame: {packet.name}: length={length} "
                                          f"exceeds {self.max_payload}")
            _check_frame(packet, flags, length)
            self._header = (packet, flags, fid, offset, length, aux)
            del self._buf[:wire.HEADER_SIZE]
        ptype, flags, fid, offset, length, aux = self._header
        if len(self._buf) < length:
            return self._need()
        payload = bytes(self._buf[:length])
        del self._buf[:length]
        self._header = None
        return Frame(ptype, flags, fid, offset, aux, payload)

    def _need(self) -> _Sentinel:
        if self._eof:
            if self._buf or self._header is not None:
                raise RemoteProtocolError("repl: connection closed in the middle of a frame: "
                                          f"{len(self._buf)} bytes buffered")
            return CLOSED
        return NEED_DATA


# --- HELLO and control bodies ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The net options both nodes must share (DRBD's P_PROTOCOL); a mismatch is refused."""

    protocol: str = "C"
    allow_two_primaries: bool = False
    after_sb_0pri: str = "disconnect"
    after_sb_1pri: str = "disconnect"
    after_sb_2pri: str = "disconnect"
    data_integrity_alg: str = ""         # empty: off
    csums_alg: str = ""                  # empty: off (DRBD: "Different csums-alg settings")

    @classmethod
    def from_net(cls, net: "NetOptions") -> "LinkSettings":
        """From any object with the config's net option attribute names."""
        return cls(net.protocol, net.allow_two_primaries, net.after_sb_0pri, net.after_sb_1pri,
                   net.after_sb_2pri, net.data_integrity_alg or "", net.csums_alg or "")

    def mismatches(self, peer: "LinkSettings") -> list[str]:
        """One phrase per setting that differs, in DRBD's words; empty if compatible."""
        out: list[str] = []
        if self.protocol != peer.protocol:
            out.append(f"incompatible communication protocols: local protocol {self.protocol}, "
                       f"peer protocol {peer.protocol}")
        for name in ("after_sb_0pri", "after_sb_1pri", "after_sb_2pri", "allow_two_primaries",
                     "data_integrity_alg", "csums_alg"):
            mine, theirs = getattr(self, name), getattr(peer, name)
            if mine != theirs:
                out.append(f"incompatible {name.replace('_', '-')} settings: local "
                           f"{_setting_text(mine)}, peer {_setting_text(theirs)}")
        return out


def _setting_text(value: str | bool) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value or "off"


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """What a node announces on connect (its side of DRBD's P_PROTOCOL/P_UUIDS/P_SIZES/P_STATE)."""

    node_name: str
    data_size: int
    uuids: GenerationUuids
    role: Role = Role.Secondary
    disk: DiskState = DiskState.Inconsistent
    flags: UuidFlag = UuidFlag(0)
    features: Feature = wire.FEATURES_ALL
    bits: int = 0                        # dirty blocks in our bitmap (after-sb policies)
    settings: LinkSettings = LinkSettings()


@dataclass(frozen=True, slots=True)
class DecodedHello:
    info: HelloInfo
    version_min: int
    version_max: int
    alg: str
    initiator: bool


def encode_hello(info: HelloInfo, alg: str, initiator: bool,
                 version_min: int = wire.PROTOCOL_VERSION_MIN,
                 version_max: int = wire.PROTOCOL_VERSION_MAX) -> bytes:
    name = info.node_name.encode("utf-8")
    st = info.settings
    try:
        algb = alg.encode("ascii")
        policies = [p.encode("ascii") for p in (st.after_sb_0pri, st.after_sb_1pri,
                                                st.after_sb_2pri)]
        integrity = st.data_integrity_alg.encode("ascii")
        csums = st.csums_alg.encode("ascii")
        proto = WireProtocol[st.protocol]
    except (UnicodeEncodeError, KeyError):
        raise LocalProtocolError(f"repl: HELLO: bad alg or net settings: {alg!r} {st}") from None
    if (not 0 < len(name) <= wire.NODE_NAME_MAX or len(algb) > wire.ALG_NAME_MAX
            or len(integrity) > wire.ALG_NAME_MAX or len(csums) > wire.ALG_NAME_MAX
            or any(len(p) > wire.POLICY_MAX for p in policies)):
        raise LocalProtocolError(f"repl: HELLO: bad node name, alg or net settings: "
                                 f"{info.node_name!r} {alg!r} {st}")
    u = info.uuids
    net_flags = NetFlag.ALLOW_TWO_PRIMARIES if st.allow_two_primaries else NetFlag(0)
    fixed = wire.HELLO_FIXED.pack(version_min, version_max, int(info.features), info.data_size,
                                  u.current, u.bitmap, u.history[0], u.history[1], info.bits,
                                  int(info.flags),
                                  _ROLE_TO_WIRE[info.role], _DISK_TO_WIRE[info.disk], len(name),
                                  len(algb), proto, int(net_flags), *map(len, policies),
                                  len(integrity), len(csums))
    body = fixed + name + algb + b"".join(policies) + integrity + csums
    return encode_frame(Frame(ReplPacket.HELLO, flags=1 if initiator else 0, payload=body))


def hello_versions(frame: Frame) -> tuple[int, int]:
    """The version range a HELLO of any protocol version announces (its first 4 bytes)."""
    vmin, vmax = wire.VERSIONS.unpack_from(frame.payload)
    if vmin > vmax:
        raise RemoteProtocolError(f"repl: invalid HELLO: version range {vmin}..{vmax}")
    return vmin, vmax


def decode_hello(frame: Frame) -> DecodedHello:
    """A HELLO of this layout (check hello_versions() first); RemoteProtocolError if malformed."""
    p = frame.payload
    if len(p) < wire.HELLO_FIXED.size:
        raise RemoteProtocolError(f"repl: invalid HELLO: length={len(p)}, expected at least "
                                  f"{wire.HELLO_FIXED.size}")
    (vmin, vmax, features, size, cur, bm, h0, h1, bits, uflags, role, disk, name_len,
     alg_len, proto, net_flags, *lens) = wire.HELLO_FIXED.unpack_from(p)
    policy_lens, integrity_len, csums_len = lens[:3], lens[3], lens[4]
    if len(p) != wire.HELLO_FIXED.size + name_len + alg_len + sum(lens):
        raise RemoteProtocolError(f"repl: invalid HELLO: length={len(p)}, name_len={name_len} "
                                  f"alg_len={alg_len} settings_len={sum(lens)}")
    if (name_len == 0 or alg_len > wire.ALG_NAME_MAX or integrity_len > wire.ALG_NAME_MAX
            or csums_len > wire.ALG_NAME_MAX or not all(0 < n <= wire.POLICY_MAX for n in policy_lens)):
        raise RemoteProtocolError(f"repl: invalid HELLO: name_len={name_len} alg_len={alg_len} "
                                  f"after-sb lengths={policy_lens} "
                                  f"data-integrity-alg length={integrity_len} "
                                  f"csums-alg length={csums_len}")
    if vmin > vmax:
        raise RemoteProtocolError(f"repl: invalid HELLO: version range {vmin}..{vmax}")
    try:
        proto_e = WireProtocol(proto)
    except ValueError:
        raise RemoteProtocolError(f"repl: invalid HELLO: protocol={proto}") from None
    if net_flags & ~int(NetFlag.ALLOW_TWO_PRIMARIES):
        raise RemoteProtocolError(f"repl: invalid HELLO: net_flags=0x{net_flags:02x} has "
                                  "unknown bits")
    try:
        role_e = _WIRE_TO_ROLE[WireRole(role)]
    except ValueError:
        raise RemoteProtocolError(f"repl: invalid HELLO: role={role}") from None
    try:
        disk_e = _WIRE_TO_DISK[WireDisk(disk)]
    except ValueError:
        raise RemoteProtocolError(f"repl: invalid HELLO: disk={disk}") from None
    off = wire.HELLO_FIXED.size
    fields = []
    for n in (name_len, alg_len, *lens):
        fields.append(p[off:off + n])
        off += n
    try:
        name = fields[0].decode("utf-8")
        alg, asb0, asb1, asb2, integrity, csums = (f.decode("ascii") for f in fields[1:])
    except UnicodeDecodeError as e:
        raise RemoteProtocolError(f"repl: invalid HELLO: node name, alg or net settings: "
                                  f"{e.reason}") from None
    if not all(x.isprintable() for x in (name, alg, asb0, asb1, asb2, integrity, csums)):
        raise RemoteProtocolError("repl: invalid HELLO: unprintable node name, alg or net "
                                  "settings")
    settings = LinkSettings(proto_e.name, bool(net_flags & NetFlag.ALLOW_TWO_PRIMARIES), asb0,
                            asb1, asb2, integrity, csums)
    info = HelloInfo(name, size, GenerationUuids(cur, bm, (h0, h1)), role_e, disk_e,
                     UuidFlag(uflags & 0xF), Feature(features & int(wire.FEATURES_ALL)), bits,
                     settings)
    return DecodedHello(info, vmin, vmax, alg, bool(frame.flags & 1))


def encode_uuids(uuids: GenerationUuids, flags: UuidFlag = UuidFlag(0)) -> bytes:
    return encode_frame(Frame(ReplPacket.UUIDS, payload=wire.UUIDS_BODY.pack(
        uuids.current, uuids.bitmap, uuids.history[0], uuids.history[1], int(flags))))


def decode_uuids(frame: Frame) -> tuple[GenerationUuids, UuidFlag]:
    cur, bm, h0, h1, fl = wire.UUIDS_BODY.unpack(frame.payload)
    return GenerationUuids(cur, bm, (h0, h1)), UuidFlag(fl & 0xF)


def encode_refuse(reason: str, code: RefuseCode = RefuseCode.OTHER) -> bytes:
    return encode_frame(Frame(ReplPacket.REFUSE, aux=int(code),
                              payload=reason.encode("utf-8")[:wire.REFUSE_MAX]))


def encode_simple(ptype: ReplPacket, *, offset: int = 0, aux: int = 0, fid: int = 0) -> bytes:
    """A header-only packet (PING, PING_ACK, SYNC_UUID, OUTDATE, DISCONNECT, RS_DONE...)."""
    return encode_frame(Frame(ptype, id=fid, offset=offset, aux=aux))


def encode_bitmap(encoded: bytes, slice_size: int = wire.BITMAP_SLICE) -> bytes:
    """The encoded bitmap as BITMAP frames of at most `slice_size` payload bytes."""
    out = bytearray()
    total = len(encoded)
    pos = 0
    while True:
        chunk = encoded[pos:pos + slice_size]
        last = pos + len(chunk) >= total
        out += encode_frame(Frame(ReplPacket.BITMAP, flags=BITMAP_LAST if last else 0,
                                  offset=pos, aux=total, payload=chunk))
        pos += len(chunk)
        if last:
            return bytes(out)
