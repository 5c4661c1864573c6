# SPDX-License-Identifier: GPL-2.0-or-later
"""A real two-node Pacemaker + Corosync cluster on this one machine, managing replica-ha.

The measured recipe of the project's notes (pacemaker-netns-recipe.md: Corosync 3 + Pacemaker
2.1 of Debian 12 in namespaces, its obstacles and timings), in Python: each node is a network
namespace (scripts/lab.py's switched_lan), plus a *persistent* mount namespace and a UTS
namespace bound to files (`unshare --mount=FILE --uts=FILE`), so that killing every process of
a node leaves its namespaces in place and the node can be "rebooted" into them::

    PFX-pk1 [eth0 10.66.7.1/24] --veth--+
    PFX-pk2 [eth0 10.66.7.2/24] --veth--+-- br0 in PFX-sw (a switch; VIP 10.66.7.100)
    PFX-pk1 [eth1 10.66.8.1/24] --veth-- [eth1 10.66.8.2/24] PFX-pk2   (the replication link,
                                          back to back as DRBD's guides advise: Corosync on eth0,
                                          replicad on eth1, so each can be cut alone)

    node pk1 = netns PFX-pk1 + BASE/ns/pk1.mnt + BASE/ns/pk1.uts (hostname pk1)
        private, bind-mounted from BASE/pk1/:  /etc/corosync /var/lib/corosync
            /var/lib/pacemaker /var/log /run, a tmpfs on /dev/shm
        /usr/lib/ocf/resource.d: the host's providers plus replica-ha/replica -> this
            checkout's scripts/ocf/replica (nothing is installed on the host)
        DISK_DIR (/dev/shm/pk-lab on the host, the backing files) under the same path

Every cluster command must run with the node's net *and* mount namespace (libqb: abstract
sockets per netns, ring buffers in the node's /dev/shm): `exec_argv()` wraps it in nsenter.
Daemons started that way (corosync, pacemakerd and its children, the resource agents, the
replicad they start) live in those namespaces, so the Filesystem agent mounts in the node's
own mount namespace and the mount is invisible to the other node.

The replica resource (BASE/replica.conf, the same file on both nodes as drbd.conf is):
`device minor 7` (/dev/drbd7, beside the demo's /dev/drbd0), protocol C, short ping timers so
replicad sees a dead peer (<= ping-int + ping-timeout = 1.5 s) before Corosync does (token
1000 ms + consensus 1200 ms), and `fencing resource-only` with replica-crm-fence-peer /
replica-crm-unfence-peer (replica/crm_fence.py): a node that loses its peer, or is promoted
without it, forbids the peer's promotion with the location constraint
drbd-fence-by-handler-r0-ms_r0 until the resync is done (see the README's Pacemaker section).

Lifecycle (the command line does the same from the shell; every step is by name and PID, so
`down` works from another process and after a failed run)::

    up():            network, config, namespaces, both nodes started, until both are Online
                     with a DC (dc-deadtime 2s seeded in the CIB: ~4.5 s instead of ~25 s)
    node_kill(N):    links down, then SIGKILL every process of the node's netns (a power cut:
                     nothing reaches the peer, not even a FIN)
    replication_link(N, up): only eth1 at N: Corosync sees both nodes, replicad loses its peer
    fence_constraint(N): the nodes the fence handlers' constraint lets be Promoted, per N's CIB
    node_start(N):   a reboot: releases what the dead node left (its ext4 mount, its FUSE
                     mount and loop device: `replicactl down --force`), the VIP on eth0,
                     /run and /dev/shm contents; then corosync + pacemakerd
    down():          kills every process, releases devices, namespaces, mounts, files

    python -m scripts.pcmk_lab up | resources | status | down
    python -m scripts.pcmk_lab node-kill pk1 | node-start pk1
    python -m scripts.pcmk_lab repl-link pk2 down | repl-link pk2 up
    python -m scripts.pcmk_lab exec pk1 crm_mon -1
    python -m scripts.pcmk_lab replicactl pk1 status r0

Needs root, corosync, pacemaker and resource-agents (Debian packages).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from replica.crm_fence import constraint_id, parse_cib
from scripts.lab import NetLab, ip, kill_namespace_processes, namespace_pids, remove_by_prefix
from scripts.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "scripts" / "ocf" / "replica"
# this checkout's replicactl: the running venv's, else the checkout's own .venv (make deps)
REPLICACTL = next((p for p in (Path(sys.executable).parent / "replicactl",
                               REPO / ".venv" / "bin" / "replicactl") if p.exists()),
                  Path(sys.executable).parent / "replicactl")
OCF_RESOURCE_D = Path("/usr/lib/ocf/resource.d")

PREFIX = "pk"
NODES = ("pk1", "pk2")
SUBNET = "10.66.7"
ADDRS = {"pk1": f"{SUBNET}.1", "pk2": f"{SUBNET}.2"}
REPL_SUBNET = "10.66.8"
REPL_ADDRS = {"pk1": f"{REPL_SUBNET}.1", "pk2": f"{REPL_SUBNET}.2"}
VIP = f"{SUBNET}.100"
BASE = Path("/tmp/pk-lab")
DISK_DIR = Path("/dev/shm/pk-lab")
MINOR = 7
RESOURCE = "r0"
DISK_SIZE = 64 << 20
# the fence handlers' log, in each node's own /var/log (BASE/NODE/log on the host)
FENCE_LOG = "/var/log/replica-crm-fence.log"

REQUIRED_COMMANDS = ("corosync", "corosync-keygen", "corosync-cmapctl", "pacemakerd", "crm_mon",
                     "cibadmin", "crm_attribute", "nsenter", "unshare", "ip")

# The replicated resource: one file for both nodes, as drbd.conf. ping-int 1 s + ping-timeout
# 0.5 s: a dead peer is seen in <= 1.5 s, before Corosync's token + consensus (2.2 s) makes
# Pacemaker promote the survivor, so `replicactl primary` there is not refused as "Multiple
# primaries" by a replicad that still thinks it is Connected. `fencing resource-only` with the
# CIB handlers (replica/crm_fence.py): a node that loses its peer forbids the peer's promotion
# with a location constraint, removed after the resync (after-resync-target on the node that
# was behind, unfence-peer on the other when no resync was needed).
REPLICA_CONF = """\
# written by scripts/pcmk_lab.py: the Pacemaker lab's replicated resource
resource {res} {{
    device minor {minor};
    disk {{ fencing resource-only; resync-rate 100M; }}
    net {{ protocol C; ping-int 1; ping-timeout 5; timeout 5; connect-int 1; }}
    handlers {{
        fence-peer "{bindir}/replica-crm-fence-peer --logfile {fence_log}";
        after-resync-target "{bindir}/replica-crm-unfence-peer --logfile {fence_log}";
        unfence-peer "{bindir}/replica-crm-unfence-peer --logfile {fence_log}";
    }}
    on pk1 {{ disk {disks}/pk1.img; meta-disk internal; address {a1}:7789; export unix:/run/replica/{res}.sock; }}
    on pk2 {{ disk {disks}/pk2.img; meta-disk internal; address {a2}:7789; export unix:/run/replica/{res}.sock; }}
}}
"""

COROSYNC_CONF = """\
totem {{
    version: 2
    cluster_name: pklab
    transport: knet
    token: {token_ms}
    crypto_cipher: aes256
    crypto_hash: sha256
}}
nodelist {{
    node {{
        name: pk1
        nodeid: 1
        ring0_addr: {a1}
    }}
    node {{
        name: pk2
        nodeid: 2
        ring0_addr: {a2}
    }}
}}
quorum {{
    provider: corosync_votequorum
    two_node: 1
}}
logging {{
    to_logfile: yes
    logfile: /var/log/corosync/corosync.log
    to_syslog: no
    to_stderr: no
    timestamp: on
}}
"""

# The resources, as loaded with `cibadmin -C -o resources` / `-o constraints` (README shows
# them and the crm/pcs equivalents): the promotable clone, the group colocated with the
# Promoted instance and started after the promotion.
CIB_RESOURCES = """\
<resources>
<clone id="ms_r0">
  <meta_attributes id="ms_r0-meta">
    <nvpair id="ms_r0-promotable" name="promotable" value="true"/>
    <nvpair id="ms_r0-promoted-max" name="promoted-max" value="1"/>
    <nvpair id="ms_r0-promoted-node-max" name="promoted-node-max" value="1"/>
    <nvpair id="ms_r0-clone-max" name="clone-max" value="2"/>
    <nvpair id="ms_r0-clone-node-max" name="clone-node-max" value="1"/>
    <nvpair id="ms_r0-notify" name="notify" value="true"/>
  </meta_attributes>
  <primitive id="p_r0" class="ocf" provider="replica-ha" type="replica">
    <instance_attributes id="p_r0-params">
      <nvpair id="p_r0-resource" name="resource" value="{res}"/>
      <nvpair id="p_r0-config" name="config" value="{conf}"/>
      <nvpair id="p_r0-replicactl" name="replicactl" value="{replicactl}"/>
    </instance_attributes>
    <operations>
      <op id="p_r0-monitor-promoted" name="monitor" interval="10s" role="Promoted" timeout="20s"/>
      <op id="p_r0-monitor-unpromoted" name="monitor" interval="20s" role="Unpromoted" timeout="20s"/>
    </operations>
  </primitive>
