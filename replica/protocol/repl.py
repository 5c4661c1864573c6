# SPDX-License-Identifier: GPL-2.0-or-later
"""Replication peer link, sans-I/O: frame codec, control messages and the connect handshake.

Owns: `ReplDecoder` (bytes -> validated `Frame`s, any peer link packet), the `encode_*`
helpers, and `ReplHandshake`, the h11-style state machine run on every new TCP connection
before the C data path takes the socket. Layouts: repl_wire.py. No I/O, clock or logging: the
caller (peer_link.py) feeds bytes, sends `data_to_send()`, logs events naming the peer.

Handshake (both sides run the same machine; `is_initiator` is the side that connected)::

    START ──(HELLO [+ AUTH_CHALLENGE] queued at creation)──> WAIT_HELLO
    WAIT_HELLO  ──peer HELLO, versions overlap──> WAIT_AUTH (secret set) | DECIDE
                ──no common version / both initiators──> FAILED (HandshakeFailed, REFUSE sent)
                ──cram-hmac-alg differs──> FAILED (AuthFailed, REFUSE AUTH sent)
    WAIT_AUTH   ──peer AUTH_CHALLENGE──> send AUTH_RESPONSE (HMAC of it, our side's label)
                ──peer AUTH_RESPONSE verifies──> DECIDE (Authenticated)
                ──alg/secret mismatch, bad response, reflected challenge──> FAILED (AuthFailed)
    DECIDE      net settings differ (protocol, after-sb-*, allow-two-primaries,
                data-integrity-alg, discard-my-data on both) ──> FAILED (Incompatible,
                REFUSE INCOMPATIBLE sent; DRBD's receive_protocol() checks, both sides see it)
                else emit PeerHello, sync_handshake() on both tuples, send SYNC_DECISION
                ──> WAIT_DECISION
    WAIT_DECISION ──peer decision == mirror of ours──> WAIT_BITMAP (bitmap resync) | DONE
                  ──mismatch──> FAILED (HandshakeFailed)
    WAIT_BITMAP ──peer BITMAP ... BITMAP_LAST──> DONE (PeerBitmap, then HandshakeDone)
    any         ──EOF──> FAILED (HandshakeFailed "connection closed by peer")
    any         ──peer REFUSE──> FAILED (PeerRefused with the peer's reason and RefuseCode)
    any         ──malformed/unexpected frame──> ERROR (RemoteProtocolError raised)

Authentication is mutual challenge-response (DRBD `cram-hmac-alg` + `shared-secret`): each side
sends a random challenge and answers the peer's with
HMAC(secret, LABEL + side + challenge + the responder's own HELLO payload), `side` being b"I"
for the initiator and b"A" for the acceptor, so a response can never be reflected back to its
author, and the HELLO (UUIDs, role, size) is authenticated too, not only the connection; a
challenge equal to our own is refused outright. Digests are
computed by the injected `mac(alg, key, msg)` (replica.auth, `cryptography`) and compared with
`hmac.compare_digest`. Nothing the peer says (PeerHello) is reported before it authenticated.

AuthFailed and Incompatible are final, as in DRBD ("Authentication of peer failed", "incompatible
communication protocols"): the driver goes StandAlone instead of retrying; the REFUSE it sends
carries the RefuseCode so that a peer which has not noticed yet does the same.
"""
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from replica.bitmap import Bitmap, max_encoded_size
from replica.errors import LocalProtocolError, RemoteProtocolError
from replica.protocol import repl_wire as wire
from replica.protocol.repl_wire import (BITMAP_LAST, DataFlag, Feature, NetFlag, RefuseCode,
                                        ReplPacket, WireDisk, WireProtocol, WireRole)
from replica.states import DiskState, Role
from replica.uuids import (GenerationUuids, SplitBrainPolicy, SyncDecision, SyncVerdict, UuidFlag,
                           UuidReport, sync_handshake)

AUTH_LABEL = b"replica-ha RPL1 auth v1:"

Mac = Callable[[str, bytes, bytes], bytes]


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")

_ROLE_TO_WIRE = {Role.Unknown: WireRole.UNKNOWN, Role.Primary: WireRole.PRIMARY,
                 Role.Secondary: WireRole.SECONDARY}
