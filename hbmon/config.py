# SPDX-License-Identifier: GPL-2.0-or-later
"""mon.cf, Mon's own configuration format (mon 1.2/1.3 ``read_cf``), parsed without I/O.

Owns the format; ``load_mon_config(path)`` reads the file and ``parse_mon_config(text, path)``
does the rest, so the parser is fuzzable.  Structure, as Mon reads it::

    # comments are whole lines; a line ending in "\\" continues on the next one
    alertdir = /usr/lib/mon/alert.d          globals: "word = value", before any watch
    hostgroup web 10.0.17.26 www2            hosts continue on the next lines until a blank line
    watch web                                a word that is no hostgroup: a one-host group
        service http                         [A-Za-z0-9_.-]+, unique in its watch
            interval 30s                     times: NUMBER{s,m,h,d}, fractions allowed
            monitor http.monitor -p 80       hosts appended unless the line ends in ";;"
            depend web:ping                  group:service tokens, && || ! ( ), SELF: = this watch
            period wd {Mon-Fri} hr {7am-10pm}    Time::Period spec ("LABEL: spec" too)
                alert mail.alert root@localhost
                alertevery 15m [observe_detail|ignore_summary|strict|summary]
                alertafter 2 | 2 10m | 5m
                numalerts 10
                upalert mail.alert root@localhost
                no_comp_alerts

A blank line ends a hostgroup *and* a watch (Mon's rule).  Once a ``period``
starts, every keyword up to the next ``service`` belongs to that period.  Errors
are ``ConfigError("FILE:LINE: ...")`` with Mon's wording where it has one.

hbmon's additions (service keywords Mon does not know; documented in docs/hbmon.md)::

    timeout 10s          kill the monitor after this long: a failure (default: interval, at most 60s)
    restart httpd [ARG]  recovery: run this heartbeat resource script's stop + start
    restart_max 3        restarts per failure before ``hbctl standby`` (default 3)
    failover yes|no      after restart_max restarts, hand the group to the peer (default yes)

Mon keywords hbmon accepts but does not act on give a "not supported yet" warning
(``MonConfig.warnings``); any other word is an error.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from hacommon.errors import ConfigError

DEFAULT_MONDIR = ("/usr/local/lib/mon/mon.d", "/usr/lib/mon/mon.d")
DEFAULT_ALERTDIR = ("/usr/local/lib/mon/alert.d", "/usr/lib/mon/alert.d")
MAX_DEFAULT_TIMEOUT_S = 60.0

_NAME = r"[A-Za-z0-9_.-]+"
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)([dhms])\s*$", re.I)
_GLOBAL_RE = re.compile(r"^(\w+)\s*=\s*(.*?)\s*$")
_DEP_TOKEN_RE = re.compile(rf"\s*(?:(\(|\)|&&|\|\||!|\band\b|\bor\b|\bnot\b)|({_NAME}:{_NAME}))")

# Globals Mon knows: the ones hbmon uses, and the rest (warned about).
GLOBALS_USED = {"alertdir", "mondir", "statedir", "logdir", "maxprocs", "randstart", "basedir", "cfbasedir",
                "dep_behavior", "histlength"}
GLOBALS_IGNORED = {"serverport", "trapport", "serverbind", "trapbind", "clientallow", "pidfile", "authfile",
                   "authtype", "pamservice", "userfile", "historicfile", "historictime", "cltimeout",
                   "monerrfile", "dtlogfile", "dtlogging", "dep_recur_limit", "dep_memory", "unack_summary",
                   "syslog_facility", "startupalerts_on_reset", "monremote", "exclude_period"}
SERVICE_IGNORED = {"allow_empty_group", "unack_summary", "traptimeout", "trapduration", "dep_memory",
                   "alertdepend", "monitordepend", "hostdepend", "exclude_period", "redistribute"}
PERIOD_IGNORED = {"ackalert", "disablealert", "startupalert", "alerts_dont_count", "alertexitrange",
                  "upalertafter"}


def parse_time(text: str) -> float | None:
    """Mon's dhmstos: "30s", "1.5m", "2h", "1d" -> seconds; anything else None."""
    m = _TIME_RE.match(text)
    if not m:
        return None
    n = float(m.group(1))
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2).lower()]


