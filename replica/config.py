# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.conf: drbd.conf(5) syntax -> frozen dataclasses; every error names file and line.

Owns the meaning of the resource file: the data model, the keyword tables with DRBD's defaults
and units, include, inheritance and validation. The layers below and beside it:

    text --config_syntax.tokenize--> tokens --parse_block--> Statement tree --_Builder--> Config
                                                   (include "glob" is expanded at top level)
    option words --config_values (IntValue, SizeValue, ...)--> typed values
    Config --config_dump.dump_config--> normalised drbd.conf text

Grammar (drbd.conf-8.4(5)/9.0(5) "FILE FORMAT", see config_syntax): `include "glob";` only
outside sections (relative to the including file). Inheritance: common -> resource -> on HOST ->
volume (per option, not per section).

Units follow DRBD: ping-int/connect-int in seconds; ping-timeout, timeout, c-plan-ahead,
c-delay-target, disk-timeout in tenths of a second; resync-rate, c-max-rate, c-min-rate in KiB/s;
c-fill-target and size in 512-byte sectors; sndbuf/rcvbuf-size, congestion-fill in bytes. Suffixes
K, M, G multiply by 1024, 1024**2, 1024**3 (bytes). Dataclass fields carry the unit in their name.
Our additions: `export unix:PATH|HOST:PORT` (NBD endpoint), `device-kind auto|nbd|fuse` (how the
`device` is made: kernel NBD, or a FUSE file on a loop device; auto = NBD when the kernel has it,
else FUSE), `meta-disk` defaulting to internal. A resource with one `on` section is standalone;
with two it is replicated. TLS on the export, next to `export` (see ExportTls):
`export-tls require|allow|off`, `export-tls-certs DIR`, `export-tls-verify-peer yes|no`,
`export-tls-psk FILE`, and `export-insecure yes|no` (the explicit opt-out that lets a TCP export
on a non-loopback address serve clear text).
"""
from __future__ import annotations

import dataclasses
import glob
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field

from replica.config_syntax import parse_statements, read_statements
from replica.config_values import (
    ALG,
    FLAG,
    RATE,
    SECONDS,
    TENTHS,
    BadValue,
    EnumValue,
    IntValue,
    K,
    SizeValue,
    StrValue,
    one_value,
    option,
)
from replica.errors import ConfigError

_MAX_INCLUDE_DEPTH = 16


# -- public data model ------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """Where replicad serves a resource over NBD: a unix socket or a TCP host:port."""
    kind: str  # "unix" | "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def nbd_uri(self, export_name: str, tls: bool = False) -> str:
        """NBD URI (the NBD project's doc/uri.md) for `export_name` at this endpoint; `tls`:
        the nbds scheme (the client must use TLS)."""
        name = urllib.parse.quote(export_name, safe="")
        scheme = "nbds" if tls else "nbd"
        if self.kind == "unix":
            return f"{scheme}+unix:///{name}?socket={urllib.parse.quote(self.path or '', safe='/')}"
        host = f"[{self.host}]" if ":" in (self.host or "") else self.host
        return f"{scheme}://{host}:{self.port}/{name}"

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


EXPORT_TLS_MODES = ("require", "allow", "off")


@dataclass(frozen=True)
class ExportTls:
    """TLS on the NBD export (nbdkit's --tls, --tls-certificates, --tls-verify-peer, --tls-psk).

    `certs` is a directory in qemu's and nbdkit's layout (ca-cert.pem, server-cert.pem,
    server-key.pem); `psk` a file of `identity:hexkey` lines (GnuTLS psktool's format). `mode`
    is what was configured, or require when credentials are given and off otherwise. `where`
    is the `file:line` of the `export` statement (of the `on` section without one)."""
    mode: str = "off"
    certs: str | None = None
    verify_peer: bool = False
    psk: str | None = None
    insecure: bool = False
    where: str = field(default="", compare=False)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def ca_cert(self) -> str:
        return os.path.join(self.certs or "", "ca-cert.pem")

    @property
    def server_cert(self) -> str:
        return os.path.join(self.certs or "", "server-cert.pem")

    @property
    def server_key(self) -> str:
        return os.path.join(self.certs or "", "server-key.pem")


def is_loopback_host(host: str | None) -> bool:
    """An export host that only this machine can reach: a loopback address or `localhost`. Other
    names count as reachable from the network (a name is not resolved to find out)."""
    if host in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_export_security(resource: str, node: str, endpoint: Endpoint, tls: ExportTls) -> None:
    """Refuse (ConfigError, at `up`) an export that would serve the disk in clear text to the
    network: TCP on a non-loopback address with TLS off, or with `export-tls allow` (which still
    serves clear-text clients), unless `export-insecure yes` says so. Unix sockets and loopback
    addresses stay as they are: only this machine can reach them."""
    if endpoint.kind != "tcp" or is_loopback_host(endpoint.host) or tls.insecure \
            or tls.mode == "require":
        return
    what = "without TLS" if tls.mode == "off" else "with export-tls allow (clear-text clients " \
                                                   "are still served)"
    raise ConfigError(
        f"{tls.where}: resource '{resource}': on '{node}': export {endpoint}: refusing a TCP export "
        f"on a non-loopback address {what}: anyone who reaches the port could read and write the "
        f"whole disk in clear text: add TLS (export-tls-certs DIR; or export-tls-psk FILE;) or "
        f"say 'export-insecure yes;'")


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
    device_kind: str = "auto"
    export_tls: ExportTls = ExportTls()
    volume: int | None = None
    line: int = field(default=0, compare=False)
    file: str = field(default="", compare=False)
    address_line: int = field(default=0, compare=False)  # the `address` statement's line in `file`

    @property
    def address_text(self) -> str:
        """`IP:PORT` (`[IPV6]:PORT`) as drbdadm prints it in messages."""
        if self.address is None:
            return ""
        ip, port = self.address
        return f"[{ip}]:{port}" if self.address_family == "ipv6" else f"{ip}:{port}"

    @property
    def where(self) -> str:
        """`file:line` of the `address` statement (of the `on` section when it has none)."""
        return f"{self.file}:{self.address_line or self.line}"


@dataclass(frozen=True)
class NetOptions:
    """`net {}`: ranges from drbd_limits.h, defaults from drbd.conf(5), times in seconds."""
    protocol: str = option("protocol", EnumValue("A", "B", "C"), "C")
    cram_hmac_alg: str | None = option("cram-hmac-alg", EnumValue("sha1", "sha256", "sha512"), None)
    shared_secret: str | None = option("shared-secret", StrValue(64, None, "a secret of 1..64 characters"), None)
    ping_int_s: float = option("ping-int", IntValue(1, 120, SECONDS, 1), 10.0)
    ping_timeout_s: float = option("ping-timeout", IntValue(1, 300, TENTHS, 10), 0.5)
    timeout_s: float = option("timeout", IntValue(1, 600, TENTHS, 10), 6.0)
    connect_int_s: float = option("connect-int", IntValue(1, 120, SECONDS, 1), 10.0)
    socket_check_timeout_s: float = option("socket-check-timeout", IntValue(0, 300, TENTHS, 10), 0.0)
    max_buffers: int = option("max-buffers", IntValue(32, 131072), 2048)
    max_epoch_size: int = option("max-epoch-size", IntValue(1, 20000), 2048)
    sndbuf_size: int = option("sndbuf-size", SizeValue(0, 128 * K ** 2, 1), 0)  # bytes, 0 = autotune
    rcvbuf_size: int = option("rcvbuf-size", SizeValue(0, 128 * K ** 2, 1), 0)
    ko_count: int = option("ko-count", IntValue(0, 200), 7)
    after_sb_0pri: str = option("after-sb-0pri", EnumValue(
        "disconnect", "discard-younger-primary", "discard-older-primary", "discard-zero-changes",
        "discard-least-changes", "discard-node-NODENAME", pattern=r"discard-node-[A-Za-z0-9_.-]+"),
        "disconnect")
    after_sb_1pri: str = option("after-sb-1pri", EnumValue(
        "disconnect", "consensus", "violently-as0p", "discard-secondary", "call-pri-lost-after-sb"),
        "disconnect")
    after_sb_2pri: str = option("after-sb-2pri", EnumValue(
        "disconnect", "violently-as0p", "call-pri-lost-after-sb"), "disconnect")
    rr_conflict: str = option("rr-conflict", EnumValue("disconnect", "call-pri-lost", "violently"), "disconnect")
    always_asbp: bool = option("always-asbp", FLAG, False)
    allow_two_primaries: bool = option("allow-two-primaries", FLAG, False)
    tcp_cork: bool = option("tcp-cork", FLAG, True)
    use_rle: bool = option("use-rle", FLAG, True)
    verify_alg: str | None = option("verify-alg", ALG, None)
    csums_alg: str | None = option("csums-alg", ALG, None)
    csums_after_crash_only: bool = option("csums-after-crash-only", FLAG, False)
    data_integrity_alg: str | None = option("data-integrity-alg", ALG, None)
    on_congestion: str = option("on-congestion", EnumValue("block", "pull-ahead", "disconnect"), "block")
    congestion_fill: int = option("congestion-fill", SizeValue(0, 10 * K ** 3, 512), 0)  # bytes
    congestion_extents: int | None = option("congestion-extents", IntValue(67, 65534), None)  # None: al-extents
    # TLS on the peer link (DRBD 9.2's `tls yes`; ours is TLS in C, with OpenSSL, over the peer's
    # certificate checked against tls-cafile and naming the peer's `on` host): the three files
    # are required with `tls yes` (PEM: the key, this node's certificate chain, the CA).
    tls: bool = option("tls", FLAG, False)
    tls_keyfile: str | None = option("tls-keyfile", StrValue(4096, None, "a file name"), None)
    tls_certfile: str | None = option("tls-certfile", StrValue(4096, None, "a file name"), None)
    tls_cafile: str | None = option("tls-cafile", StrValue(4096, None, "a file name"), None)


@dataclass(frozen=True)
class DiskOptions:
    """`disk {}` (8.4; 8.3 `syncer {}` maps here): rates in bytes/s, times in seconds."""
    resync_rate_bps: int = option("resync-rate", SizeValue(K, 4 * K ** 3, K, "a rate in bytes/s"), 250 * K)
    al_extents: int = option("al-extents", IntValue(7, 65534), 1237)
    al_updates: bool = option("al-updates", FLAG, True)
    on_io_error: str = option("on-io-error", EnumValue("pass_on", "call-local-io-error", "detach"), "detach")
    fencing: str = option("fencing", EnumValue("dont-care", "resource-only", "resource-and-stonith"), "dont-care")
    c_plan_ahead_s: float = option("c-plan-ahead", IntValue(0, 300, TENTHS, 10), 2.0)
    c_delay_target_s: float = option("c-delay-target", IntValue(1, 100, TENTHS, 10), 1.0)
    c_fill_target_bytes: int = option("c-fill-target", SizeValue(0, 1000000 * 512, 512), 100 * 512)
    c_max_rate_bps: int = option("c-max-rate", RATE, 102400 * K)
    c_min_rate_bps: int = option("c-min-rate", RATE, 250 * K)
    disk_barrier: bool = option("disk-barrier", FLAG, False)
    disk_flushes: bool = option("disk-flushes", FLAG, True)
    disk_drain: bool = option("disk-drain", FLAG, True)
    md_flushes: bool = option("md-flushes", FLAG, True)
    disk_timeout_s: float = option("disk-timeout", IntValue(0, 6000, TENTHS, 10), 0.0)
    read_balancing: str = option("read-balancing", EnumValue(
        "prefer-local", "prefer-remote", "round-robin", "least-pending", "when-congested-remote",
        *(f"{n}-striping" for n in ("32K", "64K", "128K", "256K", "512K", "1M"))), "prefer-local")
    resync_after: str | None = option("resync-after", StrValue(128, r"[A-Za-z0-9_.+-]+(/[0-9]+)?",
                                                         "RESOURCE[/VOLUME]"), None)
    size_bytes: int | None = option("size", SizeValue(0, 1 << 62, 512), None)
    rs_discard_granularity: int = option("rs-discard-granularity", SizeValue(0, K ** 2, 1), 0)
    discard_zeroes_if_aligned: bool = option("discard-zeroes-if-aligned", FLAG, True)
    disable_write_same: bool = option("disable-write-same", FLAG, False)


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
    # `file:line: ...: KEYWORD: ignored (...)`, one per statement that sets an option DRBD
    # itself ignores in our setting (see NOT_YET); `up` and `dump` print them
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            raise ConfigError(f"no resource '{name}' in {self.path} "
                              f"(have: {', '.join(self.resources) or 'none'})") from None



def net_options_problem(net: NetOptions) -> str | None:
    """What is wrong with a whole net section (options that must agree with each other), or
    None; the config and `replicactl net-options` both check it."""
    if not (net.timeout_s < net.ping_int_s and net.timeout_s < net.connect_int_s):
        return (f"timeout ({net.timeout_s:g} s) must be less than ping-int ({net.ping_int_s:g} s) "
                f"and connect-int ({net.connect_int_s:g} s)")
    if (net.cram_hmac_alg is None) != (net.shared_secret is None):
        return "cram-hmac-alg and shared-secret must be set together"
    return None


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
_TIMEOUT = IntValue(0, 1000000, SECONDS)
STARTUP_KEYWORDS = {"wfc-timeout": _TIMEOUT, "degr-wfc-timeout": _TIMEOUT,
                    "outdated-wfc-timeout": _TIMEOUT, "wait-after-sb": FLAG,
                    "stacked-timeouts": FLAG,
                    "become-primary-on": StrValue(253, None, "a host name or both")}
_QUORUM = StrValue(8, r"off|majority|all|[0-9]+", "off, majority, all or N")
OPTIONS_KEYWORDS = {"cpu-mask": StrValue(64, r"[0-9a-fA-F,]+", "a hexadecimal cpu mask"),
                    "on-no-data-accessible": EnumValue("io-error", "suspend-io"), "auto-promote": FLAG,
                    "quorum": _QUORUM, "quorum-minimum-redundancy": _QUORUM,
                    "on-no-quorum": EnumValue("io-error", "suspend-io"),
                    "peer-ack-window": SizeValue(2 * K, 2 * K ** 3, 512), "peer-ack-delay": IntValue(1, 10000, "ms"),
                    "twopc-timeout": IntValue(50, 600, TENTHS), "max-io-depth": IntValue(4, 4096)}
GLOBAL_KEYWORDS = {"usage-count": EnumValue("yes", "no", "ask"), "minor-count": IntValue(1, 1048575),
                   "dialog-refresh": IntValue(0, 600, SECONDS), "disable-ip-verification": FLAG,
                   "udev-always-use-vnr": FLAG, "cmd-timeout-short": IntValue(0, 1000000, SECONDS),
                   "cmd-timeout-medium": IntValue(0, 1000000, SECONDS),
                   "cmd-timeout-long": IntValue(0, 1000000, SECONDS)}
HANDLERS = ("pri-on-incon-degr", "pri-lost-after-sb", "pri-lost", "fence-peer", "unfence-peer",
            "local-io-error", "initial-split-brain", "split-brain", "before-resync-target",
            "after-resync-target", "before-resync-source", "out-of-sync", "quorum-lost", "disconnected")
HOST_KEYWORDS = ("device", "device-kind", "disk", "meta-disk", "flexible-meta-disk", "address", "export",
                 "node-id", "export-tls", "export-tls-certs", "export-tls-verify-peer", "export-tls-psk",
                 "export-insecure")
# Keywords that may stand in common, resource or on (not volume): the export and how it is made.
_EXPORT_KEYWORDS = ("export", "device-kind", "export-tls", "export-tls-certs", "export-tls-verify-peer",
                    "export-tls-psk", "export-insecure")
_EXPORT_TLS_FIELDS = {"export-tls": "mode", "export-tls-certs": "certs",
                      "export-tls-verify-peer": "verify_peer", "export-tls-psk": "psk",
                      "export-insecure": "insecure"}
_ABSOLUTE_PATH = StrValue(4096, r"/.*", "an absolute path")
DEVICE_KINDS = ("auto", "nbd", "fuse")
_SECTIONS = ("net", "disk", "syncer", "handlers", "startup", "options")


@dataclass(frozen=True)
class NotYet:
    """An option drbd.conf has that replicad does not do as DRBD does. Setting it to `same` (the
    value whose behaviour ours already is), when given, is fine. Otherwise the config is refused
    (`FILE:LINE: ...: KEYWORD: not supported (why)`), unless DRBD itself ignores the option in
    our setting (`ignored`): then it is accepted with a one-line warning at `up` and `dump`."""
    why: str
    same: object = None
    ignored: bool = False


_NO_MODULE = "it configures DRBD's kernel module, init script or udev rules, which replica-ha has none of"
# (section, keyword) -> NotYet. Everything else the parser accepts is implemented. Remove an
# entry in the commit that makes the keyword work (tests/unit/test_config_not_yet.py checks
# that each entry is still unused by the code, so the table cannot go stale the other way).
NOT_YET: dict[tuple[str, str], NotYet] = {
    ("net", "socket-check-timeout"): NotYet("the peer connection is not probed before use", 0),
    ("net", "max-epoch-size"): NotYet("replicad has no write epochs (barriers): writes are "
                                      "ordered on one stream"),
    ("net", "on-congestion"): NotYet("a congested link always blocks (no Ahead/Behind)", "block"),
    **{("net", k): NotYet("DRBD uses it only with on-congestion pull-ahead or disconnect",
                          ignored=True) for k in ("congestion-fill", "congestion-extents")},
    ("net", "tcp-cork"): NotYet("replicad batches frames with MSG_MORE", True),
    ("net", "use-rle"): NotYet("the bitmap is exchanged uncompressed (a detail of the link "
                               "between two replicad)", False, ignored=True),
    ("disk", "disk-timeout"): NotYet("local requests are not timed out", 0),
    ("disk", "size"): NotYet("the whole backing disk is used"),
    ("disk", "disk-barrier"): NotYet("replicad orders writes with flushes", False),
    ("disk", "disk-flushes"): NotYet("replicad always flushes the backing disk", True),
    ("disk", "disk-drain"): NotYet("replicad always drains", True),
    ("disk", "md-flushes"): NotYet("metadata writes are always flushed", True),
    ("disk", "read-balancing"): NotYet("reads are always served locally", "prefer-local"),
    ("disk", "rs-discard-granularity"): NotYet("resync writes every block", 0),
    ("handlers", "quorum-lost"): NotYet("there is no quorum (DRBD 9)"),
    ("startup", "stacked-timeouts"): NotYet("DRBD uses it only for stacked resources, which "
                                            "replica-ha has none of", ignored=True),
    ("options", "cpu-mask"): NotYet("replicad's threads are not pinned"),
    ("options", "on-no-data-accessible"): NotYet("I/O fails when no UpToDate data is reachable",
                                                 "io-error"),
    ("options", "auto-promote"): NotYet("opening the device does not promote (DRBD 9)", "no"),
    ("options", "quorum"): NotYet("there is no quorum (DRBD 9)", "off"),
    **{("options", k): NotYet("DRBD uses it only with quorum, which is off", ignored=True)
       for k in ("quorum-minimum-redundancy", "on-no-quorum")},
    **{("options", k): NotYet("DRBD 9 uses it only between more than two nodes", ignored=True)
       for k in ("peer-ack-window", "peer-ack-delay")},
    ("options", "twopc-timeout"): NotYet("state changes are not two-phase commits (DRBD 9)"),
    ("options", "max-io-depth"): NotYet("the request depth is not limited (DRBD 9)"),
    **{("global", k): NotYet(_NO_MODULE, ignored=True) for k in (
        "minor-count", "dialog-refresh", "udev-always-use-vnr")},
    ("global", "usage-count"): NotYet("replica-ha counts no usage", "no", ignored=True),
}
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
        raise BadValue(f"expected /dev/drbdN, /dev/nbdN, 'minor N' or 'PATH minor N' "
                   f"(N 0..1048575), got '{' '.join(args)}'")
    derived = re.fullmatch(r"/dev/drbd([0-9]{1,7})", dev or "")
    if derived and minor is not None and minor != int(derived[1]):
        raise BadValue(f"device name '{dev}' does not match minor {minor}")
    return dev, (int(derived[1]) if derived else minor)


def _parse_meta_disk(args):
    """`internal`, `PATH` or `PATH [INDEX]` (also `PATH[INDEX]`, `PATH [ INDEX ]`)."""
    path, rest = (args[0], "".join(args[1:])) if args else ("", "")
    if not rest and (m := re.fullmatch(r"([^\s\[]+)(\[[0-9]{1,4}\])", path)):
        path, rest = m[1], m[2]
    m = re.fullmatch(r"\[([0-9]{1,4})\]", rest)
    if not path or (rest and not m) or path.startswith("[") or (path == "internal" and rest):
        raise BadValue(f"expected internal, PATH or PATH [INDEX], got '{' '.join(args)}'")
    return path, (int(m[1]) if m else None)


def _parse_address(args):
    family = args[0] if len(args) == 2 else None
    if len(args) not in (1, 2) or family not in (None, "ipv4", "ipv6"):
        hint = f"address family '{family}' is not supported; " if len(args) == 2 else ""
        raise BadValue(f"{hint}expected [ipv4|ipv6] IP:PORT, got '{' '.join(args)}'")
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})", args[-1])
    try:
        ip = ipaddress.ip_address(m[1] or m[2]) if m else None
    except ValueError:
        ip = None
    if ip is None or not 1 <= int(m[3]) <= 65535 or (family and family != f"ipv{ip.version}") \
            or (m[1] and ip.version != 6):
        raise BadValue(f"expected [ipv4|ipv6] IP:PORT (IPv6 as ipv6 [ADDR]:PORT), got '{' '.join(args)}'")
    return (m[1] or m[2], int(m[3])), f"ipv{ip.version}"


def _parse_export(args):
    tok = one_value(args)
    if tok.startswith("unix:"):
        if not tok[5:].startswith("/"):
            raise BadValue(f"expected unix:/ABSOLUTE/PATH, got '{tok}'")
        return Endpoint("unix", path=tok[5:])
    m = re.fullmatch(r"(?:tcp:)?(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)):([0-9]{1,5})", tok)
    if m and m[1]:
        try:
            ipaddress.IPv6Address(m[1])
        except ValueError:
            m = None
    if not m or not 1 <= int(m[3]) <= 65535:
        raise BadValue(f"expected unix:/PATH, HOST:PORT or [IPV6]:PORT, got '{tok}'")
    return Endpoint("tcp", host=m[1] or m[2], port=int(m[3]))


def _parse_host_keyword(key, args, values):
    """Store one host keyword's parsed value(s) into `values` (keyed by HostSection field)."""
    if key == "device":
        values["device"], values["minor"] = _parse_device(args)
    elif key == "disk":
        tok = one_value(args)
        if tok == "none":
            raise BadValue("diskless nodes ('disk none') are not supported")
        values["disk"] = tok
    elif key in ("meta-disk", "flexible-meta-disk"):
        values["meta_disk"], values["meta_index"] = _parse_meta_disk(args)
    elif key == "address":
        values["address"], values["address_family"] = _parse_address(args)
    elif key == "export":
        values["export"] = _parse_export(args)
    elif key == "device-kind":
        kind = one_value(args)
        if kind not in DEVICE_KINDS:
            raise BadValue(f"expected one of {', '.join(DEVICE_KINDS)}, got '{kind}'")
        values["device_kind"] = kind
    elif key == "node-id":
        values["node_id"] = IntValue(0, 31).parse(args)
    elif key == "export-tls":
        values["tls:mode"] = EnumValue(*EXPORT_TLS_MODES).parse(args)
    elif key in ("export-tls-certs", "export-tls-psk"):
        values[f"tls:{_EXPORT_TLS_FIELDS[key]}"] = _ABSOLUTE_PATH.parse(args)
    elif key in ("export-tls-verify-peer", "export-insecure"):
        values[f"tls:{_EXPORT_TLS_FIELDS[key]}"] = FLAG.parse(args)


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
        self.warnings: list[str] = []

    def warn_if_not_yet(self, st, ctx, section, value):
        """A statement setting an option we do not do as DRBD does (NOT_YET): refused, or a
        warning where DRBD itself ignores it in our setting."""
        entry = NOT_YET.get((section, st.key))
        if entry is None or entry.same is not None and value == entry.same:
            return
        if not entry.ignored:
            self.fail(st, ctx, f"{st.key}: not supported ({entry.why})")
        self.warnings.append(f"{st.file}:{st.line}: {': '.join(ctx)}: {st.key}: ignored "
                             f"({entry.why})")

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
            self.top(read_statements(name), [*include_stack, real])

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
        except BadValue as e:
            self.fail(st, ctx, f"{st.key}: {e}")
        into[fieldname] = parser.format(v) if raw else v
        seen[section, fieldname] = st.line
        self.warn_if_not_yet(st, ctx, section, parser.format(v) if raw else v)

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
            elif st.key in HOST_KEYWORDS and level != "common" \
                    or st.key in ("disk", "meta-disk", *_EXPORT_KEYWORDS):
                if st.key in ("address", "node-id") and level in ("resource", "volume"):
                    self.fail(st, ctx, f"'{st.key}' belongs in an 'on HOST' section")
                if st.key in _EXPORT_KEYWORDS and level == "volume":
                    self.fail(st, ctx, f"'{st.key}' belongs in the resource or an 'on HOST' section")
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
            return IntValue(0, 65534).parse(st.args)
        except BadValue as e:
            self.fail(st, ctx, f"volume: {e}")

    def host_option(self, sc, st, ctx):
        if st.body is not None:
            self.fail(st, ctx, f"{st.key}: unexpected '{{' (this is an option, not a section)")
        key = "meta-disk" if st.key == "flexible-meta-disk" else st.key
        if ("host", key) in sc.seen:
            self.fail(st, ctx, f"{st.key}: duplicate option (first at line {sc.seen['host', key]})")
        try:
            _parse_host_keyword(st.key, st.args, sc.host)
        except BadValue as e:
            self.fail(st, ctx, f"{st.key}: {e}")
        sc.seen["host", key] = st.line
        if key == "export":
            sc.host["tls:where"] = f"{st.file}:{st.line}"
        self.warn_if_not_yet(st, ctx, "host", None)

    def section_option(self, sc, section, st, ctx):
        if section == "syncer":
            if st.key not in SYNCER_KEYWORDS:
                self.fail(st, ctx, f"unknown keyword '{st.key}'")
            section, key = SYNCER_KEYWORDS[st.key]
            st = dataclasses.replace(st, key=key)
        if section == "handlers":
            if st.key not in HANDLERS:
                self.fail(st, ctx, f"unknown handler '{st.key}' (known: {', '.join(HANDLERS)})")
            table = {st.key: StrValue(4096, None, "a command")}
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
            v["export_tls"] = self.export_tls(on, hc, {k[4:]: v.pop(k) for k in list(v)
                                                       if k.startswith("tls:")})
            hosts[host] = HostSection(name=host, volume=hs.volume if hs.volume is not None else sc.volume,
                                      line=on.line, file=on.file,
                                      address_line=hs.seen.get(("host", "address"), 0), **v)
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
        problem = net_options_problem(net)
        if problem:
            self.fail(st, ctx, f"net: {problem}")
        if net.tls and (missing := [kw for kw, v in (("tls-keyfile", net.tls_keyfile), ("tls-certfile",
                                                   net.tls_certfile), ("tls-cafile", net.tls_cafile)) if not v]):
            line = sc.seen.get(("net", "tls"), st.line)     # the `tls` line when it is ours
            raise ConfigError(f"{st.file}:{line}: {ctx[0]}: net: tls yes needs tls-keyfile, tls-certfile "
                              f"and tls-cafile: missing {', '.join(missing)}")
        self.resources[name] = Resource(
            name=name, hosts=hosts, net=net, disk=DiskOptions(**{**common.disk, **sc.disk}),
            handlers={**common.handlers, **sc.handlers}, startup={**common.startup, **sc.startup},
            options={**common.options, **sc.options}, file=st.file, line=st.line)

    def export_tls(self, on, ctx, values):
        """ExportTls from the `export-tls*` keywords of one `on` section (after inheritance)."""
        where = values.pop("where", f"{on.file}:{on.line}")
        certs, psk = values.get("certs"), values.get("psk")
        if certs and psk:
            self.fail(on, ctx, "export-tls-certs and export-tls-psk exclude each other (X.509 "
                               "or a pre-shared key, as nbdkit and qemu take one)")
        mode = values.pop("mode", "require" if certs or psk else "off")
        if mode != "off" and not (certs or psk):
            self.fail(on, ctx, f"export-tls {mode}: needs export-tls-certs DIR or "
                               f"export-tls-psk FILE")
        if values.get("verify_peer") and not certs:
            self.fail(on, ctx, "export-tls-verify-peer: needs export-tls-certs DIR (client "
                               "certificates are checked against its ca-cert.pem)")
        return ExportTls(mode=mode, where=where, **values)

    def finish(self, path):
        used: dict[tuple, Resource] = {}
        ips: dict[tuple, tuple[Resource, HostSection]] = {}
        for r in self.resources.values():
            for h in r.hosts.values():
                if h.address:
                    self.check_ip_once(ips, r, h)
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
        return Config(path=path, resources=self.resources, global_options=self.global_options,
                      warnings=tuple(self.warnings))

    @staticmethod
    def check_ip_once(ips, r, h):
        """An IP:PORT belongs to one `on` section in the whole config, as drbdadm checks it: two
        hosts of one resource on the same address would connect to themselves, and two resources
        on one address would steal each other's connections."""
        key = (ipaddress.ip_address(h.address[0]), h.address[1])
        first_r, first_h = ips.setdefault(key, (r, h))
        if first_h is h or first_h.name == h.name and first_r is not r:
            return  # the same host in two resources: reported below with the other duplicates
        owner = f"on '{first_h.name}'" if first_r is r else \
            f"resource '{first_r.name}' on '{first_h.name}'"
        raise ConfigError(f"{h.where}: resource '{r.name}': on '{h.name}': address: conflicting "
                          f"use of IP '{h.address_text}' (first used at {first_h.where}, {owner})")



def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse replica.conf text; `include` globs resolve relative to the directory of `path`."""
    b = _Builder()
    stack = [os.path.realpath(path)] if path != "<string>" else []
    b.top(parse_statements(text, path), stack)
    return b.finish(path)


def load_config(path: str | os.PathLike) -> Config:
    """Read and parse a config file (and its includes); OSError becomes ConfigError."""
    path = os.fspath(path)
    b = _Builder()
    b.top(read_statements(path), [os.path.realpath(path)])
    return b.finish(path)
