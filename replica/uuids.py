# SPDX-License-Identifier: GPL-2.0-or-later
"""Generation UUIDs (DRBD 8.4 "GI tuple") and the resync decision taken on connect.

Owns: `GenerationUuids` (current, bitmap, history[2]) and its lifecycle transitions, the flag
sets that travel with them (`MdFlag` on disk, `UuidFlag` on the wire), and `uuid_compare` /
`sync_handshake`, a faithful port of DRBD 8.4 `drbd_uuid_compare()` and the decision part of
`drbd_sync_handshake()` (drbd-reference 1.3, 1.6). Pure: randomness comes from an injected
`rng(n) -> bytes` (os.urandom in the daemon, a seeded generator in tests).

Lifecycle (who changes what, DRBD 8.4 semantics)::

    create-md                      current = JUST_CREATED (4), bitmap = 0, history = 0, 0
    new_current (promote while disconnected, primary lost peer, forced promote)
                                   bitmap = old current (if bitmap was 0), current = random
    start_resync_source            history <- old bitmap; bitmap = old bitmap + 2^48 (sync UUID)
    start_resync_target(sync_uuid) current = sync_uuid, bitmap = 0
    finish_resync_source           history <- bitmap; bitmap = 0
    finish_resync_target(source)   adopt the source's tuple
    skip_initial_sync (new-current-uuid --clear-bitmap, Connected, both JUST_CREATED)
                                   both: current = same new UUID, bitmap = 0, UpToDate/UpToDate

The lowest bit of the current UUID is set while Primary (DRBD's `_drbd_uuid_set`); every
comparison masks it off.
"""
import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

UUID_JUST_CREATED = 0x0000000000000004
UUID_NEW_BM_OFFSET = 0x0001000000000000
_MASK64 = (1 << 64) - 1

Rng = Callable[[int], bytes]


class MdFlag(enum.IntFlag):
    """Superblock flags, DRBD 8.4 `MDF_*` values (drbdmeta prints them in `uuid { flags }`)."""

    CONSISTENT = 1 << 0
    PRIMARY_IND = 1 << 1
    CONNECTED_IND = 1 << 2
    FULL_SYNC = 1 << 3
    WAS_UP_TO_DATE = 1 << 4
    PEER_OUT_DATED = 1 << 5
    CRASHED_PRIMARY = 1 << 6
    AL_CLEAN = 1 << 7
    AL_DISABLED = 1 << 8


class UuidFlag(enum.IntFlag):
    """Flags sent with the UUIDs in the handshake, DRBD `P_UUIDS` `uuid_flags` values."""

    DISCARD_MY_DATA = 1
    CRASHED_PRIMARY = 2
    INCONSISTENT = 4
    SKIP_INITIAL_SYNC = 8


def _strip(u: int) -> int:
    return u & ~1 & _MASK64


def random_uuid(rng: Rng) -> int:
    """A fresh 64-bit generation UUID, never 0 or JUST_CREATED, role bit clear."""
    while True:
        u = _strip(int.from_bytes(rng(8), "big"))
        if u not in (0, UUID_JUST_CREATED):
            return u


