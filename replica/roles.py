# SPDX-License-Identifier: GPL-2.0-or-later
"""The resource state machine: roles, connection, replication and disk states, one table.

Owns: `ResourceState` (what `drbdadm status` shows for one resource and its peer) and
`request(state, Request.X, ...)`, the only way a state changes. It is pure: no I/O, no clock.
The caller (replicad) performs the side effects the new state implies (sending packets, writing
metadata, generating UUIDs: see `needs_new_current_uuid`) and logs one line per change.

Rule 1: every (local role, request) pair is a key of `_TRANSITIONS`; a missing key is a bug
        (LocalProtocolError), never a silent no-op.
Rule 2: a handler runs its guards first; the first failing guard returns a `Refusal`, and the
        state is unchanged. Guards follow DRBD 8.4's `is_valid_state()`/`drbd_set_role()`:

    PROMOTE  refused: peer Primary (no allow-two-primaries)  -> TWO_PRIMARIES
                      local disk not UpToDate                -> NO_UP_TO_DATE_DISK
                        (force: Inconsistent/Outdated/Consistent -> UpToDate, new current UUID)
                      fencing and peer disk not Outdated/Inconsistent while disconnected
                                                             -> PRIMARY_NOP (force: peer Outdated,
                                                                "Forced into split brain situation")
    DEMOTE   refused: device open for writing                -> DEVICE_IN_USE
    DETACH   refused: Primary without an UpToDate peer        -> NO_UP_TO_DATE_DISK
    OUTDATE  refused: Connected -> CONNECTED_OUTDATES; Primary -> NO_UP_TO_DATE_DISK
    IO_ERROR never refused (the disk is gone whatever the role): disk -> Diskless; a Primary
             keeps its role and reaches the data through the peer (or not at all)

Lifecycle of the connection (drbd 9 names)::

    StandAlone --CONNECT--> Connecting --handshake_done()--> Connected
    Connected --CONNECTION_LOST--> Connecting          any --DISCONNECT--> StandAlone
    Connected/Established --INVALIDATE(-REMOTE)--> StartingSyncT/S --> SyncTarget/Source
    SyncSource/SyncTarget --SYNC_FINISHED--> Established
"""
import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from replica.errors import LocalProtocolError
from replica.states import ConnState, DiskState, Refusal, ReplState, Role


class Request(enum.Enum):
    PROMOTE = "primary"
    DEMOTE = "secondary"
    ATTACH = "attach"
    DETACH = "detach"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    INVALIDATE = "invalidate"
    INVALIDATE_REMOTE = "invalidate-remote"
    OUTDATE = "outdate"
    PAUSE_SYNC = "pause-sync"
    RESUME_SYNC = "resume-sync"
    CONNECTION_LOST = "connection-lost"      # network event, not a user request
    SYNC_FINISHED = "sync-finished"          # resync event: the last block was written
    IO_ERROR = "io-error"                    # disk event: on-io-error detach took the disk away

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ResourceState:
    """One resource as DRBD reports it (`role`, `cstate`, `dstate`, replication state).

    `open_rw`: the device (NBD export / loop) is held open for writing; `fencing`: `fencing
    resource-only` or stronger is configured; `allow_two_primaries`: net option of that name.
    """

    role: Role = Role.Secondary
    peer_role: Role = Role.Unknown
    conn: ConnState = ConnState.StandAlone
    repl: ReplState = ReplState.Off
    disk: DiskState = DiskState.Diskless
    peer_disk: DiskState = DiskState.DUnknown
    open_rw: bool = False
    fencing: bool = False
    allow_two_primaries: bool = False
    susp_user: bool = False                   # pause-sync by the user

    @property
    def is_connected(self) -> bool:
        return self.conn is ConnState.Connected

    def role_text(self) -> str:
        """`drbdadm role` in 8.4 format: `Primary/Secondary`."""
        return f"{self.role}/{self.peer_role}"

    def dstate_text(self) -> str:
        """`drbdadm dstate` in 8.4 format: `UpToDate/UpToDate`."""
        return f"{self.disk}/{self.peer_disk}"

    def cstate_text(self) -> str:
        """`drbdadm cstate`: the replication state while connected (8.4 mixed both)."""
        if self.conn is ConnState.Connected and self.repl is not ReplState.Established:
            return str(self.repl)
        return str(self.conn)


