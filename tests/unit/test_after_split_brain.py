# SPDX-License-Identifier: GPL-2.0-or-later
"""After-split-brain recovery (drbd.conf net `after-sb-0pri/1pri/2pri`, `rr-conflict`): the
decision both nodes reach from the same split brain, and the handlers each one runs.

The oracle below is written from drbd.conf(5)'s wording of each policy, not from
replica.uuids; hypothesis then checks that both sides of every generated split brain agree
with it and with each other (one SyncSource, one SyncTarget, or both drop the connection)."""
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.uuids import GenerationUuids, SplitBrainPolicy, UuidFlag, UuidReport, sync_handshake
from replica.uuids import SyncDecision as D

PARENT, CUR_A, CUR_B = 0x1111111111111110, 0x2222222222222220, 0x3333333333333330
P0 = ("disconnect", "discard-younger-primary", "discard-older-primary", "discard-zero-changes",
      "discard-least-changes", "discard-node-alpha", "discard-node-beta", "discard-node-gamma")
P1 = ("disconnect", "consensus", "violently-as0p", "discard-secondary", "call-pri-lost-after-sb")
P2 = ("disconnect", "violently-as0p", "call-pri-lost-after-sb")
RR = ("disconnect", "violently", "call-pri-lost")


@dataclass(frozen=True)
class Side:
    name: str
    primary: bool            # role now, at the handshake
    was_primary: bool        # role when the link broke (the role bit of its bitmap UUID)
    bits: int                # blocks changed since the split
    discard: bool            # connect --discard-my-data
    may_demote: bool         # nobody holds its device

    def report(self, cur: int) -> UuidReport:
        flags = UuidFlag.DISCARD_MY_DATA if self.discard else UuidFlag(0)
        u = GenerationUuids(cur | int(self.primary), PARENT | int(self.was_primary), (0, 0))
        return UuidReport(u, flags, self.primary, self.bits, self.name)


def verdicts(a: Side, b: Side, pol: SplitBrainPolicy):
    """Both sides' verdicts; alpha initiated the connection (it resolves conflicts)."""
    ra, rb = a.report(CUR_A), b.report(CUR_B)
    va = sync_handshake(ra, rb, local_inconsistent=False, peer_inconsistent=False,
                        resolve_conflicts=True, discard_my_data=a.discard, policy=pol,
                        may_demote=a.may_demote)
    vb = sync_handshake(rb, ra, local_inconsistent=False, peer_inconsistent=False,
                        resolve_conflicts=False, discard_my_data=b.discard, policy=pol,
                        may_demote=b.may_demote)
    return va, vb


def loser_0pri(policy: str, a: Side, b: Side) -> Side | None:
    """drbd.conf(5) after-sb-0pri; the connection's initiator (alpha) loses ties."""
    if policy in ("discard-younger-primary", "discard-older-primary"):
        if a.was_primary != b.was_primary:
            older = a if a.was_primary else b           # Primary when the link broke
            younger = b if older is a else a
            return younger if policy == "discard-younger-primary" else older
        policy = "discard-least-changes"
    if policy == "discard-zero-changes":
        if a.bits and b.bits:
            return None
        if a.bits == b.bits:
            return a
        return a if a.bits == 0 else b
    if policy == "discard-least-changes":
        return a if a.bits <= b.bits else b
    if policy.startswith("discard-node-"):
        return {"alpha": a, "beta": b}.get(policy[len("discard-node-"):])
    return None


def expected(a: Side, b: Side, pol: SplitBrainPolicy) -> tuple[Side | None, dict[str, list],
                                                                bool, bool]:
    """(the side whose changes are discarded, or None; handlers per node; the loser was
    demoted by call-pri-lost-after-sb; the loser could not be demoted: it refuses)."""
    handlers: dict[str, list] = {"alpha": ["initial-split-brain"], "beta": ["initial-split-brain"]}
    l0 = loser_0pri(pol.after_sb_0pri, a, b)
    prim = [s for s in (a, b) if s.primary]
    loser: Side | None
    if not prim:
        loser = l0
    elif len(prim) == 1:
        p = prim[0]
        s = b if p is a else a
        loser = {"disconnect": None, "consensus": s if l0 is s else None,
                 "violently-as0p": l0, "discard-secondary": s,
                 "call-pri-lost-after-sb": l0}[pol.after_sb_1pri]
    else:
        loser = {"disconnect": None, "violently-as0p": l0,
                 "call-pri-lost-after-sb": l0}[pol.after_sb_2pri]
    call = pol.after_sb_1pri if len(prim) == 1 else pol.after_sb_2pri
    demoted = False
    if loser is not None and loser.primary and call == "call-pri-lost-after-sb":
        if loser.may_demote:
            demoted = True
        else:           # it cannot give up Primary: it drops the connection, whatever the peer
            handlers[loser.name] += ["pri-lost-after-sb", "split-brain"]
            return loser, handlers, False, True
    if loser is None and a.discard != b.discard:
        loser = a if a.discard else b
    if loser is None:
        for h in handlers.values():
            h.append("split-brain")
    return loser, handlers, demoted, False


