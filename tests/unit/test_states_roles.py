# SPDX-License-Identifier: GPL-2.0-or-later
"""roles.request(): the transition table, DRBD refusals (one sentence each) and forced promotion."""
from dataclasses import replace

import pytest

from replica.errors import StateChangeRefused
from replica.roles import (
    _TRANSITIONS,
    AttachInfo,
    Request,
    ResourceState,
    apply_handshake,
    apply_split_brain,
    needs_new_current_uuid,
    request,
    request_or_raise,
)
from replica.states import ConnState, DiskState, Refusal, ReplState, Role

CONNECTED = ResourceState(role=Role.Secondary, peer_role=Role.Secondary, conn=ConnState.Connected,
                          repl=ReplState.Established, disk=DiskState.UpToDate,
                          peer_disk=DiskState.UpToDate)
ALONE = ResourceState(disk=DiskState.UpToDate)


def test_enum_str_is_drbd_name():
    assert f"{Role.Primary}/{Role.Unknown}" == "Primary/Unknown"
    assert str(DiskState.UpToDate) == "UpToDate"
    assert str(ReplState.SyncSource) == "SyncSource"
    assert DiskState.Inconsistent.rank < DiskState.Outdated.rank < DiskState.UpToDate.rank
    assert ReplState.PausedSyncT.is_resync and ReplState.PausedSyncT.is_sync_target
    assert not ReplState.Established.is_resync


def test_every_role_request_pair_is_in_the_table():
    for role in (Role.Primary, Role.Secondary):
        for req in Request:
            assert (role, req) in _TRANSITIONS


def test_refusal_sentences_are_drbd_text():
    assert Refusal.TWO_PRIMARIES.sentence == "Multiple primaries not allowed by config"
    assert Refusal.PRIMARY_NOP.sentence == "Refusing to be Primary while peer is not outdated"
    assert Refusal.NO_UP_TO_DATE_DISK.sentence == "Need access to UpToDate data"
    assert Refusal.DEVICE_IN_USE.sentence == "Device is held open by someone"
    assert Refusal.CONNECTED_OUTDATES.sentence == "Refusing to be Outdated while Connected"
    for r in Refusal:
        assert r.sentence[0].isupper() and not r.sentence.endswith(".")


def test_promote_connected_uptodate():
    s = request(CONNECTED, Request.PROMOTE)
    assert s.role is Role.Primary and s.disk is DiskState.UpToDate
    assert s.role_text() == "Primary/Secondary"


def test_promote_refused_while_peer_primary():
    s = replace(CONNECTED, peer_role=Role.Primary)
    assert request(s, Request.PROMOTE) is Refusal.TWO_PRIMARIES
    assert request(s, Request.PROMOTE, force=True) is Refusal.TWO_PRIMARIES
    assert request(replace(s, allow_two_primaries=True), Request.PROMOTE).role is Role.Primary


@pytest.mark.parametrize("disk", [DiskState.Inconsistent, DiskState.Outdated,
                                  DiskState.Consistent])
def test_promote_refused_without_uptodate_unless_forced(disk):
    s = replace(ALONE, disk=disk)
    assert request(s, Request.PROMOTE) is Refusal.NO_UP_TO_DATE_DISK
    forced = request(s, Request.PROMOTE, force=True)
    assert forced.role is Role.Primary and forced.disk is DiskState.UpToDate
    assert needs_new_current_uuid(s, forced, forced=True, bitmap_uuid=0)
    assert needs_new_current_uuid(s, forced, forced=True, bitmap_uuid=0x1234)


def test_promote_diskless_refused_even_forced_unless_peer_uptodate():
    s = ResourceState(disk=DiskState.Diskless)
    assert request(s, Request.PROMOTE, force=True) is Refusal.NO_UP_TO_DATE_DISK
    c = replace(CONNECTED, disk=DiskState.Diskless)
    assert request(c, Request.PROMOTE).role is Role.Primary


def test_promote_with_fencing_needs_outdated_peer():
    s = replace(ALONE, fencing=True)
    assert request(s, Request.PROMOTE) is Refusal.PRIMARY_NOP
    forced = request(s, Request.PROMOTE, force=True)
    assert forced.role is Role.Primary and forced.peer_disk is DiskState.Outdated
    ok = request(replace(s, peer_disk=DiskState.Outdated), Request.PROMOTE)
    assert ok.role is Role.Primary


