# SPDX-License-Identifier: GPL-2.0-or-later
"""NBD fixed newstyle handshake, server side: golden bytes, every option path, every error.

The client half is written here with `struct` straight from proto.md (not with our nbd_wire), so
a wrong constant in our code cannot be mirrored by the test.
"""
import struct

import pytest

from replica.errors import LocalProtocolError, RemoteProtocolError
from replica.protocol import nbd_wire
from replica.protocol.nbd import (
    NEED_DATA,
    ClientAborted,
    ClientDisconnected,
    EnterTransmission,
    ExportInfo,
    NbdServerConnection,
    NbdServerState,
    OptionRefused,
    option_name,
    transmission_flags_for,
)

# proto.md values, typed in independently of replica.protocol.nbd_wire
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK_EXPORT, OPT_STARTTLS = 1, 2, 3, 4, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_EXTENDED_HEADERS = 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
ERR_UNSUP, ERR_INVALID, ERR_UNKNOWN = 2**31 + 1, 2**31 + 3, 2**31 + 6
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3
C_FIXED_NEWSTYLE, C_NO_ZEROES = 1, 2

GREETING = bytes.fromhex("4e42444d41474943 49484156454f5054 0003")  # NBDMAGIC IHAVEOPT flags=3
DISK_FLAGS = 0x6D  # HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES
TERMINAL = (EnterTransmission, ClientAborted, ClientDisconnected)


def make_exports():
    return {
        "disk": ExportInfo("disk", 1 << 20, DISK_FLAGS, description="test disk"),
        "ro": ExportInfo("ro", 4096, 0x0007, min_block=512, preferred_block=4096,
                         max_block=1 << 20),
    }


def option(opt: int, data: bytes = b"", magic: int = IHAVEOPT) -> bytes:
    return struct.pack(">QII", magic, opt, len(data)) + data


def info_go_data(name: bytes, requests=()) -> bytes:
    return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(requests))
            + b"".join(struct.pack(">H", r) for r in requests))


def parse_replies(data: bytes):
    """Split server output into (option, reply type, payload) per proto.md's reply header."""
    replies, offset = [], 0
    while offset < len(data):
        magic, opt, rep, length = struct.unpack_from(">QIII", data, offset)
        assert magic == REP_MAGIC, data[offset:].hex()
        offset += 20
        payload = data[offset:offset + length]
        assert len(payload) == length, "truncated reply"
        replies.append((opt, rep, payload))
        offset += length
    return replies


class Client:
    """A tiny test-side client driving one NbdServerConnection."""

    def __init__(self, exports=None, default_export=None, flags=C_FIXED_NEWSTYLE | C_NO_ZEROES,
                 **kwargs):
        self.conn = NbdServerConnection(make_exports() if exports is None else exports,
                                        default_export=default_export, **kwargs)
        assert self.conn.data_to_send() == GREETING
        if flags is not None:
            assert self.send(struct.pack(">I", flags)) == []
            assert self.conn.state is NbdServerState.OPTIONS

    def send(self, data: bytes):
        """Feed bytes; return events until NEED_DATA or a terminal event."""
        self.conn.receive_data(data)
        return self.events()

    def events(self):
        events = []
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return events
            events.append(event)
            if isinstance(event, TERMINAL):
                return events

    def replies(self):
        return parse_replies(self.conn.data_to_send())


# --- greeting and client flags ---

def test_greeting_is_queued_at_once_and_only_once():
    conn = NbdServerConnection(make_exports())
    assert conn.state is NbdServerState.GREETING_SENT
    assert conn.data_to_send() == GREETING
    assert conn.state is NbdServerState.AWAIT_CLIENT_FLAGS
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("flags", [0, C_FIXED_NEWSTYLE, C_NO_ZEROES, C_FIXED_NEWSTYLE | C_NO_ZEROES])
def test_known_client_flags_are_accepted(flags):
    client = Client(flags=flags)
    assert client.conn.data_to_send() == b""


def test_client_flags_may_arrive_before_greeting_is_collected():
    conn = NbdServerConnection(make_exports())
    conn.receive_data(struct.pack(">I", 3))
    assert conn.next_event() is NEED_DATA
    assert conn.state is NbdServerState.OPTIONS
    assert conn.data_to_send() == GREETING