Result = ResourceState | Refusal
Handler = Callable[[ResourceState, bool, "AttachInfo | None"], Result]


@dataclass(frozen=True, slots=True)
class AttachInfo:
    """What attach learns from the metadata flags (metadata.MdFlag), as drbd_adm_attach does."""

    consistent: bool
    was_up_to_date: bool
    peer_outdated: bool = False
    was_connected: bool = False      # MDF_CONNECTED_IND: connected when last shut down


# --- guards -----------------------------------------------------------------------------------

def _has_up_to_date_access(s: ResourceState) -> bool:
    """A Primary must reach UpToDate data: its own disk, or the peer's over a connection."""
    return s.disk is DiskState.UpToDate or (s.is_connected and s.peer_disk is DiskState.UpToDate)


# --- handlers: (state, force, attach) -> new state | Refusal --------------------------------

def _promote(s: ResourceState, force: bool, _a) -> Result:
    if s.role is Role.Primary:
        return s
    if s.peer_role is Role.Primary and not s.allow_two_primaries:
        return Refusal.TWO_PRIMARIES
    new = replace(s, role=Role.Primary)
    if s.disk is not DiskState.UpToDate:
        if s.disk is DiskState.Diskless and s.is_connected and s.peer_disk is DiskState.UpToDate:
            return new                                    # diskless Primary reading via peer
        if not force or s.disk.rank < DiskState.Inconsistent.rank:
            return Refusal.NO_UP_TO_DATE_DISK
        if s.repl.is_sync_target:
            return Refusal.NO_UP_TO_DATE_DISK             # drbd: never force over a running resync
        new = replace(new, disk=DiskState.UpToDate)
    if s.fencing and not s.is_connected and s.peer_disk.rank >= DiskState.DUnknown.rank:
        if not force:
            return Refusal.PRIMARY_NOP
        new = replace(new, peer_disk=DiskState.Outdated)  # "Forced into split brain situation!"
    return new


def _demote(s: ResourceState, _f: bool, _a) -> Result:
    if s.role is Role.Secondary:
        return s
    if s.open_rw:
        return Refusal.DEVICE_IN_USE
    return replace(s, role=Role.Secondary)


def _attach(s: ResourceState, _f: bool, info: "AttachInfo | None") -> Result:
    if s.disk is not DiskState.Diskless:
        return Refusal.DISK_CONFIGURED
    if info is None:
        raise LocalProtocolError("roles: attach: metadata flags (AttachInfo) are required")
    # drbd_adm_attach: Consistent if it was UpToDate, Outdated if it was consistent but stale.
    if not info.consistent:
        disk = DiskState.Inconsistent
    elif info.was_up_to_date:
        disk = DiskState.Consistent
    else:
        disk = DiskState.Outdated
    peer_disk = s.peer_disk
    if info.peer_outdated and not s.is_connected:
        peer_disk = DiskState.Outdated
    if disk is DiskState.Consistent and (peer_disk is DiskState.Outdated or not s.fencing):
        disk = DiskState.UpToDate
    if s.is_connected:
        disk = DiskState.Negotiating if disk is DiskState.Consistent else disk
    return replace(s, disk=disk, peer_disk=peer_disk)


def _detach(s: ResourceState, _f: bool, _a) -> Result:
    if s.disk is DiskState.Diskless:
        return Refusal.IS_DISKLESS
    if s.role is Role.Primary and not (s.is_connected and s.peer_disk is DiskState.UpToDate):
        return Refusal.NO_UP_TO_DATE_DISK
    if s.repl.is_sync_source:
        return Refusal.NO_LOCAL_DISK if not s.is_connected else Refusal.RESYNC_RUNNING
    return replace(s, disk=DiskState.Diskless)


def _io_error(s: ResourceState, _f: bool, _a) -> Result:
    # a resync involving this disk cannot go on: the peer learns Diskless and stops it
    repl = ReplState.Established if s.is_connected else ReplState.Off
    return replace(s, disk=DiskState.Diskless, repl=repl, susp_user=False)