# --- Time::Period (the subset hbmon evaluates) -----------------------------------------------

_WEEKDAYS = ["su", "mo", "tu", "we", "th", "fr", "sa"]
_SCALES = {"wd": "wday", "wday": "wday", "weekday": "wday", "hr": "hour", "hour": "hour",
           "min": "minute", "minute": "minute", "md": "mday", "mday": "mday", "monthday": "mday",
           "mo": "month", "month": "month"}
_MONTHS = ["ja", "fe", "ma", "ap", "my", "jn", "jl", "au", "se", "oc", "no", "de"]
_MONTH_NAMES = {"jan": 0, "feb": 1, "mar": 2, "apr": 3, "may": 4, "jun": 5, "jul": 6, "aug": 7, "sep": 8,
                "oct": 9, "nov": 10, "dec": 11}


@dataclass(frozen=True, slots=True)
class Period:
    """A Time::Period spec: alternatives (","), each an AND of scales with their allowed values."""
    text: str
    label: str
    alternatives: tuple[tuple[tuple[str, frozenset[int]], ...], ...]

    def contains(self, tm: tuple[int, int, int, int, int]) -> bool:
        """tm = (wday 0=Sunday, hour, minute, mday 1-31, month 0-11), local time."""
        if not self.alternatives:
            return True
        values = dict(zip(("wday", "hour", "minute", "mday", "month"), tm, strict=True))
        return any(all(values[scale] in allowed for scale, allowed in alt) for alt in self.alternatives)


def _period_value(scale: str, word: str) -> int:
    w = word.strip().lower()
    if scale == "wday":
        if w.isdigit() and 1 <= int(w) <= 7:
            return int(w) - 1
        if len(w) >= 2 and w[:2] in _WEEKDAYS and (len(w) <= 3 or w.endswith("day")):
            return _WEEKDAYS.index(w[:2])
    elif scale == "hour":
        m = re.fullmatch(r"(\d{1,2})\s*(am|pm)?", w)
        if m:
            h = int(m.group(1))
            if m.group(2):
                if 1 <= h <= 12:
                    return h % 12 + (12 if m.group(2) == "pm" else 0)
            elif 0 <= h <= 23:
                return h
    elif scale == "minute":
        if w.isdigit() and 0 <= int(w) <= 59:
            return int(w)
    elif scale == "mday":
        if w.isdigit() and 1 <= int(w) <= 31:
            return int(w)
    elif scale == "month":
        if w.isdigit() and 1 <= int(w) <= 12:
            return int(w) - 1
        if w[:3] in _MONTH_NAMES:
            return _MONTH_NAMES[w[:3]]
    raise ValueError(f"bad {scale} value {word!r}")


_SPAN = {"wday": 7, "hour": 24, "minute": 60, "mday": 32, "month": 12}


def parse_period(text: str) -> Period:
    """Time::Period's "scale {range ...} scale {...}, ..." -> Period; ValueError naming the fault."""
    label = ""
    m = re.match(r"^([a-z_]\w*)\s*:\s*(.*)$", text, re.I)
    if m:
        label, text = m.group(1), m.group(2)
    alts = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            if text.strip():
                raise ValueError("empty alternative between commas")
            continue
        scales: list[tuple[str, frozenset[int]]] = []
        pos = 0
        for sm in re.finditer(r"\s*([A-Za-z]+)\s*\{([^{}]*)\}\s*", part):
            if sm.start() != pos:
                break
            pos = sm.end()
            name = sm.group(1).lower()
            if name not in _SCALES:
                if name in ("yr", "year", "yd", "yday", "wk", "week", "sec", "second"):
                    raise ValueError(f"scale {name!r} not supported yet (hbmon knows wd hr min md mo)")
                raise ValueError(f"unknown scale {name!r}")
            scale = _SCALES[name]
            allowed: set[int] = set()
            for rng in sm.group(2).split():
                lo_s, _, hi_s = rng.partition("-")
                lo = _period_value(scale, lo_s)
                hi = _period_value(scale, hi_s) if hi_s else lo
                i = lo
                for _ in range(_SPAN[scale]):          # inclusive, wrapping (wd {Fri-Mon})
                    allowed.add(i)
                    if i == hi:
                        break
                    i = (i + 1) % _SPAN[scale]
            if not allowed:
                raise ValueError(f"scale {name!r} has no values")
            scales.append((scale, frozenset(allowed)))
        if pos != len(part) or not scales:
            raise ValueError(f"cannot read {part[pos:]!r} (expected scale {{range ...}})")
        alts.append(tuple(scales))
    return Period(text=text.strip(), label=label, alternatives=tuple(alts))


