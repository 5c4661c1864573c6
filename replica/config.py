# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.conf: drbd.conf(5) syntax -> frozen dataclasses; every error names file and line.

Owns the resource file format and nothing else: tokenizer, a generic statement tree, the keyword
tables with DRBD's defaults and units, inheritance, validation and `dump_config`.

    text --tokenize--> tokens --_parse_block--> _Stmt tree --_Builder--> Config
                                                   (include "glob" is expanded at top level)

Grammar (drbd.conf-8.4(5)/9.0(5) "FILE FORMAT"): sections `keyword [name] { ... }`, options
`keyword value... ;`, `#` comments, double-quoted strings (\\" \\\\ \\n \\t escapes), a `skip` prefix
disables a statement, `include "glob";` only outside sections (relative to the including file).
Inheritance: common -> resource -> on HOST -> volume (per option, not per section).

Units follow DRBD: ping-int/connect-int in seconds; ping-timeout, timeout, c-plan-ahead,
c-delay-target, disk-timeout in tenths of a second; resync-rate, c-max-rate, c-min-rate in KiB/s;
c-fill-target and size in 512-byte sectors; sndbuf/rcvbuf-size, congestion-fill in bytes. Suffixes
K, M, G multiply by 1024, 1024**2, 1024**3 (bytes). Dataclass fields carry the unit in their name.
Our additions: `export unix:PATH|HOST:PORT` (NBD endpoint), `device /dev/nbdN`, `meta-disk`
defaulting to internal. A resource with one `on` section is standalone; with two it is replicated.
"""
from __future__ import annotations

import dataclasses
import glob
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field

from replica.errors import ConfigError

_MAX_DEPTH = 6
_MAX_INCLUDE_DEPTH = 16
_K = 1024


# -- value parsers: one per kind of DRBD value, each with its inverse for dump_config ----------

class _Bad(Exception):
    """A value is wrong; the builder adds `file:line: context: keyword:` in front."""


def _one(args: list[str]) -> str:
    if len(args) != 1:
        extra = " (missing ';'?)" if len(args) > 1 else ""
        raise _Bad(f"expected one value, got {len(args)}: '{' '.join(args)}'{extra}")
    return args[0]


class _Int:
    """Integer in DRBD's unit; stored as int, or as float seconds n / div (div 10: tenths)."""

    def __init__(self, lo, hi, unit="", div=None):
        self.lo, self.hi, self.unit, self.div = lo, hi, unit, div

    def parse(self, args):
        tok = _one(args)
        what = f"an integer {self.lo}..{self.hi}" + (f" {self.unit}" if self.unit else "")
        if not re.fullmatch(r"[0-9]{1,19}", tok) or not self.lo <= int(tok) <= self.hi:
            raise _Bad(f"expected {what}, got '{tok}'")
        return int(tok) if self.div is None else int(tok) / self.div

    def format(self, v):
        return str(v if self.div is None else round(v * self.div))


class _Size:
    """Size or rate with optional K/M/G suffix; `base` is the unit of a bare number in bytes."""
    _MULT = {"": None, "k": _K, "m": _K ** 2, "g": _K ** 3, "s": 512}
    _NAMES = {1: "bytes", 512: "sectors", _K: "KiB"}

    def __init__(self, lo, hi, base, what="a size"):
        self.lo, self.hi, self.base, self.what = lo, hi, base, what

    def parse(self, args):
        tok = _one(args)
        m = re.fullmatch(r"([0-9]{1,19})([kKmMgGsS]?)", tok)
        value = int(m[1]) * (self._MULT[m[2].lower()] or self.base) if m else -1
        if not self.lo <= value <= self.hi:
            raise _Bad(f"expected {self.what} {self.format(self.lo)}..{self.format(self.hi)} (K, M or "
                       f"G suffix; bare numbers in {self._NAMES[self.base]}), got '{tok}'")
        return value

    def format(self, v):
        for suffix, mult in (("G", _K ** 3), ("M", _K ** 2), ("K", _K)):
            if v and v % mult == 0:
                return f"{v // mult}{suffix}"
        return str(v // self.base)


class _Enum:
    def __init__(self, *values, pattern=None):
        self.values, self.pattern = values, pattern

    def parse(self, args):
        tok = _one(args)
        if tok in self.values or (self.pattern and re.fullmatch(self.pattern, tok)):
            return tok
        raise _Bad(f"expected one of {', '.join(self.values)}, got '{tok}'")

    def format(self, v):
        return v


class _Bool:
    """`flag;` or `flag yes|no;` (drbd.conf boolean options)."""

    def parse(self, args):
        if args and (len(args) > 1 or args[0] not in ("yes", "no")):
            raise _Bad(f"expected yes or no, got '{' '.join(args)}'")
        return not args or args[0] == "yes"

    def format(self, v):
        return "yes" if v else "no"


class _Str(_Enum):
    def __init__(self, maxlen=4096, pattern=None, expected="a string"):
        self.maxlen, self.pattern, self.expected = maxlen, pattern, expected

    def parse(self, args):
        tok = _one(args)
        if not tok or len(tok) > self.maxlen or (self.pattern and not re.fullmatch(self.pattern, tok)):
            raise _Bad(f"expected {self.expected}, got '{tok}'")
        return tok


_SECS, _TENTHS, _FLAG = "seconds", "tenths of a second", _Bool()
_ALG = _Str(64, r"[a-z0-9()_-]+", "a kernel hash algorithm name")
_RATE = _Size(0, 4 * _K ** 3, _K, "a rate in bytes/s")


def _opt(keyword, parser, default):
    """A NetOptions/DiskOptions field: its drbd.conf keyword, value parser and DRBD default."""
    return field(default=default, metadata={"keyword": keyword, "parser": parser})


# -- public data model ------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """Where replicad serves a resource over NBD: a unix socket or a TCP host:port."""
    kind: str  # "unix" | "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def nbd_uri(self, export_name: str) -> str:
        """NBD URI (the NBD project's doc/uri.md) for `export_name` at this endpoint."""
        name = urllib.parse.quote(export_name, safe="")
        if self.kind == "unix":
            return f"nbd+unix:///{name}?socket={urllib.parse.quote(self.path or '', safe='/')}"
        host = f"[{self.host}]" if ":" in (self.host or "") else self.host
        return f"nbd://{host}:{self.port}/{name}"

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HostSection:
    """One `on HOST { ... }` section after inheritance (common -> resource -> on -> volume)."""
    name: str
    device: str | None
    minor: int | None
    disk: str
    meta_disk: str  # "internal" or a path
    meta_index: int | None
    address: tuple[str, int] | None
    address_family: str  # "ipv4" | "ipv6"
    export: Endpoint | None
    node_id: int | None = None
    volume: int | None = None
    line: int = field(default=0, compare=False)
    file: str = field(default="", compare=False)


@dataclass(frozen=True)
class NetOptions:
    """`net {}`: ranges from drbd_limits.h, defaults from drbd.conf(5), times in seconds."""
    protocol: str = _opt("protocol", _Enum("A", "B", "C"), "C")
    cram_hmac_alg: str | None = _opt("cram-hmac-alg", _Enum("sha1", "sha256", "sha512"), None)
    shared_secret: str | None = _opt("shared-secret", _Str(64, None, "a secret of 1..64 characters"), None)
    ping_int_s: float = _opt("ping-int", _Int(1, 120, _SECS, 1), 10.0)
    ping_timeout_s: float = _opt("ping-timeout", _Int(1, 300, _TENTHS, 10), 0.5)
    timeout_s: float = _opt("timeout", _Int(1, 600, _TENTHS, 10), 6.0)
    connect_int_s: float = _opt("connect-int", _Int(1, 120, _SECS, 1), 10.0)
    socket_check_timeout_s: float = _opt("socket-check-timeout", _Int(0, 300, _TENTHS, 10), 0.0)
    max_buffers: int = _opt("max-buffers", _Int(32, 131072), 2048)
    max_epoch_size: int = _opt("max-epoch-size", _Int(1, 20000), 2048)
    sndbuf_size: int = _opt("sndbuf-size", _Size(0, 128 * _K ** 2, 1), 0)  # bytes, 0 = autotune
    rcvbuf_size: int = _opt("rcvbuf-size", _Size(0, 128 * _K ** 2, 1), 0)
    ko_count: int = _opt("ko-count", _Int(0, 200), 7)
    after_sb_0pri: str = _opt("after-sb-0pri", _Enum(
        "disconnect", "discard-younger-primary", "discard-older-primary", "discard-zero-changes",
        "discard-least-changes", "discard-node-NODENAME", pattern=r"discard-node-[A-Za-z0-9_.-]+"),
        "disconnect")
    after_sb_1pri: str = _opt("after-sb-1pri", _Enum(
        "disconnect", "consensus", "violently-as0p", "discard-secondary", "call-pri-lost-after-sb"),
        "disconnect")
    after_sb_2pri: str = _opt("after-sb-2pri", _Enum(
        "disconnect", "violently-as0p", "call-pri-lost-after-sb"), "disconnect")
    rr_conflict: str = _opt("rr-conflict", _Enum("disconnect", "call-pri-lost", "violently"), "disconnect")
    always_asbp: bool = _opt("always-asbp", _FLAG, False)
    allow_two_primaries: bool = _opt("allow-two-primaries", _FLAG, False)
    tcp_cork: bool = _opt("tcp-cork", _FLAG, True)
    use_rle: bool = _opt("use-rle", _FLAG, True)
    verify_alg: str | None = _opt("verify-alg", _ALG, None)
    csums_alg: str | None = _opt("csums-alg", _ALG, None)
    csums_after_crash_only: bool = _opt("csums-after-crash-only", _FLAG, False)
    data_integrity_alg: str | None = _opt("data-integrity-alg", _ALG, None)
    on_congestion: str = _opt("on-congestion", _Enum("block", "pull-ahead", "disconnect"), "block")
    congestion_fill: int = _opt("congestion-fill", _Size(0, 10 * _K ** 3, 512), 0)  # bytes
    congestion_extents: int | None = _opt("congestion-extents", _Int(67, 65534), None)  # None: al-extents


@dataclass(frozen=True)
class DiskOptions:
    """`disk {}` (8.4; 8.3 `syncer {}` maps here): rates in bytes/s, times in seconds."""
    resync_rate_bps: int = _opt("resync-rate", _Size(_K, 4 * _K ** 3, _K, "a rate in bytes/s"), 250 * _K)
    al_extents: int = _opt("al-extents", _Int(7, 65534), 1237)
    al_updates: bool = _opt("al-updates", _FLAG, True)
    on_io_error: str = _opt("on-io-error", _Enum("pass_on", "call-local-io-error", "detach"), "detach")
    fencing: str = _opt("fencing", _Enum("dont-care", "resource-only", "resource-and-stonith"), "dont-care")
    c_plan_ahead_s: float = _opt("c-plan-ahead", _Int(0, 300, _TENTHS, 10), 2.0)
    c_delay_target_s: float = _opt("c-delay-target", _Int(1, 100, _TENTHS, 10), 1.0)
    c_fill_target_bytes: int = _opt("c-fill-target", _Size(0, 1000000 * 512, 512), 100 * 512)
    c_max_rate_bps: int = _opt("c-max-rate", _RATE, 102400 * _K)
    c_min_rate_bps: int = _opt("c-min-rate", _RATE, 250 * _K)
    disk_barrier: bool = _opt("disk-barrier", _FLAG, False)
    disk_flushes: bool = _opt("disk-flushes", _FLAG, True)
    disk_drain: bool = _opt("disk-drain", _FLAG, True)
    md_flushes: bool = _opt("md-flushes", _FLAG, True)
    disk_timeout_s: float = _opt("disk-timeout", _Int(0, 6000, _TENTHS, 10), 0.0)
    read_balancing: str = _opt("read-balancing", _Enum(
        "prefer-local", "prefer-remote", "round-robin", "least-pending", "when-congested-remote",
        *(f"{n}-striping" for n in ("32K", "64K", "128K", "256K", "512K", "1M"))), "prefer-local")
    resync_after: str | None = _opt("resync-after", _Str(128, r"[A-Za-z0-9_.+-]+(/[0-9]+)?",
                                                         "RESOURCE[/VOLUME]"), None)
    size_bytes: int | None = _opt("size", _Size(0, 1 << 62, 512), None)
    rs_discard_granularity: int = _opt("rs-discard-granularity", _Size(0, _K ** 2, 1), 0)
    discard_zeroes_if_aligned: bool = _opt("discard-zeroes-if-aligned", _FLAG, True)
    disable_write_same: bool = _opt("disable-write-same", _FLAG, False)


@dataclass(frozen=True)
class Resource:
    name: str
    hosts: dict[str, HostSection]
    net: NetOptions
    disk: DiskOptions
    handlers: dict[str, str]
    startup: dict[str, str]
    options: dict[str, str] = field(default_factory=dict)
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def standalone(self) -> bool:
        return len(self.hosts) == 1

    def host(self, node: str) -> HostSection:
        try:
            return self.hosts[node]
        except KeyError:
            raise ConfigError(f"{self.file}:{self.line}: resource '{self.name}' has no 'on {node}' "
                              f"section (hosts: {', '.join(self.hosts)})") from None

    def peer(self, node: str) -> HostSection | None:
        self.host(node)
        others = [h for n, h in self.hosts.items() if n != node]
        return others[0] if others else None


@dataclass(frozen=True)
class Config:
    path: str = field(compare=False)
    resources: dict[str, Resource]
    global_options: dict[str, str] = field(default_factory=dict)

    def resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            raise ConfigError(f"no resource '{name}' in {self.path} "
                              f"(have: {', '.join(self.resources) or 'none'})") from None


# -- tokenizer and statement tree -------------------------------------------------------------

_TOKEN_RE = re.compile(r'''(?P<ws>[ \t\r\f\v]+)|(?P<nl>\n)|(?P<comment>\#[^\n]*)|(?P<punct>[{};])
    |(?P<string>"(?:[^"\\\n]|\\[^\n])*")|(?P<word>[^\s{};"\#]+)|(?P<bad>.)''', re.X | re.S)
_UNESCAPE = {"n": "\n", "t": "\t"}
_ESCAPE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


@dataclass
class _Tok:
    kind: str  # "word" | "string" | "{" | "}" | ";" | "eof"
    value: str
    line: int


def _tokenize(text: str, path: str) -> list[_Tok]:
    toks, line = [], 1
    for m in _TOKEN_RE.finditer(text):
        kind, value = m.lastgroup, m.group()
        if kind == "nl":
            line += 1
        elif kind == "punct":
            toks.append(_Tok(value, value, line))
        elif kind == "string":
            body = re.sub(r"\\(.)", lambda e: _UNESCAPE.get(e.group(1), e.group(1)), value[1:-1])
            if "\0" in body:
                raise ConfigError(f"{path}:{line}: NUL character in string {value!r}")
            toks.append(_Tok("string", body, line))
        elif kind == "word":
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ConfigError(f"{path}:{line}: invalid control character in {value!r}")
            toks.append(_Tok("word", value, line))
        elif kind == "bad":
            what = "unterminated string" if value == '"' else f"invalid character {value!r}"
            raise ConfigError(f"{path}:{line}: {what}")
    toks.append(_Tok("eof", "", line))
    return toks


@dataclass
class _Stmt:
    key: str
    args: list[str]
    line: int
    file: str
    body: list[_Stmt] | None  # None: option ended by ';'


def _label(key: str, args: list[str]) -> str:
    if key in ("resource", "on") and args:
        return f"{key} '{args[0]}'"
    return " ".join([key, *args])


def _parse_block(toks: list[_Tok], pos: int, path: str, ctx: list[str],
                 opened: _Tok | None) -> tuple[list[_Stmt], int]:
    """Statements up to the '}' closing `opened` (or EOF at top level); returns (stmts, next pos)."""
    where = ": ".join(ctx) + ": " if ctx else ""
    if len(ctx) > _MAX_DEPTH:
        raise ConfigError(f"{path}:{opened.line}: {where}sections nested too deeply")
    stmts: list[_Stmt] = []
    while True:
        tok = toks[pos]
        if tok.kind == "eof":
            if opened is None:
                return stmts, pos
            raise ConfigError(f"{path}:{tok.line}: {where}unexpected end of file: section opened "
                              f"at line {opened.line} is not closed (missing '}}')")
        if tok.kind == "}":
            if opened is None:
                raise ConfigError(f"{path}:{tok.line}: unexpected '}}' (no section is open)")
            return stmts, pos + 1
        if tok.kind != "word":
            got = f'"{tok.value}"' if tok.kind == "string" else tok.value
            raise ConfigError(f"{path}:{tok.line}: {where}expected a keyword, got '{got}'")
        pos += 1
        args, last = [], tok
        while toks[pos].kind in ("word", "string"):
            last = toks[pos]
            args.append(last.value)
            pos += 1
        end = toks[pos]
        shown = " ".join([tok.value, *args])
        if end.kind == ";":
            stmts.append(_Stmt(tok.value, args, tok.line, path, None))
            pos += 1
        elif end.kind == "{":
            body, pos = _parse_block(toks, pos + 1, path, [*ctx, _label(tok.value, args)], end)
            stmts.append(_Stmt(tok.value, args, tok.line, path, body))
        else:
            got = "end of file" if end.kind == "eof" else f"'{end.value}'"
            raise ConfigError(f"{path}:{last.line}: {where}{tok.value}: missing ';' after "
                              f"'{shown}' (got {got})")
        if stmts[-1].key == "skip":  # drbd.conf: "skip" disables the statement it prefixes
            stmts.pop()


# -- keyword tables ----------------------------------------------------------------------------

def _keywords(cls):
    return {f.metadata["keyword"]: (f.name, f.metadata["parser"]) for f in dataclasses.fields(cls)}


NET_KEYWORDS, DISK_KEYWORDS = _keywords(NetOptions), _keywords(DiskOptions)  # keyword -> (field, parser)
SYNCER_KEYWORDS = {  # DRBD 8.3 `syncer {}` -> where 8.4 put it (drbdadm-84 does the same mapping)
    "rate": ("disk", "resync-rate"), "al-extents": ("disk", "al-extents"),
    "after": ("disk", "resync-after"), "verify-alg": ("net", "verify-alg"),
    "csums-alg": ("net", "csums-alg"), "use-rle": ("net", "use-rle"),
    "c-plan-ahead": ("disk", "c-plan-ahead"), "c-delay-target": ("disk", "c-delay-target"),
    "c-fill-target": ("disk", "c-fill-target"), "c-max-rate": ("disk", "c-max-rate"),
    "c-min-rate": ("disk", "c-min-rate"), "cpu-mask": ("options", "cpu-mask"),
    "on-no-data-accessible": ("options", "on-no-data-accessible"),
}
_TIMEOUT = _Int(0, 1000000, _SECS)
STARTUP_KEYWORDS = {"wfc-timeout": _TIMEOUT, "degr-wfc-timeout": _TIMEOUT,
                    "outdated-wfc-timeout": _TIMEOUT, "wait-after-sb": _FLAG,
                    "stacked-timeouts": _FLAG,
                    "become-primary-on": _Str(253, None, "a host name or both")}
_QUORUM = _Str(8, r"off|majority|all|[0-9]+", "off, majority, all or N")
OPTIONS_KEYWORDS = {"cpu-mask": _Str(64, r"[0-9a-fA-F,]+", "a hexadecimal cpu mask"),
                    "on-no-data-accessible": _Enum("io-error", "suspend-io"), "auto-promote": _FLAG,
                    "quorum": _QUORUM, "quorum-minimum-redundancy": _QUORUM,
                    "on-no-quorum": _Enum("io-error", "suspend-io"),
                    "peer-ack-window": _Size(2 * _K, 2 * _K ** 3, 512), "peer-ack-delay": _Int(1, 10000, "ms"),
                    "twopc-timeout": _Int(50, 600, _TENTHS), "max-io-depth": _Int(4, 4096)}
GLOBAL_KEYWORDS = {"usage-count": _Enum("yes", "no", "ask"), "minor-count": _Int(1, 1048575),
                   "dialog-refresh": _Int(0, 600, _SECS), "disable-ip-verification": _FLAG,
                   "udev-always-use-vnr": _FLAG, "cmd-timeout-short": _Int(0, 1000000, _SECS),
                   "cmd-timeout-medium": _Int(0, 1000000, _SECS), "cmd-timeout-long": _Int(0, 1000000, _SECS)}
HANDLERS = ("pri-on-incon-degr", "pri-lost-after-sb", "pri-lost", "fence-peer", "unfence-peer",
            "local-io-error", "initial-split-brain", "split-brain", "before-resync-target",
            "after-resync-target", "before-resync-source", "out-of-sync", "quorum-lost", "disconnected")
HOST_KEYWORDS = ("device", "disk", "meta-disk", "flexible-meta-disk", "address", "export", "node-id")
_SECTIONS = ("net", "disk", "syncer", "handlers", "startup", "options")
_UNSUPPORTED = ("connection", "connection-mesh", "floating", "stacked-on-top-of", "path")
_NAME_RE = r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}"


# -- host keyword values -------------------------------------------------------------------------

def _parse_device(args):
    """`/dev/drbdN`, `PATH`, `minor N` or `PATH minor N` (drbd.conf: "/dev/" is optional)."""
    rest, dev, minor = list(args), None, None
    if rest and rest[0] != "minor":
        dev = rest.pop(0)
        dev = dev if dev.startswith("/") else "/dev/" + dev
    if len(rest) == 2 and rest[0] == "minor" and re.fullmatch(r"[0-9]{1,7}", rest[1]) \
            and int(rest[1]) <= 1048575:
        minor, rest = int(rest[1]), []
    if rest or not args:
        raise _Bad(f"expected /dev/drbdN, /dev/nbdN, 'minor N' or 'PATH minor N' "
                   f"(N 0..1048575), got '{' '.join(args)}'")
    derived = re.fullmatch(r"/dev/drbd([0-9]{1,7})", dev or "")
    if derived and minor is not None and minor != int(derived[1]):
        raise _Bad(f"device name '{dev}' does not match minor {minor}")
    return dev, (int(derived[1]) if derived else minor)


def _parse_meta_disk(args):
    """`internal`, `PATH` or `PATH [INDEX]` (also `PATH[INDEX]`, `PATH [ INDEX ]`)."""
    path, rest = (args[0], "".join(args[1:])) if args else ("", "")
    if not rest and (m := re.fullmatch(r"([^\s\[]+)(\[[0-9]{1,4}\])", path)):
        path, rest = m[1], m[2]
    m = re.fullmatch(r"\[([0-9]{1,4})\]", rest)
    if not path or (rest and not m) or path.startswith("[") or (path == "internal" and rest):
        raise _Bad(f"expected internal, PATH or PATH [INDEX], got '{' '.join(args)}'")
    return path, (int(m[1]) if m else None)


def _parse_address(args):
    family = args[0] if len(args) == 2 else None
    if len(args) not in (1, 2) or family not in (None, "ipv4", "ipv6"):
        hint = f"address family '{family}' is not supported; " if len(args) == 2 else ""
        raise _Bad(f"{hint}expected [ipv4|ipv6] IP:PORT, got '{' '.join(args)}'")
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})", args[-1])
    try:
        ip = ipaddress.ip_address(m[1] or m[2]) if m else None
    except ValueError:
        ip = None
    if ip is None or not 1 <= int(m[3]) <= 65535 or (family and family != f"ipv{ip.version}") \
            or (m[1] and ip.version != 6):
        raise _Bad(f"expected [ipv4|ipv6] IP:PORT (IPv6 as ipv6 [ADDR]:PORT), got '{' '.join(args)}'")
    return (m[1] or m[2], int(m[3])), f"ipv{ip.version}"