@dataclass(frozen=True, slots=True)
class GenerationUuids:
    current: int = UUID_JUST_CREATED
    bitmap: int = 0
    history: tuple[int, int] = (0, 0)

    def __post_init__(self):
        for name, v in (("current", self.current), ("bitmap", self.bitmap),
                        ("history[0]", self.history[0]), ("history[1]", self.history[1])):
            if not 0 <= v <= _MASK64:
                raise ValueError(f"uuids: {name} out of range: {v!r}")
        if len(self.history) != 2:
            raise ValueError(f"uuids: history must have 2 entries: {self.history!r}")

    def text(self) -> str:
        """DRBD's log format: `CURRENT:BITMAP:HISTORY0:HISTORY1` in upper-case hex."""
        return ":".join(f"{u:016X}" for u in (self.current, self.bitmap, *self.history))

    def with_role(self, primary: bool) -> "GenerationUuids":
        """Set/clear the role bit of the current UUID, as DRBD does on every update."""
        cur = self.current | 1 if primary else _strip(self.current)
        return replace(self, current=cur)

    def _push_history(self, u: int) -> tuple[int, int]:
        if u in (0, UUID_JUST_CREATED):
            return self.history
        return (u, self.history[0])

    def new_current(self, rng: Rng, *, primary: bool = True) -> "GenerationUuids":
        """Start a new data generation (drbd_uuid_new_current).

        The old current UUID becomes the bitmap UUID: the bitmap from now on records what
        changed since the generation the peer still has. If a bitmap UUID is already set the
        bitmap is still relative to it, so it is kept and the old current goes to history
        (DRBD 8.4 would overwrite it and warn "bm UUID was already set").
        """
        cur = random_uuid(rng) | (1 if primary else 0)
        if self.bitmap == 0:
            # keeps the old role bit: after-sb discard-younger/older-primary reads it
            return GenerationUuids(cur, self.current, self.history)
        return GenerationUuids(cur, self.bitmap, self._push_history(_strip(self.current)))

    def next_sync_uuid(self) -> int | None:
        """The sync UUID `start_resync_source` will pick on this tuple; None if it is random."""
        if self.bitmap in (0, UUID_JUST_CREATED):
            return None
        return _strip((self.bitmap + UUID_NEW_BM_OFFSET) & _MASK64)

    def start_resync_source(self, rng: Rng) -> tuple["GenerationUuids", int]:
        """drbd_gen_and_send_sync_uuid: returns (new uuids, sync UUID to send to the target)."""
        old = self.bitmap
        sync = self.next_sync_uuid()
        if sync is None:
            sync = random_uuid(rng)
        return GenerationUuids(self.current, sync, self._push_history(old)), sync

    def start_resync_target(self, sync_uuid: int) -> "GenerationUuids":
        """The target's data is now the sync generation, half written (receive_sync_uuid)."""
        return GenerationUuids(_strip(sync_uuid), 0, self.history)

    def finish_resync_source(self) -> "GenerationUuids":
        """drbd_uuid_set_bm(0): the bitmap generation is history, the peers are equal again."""
        if self.bitmap == 0:
            return self
        return GenerationUuids(self.current, 0, self._push_history(self.bitmap))

    def finish_resync_target(self, source_final: "GenerationUuids", *,
                             primary: bool = False) -> "GenerationUuids":
        """The target adopts the source's whole tuple (UG8.4 "Generation Identifiers")."""
        return GenerationUuids(source_final.current, 0, source_final.history).with_role(primary)

    def skip_initial_sync(self, rng: Rng) -> "GenerationUuids":
        """`new-current-uuid --clear-bitmap` on a just-created, Connected pair (this side).

        drbd_adm_new_c_uuid: rotate, new current, then clear the bitmap UUID: both disks are
        declared identical (e.g. both blank). The peer adopts our current via
        `accept_skip_initial_sync`.
        """
        if _strip(self.current) != UUID_JUST_CREATED:
            raise ValueError("new-current-uuid --clear-bitmap: not a just-created device: "
                             f"current={self.current:016X}")
        return GenerationUuids(random_uuid(rng), 0, self.history)

    def accept_skip_initial_sync(self, peer_current: int) -> "GenerationUuids":
        """Peer side of skip-initial-sync ("Accepted new current UUID, preparing to skip ...")."""
        return GenerationUuids(_strip(peer_current), 0, self.history)


class SyncDecision(enum.Enum):
    """Outcome of uuid_compare/sync_handshake; `.hg` is DRBD's integer result."""

    NoSync = 0
    BitmapSyncSource = 1
    BitmapSyncTarget = -1
    FullSyncSource = 2
    FullSyncTarget = -2
    SplitBrain = 100                 # common parent (bitmap UUIDs equal): auto-recoverable
    SplitBrainUnrelated = -100       # no common bitmap ancestor: never auto-recovered
    Unrelated = -1000                # no UUID in common: "Unrelated data, aborting!"
    RoleConflict = -1001             # "I shall become SyncTarget, but I am primary!"
    SourceInconsistent = -1002       # "I shall become SyncSource, but I am inconsistent!"

    def __str__(self) -> str:
        return self.name

    @property
    def hg(self) -> int:
        return self.value

    @property
    def is_sync_source(self) -> bool:
        return self in (SyncDecision.BitmapSyncSource, SyncDecision.FullSyncSource)

    @property
    def is_sync_target(self) -> bool:
        return self in (SyncDecision.BitmapSyncTarget, SyncDecision.FullSyncTarget)

    @property
    def is_full(self) -> bool:
        return self in (SyncDecision.FullSyncSource, SyncDecision.FullSyncTarget)

    @property
    def is_bitmap(self) -> bool:
        return self in (SyncDecision.BitmapSyncSource, SyncDecision.BitmapSyncTarget)

    @property
    def drops_connection(self) -> bool:
        return self in (SyncDecision.SplitBrain, SyncDecision.SplitBrainUnrelated,
                        SyncDecision.Unrelated, SyncDecision.RoleConflict,
                        SyncDecision.SourceInconsistent)

    def mirror(self) -> "SyncDecision":
        """The decision the peer must reach for the same pair of tuples."""
        return _MIRROR.get(self, self)


