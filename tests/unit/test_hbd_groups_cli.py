# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd --config-test on the seed's files, configuration errors, hbctl without a daemon (no root)."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = os.path.join(REPO, "examples", "seed")
LSB = "#!/bin/sh\ncase $1 in start|stop) exit 0;; status) echo stopped; exit 3;; esac\nexit 2\n"


def run(*argv, env=None):
    e = dict(os.environ, PYTHONPATH=REPO)
    e.update(env or {})
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=e, timeout=60)


@pytest.fixture
def seed_dir(tmp_path):
    d = tmp_path / "ha.d"
    shutil.copytree(SEED, d)
    os.chmod(d / "authkeys", 0o600)
    (d / "resource.d").mkdir()
    for svc in ("httpd", "mysql"):
        (d / "resource.d" / svc).write_text(LSB)
        (d / "resource.d" / svc).chmod(0o755)
    return d


def test_config_test_accepts_the_seed_files_unchanged(seed_dir):
    r = run("-m", "hbd", "--config-test", "--config-dir", str(seed_dir), "--node", "ha1")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "node: ha1 ha2 (this node: ha1)" in out
    assert "keepalive 3s deadtime 30s warntime 15s initdead 30s udpport 694" in out
    assert "media: bcast eth0" in out and "auto_failback legacy" in out
    assert "stonith: none (shared disks are not protected)" in out
    assert "group 10.0.17.26 (haresources:3) preferred node ha1: 10.0.17.26 datadisk httpd mysql" in out
    assert out.rstrip().endswith("configuration OK")


def test_config_test_env_variables(seed_dir):
    r = run("-m", "hbd", "--config-test", env={"HBD_CONFIG_DIR": str(seed_dir), "HBD_NODE": "HA2"})
    assert r.returncode == 0 and "(this node: ha2)" in r.stdout


def test_missing_resource_script_is_a_config_error(seed_dir):
    os.unlink(seed_dir / "resource.d" / "mysql")
    r = run("-m", "hbd", "--config-test", "--config-dir", str(seed_dir), "--node", "ha1")
    assert r.returncode == 6
    assert r.stderr.startswith("hbd: configuration error: haresources:3: resource 'mysql': "
                               "resources: script 'mysql' not found: searched ")


def test_unknown_node_is_a_config_error(seed_dir):
    r = run("-m", "hbd", "-f", "--config-dir", str(seed_dir), "--node", "ha3", "--run-dir", str(seed_dir / "run"))
    assert r.returncode == 6 and "this node 'ha3' (--node, HBD_NODE or uname -n) is not a node line" in r.stderr
    assert not (seed_dir / "run").exists()


def test_readable_authkeys_refused(seed_dir):
    os.chmod(seed_dir / "authkeys", 0o644)
    r = run("-m", "hbd", "--config-test", "--config-dir", str(seed_dir), "--node", "ha1")
    assert r.returncode == 6 and "authkeys" in r.stderr


def test_hbctl_without_daemon(tmp_path):
    r = run("-m", "hbd.ctl", "--run-dir", str(tmp_path), "status")
    assert r.returncode == 3 and r.stdout.strip() == "Heartbeat is stopped on this machine."
    r = run("-m", "hbd.ctl", "--run-dir", str(tmp_path), "standby")
    assert r.returncode == 3 and r.stderr.startswith("hbctl: hbd is not running: ")
    r = run("-m", "hbd.ctl", "--run-dir", str(tmp_path), "standby", "most")
    assert r.returncode == 2