def test_promote_disconnected_needs_new_uuid_only_without_bitmap_uuid():
    new = request(ALONE, Request.PROMOTE)
    assert needs_new_current_uuid(ALONE, new, forced=False, bitmap_uuid=0)
    assert not needs_new_current_uuid(ALONE, new, forced=False, bitmap_uuid=0xABC0)
    conn = request(CONNECTED, Request.PROMOTE)
    assert not needs_new_current_uuid(CONNECTED, conn, forced=False, bitmap_uuid=0)


def test_primary_losing_peer_needs_new_uuid():
    p = request(CONNECTED, Request.PROMOTE)
    lost = request(p, Request.CONNECTION_LOST)
    assert lost.conn is ConnState.Connecting and lost.peer_role is Role.Unknown
    assert lost.peer_disk is DiskState.DUnknown
    assert needs_new_current_uuid(p, lost, forced=False, bitmap_uuid=0)
    sec_lost = request(CONNECTED, Request.CONNECTION_LOST)
    assert not needs_new_current_uuid(CONNECTED, sec_lost, forced=False, bitmap_uuid=0)


def test_demote_refused_while_open():
    p = replace(CONNECTED, role=Role.Primary, open_rw=True)
    assert request(p, Request.DEMOTE) is Refusal.DEVICE_IN_USE
    assert request(replace(p, open_rw=False), Request.DEMOTE).role is Role.Secondary
    with pytest.raises(StateChangeRefused,
                       match=r"^r0: secondary: Device is held open by someone$"):
        request_or_raise(p, Request.DEMOTE, "r0: secondary")


def test_promote_and_demote_are_idempotent():
    assert request(ALONE, Request.DEMOTE) is ALONE
    p = request(ALONE, Request.PROMOTE)
    assert request(p, Request.PROMOTE) is p


@pytest.mark.parametrize("flags,fencing,expect", [
    (AttachInfo(consistent=False, was_up_to_date=False), False, DiskState.Inconsistent),
    (AttachInfo(consistent=True, was_up_to_date=False), False, DiskState.Outdated),
    (AttachInfo(consistent=True, was_up_to_date=True), False, DiskState.UpToDate),
    (AttachInfo(consistent=True, was_up_to_date=True), True, DiskState.Consistent),
    (AttachInfo(consistent=True, was_up_to_date=True, peer_outdated=True), True,
     DiskState.UpToDate),
])
def test_attach_disk_state_from_md_flags(flags, fencing, expect):
    s = ResourceState(fencing=fencing)
    assert request(s, Request.ATTACH, attach=flags).disk is expect


def test_attach_twice_and_detach_rules():
    assert request(ALONE, Request.ATTACH, attach=AttachInfo(True, True)) is \
        Refusal.DISK_CONFIGURED
    assert request(ResourceState(), Request.DETACH) is Refusal.IS_DISKLESS
    p = request(ALONE, Request.PROMOTE)
    assert request(p, Request.DETACH) is Refusal.NO_UP_TO_DATE_DISK
    pc = request(CONNECTED, Request.PROMOTE)
    assert request(pc, Request.DETACH).disk is DiskState.Diskless


def test_connect_disconnect():
    c = request(ALONE, Request.CONNECT)
    assert c.conn is ConnState.Connecting
    assert request(c, Request.CONNECT) is Refusal.NET_CONFIGURED
    assert request(ALONE, Request.DISCONNECT) is Refusal.ALREADY_STANDALONE
    d = request(CONNECTED, Request.DISCONNECT)
    assert d.conn is ConnState.StandAlone and d.peer_disk is DiskState.DUnknown
    p = request(CONNECTED, Request.PROMOTE)
    gd = request(p, Request.DISCONNECT)
    assert gd.peer_disk is DiskState.Outdated      # graceful disconnect outdates the Secondary
    assert gd.dstate_text() == "UpToDate/Outdated"


def test_outdate_rules():
    assert request(CONNECTED, Request.OUTDATE) is Refusal.CONNECTED_OUTDATES
    assert request(request(ALONE, Request.PROMOTE), Request.OUTDATE) is \
        Refusal.NO_UP_TO_DATE_DISK
    assert request(replace(ALONE, disk=DiskState.Inconsistent), Request.OUTDATE) is \
        Refusal.LOWER_THAN_OUTDATED
    assert request(ALONE, Request.OUTDATE).disk is DiskState.Outdated