sides = st.builds(Side, st.just(""), st.booleans(), st.booleans(), st.integers(0, 3),
                  st.booleans(), st.booleans())
policies = st.builds(SplitBrainPolicy, st.sampled_from(P0), st.sampled_from(P1),
                     st.sampled_from(P2), st.sampled_from(RR))


@settings(max_examples=2000, deadline=None)
@given(sides, sides, policies)
def test_both_sides_agree_with_the_policy_table(a, b, pol):
    a = Side("alpha", *[getattr(a, f) for f in ("primary", "was_primary", "bits", "discard",
                                                "may_demote")])
    b = Side("beta", *[getattr(b, f) for f in ("primary", "was_primary", "bits", "discard",
                                               "may_demote")])
    if a.discard and b.discard:
        return          # refused earlier, in the handshake ("incompatible discard-my-data")
    va, vb = verdicts(a, b, pol)
    loser, handlers, demoted, refuses = expected(a, b, pol)
    assert va.split_brain and vb.split_brain
    if refuses:
        assert loser is not None
        vw, vl = (vb, va) if loser is a else (va, vb)
        assert vl.decision is D.SplitBrain and list(vl.handlers) == handlers[loser.name]
        assert vw.decision is D.BitmapSyncSource      # its SYNC_DECISION meets our refusal
        return
    if loser is None:
        assert va.decision is vb.decision is D.SplitBrain
        assert va.reason == "Split-Brain detected but unresolved, dropping connection!"
        assert list(va.handlers) == handlers["alpha"] and list(vb.handlers) == handlers["beta"]
        return
    winner = b if loser is a else a
    vw, vl = (va, vb) if winner is a else (vb, va)
    assert vw.decision is D.BitmapSyncSource
    assert not vw.demote and list(vw.handlers) == handlers[winner.name]
    assert vl.demote is demoted
    still_primary = loser.primary and not vl.demote
    if still_primary and pol.rr_conflict != "violently":
        assert vl.decision is D.RoleConflict
        assert vl.reason == "I shall become SyncTarget, but I am primary!"
        extra = ["pri-lost"] if pol.rr_conflict == "call-pri-lost" else []
        assert list(vl.handlers) == handlers[loser.name] + extra
    else:
        assert vl.decision is D.BitmapSyncTarget
        assert list(vl.handlers) == handlers[loser.name]
        if still_primary:
            assert "violating the stable-data assumption" in vl.reason
        assert "Sync from peer node" in vl.reason
    assert "Sync from this node" in vw.reason


def S(name, primary=False, was_primary=False, bits=0, discard=False, may_demote=False):
    return Side(name, primary, was_primary, bits, discard, may_demote)


@pytest.mark.parametrize("p0,a,b,winner", [
    ("discard-zero-changes", S("alpha", bits=0), S("beta", bits=7), "beta"),
    ("discard-zero-changes", S("alpha", bits=3), S("beta", bits=0), "alpha"),
    ("discard-least-changes", S("alpha", bits=3), S("beta", bits=7), "beta"),
    ("discard-younger-primary", S("alpha", was_primary=True, bits=1), S("beta", bits=9), "alpha"),
    ("discard-older-primary", S("alpha", was_primary=True, bits=9), S("beta", bits=1), "beta"),
    ("discard-node-beta", S("alpha", bits=1), S("beta", bits=9), "alpha"),
])
def test_0pri_table(p0, a, b, winner):
    va, vb = verdicts(a, b, SplitBrainPolicy(after_sb_0pri=p0))
    src = va if winner == "alpha" else vb
    assert src.decision is D.BitmapSyncSource
    assert src.reason == ("Split-Brain detected, 0 primaries, automatically solved. "
                          "Sync from this node")
    assert src.handlers == ("initial-split-brain",)


