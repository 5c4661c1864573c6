# SPDX-License-Identifier: GPL-2.0-or-later
"""replica-crm-fence-peer / replica-crm-unfence-peer: resource-level fencing through Pacemaker's
CIB, the `fence-peer` / `after-resync-target` handlers for a replica resource managed as a
promotable clone of ocf:replica-ha:replica (what DRBD's crm-fence-peer.9.sh and
crm-unfence-peer.9.sh are for ocf:linbit:drbd)::

    resource r0 {
        net      { fencing resource-only; }      # 8.4 style: disk { fencing resource-only; }
        handlers { fence-peer "replica-crm-fence-peer";
                   after-resync-target "replica-crm-unfence-peer"; }   # or unfence-peer
    }

Fencing here means: forbid the peer to be promoted, with a location constraint that lets the
Promoted role run on this node only (a rule at -INFINITY for every other node)::

    <rsc_location rsc="CLONE" id="drbd-fence-by-handler-RES-CLONE">
      <rule role="Promoted" score="-INFINITY" id="drbd-fence-by-handler-RES-rule-CLONE">
        <expression attribute="#uname" operation="ne" value="THIS-NODE"
                    id="drbd-fence-by-handler-RES-expr-CLONE"/>
      </rule>
    </rsc_location>

The ids are DRBD's, so that tools and operators who know crm-fence-peer's constraint know
ours. CLONE is found in the CIB: the <clone> (or pre-2.0 <master>) whose primitive is
ocf:replica-ha:replica with the instance attribute resource=RES. After the resync the node that
was behind runs `after-resync-target` (or the fencing node `unfence-peer`, when no resync was
needed): the constraint goes once both disks are UpToDate.

Inputs. replicad runs the handler with DRBD's environment (replica/resource.py handler_env):
DRBD_RESOURCE, DRBD_PEER, and the states at the call, REPLICA_ROLE, REPLICA_DISK,
REPLICA_PEER_DISK. The handler must not ask replicad (`replicactl status`): a fence-peer run by
`replicactl primary` holds the resource's lock until it returns (DRBD's handler reads
/proc/drbd rather than netlink for the same reason). The cluster's view comes from
`cibadmin --query` (the peer's <node_state>, quorum, stonith-enabled, the clone, the existing
constraint), this node's name from `crm_node -n`, and a peer that the CIB shows online is
confirmed with `crmadmin -S PEER`.

The peer, from its <node_state> (Pacemaker 2.1: in_ccm="true|false" crmd="online|offline";
2.1.7+ write a timestamp for true/online), as crm-fence-peer.9.sh reads it::

    reachable     in the membership and its controller online, confirmed by crmadmin -S
    fenced        out of the membership, controller offline, expected="down": shut down
                  cleanly, or reset by STONITH
    unreachable   out of the membership or its controller offline, not expected down (a crash)
    unknown       no <node_state>, or online in the CIB without answering crmadmin -S after
                  --timeout seconds of polling (it is dying: Corosync has not noticed yet)

With stonith-enabled=true an unreachable peer is polled until it is fenced or --timeout.

The decision (`decide_fence`, pure; first match wins), with fence-peer's exit codes
(replica/fencing.py applies them as DRBD's kernel does)::

    no clone manages RES                          1  nothing placed
    our constraint there, allowing this node      4  "suitable constraint already placed"
    our constraint there, rejecting this node     6  the peer fenced us first: it is active
    no quorum                                     1  "I don't have quorum"
    peer disk UpToDate                            1  "All peer disks are UpToDate"
    peer disk Outdated/Inconsistent/worse         3  nothing to fence
    my disk state unknown                         1
    peer reachable, my disk UpToDate/Consistent   4  constraint placed (the peer stays up,
                                                     but can no longer be promoted)
    peer fenced, my disk UpToDate                 7  constraint placed
    peer unreachable/unknown, my disk UpToDate    5  constraint placed
    otherwise (my disk not UpToDate, peer away)   5  nothing placed: replicad then refuses
                                                     promotion ("doing nothing since disk !=
                                                     UpToDate"), as DRBD does

DRBD's script exits 1 where the existing constraint rejects this node (its comment: "maybe 6");
we exit 6, whose meaning ("peer is active", outdate myself) is exactly that case.

Unfence (`decide_unfence`): no constraint, nothing to do (0); both disks UpToDate, the
constraint is deleted (0); else it stays (0, "expected constraint still in place"). Both are
idempotent and safe to run by hand with the same environment.

Log lines, DRBD's words, go to stderr, syslog (--logfacility, as DRBD's redirect_to_logger;
when /dev/log exists) and --logfile: replicad's own stderr is /dev/null once it daemonizes.
"""
from __future__ import annotations

