# SPDX-License-Identifier: GPL-2.0-or-later
"""Hypothesis fuzzing of the peer-link decoder and handshake: random bytes, byte mutations of
real transcripts, arbitrary chunking. The only acceptable failure is RemoteProtocolError (or a
terminal failure event); never another exception, a hang, or authentication without the secret."""
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica.auth import hmac_digest
from replica.bitmap import Bitmap
from replica.errors import RemoteProtocolError
from replica.protocol import repl_wire as wire
from replica.protocol.repl import (
    CLOSED,
    NEED_DATA,
    Authenticated,
    Frame,
    HandshakeDone,
    HelloInfo,
    ReplDecoder,
    ReplHandshake,
    decode_hello,
    decode_uuids,
    encode_frame,
    encode_hello,
)
from replica.protocol.repl_control import decode_control
from replica.protocol.repl_wire import ReplPacket
from replica.states import DiskState, Role
from replica.uuids import GenerationUuids

SIZE = 8 * 1024 * 1024
FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def hs(name, uuids, initiator, secret=b"s3cret", role=Role.Secondary):
    bm = Bitmap(SIZE)
    bm.set_range(0, 40960)
    return ReplHandshake(HelloInfo(name, SIZE, uuids, role, DiskState.UpToDate),
                         secret=secret, alg="sha1" if secret else None, mac=hmac_digest,
                         challenge=random.Random(name).randbytes(32), is_initiator=initiator,
                         bitmap_source=bm.encode)


def transcript():
    """Everything 'beta' (acceptor) sends to 'alpha' in a successful bitmap-resync handshake."""
    a = hs("alpha", GenerationUuids(0x30, 0x20), True, role=Role.Primary)
    b = hs("beta", GenerationUuids(0x20), False)
    sent = bytearray()
    for _ in range(8):
        out_b = b.data_to_send()
        sent += out_b
        a.receive_data(out_b)
        b.receive_data(a.data_to_send())
        for h in (a, b):
            while h.next_event() is not NEED_DATA:
                pass
    assert a.state == b.state == "DONE"
    return bytes(sent)


TRANSCRIPT = transcript()


def drive(h, data: bytes, chunks: list[int]):
    """Feed `data` in chunks, collect events; RemoteProtocolError ends the run."""
    events, pos = [], 0
    sizes = chunks or [len(data) or 1]
    i = 0
    try:
        while pos < len(data):
            n = max(1, sizes[i % len(sizes)])
            h.receive_data(data[pos:pos + n])
            pos += n
            i += 1
            for _ in range(10000):
                e = h.next_event()
                if e is NEED_DATA:
                    break
                events.append(e)
            else:
                raise AssertionError("next_event did not settle")
        h.receive_data(b"")
        while (e := h.next_event()) is not NEED_DATA:
            events.append(e)
            if len(events) > 100:
                raise AssertionError("endless events")
    except RemoteProtocolError:
        return events, True
    return events, False


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=5))
def test_decoder_random_bytes(data, chunks):
    dec = ReplDecoder()
    pos, i = 0, 0
    try:
        while pos < len(data):
            n = chunks[i % len(chunks)] if chunks else len(data)
            dec.receive_data(data[pos:pos + n])
            pos += n
            i += 1
            while (f := dec.next_event()) is not NEED_DATA:
                assert isinstance(f, Frame)
                assert len(f.payload) <= wire.MAX_PAYLOAD
                for decode in (decode_hello, decode_uuids):
                    try:
                        if (decode is decode_hello and f.type is ReplPacket.HELLO) or \
                           (decode is decode_uuids and f.type is ReplPacket.UUIDS):
                            decode(f)
                    except RemoteProtocolError:
                        pass
                if len(f.payload) <= wire.MAX_CONTROL:
                    try:
                        decode_control(encode_frame(f))
                    except RemoteProtocolError:
                        pass
        dec.receive_data(b"")
        assert dec.next_event() in (CLOSED, NEED_DATA)
    except RemoteProtocolError as e:
        assert str(e).startswith("repl: ")


@FUZZ
@given(st.binary(min_size=1, max_size=400), st.lists(st.integers(1, 50), max_size=4))
def test_handshake_random_bytes(data, chunks):
    events, _ = drive(hs("alpha", GenerationUuids(0x30, 0x20), True), data, chunks)
    assert not any(isinstance(e, (Authenticated, HandshakeDone)) for e in events)


@FUZZ
@given(st.data())
def test_handshake_mutated_transcript(data):
    raw = bytearray(TRANSCRIPT)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(raw)))
        raw = raw[:cut]
    chunks = data.draw(st.lists(st.integers(1, 80), max_size=4))
    events, _ = drive(hs("alpha", GenerationUuids(0x30, 0x20), True, role=Role.Primary),
                      bytes(raw), chunks)
    names = [type(e).__name__ for e in events]
    if "HandshakeDone" in names:
        # the HELLO is covered by the HMAC: whatever got through is beta's real HELLO
        assert names.index("Authenticated") < names.index("HandshakeDone")
        done = events[names.index("HandshakeDone")]
        assert done.peer == HelloInfo("beta", SIZE, GenerationUuids(0x20), Role.Secondary,
                                      DiskState.UpToDate)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 97), min_size=1, max_size=6))
def test_handshake_any_chunking_gives_same_events(chunks):
    ref, err = drive(hs("alpha", GenerationUuids(0x30, 0x20), True, role=Role.Primary),
                     TRANSCRIPT, [])
    got, err2 = drive(hs("alpha", GenerationUuids(0x30, 0x20), True, role=Role.Primary),
                      TRANSCRIPT, chunks)
    assert not err and not err2
    assert [type(e) for e in got] == [type(e) for e in ref]
    assert isinstance(ref[-1], HandshakeDone)     # EOF after DONE belongs to the data phase


@FUZZ
@given(st.binary(max_size=16), st.binary(max_size=16))
def test_forged_auth_never_authenticates(challenge_resp_a, noise):
    """Without the secret, no response an attacker can build from public data authenticates."""
    victim = hs("alpha", GenerationUuids(0x30), True)
    hello = encode_hello(HelloInfo("mallory", SIZE, GenerationUuids(0x30)), "sha1", False)
    resp = (challenge_resp_a + noise + bytes(20))[:20]
    data = hello + encode_frame(Frame(ReplPacket.AUTH_CHALLENGE, payload=b"C" * 32)) + \
        encode_frame(Frame(ReplPacket.AUTH_RESPONSE, payload=resp))
    events, _ = drive(victim, data, [])
    assert not any(isinstance(e, Authenticated) for e in events)


@FUZZ
@given(st.integers(2, 2), st.binary(max_size=600), st.data())
def test_hello_body_mutations_raise_only_remote_protocol_error(version, tail, data):
    """HELLO payloads of the current version with arbitrary or mutated bodies: decode_hello
    returns a HelloInfo or raises RemoteProtocolError, nothing else."""
    valid = bytearray(encode_hello(HelloInfo("beta", SIZE, GenerationUuids(0x20)), "sha1",
                                   False)[wire.HEADER_SIZE:])
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(valid) - 1))
        valid[pos] = data.draw(st.integers(0, 255))
    for body in (wire.VERSIONS.pack(version, version) + tail, bytes(valid)):
        try:
            hello = decode_hello(Frame(ReplPacket.HELLO, payload=body))
        except RemoteProtocolError as e:
            assert str(e).startswith("repl: invalid HELLO")
        else:
            assert hello.info.settings.protocol in ("A", "B", "C")