# --- dependencies ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Depend:
    """A depend expression: group:service tokens with && || ! and parentheses (Mon evaluates
    Perl; hbmon this boolean subset).  ``evaluate(ok)`` where ok(group, service) -> bool."""
    text: str
    rpn: tuple[str, ...]

    def tokens(self) -> list[tuple[str, str]]:
        return [tuple(t.split(":", 1)) for t in self.rpn if ":" in t]  # type: ignore[misc]

    def evaluate(self, ok) -> bool:
        stack: list[bool] = []
        for t in self.rpn:
            if t == "!":
                stack.append(not stack.pop())
            elif t in ("&&", "||"):
                b, a = stack.pop(), stack.pop()
                stack.append(a and b if t == "&&" else a or b)
            else:
                g, s = t.split(":", 1)
                stack.append(bool(ok(g, s)))
        return stack[0]


def parse_depend(text: str, watch: str) -> Depend:
    text = text.replace("SELF:", f"{watch}:")
    toks: list[str] = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _DEP_TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {text[pos:].strip()!r} (expected group:service, &&, ||, !, parentheses)")
        toks.append({"and": "&&", "or": "||", "not": "!"}.get(m.group(1) or "", m.group(1) or m.group(2)))
        pos = m.end()
    # shunting-yard: ! binds tighter than &&, && tighter than ||
    prec = {"!": 3, "&&": 2, "||": 1}
    out: list[str] = []
    ops: list[str] = []
    expect_operand = True
    for t in toks:
        if t == "(":
            if not expect_operand:
                raise ValueError("'(' after an operand")
            ops.append(t)
        elif t == ")":
            if expect_operand:
                raise ValueError("')' where an operand was expected")
            while ops and ops[-1] != "(":
                out.append(ops.pop())
            if not ops:
                raise ValueError("unbalanced ')'")
            ops.pop()
        elif t == "!":
            if not expect_operand:
                raise ValueError("'!' after an operand")
            ops.append(t)
        elif t in ("&&", "||"):
            if expect_operand:
                raise ValueError(f"{t!r} where an operand was expected")
            while ops and ops[-1] != "(" and prec[ops[-1]] >= prec[t]:
                out.append(ops.pop())
            ops.append(t)
            expect_operand = True
        else:
            if not expect_operand:
                raise ValueError(f"{t!r} follows an operand without && or ||")
            out.append(t)
            expect_operand = False
    if expect_operand:
        raise ValueError("expression ends where an operand was expected")
    while ops:
        if ops[-1] == "(":
            raise ValueError("unbalanced '('")
        out.append(ops.pop())
    return Depend(text=text, rpn=tuple(out))


# --- the configuration ----------------------------------------------------------------------

@dataclass(slots=True)
class AlertSpec:
    prog: str
    args: tuple[str, ...]
    line: int


@dataclass(slots=True)
class PeriodConfig:
    period: Period
    line: int
    alerts: list[AlertSpec] = field(default_factory=list)
    upalerts: list[AlertSpec] = field(default_factory=list)
    alertevery_s: float = 0.0
    alertevery_mode: str = "summary"         # summary | observe_detail | ignore_summary | strict
    alertafter_consec: int = 1
    alertafter_ival_s: float | None = None   # "alertafter 5m": failing for that long
    alertafter_within: int | None = None     # "alertafter 2 10m": 2 failures within 10m
    numalerts: int = 0                        # 0 = unlimited
    no_comp_alerts: bool = False