def _connect(s: ResourceState, _f: bool, _a) -> Result:
    if s.conn is not ConnState.StandAlone:
        return Refusal.NET_CONFIGURED
    return replace(s, conn=ConnState.Connecting, repl=ReplState.Off)


def _disconnect(s: ResourceState, _f: bool, _a) -> Result:
    if s.conn is ConnState.StandAlone:
        return Refusal.ALREADY_STANDALONE
    peer_disk = DiskState.DUnknown
    if (s.is_connected and s.role is Role.Primary and s.peer_disk is DiskState.UpToDate
            and s.peer_role is not Role.Primary):
        peer_disk = DiskState.Outdated     # graceful: the Secondary outdates itself on request
    return replace(s, conn=ConnState.StandAlone, repl=ReplState.Off, peer_role=Role.Unknown,
                   peer_disk=peer_disk)


def _connection_lost(s: ResourceState, _f: bool, _a) -> Result:
    if s.conn is ConnState.StandAlone:
        return s
    # a SyncTarget stays Inconsistent: its bitmap still holds the blocks not yet received
    return replace(s, conn=ConnState.Connecting, repl=ReplState.Off, peer_role=Role.Unknown,
                   peer_disk=DiskState.DUnknown)


def _invalidate(s: ResourceState, _f: bool, _a) -> Result:
    if s.disk is DiskState.Diskless:
        return Refusal.IS_DISKLESS
    if s.repl.is_resync:
        return Refusal.RESYNC_RUNNING
    if s.is_connected:
        if s.peer_disk is not DiskState.UpToDate:
            return Refusal.NO_UP_TO_DATE_DISK
        return replace(s, disk=DiskState.Inconsistent, repl=ReplState.StartingSyncT)
    if s.role is Role.Primary:
        return Refusal.NO_UP_TO_DATE_DISK
    return replace(s, disk=DiskState.Inconsistent)      # offline: full sync on next connect


def _invalidate_remote(s: ResourceState, _f: bool, _a) -> Result:
    if not s.is_connected:
        return Refusal.NEED_CONNECTION
    if s.disk is DiskState.Diskless:
        return Refusal.NO_LOCAL_DISK
    if s.peer_disk is DiskState.Diskless:
        return Refusal.NO_REMOTE_DISK
    if s.repl.is_resync:
        return Refusal.RESYNC_RUNNING
    if s.disk is not DiskState.UpToDate:
        return Refusal.NO_UP_TO_DATE_DISK
    if s.peer_role is Role.Primary:
        return Refusal.CW_FAILED_BY_PEER
    return replace(s, peer_disk=DiskState.Inconsistent, repl=ReplState.StartingSyncS)


def _outdate(s: ResourceState, _f: bool, _a) -> Result:
    if s.is_connected:
        return Refusal.CONNECTED_OUTDATES
    if s.role is Role.Primary:
        return Refusal.NO_UP_TO_DATE_DISK
    if s.disk.rank < DiskState.Outdated.rank:
        return Refusal.LOWER_THAN_OUTDATED
    return replace(s, disk=DiskState.Outdated)


def _pause_sync(s: ResourceState, _f: bool, _a) -> Result:
    if not s.repl.is_resync:
        return Refusal.NEED_CONNECTION if not s.is_connected else Refusal.IN_TRANSIENT_STATE
    repl = {ReplState.SyncSource: ReplState.PausedSyncS,
            ReplState.SyncTarget: ReplState.PausedSyncT}.get(s.repl, s.repl)
    return replace(s, repl=repl, susp_user=True)


def _resume_sync(s: ResourceState, _f: bool, _a) -> Result:
    if not s.susp_user:
        return s
    repl = {ReplState.PausedSyncS: ReplState.SyncSource,
            ReplState.PausedSyncT: ReplState.SyncTarget}.get(s.repl, s.repl)
    return replace(s, repl=repl, susp_user=False)


def _sync_finished(s: ResourceState, _f: bool, _a) -> Result:
    if s.repl.is_sync_target:
        return replace(s, repl=ReplState.Established, disk=DiskState.UpToDate,
                       peer_disk=DiskState.UpToDate, susp_user=False)
    if s.repl.is_sync_source:
        return replace(s, repl=ReplState.Established, peer_disk=DiskState.UpToDate,
                       susp_user=False)
    return Refusal.IN_TRANSIENT_STATE