_WIRE_TO_ROLE = {v: k for k, v in _ROLE_TO_WIRE.items()}
_DISK_TO_WIRE = {d: WireDisk[d.name.upper()] for d in DiskState}
_WIRE_TO_DISK = {v: k for k, v in _DISK_TO_WIRE.items()}
_ALLOWED_FLAGS = {ReplPacket.DATA: DataFlag.FUA, ReplPacket.TRIM: DataFlag.FUA,
                  ReplPacket.ZEROES: DataFlag.FUA | DataFlag.NO_HOLE,
                  ReplPacket.BITMAP: BITMAP_LAST, ReplPacket.HELLO: 0x1}
_SIGNED32 = struct.Struct(">i")
_UNSIGNED32 = struct.Struct(">I")


# --- frames ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Frame:
    type: ReplPacket
    flags: int = 0
    id: int = 0
    offset: int = 0
    aux: int = 0
    payload: bytes = b""


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
        self._header = None
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

    def next_event(self):
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as e:
            self._error = e
            raise

    def _next(self):
        if self._header is None:
            if len(self._buf) < wire.HEADER_SIZE:
                return self._need()
            magic, ptype, flags, fid, offset, length, aux = wire.HEADER.unpack_from(self._buf)
            if magic != wire.REPL_MAGIC:
                raise RemoteProtocolError(f"repl: invalid frame: magic=0x{magic:08x}, "
                                          f"expected 0x{wire.REPL_MAGIC:08x} (\"RPL1\")")
            try:
                ptype = ReplPacket(ptype)
            except ValueError:
                raise RemoteProtocolError(f"repl: invalid frame: type=0x{ptype:04x}: "
                                          "unknown packet type") from None
            if length > self.max_payload:
                raise RemoteProtocolError(f"repl: invalid frame: {ptype.name}: length={length} "
                                          f"exceeds {self.max_payload}")
            _check_frame(ptype, flags, length)
            self._header = (ptype, flags, fid, offset, length, aux)
            del self._buf[:wire.HEADER_SIZE]
        ptype, flags, fid, offset, length, aux = self._header
        if len(self._buf) < length:
            return self._need()
        payload = bytes(self._buf[:length])
        del self._buf[:length]
        self._header = None
        return Frame(ptype, flags, fid, offset, aux, payload)

    def _need(self):
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

    @classmethod
    def from_net(cls, net) -> "LinkSettings":
        """From any object with the config's net option attribute names."""
        return cls(net.protocol, net.allow_two_primaries, net.after_sb_0pri, net.after_sb_1pri,
                   net.after_sb_2pri, net.data_integrity_alg or "")

    def mismatches(self, peer: "LinkSettings") -> list[str]:
        """One phrase per setting that differs, in DRBD's words; empty if compatible."""
        out = []
        if self.protocol != peer.protocol:
            out.append(f"incompatible communication protocols: local protocol {self.protocol}, "
                       f"peer protocol {peer.protocol}")
        for name in ("after_sb_0pri", "after_sb_1pri", "after_sb_2pri", "allow_two_primaries",
                     "data_integrity_alg"):
            mine, theirs = getattr(self, name), getattr(peer, name)
            if mine != theirs:
                out.append(f"incompatible {name.replace('_', '-')} settings: local "
                           f"{_setting_text(mine)}, peer {_setting_text(theirs)}")
        return out


def _setting_text(value) -> str:
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
class _Hello:
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
        proto = WireProtocol[st.protocol]
    except (UnicodeEncodeError, KeyError):
        raise LocalProtocolError(f"repl: HELLO: bad alg or net settings: {alg!r} {st}") from None
    if (not 0 < len(name) <= wire.NODE_NAME_MAX or len(algb) > wire.ALG_NAME_MAX
            or len(integrity) > wire.ALG_NAME_MAX
            or any(len(p) > wire.POLICY_MAX for p in policies)):
        raise LocalProtocolError(f"repl: HELLO: bad node name, alg or net settings: "
                                 f"{info.node_name!r} {alg!r} {st}")
    u = info.uuids
    net_flags = NetFlag.ALLOW_TWO_PRIMARIES if st.allow_two_primaries else NetFlag(0)
    body = wire.HELLO_FIXED.pack(version_min, version_max, int(info.features), info.data_size,
                                 u.current, u.bitmap, u.history[0], u.history[1], info.bits,
                                 int(info.flags),
                                 _ROLE_TO_WIRE[info.role], _DISK_TO_WIRE[info.disk], len(name),
                                 len(algb), proto, int(net_flags), *map(len, policies),
                                 len(integrity)) + name + algb + b"".join(policies) + integrity
    return encode_frame(Frame(ReplPacket.HELLO, flags=1 if initiator else 0, payload=body))