</clone>
<group id="g_data">
  <primitive id="p_fs" class="ocf" provider="heartbeat" type="Filesystem">
    <instance_attributes id="p_fs-params">
      <nvpair id="p_fs-device" name="device" value="/dev/drbd{minor}"/>
      <nvpair id="p_fs-directory" name="directory" value="{directory}"/>
      <nvpair id="p_fs-fstype" name="fstype" value="ext4"/>
    </instance_attributes>
    <operations>
      <op id="p_fs-monitor" name="monitor" interval="10s" timeout="40s"/>
    </operations>
  </primitive>
  <primitive id="p_vip" class="ocf" provider="heartbeat" type="IPaddr2">
    <instance_attributes id="p_vip-params">
      <nvpair id="p_vip-ip" name="ip" value="{vip}"/>
      <nvpair id="p_vip-cidr_netmask" name="cidr_netmask" value="24"/>
      <nvpair id="p_vip-nic" name="nic" value="eth0"/>
    </instance_attributes>
    <operations>
      <op id="p_vip-monitor" name="monitor" interval="10s" timeout="20s"/>
    </operations>
  </primitive>
</group>
</resources>
"""

CIB_CONSTRAINTS = """\
<constraints>
  <rsc_colocation id="c_data_on_promoted" score="INFINITY" rsc="g_data" with-rsc="ms_r0"
                  with-rsc-role="Promoted"/>
  <rsc_order id="o_promote_then_data" kind="Mandatory" first="ms_r0" first-action="promote"
             then="g_data" then-action="start"/>
