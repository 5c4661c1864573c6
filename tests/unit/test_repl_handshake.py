# SPDX-License-Identifier: GPL-2.0-or-later
"""Peer-link codec and connect handshake: golden header bytes, validation errors, mutual auth with
right/wrong secrets and mismatched algorithms, version mismatch, sync decisions and bitmap
exchange, both directions (initiator and acceptor)."""
import dataclasses
import hashlib
import hmac
import random
import struct

import pytest

from replica.auth import SUPPORTED_ALGS, check_net_auth, hmac_digest, new_challenge
from replica.bitmap import Bitmap
from replica.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from replica.protocol import repl_wire as wire
from replica.protocol.repl import (
    CLOSED,
    NEED_DATA,
    Authenticated,
    AuthFailed,
    Frame,
    HandshakeDone,
    HandshakeFailed,
    HelloInfo,
    Incompatible,
    LinkSettings,
    PeerBitmap,
    PeerHello,
    PeerRefused,
    ReplDecoder,
    ReplHandshake,
    decode_hello,
    decode_uuids,
    encode_bitmap,
    encode_frame,
    encode_hello,
    encode_refuse,
    encode_simple,
    encode_uuids,
)
from replica.protocol.repl_control import PeerState, decode_control, encode_control
from replica.protocol.repl_wire import ReplPacket
from replica.states import DiskState, Role
from replica.uuids import GenerationUuids, SyncDecision, UuidFlag

SIZE = 64 * 1024 * 1024
A, B, C = 0x1111111111111110, 0x2222222222222220, 0x3333333333333330


def info(name, uuids, role=Role.Secondary, disk=DiskState.UpToDate, flags=UuidFlag(0),
         size=SIZE):
    return HelloInfo(name, size, uuids, role, disk, flags)


def make(local, *, secret=b"FooFunFactory", alg="sha256", initiator, bitmap=None, seed=None):
    rnd = random.Random(seed if seed is not None else local.node_name)
    return ReplHandshake(local, secret=secret, alg=alg if secret is not None else None,
                         mac=hmac_digest, challenge=rnd.randbytes(32), is_initiator=initiator,
                         bitmap_source=(bitmap.encode if bitmap is not None else None))


def drain(h):
    out = []
    while True:
        e = h.next_event()
        if e is NEED_DATA:
            return out
        out.append(e)


def run_pair(a, b, rounds=10):
    ea, eb = [], []
    for _ in range(rounds):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db and ea and eb:
            break
        b.receive_data(da)
        a.receive_data(db)
        ea += drain(a)
        eb += drain(b)
    return ea, eb


def kinds(events):
    return [type(e).__name__ for e in events]


# --- codec -------------------------------------------------------------------------------------

def test_golden_header_bytes():
    raw = encode_frame(Frame(ReplPacket.DATA, flags=1, id=7, offset=4096, aux=0, payload=b"abc"))
    assert raw[:4] == b"RPL1"
    assert raw == struct.pack(">IHHQQII", 0x52504C31, 0x01, 1, 7, 4096, 3, 0) + b"abc"
    assert wire.HEADER_SIZE == 32
    zero = encode_simple(ReplPacket.ZEROES, offset=8192, aux=65536, fid=9)
    assert encode_frame(Frame(ReplPacket.ZEROES, flags=3))[6:8] == b"\x00\x03"  # FUA|NO_HOLE
    assert zero.hex() == "52504c31" "0003" "0000" "0000000000000009" "0000000000002000" \
                         "00000000" "00010000"


def test_decoder_frames_split_anywhere():
    stream = (encode_frame(Frame(ReplPacket.DATA, id=1, offset=0, payload=b"x" * 100)) +
              encode_simple(ReplPacket.PING) + encode_control(PeerState(Role.Primary, DiskState.UpToDate, A)) +
              encode_uuids(GenerationUuids(A, B, (C, 0)), UuidFlag.CRASHED_PRIMARY))
    for step in (1, 7, 31, 32, 33, len(stream)):
        dec = ReplDecoder()
        frames = []
        for i in range(0, len(stream), step):
            dec.receive_data(stream[i:i + step])
            while (f := dec.next_event()) is not NEED_DATA:
                frames.append(f)
        dec.receive_data(b"")
        assert dec.next_event() is CLOSED
        assert [f.type for f in frames] == [ReplPacket.DATA, ReplPacket.PING, ReplPacket.STATE,
                                            ReplPacket.UUIDS]
        assert frames[0].payload == b"x" * 100
        assert decode_control(encode_frame(frames[2])) == PeerState(Role.Primary, DiskState.UpToDate, A)
        assert decode_uuids(frames[3]) == (GenerationUuids(A, B, (C, 0)),
                                           UuidFlag.CRASHED_PRIMARY)


