# SPDX-License-Identifier: GPL-2.0-or-later
"""After-split-brain policies with real split brains: two nodes in two namespaces, the link cut,
each side promoted and written through its NBD export, the roles set as the policy needs, the
link back. The policy's winner keeps its changes; the resync covers both sides' writes (blocks
written only on the losing side come back from the winner); the disks end identical; the
handlers ran in DRBD's order with its environment.

One pair serves every case (`down`, new net options, `up`), each case leaving it Connected and
UpToDate/UpToDate again, so a case costs a partition and a reconnect (short net timeouts)."""
import os
import time
from dataclasses import dataclass, field

import pytest

from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.netns import NODES, MiB, TwoNodes

pytestmark = pytest.mark.root

NET = "protocol C; ping-int 1; ping-timeout 2; timeout 5; connect-int 1;"
HANDLERS = ("initial-split-brain", "split-brain", "pri-lost-after-sb", "pri-lost",
            "before-resync-target", "after-resync-target")
# each handler appends one line: its name and the environment DRBD gives it; a file
# `fail-before-resync-target` in the node's directory makes before-resync-target exit 1
_LINE = "$DRBD_RESOURCE $DRBD_PEER $DRBD_MY_ADDRESS $DRBD_PEER_ADDRESS $DRBD_PEER_AF"
HANDLER_TEXT = " ".join(
    f'{h} "echo {h} {_LINE} >> {{dir}}/{{node}}/handlers.log'
    + ('; test ! -e {dir}/{node}/fail-before-resync-target' if h == 'before-resync-target'
       else '') + '";' for h in HANDLERS)
REGION = {"alpha": 1 * MiB, "beta": 4 * MiB, "both": 8 * MiB}


class Pair:
    def __init__(self, t: TwoNodes):
        self.t = t
        self.policy = ""
        self.size = t.data_size()
        self._mark = {n: 0 for n in NODES}

    def log(self, node: str) -> str:
        """The node's log since this case began."""
        return self.t.log(node)[self._mark[node]:]

    def configure(self, policy: str) -> None:
        """Both nodes down, `net { NET policy }`, up, Connected UpToDate/UpToDate."""
        t = self.t
        if policy != self.policy:
            t.net = f"{NET} {policy}"
            for node in NODES:
                t.ctl(node, "down", "r0")
                t.write_config(node)
            for node in NODES:
                t.ctl(node, "up", "r0")
            self.policy = policy
        t.wait_synced(timeout=20)
        for node in NODES:
            (t.dir / node / "handlers.log").unlink(missing_ok=True)
            self._mark[node] = len(t.log(node))

    def write(self, node: str, off: int, data: bytes) -> None:
        import nbd
        h = nbd.NBD()
        h.connect_uri(self.t.uri(node))
        try:
            h.pwrite(data, off)
            h.flush()
        finally:
            h.shutdown()

    def handlers(self, node: str) -> list[list[str]]:
        try:
            text = (self.t.dir / node / "handlers.log").read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines()]

    def handler_names(self, node: str) -> list[str]:
        return [line[0] for line in self.handlers(node)]


@pytest.fixture(scope="module")
def pair():
    requires_root()
    requires_commands("ip")
    requires_module("nbd")
    with TwoNodes(size=12 * MiB, net=NET, disk="resync-rate 200M;",
                  handlers=HANDLER_TEXT) as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=10)
        yield Pair(t)


@dataclass
class Case:
    policy: str
    primary_at_cut: str | None        # Primary when the link breaks
    writes: dict[str, int]            # node -> bytes it writes at its region while split
    primary_at_connect: tuple[str, ...]
    winner: str | None                # None: unresolved, both StandAlone
    log: str                          # in the winner's log (unresolved: in both)
    loser_handlers: list[str] = field(default_factory=list)
    winner_handlers: list[str] = field(default_factory=lambda: ["initial-split-brain"])
    loser_log: str = ""
    hold: bool = False                # the loser's export stays open (it cannot step down)


