# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat 3.0.6 datagrams: encode and decode, with heartbeat's authentication.

Owns: the bytes of one heartbeat message as the real daemon (cluster-glue
`msg2wirefmt`) puts them in one UDP datagram, and the two digests it adds.
Sans-I/O: bytes in, HbMessage out; the keys come in as an AuthKeys object
(anything with `sign(bytes) -> str` and `verify(bytes, str) -> bool`).

Netstring format -- what heartbeat always sends (heartbeat-wire.md 2)::

    "###\\n"
    for each field:  <len> ":" "(" <type> ")" <name> "=" <value> ","
                     (len counts from "(" to the end of value; type 0 =
                     string, 1 = binary: raw bytes, e.g. the 16-byte srcuuid)
    "%%%\\n"
    <len> ":" <N> " " <digest> ","      trailer over "###\\n" .. "%%%\\n"

The inner field `auth=N <digest>` (the last field) is a digest of the
"nvpair text": for every other field, in order, `[(type)]name=value\\n`,
binary values in base64 (heartbeat-wire.md 3).  The real daemon checks only
the trailer on this path; so do we (and we always write both).

Classic format -- accepted on receive because the real daemon accepts it::

    ">>>\\n" name=value\\n ... auth=N <digest of the other lines>\\n "<<<\\n" [NUL]

Every failure is BadPacket with a short `reason` (malformed, unsigned,
bad_auth) for counters, and a message saying what was wrong.
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

from hacommon.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:  # pragma: no cover - only for annotations; keeps this module I/O-free
    from hbd.authkeys import AuthKeys

NETSTRING_START = b"###\n"   # MSG_START_NETSTRING
NETSTRING_END = b"%%%\n"     # MSG_END_NETSTRING
CLASSIC_START = b">>>\n"     # MSG_START
CLASSIC_END = b"<<<\n"       # MSG_END
FT_STRING = 0
FT_BINARY = 1
MAX_MESSAGE_SIZE = 256 * 1024  # cluster-glue MAXMSG

# the control fields heartbeat appends to every cluster message, in order
CONTROL_FIELDS = ("destuuid", "src", "srcuuid", "seq", "hg", "ts", "ld", "ttl", "auth")

FieldValue = str | bytes

_NAME_RE = re.compile(rb"[A-Za-z0-9_.\-]{1,64}\Z")
_HEX_RE = re.compile(r"[0-9a-fA-F]{1,16}\Z")