@pytest.mark.parametrize("raw,match", [
    (struct.pack(">IHHQQII", 0x4E42444D, 1, 0, 0, 0, 0, 0), r"magic=0x4e42444d, expected"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x99, 0, 0, 0, 0, 0), r"type=0x0099: unknown"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 1, 0, 0, 0, 64 * 1024 * 1024 + 1, 0),
     r"DATA: length=67108865 exceeds 67108864"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x20, 0, 0, 0, 4, 0), r"PING: length=4 outside 0..0"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x02, 0, 0, 0, 512, 0), r"TRIM: length=512"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x01, 2, 0, 0, 0, 0), r"DATA: flags=0x0002"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x03, 8, 0, 0, 0, 0), r"ZEROES: flags=0x0008"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x04, 4, 0, 0, 0, 0), r"FLUSH: flags=0x0004"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x05, 0, 0, 0, 4, 0), r"READ_REQUEST: length=4 outside 0..0"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x14, 1, 0, 0, 0, 0), r"READ_REPLY: flags=0x0001"),
    (struct.pack(">IHHQQII", wire.REPL_MAGIC, 0x41, 0, 0, 0, 3, 0), r"AUTH_CHALLENGE: length=3"),
])
def test_decoder_rejects_bad_headers_naming_the_field(raw, match):
    dec = ReplDecoder()
    dec.receive_data(raw)
    with pytest.raises(RemoteProtocolError, match=match):
        dec.next_event()
    with pytest.raises(RemoteProtocolError):       # stays broken
        dec.next_event()


def test_decoder_eof_mid_frame_and_encode_misuse():
    dec = ReplDecoder()
    dec.receive_data(encode_simple(ReplPacket.PING)[:20])
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle of a frame"):
        dec.next_event()
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(ReplPacket.PING, payload=b"x"))


# --- auth -------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_hmac_digest_matches_stdlib(alg):
    assert hmac_digest(alg, b"k", b"msg") == hmac.new(b"k", b"msg", getattr(hashlib, alg)).digest()


def test_auth_config_checks():
    assert check_net_auth(None, None, "r.res:3") is None
    assert check_net_auth("sha1", "FooFunFactory", "r.res:3") == ("sha1", b"FooFunFactory")
    with pytest.raises(ConfigError, match=r"^r.res:3: net: shared-secret is set but"):
        check_net_auth(None, "x", "r.res:3")
    with pytest.raises(ConfigError, match="unsupported cram-hmac-alg 'md5'"):
        check_net_auth("md5", "x", "r.res:3")
    with pytest.raises(ConfigError, match="too long: 65 bytes"):
        check_net_auth("sha1", "x" * 65, "r.res:3")
    with pytest.raises(ValueError, match="unsupported cram-hmac-alg"):
        hmac_digest("md5", b"", b"")
    assert len(new_challenge()) == wire.CHALLENGE_SIZE


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
@pytest.mark.parametrize("a_initiates", [True, False])
def test_right_secret_connects(alg, a_initiates):
    a = make(info("alpha", GenerationUuids(A), Role.Primary), alg=alg, initiator=a_initiates)
    b = make(info("beta", GenerationUuids(A)), alg=alg, initiator=not a_initiates, seed=1)
    ea, eb = run_pair(a, b)
    assert kinds(ea) == ["Authenticated", "PeerHello", "HandshakeDone"]
    assert kinds(eb) == ["Authenticated", "PeerHello", "HandshakeDone"]
    assert ea[0] == Authenticated("beta") and eb[1].info.role is Role.Primary
    assert ea[2].verdict.decision is SyncDecision.NoSync and ea[2].agreed_size == SIZE
    assert a.state == b.state == "DONE"


