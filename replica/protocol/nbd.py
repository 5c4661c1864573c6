# SPDX-License-Identifier: GPL-2.0-or-later
"""Server side of the NBD fixed newstyle handshake, sans-I/O (bytes in, events out, like h11).

Owns: the greeting, client flags, option haggling (EXPORT_NAME, ABORT, LIST, INFO, GO, STARTTLS
and the error replies for everything else) up to the start of the transmission phase. It does not
own the transmission phase: that runs in C (csrc/) on the same socket (or TLS session), starting
with `trailing_data`; nor the TLS handshake itself, which the driver runs (in C) when told to.
Spec: the NetworkBlockDevice project's doc/proto.md, sections "Newstyle negotiation", "Fixed
newstyle negotiation", "Option types", "Option reply types", "Size constraints" and "TLS support".

Lifecycle (`conn.state`)::

    GREETING_SENT --data_to_send()--> AWAIT_CLIENT_FLAGS --client flags--> OPTIONS
    OPTIONS --LIST/INFO/unknown option--> OPTIONS            (replies queued)
    OPTIONS --EXPORT_NAME | GO+ACK--> TRANSMISSION           (event EnterTransmission)
    OPTIONS --ABORT--> CLOSED                                 (event ClientAborted, ACK queued)
    OPTIONS --STARTTLS+ACK--> TLS_HANDSHAKE                   (event StartTls: the driver sends
    TLS_HANDSHAKE --tls_established()--> OPTIONS               the ACK, runs the TLS handshake,
                                                               then feeds decrypted bytes)
    any handshake state --EOF--> CLOSED                       (event ClientDisconnected)
    any handshake state --protocol violation--> ERROR         (RemoteProtocolError raised)

Driver contract: feed bytes with `receive_data` (b"" for EOF), call `next_event` until it
returns NEED_DATA or a terminal event (EnterTransmission, ClientAborted, ClientDisconnected,
StartTls), and
send `data_to_send()` after each batch and before acting on a terminal event. On
RemoteProtocolError the driver drops the connection (a "hard disconnect" in spec terms) without
sending anything more. A driver that reads exactly (a TLS session's whole reads) asks
`bytes_needed` how many bytes the next message still lacks. Nothing here reads unbounded data:
an option header announcing more than `max_option_length` bytes is a protocol violation, raised
as soon as the header is complete.
As the spec forbids a new option before the final reply to the previous one, a well-behaved
client never has more than one option in flight; feed the connection in bounded chunks and call
`next_event` after each, and at most one chunk plus one option is ever buffered.

Policy (documented choices where the spec allows several):
- Clients that do not set NBD_FLAG_C_FIXED_NEWSTYLE are still served fixed newstyle replies
  ("Servers MAY choose to honour fixed newstyle"); unknown client flag bits are a hard disconnect.
- TLS (`tls=TlsMode...`, nbdkit's --tls=off|on|require): OFF is the spec's NOTLS mode
  (NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP); REQUIRE is FORCEDTLS (before TLS every option but
  STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME, which cannot be refused,
  is a hard disconnect); ALLOW is SELECTIVETLS with no TLS-only export (the client chooses).
  STARTTLS once TLS is up, or with data, gets NBD_REP_ERR_INVALID. Bytes that arrive in clear
  after STARTTLS, before our ACK was even read, are a hard disconnect: taken as part of the TLS
  stream they would let a man in the middle inject options (the STARTTLS injection flaw of
  SMTP/IMAP servers, CVE-2011-0411). A client without NBD_FLAG_C_FIXED_NEWSTYLE cannot do TLS
  (spec: such a server "MUST operate in NOTLS mode"): REQUIRE drops it, ALLOW serves it NOTLS.
- Structured replies, metadata contexts and extended headers are not supported
  (NBD_REP_ERR_UNSUP), so the transmission phase uses simple replies only.
- NBD_OPT_INFO/GO always send NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE; NBD_INFO_NAME and
  NBD_INFO_DESCRIPTION when requested. Sizing is never required (no ERR_BLOCK_SIZE_REQD).
- NBD_OPT_LIST sends each export's description after its name in NBD_REP_SERVER.
"""
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from replica.errors import LocalProtocolError, RemoteProtocolError
from replica.protocol import nbd_wire as wire
from replica.protocol.nbd_wire import NbdClientFlag, NbdFlag, NbdInfo, NbdOpt, NbdRep