@pytest.mark.parametrize("flags, message", [
    (4, "nbd handshake: client flags: unknown flag bits: 0x00000004 (client flags 0x00000004)"),
    (0x80000003, "nbd handshake: client flags: unknown flag bits: 0x80000000 (client flags 0x80000003)"),
])
def test_unknown_client_flags_are_a_hard_disconnect(flags, message):
    client = Client(flags=None)
    client.conn.receive_data(struct.pack(">I", flags))
    with pytest.raises(RemoteProtocolError) as info:
        client.conn.next_event()
    assert str(info.value) == message
    assert client.conn.state is NbdServerState.ERROR
    assert client.conn.data_to_send() == b""
    # The error is sticky; late bytes are dropped.
    client.conn.receive_data(option(OPT_LIST))
    with pytest.raises(RemoteProtocolError, match="unknown flag bits"):
        client.conn.next_event()
    assert client.conn.buffered_size == 0


# --- NBD_OPT_EXPORT_NAME ---

def test_export_name_with_zero_padding():
    client = Client(flags=C_FIXED_NEWSTYLE)
    events = client.send(option(OPT_EXPORT_NAME, b"disk"))
    assert events == [EnterTransmission(export=make_exports()["disk"], no_zeroes=False)]
    assert client.conn.data_to_send() == bytes.fromhex("0000000000100000 006d") + bytes(124)
    assert client.conn.state is NbdServerState.TRANSMISSION


def test_export_name_without_zero_padding():
    client = Client(flags=C_FIXED_NEWSTYLE | C_NO_ZEROES)
    events = client.send(option(OPT_EXPORT_NAME, b"ro"))
    assert events == [EnterTransmission(export=make_exports()["ro"], no_zeroes=True)]
    assert client.conn.data_to_send() == bytes.fromhex("0000000000001000 0007")


def test_export_name_empty_selects_default_export():
    client = Client(default_export="ro")
    (event,) = client.send(option(OPT_EXPORT_NAME))
    assert event.export.name == "ro"


def test_empty_name_matches_an_export_named_empty_without_default():
    exports = make_exports() | {"": ExportInfo("", 512, 1)}
    client = Client(exports=exports)
    (event,) = client.send(option(OPT_EXPORT_NAME))
    assert event.export is exports[""]
    client = Client(exports=exports, default_export="ro")
    (event,) = client.send(option(OPT_GO, info_go_data(b"")))
    assert event.export is exports["ro"]


def test_export_name_trailing_data_and_later_bytes():
    client = Client()
    request = struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 512)
    events = client.send(option(OPT_EXPORT_NAME, b"disk") + request[:10])
    assert isinstance(events[0], EnterTransmission)
    assert client.conn.trailing_data == request[:10]
    client.conn.receive_data(request[10:])
    assert client.conn.trailing_data == request
    assert client.conn.buffered_size == 0