@pytest.mark.parametrize("a_initiates", [True, False])
def test_wrong_secret_refused_both_sides_without_peer_hello(a_initiates):
    a = make(info("alpha", GenerationUuids(A)), secret=b"right", initiator=a_initiates)
    b = make(info("mallory", GenerationUuids(A)), secret=b"wrong", initiator=not a_initiates,
             seed=1)
    ea, eb = run_pair(a, b)
    assert ea == [AuthFailed("wrong shared-secret (cram-hmac-alg sha256)")]
    assert kinds(eb) in (["AuthFailed"], ["PeerRefused"])
    assert a.peer is None and a.state == "FAILED"
    c = make(info("alpha", GenerationUuids(A)), secret=b"right", initiator=True)
    d = make(info("mallory", GenerationUuids(A)), secret=b"wrong", initiator=False, seed=1)
    d.receive_data(c.data_to_send())
    c.receive_data(d.data_to_send())
    drain(c)
    d.receive_data(c.data_to_send())             # c's response: d finds it wrong and refuses
    assert kinds(drain(d)) == ["AuthFailed"]
    refuse = ReplDecoder()
    refuse.receive_data(d.data_to_send())
    frames = []
    while (f := refuse.next_event()) is not NEED_DATA:
        frames.append(f)
    assert frames[-1].type is ReplPacket.REFUSE and frames[-1].aux == wire.RefuseCode.AUTH


def test_mismatched_algorithms_refused():
    a = make(info("alpha", GenerationUuids(A)), alg="sha1", initiator=True)
    b = make(info("beta", GenerationUuids(A)), alg="sha512", initiator=False)
    ea, eb = run_pair(a, b)
    assert ea == [AuthFailed("cram-hmac-alg mismatch: local sha1, peer sha512")]
    assert eb == [AuthFailed("cram-hmac-alg mismatch: local sha512, peer sha1")]


def test_secret_on_one_side_only_refused():
    a = make(info("alpha", GenerationUuids(A)), initiator=True)
    b = make(info("beta", GenerationUuids(A)), secret=None, initiator=False)
    ea, eb = run_pair(a, b)
    assert ea == [AuthFailed("peer does not authenticate, but cram-hmac-alg sha256 and a "
                             "shared-secret are configured here")]
    assert eb == [AuthFailed("peer requires authentication (cram-hmac-alg sha256), but no "
                             "shared-secret is configured here")]


def test_no_auth_both_sides_connects():
    a = make(info("alpha", GenerationUuids(A)), secret=None, initiator=True)
    b = make(info("beta", GenerationUuids(A)), secret=None, initiator=False)
    ea, eb = run_pair(a, b)
    assert kinds(ea) == kinds(eb) == ["PeerHello", "HandshakeDone"]


def test_reflected_challenge_refused():
    a = make(info("alpha", GenerationUuids(A)), initiator=True, seed=5)
    mallory = make(info("mallory", GenerationUuids(A)), initiator=False, seed=5)  # same challenge
    ea, _ = run_pair(a, mallory)
    assert ea == [AuthFailed("peer reflected our own challenge")]


def test_response_reflection_fails():
    """An attacker without the secret echoes our own response back: the side label differs."""
    a = make(info("alpha", GenerationUuids(A)), initiator=True, seed=1)
    peer_challenge = b"P" * 32
    hello = encode_hello(info("mallory", GenerationUuids(A)), "sha256", initiator=False)
    a.receive_data(hello + encode_frame(Frame(ReplPacket.AUTH_CHALLENGE, payload=peer_challenge)))
    assert drain(a) == []
    out = ReplDecoder()
    out.receive_data(a.data_to_send())
    frames = []
    while (f := out.next_event()) is not NEED_DATA:
        frames.append(f)
    ours = [f for f in frames if f.type is ReplPacket.AUTH_RESPONSE][0]
    a.receive_data(encode_frame(Frame(ReplPacket.AUTH_RESPONSE, payload=ours.payload)))
    assert kinds(drain(a)) == ["AuthFailed"]


def test_protocol_version_mismatch_refused_with_reason():
    a = make(info("alpha", GenerationUuids(A)), initiator=True)
    a.receive_data(encode_hello(info("future", GenerationUuids(A)), "sha256", initiator=False,
                                version_min=3, version_max=4))
    (ev,) = drain(a)
    assert ev == HandshakeFailed("protocol version mismatch: we speak 2..2, peer speaks 3..4")
    assert b"protocol version mismatch" in a.data_to_send()     # REFUSE told the peer why