import argparse
import enum
import logging
import logging.handlers
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

ID_PREFIX = "drbd-fence-by-handler"
AGENT = ("ocf", "replica-ha", "replica")
EXIT_FAILED = 1
PEER_DISK_WORSE = ("Outdated", "Inconsistent", "Diskless", "Failed")
SYSLOG_FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news",
                     "syslog", "user", "uucp", *(f"local{i}" for i in range(8)))

log = logging.getLogger("replica.crm_fence")


class CibError(ValueError):
    """The text is not a CIB we can read."""


class PeerState(enum.Enum):
    REACHABLE = "reachable"
    FENCED = "fenced"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class NodeState:
    """One <node_state> of the CIB's status section."""

    uname: str
    in_ccm: bool
    crmd_online: bool
    expected: str
    join: str


@dataclass(frozen=True, slots=True)
class Location:
    """An rsc_location with a -INFINITY rule: the node names its `#uname ne` expressions keep
    (the nodes the rule does not forbid), and the rule's role."""

    rsc: str
    role: str
    allowed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cib:
    have_quorum: bool
    stonith_enabled: bool
    nodes: tuple[str, ...]
    node_states: dict[str, NodeState]
    clones: dict[str, str]             # replica resource name -> id of the clone managing it
    locations: dict[str, Location]     # rsc_location id -> what its -INFINITY rule keeps


@dataclass(frozen=True, slots=True)
class Decision:
    code: int
    text: str
    place: bool = False
    remove: bool = False
    warning: bool = False


# --- reading the CIB (pure) --------------------------------------------------------------------

def _is_true(value: str | None) -> bool:
    """Pacemaker's booleans, and 2.1.7+'s timestamps for in_ccm/crmd (a positive number)."""
    if value is None:
        return False
    v = value.strip().lower()
    return v in ("true", "yes", "y", "on", "1", "online", "member") or (
        v.isascii() and v.isdigit() and int(v) > 0)


def _not_false(value: str | None) -> bool:
    """crm-fence-peer's reading of stonith-enabled: anything but an explicit false is true."""
    return (value or "").strip().lower() not in ("no", "n", "false", "0", "off")