def test_invalidate_and_invalidate_remote():
    t = request(CONNECTED, Request.INVALIDATE)
    assert t.disk is DiskState.Inconsistent and t.repl is ReplState.StartingSyncT
    assert request(t, Request.INVALIDATE) is Refusal.RESYNC_RUNNING
    assert request(ALONE, Request.INVALIDATE_REMOTE) is Refusal.NEED_CONNECTION
    s = request(CONNECTED, Request.INVALIDATE_REMOTE)
    assert s.peer_disk is DiskState.Inconsistent and s.repl is ReplState.StartingSyncS
    assert request(replace(CONNECTED, peer_role=Role.Primary), Request.INVALIDATE_REMOTE) is \
        Refusal.CW_FAILED_BY_PEER
    assert request(request(ALONE, Request.PROMOTE), Request.INVALIDATE) is \
        Refusal.NO_UP_TO_DATE_DISK
    assert request(ALONE, Request.INVALIDATE).disk is DiskState.Inconsistent


def test_handshake_sync_pause_finish():
    c = request(ALONE, Request.CONNECT)
    t = apply_handshake(replace(c, disk=DiskState.Outdated), peer_role=Role.Primary,
                        peer_disk=DiskState.UpToDate, sync_source=False)
    assert t.repl is ReplState.SyncTarget and t.disk is DiskState.Inconsistent
    assert t.cstate_text() == "SyncTarget"
    paused = request(t, Request.PAUSE_SYNC)
    assert paused.repl is ReplState.PausedSyncT
    resumed = request(paused, Request.RESUME_SYNC)
    assert resumed.repl is ReplState.SyncTarget
    done = request(resumed, Request.SYNC_FINISHED)
    assert done.repl is ReplState.Established and done.disk is DiskState.UpToDate
    assert done.cstate_text() == "Connected"
    assert request(done, Request.SYNC_FINISHED) is Refusal.IN_TRANSIENT_STATE
    src = apply_handshake(c, peer_role=Role.Secondary, peer_disk=DiskState.Outdated,
                          sync_source=True)
    assert src.repl is ReplState.SyncSource and src.peer_disk is DiskState.Inconsistent
    assert request(src, Request.SYNC_FINISHED).peer_disk is DiskState.UpToDate
    same = apply_handshake(replace(c, disk=DiskState.Outdated), peer_role=Role.Primary,
                           peer_disk=DiskState.UpToDate, sync_source=None)
    assert same.disk is DiskState.UpToDate and same.repl is ReplState.Established


def test_split_brain_goes_standalone():
    sb = apply_split_brain(request(CONNECTED, Request.PROMOTE))
    assert sb.conn is ConnState.StandAlone and sb.peer_role is Role.Unknown
    assert sb.role is Role.Primary


# --- on-io-error: a failed disk (issue 9 item 2) -------------------------------------------------

@pytest.mark.parametrize("role", [Role.Primary, Role.Secondary])
def test_io_error_detaches_whatever_the_role_and_peer(role):
    up = replace(CONNECTED, role=role, disk=DiskState.UpToDate, peer_disk=DiskState.UpToDate)
    new = request(up, Request.IO_ERROR)
    assert (new.role, new.disk, new.conn, new.repl) == (role, DiskState.Diskless,
                                                        ConnState.Connected, ReplState.Established)
    # a user's detach of that Primary would be refused; a failing disk is not asked
    alone = replace(up, conn=ConnState.Connecting, repl=ReplState.Off, peer_disk=DiskState.DUnknown)
    assert request(alone, Request.DETACH) in (Refusal.NO_UP_TO_DATE_DISK, replace(
        alone, disk=DiskState.Diskless))
    assert request(alone, Request.IO_ERROR).disk is DiskState.Diskless
    # a resync using this disk ends with it
    syncing = replace(up, repl=ReplState.SyncSource, susp_user=True)
    assert (request(syncing, Request.IO_ERROR).repl, request(syncing, Request.IO_ERROR).susp_user) \
        == (ReplState.Established, False)
    assert (role, Request.IO_ERROR) in _TRANSITIONS
