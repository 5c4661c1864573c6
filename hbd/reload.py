# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's reload: heartbeat's ``/etc/init.d/heartbeat reload`` (SIGHUP, or ``hbctl reload``).

Owns what a reload compares and what it does about each difference; the daemon
(hbd.daemon) owns the signal, the loop and the objects changed.

    SIGHUP / hbctl reload
        -> reopen the log files (rotation)
        -> read ha.cf, haresources, authkeys (and the STONITH devices, the resource
           scripts): any error -> log it (FILE:LINE: ...), keep the running
           configuration, journal "reload result=refused"; hbd never dies of it
        -> ha.cf: diff_config(running, new); a node list change is refused whole
           (below); media are opened first, so a medium that cannot open refuses
           the reload too
        -> apply ha.cf + authkeys at once; haresources once the groups are stable
           (GroupManager.is_stable: no start/stop, standby or fencing in flight)

Heartbeat 3.0 (hb_signal.c, heartbeat-reference.md 1.4) re-reads authkeys on
SIGHUP and re-executes itself when ha.cf changed ("restart", resources kept).
hbd applies in place instead, so nothing is restarted that did not change:

    applied at once    keepalive deadtime warntime initdead max_rexmit_delay
                       (our next status carries the new dt: the peer applies it to us)
                       auto_failback gratuitous_arp_* stonith stonith_host authkeys
                       logfacility logfile debugfile (logging set up again)
                       udpport bcast mcast ucast (new sockets opened, then the old closed)
    needs a restart    node (the membership and the group manager are built for one
                       peer; heartbeat restarts itself for it too)
    not used by hbd    serial baud ping ping_group deadping respawn failfast crm
                       watchdog autojoin cluster use_logd debug hopfudge and the
                       accepted-but-unused directives (a change is logged, nothing else)