def hello_versions(frame: Frame) -> tuple[int, int]:
    """The version range a HELLO of any protocol version announces (its first 4 bytes)."""
    vmin, vmax = wire.VERSIONS.unpack_from(frame.payload)
    if vmin > vmax:
        raise RemoteProtocolError(f"repl: invalid HELLO: version range {vmin}..{vmax}")
    return vmin, vmax


def decode_hello(frame: Frame) -> _Hello:
    """A HELLO of this layout (check hello_versions() first); RemoteProtocolError if malformed."""
    p = frame.payload
    if len(p) < wire.HELLO_FIXED.size:
        raise RemoteProtocolError(f"repl: invalid HELLO: length={len(p)}, expected at least "
                                  f"{wire.HELLO_FIXED.size}")
    (vmin, vmax, features, size, cur, bm, h0, h1, bits, uflags, role, disk, name_len,
     alg_len, proto, net_flags, *lens) = wire.HELLO_FIXED.unpack_from(p)
    policy_lens, integrity_len = lens[:3], lens[3]
    if len(p) != wire.HELLO_FIXED.size + name_len + alg_len + sum(lens):
        raise RemoteProtocolError(f"repl: invalid HELLO: length={len(p)}, name_len={name_len} "
                                  f"alg_len={alg_len} settings_len={sum(lens)}")
    if (name_len == 0 or alg_len > wire.ALG_NAME_MAX or integrity_len > wire.ALG_NAME_MAX
            or not all(0 < n <= wire.POLICY_MAX for n in policy_lens)):
        raise RemoteProtocolError(f"repl: invalid HELLO: name_len={name_len} alg_len={alg_len} "
                                  f"after-sb lengths={policy_lens} "
                                  f"data-integrity-alg length={integrity_len}")
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
        alg, asb0, asb1, asb2, integrity = (f.decode("ascii") for f in fields[1:])
    except UnicodeDecodeError as e:
        raise RemoteProtocolError(f"repl: invalid HELLO: node name, alg or net settings: "
                                  f"{e.reason}") from None
    if not all(x.isprintable() for x in (name, alg, asb0, asb1, asb2, integrity)):
        raise RemoteProtocolError("repl: invalid HELLO: unprintable node name, alg or net "
                                  "settings")
    settings = LinkSettings(proto_e.name, bool(net_flags & NetFlag.ALLOW_TWO_PRIMARIES), asb0,
                            asb1, asb2, integrity)
    info = HelloInfo(name, size, GenerationUuids(cur, bm, (h0, h1)), role_e, disk_e,
                     UuidFlag(uflags & 0xF), Feature(features & int(wire.FEATURES_ALL)), bits,
                     settings)
    return _Hello(info, vmin, vmax, alg, bool(frame.flags & 1))


def encode_state(role: Role, disk: DiskState, current_uuid: int) -> bytes:
    """STATE: a role or disk change (e.g. the peer became Primary)."""
    return encode_frame(Frame(ReplPacket.STATE, offset=current_uuid,
                              aux=_ROLE_TO_WIRE[role] << 8 | _DISK_TO_WIRE[disk]))


def decode_state(frame: Frame) -> tuple[Role, DiskState, int]:
    try:
        role = _WIRE_TO_ROLE[WireRole(frame.aux >> 8)]
        disk = _WIRE_TO_DISK[WireDisk(frame.aux & 0xFF)]
    except ValueError:
        raise RemoteProtocolError(f"repl: invalid STATE: aux=0x{frame.aux:08x}") from None
    return role, disk, frame.offset


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


# --- handshake events -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PeerHello:
    info: HelloInfo


@dataclass(frozen=True, slots=True)
class Authenticated:
    peer_name: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Incompatible:
    """The peer's net settings differ from ours (LinkSettings.mismatches, joined by '; ')."""

    reason: str