</constraints>
"""

# run once inside a fresh node namespace (net entered first so that the new sysfs is the node's)
NODE_MOUNTS = """\
set -e
hostname {node}
umount -l /sys && mount -t sysfs sysfs /sys
mount --bind {d}/etc-corosync /etc/corosync
mount --bind {d}/lib-corosync /var/lib/corosync
mount --bind {d}/lib-pacemaker /var/lib/pacemaker
mount --bind {d}/log /var/log
mount --bind {d}/run /run
{providers}
mount --rbind {base}/resource.d {ocf}
mount --bind {disks} {d}/disks
mount -t tmpfs -o mode=1777,size=256m tmpfs /dev/shm
mkdir -p {disks}
mount --move {d}/disks {disks}
"""

# what a reboot clears and kill -9 does not (recipe obstacle 6), run inside the node's
# namespaces once none of its processes is left: mounts of the dead replicad's device first
# (the Filesystem agent's ext4), then the device itself, then the volatile directories
NODE_SCRUB = r"""
set -e
awk '$(NF-2) ~ /^ext[34]$/ && $(NF-1) ~ /^\/dev\/loop/ {{ print $5 }}' /proc/self/mountinfo |
    while read -r m; do umount -l "$m"; done
{replicactl} --config {conf} --node {node} down --force all
find /run -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +
find /dev/shm -mindepth 1 -maxdepth 1 ! -path {disks} -exec rm -rf {{}} +
install -d -m 0755 /run/lock
install -d -m 1755 /run/resource-agents
install -d -m 0750 -o hacluster -g haclient /run/crm /run/pacemaker
[ -e /var/log/pacemaker/pacemaker.log ] ||
    install -m 0660 -o hacluster -g haclient /dev/null /var/log/pacemaker/pacemaker.log
