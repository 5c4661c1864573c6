# SPDX-License-Identifier: GPL-2.0-or-later
"""Runtime changes as drbdadm makes them: option parsing, settings snapshots, the adjust plan.

Pure (no I/O): replicactl builds a plan here and runs it against replicad; replicad uses the
same parsers for `net-options` / `disk-options` so both give the config's own error text.

    config file ──settings_of()──► Settings ◄──(replicad `show`: the running resource)
                                        │
                          plan_adjust(name, desired, running) ──► [Action, ...]
                                        │  -d: print Action.text() lines, change nothing
                                        ▼  else: one replicad request per Action, in order

A Settings is every option as the config's parser formats it (`ping-timeout` "5", `resync-rate`
"250K"...), so two equal configurations give equal Settings whatever their spelling.

What adjust does with a difference (DRBD's adjust does the same, drbd-reference 1.11):

    resource not up                          -> up
    disk or meta-disk path                   -> detach, attach (a fresh runtime from the file),
                                                connect
    addresses, or a net option in RECONNECT  -> disconnect, connect (connect takes the file's
                                                net section and addresses, as drbdsetup connect)
    other net options                        -> net-options (live)
    disk options                             -> disk-options (live)
    handlers                                 -> handlers (live: replicad runs them)
    StandAlone (a replicated resource)       -> connect

Plan format (`replicactl adjust -d`), one command per line, drbdsetup's shape:

    replicasetup VERB RESOURCE [--set-defaults] [--KEYWORD=VALUE ...]

VALUE is the config's own spelling (shell-quoted when needed). `--set-defaults` first means every
option of that section not listed goes back to its default (how an option removed from the file
is unset, as drbdsetup's --set-defaults). `al-extents` is left out: the activity log's size is
fixed in the metadata by create-md (adjust says so on stderr).
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

from replica.config import (
    DISK_KEYWORDS,
    HANDLERS,
    NET_KEYWORDS,
    NOT_YET,
    DiskOptions,
    HostSection,
    NetOptions,
    Resource,
    net_options_problem,
)
from replica.config_values import BadValue, BoolValue, StrValue
from replica.errors import ConfigError

SECTIONS = ("net", "disk", "handlers")
# net options a live link cannot take: the peer checks them in the handshake (protocol,
# authentication, data-integrity-alg) or C takes them when the socket is handed over
# (max-buffers, socket buffers). net-options refuses them while a link exists; adjust
# disconnects and connects.
RECONNECT_NET = frozenset({"protocol", "cram-hmac-alg", "shared-secret", "data-integrity-alg",
                           "max-buffers", "sndbuf-size", "rcvbuf-size",
                           "tls", "tls-keyfile", "tls-certfile", "tls-cafile"})
NOT_ADJUSTED_DISK = frozenset({"al-extents"})
_HANDLER_VALUE = StrValue(4096, None, "a command")

Settings = dict[str, dict[str, str]]     # section -> keyword -> formatted value


def _table(section: str) -> dict[str, tuple[str, Any]]:
    if section == "net":
        return NET_KEYWORDS
    if section == "disk":
        return DISK_KEYWORDS
    return {h: (h, _HANDLER_VALUE) for h in HANDLERS}


def _format_section(table: dict[str, tuple[str, Any]], obj: object) -> dict[str, str]:
    out = {}
    for kw, (fname, parser) in table.items():
        v = getattr(obj, fname)
        if v is not None:
            out[kw] = parser.format(v)
    return out


def settings_of(resource: Resource, node: str) -> Settings:
    """Every option of `resource` on `node`, formatted by its parser, plus the paths."""
    host = resource.host(node)
    peer = resource.peer(node)
    paths = {"disk": host.disk, "meta-disk": _meta_text(host)}
    if host.address is not None:
        paths["address"] = f"{host.address_family}:{host.address_text}"
    if peer is not None and peer.address is not None:
        paths["peer-address"] = f"{peer.address_family}:{peer.address_text}"
    return {"net": _format_section(NET_KEYWORDS, resource.net),
            "disk": _format_section(DISK_KEYWORDS, resource.disk),
            "handlers": dict(resource.handlers),
            "paths": paths}


def _meta_text(host: HostSection) -> str:
    return host.meta_disk + (f" [{host.meta_index}]" if host.meta_index is not None else "")


# -- --KEYWORD=VALUE options (drbdsetup's syntax) ----------------------------------------------

def parse_option_args(section: str, args: list[str]) -> tuple[dict[str, str], bool, list[str]]:
    """`--ping-timeout=10 --tcp-cork=no --allow-two-primaries --set-defaults` for `section`
    (net, disk or handlers) -> ({keyword: formatted value}, set_defaults, warnings).

    Each value goes through the config's parser for that keyword, so a bad one gets the
    config's own words (`ping-timeout: expected an integer 1..300 tenths of a second, got
    '0'`); a bare `--FLAG` means yes, as drbdsetup's boolean options. Raises ConfigError."""
    table = _table(section)
    values: dict[str, str] = {}
    warnings: list[str] = []
    set_defaults = False
    for arg in args:
        if arg == "--set-defaults":
            set_defaults = True
            continue
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"{section}: expected --KEYWORD=VALUE, got '{arg}'")
        key, eq, text = arg[2:].partition("=")
        entry = table.get(key)
        if entry is None:
            raise ConfigError(f"{section}: unknown keyword '{key}' (known: "
                              f"{', '.join(table)})")
        _fname, parser = entry
        words = [text] if eq else []
        if not eq and not isinstance(parser, BoolValue):
            raise ConfigError(f"{section}: {key}: expected --{key}=VALUE")
        try:
            value = parser.parse(words)
        except BadValue as exc:
            raise ConfigError(f"{section}: {key}: {exc}") from None
        if key in values:
            raise ConfigError(f"{section}: {key}: duplicate option")
        not_yet = NOT_YET.get((section, key))
        if not_yet is not None and not (not_yet.same is not None and value == not_yet.same):
            if not not_yet.ignored:
                raise ConfigError(f"{section}: {key}: not supported ({not_yet.why})")
            warnings.append(f"{section}: {key}: ignored ({not_yet.why})")
        values[key] = parser.format(value)
    return values, set_defaults, warnings


def apply_net(base: NetOptions, values: dict[str, str], set_defaults: bool = False) -> NetOptions:
    """`base` with `values` set (all else default with `set_defaults`); checked as a whole."""
    net = _apply(NetOptions, NET_KEYWORDS, base, values, set_defaults)
    problem = net_options_problem(net)
    if problem:
        raise ConfigError(f"net: {problem}")
    return net


def apply_disk(base: DiskOptions, values: dict[str, str], set_defaults: bool = False) -> DiskOptions:
    """`base` with `values` set; al-extents stays (the metadata fixed the AL's size)."""
    for kw in NOT_ADJUSTED_DISK:
        fname, parser = DISK_KEYWORDS[kw]
        if kw in values and values[kw] != parser.format(getattr(base, fname)):
            raise ConfigError(f"disk: {kw}: the activity log's size is fixed in the metadata "
                              f"({parser.format(getattr(base, fname))}): change it with "
                              "create-md")
    disk = _apply(DiskOptions, DISK_KEYWORDS, base, values, set_defaults)
    return dataclasses.replace(disk, al_extents=base.al_extents)


def apply_handlers(base: dict[str, str], values: dict[str, str],
                   set_defaults: bool = False) -> dict[str, str]:
    return {**({} if set_defaults else base), **values}


def _apply(cls: Any, table: dict[str, tuple[str, Any]], base: Any, values: dict[str, str],
           set_defaults: bool) -> Any:
    start = cls() if set_defaults else base
    changes = {}
    for kw, text in values.items():
        fname, parser = table[kw]
        changes[fname] = parser.parse([text])
    return dataclasses.replace(start, **changes)


def changed_keywords(table_section: str, old: object, new: object) -> list[str]:
    """Keywords whose value differs between two NetOptions/DiskOptions."""
    table = _table(table_section)
    return [kw for kw, (fname, _p) in table.items() if getattr(old, fname) != getattr(new, fname)]


# -- the plan ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """One step of a plan: a replicad request (`verb` on `resource` with `options`)."""
    verb: str
    resource: str
    options: tuple[tuple[str, str], ...] = ()
    set_defaults: bool = False

    def text(self) -> str:
        words = ["replicasetup", self.verb, self.resource]
        if self.set_defaults:
            words.append("--set-defaults")
        words += [f"--{k}={shlex.quote(v)}" for k, v in self.options]
        return " ".join(words)

    @property
    def values(self) -> dict[str, str]:
        return dict(self.options)


@dataclass(frozen=True)
class Running:
    """What replicad reports about a resource (its `show` reply)."""
    up: bool
    attached: bool = False
    link: bool = False               # a peer link exists (Connecting or Connected)
    standalone: bool = False         # one `on` section: no peer
    settings: Settings | None = None

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Running:
        return cls(up=bool(reply.get("up")), attached=bool(reply.get("attached")),
                   link=bool(reply.get("link")), standalone=bool(reply.get("standalone")),
                   settings=reply.get("settings"))


def diff_section(desired: dict[str, str], running: dict[str, str]) -> dict[str, str | None]:
    """keyword -> desired value (None: unset) for every keyword that differs."""
    out: dict[str, str | None] = {}
    for kw in sorted(set(desired) | set(running)):
        if desired.get(kw) != running.get(kw):
            out[kw] = desired.get(kw)
    return out


def _options_action(verb: str, name: str, desired: dict[str, str],
                    changed: dict[str, str | None]) -> Action | None:
    if not changed:
        return None
    if any(v is None for v in changed.values()):
        # an option goes back to its default: --set-defaults and the whole section from the
        # file (drbdadm adjust's way)
        return Action(verb, name, tuple(sorted(desired.items())), set_defaults=True)
    return Action(verb, name, tuple(sorted((k, v) for k, v in changed.items() if v is not None)))


def notes_for(name: str, desired: Settings, running: Running) -> list[str]:
    """Differences adjust leaves alone, one line each (replicactl prints them on stderr)."""
    if not running.up or running.settings is None:
        return []
    out = []
    for kw in sorted(NOT_ADJUSTED_DISK):
        want, have = desired["disk"].get(kw), running.settings["disk"].get(kw)
        if want != have:
            out.append(f"{name}: disk: {kw}: {have} -> {want}: the activity log's size is fixed "
                       "in the metadata: it takes effect at the next create-md")
    return out


def plan_adjust(name: str, desired: Settings, running: Running) -> list[Action]:
    """The requests that bring the running resource to `desired`; [] when they agree."""
    if not running.up or running.settings is None:
        return [Action("up", name)]
    have = running.settings
    paths_want, paths_have = desired["paths"], have["paths"]
    if running.standalone:
        if paths_want.get("disk") != paths_have.get("disk"):
            return [Action("down", name), Action("up", name)]
        return []
    if any(paths_want.get(k) != paths_have.get(k) for k in ("disk", "meta-disk")):
        # a fresh runtime from the file: every option follows
        return [*([Action("detach", name)] if running.attached else []),
                Action("attach", name), Action("connect", name)]
    plan: list[Action] = []
    net = diff_section(desired["net"], have["net"])
    moved = any(paths_want.get(k) != paths_have.get(k) for k in ("address", "peer-address"))
    reconnect = moved or any(k in RECONNECT_NET for k in net)
    disk = {k: v for k, v in diff_section(desired["disk"], have["disk"]).items()
            if k not in NOT_ADJUSTED_DISK}
    handlers = diff_section(desired["handlers"], have["handlers"])
    if reconnect or not running.link:
        if running.link:
            plan.append(Action("disconnect", name))
        # connect takes the file's net section (and addresses): show what changes
        plan.append(Action("connect", name, tuple(sorted((k, v) for k, v in net.items()
                                                         if v is not None))))
    else:
        action = _options_action("net-options", name, desired["net"], net)
        if action:
            plan.append(action)
    disk_want = {k: v for k, v in desired["disk"].items() if k not in NOT_ADJUSTED_DISK}
    disk_action = _options_action("disk-options", name, disk_want, disk)
    handlers_action = _options_action("handlers", name, desired["handlers"], handlers)
    return [*([disk_action] if disk_action else []), *plan,
            *([handlers_action] if handlers_action else [])]


def apply_plan_to_settings(settings: Settings, plan: list[Action], desired: Settings) -> Settings:
    """What the running settings become after `plan` (for tests and for the reasoning above:
    applying a plan and diffing again gives nothing)."""
    out = {k: dict(v) for k, v in settings.items()}
    for action in plan:
        if action.verb in ("up", "attach"):
            out = {k: dict(v) for k, v in desired.items()}
        elif action.verb == "connect":
            out["net"] = dict(desired["net"])
            for k in ("address", "peer-address"):
                if k in desired["paths"]:
                    out["paths"][k] = desired["paths"][k]
        elif action.verb in ("net-options", "disk-options", "handlers"):
            section = {"net-options": "net", "disk-options": "disk",
                       "handlers": "handlers"}[action.verb]
            base = out[section]
            if action.set_defaults:
                kept = {k: v for k, v in base.items() if k in NOT_ADJUSTED_DISK} \
                    if section == "disk" else {}
                base = {**_defaults(section), **kept}
            out[section] = {**base, **action.values}
    return out


def _defaults(section: str) -> dict[str, str]:
    if section == "handlers":
        return {}
    return _format_section(_table(section), NetOptions() if section == "net" else DiskOptions())