@dataclass(slots=True)
class ServiceConfig:
    watch: str
    name: str
    line: int
    interval_s: float | None = None
    monitor: tuple[str, ...] = ()            # prog, args...
    monitor_hosts: bool = True               # False when the line ended in ";;"
    description: str = ""
    depend: Depend | None = None
    dep_behavior: str = "a"                   # a: suppress alerts, m/hm: suppress the monitor
    randskew_s: float = 0.0
    failure_interval_s: float | None = None
    exclude_hosts: frozenset[str] = frozenset()
    env: dict[str, str] = field(default_factory=dict)
    periods: list[PeriodConfig] = field(default_factory=list)
    timeout_s: float | None = None
    restart: tuple[str, ...] = ()
    restart_max: int = 3
    failover: bool = True

    @property
    def key(self) -> str:
        return f"{self.watch}/{self.name}"

    @property
    def effective_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        return min(self.interval_s or MAX_DEFAULT_TIMEOUT_S, MAX_DEFAULT_TIMEOUT_S)


@dataclass(slots=True)
class MonConfig:
    path: str
    globals: dict[str, str] = field(default_factory=dict)
    hostgroups: dict[str, list[str]] = field(default_factory=dict)
    watches: dict[str, dict[str, ServiceConfig]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def services(self) -> list[ServiceConfig]:
        return [s for w in self.watches.values() for s in w.values()]

    def _dirs(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        val = self.globals.get(key)
        if not val:
            return default
        base = self.globals.get("basedir", "")
        return tuple(d if os.path.isabs(d) or not base else os.path.join(base, d) for d in val.split(":") if d)

    @property
    def mondirs(self) -> tuple[str, ...]:
        return self._dirs("mondir", DEFAULT_MONDIR)

    @property
    def alertdirs(self) -> tuple[str, ...]:
        return self._dirs("alertdir", DEFAULT_ALERTDIR)

    @property
    def maxprocs(self) -> int:
        return int(self.globals.get("maxprocs", "0") or 0)

    @property
    def randstart_s(self) -> float:
        return parse_time(self.globals["randstart"]) or 0.0 if "randstart" in self.globals else 0.0


def _logical_lines(text: str):
    """(line number of the first part, stripped text) per logical line, as Mon joins them."""
    acc = ""
    start = 0
    continuing = False
    for n, raw in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*#", raw):
            continue
        part = raw.lstrip() if continuing else raw
        if not continuing:
            start = n
        m = re.match(r"^(.*)\\\s*$", part)
        if m:
            acc += m.group(1)
            continuing = True
            continue
        acc += part
        yield start, acc.strip()
        acc, continuing = "", False
    if continuing:
        yield start, acc.strip()


def _split(path: str, line: int, text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as e:
        raise ConfigError(f"{path}:{line}: cannot split {text!r}: {e}") from None


def parse_mon_config(text: str, path: str = "mon.cf") -> MonConfig:
    cfg = MonConfig(path=path)
    dep_default = "a"
    group: str | None = None
    watch: str | None = None
    svc: ServiceConfig | None = None
    per: PeriodConfig | None = None

    def err(line: int, what: str) -> ConfigError:
        return ConfigError(f"{path}:{line}: {what}")

    def need_time(line: int, kw: str, val: str) -> float:
        t = parse_time(val)
        if not t:
            raise err(line, f"invalid time interval '{val}' (syntax: {kw} {{positive number}}{{smhd}})")
        return t

    for line, ln in _logical_lines(text):
        if not watch:
            gm = _GLOBAL_RE.match(ln)
            if gm:
                key, val = gm.group(1), gm.group(2)
                if key in GLOBALS_IGNORED:
                    cfg.warnings.append(f"{path}:{line}: global '{key}' not supported yet: ignored")
                elif key not in GLOBALS_USED:
                    raise err(line, f"cf error: unknown variable '{key}'")
                elif key == "randstart" and parse_time(val) is None:
                    raise err(line, f"cf error: bad value '{val}' for randstart option (syntax: randstart = timeval)")
                elif key == "maxprocs" and not val.isdigit():
                    raise err(line, f"cf error: bad value '{val}' for maxprocs (a number)")
                elif key == "dep_behavior":
                    if val not in ("m", "a", "hm"):
                        raise err(line, f"cf error: unknown dependency behavior '{val}'")
                    dep_default = val
                cfg.globals[key] = val
                continue
        if ln == "":
            group = watch = None
            svc = per = None
            continue
        m = re.match(rf"^hostgroup\s+({_NAME})\s*(.*)$", ln)
        if m:
            group, watch, svc, per = m.group(1), None, None, None
            cfg.hostgroups[group] = m.group(2).split()
            continue
        if group is not None:
            cfg.hostgroups[group].extend(ln.split())
            continue
        if re.match(r"^(alias|view)\b", ln):
            raise err(line, f"'{ln.split()[0]}' sections are not supported yet")
        m = re.match(rf"^watch\s+({_NAME})\s*$", ln)
        if m:
            watch, svc, per = m.group(1), None, None
            if watch in cfg.watches:
                raise err(line, f"cf error: watch '{watch}' already defined")
            if watch not in cfg.hostgroups:
                cfg.hostgroups[watch] = [watch]
                cfg.warnings.append(f"{path}:{line}: watch group {watch} defined with no corresponding hostgroup")
            cfg.watches[watch] = {}
            continue
        if ln.startswith("watch"):
            raise err(line, f"cf error: bad watch line [{ln}] (expected: watch GROUP)")
        if watch is None:
            raise err(line, f"cf error: unknown syntax [{ln}] (expected hostgroup, watch or a global 'name = value')")
        em = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", ln)
        if em:
            if svc is None:
                raise err(line, "cf error: environment variable defined without a service")
            svc.env[em.group(1)] = em.group(2)
            continue
        km = re.match(r"^(\w+)\s*(.*)$", ln)
        if not km:
            raise err(line, f"cf error: unknown syntax [{ln}]")
        var, args = km.group(1), km.group(2).strip()
        if var == "service":
            if not re.fullmatch(_NAME, args):
                raise err(line, f"cf error: invalid service tag '{args}'")
            if args in cfg.watches[watch]:
                raise err(line, f"cf error: service {args} already defined for watch group {watch}")
            svc = ServiceConfig(watch=watch, name=args, line=line, dep_behavior=dep_default)
            cfg.watches[watch][args] = svc
            per = None
            continue
        if svc is None:
            raise err(line, "cf error: need to specify service in watch record")
        if var == "period":
            try:
                p = parse_period(args)
            except ValueError as e:
                raise err(line, f"cf error: malformed period '{args}': {e}") from None
            if any(pc.period.label == p.label and (p.label or pc.period.text == p.text) for pc in svc.periods):
                raise err(line, f"cf error: period '{p.label or p.text}' already defined for watch group "
                                f"{watch} service {svc.name}")
            per = PeriodConfig(period=p, line=line)
            svc.periods.append(per)
            continue
        if per is not None:
            _period_keyword(cfg, per, var, args, line, err, need_time, svc)
            continue
        _service_keyword(cfg, svc, var, args, line, err, need_time)
    for w, services in cfg.watches.items():
        for s in services.values():
            if not s.monitor:
                cfg.warnings.append(f"{path}:{s.line}: service {w}/{s.name} has no monitor: never checked")
            elif s.interval_s is None:
                raise ConfigError(f"{path}:{s.line}: service {w}/{s.name}: monitor without interval")
    for w, services in cfg.watches.items():
        for s in services.values():
            if s.depend:
                for g, name in s.depend.tokens():
                    if name not in cfg.watches.get(g, {}):
                        raise ConfigError(f"{path}:{s.line}: service {w}/{s.name}: depend names {g}:{name}, "
                                          f"which is not a service of this mon.cf")
    return cfg


def _service_keyword(cfg: MonConfig, svc: ServiceConfig, var: str, args: str, line: int, err, need_time) -> None:
    if var == "interval":
        svc.interval_s = need_time(line, var, args)
    elif var == "failure_interval":
        svc.failure_interval_s = need_time(line, var, args)
    elif var == "randskew":
        svc.randskew_s = need_time(line, var, args)
    elif var == "timeout":
        svc.timeout_s = need_time(line, var, args)
    elif var == "monitor":
        hosts = True
        if args.endswith(";;"):
            args, hosts = args[:-2].rstrip(), False
        words = _split(cfg.path, line, args)
        if not words:
            raise err(line, "cf error: monitor needs a program")
        svc.monitor, svc.monitor_hosts = words, hosts
    elif var == "description":
        svc.description = args
    elif var == "depend":
        try:
            svc.depend = parse_depend(args, svc.watch)
        except ValueError as e:
            raise err(line, f"cf error: bad depend expression '{args}': {e}") from None
    elif var == "dep_behavior":
        if args not in ("m", "a", "hm"):
            raise err(line, f"cf error: unknown dependency behavior '{args}' (syntax: dep_behavior = {{m|a}})")
        svc.dep_behavior = args
    elif var == "exclude_hosts":
        svc.exclude_hosts = frozenset(args.split())
    elif var == "restart":
        words = _split(cfg.path, line, args)
        if not words or "/" in words[0]:
            raise err(line, "restart needs a heartbeat resource script name (a plain file name) and its arguments")
        svc.restart = words
    elif var == "restart_max":
        if not args.isdigit():
            raise err(line, f"restart_max: expected a number, got '{args}'")
        svc.restart_max = int(args)
    elif var == "failover":
        if args.lower() not in ("yes", "no", "on", "off", "true", "false", "1", "0"):
            raise err(line, f"failover: expected yes or no, got '{args}'")
        svc.failover = args.lower() in ("yes", "on", "true", "1")
    elif var in SERVICE_IGNORED:
        cfg.warnings.append(f"{cfg.path}:{line}: service keyword '{var}' not supported yet: ignored")
    else:
        raise err(line, f"cf error: unknown syntax [{var} {args}]".replace(" ]", "]"))


def _period_keyword(cfg: MonConfig, per: PeriodConfig, var: str, args: str, line: int, err, need_time,
                    svc: ServiceConfig) -> None:
    if var in ("alert", "upalert"):
        words = _split(cfg.path, line, args)
        if not words:
            raise err(line, f"cf error: {var} needs a program")
        spec = AlertSpec(prog=words[0], args=words[1:], line=line)
        (per.alerts if var == "alert" else per.upalerts).append(spec)
    elif var == "alertevery":
        parts = args.split()
        mode = "summary"
        if len(parts) == 2 and parts[1].lower() in ("observe_detail", "ignore_summary", "strict", "summary"):
            mode = parts[1].lower()
            parts = parts[:1]
        if len(parts) != 1:
            raise err(line, f"cf error: invalid time interval '{args}' (syntax: alertevery {{positive number}}"
                            f"{{smhd}} [ strict | observe_detail | ignore_summary ])")
        per.alertevery_s = need_time(line, var, parts[0])
        per.alertevery_mode = mode
    elif var == "alertafter":
        if re.fullmatch(r"\d+", args):
            per.alertafter_consec = max(1, int(args))
        elif re.fullmatch(r"\d+(?:\.\d+)?[hms]", args):
            per.alertafter_ival_s = need_time(line, var, args)
        else:
            m = re.fullmatch(r"(\d+)\s+(\d+(?:\.\d+)?[hms])", args)
            if not m:
                raise err(line, f"cf error: invalid interval specification '{args}'")
            n, ival = int(m.group(1)), need_time(line, var, m.group(2))
            if svc.interval_s is not None and (n - 1) * svc.interval_s >= ival:
                raise err(line, "cf error:  interval & alertafter not sensible. No alerts can be generated "
                                "with those parameters")
            per.alertafter_within, per.alertafter_ival_s = n, ival
    elif var == "numalerts":
        if not args.isdigit():
            raise err(line, f"cf error: -numeric arg '{args}' (syntax: numalerts = {{positive integer}}")
        per.numalerts = int(args)
    elif var == "no_comp_alerts":
        per.no_comp_alerts = True
    elif var in PERIOD_IGNORED:
        cfg.warnings.append(f"{cfg.path}:{line}: period keyword '{var}' not supported yet: ignored")
    else:
        raise err(line, f"cf error: unknown syntax [{var} {args}]".replace(" ]", "]"))


def load_mon_config(config_dir: str, name: str = "mon.cf") -> MonConfig:
    path = os.path.join(config_dir, name)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if path.endswith(".m4"):
        raise ConfigError(f"{path}: m4-preprocessed configurations are not supported yet")
    return parse_mon_config(text, path)
