# SPDX-License-Identifier: GPL-2.0-or-later
"""NBD_OPT_STARTTLS in the sans-I/O handshake (proto.md "TLS support"): NOTLS, FORCEDTLS
(`TlsMode.REQUIRE`) and SELECTIVETLS (`TlsMode.ALLOW`), golden replies, and hypothesis fuzz of the
new states. The TLS handshake itself is the driver's (C); here it is a call to tls_established().
"""
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica.errors import LocalProtocolError, RemoteProtocolError
from replica.protocol.nbd import (
    NEED_DATA,
    ClientAborted,
    ClientDisconnected,
    EnterTransmission,
    NbdServerConnection,
    NbdServerState,
    OptionRefused,
    StartTls,
    TlsMode,
)
from tests.unit.test_nbd_handshake import (
    ERR_INVALID,
    ERR_UNSUP,
    GREETING,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_INFO,
    OPT_LIST,
    OPT_STARTTLS,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_INFO,
    REP_MAGIC,
    Client,
    info_go_data,
    make_exports,
    option,
)

ERR_TLS_REQD = 2**31 + 5   # proto.md: NBD_REP_ERR_TLS_REQD (5 | NBD_REP_FLAG_ERROR)
TERMINAL = (EnterTransmission, ClientAborted, ClientDisconnected, StartTls)


class TlsClient(Client):
    """Client that also stops at StartTls (the driver's cue to run the TLS handshake)."""

    def events(self):
        events = []
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return events
            events.append(event)
            if isinstance(event, TERMINAL):
                return events

    def start_tls(self):
        assert self.send(option(OPT_STARTTLS)) == [StartTls()]
        assert self.replies() == [(OPT_STARTTLS, REP_ACK, b"")]
        assert self.conn.state is NbdServerState.TLS_HANDSHAKE
        self.conn.tls_established()
        assert self.conn.tls_active and self.conn.state is NbdServerState.OPTIONS


def test_starttls_golden_ack_bytes():
    client = TlsClient(tls=TlsMode.REQUIRE)
    assert client.send(option(OPT_STARTTLS)) == [StartTls()]
    # NBD_REP_MAGIC, option 5, NBD_REP_ACK, length 0
    assert client.conn.data_to_send() == bytes.fromhex(
        "0003e889045565a9 00000005 00000001 00000000")


@pytest.mark.parametrize("mode", [TlsMode.REQUIRE, TlsMode.ALLOW])
def test_starttls_then_go_over_tls(mode):
    client = TlsClient(tls=mode)
    client.start_tls()
    (event,) = client.send(option(OPT_GO, info_go_data(b"disk")))
    assert isinstance(event, EnterTransmission) and event.export.name == "disk"
    replies = client.replies()
    assert [r[1] for r in replies] == [REP_INFO, REP_INFO, REP_ACK]


def test_off_mode_refuses_starttls_as_before():
    client = TlsClient()   # TlsMode.OFF is the default
    (event,) = client.send(option(OPT_STARTTLS))
    assert event == OptionRefused(OPT_STARTTLS, ERR_UNSUP, "TLS is not supported by this server")
    assert client.conn.tls_mode is TlsMode.OFF and not client.conn.tls_active


@pytest.mark.parametrize("opt, label", [
    (OPT_LIST, "NBD_OPT_LIST"), (OPT_INFO, "NBD_OPT_INFO"), (OPT_GO, "NBD_OPT_GO"),
    (OPT_STRUCTURED_REPLY, "NBD_OPT_STRUCTURED_REPLY"), (12, "option 12"),
])
def test_require_mode_refuses_every_option_before_tls(opt, label):
    client = TlsClient(tls=TlsMode.REQUIRE)
    data = info_go_data(b"disk") if opt in (OPT_INFO, OPT_GO) else b""
    reason = f"{label}: TLS is required: send NBD_OPT_STARTTLS first"
    assert client.send(option(opt, data)) == [OptionRefused(opt, ERR_TLS_REQD, reason)]
    assert client.replies() == [(opt, ERR_TLS_REQD, reason.encode())]
    # haggling goes on, and TLS then opens the same option
    client.start_tls()
    if opt == OPT_GO:
        assert isinstance(client.send(option(opt, data))[0], EnterTransmission)


def test_require_mode_export_name_before_tls_is_a_hard_disconnect():
    client = TlsClient(tls=TlsMode.REQUIRE)
    with pytest.raises(RemoteProtocolError, match="^nbd handshake: NBD_OPT_EXPORT_NAME: TLS is "
                                                  "required: the client must send "
                                                  "NBD_OPT_STARTTLS first$"):
        client.send(option(OPT_EXPORT_NAME, b"disk"))
    assert client.conn.state is NbdServerState.ERROR
    assert client.conn.data_to_send() == b""