_BY_REQUEST: dict[Request, Handler] = {
    Request.PROMOTE: _promote, Request.DEMOTE: _demote, Request.ATTACH: _attach,
    Request.DETACH: _detach, Request.CONNECT: _connect, Request.DISCONNECT: _disconnect,
    Request.INVALIDATE: _invalidate, Request.INVALIDATE_REMOTE: _invalidate_remote,
    Request.OUTDATE: _outdate, Request.PAUSE_SYNC: _pause_sync,
    Request.RESUME_SYNC: _resume_sync, Request.CONNECTION_LOST: _connection_lost,
    Request.SYNC_FINISHED: _sync_finished, Request.IO_ERROR: _io_error,
}

# The table. Both local roles accept every request; the guards inside differ by role.
_TRANSITIONS: dict[tuple[Role, Request], Handler] = {
    (role, req): handler
    for role in (Role.Primary, Role.Secondary) for req, handler in _BY_REQUEST.items()
}


def request(state: ResourceState, req: Request, *, force: bool = False,
            attach: AttachInfo | None = None) -> Result:
    """Apply one request; return the new state, or the Refusal and leave `state` as it was."""
    handler = _TRANSITIONS.get((state.role, req))
    if handler is None:
        raise LocalProtocolError(f"roles: no transition: role={state.role} request={req}")
    return handler(state, force, attach)


def request_or_raise(state: ResourceState, req: Request, context: str, **kw) -> ResourceState:
    """`request`, raising StateChangeRefused(`<context>: <sentence>`) on a refusal."""
    result = request(state, req, **kw)
    if isinstance(result, Refusal):
        raise result.error(context)
    return result


def needs_new_current_uuid(old: ResourceState, new: ResourceState, *, forced: bool,
                           bitmap_uuid: int) -> bool:
    """DRBD 8.4 drbd_set_role/after_state_ch: start a new data generation when

    - a node becomes Primary while it cannot replicate (not Connected, or peer disk Failed or
      worse) and no bitmap UUID is set yet (the old generation is still the peer's), or
    - a Primary loses its peer (connection lost/disconnect) with no bitmap UUID yet, or
    - the promotion was forced (`primary --force`), always.
    """
    if new.role is not Role.Primary:
        return False
    became_primary = old.role is not Role.Primary
    if became_primary and forced and old.disk is not DiskState.UpToDate:
        return True
    if became_primary and forced and new.peer_disk is not old.peer_disk:
        return True
    cannot_replicate = (not new.is_connected) or new.peer_disk.rank <= DiskState.Failed.rank
    lost_peer = old.is_connected and not new.is_connected
    return (became_primary or lost_peer) and cannot_replicate and bitmap_uuid == 0


def apply_handshake(state: ResourceState, *, peer_role: Role, peer_disk: DiskState,
                    sync_source: bool | None) -> ResourceState:
    """State after a successful handshake: Connected, and SyncSource/SyncTarget or Established.

    `sync_source`: True = we become SyncSource, False = SyncTarget, None = no resync.
    """
    new = replace(state, conn=ConnState.Connected, peer_role=peer_role, peer_disk=peer_disk)
    disk = state.disk
    if disk is DiskState.Consistent or disk is DiskState.Negotiating:
        disk = DiskState.UpToDate          # same generation as a peer we agree with
    if sync_source is None:
        if disk is DiskState.Outdated and peer_disk is DiskState.UpToDate:
            disk = DiskState.UpToDate      # equal UUIDs: the data is the peer's, byte for byte
        return replace(new, repl=ReplState.Established, disk=disk)
    if sync_source:
        return replace(new, repl=ReplState.SyncSource, peer_disk=DiskState.Inconsistent, disk=disk)
    return replace(new, repl=ReplState.SyncTarget, disk=DiskState.Inconsistent)


def apply_split_brain(state: ResourceState) -> ResourceState:
    """Split brain detected: drop the connection and stay StandAlone (nothing is merged)."""
    return replace(state, conn=ConnState.StandAlone, repl=ReplState.Off, peer_role=Role.Unknown,
                   peer_disk=DiskState.DUnknown)