class BadPacket(RemoteProtocolError):
    """A datagram that is not a valid, authentic heartbeat message.

    `reason` is one of "malformed", "unsigned", "bad_auth" (counter names).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"heartbeat packet: {reason.replace('_', ' ')}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HbMessage:
    """One heartbeat message: ordered (name, value) pairs as on the wire.

    String fields are `str`, binary fields (srcuuid, destuuid) are `bytes`.
    """

    fields: tuple[tuple[str, FieldValue], ...]
    wire_format: str = field(default="netstring", compare=False)

    def get(self, name: str, default: FieldValue | None = None) -> FieldValue | None:
        """The first field called `name` (heartbeat's lookup), or `default`."""
        for k, v in self.fields:
            if k == name:
                return v
        return default

    @overload
    def get_str(self, name: str, default: str) -> str: ...
    @overload
    def get_str(self, name: str, default: None = None) -> str | None: ...

    def get_str(self, name: str, default: str | None = None) -> str | None:
        v = self.get(name)
        return v if isinstance(v, str) else default

    def __contains__(self, name: str) -> bool:
        return any(k == name for k, _ in self.fields)

    def _hex(self, name: str) -> int | None:
        v = self.get_str(name)
        return int(v, 16) if v is not None and _HEX_RE.match(v) else None

    @property
    def type(self) -> str:
        return self.get_str("t", "")

    @property
    def origin(self) -> str:
        return self.get_str("src", "")

    @property
    def dest(self) -> str | None:
        return self.get_str("dest")

    @property
    def seq(self) -> int | None:
        """Sender's sequence number (hex on the wire); None for NS_* messages."""
        return self._hex("seq")

    @property
    def generation(self) -> int | None:
        """Heartbeat generation `hg` (hex on the wire)."""
        return self._hex("hg")

    @property
    def timestamp(self) -> int | None:
        """Sender's time(NULL), `ts` (hex)."""
        return self._hex("ts")

    @property
    def deadtime_ms(self) -> int | None:
        """`dt`: the dead time the sender asks receivers to apply to it, in ms (hex)."""
        return self._hex("dt")

    @property
    def status(self) -> str | None:
        return self.get_str("st")

    @property
    def src_uuid(self) -> bytes | None:
        v = self.get("srcuuid")
        return v if isinstance(v, bytes) else None

    def without(self, *names: str) -> tuple[tuple[str, FieldValue], ...]:
        return tuple((k, v) for k, v in self.fields if k not in names)


def nvpair_text(fields: Sequence[tuple[str, FieldValue]]) -> bytes:
    """The text heartbeat signs into the inner `auth` field (every field but auth)."""
    out = []
    for name, value in fields:
        if name == "auth":
            continue
        if isinstance(value, bytes):
            out.append(b"(1)" + name.encode("ascii") + b"=" + base64.b64encode(value) + b"\n")
        else:
            out.append(name.encode("ascii") + b"=" + value.encode("utf-8", "surrogateescape") + b"\n")
    return b"".join(out)


def _netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def encode_message(fields: Sequence[tuple[str, FieldValue]], authkeys: AuthKeys) -> bytes:
    """The datagram heartbeat would send for `fields`, with inner auth and trailer.

    An `auth` field in `fields` is ignored (it is recomputed and put last).
    Raises LocalProtocolError for names or values heartbeat cannot carry.
    """
    clean = []
    for name, value in fields:
        if name == "auth":
            continue
        if not isinstance(name, str) or not _NAME_RE.match(name.encode("ascii", "replace")):
            raise LocalProtocolError(f"heartbeat encode: invalid field name: {name!r}")
        if isinstance(value, str):
            if "\n" in value or "\r" in value or "\0" in value:
                raise LocalProtocolError(f"heartbeat encode: field {name!r}: value must not contain "
                                         f"newline, carriage return or NUL: {value!r}")
        elif not isinstance(value, bytes):
            raise LocalProtocolError(f"heartbeat encode: field {name!r}: value must be str or bytes, "
                                     f"got {type(value).__name__}")
        clean.append((name, value))
    clean.append(("auth", authkeys.sign(nvpair_text(clean))))
    parts = [NETSTRING_START]
    for name, value in clean:
        if isinstance(value, bytes):
            parts.append(_netstring(b"(1)" + name.encode("ascii") + b"=" + value))
        else:
            parts.append(_netstring(b"(0)" + name.encode("ascii") + b"=" + value.encode("utf-8", "surrogateescape")))
    parts.append(NETSTRING_END)
    body = b"".join(parts)
    if len(body) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(f"heartbeat encode: message too long: {len(body)} bytes, "
                                 f"at most {MAX_MESSAGE_SIZE}")
    return body + _netstring(authkeys.sign(body).encode("ascii"))


def _read_netstring(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    colon = data.find(b":", pos, pos + 11)
    if colon < 0:
        raise BadPacket("malformed", f"{what} at offset {pos}: expected '<len>:'")
    digits = data[pos:colon]
    if not digits.isdigit() or (len(digits) > 1 and digits[0:1] == b"0"):
        raise BadPacket("malformed", f"{what} at offset {pos}: bad length {digits[:12]!r}")
    n = int(digits)
    end = colon + 1 + n
    if end >= len(data) or data[end:end + 1] != b",":
        raise BadPacket("malformed", f"{what} at offset {pos}: length {n} overruns the datagram "
                                     f"or lacks the closing ','")
    return data[colon + 1:end], end + 1


def _split_field(raw: bytes, what: str) -> tuple[str, bytes]:
    eq = raw.find(b"=")
    if eq <= 0:
        raise BadPacket("malformed", f"{what}: expected name=value, got {raw[:40]!r}")
    name = raw[:eq]
    if not _NAME_RE.match(name):
        raise BadPacket("malformed", f"{what}: invalid field name {name[:40]!r}")
    return name.decode("ascii"), raw[eq + 1:]


def _decode_netstring(data: bytes, authkeys: AuthKeys) -> HbMessage:
    pos = len(NETSTRING_START)
    fields: list[tuple[str, FieldValue]] = []
    while True:
        if data.startswith(NETSTRING_END, pos):
            body_end = pos + len(NETSTRING_END)
            break
        if pos >= len(data):
            raise BadPacket("malformed", "netstring message: missing end marker '%%%'")
        raw, pos = _read_netstring(data, pos, f"field {len(fields) + 1}")
        close = raw.find(b")")
        if not raw.startswith(b"(") or close < 2 or not raw[1:close].isdigit() or close > 4:
            raise BadPacket("malformed", f"field {len(fields) + 1}: expected '(type)name=value', got {raw[:40]!r}")
        ftype = int(raw[1:close])
        name, value = _split_field(raw[close + 1:], f"field {len(fields) + 1}")
        if ftype == FT_STRING:
            if b"\n" in value or b"\0" in value:
                raise BadPacket("malformed", f"field {name!r}: string value contains a newline or NUL")
            fields.append((name, value.decode("utf-8", "surrogateescape")))
        elif ftype == FT_BINARY:
            fields.append((name, bytes(value)))
        else:
            raise BadPacket("malformed", f"field {name!r}: unsupported field type {ftype} "
                                         f"(nested, list or compressed fields are not used in v1 mode)")
    if body_end >= len(data):
        raise BadPacket("unsigned", "netstring message without authentication trailer")
    trailer, end = _read_netstring(data, body_end, "authentication trailer")
    if end != len(data):
        raise BadPacket("malformed", f"{len(data) - end} unexpected bytes after the authentication trailer")
    try:
        auth = trailer.decode("ascii")
    except UnicodeDecodeError:
        raise BadPacket("bad_auth", f"authentication trailer is not text: {trailer[:40]!r}") from None
    if not authkeys.verify(data[:body_end], auth):
        raise BadPacket("bad_auth", f"authentication trailer does not match: {auth[:60]!r}")
    return _checked(HbMessage(tuple(fields), "netstring"))


def _decode_classic(data: bytes, authkeys: AuthKeys) -> HbMessage:
    if data.endswith(b"\0"):
        data = data[:-1]
    if not data.endswith(CLASSIC_END):
        raise BadPacket("malformed", "classic message: missing end line '<<<'")
    lines = data[len(CLASSIC_START):-len(CLASSIC_END)].split(b"\n")
    if lines[-1] != b"":
        raise BadPacket("malformed", "classic message: last field line is not terminated")
    fields: list[tuple[str, FieldValue]] = []
    signed: list[bytes] = []
    auth = None
    for raw in lines[:-1]:
        raw = raw.rstrip(b"\r")
        if not raw:
            continue
        body, ftype = raw, FT_STRING
        if raw.startswith(b"("):
            close = raw.find(b")")
            if close < 2 or not raw[1:close].isdigit() or close > 4:
                raise BadPacket("malformed", f"classic field: bad type prefix in {raw[:40]!r}")
            ftype, body = int(raw[1:close]), raw[close + 1:]
        name, value = _split_field(body, "classic field")
        if b"\0" in value:
            raise BadPacket("malformed", f"field {name!r}: value contains NUL")
        if name == "auth":
            auth = value.decode("ascii", "replace")
            continue
        signed.append(raw + b"\n")
        if ftype == FT_STRING:
            fields.append((name, value.decode("utf-8", "surrogateescape")))
        elif ftype == FT_BINARY:
            try:
                fields.append((name, base64.b64decode(value, validate=True)))
            except (binascii.Error, ValueError):
                raise BadPacket("malformed", f"field {name!r}: binary value is not base64") from None
        else:
            raise BadPacket("malformed", f"field {name!r}: unsupported field type {ftype}")
    if auth is None:
        raise BadPacket("unsigned", "classic message without auth field")
    if not authkeys.verify(b"".join(signed), auth):
        raise BadPacket("bad_auth", f"auth field does not match: {auth[:60]!r}")
    fields.append(("auth", auth))
    return _checked(HbMessage(tuple(fields), "classic"))


def _checked(msg: HbMessage) -> HbMessage:
    """Check the control fields every heartbeat message carries, once, here."""
    if not msg.type:
        raise BadPacket("malformed", "message without type field 't'")
    if not msg.origin:
        raise BadPacket("malformed", f"{msg.type} message without originator field 'src'")
    for name in ("seq", "hg", "ts", "dt", "ackseq"):
        v = msg.get(name)
        if v is not None and (not isinstance(v, str) or not _HEX_RE.match(v)):
            raise BadPacket("malformed", f"{msg.type} from {msg.origin!r}: field {name!r} is not hex: {v!r:.40}")
    if msg.get("hg") is None:
        raise BadPacket("malformed", f"{msg.type} from {msg.origin!r}: no generation field 'hg'")
    if not msg.type.startswith("NS_") and msg.get("seq") is None:
        raise BadPacket("malformed", f"{msg.type} from {msg.origin!r}: no sequence field 'seq'")
    return msg


def decode_message(data: bytes, authkeys: AuthKeys) -> HbMessage:
    """Parse and authenticate one datagram; raises BadPacket, nothing else."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise BadPacket("malformed", f"datagram too long: {len(data)} bytes, at most {MAX_MESSAGE_SIZE}")
    data = bytes(data)
    if data.startswith(NETSTRING_START):
        return _decode_netstring(data, authkeys)
    if data.startswith(CLASSIC_START):
        return _decode_classic(data, authkeys)
    raise BadPacket("malformed", f"not a heartbeat message: starts with {data[:8]!r}")