def test_version_1_hello_of_another_layout_is_a_version_mismatch():
    """A version-1 HELLO (no net settings, shorter fixed part) is told apart by its first 4
    bytes, not rejected as malformed."""
    v1 = struct.pack(">HHIQQQQQQIBBBB", 1, 1, 0x1F, SIZE, A, 0, 0, 0, 0, 0, 2, 8, 4, 0) + b"beta"
    a = make(info("alpha", GenerationUuids(A)), secret=None, initiator=True)
    a.receive_data(encode_frame(Frame(ReplPacket.HELLO, payload=v1)))
    assert drain(a) == [HandshakeFailed("protocol version mismatch: we speak 2..2, peer "
                                        "speaks 1..1")]


def test_both_initiators_refused():
    a = make(info("alpha", GenerationUuids(A)), initiator=True)
    a.receive_data(encode_hello(info("beta", GenerationUuids(A)), "sha256", initiator=True))
    assert drain(a) == [HandshakeFailed("both sides claim to have initiated the connection")]


def test_peer_refusal_and_eof():
    a = make(info("alpha", GenerationUuids(A)), initiator=True)
    a.receive_data(encode_frame(Frame(ReplPacket.REFUSE, payload=b"go away", aux=77)))
    assert drain(a) == [PeerRefused("peer refused the connection: go away")]
    assert not PeerRefused("x").final       # an unknown code is not final: keep retrying
    b = make(info("alpha", GenerationUuids(A)), initiator=True)
    b.receive_data(b"")
    assert drain(b) == [HandshakeFailed("connection closed by peer during WAIT_HELLO")]


def test_unexpected_frame_is_remote_protocol_error():
    a = make(info("alpha", GenerationUuids(A)), initiator=True)
    a.receive_data(encode_simple(ReplPacket.PING))
    with pytest.raises(RemoteProtocolError, match="unexpected PING in WAIT_HELLO"):
        a.next_event()
    assert a.state == "ERROR"
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_local_misuse():
    with pytest.raises(LocalProtocolError, match="shared-secret set without"):
        ReplHandshake(info("a", GenerationUuids()), secret=b"x", is_initiator=True)
    with pytest.raises(LocalProtocolError, match="challenge must be"):
        ReplHandshake(info("a", GenerationUuids()), secret=b"x", alg="sha1", mac=hmac_digest,
                      challenge=b"short", is_initiator=True)


# --- decisions and bitmap exchange -------------------------------------------------------------

def test_bitmap_resync_exchanges_bitmaps_both_ways():
    bm_a = Bitmap(SIZE)
    bm_a.set_range(0, 1 << 20)
    bm_b = Bitmap(SIZE)
    bm_b.set_range(SIZE - 4096, 4096)
    a = make(info("alpha", GenerationUuids(B | 1, A), Role.Primary), initiator=True, bitmap=bm_a)
    b = make(info("beta", GenerationUuids(A)), initiator=False, bitmap=bm_b)
    ea, eb = run_pair(a, b)
    assert kinds(ea) == ["Authenticated", "PeerHello", "PeerBitmap", "HandshakeDone"]
    assert ea[2] == PeerBitmap(bm_b) and eb[2] == PeerBitmap(bm_a)
    assert ea[3].verdict.decision is SyncDecision.BitmapSyncSource
    assert eb[3].verdict.decision is SyncDecision.BitmapSyncTarget
    assert eb[3].verdict.rule_name == "bitmap-peer"


def test_bitmap_in_many_slices():
    bm = Bitmap(SIZE)
    for i in range(0, bm.nbits, 3):
        bm.set_bits(i, i + 1)
    b = make(info("beta", GenerationUuids(A)), secret=None, initiator=False, bitmap=Bitmap(SIZE))
    b.receive_data(encode_hello(info("alpha", GenerationUuids(B, A), Role.Primary), "", True))
    assert kinds(drain(b)) == ["PeerHello"]
    b.receive_data(encode_frame(Frame(ReplPacket.SYNC_DECISION, aux=1, offset=70)))
    assert drain(b) == []
    b.receive_data(encode_bitmap(bm.encode(), slice_size=100))
    ev = drain(b)
    assert kinds(ev) == ["PeerBitmap", "HandshakeDone"] and ev[0].bitmap == bm


