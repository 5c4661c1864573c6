# SPDX-License-Identifier: GPL-2.0-or-later
"""The Pacemaker OCF agent scripts/ocf/replica (issue 14 item 6) against real replicad nodes.

* resource-agents' own `ocf-tester` runs the whole OCF sequence (meta-data against
  ra-api-1.dtd, validate-all, probe, start, monitor 0, notify, promote/demote twice, monitor 8,
  stop twice, monitor 7) on node alpha of a two-node pair (tests/integration/netns.py TwoNodes)
  while beta stays up as Secondary: the agent drives a replicated resource, not a standalone one
  (a standalone resource is always Primary and is refused for a promotable clone).
* There is no cluster here: crm_attribute fails to reach the CIB, and the agent must say so and
  go on (ocf:linbit:drbd does the same).
* Monitor codes from real states, including failed-promoted (9): alpha Primary loses its disk
  (on-io-error detach, the test's own tmpfs filled up) and then the link to its UpToDate peer.
* Validation errors (no root): each exit code with its reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.failing_disk import FillableTmpfs
from tests.integration.netns import MiB, TwoNodes

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "scripts" / "ocf" / "replica"
BIN = Path(sys.executable).parent
DTD_DIR = Path("/usr/share/resource-agents")


def run_agent(action: str, env: dict[str, str], netns: str | None = None,
              **params: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "test",
            "OCF_RESKEY_CRM_meta_timeout": "20000", **env}
    full.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, str(AGENT), action], env=full, capture_output=True,
                          text=True, timeout=120)


def node_params(t: TwoNodes, node: str) -> dict[str, str]:
    return {"resource": "r0", "config": str(t.config(node)), "node": node,
            "run_dir": str(t.run_dir(node)), "replicactl": str(BIN / "replicactl")}


# --- no root -------------------------------------------------------------------------------

def test_meta_data_is_valid_ra_api_1_xml():
    requires_commands("xmllint")
    if not (DTD_DIR / "ra-api-1.dtd").exists():
        pytest.skip(f"needs {DTD_DIR}/ra-api-1.dtd (Debian package resource-agents)")
    res = run_agent("meta-data", {})
    assert res.returncode == 0
    lint = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=res.stdout, cwd=DTD_DIR,
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr
    for name in ("resource", "config", "node", "run_dir"):
        assert f'<parameter name="{name}"' in res.stdout
    assert '<parameter name="resource" unique="1" required="1">' in res.stdout
    for action in ("start", "stop", "monitor", "promote", "demote", "notify", "meta-data",
                   "validate-all"):
        assert f'<action name="{action}" timeout=' in res.stdout


def _standalone_config(tmp: Path) -> Path:
    config = tmp / "replica.conf"
    config.write_text(f"resource r0 {{\n    on alpha {{ disk {tmp}/r0.img; meta-disk internal; "
                      f"export unix:{tmp}/r0.sock; }}\n}}\n")
    return config


def test_validate_errors_and_codes(tmp_path):
    replicactl = str(BIN / "replicactl")
    config = _standalone_config(tmp_path)
    base = {"config": str(config), "node": "alpha", "run_dir": str(tmp_path / "run"),
            "replicactl": replicactl}

    res = run_agent("validate-all", {}, **{**base, "resource": ""})
    assert res.returncode == 6
    assert "ocf-exit-reason:replica[]: validate-all: parameter 'resource' is required" in res.stderr

    res = run_agent("validate-all", {}, **{**base, "resource": "r0; rm -rf /"})
    assert res.returncode == 6 and "only [A-Za-z0-9_.+-] allowed" in res.stderr

    res = run_agent("validate-all", {}, **{**base, "resource": "r0", "config": str(tmp_path / "nope")})
    assert res.returncode == 5
    assert f"config file {tmp_path}/nope does not exist or is not readable" in res.stderr

    res = run_agent("validate-all", {}, **{**base, "resource": "r0"})
    assert res.returncode == 6
    assert "resource r0 has 1 'on' section: a promotable clone needs a replicated resource" in res.stderr

    res = run_agent("validate-all", {"OCF_RESKEY_CRM_meta_promoted_max": "2"}, **{**base, "resource": "r0"})
    assert res.returncode == 6 and "meta promoted-max=2: at most 1" in res.stderr

    # a node without replica-ha installed: validate-all says so; a probe is "not running" and a
    # stop succeeds, so Pacemaker does not ban the resource from every node
    missing = {**base, "resource": "r0", "replicactl": str(tmp_path / "no-replicactl")}
    res = run_agent("validate-all", {}, **missing)
    assert res.returncode == 5 and "no-replicactl: not found" in res.stderr
    assert run_agent("monitor", {"OCF_RESKEY_CRM_meta_interval": "0"}, **missing).returncode == 7
    assert run_agent("stop", {}, **missing).returncode == 0
    assert run_agent("monitor", {"OCF_RESKEY_CRM_meta_interval": "10000"}, **missing).returncode == 5

    # a resource that is not up: monitor 7, stop 0, demote 7, promote 1
    ok = {**base, "resource": "r0"}
    assert run_agent("monitor", {}, **ok).returncode == 7
    assert run_agent("stop", {}, **ok).returncode == 0
    assert run_agent("demote", {}, **ok).returncode == 7
    res = run_agent("promote", {}, **ok)
    assert res.returncode == 1 and "cannot promote a resource that was not started" in res.stderr
    assert run_agent("notify", {"OCF_RESKEY_CRM_meta_notify_type": "post"}, **ok).returncode == 0
    assert run_agent("reload", {}, **ok).returncode == 3
    assert subprocess.run([str(AGENT)], capture_output=True).returncode == 2


# --- root: real nodes in namespaces ---------------------------------------------------------

pytestroot = pytest.mark.root


def _gates() -> None:
    requires_root()
    requires_commands("ip", "ocf-tester", "xmllint")


@pytestroot
def test_ocf_tester_passes_on_a_two_node_resource():
    _gates()
    with TwoNodes() as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=20)
        p = node_params(t, "alpha")
        cmd = ["ip", "netns", "exec", t.ns["alpha"], "ocf-tester", "-n", "test"]
        for k, v in p.items():
            cmd += ["-o", f"{k}={v}"]
        started = time.monotonic()
        res = subprocess.run([*cmd, str(AGENT)], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OCF_ROOT": "/usr/lib/ocf"})
        took = time.monotonic() - started
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-5000:]
        assert f"{AGENT} passed all tests" in res.stdout
        print(f"ocf-tester: passed in {took:.1f} s")
        # ocf-tester leaves the resource stopped on alpha; beta never noticed more than a peer
        # coming and going
        assert t.status("alpha") == {}
        b = t.status("beta")
        assert (b["role"], b["disk_state"]) == ("Secondary", "UpToDate")
        if shutil.which("crm_attribute"):
            # no cluster here: the agent says so, and the actions still succeed
            # a recurring monitor (a probe of a stopped resource leaves the score alone)
            res = run_agent("monitor", {"OCF_RESKEY_CRM_meta_interval": "10000"}, t.ns["alpha"], **p)
            assert res.returncode == 7
            assert "promotion score not set: " in res.stderr and "-D: exit " in res.stderr


@pytestroot
def test_monitor_codes_from_real_states_including_failed_promoted():
    _gates()
    requires_module("nbd")
    with FillableTmpfs(48 * MiB) as fs, \
            TwoNodes(size=32 * MiB, disk="on-io-error detach; resync-rate 100M;",
                     external_md=True, disk_dirs={"alpha": fs.path}) as t:
        t.create_and_up()
        t.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        t.wait_synced(timeout=20)
        p = node_params(t, "alpha")
        ns = t.ns["alpha"]
        assert run_agent("start", {}, ns, **p).returncode == 0          # already up: a no-op
        assert run_agent("monitor", {}, ns, **p).returncode == 0        # Secondary
        assert run_agent("promote", {}, ns, **p).returncode == 0
        assert run_agent("monitor", {}, ns, **p).returncode == 8        # Primary, UpToDate

        import nbd
        h = nbd.NBD()
        h.connect_uri(t.uri("alpha"))
        try:
            h.pwrite(os.urandom(MiB), 0)
            fs.fill()
            # fails locally: alpha detaches; the write itself is test_replication_io_errors'
            # subject (served by the peer), here only the disk state that follows matters
            try:
                h.pwrite(os.urandom(MiB), 4 * MiB)
                h.flush()
            except nbd.Error as e:
                print(f"write during detach: {e}")
            t.wait("alpha", lambda s: s["disk_state"] == "Diskless", "alpha Diskless")
            # Diskless but connected to an UpToDate peer: still a working Primary
            assert run_agent("monitor", {}, ns, **p).returncode == 8
            t.link(False)
            t.wait("alpha", lambda s: s["connection"] != "Connected", "alpha disconnected")
            res = run_agent("monitor", {}, ns, **p)
            assert res.returncode == 9, res.stderr
            assert "Primary without access to UpToDate data (disk Diskless" in res.stderr
        finally:
            try:
                h.shutdown()
            except nbd.Error:
                pass            # the last flush may fail: no disk and no peer
        # what Pacemaker does after 9: demote, stop (and fences the node if stop fails)
        fs.repair()
        res = run_agent("stop", {}, ns, **p)
        # drbdadm down of a node whose disk failed succeeds (before: "Device is diskless")
        assert res.returncode == 0, res.stderr
        assert run_agent("monitor", {}, ns, **p).returncode == 7