@pytest.mark.parametrize("name, message", [
    (b"nope", "nbd handshake: NBD_OPT_EXPORT_NAME: unknown export 'nope'"),
    (b"", "nbd handshake: NBD_OPT_EXPORT_NAME: no default export: the client sent an empty export name"),
    (b"di\0sk", "nbd handshake: NBD_OPT_EXPORT_NAME: invalid export name: contains NUL: 'di\\x00sk'"),
    (b"\xff", "nbd handshake: NBD_OPT_EXPORT_NAME: invalid export name: not valid UTF-8: "
              "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_export_name_refused_is_a_hard_disconnect(name, message):
    client = Client()
    with pytest.raises(RemoteProtocolError) as info:
        client.send(option(OPT_EXPORT_NAME, name))
    assert str(info.value) == message
    assert client.conn.state is NbdServerState.ERROR
    assert client.conn.data_to_send() == b""  # the spec leaves no error reply for EXPORT_NAME


# --- NBD_OPT_INFO and NBD_OPT_GO ---

GO_DISK_REPLY = bytes.fromhex(
    # NBD_REP_INFO, NBD_INFO_EXPORT: size 1 MiB, flags 0x6d
    "0003e889045565a9 00000007 00000003 0000000c 0000 0000000000100000 006d"
    # NBD_REP_INFO, NBD_INFO_NAME "disk"
    "0003e889045565a9 00000007 00000003 00000006 0001 6469736b"
    # NBD_REP_INFO, NBD_INFO_DESCRIPTION "test disk"
    "0003e889045565a9 00000007 00000003 0000000b 0002 74657374206469736b"
    # NBD_REP_INFO, NBD_INFO_BLOCK_SIZE 1 / 4096 / 32 MiB
    "0003e889045565a9 00000007 00000003 0000000e 0003 00000001 00001000 02000000"
    # NBD_REP_ACK
    "0003e889045565a9 00000007 00000001 00000000"
)


@pytest.mark.parametrize("flags", [C_FIXED_NEWSTYLE, C_FIXED_NEWSTYLE | C_NO_ZEROES])
def test_go_golden_bytes_and_no_padding(flags):
    client = Client(flags=flags)
    events = client.send(option(OPT_GO, info_go_data(b"disk", [INFO_NAME, INFO_DESCRIPTION,
                                                                INFO_BLOCK_SIZE])))
    assert events == [EnterTransmission(export=make_exports()["disk"], no_zeroes=bool(flags & 2))]
    assert client.conn.data_to_send() == GO_DISK_REPLY  # no zero padding after the ACK
    assert client.conn.state is NbdServerState.TRANSMISSION


def test_info_same_replies_then_haggling_goes_on():
    client = Client()
    data = info_go_data(b"disk", [INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION])
    assert client.send(option(OPT_INFO, data)) == []
    assert client.conn.state is NbdServerState.OPTIONS
    expected = GO_DISK_REPLY.replace(bytes.fromhex("00000007"), bytes.fromhex("00000006"))
    assert client.conn.data_to_send() == expected
    (event,) = client.send(option(OPT_GO, data))
    assert isinstance(event, EnterTransmission)
    assert client.conn.data_to_send() == GO_DISK_REPLY


def test_go_without_requests_sends_export_and_block_size():
    client = Client()
    client.send(option(OPT_GO, info_go_data(b"ro")))
    assert client.replies() == [
        (OPT_GO, REP_INFO, struct.pack(">HQH", INFO_EXPORT, 4096, 7)),
        (OPT_GO, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 512, 4096, 1 << 20)),
        (OPT_GO, REP_ACK, b""),
    ]


def test_go_ignores_unknown_and_duplicate_info_requests():
    client = Client()
    client.send(option(OPT_INFO, info_go_data(b"ro", [INFO_NAME, 77, INFO_NAME, 0xFFFF,
                                                       INFO_DESCRIPTION])))
    replies = client.replies()
    # "ro" has no description: nothing to send for it.
    assert [struct.unpack_from(">H", p)[0] for _, r, p in replies if r == REP_INFO] == \
        [INFO_EXPORT, INFO_NAME, INFO_BLOCK_SIZE]
    assert replies[1][2] == struct.pack(">H", INFO_NAME) + b"ro"


def test_go_empty_name_selects_default_export_and_reports_canonical_name():
    client = Client(default_export="disk")
    (event,) = client.send(option(OPT_GO, info_go_data(b"", [INFO_NAME])))
    assert event.export.name == "disk"
    assert (OPT_GO, REP_INFO, struct.pack(">H", INFO_NAME) + b"disk") in client.replies()


def test_go_trailing_data_is_kept_for_transmission():
    client = Client()
    requests = struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 0, 4096) * 3
    (event,) = client.send(option(OPT_GO, info_go_data(b"disk")) + requests)
    assert isinstance(event, EnterTransmission)
    assert client.conn.trailing_data == requests
    with pytest.raises(LocalProtocolError) as info:
        client.conn.next_event()
    assert str(info.value) == "nbd handshake: next_event: the handshake is over: state TRANSMISSION"


@pytest.mark.parametrize("opt", [OPT_INFO, OPT_GO])
@pytest.mark.parametrize("data, reply, message", [
    (b"", ERR_INVALID, "{label}: option data too short: length=0, at least 6 expected"),
    (b"\0\0\0\0\0", ERR_INVALID, "{label}: option data too short: length=5, at least 6 expected"),
    (struct.pack(">I", 3) + b"ab" + b"\0\0", ERR_INVALID,
     "{label}: export name length beyond the option data: name length=3 option length=8"),
    (struct.pack(">I", 0xFFFFFFFF) + b"\0\0", ERR_INVALID,
     "{label}: export name length beyond the option data: name length=4294967295 option length=6"),
    (info_go_data(b"disk", [1]) + b"x", ERR_INVALID,
     "{label}: option length does not match its contents: length=13 expected=12 "
     "(name length=4 information requests=1)"),
    (info_go_data(b"disk") + b"\0\0", ERR_INVALID,
     "{label}: option length does not match its contents: length=12 expected=10 "
     "(name length=4 information requests=0)"),
    (info_go_data(b"disk", [1, 2])[:-2], ERR_INVALID,
     "{label}: option length does not match its contents: length=12 expected=14 "
     "(name length=4 information requests=2)"),
    (info_go_data(b"d\0"), ERR_INVALID, "{label}: invalid export name: contains NUL: 'd\\x00'"),
    (info_go_data(b"\xc3"), ERR_INVALID,
     "{label}: invalid export name: not valid UTF-8: 'utf-8' codec can't decode byte 0xc3 in "
     "position 0: unexpected end of data"),
    (info_go_data(b"nope"), ERR_UNKNOWN, "{label}: unknown export 'nope'"),
    (info_go_data(b""), ERR_UNKNOWN,
     "{label}: no default export: the client sent an empty export name"),
])
def test_info_go_errors_are_replied_and_haggling_goes_on(opt, data, reply, message):
    label = {OPT_INFO: "NBD_OPT_INFO", OPT_GO: "NBD_OPT_GO"}[opt]
    message = message.format(label=label)
    client = Client()
    events = client.send(option(opt, data))
    assert events == [OptionRefused(option=opt, reply=reply, reason=message)]
    assert client.replies() == [(opt, reply, message.encode())]
    assert client.conn.state is NbdServerState.OPTIONS
    (event,) = client.send(option(OPT_GO, info_go_data(b"ro")))
    assert isinstance(event, EnterTransmission)


# --- NBD_OPT_LIST ---

def test_list_golden_bytes():
    client = Client()
    assert client.send(option(OPT_LIST)) == []
    assert client.conn.data_to_send() == bytes.fromhex(
        "0003e889045565a9 00000003 00000002 00000011 00000004 6469736b 74657374206469736b"
        "0003e889045565a9 00000003 00000002 00000006 00000002 726f"
        "0003e889045565a9 00000003 00000001 00000000")


def test_list_with_no_exports_is_just_ack():
    client = Client(exports={})
    client.send(option(OPT_LIST))
    assert client.replies() == [(OPT_LIST, REP_ACK, b"")]


def test_list_with_data_is_invalid():
    client = Client()
    message = "NBD_OPT_LIST must carry no data: length=3"
    assert client.send(option(OPT_LIST, b"abc")) == [OptionRefused(OPT_LIST, ERR_INVALID, message)]
    assert client.replies() == [(OPT_LIST, ERR_INVALID, message.encode())]


# --- NBD_OPT_ABORT ---

@pytest.mark.parametrize("data", [b"", b"ignored by the server"])
def test_abort_is_acked_and_closes(data):
    client = Client()
    assert client.send(option(OPT_ABORT, data) + option(OPT_LIST)) == [ClientAborted()]
    assert client.replies() == [(OPT_ABORT, REP_ACK, b"")]  # the LIST after ABORT is not served
    assert client.conn.state is NbdServerState.CLOSED
    assert client.conn.buffered_size == 0
    client.conn.receive_data(b"late bytes")
    assert client.conn.trailing_data == b""
    with pytest.raises(LocalProtocolError, match="the handshake is over: state CLOSED"):
        client.conn.next_event()


# --- options we do not support ---

@pytest.mark.parametrize("opt, reason", [
    (OPT_STARTTLS, "TLS is not supported by this server"),
    (OPT_STRUCTURED_REPLY, "structured replies are not supported by this server"),
    (OPT_LIST_META_CONTEXT, "metadata contexts are not supported by this server"),
    (OPT_SET_META_CONTEXT, "metadata contexts are not supported by this server"),
    (OPT_EXTENDED_HEADERS, "NBD_OPT_EXTENDED_HEADERS is not supported by this server"),
    (OPT_PEEK_EXPORT, "NBD_OPT_PEEK_EXPORT is not supported by this server"),
    (0, "option 0 is not supported by this server"),
    (12, "option 12 is not supported by this server"),
    (0xFFFFFFFF, "option 4294967295 is not supported by this server"),
])
@pytest.mark.parametrize("data", [b"", b"\0" * 9])
def test_unsupported_options_get_err_unsup_and_haggling_goes_on(opt, reason, data):
    client = Client()
    events = client.send(option(opt, data))
    assert events == [OptionRefused(option=opt, reply=ERR_UNSUP, reason=reason)]
    assert client.replies() == [(opt, ERR_UNSUP, reason.encode())]
    (event,) = client.send(option(OPT_EXPORT_NAME, b"disk"))
    assert isinstance(event, EnterTransmission)


# --- framing errors, limits, EOF ---

def test_bad_option_magic_is_detected_after_eight_bytes():
    client = Client()
    with pytest.raises(RemoteProtocolError) as info:
        client.send(b"GET / HT")
    assert str(info.value) == ("nbd handshake: option header: bad magic: expected "
                               "0x49484156454f5054 (IHAVEOPT), got 0x474554202f204854")
    assert client.conn.state is NbdServerState.ERROR


def test_reply_magic_sent_back_as_option_magic_is_refused():
    client = Client()
    with pytest.raises(RemoteProtocolError, match="got 0x0003e889045565a9"):
        client.send(option(OPT_LIST, magic=REP_MAGIC))


def test_option_length_over_limit_refused_from_the_header_alone():
    client = Client()
    header = struct.pack(">QII", IHAVEOPT, OPT_GO, 4097)
    with pytest.raises(RemoteProtocolError) as info:
        client.send(header)  # no payload: it is never waited for nor buffered
    assert str(info.value) == ("nbd handshake: NBD_OPT_GO: option data too long: "
                               "length=4097 max_option_length=4096")


def test_option_length_at_limit_is_read_and_answered():
    client = Client()
    events = client.send(option(99, b"x" * 4096))
    assert events == [OptionRefused(99, ERR_UNSUP, "option 99 is not supported by this server")]


def test_custom_max_option_length():
    client = Client(max_option_length=10)
    assert client.send(option(OPT_INFO, info_go_data(b"disk"))) == []
    assert [r for _, r, _ in client.replies()] == [REP_INFO, REP_INFO, REP_ACK]
    with pytest.raises(RemoteProtocolError, match=r"NBD_OPT_GO: option data too long: "
                                                  r"length=13 max_option_length=10"):
        client.send(option(OPT_GO, info_go_data(b"disk", [1]) + b"x"))


def test_absurd_length_unknown_option_is_named_by_number():
    client = Client()
    with pytest.raises(RemoteProtocolError, match="^nbd handshake: option 4242: option data too long: "
                                                  "length=4294967295 "):
        client.send(struct.pack(">QII", IHAVEOPT, 4242, 0xFFFFFFFF))


@pytest.mark.parametrize("prefix", [
    b"",                                            # before client flags
    b"\0\0",                                        # mid client flags
    struct.pack(">I", 3),                           # between options
    struct.pack(">I", 3) + option(OPT_GO, info_go_data(b"disk"))[:20],  # mid option
])
def test_eof_during_handshake_is_client_disconnected(prefix):
    conn = NbdServerConnection(make_exports())
    conn.data_to_send()
    if prefix:
        conn.receive_data(prefix)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ClientDisconnected()
    assert conn.state is NbdServerState.CLOSED
    assert conn.buffered_size == 0
    with pytest.raises(LocalProtocolError) as info:
        conn.receive_data(b"more")
    assert str(info.value) == "nbd handshake: receive_data: called after EOF"


def test_eof_right_after_a_complete_option_serves_it_first():
    client = Client()
    client.conn.receive_data(option(OPT_LIST))
    client.conn.receive_data(b"")
    assert client.events() == [ClientDisconnected()]
    assert [r for _, r, _ in client.replies()] == [REP_SERVER, REP_SERVER, REP_ACK]


def test_eof_after_transmission_began_is_left_to_the_data_path():
    client = Client()
    client.send(option(OPT_EXPORT_NAME, b"disk"))
    client.conn.receive_data(b"")
    assert client.conn.state is NbdServerState.TRANSMISSION


# --- whole sessions ---

SESSION = b"".join([
    struct.pack(">I", C_FIXED_NEWSTYLE | C_NO_ZEROES),
    option(OPT_STRUCTURED_REPLY),
    option(OPT_LIST),
    option(OPT_INFO, info_go_data(b"nope", [INFO_BLOCK_SIZE])),
    option(OPT_INFO, info_go_data(b"ro", [INFO_NAME, INFO_BLOCK_SIZE])),
    option(OPT_SET_META_CONTEXT, b"\0" * 12),
    option(OPT_GO, info_go_data(b"disk", [INFO_BLOCK_SIZE, INFO_DESCRIPTION])),
    struct.pack(">IHHQQI", 0x25609513, 0, 3, 1, 0, 0),  # a pipelined NBD_CMD_FLUSH
])


def run_session(chunks):
    conn = NbdServerConnection(make_exports())
    events, out = [], conn.data_to_send()
    for chunk in chunks:
        conn.receive_data(chunk)
        while conn.state is not NbdServerState.TRANSMISSION:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
        out += conn.data_to_send()
    return events, out, conn.trailing_data


def test_byte_at_a_time_gives_identical_output():
    whole = run_session([SESSION])
    single = run_session([SESSION[i:i + 1] for i in range(len(SESSION))])
    sevens = run_session([SESSION[i:i + 7] for i in range(0, len(SESSION), 7)])
    assert whole == single == sevens
    events, out, trailing = whole
    assert [type(e) for e in events] == [OptionRefused, OptionRefused, OptionRefused,
                                         EnterTransmission]
    assert events[1].reply == ERR_UNKNOWN
    assert out.startswith(GREETING)
    replies = parse_replies(out[len(GREETING):])
    assert [(o, r) for o, r, _ in replies] == [
        (OPT_STRUCTURED_REPLY, ERR_UNSUP),
        (OPT_LIST, REP_SERVER), (OPT_LIST, REP_SERVER), (OPT_LIST, REP_ACK),
        (OPT_INFO, ERR_UNKNOWN),
        (OPT_INFO, REP_INFO), (OPT_INFO, REP_INFO), (OPT_INFO, REP_INFO), (OPT_INFO, REP_ACK),
        (OPT_SET_META_CONTEXT, ERR_UNSUP),
        (OPT_GO, REP_INFO), (OPT_GO, REP_INFO), (OPT_GO, REP_INFO), (OPT_GO, REP_ACK),
    ]
    assert trailing == SESSION[-28:]


def test_buffer_stays_bounded_while_an_option_trickles_in():
    client = Client(max_option_length=64)
    data = option(OPT_INFO, info_go_data(b"disk" * 10))
    for i, byte in enumerate(data[:-1]):
        assert client.send(bytes([byte])) == []
        assert client.conn.buffered_size == i + 1 <= 16 + 64
    (event,) = client.send(data[-1:])
    assert event.reply == ERR_UNKNOWN
    assert client.conn.buffered_size == 0


# --- ExportInfo, constructor checks, helpers ---

@pytest.mark.parametrize("kwargs, message", [
    (dict(size=-1), "nbd export 'e': invalid size: must be 0..2^64-1: size=-1"),
    (dict(size=1 << 64), f"nbd export 'e': invalid size: must be 0..2^64-1: size={1 << 64}"),
    (dict(transmission_flags=0x6C),
     "nbd export 'e': invalid transmission_flags: must be 16 bits including HAS_FLAGS: "
     "transmission_flags=108"),
    (dict(transmission_flags=0x10001),
     "nbd export 'e': invalid transmission_flags: must be 16 bits including HAS_FLAGS: "
     "transmission_flags=65537"),
    (dict(min_block=3), "nbd export 'e': invalid min_block: must be a power of 2 up to 65536: min_block=3"),
    (dict(min_block=0), "nbd export 'e': invalid min_block: must be a power of 2 up to 65536: min_block=0"),
    (dict(min_block=1 << 17, preferred_block=1 << 17, max_block=1 << 17),
     "nbd export 'e': invalid min_block: must be a power of 2 up to 65536: min_block=131072"),
    (dict(preferred_block=256),
     "nbd export 'e': invalid preferred_block: must be a power of 2 at least max(min_block, 512): "
     "preferred_block=256 min_block=1"),
    (dict(min_block=8192, preferred_block=4096),
     "nbd export 'e': invalid preferred_block: must be a power of 2 at least max(min_block, 512): "
     "preferred_block=4096 min_block=8192"),
    (dict(max_block=2048),
     "nbd export 'e': invalid max_block: must be preferred_block..2^32-1: max_block=2048 "
     "preferred_block=4096"),
    (dict(max_block=1 << 32),
     "nbd export 'e': invalid max_block: must be preferred_block..2^32-1: max_block=4294967296 "
     "preferred_block=4096"),
    (dict(description="a\0b"), "nbd export 'e': invalid description: contains NUL"),
    (dict(description="x" * 4097),
     "nbd export 'e': invalid description: longer than 4096 bytes: length=4097"),
    (dict(description="\udcff"),
     "nbd export 'e': invalid description: 'utf-8' codec can't encode character '\\udcff' in "
     "position 0: surrogates not allowed"),
    (dict(name=b"e"), "nbd export \"b'e'\": invalid name: not a str: b'e'"),
])
def test_export_info_is_validated(kwargs, message):
    fields = dict(name="e", size=4096, transmission_flags=1) | kwargs
    with pytest.raises(LocalProtocolError) as info:
        ExportInfo(**fields)
    assert str(info.value) == message


def test_export_info_accepts_spec_extremes():
    ExportInfo("", 0, 1, min_block=65536, preferred_block=65536, max_block=0xFFFFFFFF)
    ExportInfo("é" * 2048, (1 << 64) - 1, 0xFFFF, description="d" * 4096)


def test_connection_checks_its_arguments():
    exports = make_exports()
    with pytest.raises(LocalProtocolError, match=r"^nbd handshake: invalid exports: key 'x' must map "
                                                 r"to an ExportInfo of that name: got ExportInfo\("):
        NbdServerConnection({"x": exports["disk"]})
    with pytest.raises(LocalProtocolError, match="key 'x' must map to an ExportInfo of that name: got 5"):
        NbdServerConnection({"x": 5})
    with pytest.raises(LocalProtocolError) as info:
        NbdServerConnection(exports, default_export="nope")
    assert str(info.value) == "nbd handshake: invalid default_export: no such export: 'nope'"
    with pytest.raises(LocalProtocolError, match="invalid max_option_length: -1"):
        NbdServerConnection(exports, max_option_length=-1)


@pytest.mark.parametrize("kwargs, flags", [
    (dict(read_only=False), 0x6D),
    (dict(read_only=True), 0x07),
    (dict(read_only=False, can_multi_conn=True), 0x16D),
    (dict(read_only=True, can_flush=False, can_multi_conn=True), 0x103),
    (dict(read_only=False, can_flush=False, can_fua=False, can_trim=False, can_zero=False), 0x01),
    (dict(read_only=False, can_fua=False), 0x65),
    (dict(read_only=False, can_trim=False), 0x4D),
    (dict(read_only=False, can_zero=False), 0x2D),
])
def test_transmission_flags_for(kwargs, flags):
    assert transmission_flags_for(**kwargs) == flags
    assert type(transmission_flags_for(**kwargs)) is int


def test_option_name_and_need_data():
    assert option_name(7) == "NBD_OPT_GO"
    assert option_name(1) == "NBD_OPT_EXPORT_NAME"
    assert option_name(1000) == "option 1000"
    assert repr(NEED_DATA) == "NEED_DATA"
    assert type(NEED_DATA)() is NEED_DATA


def test_wire_constants_match_the_spec():
    w = nbd_wire
    assert w.NBDMAGIC.to_bytes(8, "big") == b"NBDMAGIC"
    assert w.IHAVEOPT.to_bytes(8, "big") == b"IHAVEOPT"
    assert (w.NBD_REP_MAGIC, w.NBD_REQUEST_MAGIC, w.NBD_SIMPLE_REPLY_MAGIC,
            w.NBD_STRUCTURED_REPLY_MAGIC) == (0x3E889045565A9, 0x25609513, 0x67446698, 0x668E33EF)
    assert (w.REQUEST.size, w.SIMPLE_REPLY.size, w.STRUCTURED_REPLY_CHUNK.size) == (28, 16, 20)
    assert (w.OPTION_HEADER.size, w.OPTION_REPLY_HEADER.size, w.NEWSTYLE_GREETING.size) == (16, 20, 18)
    assert (w.INFO_EXPORT.size, w.INFO_BLOCK_SIZE.size) == (12, 14)
    assert w.NbdRep.ERR_TOO_BIG == 2**31 + 9 and w.NbdRep.ERR_BLOCK_SIZE_REQD == 2**31 + 8
    assert [int(c) for c in w.NbdCmd][:8] == list(range(8))
    assert (w.NbdFlag.CAN_MULTI_CONN, w.NbdFlag.SEND_FAST_ZERO) == (0x100, 0x800)
    assert (w.NbdCmdFlag.NO_HOLE, w.NbdCmdFlag.FAST_ZERO) == (2, 16)
    assert (w.NbdError.EOVERFLOW, w.NbdError.ESHUTDOWN) == (75, 108)
