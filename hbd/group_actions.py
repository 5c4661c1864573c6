# SPDX-License-Identifier: GPL-2.0-or-later
"""The vocabulary between hbd.groups and the daemon: group and phase states, and the actions.

GroupManager (hbd.groups) emits these actions from ``next_action()``; the daemon
runs them (scripts, packets, fencing, logs) and reports results back.  Only
data lives here: enums, frozen dataclasses and the rsc_hold words of
Heartbeat's ``resource`` / ``ask_resources`` messages.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class GroupState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    FAILED = "failed"


class Phase(enum.Enum):
    INIT = "init"
    STABLE = "stable"
    SHUTTING_DOWN = "shutting_down"
    DOWN = "down"


HOLD_VALUES = ("none", "local", "foreign", "all")
COMPLEMENT = {"local": "foreign", "foreign": "local", "all": "all"}


# --- actions -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StartGroup:
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class StopGroup:
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class SendMessage:
    msg_type: str
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class FenceNode:
    node: str


@dataclass(frozen=True, slots=True)
class GroupChanged:
    key: str
    old: GroupState
    new: GroupState
    reason: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A line worth logging that is not a group transition (level: info|warn|crit)."""
    level: str
    text: str


@dataclass(frozen=True, slots=True)
class ShutdownComplete:
    clean: bool


@dataclass(frozen=True, slots=True)
class Reannounce:
    """Re-send gratuitous ARP for this held group: the peer just released a copy (partition heal)."""
    key: str


Action = StartGroup | StopGroup | SendMessage | FenceNode | GroupChanged | Notice | ShutdownComplete | Reannounce