def test_require_mode_abort_before_tls_is_acked():
    client = TlsClient(tls=TlsMode.REQUIRE)
    assert client.send(option(OPT_ABORT)) == [ClientAborted()]
    assert client.replies() == [(OPT_ABORT, REP_ACK, b"")]


def test_allow_mode_serves_clear_text_clients():
    client = TlsClient(tls=TlsMode.ALLOW)
    (event,) = client.send(option(OPT_EXPORT_NAME, b"disk"))
    assert isinstance(event, EnterTransmission) and not client.conn.tls_active


def test_starttls_after_tls_is_invalid():
    client = TlsClient(tls=TlsMode.REQUIRE)
    client.start_tls()
    reason = "NBD_OPT_STARTTLS: TLS is already active on this connection"
    assert client.send(option(OPT_STARTTLS)) == [OptionRefused(OPT_STARTTLS, ERR_INVALID, reason)]
    assert client.replies() == [(OPT_STARTTLS, ERR_INVALID, reason.encode())]


def test_starttls_with_data_is_invalid():
    client = TlsClient(tls=TlsMode.REQUIRE)
    reason = "NBD_OPT_STARTTLS must carry no data: length=3"
    assert client.send(option(OPT_STARTTLS, b"abc")) == [
        OptionRefused(OPT_STARTTLS, ERR_INVALID, reason)]
    assert client.conn.state is NbdServerState.OPTIONS and not client.conn.tls_active


def test_clear_text_bytes_after_starttls_are_a_hard_disconnect():
    # An attacker in the middle appends an option after the client's STARTTLS: taken as if it
    # came over TLS, it would be answered inside the session.
    client = TlsClient(tls=TlsMode.REQUIRE)
    with pytest.raises(RemoteProtocolError, match="^nbd handshake: NBD_OPT_STARTTLS: 16 bytes sent "
                                                  "in clear after it, before the TLS handshake$"):
        client.send(option(OPT_STARTTLS) + option(OPT_LIST))
    assert client.conn.state is NbdServerState.ERROR
    assert client.conn.data_to_send() == b""   # no ACK: the session is dropped


def test_starttls_then_eof_is_a_disconnect():
    client = TlsClient(tls=TlsMode.REQUIRE)
    client.conn.receive_data(option(OPT_STARTTLS))
    client.conn.receive_data(b"")
    assert client.conn.next_event() == ClientDisconnected()
    assert client.conn.state is NbdServerState.CLOSED


@pytest.mark.parametrize("flags", [0, 2])
def test_non_fixed_newstyle_client(flags):
    with pytest.raises(RemoteProtocolError, match="TLS is required but the client did not set "
                                                  "NBD_FLAG_C_FIXED_NEWSTYLE"):
        TlsClient(tls=TlsMode.REQUIRE, flags=flags)
    client = TlsClient(tls=TlsMode.ALLOW, flags=flags)   # NOTLS for this connection
    assert client.conn.tls_mode is TlsMode.OFF
    (event,) = client.send(option(OPT_STARTTLS))
    assert event.reply == ERR_UNSUP


def test_driver_misuse_in_the_tls_handshake_state():
    client = TlsClient(tls=TlsMode.REQUIRE)
    assert client.send(option(OPT_STARTTLS)) == [StartTls()]
    with pytest.raises(LocalProtocolError, match="the TLS handshake is pending"):
        client.conn.next_event()
    with pytest.raises(LocalProtocolError, match="the TLS handshake is pending"):
        client.conn.receive_data(b"\x16\x03\x01")   # a ClientHello is C's, not ours
    client.conn.tls_established()
    with pytest.raises(LocalProtocolError, match="no TLS handshake pending: state OPTIONS"):
        client.conn.tls_established()


def test_tls_mode_argument_is_checked():
    with pytest.raises(LocalProtocolError, match="invalid tls: not a TlsMode: 'require'"):
        NbdServerConnection(make_exports(), tls="require")


def test_bytes_needed_reads_exactly_one_message():
    conn = NbdServerConnection(make_exports(), tls=TlsMode.REQUIRE)
    conn.data_to_send()
    assert conn.bytes_needed == 4
    conn.receive_data(b"\0\0")
    assert conn.next_event() is NEED_DATA and conn.bytes_needed == 2
    conn.receive_data(b"\0\x03")
    assert conn.next_event() is NEED_DATA and conn.bytes_needed == 16
    go = option(OPT_GO, info_go_data(b"disk"))
    conn.receive_data(go[:10])
    assert conn.next_event() is NEED_DATA and conn.bytes_needed == 6
    conn.receive_data(go[10:16])
    assert conn.next_event() is NEED_DATA and conn.bytes_needed == len(go) - 16
    conn.receive_data(go[16:])
    assert isinstance(conn.next_event(), OptionRefused)   # ERR_TLS_REQD: TLS first
    conn.receive_data(option(OPT_STARTTLS))
    assert conn.next_event() == StartTls() and conn.bytes_needed == 0
    conn.tls_established()
    assert conn.bytes_needed == 16