"""


_PROMOTED = (re.compile(r"^\s*(?:\* )?Promoted: \[ (\S+) \]\s*$"),
             re.compile(r"^\s*(?:\* )?p_r0\s+\(\S+\):\s+Promoted (\S+)\s*$"))
_STARTED = re.compile(r"^\s*(?:\* )?(p_fs|p_vip)\s+\(\S+\):\s+Started (\S+)\s*$")


def parse_placement(crm_mon: str) -> dict[str, str | None]:
    """From `crm_mon -1` text: {"promoted": node where ms_r0 is Promoted, "p_fs": node where it
    is Started, "p_vip": ...}; None where that is not (yet) the case. Lines with more than the
    node after the role ("Started pk1 (UNCLEAN)", "Promoted: [ pk1 pk2 ]") do not count."""
    found: dict[str, str | None] = {"promoted": None, "p_fs": None, "p_vip": None}
    for line in crm_mon.splitlines():
        for pattern in _PROMOTED:
            if m := pattern.match(line):
                found["promoted"] = m.group(1)
        if m := _STARTED.match(line):
            found[m.group(1)] = m.group(2)
    return found


def missing_commands() -> list[str]:
    return [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]


def is_mount_point(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return any(line.split()[4] == str(path) for line in f)
    except OSError:
        return False


def sh(*argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"pcmk_lab: {' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


class PcmkLab:
    """The two-node cluster. Every piece is found by name (namespaces PREFIX-*, BASE, DISK_DIR),
    so a PcmkLab made in another process (or after a crash) can take it down."""

    def __init__(self, base: Path = BASE, disk_dir: Path = DISK_DIR, prefix: str = PREFIX,
                 token_ms: int = 1000, dc_deadtime: str = "2s"):
        self.base, self.disk_dir, self.prefix = Path(base), Path(disk_dir), prefix
        self.token_ms, self.dc_deadtime = token_ms, dc_deadtime
        self.conf = self.base / "replica.conf"

    # --- names ---------------------------------------------------------------------------------

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def node_dir(self, node: str) -> Path:
        return self.base / node

    def ns_file(self, node: str, kind: str) -> Path:
        return self.base / "ns" / f"{node}.{kind}"

    def disk_path(self, node: str) -> Path:
        return self.disk_dir / f"{node}.img"

    # --- running things on a node --------------------------------------------------------------

    def exec_argv(self, node: str, argv: list[str] | tuple[str, ...], net: bool = True) -> list[str]:
        """argv run "on" the node: its net, mount and UTS namespaces (nsenter execs argv)."""
        spaces = [f"--mount={self.ns_file(node, 'mnt')}", f"--uts={self.ns_file(node, 'uts')}"]
        if net:
            spaces.insert(0, f"--net=/run/netns/{self.netns(node)}")
        return ["nsenter", *spaces, "--", *argv]

    def run(self, node: str, *argv: str, check: bool = False, timeout: float = 60,
            net: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        return sh(*self.exec_argv(node, argv, net=net), check=check, timeout=timeout, **kw)

    def popen(self, node: str, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.exec_argv(node, argv), **kw)

    def replicactl(self, node: str, *args: str, check: bool = True,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(node, str(REPLICACTL), "--config", str(self.conf), "--node", node, *args,
                        check=check, timeout=timeout)

    def crm_mon(self, node: str) -> str:
        """`crm_mon -1` on the node, "" if its cluster stack does not answer."""
        res = self.run(node, "crm_mon", "-1", timeout=20)
        return res.stdout if res.returncode == 0 else ""

    def cibadmin(self, node: str, *args: str) -> None:
        self.run(node, "cibadmin", *args, check=True)

    def has_address(self, node: str, addr: str = VIP) -> bool:
        res = ip("-n", self.netns(node), "-o", "addr", "show", "dev", "eth0", check=False)
        return f" {addr}/" in res.stdout

    # --- up ----------------------------------------------------------------------------------

    def up(self, timeout_s: float = 60) -> float:
        """Build and start both nodes; seconds from the first corosync start to both nodes
        showing both Online with a DC. On any failure everything is taken down again."""
        if missing_commands():
            raise RuntimeError(f"pcmk_lab: missing {', '.join(missing_commands())} "
                               f"(Debian: pacemaker corosync pacemaker-cli-utils resource-agents)")
        left = [str(p) for p in (self.base, self.disk_dir) if p.exists()]
        left += [line.split()[0] for line in ip("netns", "list").stdout.splitlines()
                 if line.startswith(self.prefix + "-")]
        if left:
            raise RuntimeError(f"pcmk_lab: a lab is there already ({', '.join(left)}): "
                               f"run `python -m scripts.pcmk_lab down` first")
        try:
            self._build()
            t0 = time.monotonic()
            for node in NODES:
                self.node_start(node)
            wait_for(lambda: all(self.is_online(n, NODES) for n in NODES),
                     "both nodes Online with a DC", timeout_s, interval_s=0.2,
                     details=lambda: "\n".join(f"--- {n}: crm_mon ---\n{self.crm_mon(n)}" for n in NODES))
            return time.monotonic() - t0
        except BaseException:
            self.down()
            raise

    def is_online(self, node: str, online: tuple[str, ...]) -> bool:
        out = self.crm_mon(node)
        return f"Online: [ {' '.join(online)} ]" in out and "Current DC: pk" in out

    def _build(self) -> None:
        lab = NetLab(self.prefix)
        lab.switched_lan({n: f"{ADDRS[n]}/24" for n in NODES})
        lab.add_veth(self.netns("pk1"), "eth1", self.netns("pk2"), "eth1")
        common = self.base / "common"
        common.mkdir(parents=True)
        (self.base / "ns").mkdir()
        self.disk_dir.mkdir(parents=True)
        for node in NODES:
            with open(self.disk_path(node), "wb") as f:
                f.truncate(DISK_SIZE)
        self.conf.write_text(REPLICA_CONF.format(res=RESOURCE, minor=MINOR, disks=self.disk_dir,
                                                 a1=REPL_ADDRS["pk1"], a2=REPL_ADDRS["pk2"],
                                                 bindir=REPLICACTL.parent, fence_log=FENCE_LOG))
        # OCF providers as the host has them, plus ours, for the nodes' /usr/lib/ocf/resource.d
        rd = self.base / "resource.d"
        for provider in sorted(os.listdir(OCF_RESOURCE_D)):
            if provider != "replica-ha" and (OCF_RESOURCE_D / provider).is_dir():
                (rd / provider).mkdir(parents=True)
        (rd / "replica-ha").mkdir(parents=True)
        (rd / "replica-ha" / "replica").symlink_to(AGENT)

        sh("corosync-keygen", "-k", str(common / "authkey"))
        (common / "corosync.conf").write_text(COROSYNC_CONF.format(
            token_ms=self.token_ms, a1=ADDRS["pk1"], a2=ADDRS["pk2"]))
        # the CIB is seeded before the first start: dc-deadtime applies to the first election
        cib = common / "cib.xml"
        cib.write_text(sh("cibadmin", "--empty").stdout)
        for name, value in (("stonith-enabled", "false"), ("no-quorum-policy", "ignore"),
                            ("dc-deadtime", self.dc_deadtime)):
            sh("crm_attribute", "-t", "crm_config", "-n", name, "-v", value,
               env={**os.environ, "CIB_file": str(cib)})

        # unshare --mount=FILE needs FILE's directory to be a private mount
        sh("mount", "--bind", str(self.base / "ns"), str(self.base / "ns"))
        sh("mount", "--make-private", str(self.base / "ns"))
        for node in NODES:
            d = self.node_dir(node)
            for sub in ("etc-corosync", "lib-corosync", "run", "disks", "log/corosync",
                        "log/pacemaker", "log/crmsh", "lib-pacemaker/cib", "lib-pacemaker/pengine",
                        "lib-pacemaker/blackbox", "lib-pacemaker/cores"):
                (d / sub).mkdir(parents=True)
            shutil.copy(common / "corosync.conf", d / "etc-corosync" / "corosync.conf")
            sh("install", "-m", "0400", str(common / "authkey"), str(d / "etc-corosync" / "authkey"))
            sh("install", "-m", "0600", "-o", "hacluster", "-g", "haclient", str(cib),
               str(d / "lib-pacemaker" / "cib" / "cib.xml"))
            sh("chown", "-R", "hacluster:haclient", str(d / "lib-pacemaker"), str(d / "log" / "pacemaker"))
            for sub in ("cib", "pengine", "blackbox", "cores"):
                os.chmod(d / "lib-pacemaker" / sub, 0o750)
            for kind in ("mnt", "uts"):
                self.ns_file(node, kind).touch()
            providers = "\n".join(f"mount --bind {OCF_RESOURCE_D / p} {rd / p}"
                                   for p in sorted(os.listdir(rd)) if p != "replica-ha")
            script = NODE_MOUNTS.format(node=node, d=d, base=self.base, ocf=OCF_RESOURCE_D,
                                        disks=self.disk_dir, providers=providers)
            sh("nsenter", f"--net=/run/netns/{self.netns(node)}", "--",
               "unshare", f"--mount={self.ns_file(node, 'mnt')}", f"--uts={self.ns_file(node, 'uts')}",
               "--propagation", "private", "/bin/sh", "-c", script)

    # --- the replicated resource and the CIB ----------------------------------------------

    def prepare_replica(self, first: str = "pk1") -> None:
        """One-shot, before Pacemaker manages r0: metadata on both nodes, both disks UpToDate
        (blank disks need no initial sync), ext4 made on `first` as Primary; then both down
        again, so that the clone's start is a real `replicactl up`."""
        for node in NODES:
            self.replicactl(node, "create-md", "--force", RESOURCE)
        for node in NODES:
            self.replicactl(node, "up", RESOURCE)
        self.replicactl(first, "wait-connect", RESOURCE, timeout=60)
        self.replicactl(first, "new-current-uuid", "--clear-bitmap", RESOURCE)
        self.replicactl(first, "primary", RESOURCE)
        self.run(first, "mkfs.ext4", "-q", "-F", f"/dev/drbd{MINOR}", check=True, timeout=120)
        self.replicactl(first, "secondary", RESOURCE)
        for node in NODES:
            self.replicactl(node, "down", RESOURCE)

    def load_resources(self, directory: Path, node: str = "pk1") -> None:
        """The clone ms_r0, the group g_data (Filesystem on /dev/drbdMINOR at `directory`,
        IPaddr2 VIP) and their constraints, through `cibadmin` on `node`."""
        directory.mkdir(parents=True, exist_ok=True)
        self.run(node, "crm_attribute", "-t", "rsc_defaults", "-n", "resource-stickiness", "-v", "100",
                 check=True)
        self.cibadmin(node, "-C", "-o", "resources", "-X", CIB_RESOURCES.format(
            res=RESOURCE, conf=self.conf, replicactl=REPLICACTL, minor=MINOR, directory=directory,
            vip=VIP))
        self.cibadmin(node, "-C", "-o", "constraints", "-X", CIB_CONSTRAINTS)

    def where(self, node: str = "pk1") -> dict[str, str | None]:
        """Where ms_r0 is Promoted and where g_data's parts run, as `crm_mon -1` on `node`
        tells (parse_placement)."""
        return parse_placement(self.crm_mon(node))

    # --- one node ----------------------------------------------------------------------------

    def node_start(self, node: str, timeout_s: float = 20) -> None:
        """Boot the node: clear what its last life left (it must have no process left), then
        start corosync, wait for its IPC, start pacemakerd (which starts the six daemons)."""
        ns = self.netns(node)
        if namespace_pids(ns):
            raise RuntimeError(f"pcmk_lab: {node} still has processes: {namespace_pids(ns)}")
        for dev, addr in (("eth0", ADDRS[node]), ("eth1", REPL_ADDRS[node])):
            ip("-n", ns, "addr", "flush", "dev", dev, "scope", "global")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        self.scrub(node)
        d = self.node_dir(node)
        with open(d / "corosync.stdout", "ab") as out:
            subprocess.run(self.exec_argv(node, ["setsid", "-f", "corosync", "-f"]),
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True, timeout=30)
        wait_for(lambda: self.run(node, "corosync-cmapctl", "-g", "runtime.votequorum.this_node_id",
                                  timeout=10).returncode == 0,
                 f"{node}: corosync's IPC", timeout_s, interval_s=0.1)
        with open(d / "pacemakerd.stdout", "ab") as out:
            subprocess.run(self.exec_argv(node, ["env", "PCMK_logfile=/var/log/pacemaker/pacemaker.log",
                                                 "setsid", "-f", "/usr/sbin/pacemakerd"]),
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True, timeout=30)

    def scrub(self, node: str) -> None:
        """What a reboot clears: the dead replicad's block device and the ext4 on it, /run,
        /dev/shm (but the backing files' directory mounted there)."""
        script = NODE_SCRUB.format(replicactl=REPLICACTL, conf=self.conf, node=node,
                                   disks=self.disk_dir)
        res = self.run(node, "/bin/sh", "-c", script, net=False, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"pcmk_lab: {node}: clearing the last boot's state: {res.stderr.strip()}")

    def node_kill(self, node: str) -> float:
        """A power cut: the link goes down first (nothing more reaches the peer), then every
        process of the node is killed by PID. Returns the monotonic time of the cut."""
        t = time.monotonic()
        for dev in ("eth0", "eth1"):
            ip("-n", self.netns(node), "link", "set", dev, "down")
        kill_namespace_processes(self.netns(node), timeout_s=10)
        return t

    def replication_link(self, node: str, up: bool) -> None:
        """Cut (or mend) only the replication link at `node`'s end: Corosync still sees both
        nodes, replicad loses its peer."""
        ip("-n", self.netns(node), "link", "set", "eth1", "up" if up else "down")

    def fence_constraint(self, node: str) -> list[str] | None:
        """The fence handlers' constraint as `node`'s CIB has it: the nodes it lets be
        Promoted (DRBD's id drbd-fence-by-handler-r0-ms_r0); None when there is none."""
        res = self.run(node, "cibadmin", "--query", "-o", "constraints", timeout=20)
        if res.returncode != 0:
            raise RuntimeError(f"pcmk_lab: {node}: cibadmin --query: exit {res.returncode}: "
                               f"{res.stderr.strip()}")
        cib = f'<cib><configuration>{res.stdout}</configuration></cib>'
        loc = parse_cib(cib).locations.get(constraint_id(RESOURCE, "ms_r0"))
        return list(loc.allowed) if loc else None

    def fence_log(self, node: str) -> str:
        """What the fence handlers logged on `node` (its own /var/log)."""
        path = self.node_dir(node) / "log" / Path(FENCE_LOG).name
        return path.read_text() if path.exists() else ""

    # --- down --------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove everything up() made; safe to run repeatedly and from any process."""
        for node in NODES:
            kill_namespace_processes(self.netns(node), timeout_s=10)
        for node in NODES:
            mnt = self.ns_file(node, "mnt")
            if is_mount_point(mnt):
                try:
                    self.scrub(node)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"pcmk_lab: down: {e}", file=sys.stderr)
            for kind in ("mnt", "uts"):
                if is_mount_point(self.ns_file(node, kind)):
                    sh("umount", str(self.ns_file(node, kind)), check=False)
        if is_mount_point(self.base / "ns"):
            sh("umount", str(self.base / "ns"), check=False)
        remove_by_prefix(self.prefix)
        for path in (self.base, self.disk_dir):
            if is_mount_point(path):
                raise RuntimeError(f"pcmk_lab: down: {path} is still a mount point")
            shutil.rmtree(path, ignore_errors=True)

    def status(self) -> str:
        if not self.base.exists():
            return f"no lab ({self.base} does not exist)"
        lines = []
        for node in NODES:
            pids = namespace_pids(self.netns(node))
            lines.append(f"--- {node}: {len(pids)} processes, VIP {'here' if self.has_address(node) else 'not here'}")
            if pids:
                lines.append(self.crm_mon(node))
                lines.append(self.replicactl(node, "status", RESOURCE, check=False).stdout)
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.pcmk_lab", description=__doc__.split("\n")[0])
    parser.add_argument("--token", type=int, default=1000, help="corosync totem token in ms")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build and start the two nodes")
    sub.add_parser("down", help="remove everything")
    sub.add_parser("status", help="crm_mon and replicactl status of each node")
    res = sub.add_parser("resources", help="r0 metadata + ext4 (one shot), then the CIB: ms_r0, g_data")
    res.add_argument("--directory", type=Path, default=BASE / "data", help="the Filesystem mount point")
    for verb in ("node-kill", "node-start"):
        sub.add_parser(verb).add_argument("node", choices=NODES)
    link = sub.add_parser("repl-link", help="cut or mend only the replication link (eth1) at a node")
    link.add_argument("node", choices=NODES)
    link.add_argument("state", choices=("up", "down"))
    for verb in ("exec", "replicactl"):
        p = sub.add_parser(verb, help=f"run {'a command' if verb == 'exec' else 'replicactl'} on a node")
        p.add_argument("node", choices=NODES)
        p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    lab = PcmkLab(token_ms=args.token)
    try:
        return run_command(lab, args)
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(e, file=sys.stderr)
        return 1


