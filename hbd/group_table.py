# SPDX-License-Identifier: GPL-2.0-or-later
"""The haresources groups as the group manager books them: their states and the operations in flight.

The bookkeeping half of hbd.groups' ``GroupManager`` (which holds one as
``self.table``), sans-I/O like it.  ``GroupTable`` owns the group list in
haresources order, each group's state, how many StartGroup/StopGroup actions
are queued but not yet reported per group, and the callbacks waiting for no
operation to be queued.  It decides nothing: who should hold what is the
manager's; this only records what was asked and what the runner reported.

    start_keys / stop_keys --StartGroup/StopGroup, GroupChanged--> emit (the manager's queue)
    complete(key, ok, target) <-- the runner's result, relayed by the manager
        last queued operation of key done -> STARTED | STOPPED | FAILED (GroupChanged)
        a start failed                    -> on_start_failed(key)   (the manager's hand-off timer)
        nothing queued any more           -> the ``after`` callbacks, in order

``replace`` is a reload's new haresources table (hbd.reload): kept keys keep
their state and queue, new keys start stopped, gone keys are forgotten.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from .group_actions import Action, GroupChanged, GroupState, StartGroup, StopGroup

HELD = (GroupState.STARTED, GroupState.STARTING)


class GroupSpec(Protocol):
    """What the manager reads of a group (hbd.haresources.ResourceGroup): its key and preferred node."""

    @property
    def name(self) -> str: ...
    @property
    def node(self) -> str: ...


class GroupTable:
    """Group states and queued operations, in haresources order (see the module docstring)."""

    def __init__(self, groups: Iterable[GroupSpec], emit: Callable[[Action], None],
                 on_start_failed: Callable[[str], None]) -> None:
        self.groups = tuple(groups)
        self.by_key = {g.name: g for g in self.groups}
        self.state = {g.name: GroupState.STOPPED for g in self.groups}
        self._queued = {g.name: 0 for g in self.groups}   # StartGroup/StopGroup not yet reported
        self._after_ops: list[Callable[[], None]] = []
        self._emit = emit
        self._on_start_failed = on_start_failed

    # --- queries --------------------------------------------------------------------------

    def keys(self, pred: Callable[[GroupSpec], bool]) -> list[str]:
        return [g.name for g in self.groups if pred(g)]

    def keys_for_hold(self, hold: str, relative_to: str) -> list[str]:
        """The keys an rsc_hold word (none|local|foreign|all) names, relative to that node."""
        if hold == "all":
            return self.keys(lambda g: True)
        if hold == "local":
            return self.keys(lambda g: g.node == relative_to)
        if hold == "foreign":
            return self.keys(lambda g: g.node != relative_to)
        return []

    def held_keys(self) -> tuple[str, ...]:
        return tuple(k for k, s in self.state.items() if s in HELD)

    def busy(self) -> bool:
        """Some StartGroup/StopGroup has not been reported back yet."""
        return any(self._queued.values())

    # --- operations -----------------------------------------------------------------------

    def set_state(self, key: str, new: GroupState, reason: str) -> None:
        old = self.state[key]
        if old is not new:
            self.state[key] = new
            self._emit(GroupChanged(key, old, new, reason))

    def start_keys(self, keys: Iterable[str], reason: str) -> bool:
        """Queue a start of each; True if there was any."""
        any_started = False
        for key in keys:
            self._queued[key] += 1
            self.set_state(key, GroupState.STARTING, reason)
            self._emit(StartGroup(key, reason))
            any_started = True
        return any_started

    def stop_keys(self, keys: Iterable[str], reason: str) -> None:
        for key in keys:
            self._queued[key] += 1
            self.set_state(key, GroupState.STOPPING, reason)
            self._emit(StopGroup(key, reason))

    def after(self, fn: Callable[[], None]) -> None:
        """Run fn once no group operation is queued (now, if none is)."""
        if self.busy():
            self._after_ops.append(fn)
        else:
            fn()

    def complete(self, key: str, ok: bool, target: GroupState) -> None:
        """The runner reported one operation on key (target: STARTED for a start, STOPPED for a
        stop); a report for a key with nothing queued is ignored."""
        if not self._queued.get(key):
            return
        self._queued[key] -= 1
        if self._queued[key] == 0:
            if ok:
                self.set_state(key, target, "start succeeded" if target is GroupState.STARTED
                               else "stop succeeded")
            else:
                what = "start" if target is GroupState.STARTED else "stop"
                self.set_state(key, GroupState.FAILED, f"{what} failed")
                if what == "start":
                    self._on_start_failed(key)
        if not self.busy():
            pending, self._after_ops = self._after_ops, []
            for fn in pending:
                fn()

    def replace(self, groups: Iterable[GroupSpec]) -> None:
        """A reload's haresources: kept keys keep state and queue, new ones start stopped."""
        self.groups = tuple(groups)
        self.by_key = {g.name: g for g in self.groups}
        self.state = {g.name: self.state.get(g.name, GroupState.STOPPED) for g in self.groups}
        self._queued = {g.name: self._queued.get(g.name, 0) for g in self.groups}
