# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/pcmk_lab.py without a cluster: what it reads from crm_mon, and what it loads.

* parse_placement() on crm_mon -1 text captured from the lab's Pacemaker 2.1.5 (before the
  resources ran, mid-promotion, after the failover), on lines that must not count, and fuzzed.
* The replica resource it writes parses with our own config parser, with the promises the
  README makes for it: /dev/drbd7, protocol C, fencing resource-only with the CIB fence
  handlers, replication on its own link, and a dead peer seen by replicad before Corosync's
  token + consensus ends.
* The CIB it loads is well-formed and names what the test and the README use.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from replica.config import parse_config
from scripts.pcmk_lab import (
    ADDRS,
    CIB_CONSTRAINTS,
    CIB_RESOURCES,
    COROSYNC_CONF,
    DISK_DIR,
    FENCE_LOG,
    MINOR,
    REPL_ADDRS,
    REPLICA_CONF,
    RESOURCE,
    VIP,
    parse_placement,
)

RUNNING = """\
Cluster Summary:
  * Stack: corosync
  * Current DC: pk1 (version 2.1.5-a3f44794f94) - partition with quorum
  * 2 nodes configured
  * 4 resource instances configured

Node List:
  * Online: [ pk1 pk2 ]

Active Resources:
  * Clone Set: ms_r0 [p_r0] (promotable):
    * Promoted: [ pk2 ]
    * Unpromoted: [ pk1 ]
  * Resource Group: g_data:
    * p_fs\t(ocf:heartbeat:Filesystem):\t Started pk2
    * p_vip\t(ocf:heartbeat:IPaddr2):\t Started pk2
"""

PROMOTING = """\
Active Resources:
  * Clone Set: ms_r0 [p_r0] (promotable):
    * p_r0\t(ocf:replica-ha:replica):\t Promoting pk2
    * Unpromoted: [ pk1 ]
"""

NOT_INSTALLED = """\
Full List of Resources:
  * Clone Set: ms_r0 [p_r0] (promotable):
    * Promoted: [ pk2 ]
    * Unpromoted: [ pk1 ]
  * Resource Group: g_data:
    * p_fs\t(ocf:heartbeat:Filesystem):\t Stopped (not installed)\x20
    * p_vip\t(ocf:heartbeat:IPaddr2):\t Stopped
"""


def test_placement_from_real_crm_mon_output():
    assert parse_placement(RUNNING) == {"promoted": "pk2", "p_fs": "pk2", "p_vip": "pk2"}
    assert parse_placement(PROMOTING) == {"promoted": None, "p_fs": None, "p_vip": None}
    assert parse_placement(NOT_INSTALLED) == {"promoted": "pk2", "p_fs": None, "p_vip": None}
    assert parse_placement("") == {"promoted": None, "p_fs": None, "p_vip": None}


def test_placement_ignores_lines_with_more_than_one_node():
    text = ("    * Promoted: [ pk1 pk2 ]\n"
            "    * p_fs\t(ocf:heartbeat:Filesystem):\t Started pk1 (UNCLEAN)\n"
            "    * p_r0\t(ocf:replica-ha:replica):\t Promoted pk1 (Monitoring)\n"
            "    * Unpromoted: [ pk2 ]\n")
    assert parse_placement(text) == {"promoted": None, "p_fs": None, "p_vip": None}
    assert parse_placement("    * p_r0\t(ocf:replica-ha:replica):\t Promoted pk1\n")["promoted"] == "pk1"


@given(st.text())
def test_placement_never_raises(text):
    found = parse_placement(text)
    assert set(found) == {"promoted", "p_fs", "p_vip"}
    assert all(v is None or (v and " " not in v) for v in found.values())


@given(st.lists(st.sampled_from(RUNNING.splitlines() + PROMOTING.splitlines() + ["", "  * [", "Started"]),
                max_size=30))
def test_placement_of_shuffled_real_lines(lines):
    found = parse_placement("\n".join(lines))
    assert found["promoted"] in (None, "pk2")
    assert found["p_fs"] in (None, "pk2")


def test_replica_resource_keeps_the_readme_promises():
    text = REPLICA_CONF.format(res=RESOURCE, minor=MINOR, disks=DISK_DIR, a1=REPL_ADDRS["pk1"],
                               a2=REPL_ADDRS["pk2"], bindir="/venv/bin", fence_log=FENCE_LOG)
    res = parse_config(text, "replica.conf").resource(RESOURCE)
    assert sorted(res.hosts) == ["pk1", "pk2"]
    assert all(h.minor == MINOR for h in res.hosts.values())
    assert res.net.protocol == "C" and res.disk.fencing == "resource-only"
    assert res.handlers["fence-peer"] == f"/venv/bin/replica-crm-fence-peer --logfile {FENCE_LOG}"
    assert res.handlers["after-resync-target"] == res.handlers["unfence-peer"] == \
        f"/venv/bin/replica-crm-unfence-peer --logfile {FENCE_LOG}"
    # replication on its own link: cutting it leaves Corosync's ring (eth0) alone
    assert res.hosts["pk1"].address[0] == REPL_ADDRS["pk1"] != ADDRS["pk1"]
    assert res.hosts["pk1"].disk == f"{DISK_DIR}/pk1.img"
    # replicad's dead-peer detection ends before Corosync's (token 1000 ms, consensus 1.2 x)
    token_s = 1.0
    assert "token: {token_ms}" in COROSYNC_CONF
    assert res.net.ping_int_s + res.net.ping_timeout_s < token_s * 2.2


def test_cib_is_well_formed_and_wires_the_group_to_the_promoted_clone():
    resources = ET.fromstring(CIB_RESOURCES.format(res=RESOURCE, conf="/x/replica.conf",
                                                   replicactl="/x/replicactl", minor=MINOR,
                                                   directory="/x/data", vip=VIP))
    clone = resources.find("clone[@id='ms_r0']")
    assert clone is not None
    meta = {nv.get("name"): nv.get("value") for nv in clone.iter("nvpair")
            if nv.get("id", "").startswith("ms_r0-")}
    assert meta["promotable"] == "true" and meta["promoted-max"] == "1" and meta["notify"] == "true"
    agent = clone.find("primitive")
    assert agent is not None
    assert (agent.get("class"), agent.get("provider"), agent.get("type")) == ("ocf", "replica-ha", "replica")
    group = resources.find("group[@id='g_data']")
    assert group is not None
    assert [p.get("type") for p in group.findall("primitive")] == ["Filesystem", "IPaddr2"]
    assert group.find(".//nvpair[@name='device']").get("value") == f"/dev/drbd{MINOR}"
    assert group.find(".//nvpair[@name='ip']").get("value") == VIP
    constraints = ET.fromstring(CIB_CONSTRAINTS)
    colo = constraints.find("rsc_colocation")
    assert (colo.get("rsc"), colo.get("with-rsc"), colo.get("with-rsc-role")) == ("g_data", "ms_r0", "Promoted")
    order = constraints.find("rsc_order")
    assert (order.get("first"), order.get("first-action"), order.get("then"),
            order.get("then-action")) == ("ms_r0", "promote", "g_data", "start")