_MIRROR = {
    SyncDecision.BitmapSyncSource: SyncDecision.BitmapSyncTarget,
    SyncDecision.BitmapSyncTarget: SyncDecision.BitmapSyncSource,
    SyncDecision.FullSyncSource: SyncDecision.FullSyncTarget,
    SyncDecision.FullSyncTarget: SyncDecision.FullSyncSource,
}

# DRBD 8.4 rule numbers with DRBD 9's rule names where one exists (logged by the daemon as
# "uuid_compare()=BitmapSyncTarget by rule 50 (bitmap-peer)").
RULE_NAMES = {
    10: "just-created-both", 20: "just-created-self", 30: "just-created-peer",
    34: "sync-source-missed-finish", 35: "sync-target-missed-finish",
    36: "sync-source-peer-missed-uuid", 37: "sync-target-missed-uuid",
    40: "reconnected", 41: "crashed-primary", 42: "crashed-primary-both-off",
    50: "bitmap-peer", 51: "sync-target-missed-start", 60: "history-peer",
    70: "bitmap-self", 71: "sync-source-missed-start", 80: "history-self",
    90: "bitmap-both", 100: "history-both", 1000: "unrelated",
}


@dataclass(frozen=True, slots=True)
class UuidReport:
    """One side's input to the decision: its tuple, flags, role and disk state name."""

    uuids: GenerationUuids
    flags: UuidFlag = UuidFlag(0)
    primary: bool = False
    bits: int = 0                    # dirty bits in the bitmap: "changes" for after-sb policies
    name: str = ""                   # node name, for after-sb-0pri discard-node-NAME


def uuid_compare(local: UuidReport, peer: UuidReport, *,
                 resolve_conflicts: bool) -> tuple[SyncDecision, int]:
    """DRBD 8.4 drbd_uuid_compare(): (decision, rule number).

    `resolve_conflicts`: the tie-breaker when both nodes crashed as Primary (DRBD sets it on
    exactly one side of a connection; we use the side that initiated the TCP connection).
    """
    lu, pu = local.uuids, peer.uuids
    self_c, peer_c = _strip(lu.current), _strip(pu.current)

    if self_c == UUID_JUST_CREATED and peer_c == UUID_JUST_CREATED:
        return SyncDecision.NoSync, 10
    if self_c in (UUID_JUST_CREATED, 0) and peer_c != UUID_JUST_CREATED:
        return SyncDecision.FullSyncTarget, 20
    if self_c != UUID_JUST_CREATED and peer_c in (UUID_JUST_CREATED, 0):
        return SyncDecision.FullSyncSource, 30

    if self_c == peer_c:
        if pu.bitmap == 0 and lu.bitmap != 0:
            # we were SyncSource; either the peer missed "resync finished" or our sync UUID
            rule = 34 if (_strip(lu.bitmap) == _strip(pu.history[0])
                          and _strip(lu.history[0]) == _strip(pu.history[1])) else 36
            return SyncDecision.BitmapSyncSource, rule
        if lu.bitmap == 0 and pu.bitmap != 0:
            rule = 35 if (_strip(lu.history[0]) == _strip(pu.bitmap)
                          and _strip(lu.history[1]) == _strip(pu.history[0])) else 37
            return SyncDecision.BitmapSyncTarget, rule
        # equal current UUIDs, no bitmap UUIDs: a link hiccup, or a crash of a Primary
        rct = (1 if UuidFlag.CRASHED_PRIMARY in local.flags else 0) + \
              (2 if UuidFlag.CRASHED_PRIMARY in peer.flags else 0)
        if rct == 0:
            return SyncDecision.NoSync, 40
        if local.primary or peer.primary:
            if local.primary and peer.primary:
                return SyncDecision.SplitBrainUnrelated, 41
            return (SyncDecision.BitmapSyncSource if local.primary
                    else SyncDecision.BitmapSyncTarget), 41
        if rct == 1:
            return SyncDecision.BitmapSyncSource, 42
        if rct == 2:
            return SyncDecision.BitmapSyncTarget, 42
        return (SyncDecision.BitmapSyncTarget if resolve_conflicts
                else SyncDecision.BitmapSyncSource), 42

    if _strip(pu.bitmap) == self_c:
        return SyncDecision.BitmapSyncTarget, 50
    if _strip(pu.history[0]) == self_c and \
            (_strip(pu.history[0]) + UUID_NEW_BM_OFFSET) & _MASK64 == _strip(pu.bitmap):
        # the peer started a resync as source but its sync UUID never reached us
        return SyncDecision.BitmapSyncTarget, 51
    if any(_strip(h) == self_c for h in pu.history if h):
        return SyncDecision.FullSyncTarget, 60
    if _strip(lu.bitmap) == peer_c:
        return SyncDecision.BitmapSyncSource, 70
    if _strip(lu.history[0]) == peer_c and \
            (_strip(lu.history[0]) + UUID_NEW_BM_OFFSET) & _MASK64 == _strip(lu.bitmap):
        return SyncDecision.BitmapSyncSource, 71
    if any(_strip(h) == peer_c for h in lu.history if h):
        return SyncDecision.FullSyncSource, 80
    if lu.bitmap != 0 and _strip(lu.bitmap) == _strip(pu.bitmap):
        return SyncDecision.SplitBrain, 90
    lh = {_strip(h) for h in lu.history if h}
    if any(_strip(h) in lh for h in pu.history if h):
        return SyncDecision.SplitBrainUnrelated, 100
    return SyncDecision.Unrelated, 1000