K = 1024
SOLVED = "Split-Brain detected, {} primaries, automatically solved. Sync from this node"
TARGET = ["initial-split-brain", "before-resync-target", "after-resync-target"]
CASES = {
    # after-sb-0pri: both were Primary during the split, both Secondary again at reconnect
    "0pri-discard-zero-changes": Case(
        "after-sb-0pri discard-zero-changes;", None, {"alpha": 256 * K, "beta": 0}, (),
        "alpha", SOLVED.format(0), TARGET),
    "0pri-discard-least-changes": Case(
        "after-sb-0pri discard-least-changes;", None, {"alpha": 256 * K, "beta": MiB}, (),
        "beta", SOLVED.format(0), TARGET),
    "0pri-discard-younger-primary": Case(   # alpha Primary at the cut: beta is the younger
        "after-sb-0pri discard-younger-primary;", "alpha", {"alpha": 64 * K, "beta": MiB}, (),
        "alpha", SOLVED.format(0), TARGET),
    "0pri-discard-older-primary": Case(
        "after-sb-0pri discard-older-primary;", "alpha", {"alpha": MiB, "beta": 64 * K}, (),
        "beta", SOLVED.format(0), TARGET),
    "0pri-discard-node-beta": Case(
        "after-sb-0pri discard-node-beta;", None, {"alpha": 64 * K, "beta": MiB}, (),
        "alpha", SOLVED.format(0), TARGET),
    "0pri-disconnect": Case(
        "after-sb-0pri disconnect;", None, {"alpha": 64 * K, "beta": 64 * K}, (),
        None, "Split-Brain detected but unresolved, dropping connection!",
        ["initial-split-brain", "split-brain"], ["initial-split-brain", "split-brain"]),
    # after-sb-1pri
    "1pri-discard-secondary": Case(         # the Secondary's many changes are discarded
        "after-sb-0pri discard-least-changes; after-sb-1pri discard-secondary;", None,
        {"alpha": 64 * K, "beta": MiB}, ("alpha",), "alpha", SOLVED.format(1), TARGET),
    "1pri-consensus": Case(                 # 0pri discards the Secondary too: agreed
        "after-sb-0pri discard-least-changes; after-sb-1pri consensus;", None,
        {"alpha": 64 * K, "beta": MiB}, ("beta",), "beta", SOLVED.format(1), TARGET),
    "1pri-consensus-disagrees": Case(       # 0pri would discard the Primary: unresolved
        "after-sb-0pri discard-least-changes; after-sb-1pri consensus;", None,
        {"alpha": 64 * K, "beta": MiB}, ("alpha",), None,
        "Split-Brain detected but unresolved, dropping connection!",
        ["initial-split-brain", "split-brain"], ["initial-split-brain", "split-brain"]),
    "1pri-violently-as0p": Case(            # 0pri discards the Secondary beta
        "after-sb-0pri discard-least-changes; after-sb-1pri violently-as0p;", None,
        {"alpha": MiB, "beta": 64 * K}, ("alpha",), "alpha", SOLVED.format(1), TARGET),
    "1pri-call-pri-lost-after-sb": Case(    # the losing Primary nobody holds steps down
        "after-sb-0pri discard-least-changes; after-sb-1pri call-pri-lost-after-sb;", None,
        {"alpha": 64 * K, "beta": MiB}, ("alpha",), "beta", SOLVED.format(1), TARGET,
        loser_log="Successfully gave up primary role."),
    # after-sb-2pri: both still Primary at reconnect
    "2pri-violently-as0p-rr-violently": Case(
        "after-sb-0pri discard-least-changes; after-sb-2pri violently-as0p; "
        "rr-conflict violently;", None, {"alpha": 64 * K, "beta": MiB}, ("alpha", "beta"),
        "beta", SOLVED.format(2), TARGET,
        loser_log="Becoming SyncTarget, violating the stable-data assumption"),
    "2pri-call-pri-lost-after-sb": Case(
        "after-sb-0pri discard-least-changes; after-sb-2pri call-pri-lost-after-sb;", None,
        {"alpha": MiB, "beta": 64 * K}, ("alpha", "beta"), "alpha", SOLVED.format(2), TARGET,
        loser_log="Successfully gave up primary role."),
    "2pri-violently-as0p-rr-call-pri-lost": Case(   # the Primary refuses to be SyncTarget
        "after-sb-0pri discard-least-changes; after-sb-2pri violently-as0p; "
        "rr-conflict call-pri-lost;", None, {"alpha": 64 * K, "beta": MiB}, ("alpha", "beta"),
        None, "", ["initial-split-brain", "pri-lost"], ["initial-split-brain"],
        loser_log="I shall become SyncTarget, but I am primary!"),
    "2pri-call-pri-lost-after-sb-held": Case(   # the loser's device is open: it stays Primary
        "after-sb-0pri discard-least-changes; after-sb-2pri call-pri-lost-after-sb;", None,
        {"alpha": 64 * K, "beta": MiB}, ("alpha", "beta"), None, "",
        ["initial-split-brain", "pri-lost-after-sb", "split-brain"], ["initial-split-brain"],
        loser_log="Split-Brain detected but unresolved, dropping connection!", hold=True),
}


def _wait_both(t: TwoNodes, pred, what: str, timeout: float = 20.0) -> None:
    for node in NODES:
        t.wait(node, pred, what, timeout)


def _resolve_by_hand(p: Pair, victim: str) -> None:
    """The user's guide's manual recovery; the pair is UpToDate/UpToDate again."""
    t = p.t
    survivor = "beta" if victim == "alpha" else "alpha"
    t.ctl(victim, "disconnect", "r0")
    deadline = time.monotonic() + 10     # an NBD client that just left may still be counted
    while t.ctl(victim, "secondary", "r0", check=False).returncode and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    t.ctl(victim, "secondary", "r0")     # (raises with the refusal if it never worked)
    t.ctl(victim, "connect", "--discard-my-data", "r0")
    t.ctl(survivor, "connect", "r0")
    t.wait_synced(timeout=20)
    assert t.disks_equal()
    for node in NODES:
        if t.status(node)["role"] == "Primary":
            t.ctl(node, "secondary", "r0")


