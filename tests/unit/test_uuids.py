# SPDX-License-Identifier: GPL-2.0-or-later
"""Generation UUIDs: the DRBD decision table row by row (drbd-reference 1.3), rule numbers as in
drbd_uuid_compare(), sync_handshake() adjustments, and whole-lifecycle simulations."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.uuids import (
    UUID_JUST_CREATED,
    UUID_NEW_BM_OFFSET,
    GenerationUuids,
    SplitBrainPolicy,
    UuidFlag,
    UuidReport,
    sync_handshake,
    uuid_compare,
)
from replica.uuids import SyncDecision as D

A, B, C, X, Y, Z = (0x1111111111111110, 0x2222222222222220, 0x3333333333333330,
                    0xAAAAAAAAAAAAAAA0, 0xBBBBBBBBBBBBBBB0, 0xCCCCCCCCCCCCCCC0)


def G(cur, bm=0, h0=0, h1=0):
    return GenerationUuids(cur, bm, (h0, h1))


def cmp(local, peer, lflags=UuidFlag(0), pflags=UuidFlag(0), lpri=False, ppri=False,
        resolve=True):
    return uuid_compare(UuidReport(local, lflags, lpri), UuidReport(peer, pflags, ppri),
                        resolve_conflicts=resolve)


def both_ways(local, peer, expect, rule, mirror_rule, **kw):
    assert cmp(local, peer, **kw) == (expect, rule)
    swap = {"lflags": "pflags", "pflags": "lflags", "lpri": "ppri", "ppri": "lpri"}
    back = {swap.get(k, k): v for k, v in kw.items()}
    if "resolve" in back:
        back["resolve"] = not back["resolve"]
    assert cmp(peer, local, **back) == (expect.mirror(), mirror_rule)


# --- the table of drbd-reference 1.3, one test per row -------------------------------------

def test_row_both_current_empty_no_sync():
    """both current UUIDs empty: fresh resource, no sync, must be started manually"""
    assert cmp(G(UUID_JUST_CREATED), G(UUID_JUST_CREATED)) == (D.NoSync, 10)


def test_row_one_current_empty_full_sync_target():
    """one current UUID empty: that side becomes full-sync target"""
    both_ways(G(UUID_JUST_CREATED), G(A, UUID_JUST_CREATED), D.FullSyncTarget, 20, 30)
    both_ways(G(0), G(A), D.FullSyncTarget, 20, 30)


def test_row_current_equal_no_sync():
    both_ways(G(A, 0, B), G(A | 1, 0, B), D.NoSync, 40, 40)   # role bit ignored


def test_row_my_bitmap_is_peer_current_bitmap_resync_source():
    """my bitmap UUID == peer current, peer bitmap empty: I am source; mirror: target"""
    both_ways(G(B | 1, A), G(A), D.BitmapSyncSource, 70, 50)


def test_row_my_current_in_peer_history_full_sync_target():
    """my current == one of peer's history UUIDs: peer's bitmap unusable -> full resync,
    I am target"""
    both_ways(G(A), G(C, 0, B, A), D.FullSyncTarget, 60, 80)
    both_ways(G(A), G(C, 0, A, X), D.FullSyncTarget, 60, 80)


def test_row_bitmap_equal_current_differ_split_brain():
    """bitmap UUIDs equal, current differ: split brain with common parent"""
    both_ways(G(B, A), G(C, A), D.SplitBrain, 90, 90)


def test_row_only_history_in_common_split_brain_unrelated():
    """neither current nor bitmap UUIDs match: split brain, no auto-recovery"""
    both_ways(G(B, X, A), G(C, Y, Z, A), D.SplitBrainUnrelated, 100, 100)


def test_row_nothing_in_common_unrelated():
    both_ways(G(B, X, Y), G(C, Z), D.Unrelated, 1000, 1000)


# --- the finer rules of drbd_uuid_compare --------------------------------------------------

def test_rule_34_source_missed_finish_and_36():
    # we were SyncSource: still hold a bitmap UUID the target already moved into history
    both_ways(G(A, B, C), G(A, 0, B, C), D.BitmapSyncSource, 34, 35)
    both_ways(G(A, B, C), G(A, 0, X, Y), D.BitmapSyncSource, 36, 37)


def test_rule_41_crashed_primary_while_one_is_primary():
    both_ways(G(A), G(A), D.BitmapSyncSource, 41, 41, lflags=UuidFlag.CRASHED_PRIMARY,
              lpri=True)
    assert cmp(G(A), G(A), lflags=UuidFlag.CRASHED_PRIMARY, lpri=True, ppri=True) == \
        (D.SplitBrainUnrelated, 41)


def test_rule_42_both_secondary_after_crash():
    """crashed-primary flag -> AL-based (bitmap) resync from the node that was Primary"""
    both_ways(G(A), G(A), D.BitmapSyncSource, 42, 42, lflags=UuidFlag.CRASHED_PRIMARY)
    both_ways(G(A), G(A), D.BitmapSyncTarget, 42, 42, pflags=UuidFlag.CRASHED_PRIMARY)
    crashed = UuidFlag.CRASHED_PRIMARY
    both_ways(G(A), G(A), D.BitmapSyncTarget, 42, 42, lflags=crashed, pflags=crashed,
              resolve=True)


def test_rule_51_and_71_sync_uuid_lost():
    # peer (source) already made its sync UUID (old bitmap + offset) but we never got it
    assert cmp(G(B), G(C, B + UUID_NEW_BM_OFFSET, B)) == (D.BitmapSyncTarget, 51)
    assert cmp(G(C, B + UUID_NEW_BM_OFFSET, B), G(B)) == (D.BitmapSyncSource, 71)


# --- sync_handshake --------------------------------------------------------------------------

def hs(local, peer, *, li=False, pi=False, lflags=UuidFlag(0), pflags=UuidFlag(0),
       lpri=False, ppri=False, resolve=True, lbits=0, pbits=0, policy=SplitBrainPolicy()):
    return sync_handshake(UuidReport(local, lflags, lpri, lbits, "alpha"),
                          UuidReport(peer, pflags, ppri, pbits, "beta"),
                          local_inconsistent=li, peer_inconsistent=pi,
                          resolve_conflicts=resolve,
                          discard_my_data=UuidFlag.DISCARD_MY_DATA in lflags, policy=policy)


def test_handshake_unrelated_aborts():
    v = hs(G(B), G(C))
    assert v.decision is D.Unrelated and v.reason == "Unrelated data, aborting!"
    assert v.decision.drops_connection


def test_handshake_disk_states_override():
    v = hs(G(A), G(A), pi=True)
    assert v.decision is D.BitmapSyncSource
    assert v.reason == "Becoming sync source due to disk states"
    v = hs(G(A), G(C, 0, A), li=True)
    assert v.decision is D.FullSyncTarget          # was full already: stays full


def test_handshake_split_brain_unresolved_and_discard_my_data():
    v = hs(G(B, A), G(C, A))
    assert v.decision is D.SplitBrain
    assert v.reason == "Split-Brain detected but unresolved, dropping connection!"
    victim = hs(G(B, A), G(C, A), lflags=UuidFlag.DISCARD_MY_DATA)
    assert victim.decision is D.BitmapSyncTarget
    assert "Sync from peer node" in victim.reason
    survivor = hs(G(C, A), G(B, A), pflags=UuidFlag.DISCARD_MY_DATA)
    assert survivor.decision is D.BitmapSyncSource
    both = hs(G(B, A), G(C, A), lflags=UuidFlag.DISCARD_MY_DATA,
              pflags=UuidFlag.DISCARD_MY_DATA)
    assert both.decision is D.SplitBrain
    unrelated_victim = hs(G(B, X, A), G(C, Y, A), lflags=UuidFlag.DISCARD_MY_DATA)
    assert unrelated_victim.decision is D.FullSyncTarget   # bitmaps share no base: full sync


def test_handshake_primary_refuses_to_become_target():
    v = hs(G(A), G(B | 1, A), lpri=True)
    assert v.decision is D.RoleConflict
    assert v.reason == "I shall become SyncTarget, but I am primary!"
    w = hs(G(B | 1, A), G(A), ppri=True)
    assert w.decision is D.BitmapSyncSource       # the Primary peer refuses; the handshake drops
    v2 = hs(G(A), G(B | 1, A), lpri=True, policy=SplitBrainPolicy(rr_conflict="violently"))
    assert v2.decision is D.BitmapSyncTarget and "violating the stable-data" in v2.reason
    v3 = hs(G(A), G(B | 1, A), lpri=True, policy=SplitBrainPolicy(rr_conflict="call-pri-lost"))
    assert v3.decision is D.RoleConflict and v3.handlers == ("pri-lost",)
    v4 = hs(G(A), G(A), li=True, pi=True, lflags=UuidFlag.CRASHED_PRIMARY)
    assert v4.decision is D.SourceInconsistent


# --- lifecycle ---------------------------------------------------------------------------------

def rng_from(seed):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def test_new_current_and_resync_lifecycle():
    rng = rng_from(1)
    base = G(A)
    p = base.new_current(rng)                 # primary lost its peer
    assert p.bitmap == A and p.current & 1 and p.current != A | 1
    p2 = p.new_current(rng)                    # again: bitmap kept, old current to history
    assert p2.bitmap == A and p2.history[0] == p.current & ~1
    assert cmp(p, base, lpri=True) == (D.BitmapSyncSource, 70)
    src, sync = p.start_resync_source(rng)
    assert sync == A + UUID_NEW_BM_OFFSET and src.bitmap == sync and src.history[0] == A
    tgt = base.start_resync_target(sync)
    assert tgt.current == sync and tgt.bitmap == 0
    # connection drops mid-resync: reconnect still decides a bitmap resync the same way
    assert cmp(src, tgt, lpri=True) == (D.BitmapSyncSource, 70)
    done_src = src.finish_resync_source()
    done_tgt = tgt.finish_resync_target(done_src)
    assert done_src.bitmap == 0 and done_src.history == (sync, A)
    assert done_tgt.current == done_src.current & ~1 and done_tgt.history == done_src.history
    assert cmp(done_src, done_tgt)[0] is D.NoSync


def test_forced_primary_on_fresh_pair_full_initial_sync():
    rng = rng_from(2)
    fresh = GenerationUuids()
    forced = fresh.new_current(rng)
    assert forced.bitmap == UUID_JUST_CREATED
    assert hs(forced, fresh, pi=True, lpri=True).decision is D.FullSyncSource
    assert hs(fresh, forced, li=True, ppri=True).decision is D.FullSyncTarget


def test_skip_initial_sync():
    rng = rng_from(3)
    a = GenerationUuids().skip_initial_sync(rng)
    b = GenerationUuids().accept_skip_initial_sync(a.current)
    assert a.current == b.current and a.bitmap == b.bitmap == 0
    assert cmp(a, b) == (D.NoSync, 40)
    with pytest.raises(ValueError, match="not a just-created device"):
        a.skip_initial_sync(rng)


def test_text_format():
    assert G(A | 1, B).text() == "1111111111111111:2222222222222220:0000000000000000:" \
        "0000000000000000"
    with pytest.raises(ValueError):
        GenerationUuids(1 << 64)


class Node:
    def __init__(self, uuids):
        self.u, self.primary, self.wrote = uuids, False, False


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["promote", "demote", "write"]), st.booleans()),
                max_size=8), st.integers(0, 2**32), st.booleans())
def test_simulated_partition_decision_is_symmetric_and_correct(actions, seed, discard_a):
    """Two connected nodes split; each may promote/write/demote; reconnect must agree."""
    rng = rng_from(seed)
    shared = G(A)
    a, b = Node(shared), Node(shared)
    for act, on_a in actions:
        n = a if on_a else b
        if act == "promote" and not n.primary:
            n.primary = True
            if n.u.bitmap == 0:
                n.u = n.u.new_current(rng)      # promote while disconnected
        elif act == "demote":
            n.primary = False
            n.u = n.u.with_role(False)
        elif act == "write" and n.primary:
            n.wrote = True
    ra = UuidReport(a.u, UuidFlag.DISCARD_MY_DATA if discard_a else UuidFlag(0), a.primary)
    rb = UuidReport(b.u, UuidFlag(0), b.primary)
    va = sync_handshake(ra, rb, local_inconsistent=False, peer_inconsistent=False,
                        resolve_conflicts=True, discard_my_data=discard_a)
    vb = sync_handshake(rb, ra, local_inconsistent=False, peer_inconsistent=False,
                        resolve_conflicts=False, discard_my_data=False)
    drop = va.decision.drops_connection or vb.decision.drops_connection
    if not drop:
        assert vb.decision is va.decision.mirror()
    changed_a, changed_b = a.u.bitmap != 0, b.u.bitmap != 0
    assert (changed_a or not a.primary) and (changed_b or not b.primary)
    if changed_a and changed_b:
        assert va.split_brain and vb.split_brain
        if discard_a and not a.primary:
            assert va.decision is D.BitmapSyncTarget and not drop
        elif discard_a:
            assert va.decision is D.RoleConflict
        else:
            assert va.decision is vb.decision is D.SplitBrain
            assert va.handlers == vb.handlers == ("initial-split-brain", "split-brain")
    elif changed_a:
        assert va.decision is D.BitmapSyncSource and not drop
    elif changed_b:
        assert va.decision is D.BitmapSyncTarget and not drop
    else:
        assert va.decision is D.NoSync


# --- after-sb policies (drbd_asb_recover_0p/1p/2p) ------------------------------------------

SB = dict(local=G(B, A), peer=G(C, A))       # common parent A: rule 90


@pytest.mark.parametrize("policy,lbits,pbits,resolve,expect", [
    ("disconnect", 0, 5, True, D.SplitBrain),
    ("discard-zero-changes", 0, 5, True, D.BitmapSyncTarget),
    ("discard-zero-changes", 5, 0, True, D.BitmapSyncSource),
    ("discard-zero-changes", 0, 0, True, D.BitmapSyncTarget),
    ("discard-zero-changes", 0, 0, False, D.BitmapSyncSource),
    ("discard-zero-changes", 3, 5, True, D.SplitBrain),
    ("discard-least-changes", 3, 5, True, D.BitmapSyncTarget),
    ("discard-least-changes", 9, 5, True, D.BitmapSyncSource),
    ("discard-node-alpha", 9, 5, True, D.BitmapSyncTarget),
    ("discard-node-beta", 9, 5, True, D.BitmapSyncSource),
    ("discard-node-gamma", 9, 5, True, D.SplitBrain),
])
def test_after_sb_0pri(policy, lbits, pbits, resolve, expect):
    v = hs(SB["local"], SB["peer"], lbits=lbits, pbits=pbits, resolve=resolve,
           policy=SplitBrainPolicy(after_sb_0pri=policy))
    assert v.decision is expect and v.split_brain
    if expect is not D.SplitBrain:
        assert "0 primaries, automatically solved" in v.reason
        assert v.handlers == ("initial-split-brain",)


def test_after_sb_0pri_younger_older_primary():
    # alpha was Primary when the link broke (role bit in its bitmap UUID), beta promoted later
    older, younger = G(B, A | 1), G(C, A)
    v = hs(older, younger, lbits=1, pbits=9,
           policy=SplitBrainPolicy(after_sb_0pri="discard-younger-primary"))
    assert v.decision is D.BitmapSyncSource
    v = hs(older, younger, lbits=1, pbits=9,
           policy=SplitBrainPolicy(after_sb_0pri="discard-older-primary"))
    assert v.decision is D.BitmapSyncTarget
    v = hs(G(B, A), G(C, A), lbits=1, pbits=9,      # undecided: falls back to least changes
           policy=SplitBrainPolicy(after_sb_0pri="discard-older-primary"))
    assert v.decision is D.BitmapSyncTarget


def test_after_sb_1pri_and_2pri():
    pol = SplitBrainPolicy(after_sb_0pri="discard-least-changes",
                           after_sb_1pri="discard-secondary")
    assert hs(SB["local"], SB["peer"], lpri=True, lbits=9, policy=pol).decision is \
        D.BitmapSyncSource
    assert hs(SB["local"], SB["peer"], ppri=True, lbits=0, policy=pol).decision is \
        D.BitmapSyncTarget
    cons = SplitBrainPolicy(after_sb_0pri="discard-least-changes", after_sb_1pri="consensus")
    assert hs(SB["local"], SB["peer"], lbits=1, pbits=9, ppri=True,
              policy=cons).decision is D.BitmapSyncTarget      # 0pri agrees: discard secondary
    assert hs(SB["local"], SB["peer"], lbits=9, pbits=1, ppri=True,
              policy=cons).decision is D.SplitBrain            # 0pri would discard the primary
    lost = SplitBrainPolicy(after_sb_0pri="discard-least-changes",
                            after_sb_1pri="call-pri-lost-after-sb")
    v = hs(SB["local"], SB["peer"], lpri=True, lbits=1, pbits=9, policy=lost)
    assert v.decision is D.SplitBrain           # cannot give up Primary: unresolved
    assert v.handlers == ("initial-split-brain", "pri-lost-after-sb", "split-brain")
    two = SplitBrainPolicy(after_sb_0pri="discard-least-changes",
                           after_sb_2pri="violently-as0p", rr_conflict="violently")
    v = hs(SB["local"], SB["peer"], lpri=True, ppri=True, lbits=1, pbits=9, policy=two)
    assert v.decision is D.BitmapSyncTarget and "2 primaries" in v.reason
    assert hs(SB["local"], SB["peer"], lpri=True, ppri=True,
              policy=SplitBrainPolicy()).decision is D.SplitBrain
    with pytest.raises(ValueError, match="after-sb-1pri: unknown policy"):
        hs(SB["local"], SB["peer"], lpri=True, policy=SplitBrainPolicy(after_sb_1pri="nope"))


def test_always_asbp_applies_to_unrelated_split_brain_with_full_sync():
    loc, peer = G(B, X, A), G(C, Y, Z, A)             # rule 100: no common bitmap parent
    pol = SplitBrainPolicy(after_sb_0pri="discard-zero-changes")
    assert hs(loc, peer, lbits=0, pbits=4, policy=pol).decision is D.SplitBrainUnrelated
    asbp = SplitBrainPolicy(after_sb_0pri="discard-zero-changes", always_asbp=True)
    assert hs(loc, peer, lbits=0, pbits=4, policy=asbp).decision is D.FullSyncTarget


def test_policy_from_net_options():
    class Net:
        after_sb_0pri, after_sb_1pri, after_sb_2pri = "discard-zero-changes", "consensus", \
            "disconnect"
        rr_conflict, always_asbp = "disconnect", True
    assert SplitBrainPolicy.from_net(Net) == SplitBrainPolicy(
        "discard-zero-changes", "consensus", "disconnect", "disconnect", True)