@dataclass(frozen=True, slots=True)
class SplitBrainPolicy:
    """net options deciding what happens after a split brain (drbd.conf net section).

    after_sb_0pri: disconnect | discard-younger-primary | discard-older-primary |
                   discard-zero-changes | discard-least-changes | discard-node-NAME
    after_sb_1pri: disconnect | consensus | violently-as0p | discard-secondary |
                   call-pri-lost-after-sb
    after_sb_2pri: disconnect | violently-as0p | call-pri-lost-after-sb
    rr_conflict:   disconnect | violently | call-pri-lost
    """

    after_sb_0pri: str = "disconnect"
    after_sb_1pri: str = "disconnect"
    after_sb_2pri: str = "disconnect"
    rr_conflict: str = "disconnect"
    always_asbp: bool = False

    @classmethod
    def from_net(cls, net) -> "SplitBrainPolicy":
        """From any object with the config's net option attribute names."""
        return cls(net.after_sb_0pri, net.after_sb_1pri, net.after_sb_2pri, net.rr_conflict,
                   net.always_asbp)


DISCONNECT = "disconnect"


def _recover_0p(policy: str, local: UuidReport, peer: UuidReport, resolve: bool) -> int:
    """drbd_asb_recover_0p(): 1 = sync from this node, -1 = from the peer, -100 = no decision."""
    me, them = local.uuids.bitmap & 1, peer.uuids.bitmap & 1
    if policy == "discard-younger-primary":
        if me == 0 and them == 1:
            return -1
        if me == 1 and them == 0:
            return 1
        policy = "discard-least-changes"
    elif policy == "discard-older-primary":
        if me == 0 and them == 1:
            return 1
        if me == 1 and them == 0:
            return -1
        policy = "discard-least-changes"
    if policy == "discard-zero-changes":
        if local.bits == 0 and peer.bits == 0:
            return -1 if resolve else 1
        if peer.bits == 0:
            return 1
        if local.bits == 0:
            return -1
        return -100
    if policy == "discard-least-changes":
        if local.bits != peer.bits:
            return -1 if local.bits < peer.bits else 1
        return -1 if resolve else 1
    if policy.startswith("discard-node-"):
        victim = policy[len("discard-node-"):]
        if victim == local.name:
            return -1
        if victim == peer.name:
            return 1
        return -100
    if policy == DISCONNECT:
        return -100
    raise ValueError(f"after-sb-0pri: unknown policy: {policy!r}")