def _parse_export(args):
    tok = _one(args)
    if tok.startswith("unix:"):
        if not tok[5:].startswith("/"):
            raise _Bad(f"expected unix:/ABSOLUTE/PATH, got '{tok}'")
        return Endpoint("unix", path=tok[5:])
    m = re.fullmatch(r"(?:tcp:)?(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)):([0-9]{1,5})", tok)
    if m and m[1]:
        try:
            ipaddress.IPv6Address(m[1])
        except ValueError:
            m = None
    if not m or not 1 <= int(m[3]) <= 65535:
        raise _Bad(f"expected unix:/PATH, HOST:PORT or [IPV6]:PORT, got '{tok}'")
    return Endpoint("tcp", host=m[1] or m[2], port=int(m[3]))


def _parse_host_keyword(key, args, values):
    """Store one host keyword's parsed value(s) into `values` (keyed by HostSection field)."""
    if key == "device":
        values["device"], values["minor"] = _parse_device(args)
    elif key == "disk":
        tok = _one(args)
        if tok == "none":
            raise _Bad("diskless nodes ('disk none') are not supported")
        values["disk"] = tok
    elif key in ("meta-disk", "flexible-meta-disk"):
        values["meta_disk"], values["meta_index"] = _parse_meta_disk(args)
    elif key == "address":
        values["address"], values["address_family"] = _parse_address(args)
    elif key == "export":
        values["export"] = _parse_export(args)
    elif key == "node-id":
        values["node_id"] = _Int(0, 31).parse(args)