def _nvpairs(elem: ET.Element, section: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for attrs in elem.findall(section):
        for nv in attrs.findall("nvpair"):
            name, value = nv.get("name"), nv.get("value")
            if name is not None and value is not None:
                out.setdefault(name, value)
    return out


def _replica_resource(prim: ET.Element) -> str | None:
    if (prim.get("class"), prim.get("provider"), prim.get("type")) != AGENT:
        return None
    return _nvpairs(prim, "instance_attributes").get("resource")


def parse_cib(text: str) -> Cib:
    """What the fence handlers need from `cibadmin --query` output; CibError if it is not a
    CIB (malformed XML, another root element)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise CibError(f"cib: unreadable XML: {e}") from None
    if root.tag != "cib":
        raise CibError(f"cib: root element is <{root.tag}>, not <cib>")
    config = root.find("configuration")
    if config is None:
        raise CibError("cib: no <configuration> section")
    props: dict[str, str] = {}
    for cps in config.findall("crm_config/cluster_property_set"):
        for nv in cps.findall("nvpair"):
            name, value = nv.get("name"), nv.get("value")
            if name is not None and value is not None:
                props.setdefault(name.replace("_", "-"), value)
    nodes = tuple(n.get("uname", "") for n in config.findall("nodes/node")
                  if n.get("uname") and n.get("type", "member") not in ("ping", "remote"))
    clones: dict[str, str] = {}
    for tag in ("clone", "master"):
        for clone in config.findall(f"resources/{tag}"):
            cid = clone.get("id")
            if not cid:
                continue
            for prim in clone.findall("primitive"):
                res = _replica_resource(prim)
                if res is not None:
                    clones.setdefault(res, cid)
    locations: dict[str, Location] = {}
    for loc in config.findall("constraints/rsc_location"):
        lid, rsc = loc.get("id"), loc.get("rsc")
        if not lid or not rsc:
            continue
        for rule in loc.findall("rule"):
            if rule.get("score") not in ("-INFINITY", "-infinity", "-inf"):
                continue
            allowed = tuple(e.get("value", "") for e in rule.findall("expression")
                            if e.get("attribute") == "#uname" and e.get("operation") == "ne")
            locations[lid] = Location(rsc, rule.get("role", ""), allowed)
            break
    states: dict[str, NodeState] = {}
    for ns in root.findall("status/node_state"):
        uname = ns.get("uname")
        if uname:
            states[uname] = NodeState(uname, _is_true(ns.get("in_ccm")), _is_true(ns.get("crmd")),
                                      ns.get("expected", ""), ns.get("join", ""))
    return Cib(have_quorum=_is_true(root.get("have-quorum")),
               stonith_enabled=_not_false(props.get("stonith-enabled")),
               nodes=nodes, node_states=states, clones=clones, locations=locations)


def constraint_id(resource: str, clone: str, prefix: str = ID_PREFIX) -> str:
    """DRBD's id: the prefix gets the resource name unless it already ends with it."""
    if not prefix.endswith(f"-{resource}"):
        prefix = f"{prefix}-{resource}"
    return f"{prefix}-{clone}"


def constraint_xml(resource: str, clone: str, node: str, role: str = "Promoted",
                   prefix: str = ID_PREFIX) -> str:
    """The location constraint: the `role` of `clone` nowhere but on `node`."""
    if not prefix.endswith(f"-{resource}"):
        prefix = f"{prefix}-{resource}"
    return (f"<rsc_location rsc={quoteattr(clone)} id={quoteattr(f'{prefix}-{clone}')}>"
            f"<rule role={quoteattr(role)} score=\"-INFINITY\" id={quoteattr(f'{prefix}-rule-{clone}')}>"
            f"<expression attribute=\"#uname\" operation=\"ne\" value={quoteattr(node)} "
            f"id={quoteattr(f'{prefix}-expr-{clone}')}/></rule></rsc_location>")


def peer_state(cib: Cib, peer: str, confirmed: bool | None = None) -> PeerState:
    """The peer as the CIB shows it (module docstring); `confirmed`: what crmadmin -S said of a
    peer the CIB shows online (None: not asked)."""
    ns = cib.node_states.get(peer)
    if ns is None:
        return PeerState.UNKNOWN
    if ns.in_ccm and ns.crmd_online:
        return PeerState.REACHABLE if confirmed is not False else PeerState.UNKNOWN
    if not ns.in_ccm and not ns.crmd_online and ns.expected == "down":
        return PeerState.FENCED
    return PeerState.UNREACHABLE


def is_settled(cib: Cib, state: PeerState) -> bool:
    """Whether polling the CIB longer could change the answer: an unconfirmed online peer may
    be dying; with STONITH an unreachable peer is about to be fenced."""
    if state is PeerState.UNKNOWN:
        return False
    return not (state is PeerState.UNREACHABLE and cib.stonith_enabled)


def decide_fence(cib: Cib, resource: str, me: str, peer: str, state: PeerState, disk: str,
                 peer_disk: str, prefix: str = ID_PREFIX, clone: str | None = None) -> Decision:
    """fence-peer's answer and whether to place the constraint (the table in the docstring);
    `clone` overrides the CIB's clone (--clone-id)."""
    clone = clone or cib.clones.get(resource)
    if clone is None:
        return Decision(EXIT_FAILED, f"drbd-fencing could not determine the clone id of replica "
                        f"resource {resource} (no promotable clone of ocf:replica-ha:replica with "
                        f"resource={resource} in the CIB)", warning=True)
    cid = constraint_id(resource, clone, prefix)
    have = cib.locations.get(cid)
    if have is not None:
        if me in have.allowed and peer not in have.allowed:
            return Decision(4, f"suitable constraint already placed: '{cid}'")
        if me not in have.allowed:
            return Decision(6, f"constraint already exists, and rejects me: '{cid}' keeps "
                            f"{have.role or 'the clone'} on {' '.join(have.allowed) or 'no node'}",
                            warning=True)
        return Decision(EXIT_FAILED, f"constraint already exists, could not modify it: '{cid}' "
                        f"keeps {' '.join(have.allowed)}", warning=True)
    if not cib.have_quorum:
        return Decision(EXIT_FAILED, "I don't have quorum; did not place the constraint!",
                        warning=True)
    if peer_disk == "UpToDate":
        return Decision(EXIT_FAILED, "All peer disks are UpToDate! Did not place the constraint.",
                        warning=True)
    if peer_disk in PEER_DISK_WORSE:
        return Decision(3, f"peer disk is {peer_disk} already: nothing to fence")
    if not disk:
        return Decision(EXIT_FAILED, "could not determine my disk state: did not place the "
                        "constraint!", warning=True)
    if state is PeerState.REACHABLE and disk in ("UpToDate", "Consistent"):
        return Decision(4, f"peer {peer} is reachable, my disk is {disk}: placed constraint '{cid}'",
                        place=True)
    if state is PeerState.FENCED and disk == "UpToDate":
        return Decision(7, f"peer {peer} is fenced, my disk is {disk}: placed constraint '{cid}'",
                        place=True)
    if disk == "UpToDate":
        return Decision(5, f"peer {peer} is {state.value}, my disk is UpToDate: placed "
                        f"constraint '{cid}'", place=True)
    return Decision(5, f"peer {peer} is {state.value}, my disk is {disk}: did not place the "
                    "constraint!", warning=True)


def decide_unfence(cib: Cib, resource: str, disk: str, peer_disk: str,
                   prefix: str = ID_PREFIX, clone: str | None = None) -> Decision:
    """unfence: remove the constraint once both disks are UpToDate; 0 whatever else."""
    clone = clone or cib.clones.get(resource)
    if clone is None:
        return Decision(EXIT_FAILED, f"drbd-fencing could not determine the clone id of replica "
                        f"resource {resource}", warning=True)
    cid = constraint_id(resource, clone, prefix)
    if cid not in cib.locations:
        return Decision(0, "No constraint in place, nothing to do.")
    if disk == "UpToDate" and peer_disk == "UpToDate":
        return Decision(0, f"Removed constraint '{cid}'", remove=True)
    return Decision(0, f"expected constraint still in place, nothing to do (my disk {disk or '?'}, "
                    f"peer disk {peer_disk or '?'}): '{cid}'")


# --- talking to the cluster ----------------------------------------------------------------------

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)