# --- fuzz: the TLS states under random option streams ---

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
options = st.lists(st.tuples(st.one_of(st.integers(1, 11), st.integers(0, 2**32 - 1)),
                             st.binary(max_size=24)), max_size=8)


def drive_exactly(mode, flags, opts, tls_after):
    """A driver that reads exactly `bytes_needed` (as over a TLS session) and runs the TLS
    handshake on StartTls; returns (events, replies, error, conn)."""
    conn = NbdServerConnection(make_exports(), default_export="disk", tls=mode)
    assert conn.data_to_send() == GREETING
    stream = bytearray(struct.pack(">I", flags) + b"".join(
        option(o, d) for o, d in opts))
    events, out, error = [], bytearray(), None
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            error = exc
            break
        out += conn.data_to_send()
        if event is NEED_DATA:
            need = conn.bytes_needed
            assert need > 0
            chunk, stream[:need] = bytes(stream[:need]), b""
            conn.receive_data(chunk)
            continue
        events.append(event)
        if isinstance(event, StartTls):
            assert conn.state is NbdServerState.TLS_HANDSHAKE
            if not tls_after:
                break            # the TLS handshake failed: the driver drops the connection
            conn.tls_established()
        elif not isinstance(event, OptionRefused):
            break
    replies, offset = [], 0
    while offset < len(out):
        if out[offset:offset + 8] != REP_MAGIC.to_bytes(8, "big"):   # EXPORT_NAME's reply
            assert isinstance(events[-1], EnterTransmission)
            break
        _, opt, rep, length = struct.unpack_from(">QIII", out, offset)
        replies.append((opt, rep))
        offset += 20 + length
    return events, replies, error, conn


@FUZZ
@given(mode=st.sampled_from(list(TlsMode)), flags=st.integers(0, 3), opts=options,
       tls_after=st.booleans())
def test_fuzz_tls_states(mode, flags, opts, tls_after):
    events, replies, error, conn = drive_exactly(mode, flags, opts, tls_after)
    fixed = bool(flags & 1)
    if error is not None:
        assert conn.state is NbdServerState.ERROR
        assert str(error).startswith("nbd handshake: ")
    tls_seen = False
    for event in events:
        if isinstance(event, StartTls):
            assert mode is not TlsMode.OFF and fixed and not tls_seen
            tls_seen = True
    # no ERR_TLS_REQD outside REQUIRE, nor once TLS is up (proto.md "MUST NOT")
    acked_starttls = [i for i, r in enumerate(replies) if r == (OPT_STARTTLS, REP_ACK)]
    assert len(acked_starttls) <= 1
    for i, (opt, rep) in enumerate(replies):
        if rep == ERR_TLS_REQD:
            assert mode is TlsMode.REQUIRE and opt not in (OPT_STARTTLS, OPT_ABORT)
            assert not acked_starttls or i < acked_starttls[0]
        if opt == OPT_STARTTLS and rep != REP_ACK:
            assert rep in (ERR_UNSUP, ERR_INVALID)
            assert (rep == ERR_UNSUP) == (mode is TlsMode.OFF or not fixed)
    # in REQUIRE mode nothing but STARTTLS/ABORT is served in clear, and no export is entered
    if mode is TlsMode.REQUIRE and events and isinstance(events[-1], EnterTransmission):
        assert conn.tls_active
    if mode is TlsMode.REQUIRE and not conn.tls_active:
        assert all(rep == ERR_TLS_REQD or opt in (OPT_STARTTLS, OPT_ABORT)
                   for opt, rep in replies)


@FUZZ
@given(junk=st.binary(min_size=1, max_size=40), mode=st.sampled_from([TlsMode.REQUIRE,
                                                                      TlsMode.ALLOW]))
def test_fuzz_anything_after_starttls_in_the_same_read_is_refused(junk, mode):
    conn = NbdServerConnection(make_exports(), tls=mode)
    conn.data_to_send()
    conn.receive_data(struct.pack(">I", 3) + option(OPT_STARTTLS) + junk)
    with pytest.raises(RemoteProtocolError, match="sent in clear after it"):
        while conn.next_event() is not NEED_DATA:
            pass
    assert conn.data_to_send() == b""