# -- builder: statement tree -> Config -------------------------------------------------------------

@dataclass
class _Scope:
    """Options set at one level (common, resource, on, volume), with the line that set each."""
    net: dict = field(default_factory=dict)
    disk: dict = field(default_factory=dict)
    handlers: dict = field(default_factory=dict)
    startup: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    seen: dict = field(default_factory=dict)  # (section, keyword) -> line, for duplicates
    volume: int | None = None


class _Builder:
    def __init__(self):
        self.global_options: dict[str, str] = {}
        self.global_at: str | None = None
        self.common: _Scope | None = None
        self.common_at = None
        self.resources: dict[str, Resource] = {}

    def fail(self, st, ctx, msg):
        raise ConfigError(f"{st.file}:{st.line}: {': '.join([*ctx, msg])}")

    def expect_body(self, st, ctx, nargs=0, what="a name"):
        if nargs and not st.args:
            self.fail(st, ctx, f"{st.key}: expected {what}")
        if len(st.args) != nargs:
            self.fail(st, ctx, f"{st.key}: unexpected '{st.args[nargs]}'")
        if st.body is None:
            self.fail(st, ctx, f"{st.key}: expected '{{ ... }}', got ';'")

    def top(self, stmts, include_stack):
        for st in stmts:
            if st.key == "include":
                self.include(st, include_stack)
            elif st.key == "global":
                self.expect_body(st, [])
                if self.global_at:
                    self.fail(st, [], f"duplicate 'global' section (first at {self.global_at})")
                self.global_at = f"{st.file}:{st.line}"
                seen = {}
                for o in st.body:
                    self.value(o, ["global"], GLOBAL_KEYWORDS, self.global_options, seen, "global", True)
                for k in [k for k, v in self.global_options.items() if v == "no" and k != "usage-count"]:
                    del self.global_options[k]  # a flag set to "no" is a flag not given
            elif st.key == "common":
                self.expect_body(st, [])
                if self.common_at:
                    self.fail(st, [], f"duplicate 'common' section (first at {self.common_at})")
                self.common_at = f"{st.file}:{st.line}"
                self.common = self.scope(st.body, ["common"], "common")
            elif st.key == "resource":
                self.resource(st)
            else:
                self.fail(st, [], f"unknown keyword '{st.key}' (expected global, common, resource "
                                  f"or include)")

    def include(self, st, include_stack):
        if st.body is not None or len(st.args) != 1:
            self.fail(st, [], "include: expected 'include \"GLOB\";'")
        pattern = os.path.join(os.path.dirname(st.file) if st.file != "<string>" else os.getcwd(),
                               os.path.expanduser(st.args[0]))
        names = sorted(glob.glob(pattern))
        if not names and not glob.has_magic(pattern):
            self.fail(st, [], f"include: no such file: '{pattern}'")
        for name in names:
            real = os.path.realpath(name)
            if real in include_stack or len(include_stack) >= _MAX_INCLUDE_DEPTH:
                self.fail(st, [], f"include: '{name}' includes itself (loop or depth over "
                                  f"{_MAX_INCLUDE_DEPTH})")
            if os.path.isdir(name):
                continue
            self.top(_read_tree(name), [*include_stack, real])

    def value(self, st, ctx, table, into, seen, section, raw=False):
        """Parse one option statement with `table` into `into` (by field, or keyword if raw)."""
        entry = table.get(st.key)
        if entry is None:
            self.fail(st, ctx, f"unknown keyword '{st.key}'")
        if st.body is not None:
            self.fail(st, ctx, f"{st.key}: unexpected '{{' (this is an option, not a section)")
        fieldname, parser = entry if isinstance(entry, tuple) else (st.key, entry)
        if (section, fieldname) in seen:
            self.fail(st, ctx, f"{st.key}: duplicate option (first at line {seen[section, fieldname]})")
        try:
            v = parser.parse(st.args)
        except _Bad as e:
            self.fail(st, ctx, f"{st.key}: {e}")
        into[fieldname] = parser.format(v) if raw else v
        seen[section, fieldname] = st.line

    def scope(self, stmts, ctx, level):
        """Collect the statements of common / resource / on / volume into a _Scope."""
        sc = _Scope()
        for st in stmts:
            if st.key in _SECTIONS and level in ("common", "resource") and \
                    (st.body is not None or st.key != "disk"):
                self.expect_body(st, ctx)
                for o in st.body:
                    self.section_option(sc, st.key, o, [*ctx, st.key])
            elif st.key == "protocol" and level in ("common", "resource"):
                self.value(st, ctx, NET_KEYWORDS, sc.net, sc.seen, "net")
            elif st.key in HOST_KEYWORDS and level != "common" or st.key in ("disk", "meta-disk", "export"):
                if st.key in ("address", "node-id") and level in ("resource", "volume"):
                    self.fail(st, ctx, f"'{st.key}' belongs in an 'on HOST' section")
                if st.key == "export" and level == "volume":
                    self.fail(st, ctx, "'export' belongs in the resource or an 'on HOST' section")
                self.host_option(sc, st, ctx)
            elif st.key == "volume" and level in ("resource", "on"):
                self.expect_body(st, ctx, 1, "a volume number")
                n = self.volume_number(st, ctx)
                sub = self.scope(st.body, [*ctx, f"volume {n}"], "volume")
                if sc.volume is not None and sc.volume != n:
                    self.fail(st, ctx, f"volume {n}: only one volume per resource is supported "
                                       f"(already have volume {sc.volume})")
                sc.volume = n
                for k, v in sub.host.items():
                    if k in sc.host:
                        self.fail(st, ctx, f"volume {n}: '{k}' is also set outside the volume")
                    sc.host[k] = v
            elif st.key in ("include", "global", "common", "resource"):
                self.fail(st, ctx, f"'{st.key}' is only allowed at the top level, outside sections")
            elif st.key in _UNSUPPORTED:
                self.fail(st, ctx, f"'{st.key}' sections are not supported (use two 'on HOST' sections)")
            elif st.key == "on" and level == "resource":
                pass  # handled by resource()
            else:
                self.fail(st, ctx, f"unknown keyword '{st.key}'")
        return sc

    def volume_number(self, st, ctx):
        try:
            return _Int(0, 65534).parse(st.args)
        except _Bad as e:
            self.fail(st, ctx, f"volume: {e}")

    def host_option(self, sc, st, ctx):
        if st.body is not None:
            self.fail(st, ctx, f"{st.key}: unexpected '{{' (this is an option, not a section)")
        key = "meta-disk" if st.key == "flexible-meta-disk" else st.key
        if ("host", key) in sc.seen:
            self.fail(st, ctx, f"{st.key}: duplicate option (first at line {sc.seen['host', key]})")
        try:
            _parse_host_keyword(st.key, st.args, sc.host)
        except _Bad as e:
            self.fail(st, ctx, f"{st.key}: {e}")
        sc.seen["host", key] = st.line

    def section_option(self, sc, section, st, ctx):
        if section == "syncer":
            if st.key not in SYNCER_KEYWORDS:
                self.fail(st, ctx, f"unknown keyword '{st.key}'")
            section, key = SYNCER_KEYWORDS[st.key]
            st = dataclasses.replace(st, key=key)
        if section == "handlers":
            if st.key not in HANDLERS:
                self.fail(st, ctx, f"unknown handler '{st.key}' (known: {', '.join(HANDLERS)})")
            table = {st.key: _Str(4096, None, "a command")}
        else:
            table = {"net": NET_KEYWORDS, "disk": DISK_KEYWORDS, "startup": STARTUP_KEYWORDS,
                     "options": OPTIONS_KEYWORDS}[section]
        if section == "net" and st.key == "fencing":  # DRBD 9 moved fencing to net{}
            section, table = "disk", DISK_KEYWORDS
        self.value(st, ctx, table, getattr(sc, section), sc.seen, section,
                   raw=section in ("handlers", "startup", "options"))

    def resource(self, st):
        self.expect_body(st, [], 1, "a resource name")
        name = st.args[0]
        ctx = [f"resource '{name}'"]
        if not re.fullmatch(_NAME_RE, name) or name == "all":
            self.fail(st, [], f"resource: invalid name '{name}' (letters, digits, _ . + -; not 'all')")
        if name in self.resources:
            first = self.resources[name]
            self.fail(st, ctx, f"duplicate resource (first defined at {first.file}:{first.line})")
        sc = self.scope(st.body, ctx, "resource")
        common = self.common or _Scope()
        hosts: dict[str, HostSection] = {}
        for on in (s for s in st.body if s.key == "on"):
            self.expect_body(on, ctx, 1, "a host name")
            host = on.args[0]
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}", host):
                self.fail(on, ctx, f"on: invalid host name '{host}'")
            if host in hosts:
                self.fail(on, ctx, f"duplicate 'on {host}' section (first at line {hosts[host].line})")
            hc = [*ctx, f"on '{host}'"]
            hs = self.scope(on.body, hc, "on")
            if hs.volume is not None and sc.volume is not None and hs.volume != sc.volume:
                self.fail(on, hc, f"volume {hs.volume} differs from the resource's volume {sc.volume}")
            v = {"device": None, "minor": None, "meta_disk": "internal", "meta_index": None,
                 "address": None, "address_family": "ipv4", "export": None, "node_id": None,
                 **common.host, **sc.host, **hs.host}
            if "disk" not in v:
                self.fail(on, hc, "missing required keyword 'disk'")
            hosts[host] = HostSection(name=host, volume=hs.volume if hs.volume is not None else sc.volume,
                                      line=on.line, file=on.file, **v)
        if not hosts:
            self.fail(st, ctx, "no 'on HOST' section (one for a standalone resource, two for a "
                               "replicated one)")
        if len(hosts) > 2:
            self.fail(st, ctx, f"{len(hosts)} 'on' sections; at most two hosts are supported")
        if len(hosts) == 2:
            for h in hosts.values():
                if h.address is None:
                    raise ConfigError(f"{h.file}:{h.line}: {ctx[0]}: on '{h.name}': missing "
                                      f"'address' (required when the resource has two hosts)")
        net = NetOptions(**{**common.net, **sc.net})
        if not (net.timeout_s < net.ping_int_s and net.timeout_s < net.connect_int_s):
            self.fail(st, ctx, f"net: timeout ({net.timeout_s:g} s) must be less than ping-int "
                               f"({net.ping_int_s:g} s) and connect-int ({net.connect_int_s:g} s)")
        if (net.cram_hmac_alg is None) != (net.shared_secret is None):
            self.fail(st, ctx, "net: cram-hmac-alg and shared-secret must be set together")
        self.resources[name] = Resource(
            name=name, hosts=hosts, net=net, disk=DiskOptions(**{**common.disk, **sc.disk}),
            handlers={**common.handlers, **sc.handlers}, startup={**common.startup, **sc.startup},
            options={**common.options, **sc.options}, file=st.file, line=st.line)

    def finish(self, path):
        used: dict[tuple, Resource] = {}
        for r in self.resources.values():
            for h in r.hosts.values():
                keys = [("minor", h.minor)] if h.minor is not None else []
                keys += [("device", h.device)] if h.device else []
                keys += [("export", str(h.export))] if h.export else []
                keys += [("address", "%s:%d" % h.address)] if h.address else []
                for kind, val in keys:
                    other = used.setdefault((h.name, kind, val), r)
                    if other is not r:
                        raise ConfigError(f"{h.file}:{h.line}: resource '{r.name}': on '{h.name}': "
                                          f"{kind} {val} is also used by resource '{other.name}' "
                                          f"({other.file}:{other.line})")
            after = (r.disk.resync_after or "").split("/")[0]
            if after and after not in self.resources:
                raise ConfigError(f"{r.file}:{r.line}: resource '{r.name}': disk: resync-after: "
                                  f"no resource '{after}'")
        return Config(path=path, resources=self.resources, global_options=self.global_options)


