# SPDX-License-Identifier: GPL-2.0-or-later
"""Hypothesis fuzzing of the NBD handshake codec (replica.protocol.nbd).

Whatever the client sends, the server side must only ever return NEED_DATA or one of its own
events, or raise RemoteProtocolError; never another exception, never a hang, never more than one
option's worth of buffered input, and its output must always be well-framed option replies.
"""
import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica.errors import RemoteProtocolError
from replica.protocol.nbd import (
    NEED_DATA,
    ClientAborted,
    ClientDisconnected,
    EnterTransmission,
    ExportInfo,
    NbdServerConnection,
    NbdServerState,
    OptionRefused,
)

pytestmark = pytest.mark.timeout(120)

IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
GREETING_SIZE = 18
HEADER_SIZE = 16
REPLY_TYPES = {1, 2, 3} | {2**31 + n for n in range(1, 10)}  # ACK SERVER INFO + ERR_*
FINAL_REPLIES = {1} | {2**31 + n for n in range(1, 10)}
EVENT_TYPES = (EnterTransmission, ClientAborted, ClientDisconnected, OptionRefused)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXPORTS = {
    "disk": ExportInfo("disk", 1 << 30, 0x6D, description="fuzz disk"),
    "": ExportInfo("", 512, 0x03),
}


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def info_go(name: bytes, requests=()) -> bytes:
    return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(requests))
            + b"".join(struct.pack(">H", r) for r in requests))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def drive(chunks, max_option_length=4096, eof=True, exports=EXPORTS, default_export="disk"):
    """Feed chunks like a driver would; check every invariant; return (events, output, error)."""
    conn = NbdServerConnection(exports, default_export=default_export,
                               max_option_length=max_option_length)
    out = conn.data_to_send()
    events, error = [], None
    feeds = list(chunks) + ([b""] if eof else [])
    for chunk in feeds:
        if conn.state is NbdServerState.TRANSMISSION:
            conn.receive_data(chunk)
            continue
        if conn.state in (NbdServerState.CLOSED, NbdServerState.ERROR):
            break
        conn.receive_data(chunk)
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    # A complete option would have been consumed: what is left is less than
                    # one header plus the largest option we accept.
                    assert conn.buffered_size < HEADER_SIZE + max_option_length
                    if conn.state is not NbdServerState.OPTIONS:
                        assert conn.buffered_size < 4
                    break
                assert isinstance(event, EVENT_TYPES), event
                events.append(event)
                if not isinstance(event, OptionRefused):
                    break
        except RemoteProtocolError as exc:
            error = exc
            assert conn.state is NbdServerState.ERROR
            assert str(exc).startswith("nbd handshake: ")
            assert str(exc) == str(exc).rstrip(".")
        out += conn.data_to_send()
        if error is not None:
            break
    for event in events[:-1]:
        assert isinstance(event, OptionRefused)  # only the last event may end the handshake
    if eof and error is None:
        assert conn.state in (NbdServerState.TRANSMISSION, NbdServerState.CLOSED)
    check_output(out, events)
    return events, out, error, conn


def check_output(out: bytes, events) -> None:
    """The server's bytes are the greeting then well-framed replies (+ EXPORT_NAME's reply)."""
    assert out[:GREETING_SIZE] == bytes.fromhex("4e42444d4147494349484156454f50540003")
    offset = GREETING_SIZE
    refused = [e for e in events if isinstance(e, OptionRefused)]
    errors_seen = []
    while offset < len(out):
        if out[offset:offset + 8] != REP_MAGIC.to_bytes(8, "big"):
            # Only NBD_OPT_EXPORT_NAME's reply has no header: size, flags (+ 124 zeroes).
            assert isinstance(events[-1], EnterTransmission)
            assert len(out) - offset == (10 if events[-1].no_zeroes else 134)
            size, flags = struct.unpack_from(">QH", out, offset)
            assert (size, flags) == (events[-1].export.size, events[-1].export.transmission_flags)
            assert out[offset + 10:] == bytes(len(out) - offset - 10)
            break
        magic, _opt, rep, length = struct.unpack_from(">QIII", out, offset)
        assert magic == REP_MAGIC
        assert rep in REPLY_TYPES
        if rep & 2**31:
            errors_seen.append((_opt, rep, out[offset + 20:offset + 20 + length].decode()))
        offset += 20 + length
        assert offset <= len(out)
    assert errors_seen == [(e.option, e.reply, e.reason) for e in refused]


# --- random bytes ---

@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8),
       max_len=st.sampled_from([0, 8, 64, 4096]))
def test_random_bytes(data, cuts, max_len):
    drive(split(data, cuts), max_option_length=max_len)


@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8),
       flags=st.integers(0, 3), eof=st.booleans(), max_len=st.sampled_from([0, 8, 64, 4096]))
