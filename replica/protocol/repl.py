# SPDX-License-Identifier: GPL-2.0-or-later
"""Replication peer link, sans-I/O: the connect handshake (and the peer link's public API).

Owns `ReplHandshake`, the h11-style state machine run on every new TCP connection before the C
data path takes the socket, and its events. Frames and packet bodies: repl_codec.py (re-exported
here, so `replica.protocol.repl` stays the one import for the peer link); layouts: repl_wire.py.
No I/O, clock or logging: the caller (peer_link.py) feeds bytes, sends `data_to_send()`, logs
events naming the peer.

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
from replica.protocol.repl_codec import (
    CLOSED,
    NEED_DATA,
    DecodedHello,
    Frame,
    HelloInfo,
    LinkSettings,
    ReplDecoder,
    _Sentinel,
    decode_hello,
    decode_uuids,
    encode_bitmap,
    encode_frame,
    encode_hello,
    encode_refuse,
    encode_simple,
    encode_uuids,
    hello_versions,
)
from replica.protocol.repl_wire import BITMAP_LAST, Feature, RefuseCode, ReplPacket
from replica.states import DiskState, Role
from replica.uuids import SplitBrainPolicy, SyncDecision, SyncVerdict, UuidFlag, UuidReport, sync_handshake

__all__ = [  # the codec's names are part of this module's API
    "CLOSED", "NEED_DATA", "Frame", "HelloInfo", "LinkSettings", "ReplDecoder", "decode_hello",
    "decode_uuids", "encode_bitmap", "encode_frame", "encode_hello",
    "encode_refuse", "encode_simple", "encode_uuids", "hello_versions",
    "Authenticated", "AuthFailed", "HandshakeDone", "HandshakeFailed", "Incompatible",
    "PeerBitmap", "PeerHello", "PeerRefused", "ReplHandshake", "AUTH_LABEL"]

AUTH_LABEL = b"replica-ha RPL1 auth v1:"

Mac = Callable[[str, bytes, bytes], bytes]

_SIGNED32 = struct.Struct(">i")
_UNSIGNED32 = struct.Struct(">I")


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


HandshakeEvent = (PeerHello | Authenticated | AuthFailed | HandshakeFailed | Incompatible
                  | PeerRefused | PeerBitmap | HandshakeDone)
_TERMINAL = (AuthFailed, HandshakeFailed, Incompatible, PeerRefused, HandshakeDone)
_REFUSE_CODE = {AuthFailed: RefuseCode.AUTH, Incompatible: RefuseCode.INCOMPATIBLE}


class ReplHandshake:
    """One side of the connect handshake. See the module docstring for the lifecycle.

    `mac(alg, key, msg) -> digest` is required when `secret` is set. PeerBitmap carries the
    peer's bitmap sized for OUR device (blocks past the smaller device dropped), ready to
    merge. `challenge` is the random challenge we send (CHALLENGE_SIZE bytes from the caller's
    CSPRNG). `bitmap_source()` returns our encoded bitmap (Bitmap.encode()) and is called only
    if a bitmap resync was decided. `may_demote`: we are a Primary whose device nobody holds, so
    after-sb call-pri-lost-after-sb may demote us (sync_handshake).
    """

    def __init__(self, local: HelloInfo, *, secret: bytes | None = None, alg: str | None = None,
                 mac: Mac | None = None, challenge: bytes = b"", is_initiator: bool,
                 bitmap_source: Callable[[], bytes] | None = None,
                 policy: SplitBrainPolicy = SplitBrainPolicy(), may_demote: bool = False):
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
        self.may_demote = may_demote
        self._decoder = ReplDecoder()
        self._out = bytearray()
        self._events: list[HandshakeEvent] = []
        self.state = "WAIT_HELLO"
        self.peer: HelloInfo | None = None
        self._peer_hello: DecodedHello | None = None
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

    # --- what a later state may rely on (set by an earlier one) ------------------------------

    def _hello(self) -> DecodedHello:
        if self._peer_hello is None:
            raise LocalProtocolError(f"repl handshake: {self.state}: no peer HELLO yet")
        return self._peer_hello

    def _peer_info(self) -> HelloInfo:
        if self.peer is None:
            raise LocalProtocolError(f"repl handshake: {self.state}: no peer HELLO yet")
        return self.peer

    def _decided(self) -> SyncVerdict:
        if self.verdict is None:
            raise LocalProtocolError(f"repl handshake: {self.state}: no sync decision yet")
        return self.verdict

    def _auth_mac(self, data: bytes) -> bytes:
        if self._mac is None or self._secret is None:
            raise LocalProtocolError("repl handshake: authentication without a shared-secret")
        return self._mac(self._alg, self._secret, data)

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

    def next_event(self) -> "HandshakeEvent | _Sentinel":
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
            if not isinstance(frame, Frame):
                raise LocalProtocolError(f"repl handshake: decoder returned {frame!r}")
            try:
                self._handle(frame)
            except RemoteProtocolError:
                self.state = "ERROR"
                raise
        return self._events.pop(0)

    # --- internals --------------------------------------------------------------------------

    def _fail(self, event: "AuthFailed | HandshakeFailed | Incompatible | PeerRefused",
              refuse: bool = True) -> None:
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
                self._events.append(Authenticated(self._hello().info.node_name))
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

    def _on_hello(self, h: DecodedHello) -> None:
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
        digest = self._auth_mac(self._label(self.is_initiator) + challenge + self._hello_payload)
        self._out += encode_frame(Frame(ReplPacket.AUTH_RESPONSE, payload=digest))
        self._peer_challenge_answered = True

    def _on_response(self, response: bytes) -> None:
        if self._peer_authed:
            raise RemoteProtocolError("repl handshake: second AUTH_RESPONSE")
        expected = self._auth_mac(self._label(not self.is_initiator) + self._challenge +
                                  self._peer_hello_payload)
        if not hmac.compare_digest(response, expected):
            self._fail(AuthFailed(f"wrong shared-secret (cram-hmac-alg {self._alg})"))
            return
        self._peer_authed = True

    def _decide(self) -> None:
        info = self._hello().info
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
                discard_my_data=UuidFlag.DISCARD_MY_DATA in loc.flags, policy=self.policy,
                may_demote=self.may_demote)
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
        verdict = self._decided()
        mine = verdict.decision
        if mine.drops_connection or peer_d.drops_connection:
            if not mine.drops_connection:
                # the peer refuses (e.g. it is Primary and would be SyncTarget): so do we
                # (a split brain we resolved but the peer did not: initial-split-brain still ran)
                self.verdict = SyncVerdict(peer_d.mirror(), verdict.rule, verdict.compare,
                                           f"peer decided {peer_d}: dropping connection",
                                           verdict.split_brain,
                                           verdict.handlers[:1] if verdict.split_brain else ())
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
        peer = self._peer_info()
        limit = max_encoded_size(-(-peer.data_size // 4096))
        if frame.aux > limit:
            raise RemoteProtocolError(f"repl handshake: BITMAP: total length {frame.aux} "
                                      f"exceeds {limit} for data size {peer.data_size}")
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
                               peer_data_size=peer.data_size)
            self._bm_parts = bytearray()
            self._events.append(PeerBitmap(bm))
            self._done()

    def _done(self) -> None:
        self.state = "DONE"
        peer = self._peer_info()
        sizes = [s for s in (self.local.data_size, peer.data_size) if s]
        self._events.append(HandshakeDone(self._decided(), peer, min(sizes) if sizes else 0,
                                          self.local.features & peer.features))
