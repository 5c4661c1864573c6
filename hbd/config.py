# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat's `ha.cf`: every directive of heartbeat 3.0.x, parsed into one frozen HaConfig.

Owns: reading `ha.d/ha.cf`, validating values the way heartbeat's
`heartbeat/config.c` does, and the defaults heartbeat derives (warntime,
initdead, deadping).  Errors are ConfigError("ha.cf:LINE: directive: ...").

Syntax (heartbeat config.c `parse_config`):

- one directive per line; `#` starts a comment anywhere on the line;
- option directives take one or more words, each applied in turn
  (`node ha1 ha2` = two nodes; `keepalive 1 2` ends up 2, as in heartbeat);
- media (`bcast`, `mcast`, `ucast`, `serial`, `ping`, `ping_group`) and
  whole-line directives (`stonith`, `stonith_host`, `respawn`, `failfast`,
  `apiauth`) take the rest of the line;
- times are seconds unless suffixed (cluster-glue `cl_get_msec`): `10`, `1.5`,
  `1500ms`, `500msec`, `250000us`, rounded to whole milliseconds; heartbeat
  has no `s` suffix, so neither do we (`2s` is an error there and here);
- booleans are `true/on/yes/y/1` or `false/off/no/n/0`, any case.

Defaults as in heartbeat 3.0.x: warntime = deadtime/2; initdead = deadtime
when deadtime > 10 s, 12 s when deadtime < 6 s, else 2 x deadtime;
deadping = deadtime.  Errors (as heartbeat): deadtime <= 2 x keepalive,
initdead < deadtime, deadping <= 2 x keepalive, no node, no medium.
The keepalive default follows our design (2 s, heartbeat v1's value);
heartbeat 3.0.x uses 1 s.

Our extensions (a real heartbeat rejects them as "Illegal directive", so
keep them out of an ha.cf shared with a heartbeat node):

    gratuitous_arp_count N          ARPs of each kind after an IP takeover (10)
    gratuitous_arp_interval TIME    gap between ARPs (250ms)
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from hacommon.errors import ConfigError


@dataclass(frozen=True)
class Mcast:
    """`mcast dev group port ttl loop`."""

    dev: str
    group: str
    port: int
    ttl: int
    loop: int


@dataclass(frozen=True)
class Ucast:
    """`ucast dev peer-address`."""

    dev: str
    addr: str


@dataclass(frozen=True)
class HaConfig:
    """The whole ha.cf; times in seconds (floats)."""

    path: str = "ha.cf"
    keepalive_s: float = 2.0
    deadtime_s: float = 30.0
    warntime_s: float = 15.0
    initdead_s: float = 30.0
    udpport: int = 694
    bcast: tuple[str, ...] = ()
    mcast: tuple[Mcast, ...] = ()
    ucast: tuple[Ucast, ...] = ()
    serial: tuple[str, ...] = ()
    baud: int = 19200
    nodes: tuple[str, ...] = ()
    auto_failback: str = "legacy"
    logfacility: str | None = None
    logfile: str | None = None
    debugfile: str | None = None
    ping: tuple[str, ...] = ()
    ping_group: tuple[tuple[str, tuple[str, ...]], ...] = ()
    deadping_s: float = 30.0
    respawn: tuple[tuple[str, str], ...] = ()
    failfast: tuple[tuple[str, str], ...] = ()
    stonith: tuple[str, ...] = ()
    stonith_host: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    crm: str = "off"
    gratuitous_arp_count: int = 10
    gratuitous_arp_interval_ms: int = 250
    use_logd: bool | None = None
    debug: int = 0
    hopfudge: int = 1
    max_rexmit_delay_ms: int = 250
    watchdog: str | None = None
    autojoin: str = "none"
    cluster: str = "linux-ha"
    # accepted heartbeat directives we do not act on: (directive, value) as written
    extra: tuple[tuple[str, str], ...] = ()
    # things heartbeat would log as warnings (the daemon logs them at start)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def media_count(self) -> int:
        return len(self.bcast) + len(self.mcast) + len(self.ucast) + len(self.serial)


# cluster-glue cl_get_msec(): a number, optionally followed by ms/msec or us/usec; rounded to 1 ms
_TIME_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|msec|us|usec)?", re.IGNORECASE)
_TIME_MS = {None: 1000.0, "ms": 1.0, "msec": 1.0, "us": 1e-3, "usec": 1e-3}
_TRUE = ("true", "on", "yes", "y", "1")
_FALSE = ("false", "off", "no", "n", "0")
_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800)
_FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog",
               "user", "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
               "local7", "none")
