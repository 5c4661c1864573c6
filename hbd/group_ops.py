# SPDX-License-Identifier: GPL-2.0-or-later
"""The group manager's actions carried out: scripts one at a time, STONITH, the journal of groups.

hbd.groups decides (sans-I/O); ``GroupOps`` does what it decided and reports
each result back with ``now``, then ``kick``s the daemon so the next decision
follows at once:

    StartGroup / StopGroup  queue(a) -> one worker task runs them in order on the
                            runner (hbd.resources: left to right / right to left);
                            a start waits first until replicad knows the peer is
                            dead (hbd.disk_fencing.wait_notified)
                            -> groups.group_started / group_stopped
    FenceNode               fence(node) -> a task: hbd.stonith.fence -> journal
                            -> disk fencing hears it -> groups.fence_done
    GroupChanged            record_change(a): metrics, log, journal; a stop is planned
                            when its reason is (hbd.availability.PLANNED_REASONS), except
                            a standby hbctl asked for as the recovery from a failure

The STONITH devices and the group definitions are read at each use
(``devices``, ``group``): a reload replaces them.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hbd import stonith
from hbd.availability import PLANNED_REASONS
from hbd.disk_fencing import DiskFencing
from hbd.groups import INITIAL_REASON, GroupChanged, GroupManager, StartGroup, StopGroup
from hbd.haresources import ResourceGroup
from hbd.journal import Journal
from hbd.metrics import EventCounts
from hbd.resources import ResourceRunner

LogFn = Callable[[str, str], None]      # (level info|warn|crit, text)


class GroupOps:
    """Runs one GroupManager's start/stop/fence actions and journals its group changes."""

    def __init__(self, *, node: str, groups: GroupManager, runner: ResourceRunner, journal: Journal,
                 event_counts: EventCounts, fencing: DiskFencing | None, log: LogFn, kick: Callable[[], None],
                 group: Callable[[str], ResourceGroup], devices: Callable[[], tuple[stonith.StonithDevice, ...]],
                 standby_planned: Callable[[], bool]) -> None:
        self.node = node
        self.g = groups
        self.runner = runner
        self.journal = journal
        self.event_counts = event_counts
        self.fencing = fencing
        self._log = log
        self._kick = kick
        self._group = group
        self._devices = devices
        self._standby_planned = standby_planned
        self._ops: asyncio.Queue[StartGroup | StopGroup] = asyncio.Queue()
        self._stop_planned: dict[str, bool] = {}        # group -> its current stop is planned

    def queue(self, a: StartGroup | StopGroup) -> None:
        self._ops.put_nowait(a)

    async def work(self) -> None:
        """The worker: one operation at a time, in the order queued (the daemon's task)."""
        while True:
            a = await self._ops.get()
            group = self._group(a.key)
            if isinstance(a, StartGroup):
                if self.fencing is not None:
                    await self.fencing.wait_notified()     # replicad knows the peer is dead
                self._log("info", f"group {a.key}: starting ({a.reason})")
                ok = await self.runner.start_group(group)
                self.g.group_started(a.key, ok, time.monotonic())
            else:
                self._log("info", f"group {a.key}: stopping ({a.reason})")
                ok = await self.runner.stop_group(group)
                self.g.group_stopped(a.key, ok, time.monotonic())
            self._kick()

    def fence(self, node: str) -> None:
        asyncio.get_running_loop().create_task(self._fence(node))

    async def _fence(self, node: str) -> None:
        self._log("warn", f"stonith: resetting node {node}")
        ok, detail = await stonith.fence(self._devices(), node)
        self._log("info" if ok else "crit", detail)
        self.journal.record("stonith", peer=node, result="ok" if ok else "failed", detail=detail)
        if ok and self.fencing is not None:
            self.fencing.node_fenced(node)
        self.g.fence_done(node, ok, time.monotonic())
        self._kick()

    def record_change(self, a: GroupChanged) -> None:
        self.event_counts.note_group_change(a)
        self._log("crit" if a.new.value == "failed" else "info",
                  f"group {a.key}: {a.old.value} -> {a.new.value} ({a.reason})")
        if a.new.value == "stopping":
            self._stop_planned[a.key] = a.reason in PLANNED_REASONS and not (
                a.reason == "standby" and not self._standby_planned())
        up = a.new.value == "started"
        # the initial acquisition's start: what ran before (on the unheard peer) is unknown
        initial = a.new.value == "starting" and a.reason.startswith(INITIAL_REASON)
        self.journal.record("group", group=a.key, old=a.old.value, new=a.new.value, reason=a.reason,
                            state="up" if up else "unknown" if initial else "down", holder=self.node,
                            planned=not up and a.new.value in ("stopping", "stopped")
                            and self._stop_planned.get(a.key, False),
                            why=a.reason)