def test_younger_primary_undecided_falls_back_to_least_changes_and_says_so():
    va, _ = verdicts(S("alpha", bits=1), S("beta", bits=9),
                     SplitBrainPolicy(after_sb_0pri="discard-younger-primary"))
    assert va.decision is D.BitmapSyncTarget
    assert va.reason.startswith("Discard younger/older primary did not find a decision, using "
                                "discard-least-changes instead. Split-Brain detected, 0 ")


def test_call_pri_lost_after_sb_demotes_a_primary_nobody_holds():
    pol = SplitBrainPolicy(after_sb_0pri="discard-least-changes",
                           after_sb_1pri="call-pri-lost-after-sb")
    a = S("alpha", primary=True, bits=1, may_demote=True)
    va, vb = verdicts(a, S("beta", bits=9), pol)
    assert va.demote and va.decision is D.BitmapSyncTarget and vb.decision is D.BitmapSyncSource
    assert va.reason == ("Successfully gave up primary role. Split-Brain detected, 1 primaries, "
                         "automatically solved. Sync from peer node")
    held, vb = verdicts(S("alpha", primary=True, bits=1), S("beta", bits=9), pol)
    assert held.decision is D.SplitBrain and not held.demote
    assert held.handlers == ("initial-split-brain", "pri-lost-after-sb", "split-brain")
    assert vb.decision is D.BitmapSyncSource     # the handshake then drops on both sides


def test_unrelated_split_brain_needs_always_asbp_and_then_syncs_fully():
    loc = UuidReport(GenerationUuids(CUR_A, 0x5555555555555550, (PARENT, 0)), bits=0)
    peer = UuidReport(GenerationUuids(CUR_B, 0x6666666666666660, (PARENT, 0)), bits=4)
    kw = dict(local_inconsistent=False, peer_inconsistent=False, resolve_conflicts=True)
    pol = SplitBrainPolicy(after_sb_0pri="discard-zero-changes")
    v = sync_handshake(loc, peer, policy=pol, **kw)
    assert v.decision is D.SplitBrainUnrelated and v.handlers[-1] == "split-brain"
    v = sync_handshake(loc, peer, policy=SplitBrainPolicy("discard-zero-changes",
                                                          always_asbp=True), **kw)
    assert v.decision is D.FullSyncTarget
    assert v.reason.endswith("Doing a full sync, since UUIDs where ambiguous.")


def _pair(pol, *, a_primary, a_bits, b_bits, a_may_demote):
    from replica.bitmap import Bitmap
    from replica.protocol.repl import HelloInfo, ReplHandshake
    from replica.states import DiskState, Role
    from tests.unit.test_repl_handshake import run_pair
    size = 1 << 20

    def side(name, cur, primary, bits, init, demote):
        bm = Bitmap(size)
        bm.set_range(0, bits * 4096)
        return ReplHandshake(HelloInfo(name, size, GenerationUuids(cur | primary, PARENT),
                                       Role.Primary if primary else Role.Secondary,
                                       DiskState.UpToDate, bits=bits), secret=None,
                             is_initiator=init, bitmap_source=bm.encode, policy=pol,
                             may_demote=demote)
    ea, eb = run_pair(side("alpha", CUR_A, a_primary, a_bits, True, a_may_demote),
                      side("beta", CUR_B, False, b_bits, False, False))
    return ea[-1].verdict, eb[-1].verdict


def test_through_the_handshake_a_refused_demotion_drops_both_sides():
    pol = SplitBrainPolicy(after_sb_0pri="discard-least-changes",
                           after_sb_1pri="call-pri-lost-after-sb")
    va, vb = _pair(pol, a_primary=True, a_bits=1, b_bits=9, a_may_demote=False)
    assert va.decision is D.SplitBrain and va.handlers[-2:] == ("pri-lost-after-sb", "split-brain")
    # beta had resolved it: it drops too, and ran only initial-split-brain
    assert vb.decision.drops_connection and vb.split_brain
    assert vb.handlers == ("initial-split-brain",)
    va, vb = _pair(pol, a_primary=True, a_bits=1, b_bits=9, a_may_demote=True)
    assert va.decision is D.BitmapSyncTarget and va.demote
    assert vb.decision is D.BitmapSyncSource and not vb.demote