def test_bitmap_slices_out_of_order_rejected():
    b = make(info("beta", GenerationUuids(A)), secret=None, initiator=False, bitmap=Bitmap(SIZE))
    b.receive_data(encode_hello(info("alpha", GenerationUuids(B, A)), "", True))
    b.receive_data(encode_frame(Frame(ReplPacket.SYNC_DECISION, aux=1, offset=70)))
    drain(b)
    b.receive_data(encode_frame(Frame(ReplPacket.BITMAP, offset=5, aux=10, payload=b"12345")))
    with pytest.raises(RemoteProtocolError, match="slice offset=5"):
        drain(b)


def test_split_brain_detected_on_both_sides_nothing_exchanged():
    a = make(info("alpha", GenerationUuids(B | 1, A), Role.Primary), initiator=True,
             bitmap=Bitmap(SIZE))
    b = make(info("beta", GenerationUuids(C | 1, A), Role.Primary), initiator=False,
             bitmap=Bitmap(SIZE))
    ea, eb = run_pair(a, b)
    assert kinds(ea)[-1] == kinds(eb)[-1] == "HandshakeDone"
    assert "PeerBitmap" not in kinds(ea) + kinds(eb)
    for e in (ea[-1], eb[-1]):
        assert e.verdict.decision is SyncDecision.SplitBrain
        assert e.verdict.reason == "Split-Brain detected but unresolved, dropping connection!"


def test_discard_my_data_resolves_split_brain():
    a = make(info("alpha", GenerationUuids(B, A), flags=UuidFlag.DISCARD_MY_DATA),
             initiator=True, bitmap=Bitmap(SIZE))
    b = make(info("beta", GenerationUuids(C | 1, A), Role.Primary), initiator=False,
             bitmap=Bitmap(SIZE))
    ea, eb = run_pair(a, b)
    assert ea[-1].verdict.decision is SyncDecision.BitmapSyncTarget
    assert eb[-1].verdict.decision is SyncDecision.BitmapSyncSource
    assert "Sync from this node" in eb[-1].verdict.reason


def test_full_initial_sync_and_role_conflict():
    fresh = GenerationUuids()
    forced = GenerationUuids(B | 1, 4)
    a = make(info("alpha", forced, Role.Primary), initiator=True)
    b = make(info("beta", fresh, disk=DiskState.Inconsistent), initiator=False)
    ea, eb = run_pair(a, b)
    assert ea[-1].verdict.decision is SyncDecision.FullSyncSource
    assert eb[-1].verdict.decision is SyncDecision.FullSyncTarget
    # a Primary would have to become SyncTarget: both sides drop the connection
    c = make(info("alpha", GenerationUuids(A | 1), Role.Primary), initiator=True)
    d = make(info("beta", GenerationUuids(B, A)), initiator=False)
    ec, ed = run_pair(c, d)
    assert ec[-1].verdict.decision is SyncDecision.RoleConflict
    assert ed[-1].verdict.decision.drops_connection


def test_decision_mismatch_detected():
    b = make(info("beta", GenerationUuids(A)), secret=None, initiator=False)
    b.receive_data(encode_hello(info("alpha", GenerationUuids(A)), "", True))
    drain(b)
    b.receive_data(encode_frame(Frame(ReplPacket.SYNC_DECISION, aux=2)))
    assert drain(b) == [HandshakeFailed("sync decision mismatch: we decided NoSync, peer "
                                        "decided FullSyncSource")]


def test_trailing_data_is_handed_over():
    b = make(info("beta", GenerationUuids(A)), secret=None, initiator=False)
    ping = encode_simple(ReplPacket.PING)
    b.receive_data(encode_hello(info("alpha", GenerationUuids(A)), "", True) +
                   encode_frame(Frame(ReplPacket.SYNC_DECISION, aux=0)) + ping)
    assert kinds(drain(b)) == ["PeerHello", "HandshakeDone"]
    assert b.trailing_data == ping
    assert isinstance(PeerHello(b.peer), PeerHello) and HandshakeDone