class _NeedData:
    """Sentinel type: `next_event` needs more bytes before it can produce an event."""

    _instance: "_NeedData | None" = None

    def __new__(cls) -> "_NeedData":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class NbdServerState(enum.Enum):
    """Where the server side of one connection is in the handshake."""

    GREETING_SENT = "greeting-sent"  # greeting queued, not yet taken by data_to_send()
    AWAIT_CLIENT_FLAGS = "await-client-flags"  # greeting handed out, waiting for client flags
    OPTIONS = "options"  # option haggling
    TLS_HANDSHAKE = "tls-handshake"  # STARTTLS acknowledged; the driver runs the TLS handshake
    TRANSMISSION = "transmission"  # handshake done; the rest of the stream is transmission
    CLOSED = "closed"  # client aborted or disconnected
    ERROR = "error"  # the client violated the protocol; drop the connection


_HANDSHAKE_STATES = (
    NbdServerState.GREETING_SENT,
    NbdServerState.AWAIT_CLIENT_FLAGS,
    NbdServerState.OPTIONS,
)


class TlsMode(enum.Enum):
    """The server's TLS mode for a connection (proto.md "Server-side requirements")."""

    OFF = "off"          # NOTLS
    ALLOW = "allow"      # SELECTIVETLS, no TLS-only export (nbdkit --tls=on)
    REQUIRE = "require"  # FORCEDTLS (nbdkit --tls=require)