def run_command(lab: PcmkLab, args: argparse.Namespace) -> int:
    if args.cmd == "up":
        took = lab.up()
        print(f"cluster up: pk1 and pk2 Online with a DC after {took:.1f} s")
        print(f"on a node: python -m scripts.pcmk_lab exec pk1 crm_mon -1; replica config {lab.conf}")
    elif args.cmd == "down":
        lab.down()
        print("torn down")
    elif args.cmd == "status":
        print(lab.status())
    elif args.cmd == "resources":
        lab.prepare_replica()
        lab.load_resources(args.directory)
        print(f"loaded: ms_r0 (ocf:replica-ha:replica), g_data (p_fs on {args.directory}, p_vip {VIP})")
    elif args.cmd == "node-kill":
        lab.node_kill(args.node)
        print(f"{args.node}: link down, every process killed")
    elif args.cmd == "node-start":
        lab.node_start(args.node)
        print(f"{args.node}: corosync and pacemakerd started")
    elif args.cmd == "repl-link":
        lab.replication_link(args.node, args.state == "up")
        print(f"{args.node}: replication link (eth1) {args.state}")
    elif args.cmd == "exec":
        return subprocess.call(lab.exec_argv(args.node, args.args))
    elif args.cmd == "replicactl":
        return subprocess.call(lab.exec_argv(args.node, [str(REPLICACTL), "--config", str(lab.conf),
                                                         "--node", args.node, *args.args]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