def test_tampered_hello_fails_authentication():
    """A man in the middle relaying auth but changing the HELLO (e.g. the UUIDs) is caught."""
    a = make(info("alpha", GenerationUuids(A)), initiator=True)
    b = make(info("beta", GenerationUuids(A)), initiator=False)
    from_b = bytearray(b.data_to_send())
    dec = ReplDecoder()
    dec.receive_data(bytes(from_b))
    hello = dec.next_event()
    forged = encode_hello(info("beta", GenerationUuids(C)), "sha256", initiator=False)
    a.receive_data(forged + bytes(from_b[wire.HEADER_SIZE + len(hello.payload):]))
    b.receive_data(a.data_to_send())
    drain(b)
    a.receive_data(b.data_to_send())
    assert kinds(drain(a)) == ["AuthFailed"]


def test_after_sb_policy_through_the_handshake():
    from replica.uuids import SplitBrainPolicy
    pol = SplitBrainPolicy(after_sb_0pri="discard-zero-changes")
    a = ReplHandshake(HelloInfo("alpha", SIZE, GenerationUuids(B, A),
                                disk=DiskState.UpToDate, bits=0), secret=None,
                      is_initiator=True, bitmap_source=Bitmap(SIZE).encode, policy=pol)
    bm = Bitmap(SIZE)
    bm.set_range(0, 5 * 4096)
    b = ReplHandshake(HelloInfo("beta", SIZE, GenerationUuids(C, A),
                                disk=DiskState.UpToDate, bits=5), secret=None,
                      is_initiator=False, bitmap_source=bm.encode, policy=pol)
    ea, eb = run_pair(a, b)
    assert ea[-1].verdict.decision is SyncDecision.BitmapSyncTarget and ea[-1].verdict.split_brain
    assert eb[-1].verdict.decision is SyncDecision.BitmapSyncSource
    assert ea[-1].peer.bits == 5
    assert ea[-2] == PeerBitmap(bm)


def test_different_sizes_bitmap_fits_our_device():
    big = Bitmap(2 * SIZE)
    big.set_range(4096, 4096)
    big.set_range(2 * SIZE - 4096, 4096)        # past alpha's end: dropped on alpha
    a = make(info("alpha", GenerationUuids(B | 1, A), Role.Primary), initiator=True,
             bitmap=Bitmap(SIZE))
    b = make(info("beta", GenerationUuids(A), size=2 * SIZE), initiator=False, bitmap=big)
    ea, eb = run_pair(a, b)
    assert ea[-1].agreed_size == eb[-1].agreed_size == SIZE
    got = ea[-2].bitmap
    assert got.data_size == SIZE and list(got.iter_dirty_runs()) == [(1, 2)]
    assert eb[-2].bitmap.data_size == 2 * SIZE


def test_golden_hello_bytes():
    """Locks the HELLO layout of repl_wire.py (protocol version 2)."""
    settings = LinkSettings("B", True, "discard-zero-changes", "consensus", "disconnect", "crc32c",
                            "md5")
    raw = encode_hello(HelloInfo("a", 1 << 20, GenerationUuids(0x11, 0x22, (0x33, 0x44)),
                                 Role.Primary, DiskState.UpToDate, UuidFlag.CRASHED_PRIMARY,
                                 bits=5, settings=settings), "sha1", True)
    assert raw.hex() == (
        "52504c31" "0040" "0001" "0000000000000000" "0000000000000000" "0000007c" "00000000"
        "0002" "0002" "0000001f" "0000000000100000" "0000000000000011" "0000000000000022"
        "0000000000000033" "0000000000000044" "0000000000000005" "00000002" "01" "08" "01" "04"
        "02" "01" "14" "09" "0a" "06" "03" + b"a" .hex() + b"sha1".hex() +
        b"discard-zero-changes".hex() + b"consensus".hex() + b"disconnect".hex() +
        b"crc32c".hex() + b"md5".hex())
    dec = ReplDecoder()
    dec.receive_data(raw)
    assert decode_hello(dec.next_event()).info.settings == settings


# --- net settings both sides must share (DRBD's P_PROTOCOL checks) -----------------------------

def with_settings(hello, **kw):
    return dataclasses.replace(hello, settings=dataclasses.replace(hello.settings, **kw))