haresources (diff_groups: groups are keyed by their first resource, as heartbeat
names them; the line number is not part of a group's definition):

    unchanged  left alone: no stop, no start, no script run
    removed    stopped here if held (old definition), then forgotten
    changed    (other resources, or another preferred node) stopped here if held,
               with the old definition, then treated as new
    new        started here by the usual rules: every new group while the peer is
               dead (or there is none); with the peer up, our own (preferred node)
               groups the peer does not report holding.  The peer's groups are the
               peer's to start when it reloads: both nodes carry the same haresources
               and are reloaded one after the other, as with heartbeat.

Stops for a reload are planned (hbd.availability.PLANNED_REASONS).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hacommon.errors import ConfigError
from hbd import stonith
from hbd.authkeys import AuthKeys
from hbd.config import HaConfig
from hbd.groups import GroupManager, GroupState, Phase
from hbd.haresources import ResourceGroup
from hbd.journal import Journal
from hbd.media import Media
from hbd.protocol.membership import Membership
from hbd.resources import ResourceRunner

log = logging.getLogger("hbd")

REMOVED_REASON = "reload: removed from haresources"
CHANGED_REASON = "reload: changed in haresources"
ADDED_REASON = "reload: new in haresources"

# ha.cf fields (HaConfig) by what a reload does with a change, with their directive names
LIVE = {"keepalive_s": "keepalive", "deadtime_s": "deadtime", "warntime_s": "warntime",
        "initdead_s": "initdead", "max_rexmit_delay_ms": "max_rexmit_delay",
        "auto_failback": "auto_failback", "gratuitous_arp_count": "gratuitous_arp_count",
        "gratuitous_arp_interval_ms": "gratuitous_arp_interval", "stonith": "stonith",
        "stonith_host": "stonith_host", "logfacility": "logfacility", "logfile": "logfile",
        "debugfile": "debugfile", "udpport": "udpport", "bcast": "bcast", "mcast": "mcast",
        "ucast": "ucast"}
MEDIA = ("udpport", "bcast", "mcast", "ucast")
LOGGING = ("logfacility", "logfile", "debugfile")
RESTART = {"nodes": "node"}
NOT_COMPARED = ("path", "warnings")


# --- haresources ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupDiff:
    """haresources old -> new, by group key (module docstring)."""

    added: tuple[ResourceGroup, ...] = ()
    removed: tuple[ResourceGroup, ...] = ()
    changed: tuple[tuple[ResourceGroup, ResourceGroup], ...] = ()   # (old, new)
    unchanged: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def describe(self) -> str:
        parts = [f"added {' '.join(g.name for g in self.added)}" if self.added else "",
                 f"removed {' '.join(g.name for g in self.removed)}" if self.removed else "",
                 f"changed {' '.join(new.name for _old, new in self.changed)}" if self.changed else "",
                 f"{len(self.unchanged)} unchanged"]
        return "; ".join(p for p in parts if p)


def same_definition(a: ResourceGroup, b: ResourceGroup) -> bool:
    """Same preferred node and resources (ResourceSpec equality: name and arguments)."""
    return a.node == b.node and a.resources == b.resources


def diff_groups(old: Sequence[ResourceGroup], new: Sequence[ResourceGroup]) -> GroupDiff:
    """What changed from `old` to `new`, each list in its file's order."""
    old_by = {g.name: g for g in old}
    new_by = {g.name: g for g in new}
    return GroupDiff(
        added=tuple(g for g in new if g.name not in old_by),
        removed=tuple(g for g in old if g.name not in new_by),
        changed=tuple((old_by[g.name], g) for g in new
                      if g.name in old_by and not same_definition(old_by[g.name], g)),
        unchanged=tuple(g.name for g in new if g.name in old_by and same_definition(old_by[g.name], g)))


# --- ha.cf ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigDiff:
    """ha.cf old -> new: each entry 'directive OLD -> NEW'."""

    live: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    media: bool = False
    logging: bool = False

    @property
    def empty(self) -> bool:
        return not (self.live or self.restart or self.unused)


def _show(value: Any, field_name: str) -> str:
    if field_name.endswith("_s") and isinstance(value, float):
        return f"{value:g}s"
    if field_name.endswith("_ms") and isinstance(value, int):
        return f"{value}ms"
    if isinstance(value, tuple):
        return " ".join(_show(v, "") for v in value) or "(none)"
    if dataclasses.is_dataclass(value):
        return " ".join(str(v) for v in dataclasses.astuple(value))   # type: ignore[arg-type]
    return "(none)" if value is None else str(value)


def diff_config(old: HaConfig, new: HaConfig) -> ConfigDiff:
    live, restart, unused = [], [], []
    media = logging_ = False
    for f in dataclasses.fields(HaConfig):
        name = f.name
        if name in NOT_COMPARED:
            continue
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        directive = LIVE.get(name) or RESTART.get(name) or name.removesuffix("_s").removesuffix("_ms")
        text = f"{directive} {_show(a, name)} -> {_show(b, name)}"
        if name in LIVE:
            live.append(text)
            media |= directive in MEDIA
            logging_ |= directive in LOGGING
        elif name in RESTART:
            restart.append(text)
        else:
            unused.append(text)
    return ConfigDiff(tuple(live), tuple(restart), tuple(unused), media, logging_)


# --- applying it --------------------------------------------------------------------------

class ReloadTarget(Protocol):
    """What the reload reads and changes of the running daemon (hbd.daemon.Daemon)."""

    cfg: HaConfig
    keys: AuthKeys
    groups_cfg: Sequence[ResourceGroup]
    by_key: dict[str, ResourceGroup]
    devices: tuple[stonith.StonithDevice, ...]
    media: Media
    runner: ResourceRunner
    journal: Journal
    node: str
    config_dir: str

    @property
    def m(self) -> Membership: ...
    @property
    def g(self) -> GroupManager: ...
    def kick(self) -> None: ...
    def swap_media(self, media: Media) -> None: ...
    def set_up_logging(self, cfg: HaConfig) -> None: ...
    def script_env(self, cfg: HaConfig) -> dict[str, str]: ...


Loader = Callable[[str, str], tuple[HaConfig, tuple[ResourceGroup, ...], AuthKeys]]


class Reloader:
    """Runs reloads one at a time on the daemon's loop; haresources changes wait for stable groups."""

    def __init__(self, target: ReloadTarget, load: Loader) -> None:
        self.t = target
        self.load = load
        self._lock = asyncio.Lock()
        self.pending: tuple[ResourceGroup, ...] | None = None   # haresources waiting for stable groups
        self._deferred_logged = False

    async def reload(self, source: str) -> dict[str, Any]:
        """Read and apply the configuration: {"ok": True, "changes": [...]} or {"ok": False, "error"}."""
        async with self._lock:
            return await self._reload(source)

    def _refuse(self, source: str, text: str) -> dict[str, Any]:
        log.critical("reload (%s): %s: keeping the running configuration", source, text)
        self.t.journal.record("reload", source=source, result="refused", detail=text)
        return {"ok": False, "error": f"{text}: keeping the running configuration"}

    async def _reload(self, source: str) -> dict[str, Any]:
        t = self.t
        try:
            cfg, groups, keys = self.load(t.config_dir, t.node)
            devices = stonith.load_devices(cfg, t.node, t.config_dir)
            for group in groups:
                t.runner.check_group(group)
        except ConfigError as e:
            return self._refuse(source, f"configuration invalid: {e}")
        cdiff = diff_config(t.cfg, cfg)
        if cdiff.restart:
            return self._refuse(source, f"{cfg.path}: {'; '.join(cdiff.restart)}: needs a restart of hbd "
                                        f"(heartbeat restarts itself for it too); nothing reloaded")
        media: Media | None = None
        if cdiff.media:
            media = Media(cfg)
            try:     # pyroute2's sync API must run outside the asyncio loop
                await asyncio.get_running_loop().run_in_executor(None, media.open)
            except ConfigError as e:
                return self._refuse(source, f"configuration invalid: {e}")
        changes = self._apply_config(cfg, keys, devices, cdiff, media)
        gdiff = diff_groups(t.groups_cfg, groups)
        if gdiff.empty:     # at most line numbers or spelling moved: the same groups, new objects
            self.pending = None
            self._swap_tables(groups)
        else:
            changes.append(f"haresources: {gdiff.describe()}")
            self.pending = groups
            self._deferred_logged = False
        for text in changes:
            log.info("reload (%s): %s", source, text)
        log.info("reload (%s): %s", source, "configuration reloaded" if changes else "nothing changed")
        t.journal.record("reload", source=source, result="ok", changes=changes)
        self.maybe_apply_groups()
        t.kick()
        return {"ok": True, "changes": changes, "groups_waiting": self.pending is not None}

    def _apply_config(self, cfg: HaConfig, keys: AuthKeys, devices: tuple[stonith.StonithDevice, ...],
                      cdiff: ConfigDiff, media: Media | None) -> list[str]:
        t = self.t
        changes = [f"ha.cf: {c}" for c in cdiff.live]
        changes += [f"ha.cf: {c} (not used by hbd)" for c in cdiff.unused]
        if keys != t.keys:
            changes.append(f"authkeys: signing with auth {keys.active.index} ({keys.active.name}), "
                           f"accepting {' '.join(str(i) for i in sorted(keys.methods))}")
        t.m.set_timing(keepalive_s=cfg.keepalive_s, warntime_s=cfg.warntime_s, deadtime_s=cfg.deadtime_s,
                       initdead_s=cfg.initdead_s, max_rexmit_delay_s=cfg.max_rexmit_delay_ms / 1000.0,
                       authkeys=keys, now=time.monotonic())
        t.g.auto_failback = cfg.auto_failback
        t.g.stonith_configured = bool(devices)
        t.cfg, t.keys, t.devices = cfg, keys, devices
        t.runner.env = t.script_env(cfg)
        if media is not None:
            t.swap_media(media)
        if cdiff.logging:
            t.set_up_logging(cfg)
        return changes

    # --- haresources: once the groups are stable ------------------------------------------------
    def maybe_apply_groups(self) -> None:
        """Apply the pending haresources if the groups are stable now (the daemon calls this
        after each pump); while they are not, it waits (said once in the log)."""
        if self.pending is None:
            return
        g = self.t.g
        if g.phase in (Phase.SHUTTING_DOWN, Phase.DOWN):
            self.pending = None
            return
        if not g.is_stable() or g.is_fencing():
            if not self._deferred_logged:
                self._deferred_logged = True
                log.info("reload: haresources changes wait until the groups are stable (phase %s, %s)",
                         g.phase.value, g.rscstatus())
            return
        groups, self.pending = self.pending, None
        self.apply_groups(groups)

    def apply_groups(self, groups: tuple[ResourceGroup, ...]) -> None:
        t, g = self.t, self.t.g
        diff = diff_groups(t.groups_cfg, groups)
        if diff.empty:
            self._swap_tables(groups)
            return
        held = (GroupState.STARTED, GroupState.STARTING, GroupState.FAILED)
        # stopped right to left, as a whole haresources file is
        removed = [old.name for old in reversed(diff.removed) if g.group_state(old.name) in held]
        changed = [old.name for old, _new in reversed(diff.changed) if g.group_state(old.name) in held]
        g.stop_keys(removed, REMOVED_REASON)
        g.stop_keys(changed, CHANGED_REASON)

        def swap_and_acquire() -> None:
            for key in removed:
                if g.group_state(key) is GroupState.FAILED:
                    log.critical("reload: group %s: stop failed; it is no longer in haresources: "
                                 "its resources may still run here (check them by hand)", key)
            self._swap_tables(groups)
            added = [grp.name for grp in diff.added]
            renewed = [new.name for _old, new in diff.changed if g.group_state(new.name) is GroupState.STOPPED]
            g.start_keys([k for k in added if self._should_acquire(k)], ADDED_REASON)
            g.start_keys([k for k in renewed if self._should_acquire(k)], CHANGED_REASON)
            g.after(lambda: g.send_report("reload"))
        g.after(swap_and_acquire)

    def _swap_tables(self, groups: tuple[ResourceGroup, ...]) -> None:
        t = self.t
        t.g.replace_groups(groups)
        t.groups_cfg = groups
        t.by_key = {grp.name: grp for grp in groups}

    def _should_acquire(self, key: str) -> bool:
        g = self.t.g
        if g.peer is None or g.peer_status == "dead":
            return True
        return g.preferred_node(key) == g.node and key not in (g.peer_hold or frozenset())