def _recover(pol: SplitBrainPolicy, local: UuidReport, peer: UuidReport,
             resolve: bool) -> tuple[int, bool]:
    """drbd_asb_recover_{0,1,2}p(): (hg, this Primary must give up its role for hg to hold).

    The second value is call-pri-lost-after-sb choosing this node as the loser while it is
    Primary: DRBD then tries to demote it ("Successfully gave up primary role.") and, if it
    cannot (the device is open), runs the pri-lost-after-sb handler and leaves the split brain
    unresolved. `sync_handshake` does that part, knowing whether the demotion is possible.
    """
    pcount = int(local.primary) + int(peer.primary)
    as0p = _recover_0p(pol.after_sb_0pri, local, peer, resolve)
    if pcount == 0:
        return as0p, False
    if pcount == 1:
        p = pol.after_sb_1pri
        if p == DISCONNECT:
            return -100, False
        if p == "consensus":
            if (as0p == -1 and not local.primary) or (as0p == 1 and local.primary):
                return as0p, False
            return -100, False
        if p == "violently-as0p":
            return as0p, False
        if p == "discard-secondary":
            return (1 if local.primary else -1), False
        if p == "call-pri-lost-after-sb":
            return as0p, as0p == -1 and local.primary
        raise ValueError(f"after-sb-1pri: unknown policy: {p!r}")
    p = pol.after_sb_2pri
    if p == DISCONNECT:
        return -100, False
    if p == "violently-as0p":
        return as0p, False
    if p == "call-pri-lost-after-sb":
        return as0p, as0p == -1
    raise ValueError(f"after-sb-2pri: unknown policy: {p!r}")


@dataclass(frozen=True, slots=True)
class SyncVerdict:
    """The handshake's decision with its reasons, for the log line and `events`.

    `handlers` are run in this order when the verdict is applied (DRBD calls them at these
    points of drbd_sync_handshake): initial-split-brain when a split brain is detected (even
    if it is then resolved), pri-lost-after-sb when call-pri-lost-after-sb picked this Primary
    as the loser and it cannot give up its role, split-brain when the split brain stays
    unresolved, pri-lost when rr-conflict call-pri-lost refuses the SyncTarget role.
    `demote`: this Primary gives up its role before becoming SyncTarget (call-pri-lost-after-sb).
    """

    decision: SyncDecision
    rule: int
    compare: SyncDecision            # uuid_compare() before disk-state and split-brain rules
    reason: str
    split_brain: bool = False
    handlers: tuple[str, ...] = ()
    demote: bool = False

    @property
    def rule_name(self) -> str:
        return RULE_NAMES.get(self.rule, str(self.rule))