def split_brain(p: Pair, case: Case, hold=None) -> dict[str, bytes]:
    """Cut, write with the case's roles, reconnect. Returns each node's data as it was just
    before the reconnect."""
    t = p.t
    if case.primary_at_cut:
        t.ctl(case.primary_at_cut, "primary", "r0")
    t.link(False)
    _wait_both(t, lambda s: s["connection"] == "Connecting", "the cut noticed")
    written: dict[str, bytes] = {}
    for node in NODES:                       # each Primary while split (a new data generation)
        if t.status(node)["role"] != "Primary":
            t.ctl(node, "primary", "--force", "r0")
        n = case.writes[node]
        if n:
            own = os.urandom(n)
            p.write(node, REGION[node], own)
            p.write(node, REGION["both"], own[:64 * K])
        written[node] = t.read_disk(node, 0, p.size)
    for node in NODES:
        if node not in case.primary_at_connect:
            t.ctl(node, "secondary", "r0")
    if hold is not None:
        hold.connect_uri(t.uri("alpha"))
    t.link(True)
    return written


@pytest.mark.parametrize("name", list(CASES))
def test_after_split_brain_policy(pair, name):
    case = CASES[name]
    p = pair
    p.configure(case.policy)
    t0 = time.monotonic()
    import nbd
    hold = nbd.NBD() if case.hold else None
    try:
        before = split_brain(p, case, hold)
        if case.winner is None:
            unresolved(p, case, before)
            return
    finally:
        if hold is not None:
            hold.shutdown()
            _resolve_by_hand(p, "alpha")
    resolved(p, case, before, t0, name)


def unresolved(p: Pair, case: Case, before: dict[str, bytes]) -> None:
    t = p.t
    _wait_both(t, lambda s: s["connection"] == "StandAlone", "dropped: StandAlone")
    for node in NODES:
        if case.log:
            assert case.log in p.log(node), p.log(node)[-2000:]
    loser = "alpha"                      # the cases make alpha the loser where there is one
    if case.loser_log:
        assert case.loser_log in p.log(loser), p.log(loser)[-2000:]
    want = {loser: case.loser_handlers, ("beta" if loser == "alpha" else "alpha"):
            case.winner_handlers}
    for node in NODES:
        t.wait(node, lambda s, node=node: p.handler_names(node) == want[node],
               f"handlers {want[node]}", 10)
    # nothing merged: each side still has exactly what it wrote
    for node in NODES:
        assert t.read_disk(node, 0, p.size) == before[node]
    if not case.hold:
        _resolve_by_hand(p, "alpha")


def resolved(p: Pair, case: Case, before: dict[str, bytes], t0: float, name: str) -> None:
    t = p.t
    winner = case.winner
    loser = "beta" if winner == "alpha" else "alpha"
    t.wait_synced(timeout=20)
    took = time.monotonic() - t0
    assert case.log in p.log(winner), p.log(winner)[-3000:]
    assert case.log.replace("this node", "peer node") in p.log(loser), p.log(loser)[-3000:]
    if case.loser_log:
        assert case.loser_log in p.log(loser)
    # the winner's changes survive, the loser's are gone, even where only the loser wrote
    assert t.read_disk(winner, 0, p.size) == before[winner]
    assert t.disks_equal(), f"first difference at {t.first_difference(p.size)}"
    if case.writes[loser]:
        assert before[loser] != before[winner]
    for node, want in ((winner, case.winner_handlers), (loser, case.loser_handlers)):
        t.wait(node, lambda s, node=node, want=want: p.handler_names(node) == want,
               f"handlers {want} (got {p.handler_names(node)})", 10)
    peer_addr = t.addr[winner]
    for line in p.handlers(loser):
        assert line[1:] == ["r0", winner, t.addr[loser], peer_addr, "ipv4"], line
    for node in NODES:
        if t.status(node)["role"] == "Primary":
            t.ctl(node, "secondary", "r0")
    print(f"{name}: split brain to UpToDate/UpToDate in {took:.1f} s")


def test_failing_before_resync_target_drops_the_connection(pair):
    p, t = pair, pair.t
    p.configure("after-sb-0pri discard-least-changes;")
    (t.dir / "alpha" / "fail-before-resync-target").touch()
    try:
        case = Case("", None, {"alpha": 64 * K, "beta": MiB}, (), "beta", "")
        before = split_brain(p, case)
        t.wait("alpha", lambda s: s["connection"] == "StandAlone", "alpha drops")
        assert "before-resync-target handler returned 1, dropping connection." in p.log("alpha")
        assert t.read_disk("alpha", 0, p.size) == before["alpha"]   # not touched
        assert p.handler_names("alpha")[:2] == ["initial-split-brain", "before-resync-target"]
    finally:
        (t.dir / "alpha" / "fail-before-resync-target").unlink()
    t.ctl("alpha", "connect", "r0")
    t.wait_synced(timeout=20)
    assert t.read_disk("alpha", 0, p.size) == before["beta"] and t.disks_equal()