def _tool(name: str) -> str:
    """Pacemaker's tools live in /usr/sbin, which a handler's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin") or name


class Cluster:
    """The Pacemaker tools: query the CIB, ask a peer's controller, place/remove a constraint.
    `run` is replaceable (tests)."""

    def __init__(self, run: Runner = run_command, dc_timeout_s: float = 20.0):
        self.run = run
        self.dc_timeout_s = dc_timeout_s

    def _call(self, argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            return self.run(argv, timeout_s)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(argv), 124, "", f"no answer in {timeout_s:g} s")
        except OSError as e:
            return subprocess.CompletedProcess(list(argv), 127, "", str(e))

    def query(self) -> Cib:
        """The CIB, retried with a growing timeout until --dc-timeout (a DC election)."""
        deadline = time.monotonic() + self.dc_timeout_s
        step = 2
        while True:
            res = self._call([_tool("cibadmin"), "--query", "--timeout", str(step)], step + 5)
            if res.returncode == 0:
                return parse_cib(res.stdout)
            if time.monotonic() >= deadline:
                raise CibError(f"cibadmin --query: exit {res.returncode}: "
                               f"{res.stderr.strip() or 'no CIB'}")
            time.sleep(0.5)
            step = min(step * 2, 10)

    def local_node(self) -> str:
        res = self._call([_tool("crm_node"), "-n"], 10)
        name = res.stdout.strip()
        return name if res.returncode == 0 and name else os.uname().nodename

    def confirm(self, peer: str) -> bool:
        """crmadmin -S: the peer's controller answers (crm-fence-peer's reachability proof)."""
        res = self._call([_tool("crmadmin"), "-S", peer, "-t", "2000"], 5)
        out = res.stdout.strip()
        return res.returncode == 0 and (out.endswith(": ok") or out.endswith("(ok)"))

    def create(self, xml: str) -> subprocess.CompletedProcess[str]:
        return self._call([_tool("cibadmin"), "--create", "-o", "constraints", "-X", xml], 30)

    def delete(self, cid: str) -> subprocess.CompletedProcess[str]:
        return self._call([_tool("cibadmin"), "--delete", "-o", "constraints", "-X",
                           f"<rsc_location id={quoteattr(cid)}/>"], 30)


def observe_peer(cluster: Cluster, peer: str, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[Cib, PeerState]:
    """Poll the CIB until the peer's state is settled or `timeout_s` passed."""
    deadline = clock() + timeout_s
    while True:
        cib = cluster.query()
        ns = cib.node_states.get(peer)
        confirmed = cluster.confirm(peer) if ns and ns.in_ccm and ns.crmd_online else None
        state = peer_state(cib, peer, confirmed)
        if is_settled(cib, state) or clock() >= deadline:
            return cib, state
        sleep(0.5)