# A plain int: `~` on an IntFlag keeps only the defined bits, which would hide unknown ones.
_KNOWN_CLIENT_FLAGS = int(NbdClientFlag.FIXED_NEWSTYLE | NbdClientFlag.NO_ZEROES)
_SERVER_HANDSHAKE_FLAGS = wire.NbdHandshakeFlag.FIXED_NEWSTYLE | wire.NbdHandshakeFlag.NO_ZEROES
_INFO_GO_FIXED_LENGTH = wire.NAME_LENGTH.size + wire.INFO_REQUEST_COUNT.size  # 6


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check_string(export: str, field: str, value: str) -> None:
    """Spec "Conventions": strings are UTF-8, without NUL, at most 4096 bytes."""
    if not isinstance(value, str):
        raise LocalProtocolError(f"nbd export {export!r}: invalid {field}: not a str: {value!r}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"nbd export {export!r}: invalid {field}: {exc}") from None
    if b"\0" in encoded:
        raise LocalProtocolError(f"nbd export {export!r}: invalid {field}: contains NUL")
    if len(encoded) > wire.NBD_MAX_STRING:
        raise LocalProtocolError(
            f"nbd export {export!r}: invalid {field}: longer than {wire.NBD_MAX_STRING} bytes: "
            f"length={len(encoded)}")


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What the handshake tells a client about one export (validated on creation).

    `transmission_flags` are NbdFlag bits and must include HAS_FLAGS (see
    `transmission_flags_for`). The block sizes follow proto.md "Size constraints".
    """

    name: str
    size: int
    transmission_flags: int
    description: str = ""
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        _check_string(str(self.name), "name", self.name)
        _check_string(self.name, "description", self.description)
        prefix = f"nbd export {self.name!r}"
        if not isinstance(self.size, int) or not 0 <= self.size < 1 << 64:
            raise LocalProtocolError(
                f"{prefix}: invalid size: must be 0..2^64-1: size={self.size!r}")
        flags = self.transmission_flags
        if not isinstance(flags, int) or not 0 <= flags <= 0xFFFF \
                or not flags & NbdFlag.HAS_FLAGS:
            raise LocalProtocolError(
                f"{prefix}: invalid transmission_flags: must be 16 bits including HAS_FLAGS: "
                f"transmission_flags={flags!r}")
        if not isinstance(self.min_block, int) or not _is_power_of_two(self.min_block) \
                or self.min_block > wire.NBD_MAX_MIN_BLOCK:
            raise LocalProtocolError(
                f"{prefix}: invalid min_block: must be a power of 2 up to "
                f"{wire.NBD_MAX_MIN_BLOCK}: min_block={self.min_block!r}")
        if not isinstance(self.preferred_block, int) or not _is_power_of_two(self.preferred_block) \
                or self.preferred_block < max(self.min_block, 512):
            raise LocalProtocolError(
                f"{prefix}: invalid preferred_block: must be a power of 2 at least "
                f"max(min_block, 512): preferred_block={self.preferred_block!r} "
                f"min_block={self.min_block}")
        if not isinstance(self.max_block, int) \
                or not self.preferred_block <= self.max_block <= 0xFFFFFFFF:
            raise LocalProtocolError(
                f"{prefix}: invalid max_block: must be preferred_block..2^32-1: "
                f"max_block={self.max_block!r} preferred_block={self.preferred_block}")


def transmission_flags_for(read_only: bool, can_flush: bool = True, can_fua: bool = True,
                           can_trim: bool = True, can_zero: bool = True,
                           can_multi_conn: bool = False) -> int:
    """Transmission flags for an export with these capabilities (HAS_FLAGS always set).

    As nbdkit does, a read-only export advertises no write-side features (FUA, TRIM,
    WRITE_ZEROES); FLUSH stays available. CAN_MULTI_CONN is set only when asked for.
    """
    flags = NbdFlag.HAS_FLAGS
    if read_only:
        flags |= NbdFlag.READ_ONLY
    if can_flush:
        flags |= NbdFlag.SEND_FLUSH
    if not read_only:
        if can_fua:
            flags |= NbdFlag.SEND_FUA
        if can_trim:
            flags |= NbdFlag.SEND_TRIM
        if can_zero:
            flags |= NbdFlag.SEND_WRITE_ZEROES
    if can_multi_conn:
        flags |= NbdFlag.CAN_MULTI_CONN
    return int(flags)


# --- Events ---

@dataclass(frozen=True, slots=True)
class EnterTransmission:
    """The handshake ended (EXPORT_NAME, or GO acknowledged); send data_to_send() then serve."""

    export: ExportInfo
    no_zeroes: bool


@dataclass(frozen=True, slots=True)
class ClientAborted:
    """The client sent NBD_OPT_ABORT (soft disconnect); its ACK is already queued."""


@dataclass(frozen=True, slots=True)
class ClientDisconnected:
    """The client closed the connection during the handshake."""


@dataclass(frozen=True, slots=True)
class OptionRefused:
    """An option got an error reply (already queued) and haggling goes on; for the log."""

    option: int
    reply: int
    reason: str


@dataclass(frozen=True, slots=True)
class StartTls:
    """NBD_OPT_STARTTLS was acknowledged (the ACK is queued): send data_to_send() in clear, run
    the TLS handshake, call tls_established(), then go on feeding the decrypted bytes."""


HandshakeEvent = EnterTransmission | ClientAborted | ClientDisconnected | OptionRefused | StartTls


def option_name(option: int) -> str:
    """The spec name of an option number, e.g. `NBD_OPT_GO`, or `option 42` if unknown."""
    try:
        return f"NBD_OPT_{NbdOpt(option).name}"
    except ValueError:
        return f"option {option}"


class NbdServerConnection:
    """Server side of one NBD connection's handshake (see the module docstring)."""

    def __init__(self, exports: Mapping[str, ExportInfo], default_export: str | None = None,
                 max_option_length: int = 4096, tls: TlsMode = TlsMode.OFF) -> None:
        for key, export in exports.items():
            if not isinstance(export, ExportInfo) or export.name != key:
                raise LocalProtocolError(
                    f"nbd handshake: invalid exports: key {key!r} must map to an ExportInfo "
                    f"of that name: got {export!r}")
        if default_export is not None and default_export not in exports:
            raise LocalProtocolError(
                f"nbd handshake: invalid default_export: no such export: {default_export!r}")
        if not isinstance(max_option_length, int) or max_option_length < 0:
            raise LocalProtocolError(
                f"nbd handshake: invalid max_option_length: {max_option_length!r}")
        if not isinstance(tls, TlsMode):
            raise LocalProtocolError(f"nbd handshake: invalid tls: not a TlsMode: {tls!r}")
        self._tls_mode = tls
        self._tls_active = False
        self._exports = dict(exports)
        self._default_export = default_export
        self._max_option_length = max_option_length
        self._state = NbdServerState.GREETING_SENT
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self._trailing = bytearray()
        self._eof = False
        self._no_zeroes = False
        self._error = ""
        self._outgoing += wire.NEWSTYLE_GREETING.pack(
            wire.NBDMAGIC, wire.IHAVEOPT, _SERVER_HANDSHAKE_FLAGS)

    # --- public API ---

    @property
    def state(self) -> NbdServerState:
        return self._state

    @property
    def tls_mode(self) -> TlsMode:
        """The mode this connection runs in (ALLOW falls back to OFF for a non-fixed client)."""
        return self._tls_mode

    @property
    def tls_active(self) -> bool:
        """True once tls_established() was called: every later byte goes over TLS."""
        return self._tls_active

    @property
    def bytes_needed(self) -> int:
        """How many more bytes the next client message needs (0 outside the handshake states).

        For drivers that read exactly (a TLS session): after NEED_DATA, reading this many bytes
        always lets next_event make progress, and never reads past the message (so requests
        pipelined after NBD_OPT_GO stay in the session for the transmission phase)."""
        have = len(self._buffer)
        if self._state in (NbdServerState.GREETING_SENT, NbdServerState.AWAIT_CLIENT_FLAGS):
            return max(0, wire.CLIENT_FLAGS.size - have)
        if self._state is not NbdServerState.OPTIONS:
            return 0
        if have < wire.OPTION_HEADER.size:
            return wire.OPTION_HEADER.size - have
        length: int = wire.OPTION_HEADER.unpack_from(self._buffer)[2]
        return max(0, wire.OPTION_HEADER.size + length - have)

    def tls_established(self) -> None:
        """The driver finished the TLS handshake that StartTls asked for: haggling goes on."""
        if self._state is not NbdServerState.TLS_HANDSHAKE:
            raise LocalProtocolError(
                f"nbd handshake: tls_established: no TLS handshake pending: state "
                f"{self._state.name}")
        self._tls_active = True
        self._state = NbdServerState.OPTIONS

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the handshake ended (e.g. requests pipelined after GO)."""
        return bytes(self._trailing)

    @property
    def buffered_size(self) -> int:
        """Received handshake bytes not yet parsed into an event (bounded, see module doc)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; b"" means the client closed its side (EOF)."""
        if self._eof:
            raise LocalProtocolError("nbd handshake: receive_data: called after EOF")
        if self._state is NbdServerState.TLS_HANDSHAKE:
            raise LocalProtocolError(
                "nbd handshake: receive_data: the TLS handshake is pending: these bytes belong "
                "to it (call tls_established() first)")
        if not data:
            self._eof = True
        elif self._state is NbdServerState.TRANSMISSION:
            self._trailing += data
        elif self._state in _HANDSHAKE_STATES:
            self._buffer += data
        # CLOSED / ERROR: the connection is over; late bytes are dropped.

    def data_to_send(self) -> bytes:
        """Everything queued for the client so far; the queue is then empty."""
        if self._state is NbdServerState.GREETING_SENT:
            self._state = NbdServerState.AWAIT_CLIENT_FLAGS
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def next_event(self) -> HandshakeEvent | _NeedData:
        """The next event, or NEED_DATA; raises RemoteProtocolError on a protocol violation."""
        if self._state is NbdServerState.ERROR:
            raise RemoteProtocolError(self._error)
        if self._state is NbdServerState.TLS_HANDSHAKE:
            raise LocalProtocolError(
                "nbd handshake: next_event: the TLS handshake is pending: call "
                "tls_established() first")
        if self._state not in _HANDSHAKE_STATES:
            raise LocalProtocolError(
                f"nbd handshake: next_event: the handshake is over: state {self._state.name}")
        try:
            event = self._process()
        except RemoteProtocolError as exc:
            self._state = NbdServerState.ERROR
            self._error = str(exc)
            self._buffer.clear()
            raise
        if event is NEED_DATA and self._eof:
            self._state = NbdServerState.CLOSED
            self._buffer.clear()
            return ClientDisconnected()
        return event

    # --- parsing ---

    def _process(self) -> HandshakeEvent | _NeedData:
        """Consume complete messages until one yields an event or more data is needed."""
        while True:
            if self._state is not NbdServerState.OPTIONS:
                if not self._maybe_read_client_flags():
                    return NEED_DATA
                continue
            option = self._maybe_read_option()
            if option is None:
                return NEED_DATA
            event = self._handle_option(*option)
            if event is not None:
                return event

    def _maybe_read_client_flags(self) -> bool:
        """proto.md "Newstyle negotiation": C: 32 bits, client flags."""
        if len(self._buffer) < wire.CLIENT_FLAGS.size:
            return False
        (flags,) = wire.CLIENT_FLAGS.unpack_from(self._buffer)
        del self._buffer[:wire.CLIENT_FLAGS.size]
        unknown = flags & ~_KNOWN_CLIENT_FLAGS
        if unknown:
            raise RemoteProtocolError(
                f"nbd handshake: client flags: unknown flag bits: 0x{unknown:08x} "
                f"(client flags 0x{flags:08x})")
        self._no_zeroes = bool(flags & NbdClientFlag.NO_ZEROES)
        if not flags & NbdClientFlag.FIXED_NEWSTYLE:
            # proto.md "TLS support": NOTLS unless the client replied FIXED_NEWSTYLE.
            if self._tls_mode is TlsMode.REQUIRE:
                raise RemoteProtocolError(
                    f"nbd handshake: client flags: TLS is required but the client did not set "
                    f"NBD_FLAG_C_FIXED_NEWSTYLE (client flags 0x{flags:08x})")
            self._tls_mode = TlsMode.OFF
        self._state = NbdServerState.OPTIONS
        return True

    def _maybe_read_option(self) -> tuple[int, bytes] | None:
        """proto.md "Newstyle negotiation": IHAVEOPT, option, length, data; None if incomplete.

        The magic is checked as soon as 8 bytes are there and the length as soon as the header
        is complete, so garbage and absurd lengths are refused before any payload is buffered.
        """
        buffer = self._buffer
        if len(buffer) >= 8:
            magic = int.from_bytes(buffer[:8], "big")
            if magic != wire.IHAVEOPT:
                raise RemoteProtocolError(
                    f"nbd handshake: option header: bad magic: expected 0x{wire.IHAVEOPT:016x} "
                    f"(IHAVEOPT), got 0x{magic:016x}")
        if len(buffer) < wire.OPTION_HEADER.size:
            return None
        _, option, length = wire.OPTION_HEADER.unpack_from(buffer)
        if length > self._max_option_length:
            raise RemoteProtocolError(
                f"nbd handshake: {option_name(option)}: option data too long: "
                f"length={length} max_option_length={self._max_option_length}")
        end = wire.OPTION_HEADER.size + length
        if len(buffer) < end:
            return None
        data = bytes(buffer[wire.OPTION_HEADER.size:end])
        del buffer[:end]
        return option, data

    # --- option handlers ---

    def _handle_option(self, option: int, data: bytes) -> HandshakeEvent | None:
        if option == NbdOpt.ABORT:
            # proto.md: "The server MUST reply with NBD_REP_ACK"; data is to be ignored.
            self._queue_reply(option, NbdRep.ACK)
            self._state = NbdServerState.CLOSED
            self._buffer.clear()
            return ClientAborted()
        if option == NbdOpt.STARTTLS:
            return self._handle_starttls(data)
        if self._tls_mode is TlsMode.REQUIRE and not self._tls_active:
            label = option_name(option)
            if option == NbdOpt.EXPORT_NAME:
                raise RemoteProtocolError(
                    f"nbd handshake: {label}: TLS is required: the client must send "
                    f"NBD_OPT_STARTTLS first")
            return self._refuse(option, NbdRep.ERR_TLS_REQD,
                                f"{label}: TLS is required: send NBD_OPT_STARTTLS first")
        if option == NbdOpt.EXPORT_NAME:
            return self._handle_export_name(data)
        if option == NbdOpt.LIST:
            return self._handle_list(data)
        if option in (NbdOpt.INFO, NbdOpt.GO):
            return self._handle_info_go(option, data)
        if option == NbdOpt.STRUCTURED_REPLY:
            return self._refuse(option, NbdRep.ERR_UNSUP,
                                "structured replies are not supported by this server")
        if option in (NbdOpt.LIST_META_CONTEXT, NbdOpt.SET_META_CONTEXT):
            return self._refuse(option, NbdRep.ERR_UNSUP,
                                "metadata contexts are not supported by this server")
        return self._refuse(option, NbdRep.ERR_UNSUP,
                            f"{option_name(option)} is not supported by this server")

    def _handle_starttls(self, data: bytes) -> HandshakeEvent | None:
        """NBD_OPT_STARTTLS (proto.md "TLS support"): ACK, and the TLS handshake follows."""
        option = NbdOpt.STARTTLS
        if self._tls_mode is TlsMode.OFF:
            return self._refuse(option, NbdRep.ERR_UNSUP, "TLS is not supported by this server")
        if self._tls_active:
            return self._refuse(option, NbdRep.ERR_INVALID,
                                "NBD_OPT_STARTTLS: TLS is already active on this connection")
        if data:
            return self._refuse(option, NbdRep.ERR_INVALID,
                                f"NBD_OPT_STARTTLS must carry no data: length={len(data)}")
        if self._eof:
            # The client closed its side: no TLS handshake can follow.
            self._state = NbdServerState.CLOSED
            return ClientDisconnected()
        if self._buffer:
            raise RemoteProtocolError(
                f"nbd handshake: NBD_OPT_STARTTLS: {len(self._buffer)} bytes sent in clear "
                f"after it, before the TLS handshake")
        self._queue_reply(option, NbdRep.ACK)
        self._state = NbdServerState.TLS_HANDSHAKE
        return StartTls()

    def _handle_export_name(self, data: bytes) -> HandshakeEvent | None:
        """NBD_OPT_EXPORT_NAME: no error reply exists, so a refusal is a hard disconnect."""
        context = "nbd handshake: NBD_OPT_EXPORT_NAME"
        name, problem = _decode_name(data)
        if problem:
            raise RemoteProtocolError(f"{context}: invalid export name: {problem}")
        export, problem = self._lookup_export(name)
        if export is None:
            raise RemoteProtocolError(f"{context}: {problem}")
        self._outgoing += wire.EXPORT_NAME_REPLY.pack(export.size, export.transmission_flags)
        if not self._no_zeroes:
            self._outgoing += bytes(wire.EXPORT_NAME_ZERO_PADDING)
        return self._enter_transmission(export)

    def _handle_list(self, data: bytes) -> HandshakeEvent | None:
        """NBD_OPT_LIST: one NBD_REP_SERVER per export, then NBD_REP_ACK."""
        if data:
            return self._refuse(NbdOpt.LIST, NbdRep.ERR_INVALID,
                                f"NBD_OPT_LIST must carry no data: length={len(data)}")
        for export in self._exports.values():
            name = export.name.encode("utf-8")
            payload = wire.NAME_LENGTH.pack(len(name)) + name + export.description.encode("utf-8")
            self._queue_reply(NbdOpt.LIST, NbdRep.SERVER, payload)
        self._queue_reply(NbdOpt.LIST, NbdRep.ACK)
        return None

    def _handle_info_go(self, option: int, data: bytes) -> HandshakeEvent | None:
        """NBD_OPT_INFO / NBD_OPT_GO: name, info requests; NBD_REP_INFO..., then ACK or error."""
        label = option_name(option)
        if len(data) < _INFO_GO_FIXED_LENGTH:
            return self._refuse(option, NbdRep.ERR_INVALID,
                                f"{label}: option data too short: length={len(data)}, "
                                f"at least {_INFO_GO_FIXED_LENGTH} expected")
        (name_length,) = wire.NAME_LENGTH.unpack_from(data)
        if name_length > len(data) - _INFO_GO_FIXED_LENGTH:
            return self._refuse(option, NbdRep.ERR_INVALID,
                                f"{label}: export name length beyond the option data: "
                                f"name length={name_length} option length={len(data)}")
        name_end = wire.NAME_LENGTH.size + name_length
        (count,) = wire.INFO_REQUEST_COUNT.unpack_from(data, name_end)
        expected = _INFO_GO_FIXED_LENGTH + name_length + count * wire.INFO_REQUEST.size
        if len(data) != expected:
            return self._refuse(option, NbdRep.ERR_INVALID,
                                f"{label}: option length does not match its contents: "
                                f"length={len(data)} expected={expected} "
                                f"(name length={name_length} information requests={count})")
        requests_start = name_end + wire.INFO_REQUEST_COUNT.size
        requested = {request for (request,) in wire.INFO_REQUEST.iter_unpack(
            data[requests_start:])}  # unknown and repeated requests are ignored
        name, problem = _decode_name(data[wire.NAME_LENGTH.size:name_end])
        if problem:
            return self._refuse(option, NbdRep.ERR_INVALID,
                                f"{label}: invalid export name: {problem}")
        export, problem = self._lookup_export(name)
        if export is None:
            return self._refuse(option, NbdRep.ERR_UNKNOWN, f"{label}: {problem}")
        self._queue_info(option, wire.INFO_EXPORT.pack(
            NbdInfo.EXPORT, export.size, export.transmission_flags))
        if NbdInfo.NAME in requested:
            self._queue_info(option, wire.INFO_TYPE.pack(NbdInfo.NAME)
                             + export.name.encode("utf-8"))
        if NbdInfo.DESCRIPTION in requested and export.description:
            self._queue_info(option, wire.INFO_TYPE.pack(NbdInfo.DESCRIPTION)
                             + export.description.encode("utf-8"))
        self._queue_info(option, wire.INFO_BLOCK_SIZE.pack(
            NbdInfo.BLOCK_SIZE, export.min_block, export.preferred_block, export.max_block))
        self._queue_reply(option, NbdRep.ACK)
        if option == NbdOpt.GO:
            # No zero padding after the ACK, whatever NBD_FLAG_C_NO_ZEROES says.
            return self._enter_transmission(export)
        return None

    # --- helpers ---

    def _lookup_export(self, name: str) -> tuple[ExportInfo | None, str]:
        """The export for a client-supplied name ("" = default export), or None and why not."""
        if name == "" and self._default_export is not None:
            name = self._default_export
        export = self._exports.get(name)  # without a default, an export named "" still matches
        if export is None:
            if name == "":
                return None, "no default export: the client sent an empty export name"
            return None, f"unknown export {name!r}"
        return export, ""

    def _enter_transmission(self, export: ExportInfo) -> EnterTransmission:
        self._state = NbdServerState.TRANSMISSION
        self._trailing += self._buffer
        self._buffer.clear()
        return EnterTransmission(export=export, no_zeroes=self._no_zeroes)

    def _refuse(self, option: int, reply: NbdRep, reason: str) -> OptionRefused:
        """Queue an error reply carrying `reason` as its message and report it."""
        self._queue_reply(option, reply, reason.encode("utf-8"))
        return OptionRefused(option=option, reply=int(reply), reason=reason)

    def _queue_info(self, option: int, payload: bytes) -> None:
        self._queue_reply(option, NbdRep.INFO, payload)

    def _queue_reply(self, option: int, reply: NbdRep, payload: bytes = b"") -> None:
        """proto.md "Fixed newstyle negotiation": NBD_REP_MAGIC, option, type, length, data."""
        self._outgoing += wire.OPTION_REPLY_HEADER.pack(
            wire.NBD_REP_MAGIC, option, reply, len(payload))
        self._outgoing += payload


def _decode_name(raw: bytes) -> tuple[str, str]:
    """Decode a client-supplied export name; returns (name, "") or ("", what is wrong)."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "", f"not valid UTF-8: {exc}"
    if "\0" in name:
        return "", f"contains NUL: {name!r}"
    return name, ""