@dataclass(frozen=True, slots=True)
class PeerRefused:
    reason: str
    code: RefuseCode = RefuseCode.OTHER

    @property
    def final(self) -> bool:
        """The peer went StandAlone (authentication failed, incompatible settings)."""
        return self.code is not RefuseCode.OTHER


@dataclass(frozen=True, slots=True)
class PeerBitmap:
    bitmap: Bitmap


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    verdict: SyncVerdict
    peer: HelloInfo
    agreed_size: int
    features: Feature


_TERMINAL = (AuthFailed, HandshakeFailed, Incompatible, PeerRefused, HandshakeDone)
_REFUSE_CODE = {AuthFailed: RefuseCode.AUTH, Incompatible: RefuseCode.INCOMPATIBLE}


class ReplHandshake:
    """One side of the connect handshake. See the module docstring for the lifecycle.

    `mac(alg, key, msg) -> digest` is required when `secret` is set. PeerBitmap carries the
    peer's bitmap sized for OUR device (blocks past the smaller device dropped), ready to merge. `challenge` is the random
    challenge we send (CHALLENGE_SIZE bytes from the caller's CSPRNG). `bitmap_source()` returns
    our encoded bitmap (Bitmap.encode()) and is called only if a bitmap resync was decided.
    """

    def __init__(self, local: HelloInfo, *, secret: bytes | None = None, alg: str | None = None,
                 mac: Mac | None = None, challenge: bytes = b"", is_initiator: bool,
                 bitmap_source: Callable[[], bytes] | None = None,
                 policy: SplitBrainPolicy = SplitBrainPolicy()):
        if secret is not None and (not alg or mac is None):
            raise LocalProtocolError("repl handshake: shared-secret set without cram-hmac-alg/mac")
        if secret is not None and not wire.CHALLENGE_MIN <= len(challenge) <= wire.CHALLENGE_MAX:
            raise LocalProtocolError(f"repl handshake: challenge must be {wire.CHALLENGE_MIN}.."
                                     f"{wire.CHALLENGE_MAX} bytes, got {len(challenge)}")
        self.local = local
        self._secret = secret
        self._alg = (alg or "") if secret is not None else ""
        self._mac = mac
        self._challenge = bytes(challenge)
        self.is_initiator = is_initiator
        self._bitmap_source = bitmap_source
        self.policy = policy
        self._decoder = ReplDecoder()
        self._out = bytearray()
        self._events: list = []
        self.state = "WAIT_HELLO"
        self.peer: HelloInfo | None = None
        self._peer_hello: _Hello | None = None
        self._peer_authed = secret is None
        self._peer_challenge_answered = secret is None
        self.verdict: SyncVerdict | None = None
        self._bm_parts = bytearray()
        self._bm_total: int | None = None
        hello = encode_hello(local, self._alg, is_initiator)
        self._hello_payload = hello[wire.HEADER_SIZE:]
        self._peer_hello_payload = b""
        self._out += hello
        if secret is not None:
            self._out += encode_frame(Frame(ReplPacket.AUTH_CHALLENGE, payload=self._challenge))

    # --- driver API -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the handshake ended (the start of the data stream)."""
        return self._decoder.take_buffered()

    def next_event(self):
        while not self._events:
            if self.state in ("DONE", "FAILED"):
                return NEED_DATA
            if self.state == "ERROR":
                raise RemoteProtocolError("repl handshake: connection is in ERROR state")
            try:
                frame = self._decoder.next_event()
            except RemoteProtocolError:
                self.state = "ERROR"
                raise
            if frame is NEED_DATA:
                return NEED_DATA
            if frame is CLOSED:
                self._fail(HandshakeFailed(f"connection closed by peer during {self.state}"),
                           refuse=False)
                break
            try:
                self._handle(frame)
            except RemoteProtocolError:
                self.state = "ERROR"
                raise
        return self._events.pop(0)

    # --- internals --------------------------------------------------------------------------

    def _fail(self, event, refuse: bool = True) -> None:
        self.state = "FAILED"
        if refuse:
            self._out += encode_refuse(event.reason,
                                       _REFUSE_CODE.get(type(event), RefuseCode.OTHER))
        self._events.append(event)

    def _unexpected(self, frame: Frame) -> None:
        raise RemoteProtocolError(f"repl handshake: unexpected {frame.type.name} in {self.state}")

    def _handle(self, frame: Frame) -> None:
        t = frame.type
        if t is ReplPacket.REFUSE:
            reason = frame.payload.decode("utf-8", "replace")
            try:
                code = RefuseCode(frame.aux)
            except ValueError:
                code = RefuseCode.OTHER
            self._fail(PeerRefused(f"peer refused the connection: {reason}", code),
                       refuse=False)
            return
        if self.state == "WAIT_HELLO":
            if t is not ReplPacket.HELLO:
                self._unexpected(frame)
            self._peer_hello_payload = frame.payload
            if self._versions_agree(*hello_versions(frame)):
                self._on_hello(decode_hello(frame))
        elif self.state == "WAIT_AUTH":
            if t is ReplPacket.AUTH_CHALLENGE:
                self._on_challenge(frame.payload)
            elif t is ReplPacket.AUTH_RESPONSE:
                self._on_response(frame.payload)
            else:
                self._unexpected(frame)
            if self.state == "WAIT_AUTH" and self._peer_authed and self._peer_challenge_answered:
                self._events.append(Authenticated(self._peer_hello.info.node_name))
                self._decide()
        elif self.state == "WAIT_DECISION":
            if t is not ReplPacket.SYNC_DECISION:
                self._unexpected(frame)
            self._on_decision(frame)
        elif self.state == "WAIT_BITMAP":
            if t is not ReplPacket.BITMAP:
                self._unexpected(frame)
            self._on_bitmap(frame)
        else:
            self._unexpected(frame)

    def _versions_agree(self, vmin: int, vmax: int) -> bool:
        if max(vmin, wire.PROTOCOL_VERSION_MIN) > min(vmax, wire.PROTOCOL_VERSION_MAX):
            self._fail(HandshakeFailed(
                f"protocol version mismatch: we speak {wire.PROTOCOL_VERSION_MIN}.."
                f"{wire.PROTOCOL_VERSION_MAX}, peer speaks {vmin}..{vmax}"))
            return False
        return True

    def _on_hello(self, h: _Hello) -> None:
        self._peer_hello = h
        if h.initiator == self.is_initiator:
            self._fail(HandshakeFailed("both sides claim to have " +
                                       ("initiated" if h.initiator else "accepted") +
                                       " the connection"))
            return
        if self._secret is None and h.alg:
            self._fail(AuthFailed(f"peer requires authentication (cram-hmac-alg {h.alg}), "
                                  "but no shared-secret is configured here"))
            return
        if self._secret is not None and not h.alg:
            self._fail(AuthFailed(f"peer does not authenticate, but cram-hmac-alg {self._alg} "
                                  "and a shared-secret are configured here"))
            return
        if h.alg != self._alg:
            self._fail(AuthFailed(f"cram-hmac-alg mismatch: local {self._alg}, peer {h.alg}"))
            return
        if self._secret is None:
            self._decide()
        else:
            self.state = "WAIT_AUTH"

    def _label(self, initiator: bool) -> bytes:
        return AUTH_LABEL + (b"I" if initiator else b"A")

    def _on_challenge(self, challenge: bytes) -> None:
        if self._peer_challenge_answered:
            raise RemoteProtocolError("repl handshake: second AUTH_CHALLENGE")
        if hmac.compare_digest(challenge, self._challenge):
            self._fail(AuthFailed("peer reflected our own challenge"))
            return
        digest = self._mac(self._alg, self._secret,
                           self._label(self.is_initiator) + challenge + self._hello_payload)
        self._out += encode_frame(Frame(ReplPacket.AUTH_RESPONSE, payload=digest))
        self._peer_challenge_answered = True

    def _on_response(self, response: bytes) -> None:
        if self._peer_authed:
            raise RemoteProtocolError("repl handshake: second AUTH_RESPONSE")
        expected = self._mac(self._alg, self._secret, self._label(not self.is_initiator) +
                             self._challenge + self._peer_hello_payload)
        if not hmac.compare_digest(response, expected):
            self._fail(AuthFailed(f"wrong shared-secret (cram-hmac-alg {self._alg})"))
            return
        self._peer_authed = True

    def _decide(self) -> None:
        info = self._peer_hello.info
        problems = self.local.settings.mismatches(info.settings)
        if UuidFlag.DISCARD_MY_DATA in self.local.flags & info.flags:
            problems.append("incompatible discard-my-data settings: both sides have "
                            "discard-my-data set")
        if problems:
            self._fail(Incompatible("; ".join(problems)))
            return
        self.peer = info
        self._events.append(PeerHello(info))
        loc = self.local
        if loc.disk is DiskState.Diskless or info.disk is DiskState.Diskless:
            self.verdict = SyncVerdict(SyncDecision.NoSync, 0, SyncDecision.NoSync,
                                       "no resync: a side is Diskless")
        else:
            self.verdict = sync_handshake(
                UuidReport(loc.uuids, loc.flags, loc.role is Role.Primary, loc.bits,
                           loc.node_name),
                UuidReport(info.uuids, info.flags, info.role is Role.Primary, info.bits,
                           info.node_name),
                local_inconsistent=loc.disk is DiskState.Inconsistent,
                peer_inconsistent=info.disk is DiskState.Inconsistent,
                resolve_conflicts=self.is_initiator,
                discard_my_data=UuidFlag.DISCARD_MY_DATA in loc.flags, policy=self.policy)
        d = self.verdict.decision
        self._out += encode_frame(Frame(ReplPacket.SYNC_DECISION, offset=self.verdict.rule,
                                        aux=_UNSIGNED32.unpack(_SIGNED32.pack(d.hg))[0]))
        self.state = "WAIT_DECISION"

    def _on_decision(self, frame: Frame) -> None:
        hg = _SIGNED32.unpack(_UNSIGNED32.pack(frame.aux))[0]
        try:
            peer_d = SyncDecision(hg)
        except ValueError:
            raise RemoteProtocolError(f"repl handshake: SYNC_DECISION: unknown decision {hg}") \
                from None
        mine = self.verdict.decision
        if mine.drops_connection or peer_d.drops_connection:
            if not mine.drops_connection:
                # the peer refuses (e.g. it is Primary and would be SyncTarget): so do we
                self.verdict = SyncVerdict(peer_d.mirror(), self.verdict.rule,
                                           self.verdict.compare,
                                           f"peer decided {peer_d}: dropping connection")
            self._done()
            return
        if peer_d is not mine.mirror():
            self._fail(HandshakeFailed(f"sync decision mismatch: we decided {mine}, "
                                       f"peer decided {peer_d}"))
            return
        if mine.is_bitmap:
            if self._bitmap_source is None:
                raise LocalProtocolError("repl handshake: bitmap resync decided but no "
                                         "bitmap_source was given")
            self._out += encode_bitmap(self._bitmap_source())
            self.state = "WAIT_BITMAP"
            return
        self._done()

    def _on_bitmap(self, frame: Frame) -> None:
        limit = max_encoded_size(-(-self.peer.data_size // 4096))
        if frame.aux > limit:
            raise RemoteProtocolError(f"repl handshake: BITMAP: total length {frame.aux} "
                                      f"exceeds {limit} for data size {self.peer.data_size}")
        if self._bm_total is None:
            self._bm_total = frame.aux
        if frame.aux != self._bm_total or frame.offset != len(self._bm_parts):
            raise RemoteProtocolError(f"repl handshake: BITMAP: slice offset={frame.offset} "
                                      f"total={frame.aux}, expected offset="
                                      f"{len(self._bm_parts)} total={self._bm_total}")
        self._bm_parts += frame.payload
        if len(self._bm_parts) > self._bm_total:
            raise RemoteProtocolError("repl handshake: BITMAP: more bytes than announced")
        if frame.flags & BITMAP_LAST:
            if len(self._bm_parts) != self._bm_total:
                raise RemoteProtocolError(f"repl handshake: BITMAP: last slice at "
                                          f"{len(self._bm_parts)} of {self._bm_total} bytes")
            bm = Bitmap.decode(bytes(self._bm_parts), self.local.data_size,
                               peer_data_size=self.peer.data_size)
            self._bm_parts = bytearray()
            self._events.append(PeerBitmap(bm))
            self._done()

    def _done(self) -> None:
        self.state = "DONE"
        sizes = [s for s in (self.local.data_size, self.peer.data_size) if s]
        self._events.append(HandshakeDone(self.verdict, self.peer, min(sizes) if sizes else 0,
                                          self.local.features & self.peer.features))