def _read_tree(path: str) -> list[_Stmt]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {getattr(e, 'strerror', None) or e}") from e
    return _parse_block(_tokenize(text, path), 0, path, [], None)[0]


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse replica.conf text; `include` globs resolve relative to the directory of `path`."""
    b = _Builder()
    stack = [os.path.realpath(path)] if path != "<string>" else []
    b.top(_parse_block(_tokenize(text, path), 0, path, [], None)[0], stack)
    return b.finish(path)


def load_config(path: str | os.PathLike) -> Config:
    """Read and parse a config file (and its includes); OSError becomes ConfigError."""
    path = os.fspath(path)
    b = _Builder()
    b.top(_read_tree(path), [os.path.realpath(path)])
    return b.finish(path)


# -- dump ----------------------------------------------------------------------------------------

def _quote(s: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:+@=,\[\]-]+", s) and s not in ("skip", "include"):
        return s
    return '"' + "".join(_ESCAPE.get(c, c) for c in s) + '"'


def _dump_options(table, obj, defaults, indent, always=()):
    lines = []
    for kw, (fname, parser) in table.items():
        v = getattr(obj, fname)
        if v is not None and (v != getattr(defaults, fname) or kw in always):
            lines.append(f"{indent}{kw} {_quote(parser.format(v))};")
    return lines


def _dump_dict(d, indent, flags=()):
    return [f"{indent}{k};" if k in flags else f"{indent}{k} {_quote(v)};" for k, v in d.items()]


def dump_config(config: Config) -> str:
    """Normalised drbd.conf text: inheritance flattened, defaults omitted; parses back to `config`."""
    out = [f"# {config.path}: normalised by replica (common values folded into each resource)"]
    if config.global_options:
        flags = [k for k, p in GLOBAL_KEYWORDS.items() if isinstance(p, _Bool)]
        out += ["global {", *_dump_dict(config.global_options, "    ", flags), "}", ""]
    for r in config.resources.values():
        out.append(f"resource {r.name} {{")
        sections = [("net", _dump_options(NET_KEYWORDS, r.net, NetOptions(), " " * 8, ("protocol",))),
                    ("disk", _dump_options(DISK_KEYWORDS, r.disk, DiskOptions(), " " * 8)),
                    ("handlers", _dump_dict(r.handlers, " " * 8)),
                    ("startup", _dump_dict(r.startup, " " * 8)),
                    ("options", _dump_dict(r.options, " " * 8))]
        for name, lines in sections:
            if lines:
                out += [f"    {name} {{", *lines, "    }"]
        for h in r.hosts.values():
            out.append(f"    on {_quote(h.name)} {{")
            if h.node_id is not None:
                out.append(f"        node-id {h.node_id};")
            vol = []
            if h.device or h.minor is not None:
                derived = re.fullmatch(r"/dev/drbd([0-9]+)", h.device or "")
                parts = [_quote(h.device)] if h.device else []
                if h.minor is not None and not derived:
                    parts += ["minor", str(h.minor)]
                vol.append(f"device {' '.join(parts)};")
            vol.append(f"disk {_quote(h.disk)};")
            idx = f" [{h.meta_index}]" if h.meta_index is not None else ""
            vol.append(f"meta-disk {_quote(h.meta_disk)}{idx};")
            if h.volume is not None:
                out += [f"        volume {h.volume} {{", *(" " * 12 + s for s in vol), "        }"]
            else:
                out += [" " * 8 + s for s in vol]
            if h.address:
                ip = f"[{h.address[0]}]" if h.address_family == "ipv6" else h.address[0]
                out.append(f"        address {h.address_family} {ip}:{h.address[1]};")
            if h.export:
                tcp = "tcp:" if h.export.kind == "tcp" and h.export.host == "unix" else ""
                out.append(f"        export {_quote(tcp + str(h.export))};")
            out.append("    }")
        out += ["}", ""]
    return "\n".join(out)