# --- the commands ------------------------------------------------------------------------------

def _parse(prog: str, argv: Sequence[str] | None, env: dict[str, str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("-r", "--resource", default=env.get("DRBD_RESOURCE", ""),
                   help="the replica resource (default: $DRBD_RESOURCE)")
    p.add_argument("-i", "--clone-id", "--master-id", dest="clone",
                   help="the promotable clone's id (default: found in the CIB)")
    p.add_argument("-l", "--role", default="Promoted",
                   help="the role the constraint forbids (Master on Pacemaker < 2.1)")
    p.add_argument("-p", "--id-prefix", default=ID_PREFIX, help="constraint id prefix")
    p.add_argument("-t", "--timeout", type=float, default=5.0,
                   help="seconds to poll the CIB for a settled peer state")
    p.add_argument("-d", "--dc-timeout", type=float, default=20.0,
                   help="seconds to wait for a CIB answer (DC election)")
    p.add_argument("--node", help="this node's name in the cluster (default: crm_node -n)")
    p.add_argument("--logfacility", default="daemon", choices=SYSLOG_FACILITIES + ("none",))
    p.add_argument("--logfile", help="also append the log lines to this file")
    return p.parse_args(argv)


def _setup_logging(prog: str, args: argparse.Namespace) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):        # a second run in one process (tests)
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter(f"{prog}[{os.getpid()}]: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.logfile:
        try:
            fh = logging.FileHandler(args.logfile)
        except OSError as e:
            print(f"{prog}: --logfile {args.logfile}: {e.strerror}", file=sys.stderr)
        else:
            fh.setFormatter(logging.Formatter(f"%(asctime)s {prog}[{os.getpid()}]: %(message)s"))
            handlers.append(fh)
    if args.logfacility != "none" and os.path.exists("/dev/log"):
        try:
            handlers.append(logging.handlers.SysLogHandler(
                "/dev/log", facility=logging.handlers.SysLogHandler.facility_names[args.logfacility]))
        except OSError:
            pass
    for h in handlers:
        if h.formatter is None:
            h.setFormatter(fmt)
        log.addHandler(h)


def _say(resource: str, d: Decision) -> None:
    (log.warning if d.warning else log.info)("%s: %s %s", resource,
                                             "WARNING" if d.warning else "INFO", d.text)


def _start(prog: str, argv: Sequence[str] | None, env: dict[str, str]) -> tuple[argparse.Namespace, str]:
    args = _parse(prog, argv, env)
    _setup_logging(prog, args)
    peers = (env.get("DRBD_PEER") or env.get("DRBD_PEERS", "")).split()
    shown = " ".join(f"{k}={env[k]}" for k in sorted(env)
                     if k.startswith("DRBD_") or k in ("REPLICA_ROLE", "REPLICA_DISK", "REPLICA_PEER_DISK"))
    log.info("%s", shown or "no DRBD_* environment")
    return args, peers[0] if peers else ""


def fence_main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None,
               cluster: Cluster | None = None) -> int:
    """replica-crm-fence-peer: place the constraint; fence-peer's exit code."""
    prog = "replica-crm-fence-peer"
    env = dict(os.environ) if env is None else env
    args, peer = _start(prog, argv, env)
    if not args.resource:
        log.error("Environment variable $DRBD_RESOURCE not found (this is normally passed in by "
                  "replicad)")
        return EXIT_FAILED
    cluster = cluster or Cluster(dc_timeout_s=args.dc_timeout)
    disk, peer_disk = env.get("REPLICA_DISK", ""), env.get("REPLICA_PEER_DISK", "")
    res = args.resource
    try:
        me = args.node or cluster.local_node()
        if not peer:                # as crm-fence-peer: the one other node of the cluster
            others = [n for n in cluster.query().nodes if n != me]
            if len(others) != 1:
                log.error("%s: WARNING don't know who my peer is (no $DRBD_PEER; other nodes: "
                          "%s): did not place the constraint!", res, " ".join(others) or "none")
                return EXIT_FAILED
            peer = others[0]
        cib, state = observe_peer(cluster, peer, args.timeout)
        d = decide_fence(cib, res, me, peer, state, disk, peer_disk, args.id_prefix, args.clone)
        if d.place:
            clone = args.clone or cib.clones[res]
            done = cluster.create(constraint_xml(res, clone, me, args.role, args.id_prefix))
            if done.returncode != 0:
                # raced with another handler or the operator: judge what is there now
                log.warning("%s: WARNING cibadmin --create: exit %d: %s", res, done.returncode,
                            done.stderr.strip())
                d = decide_fence(cluster.query(), res, me, peer, state, disk, peer_disk,
                                 args.id_prefix, args.clone)
                if d.place:
                    log.error("%s: WARNING DATA INTEGRITY at RISK: could not place the fencing "
                              "constraint!", res)
                    return EXIT_FAILED
    except CibError as e:
        log.error("%s: WARNING %s: did not place the constraint!", res, e)
        return EXIT_FAILED
    _say(res, d)
    log.info("%s: fence-peer exit code %d", res, d.code)
    return d.code


def unfence_main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 cluster: Cluster | None = None) -> int:
    """replica-crm-unfence-peer: remove the constraint once both disks are UpToDate."""
    prog = "replica-crm-unfence-peer"
    env = dict(os.environ) if env is None else env
    args, _peer = _start(prog, argv, env)
    if not args.resource:
        log.error("Environment variable $DRBD_RESOURCE not found (this is normally passed in by "
                  "replicad)")
        return EXIT_FAILED
    cluster = cluster or Cluster(dc_timeout_s=args.dc_timeout)
    res = args.resource
    try:
        cib = cluster.query()
        d = decide_unfence(cib, res, env.get("REPLICA_DISK", ""), env.get("REPLICA_PEER_DISK", ""),
                           args.id_prefix, args.clone)
        if d.remove:
            cid = constraint_id(res, args.clone or cib.clones[res], args.id_prefix)
            done = cluster.delete(cid)
            if done.returncode != 0 and cid in cluster.query().locations:
                log.error("%s: WARNING could not remove the constraint '%s': cibadmin --delete: "
                          "exit %d: %s", res, cid, done.returncode, done.stderr.strip())
                return EXIT_FAILED
    except CibError as e:
        log.error("%s: WARNING %s", res, e)
        return EXIT_FAILED
    _say(res, d)
    return d.code


def main() -> int:
    return fence_main()


def main_unfence() -> int:
    return unfence_main()


if __name__ == "__main__":
    sys.exit(main_unfence() if os.path.basename(sys.argv[0]).startswith("replica-crm-unfence")
             else main())
