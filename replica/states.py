# SPDX-License-Identifier: GPL-2.0-or-later
"""DRBD vocabulary for roles, connection, replication and disk states, and refusal reasons.

Owns: the enums every other part of replica logs, prints and puts on the wire, with the exact
names DRBD 8.4/9 uses (drbd-reference 1.2), and `Refusal`, the machine code for a refused state
change, each mapped to one DRBD-style sentence (the kernel's `drbd_state_sw_errors[]` strings
where DRBD has one; the configuration errors `ERR_DISK_CONFIGURED`/`ERR_NET_CONFIGURED` of
drbdsetup otherwise). `str(member)` is the DRBD name, so f-strings and `status` print DRBD text.

The order of `DiskState` members is meaningful (DRBD compares disk states with `<`/`>=`):
Diskless < Attaching < Failed < Negotiating < Inconsistent < Outdated < DUnknown < Consistent
< UpToDate; use `DiskState.rank` for those comparisons.
"""
import enum

from replica.errors import StateChangeRefused


class _Named(enum.StrEnum):
    """A str enum whose str() is the DRBD name (a plain Enum would print `Class.NAME`)."""


class Role(_Named):
    Primary = "Primary"
    Secondary = "Secondary"
    Unknown = "Unknown"          # the peer's role while not connected


class ConnState(_Named):
    """Connection states (DRBD 9 names; 8.4's WFConnection is our Connecting)."""

    StandAlone = "StandAlone"
    Disconnecting = "Disconnecting"
    Unconnected = "Unconnected"
    Connecting = "Connecting"
    Connected = "Connected"


class ReplState(_Named):
    """Replication states of the peer device (DRBD 9); Off while not connected."""

    Off = "Off"
    Established = "Established"
    StartingSyncS = "StartingSyncS"
    StartingSyncT = "StartingSyncT"
    WFBitMapS = "WFBitMapS"
    WFBitMapT = "WFBitMapT"
    SyncSource = "SyncSource"
    SyncTarget = "SyncTarget"
    PausedSyncS = "PausedSyncS"
    PausedSyncT = "PausedSyncT"
    VerifyS = "VerifyS"
    VerifyT = "VerifyT"

    @property
    def is_resync(self) -> bool:
        """True while a resync is running or paused (status shows `done:`)."""
        return self in _RESYNC_STATES

    @property
    def is_sync_source(self) -> bool:
        return self in (ReplState.StartingSyncS, ReplState.WFBitMapS, ReplState.SyncSource,
                        ReplState.PausedSyncS)

    @property
    def is_sync_target(self) -> bool:
        return self in (ReplState.StartingSyncT, ReplState.WFBitMapT, ReplState.SyncTarget,
                        ReplState.PausedSyncT)


_RESYNC_STATES = frozenset({
    ReplState.StartingSyncS, ReplState.StartingSyncT, ReplState.WFBitMapS, ReplState.WFBitMapT,
    ReplState.SyncSource, ReplState.SyncTarget, ReplState.PausedSyncS, ReplState.PausedSyncT,
})


class DiskState(_Named):
    Diskless = "Diskless"
    Attaching = "Attaching"
    Failed = "Failed"
    Negotiating = "Negotiating"
    Inconsistent = "Inconsistent"
    Outdated = "Outdated"
    DUnknown = "DUnknown"        # the peer's disk while not connected
    Consistent = "Consistent"
    UpToDate = "UpToDate"

    @property
    def rank(self) -> int:
        """DRBD's ordering (enum drbd_disk_state): compare ranks, never names."""
        return _DISK_RANK[self]


_DISK_RANK = {d: i for i, d in enumerate(DiskState)}


class Refusal(enum.Enum):
    """Why a state change was refused (DRBD `SS_*`/`ERR_*`); `.sentence` is what users read."""

    TWO_PRIMARIES = "Multiple primaries not allowed by config"
    NO_UP_TO_DATE_DISK = "Need access to UpToDate data"
    NO_LOCAL_DISK = "Can not resync without local disk"
    NO_REMOTE_DISK = "Can not resync without remote disk"
    CONNECTED_OUTDATES = "Refusing to be Outdated while Connected"
    PRIMARY_NOP = "Refusing to be Primary while peer is not outdated"
    RESYNC_RUNNING = "Can not start OV/resync since it is already active"
    ALREADY_STANDALONE = "Can not disconnect a StandAlone device"
    CW_FAILED_BY_PEER = "State change was refused by peer node"
    IS_DISKLESS = "Device is diskless, the requested operation requires a disk"
    DEVICE_IN_USE = "Device is held open by someone"
    NO_NET_CONFIG = "Have no net/connection configuration"
    NEED_CONNECTION = "Need a connection to start verify or resync"
    LOWER_THAN_OUTDATED = "Disk state is lower than outdated"
    IN_TRANSIENT_STATE = "In transient state, retry after next state change"
    OUTDATE_WO_CONN = "Need a connection for a graceful disconnect/outdate peer"
    DISK_CONFIGURED = "Device is attached to a disk (use detach first)"
    NET_CONFIGURED = "Device has a net-config (use disconnect first)"
    PEER_IS_PRIMARY = "Refusing to become SyncSource while peer is Primary"
    PRIMARY_TARGET = "Refusing to become SyncTarget while Primary with UpToDate data"

    @property
    def sentence(self) -> str:
        return self.value

    def __str__(self) -> str:
        return self.value

    def error(self, context: str, detail: str = "") -> "Refused":
        """The exception a CLI/daemon raises: `<context>: <sentence>[ (<detail>)]`, carrying the
        Refusal (`detail`: what the sentence is about, e.g. who holds the device)."""
        return Refused(self, context, detail)


class Refused(StateChangeRefused):
    """A refused state change: the sentence for people, `.refusal` (its name travels in control
    replies as "refusal") for machines, `.context` (the resource) for the CLI's message."""

    def __init__(self, refusal: Refusal, context: str, detail: str = ""):
        super().__init__(f"{context}: {refusal.sentence}" + (f" ({detail})" if detail else ""))
        self.refusal = refusal
        self.context = context
        self.detail = detail
