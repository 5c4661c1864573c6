# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat's `haresources`: one resource group per logical line.

Owns: parsing `ha.d/haresources` exactly as heartbeat's ResourceManager reads
it (heartbeat-reference.md 1.3):

    node-name resource1 resource2 ... resourceN
    ha1 10.0.17.26 datadisk httpd mysql
    node1 10.0.0.170 Filesystem::/dev/sda1::/data1::ext2
    just.linux-ha.org 135.9.216.3/28/eth0/135.9.216.12 httpd

- `#` starts a comment anywhere (stripped first), then a line ending in `\\`
  is joined with the next one, whitespace is collapsed;
- the node name is lower-cased;
- a word that looks like an IPv4 address (shell glob
  `[0-9]*.[0-9]*.[0-9]*.[0-9]*`) means `IPaddr::word`;
- `script::arg1::arg2` = script name plus `::`-separated arguments;
- the first resource of a line, as written, is the group key and must be
  unique in the file.

Resources start left to right and stop right to left (the runtime's job).
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hacommon.errors import ConfigError

_IP_GLOB = re.compile(r"[0-9].*\.[0-9].*\.[0-9].*\.[0-9].*\Z", re.DOTALL)
_SCRIPT_RE = re.compile(r"[A-Za-z0-9_.+-][A-Za-z0-9_.+@-]*\Z")
_IP_SCRIPTS = ("IPaddr", "IPaddr2")


@dataclass(frozen=True)
class ResourceSpec:
    """One resource: the script name and its `::` arguments."""

    name: str
    args: tuple[str, ...] = ()
    written: str = field(default="", compare=False)  # the word as written in haresources

    def __str__(self) -> str:
        return self.written or "::".join((self.name,) + self.args)


@dataclass(frozen=True)
class ResourceGroup:
    """A haresources line: the preferred node and its resources in start order."""

    node: str
    resources: tuple[ResourceSpec, ...]
    line: int

    @property
    def name(self) -> str:
        """Heartbeat's group key: the first resource as written (`ip-request ipaddr=` uses it)."""
        return str(self.resources[0])


def parse_resource(word: str, where: str = "haresources") -> ResourceSpec:
    """One resource word -> ResourceSpec; raises ConfigError prefixed with `where`."""
    if _IP_GLOB.match(word):
        _check_ip_arg(word, where)
        return ResourceSpec("IPaddr", (word,), word)
    name, *args = word.split("::")
    if not name or not _SCRIPT_RE.match(name):
        raise ConfigError(f"{where}: resource {word!r}: expected a script name "
                          f"(letters, digits, '_', '-', '.') before '::'")
    if any(a == "" for a in args):
        raise ConfigError(f"{where}: resource {word!r}: empty argument between '::' separators")
    if name in _IP_SCRIPTS:
        if len(args) != 1:
            raise ConfigError(f"{where}: resource {word!r}: {name} takes one argument "
                              f"'ip[/nbits[/dev[/bcast]]]', got {len(args)}")
        _check_ip_arg(args[0], where)
    return ResourceSpec(name, tuple(args), word)


def _check_ip_arg(arg: str, where: str) -> None:
    """Validate `ip[/nbits[/dev[:label]][/bcast]]` (IPaddr, IPaddr2)."""
    parts = arg.split("/")
    bad = f"{where}: IP resource {arg!r}: expected ip[/nbits[/dev][/bcast]]"
    try:
        ipaddress.IPv4Address(parts[0])
    except ValueError:
        raise ConfigError(f"{bad}: {parts[0]!r} is not an IPv4 address") from None
    if len(parts) > 4:
        raise ConfigError(f"{bad}: too many '/' parts")
    if len(parts) > 1 and not (parts[1].isdigit() and len(parts[1]) <= 2 and int(parts[1]) <= 32):
        raise ConfigError(f"{bad}: prefix length {parts[1]!r} is not 0..32")
    for p in parts[2:]:
        if not p:
            raise ConfigError(f"{bad}: empty part")


def parse_haresources(text: str, path: str = "haresources",
                      nodes: Sequence[str] | None = None) -> tuple[ResourceGroup, ...]:
    """Parse haresources text; `nodes` (from ha.cf) makes an unknown node name an error."""
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0]
        if not pending:
            start = lineno
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        logical.append((start, " ".join(pending)))
        pending = []
    if pending:
        logical.append((start, " ".join(pending)))

    known = [n.lower() for n in nodes] if nodes is not None else None
    groups: list[ResourceGroup] = []
    keys: dict[str, int] = {}
    for lineno, line in logical:
        words = line.split()
        if not words:
            continue
        where = f"{path}:{lineno}"
        node = words[0].lower()
        if known is not None and node not in known:
            raise ConfigError(f"{where}: node {words[0]!r} is not a node of ha.cf "
                              f"(node lines: {', '.join(known) or 'none'})")
        if _IP_GLOB.match(node) or "::" in node:
            raise ConfigError(f"{where}: expected a node name first, got resource {words[0]!r}")
        if len(words) < 2:
            raise ConfigError(f"{where}: node {node!r} has no resources: "
                              f"expected 'NODE RESOURCE [RESOURCE...]'")
        resources = tuple(parse_resource(w, where) for w in words[1:])
        group = ResourceGroup(node=node, resources=resources, line=lineno)
        if group.name in keys:
            raise ConfigError(f"{where}: group {group.name!r} already defined on line {keys[group.name]}: "
                              f"the first resource of each line must be unique")
        keys[group.name] = lineno
        groups.append(group)
    return tuple(groups)


def load_haresources(config_dir: str | os.PathLike[str],
                     nodes: Sequence[str] | None = None) -> tuple[ResourceGroup, ...]:
    """Read and parse DIR/haresources (a missing file is an error: v1 mode needs it)."""
    path = os.path.join(os.fspath(config_dir), "haresources")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    return parse_haresources(data.decode("utf-8", "surrogateescape"), path, nodes)