def sync_handshake(local: UuidReport, peer: UuidReport, *, local_inconsistent: bool,
                   peer_inconsistent: bool, resolve_conflicts: bool,
                   discard_my_data: bool = False,
                   policy: SplitBrainPolicy = SplitBrainPolicy(),
                   may_demote: bool = False) -> SyncVerdict:
    """DRBD 8.4 drbd_sync_handshake(), the decision part, in DRBD's order:

    1. uuid_compare(); "Unrelated data, aborting!"
    2. exactly one side Inconsistent: "Becoming sync source/target due to disk states"
    3. split brain: handler initial-split-brain; with a common parent (or any, with
       always-asbp) after-sb-{0,1,2}pri by the number of Primaries; call-pri-lost-after-sb
       demotes the losing Primary if `may_demote` (its device is not open), else runs
       pri-lost-after-sb and leaves the split brain unresolved (skipping step 4, where DRBD
       could end with two SyncSources)
    4. still split: `connect --discard-my-data` on exactly one side decides, else
       "Split-Brain detected but unresolved, dropping connection!" (handler split-brain)
    5. an Inconsistent node never becomes SyncSource; a Primary with consistent data becomes
       SyncTarget only with rr-conflict violently (call-pri-lost: handler pri-lost, refuse)
    `discard_my_data` must equal `UuidFlag.DISCARD_MY_DATA in local.flags`. Deviation from
    DRBD: a split brain without common bitmap ancestor, resolved by hand or policy, resyncs
    fully (DRBD would trust the bitmaps, which share no base there; DRBD doubles hg only for
    always-asbp: "Doing a full sync, since UUIDs where ambiguous.").
    """
    hg, rule = uuid_compare(local, peer, resolve_conflicts=resolve_conflicts)
    compare = hg
    if hg is SyncDecision.Unrelated:
        return SyncVerdict(hg, rule, compare, "Unrelated data, aborting!")
    reason = f"uuid_compare()={compare} by rule {rule} ({RULE_NAMES.get(rule, rule)})"
    if local_inconsistent != peer_inconsistent:
        full = hg in (SyncDecision.SplitBrainUnrelated, SyncDecision.FullSyncSource,
                      SyncDecision.FullSyncTarget)
        if peer_inconsistent:
            hg = SyncDecision.FullSyncSource if full else SyncDecision.BitmapSyncSource
            reason = "Becoming sync source due to disk states"
        else:
            hg = SyncDecision.FullSyncTarget if full else SyncDecision.BitmapSyncTarget
            reason = "Becoming sync target due to disk states"
    split_brain = hg in (SyncDecision.SplitBrain, SyncDecision.SplitBrainUnrelated)
    handlers: list[str] = []
    demote = False
    local_primary = local.primary
    if split_brain:
        handlers.append("initial-split-brain")
        forced = hg is SyncDecision.SplitBrainUnrelated
        auto = -100
        if not forced or policy.always_asbp:
            pcount = int(local.primary) + int(peer.primary)
            auto, pri_lost = _recover(policy, local, peer, resolve_conflicts)
            reason = ""
            uses_0pri = pcount == 0 or (pcount == 1 and policy.after_sb_1pri in (
                "consensus", "violently-as0p", "call-pri-lost-after-sb")) or (
                pcount == 2 and policy.after_sb_2pri != DISCONNECT)
            if uses_0pri and policy.after_sb_0pri in ("discard-younger-primary",
                                                      "discard-older-primary") \
                    and (local.uuids.bitmap & 1) == (peer.uuids.bitmap & 1):
                reason = ("Discard younger/older primary did not find a decision, using "
                          "discard-least-changes instead. ")
            if pri_lost and may_demote:
                demote, local_primary = True, False
                reason += "Successfully gave up primary role. "
            elif pri_lost:
                handlers.append("pri-lost-after-sb")
                auto = -100
            if auto in (1, -1):
                reason += (f"Split-Brain detected, {pcount} primaries, automatically solved. "
                           f"Sync from {'this' if auto > 0 else 'peer'} node")
                if forced:
                    reason += "; Doing a full sync, since UUIDs where ambiguous."
        if auto not in (1, -1) and "pri-lost-after-sb" not in handlers:
            # (not after a failed call-pri-lost-after-sb: the peer already took the policy's
            # answer and would not take discard-my-data's; both must drop the connection)
            peer_discards = UuidFlag.DISCARD_MY_DATA in peer.flags
            if discard_my_data and not peer_discards:
                auto = -1
            elif peer_discards and not discard_my_data:
                auto = 1
            if auto in (1, -1):
                reason = ("Split-Brain detected, manually solved. Sync from "
                          f"{'this' if auto > 0 else 'peer'} node")
        if auto not in (1, -1):
            handlers.append("split-brain")
            return SyncVerdict(hg, rule, compare,
                               "Split-Brain detected but unresolved, dropping connection!",
                               True, tuple(handlers))
        if auto > 0:
            hg = SyncDecision.FullSyncSource if forced else SyncDecision.BitmapSyncSource
        else:
            hg = SyncDecision.FullSyncTarget if forced else SyncDecision.BitmapSyncTarget
    if hg.is_sync_source and local_inconsistent:
        return SyncVerdict(SyncDecision.SourceInconsistent, rule, compare,
                           "I shall become SyncSource, but I am inconsistent!", split_brain,
                           tuple(handlers))
    if hg.is_sync_target and local_primary and not local_inconsistent:
        if policy.rr_conflict != "violently":
            if policy.rr_conflict == "call-pri-lost":
                handlers.append("pri-lost")
            return SyncVerdict(SyncDecision.RoleConflict, rule, compare,
                               "I shall become SyncTarget, but I am primary!", split_brain,
                               tuple(handlers))
        reason += "; Becoming SyncTarget, violating the stable-data assumption"
    return SyncVerdict(hg, rule, compare, reason, split_brain, tuple(handlers), demote)