_NODE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_DEV_RE = re.compile(r"[^\s/]{1,15}\Z")

# heartbeat directives we accept and keep in `extra` (checked only for shape)
_BOOL_EXTRA = ("realtime", "coredumps", "normalpoll", "log_badpack", "syslogmsgfmt", "use_apphbd",
               "traditional_compression", "record_config_changes", "record_pengine_inputs",
               "enable_config_writes")
_WORD_EXTRA = ("rtprio", "hbgenmethod", "coreroot", "uuidfrom", "msgfmt", "compression",
               "compression_threshold", "memreserve", "quorum_server", "conn_logd_time", "env")
_LINE_EXTRA = ("apiauth", "hbaping", "mcast6", "ping6")

_CHOICES = {"hbgenmethod": ("file", "time"), "uuidfrom": ("file", "nodename"),
            "msgfmt": ("classic", "netstring"), "compression": ("zlib", "bz2")}


def parse_time_s(word: str) -> float | None:
    """Heartbeat time syntax -> seconds (whole milliseconds, as heartbeat), or None when not a time."""
    m = _TIME_RE.fullmatch(word)
    if m is None:
        return None
    ms = int(float(m.group(1)) * _TIME_MS[m.group(2).lower() if m.group(2) else None] + 0.5)
    return ms / 1000.0


def parse_bool(word: str) -> bool | None:
    w = word.lower()
    return True if w in _TRUE else False if w in _FALSE else None