def test_random_bytes_after_valid_flags_and_magic(data, cuts, flags, eof, max_len):
    # Start each fuzzed option with the right magic so the fuzzer gets past the header check.
    stream = struct.pack(">I", flags) + b"".join(
        struct.pack(">Q", IHAVEOPT) + part for part in data.split(b"\xfe"))
    drive(split(stream, cuts), eof=eof, max_option_length=max_len)


# --- well-framed options with random contents: always answered, never a disconnect ---

# Everything but NBD_OPT_EXPORT_NAME, which has no error reply (tested on its own below).
option_numbers = st.one_of(st.integers(2, 11), st.integers(0, 2**32 - 1)).filter(lambda o: o != 1)
well_framed = st.tuples(option_numbers, st.binary(max_size=80))


@FUZZ
@given(options=st.lists(well_framed, max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_well_framed_options_are_all_answered(options, cuts):
    stream = struct.pack(">I", 3) + b"".join(option(o, d) for o, d in options)
    events, out, error, conn = drive(split(stream, cuts))
    assert error is None
    # Every option up to the one that ended the handshake got exactly one final reply.
    finals = []
    offset = GREETING_SIZE
    while offset + 20 <= len(out):
        _, opt, rep, length = struct.unpack_from(">QIII", out, offset)
        if rep in FINAL_REPLIES:
            finals.append(opt)
        offset += 20 + length
    served = [o for o, _ in options][:len(finals)]
    assert finals == served
    if events and isinstance(events[-1], (EnterTransmission, ClientAborted)):
        assert finals[-1] in (2, 7)
    else:
        assert len(finals) == len(options)
        assert events[-1] == ClientDisconnected()


names = st.one_of(st.sampled_from([b"disk", b"", b"nope", b"di\0sk", b"\xff\xfe"]),
                  st.binary(max_size=12))
info_requests = st.lists(st.integers(0, 0xFFFF), max_size=6)


@FUZZ
@given(opt=st.sampled_from([6, 7]), name=names, requests=info_requests,
       cut=st.integers(0, 40), extra=st.binary(max_size=6), default=st.sampled_from(["disk", None]))
def test_info_go_payloads(opt, name, requests, cut, extra, default):
    payload = info_go(name, requests)
    payload = payload[:cut] + extra if cut < len(payload) else payload + extra
    stream = struct.pack(">I", 1) + option(opt, payload) + option(2)
    events, out, error, conn = drive([stream], default_export=default)
    assert error is None
    first = events[0]
    if isinstance(first, OptionRefused):
        assert first.reply in (2**31 + 3, 2**31 + 6)  # ERR_INVALID or ERR_UNKNOWN
        assert events[-1] == ClientAborted()
    elif opt == 7:
        assert isinstance(first, EnterTransmission) and conn.trailing_data == option(2)
    else:
        assert first == ClientAborted()


@FUZZ
@given(name=names, flags=st.integers(0, 3))
def test_export_name_payloads(name, flags):
    events, out, error, conn = drive([struct.pack(">I", flags) + option(1, name)],
                                     exports={"disk": EXPORTS["disk"]}, default_export=None)
    if name == b"disk":
        assert events == [EnterTransmission(EXPORTS["disk"], no_zeroes=bool(flags & 2))]
    else:
        assert error is not None and events == []


# --- mutations of a valid handshake ---

VALID = b"".join([
    struct.pack(">I", 3),
    option(8),
    option(3),
    option(6, info_go(b"disk", [1, 2, 3])),
    option(10, b"\0" * 12),
    option(7, info_go(b"", [3])),
    struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 4096),
])

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, len(VALID) - 1), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, len(VALID)), st.none()),
)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, pos, arg in mutations:
        pos %= len(buf) + 1
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= arg
        elif kind == "insert":
            buf[pos:pos] = arg
        elif kind == "delete":
            del buf[pos:pos + arg]
        elif kind == "truncate":
            del buf[pos:]
    return bytes(buf)


def test_unmutated_session_reaches_transmission():
    events, out, error, conn = drive([VALID])
    assert error is None and isinstance(events[-1], EnterTransmission)
    assert conn.trailing_data == VALID[-28:]


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=4),
       cuts=st.lists(st.integers(0, 400), max_size=6), max_len=st.sampled_from([16, 4096]))
def test_mutated_handshake(mutations, cuts, max_len):
    drive(split(mutate(VALID, mutations), cuts), max_option_length=max_len)


@settings(max_examples=50, deadline=None)
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_handshake_byte_at_a_time_matches_whole(mutations):
    data = mutate(VALID, mutations)
    whole = drive([data])
    single = drive([data[i:i + 1] for i in range(len(data))])
    assert whole[0] == single[0] and whole[1] == single[1]
    assert str(whole[2]) == str(single[2])
    assert whole[3].trailing_data == single[3].trailing_data