@pytest.mark.parametrize("secret", [b"FooFunFactory", None])
@pytest.mark.parametrize("a_initiates", [True, False])
def test_different_protocols_refused_on_both_sides(secret, a_initiates):
    a = make(with_settings(info("alpha", GenerationUuids(A)), protocol="A"), secret=secret,
             initiator=a_initiates)
    b = make(info("beta", GenerationUuids(A)), secret=secret, initiator=not a_initiates)
    ea, eb = run_pair(a, b)
    assert ea[-1] == Incompatible("incompatible communication protocols: local protocol A, "
                                  "peer protocol C")
    assert eb[-1] == Incompatible("incompatible communication protocols: local protocol C, "
                                  "peer protocol A")
    for h, events in ((a, ea), (b, eb)):
        assert h.state == "FAILED" and h.peer is None
        assert "PeerHello" not in kinds(events) and "HandshakeDone" not in kinds(events)
    # the REFUSE the peer gets (if it had not noticed yet) says it is final
    a2 = make(info("alpha", GenerationUuids(A)), secret=None, initiator=True)
    a2.receive_data(encode_refuse("incompatible communication protocols",
                                  wire.RefuseCode.INCOMPATIBLE))
    (ev,) = drain(a2)
    assert ev.final and ev.code is wire.RefuseCode.INCOMPATIBLE


def test_settings_are_compared_only_after_authentication():
    """As in DRBD (auth in conn_connect, P_PROTOCOL after it): a peer with the wrong secret is an
    authentication failure, whatever its settings; nothing it says is reported."""
    a = make(with_settings(info("alpha", GenerationUuids(A)), protocol="A"), secret=b"right",
             initiator=True)
    b = make(info("mallory", GenerationUuids(A)), secret=b"wrong", initiator=False, seed=1)
    ea, _ = run_pair(a, b)
    assert kinds(ea) == ["AuthFailed"] and a.peer is None


def test_every_shared_setting_is_compared():
    a = make(with_settings(info("alpha", GenerationUuids(A)), allow_two_primaries=True,
                           after_sb_0pri="discard-zero-changes", after_sb_1pri="consensus",
                           after_sb_2pri="violently-as0p", data_integrity_alg="sha1",
                           csums_alg="md5"),
             secret=None, initiator=True)
    b = make(info("beta", GenerationUuids(A)), secret=None, initiator=False)
    ea, _ = run_pair(a, b)
    assert ea == [Incompatible(
        "incompatible after-sb-0pri settings: local discard-zero-changes, peer disconnect; "
        "incompatible after-sb-1pri settings: local consensus, peer disconnect; "
        "incompatible after-sb-2pri settings: local violently-as0p, peer disconnect; "
        "incompatible allow-two-primaries settings: local yes, peer no; "
        "incompatible data-integrity-alg settings: local sha1, peer off; "
        "incompatible csums-alg settings: local md5, peer off")]


def test_same_settings_connect_and_discard_my_data_on_both_sides_refused():
    same = dict(protocol="B", allow_two_primaries=True, after_sb_0pri="discard-node-alpha")
    a = make(with_settings(info("alpha", GenerationUuids(A)), **same), initiator=True)
    b = make(with_settings(info("beta", GenerationUuids(A)), **same), initiator=False)
    ea, eb = run_pair(a, b)
    assert kinds(ea)[-1] == kinds(eb)[-1] == "HandshakeDone"
    assert ea[-1].peer.settings == LinkSettings("B", True, "discard-node-alpha")
    c = make(info("alpha", GenerationUuids(B, A), flags=UuidFlag.DISCARD_MY_DATA),
             initiator=True)
    d = make(info("beta", GenerationUuids(C, A), flags=UuidFlag.DISCARD_MY_DATA),
             initiator=False)
    ec, ed = run_pair(c, d)
    assert ec[-1] == ed[-1] == Incompatible("incompatible discard-my-data settings: both sides "
                                            "have discard-my-data set")


def test_link_settings_from_config():
    from replica.config import parse_config
    cfg = parse_config("""resource r0 { net { protocol A; allow-two-primaries yes;
        after-sb-1pri discard-secondary; data-integrity-alg crc32c; }
        on a { disk /d; address 10.0.0.1:7789; } on b { disk /d; address 10.0.0.2:7789; } }""")
    assert LinkSettings.from_net(cfg.resources["r0"].net) == LinkSettings(
        "A", True, "disconnect", "discard-secondary", "disconnect", "crc32c")
    assert LinkSettings.from_net(cfg.resources["r0"].net.__class__()) == LinkSettings()