class _Parser:
    """Line-by-line builder; one method per directive family."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.v: dict = {}
        self.lists: dict[str, list] = {k: [] for k in (
            "bcast", "mcast", "ucast", "serial", "nodes", "ping", "ping_group", "respawn", "failfast",
            "stonith_host", "extra")}
        self.warnings: list[str] = []
        self.first_line: dict[str, int] = {}
        self.any_media = False
        self.lineno = 0

    def err(self, directive: str, what: str) -> ConfigError:
        return ConfigError(f"{self.path}:{self.lineno}: {directive}: {what}")

    # -- value helpers --------------------------------------------------
    def time(self, directive: str, word: str) -> float:
        t = parse_time_s(word)
        if t is None:
            raise self.err(directive, f"expected a time like 10 or 500ms, got {word!r}")
        return t

    def int_in(self, directive: str, word: str, lo: int, hi: int) -> int:
        if not word.isdigit() or len(word) > 9 or not lo <= int(word) <= hi:
            raise self.err(directive, f"expected an integer {lo}..{hi}, got {word!r}")
        return int(word)

    def boolean(self, directive: str, word: str) -> bool:
        b = parse_bool(word)
        if b is None:
            raise self.err(directive, f"expected on or off (true/yes/y/1, false/no/n/0), got {word!r}")
        return b

    def ipv4(self, directive: str, word: str, what: str = "an IPv4 address") -> ipaddress.IPv4Address:
        try:
            return ipaddress.IPv4Address(word)
        except ValueError:
            raise self.err(directive, f"expected {what}, got {word!r}") from None

    def dev(self, directive: str, word: str) -> str:
        if not _DEV_RE.match(word):
            raise self.err(directive, f"expected a network interface name, got {word!r}")
        return word

    # -- the line dispatcher --------------------------------------------
    def feed_line(self, lineno: int, raw: str) -> None:
        self.lineno = lineno
        line = raw.split("#", 1)[0].strip()
        if not line:
            return
        words = line.split()
        d, args = words[0], words[1:]
        rest = line[len(d):].strip()
        handler = getattr(self, "do_" + d, None) if d.isidentifier() and d.islower() else None
        if handler is not None:
            if not args:
                raise self.err(d, "missing value")
            handler(d, args, rest)
        elif d in _BOOL_EXTRA:
            for a in args or [""]:
                self.boolean(d, a)
            self.lists["extra"].append((d, rest))
        elif d in _WORD_EXTRA or d in _LINE_EXTRA:
            if not args:
                raise self.err(d, "missing value")
            if d in _CHOICES and args[0].lower() not in _CHOICES[d]:
                raise self.err(d, f"expected one of {', '.join(_CHOICES[d])}, got {args[0]!r}")
            self.lists["extra"].append((d, rest))
        else:
            raise ConfigError(f"{self.path}:{lineno}: unknown directive {d!r}")
        self.first_line.setdefault(d, lineno)

    # -- timing -----------------------------------------------------------
    def do_keepalive(self, d, args, rest):
        for a in args:
            t = self.time(d, a)
            if t <= 0:
                raise self.err(d, f"must be more than 0, got {a!r}")
            self.v["keepalive_s"] = t

    def _time_option(self, d, args, key, allow_zero=True):
        for a in args:
            t = self.time(d, a)
            if t <= 0 and not allow_zero:
                raise self.err(d, f"must be more than 0, got {a!r}")
            self.v[key] = t

    def do_deadtime(self, d, args, rest):
        self._time_option(d, args, "deadtime_s")

    def do_warntime(self, d, args, rest):
        self._time_option(d, args, "warntime_s", allow_zero=False)

    def do_initdead(self, d, args, rest):
        self._time_option(d, args, "initdead_s")

    def do_deadping(self, d, args, rest):
        self._time_option(d, args, "deadping_s")

    def do_max_rexmit_delay(self, d, args, rest):
        for a in args:
            self.v["max_rexmit_delay_ms"] = self.int_in(d, a, 1, 3_600_000)

    # -- media ------------------------------------------------------------
    def do_udpport(self, d, args, rest):
        for a in args:
            self.v["udpport"] = self.int_in(d, a, 1, 65535)
        if self.any_media:
            self.warnings.append(f"{self.path}:{self.lineno}: udpport: heartbeat applies udpport only to "
                                 f"media statements that follow it; hbd uses {self.v['udpport']} for all")

    def do_baud(self, d, args, rest):
        if "baud" in self.v:
            raise self.err(d, f"baud rate given twice (first on line {self.first_line['baud']})")
        for a in args:
            if not a.isdigit() or int(a) not in _BAUDS:
                raise self.err(d, f"expected one of {', '.join(map(str, _BAUDS))}, got {a!r}")
            self.v["baud"] = int(a)

    def do_bcast(self, d, args, rest):
        self.lists["bcast"].extend(self.dev(d, a) for a in args)
        self.any_media = True

    def do_mcast(self, d, args, rest):
        if len(args) != 5:
            raise self.err(d, f"expected 'mcast DEV GROUP PORT TTL LOOP', got {rest!r}")
        dev = self.dev(d, args[0])
        group = self.ipv4(d, args[1], "a multicast group 224.0.0.0..239.255.255.255")
        if not group.is_multicast:
            raise self.err(d, f"expected a multicast group 224.0.0.0..239.255.255.255, got {args[1]!r}")
        port = self.int_in(d, args[2], 1, 65535)
        ttl = self.int_in(d, args[3], 0, 255)
        loop = self.int_in(d, args[4], 0, 1)
        self.lists["mcast"].append(Mcast(dev=dev, group=str(group), port=port, ttl=ttl, loop=loop))
        self.any_media = True

    def do_ucast(self, d, args, rest):
        if len(args) != 2:
            raise self.err(d, f"expected 'ucast DEV PEER-ADDRESS', got {rest!r}")
        self.ipv4(d, args[1])
        self.lists["ucast"].append(Ucast(dev=self.dev(d, args[0]), addr=args[1]))
        self.any_media = True

    def do_serial(self, d, args, rest):
        for a in args:
            if not a.startswith("/"):
                raise self.err(d, f"expected a device path like /dev/ttyS0, got {a!r}")
        self.lists["serial"].extend(args)
        self.any_media = True

    def do_ping(self, d, args, rest):
        self.lists["ping"].extend(str(self.ipv4(d, a)) for a in args)

    def do_ping_group(self, d, args, rest):
        if len(args) < 2:
            raise self.err(d, f"expected 'ping_group NAME ADDRESS...', got {rest!r}")
        self.lists["ping_group"].append((args[0], tuple(str(self.ipv4(d, a)) for a in args[1:])))

    # -- nodes and behaviour ----------------------------------------------
    def do_node(self, d, args, rest):
        for a in args:
            if not _NODE_RE.match(a):
                raise self.err(d, f"expected a node name as printed by 'uname -n', got {a!r}")
            name = a.lower()  # heartbeat lower-cases node names
            if name in self.lists["nodes"]:
                raise self.err(d, f"node {name!r} listed twice")
            self.lists["nodes"].append(name)

    def do_auto_failback(self, d, args, rest):
        for a in args:
            if a.lower() == "legacy":
                self.v["auto_failback"] = "legacy"
            else:
                b = parse_bool(a)
                if b is None:
                    raise self.err(d, f"expected on, off or legacy, got {a!r}")
                self.v["auto_failback"] = "on" if b else "off"

    def do_nice_failback(self, d, args, rest):
        for a in args:
            on = self.boolean(d, a)
            self.v["auto_failback"] = "off" if on else "legacy"
        self.warnings.append(f"{self.path}:{self.lineno}: nice_failback is obsolete: taken as "
                             f"'auto_failback {self.v['auto_failback']}'")

    def do_crm(self, d, args, rest):
        a = args[0].lower()
        if a in ("respawn", "minimal", "manual", "valgrind"):
            self.v["crm"] = a
        else:
            self.v["crm"] = "on" if self.boolean(d, a) else "off"

    do_pacemaker = do_crm

    def do_autojoin(self, d, args, rest):
        if args[0].lower() not in ("none", "other", "any"):
            raise self.err(d, f"expected none, other or any, got {args[0]!r}")
        self.v["autojoin"] = args[0].lower()

    def do_hopfudge(self, d, args, rest):
        self.v["hopfudge"] = self.int_in(d, args[-1], 0, 255)

    def do_debug(self, d, args, rest):
        self.v["debug"] = self.int_in(d, args[-1], 0, 255)

    def do_cluster(self, d, args, rest):
        self.v["cluster"] = args[0]

    def do_watchdog(self, d, args, rest):
        if "watchdog" in self.v:
            raise self.err(d, f"watchdog device given twice (first on line {self.first_line['watchdog']})")
        self.v["watchdog"] = args[0]

    # -- logging ------------------------------------------------------------
    def do_logfacility(self, d, args, rest):
        if args[0].lower() not in _FACILITIES:
            raise self.err(d, f"expected a syslog facility ({', '.join(_FACILITIES)}), got {args[0]!r}")
        self.v["logfacility"] = args[0].lower()

    def do_logfile(self, d, args, rest):
        self.v["logfile"] = args[0]

    def do_debugfile(self, d, args, rest):
        self.v["debugfile"] = args[0]

    def do_use_logd(self, d, args, rest):
        self.v["use_logd"] = self.boolean(d, args[0])

    # -- children and STONITH ---------------------------------------------
    def do_respawn(self, d, args, rest):
        if len(args) < 2:
            raise self.err(d, f"expected '{d} USER COMMAND [ARGS]', got {rest!r}")
        self.lists[d].append((args[0], rest[len(args[0]):].strip()))

    do_failfast = do_respawn

    def do_stonith(self, d, args, rest):
        if len(args) != 2:
            raise self.err(d, f"expected 'stonith TYPE CONFIGFILE', got {rest!r}")
        if "stonith" in self.v:
            raise self.err(d, f"given twice (first on line {self.first_line['stonith']})")
        self.v["stonith"] = (args[0], args[1])

    def do_stonith_host(self, d, args, rest):
        if len(args) < 2:
            raise self.err(d, f"expected 'stonith_host HOSTFROM|* TYPE PARAMS...', got {rest!r}")
        host = args[0] if args[0] == "*" else args[0].lower()
        self.lists["stonith_host"].append((host, args[1], tuple(args[2:])))

    # -- our extensions ---------------------------------------------------------
    def do_gratuitous_arp_count(self, d, args, rest):
        self.v["gratuitous_arp_count"] = self.int_in(d, args[-1], 0, 1000)

    def do_gratuitous_arp_interval(self, d, args, rest):
        t = self.time(d, args[-1])
        if not 0 <= t <= 60:
            raise self.err(d, f"expected a time from 0 to 60s, got {args[-1]!r}")
        self.v["gratuitous_arp_interval_ms"] = int(round(t * 1000))

    # -- whole-file checks --------------------------------------------------
    def finish(self) -> HaConfig:
        v, p = self.v, self.path
        keepalive = v.get("keepalive_s", HaConfig.keepalive_s)
        deadtime = v.get("deadtime_s", HaConfig.deadtime_s)

        def at(d):
            return f"{p}:{self.first_line[d]}" if d in self.first_line else p

        if deadtime <= 2 * keepalive:
            raise ConfigError(f"{at('deadtime')}: deadtime: must be more than twice keepalive: "
                              f"deadtime_s={deadtime:g} keepalive_s={keepalive:g}")
        warntime = v.get("warntime_s", deadtime / 2)
        if "warntime_s" in v and warntime >= deadtime:
            self.warnings.append(f"{at('warntime')}: warntime: {warntime:g}s is not below deadtime "
                                 f"{deadtime:g}s: late heartbeats will never be reported")
        if "initdead_s" in v:
            initdead = v["initdead_s"]
        elif deadtime > 10:
            initdead = deadtime
        elif deadtime < 6:
            initdead = 12.0
        else:
            initdead = 2 * deadtime
        if initdead < deadtime:
            raise ConfigError(f"{at('initdead')}: initdead: must not be less than deadtime: "
                              f"initdead_s={initdead:g} deadtime_s={deadtime:g}")
        if initdead < 10:
            self.warnings.append(f"{at('initdead')}: initdead: {initdead:g}s may be too small: it should be "
                                 f">= deadtime and >= 10 seconds to allow for slow network start-up")
        deadping = v.get("deadping_s", deadtime)
        if "deadping_s" in v and deadping <= 2 * keepalive:
            raise ConfigError(f"{at('deadping')}: deadping: must be more than twice keepalive: "
                              f"deadping_s={deadping:g} keepalive_s={keepalive:g}")
        L = self.lists
        if not L["nodes"] and v.get("autojoin", "none") != "any":
            raise ConfigError(f"{p}: no node defined: expected at least one 'node NAME' line")
        if not (L["bcast"] or L["mcast"] or L["ucast"] or L["serial"]):
            raise ConfigError(f"{p}: no heartbeat medium defined: expected a bcast, mcast, ucast or serial line")
        if "auto_failback" not in v:
            self.warnings.append(f"{p}: no auto_failback line: using 'legacy' as heartbeat does "
                                 f"(resources return to their preferred node)")
        if v.get("crm", "off") != "off":
            self.warnings.append(f"{at('crm') if 'crm' in self.first_line else at('pacemaker')}: crm: hbd has no "
                                 f"Pacemaker (CRM) mode: resources come from haresources (heartbeat R1 mode)")
        if v.get("autojoin", "none") != "none":
            self.warnings.append(f"{at('autojoin')}: autojoin: heartbeat refuses autojoin with R1 haresources "
                                 f"resource management; hbd accepts only the node lines")
        stonith = v.get("stonith", ())
        return HaConfig(
            path=p, keepalive_s=keepalive, deadtime_s=deadtime, warntime_s=warntime, initdead_s=initdead,
            udpport=v.get("udpport", 694), bcast=tuple(L["bcast"]), mcast=tuple(L["mcast"]),
            ucast=tuple(L["ucast"]), serial=tuple(L["serial"]), baud=v.get("baud", 19200),
            nodes=tuple(L["nodes"]), auto_failback=v.get("auto_failback", "legacy"),
            logfacility=v.get("logfacility"), logfile=v.get("logfile"), debugfile=v.get("debugfile"),
            ping=tuple(L["ping"]), ping_group=tuple(L["ping_group"]), deadping_s=deadping,
            respawn=tuple(L["respawn"]), failfast=tuple(L["failfast"]), stonith=stonith,
            stonith_host=tuple(L["stonith_host"]), crm=v.get("crm", "off"),
            gratuitous_arp_count=v.get("gratuitous_arp_count", 10),
            gratuitous_arp_interval_ms=v.get("gratuitous_arp_interval_ms", 250),
            use_logd=v.get("use_logd"), debug=v.get("debug", 0), hopfudge=v.get("hopfudge", 1),
            max_rexmit_delay_ms=v.get("max_rexmit_delay_ms", 250), watchdog=v.get("watchdog"),
            autojoin=v.get("autojoin", "none"), cluster=v.get("cluster", "linux-ha"),
            extra=tuple(L["extra"]), warnings=tuple(self.warnings))


def parse_ha_config(text: str, path: str = "ha.cf") -> HaConfig:
    """Parse ha.cf text; `path` is used in error messages."""
    parser = _Parser(path)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        parser.feed_line(lineno, raw)
    return parser.finish()


def load_ha_config(config_dir: str | os.PathLike[str]) -> HaConfig:
    """Read and parse DIR/ha.cf."""
    path = os.path.join(os.fspath(config_dir), "ha.cf")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    return parse_ha_config(data.decode("utf-8", "surrogateescape"), path)
