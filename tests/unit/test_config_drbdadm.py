# SPDX-License-Identifier: GPL-2.0-or-later
"""Debian drbd-utils' drbdadm as an offline oracle for replica.conf (drbd-reference.md 2.2).

Every fixture without our `export` keyword must be accepted by the real `drbdadm dump all`
(DRBD 9.22's drbdadm, or its 8.4 personality /lib/drbd/drbdadm-84 for 8.3/8.4 syntax), and must
mean the same thing: drbdadm's normalised dump, read back by our parser, equals our reading of the
fixture. Our own `dump_config` output must be accepted by drbdadm too. `__DRBD_NODE__` pretends to
be a host that is in no resource, so drbdadm does not check addresses against this machine's IPs.
Skips when drbd-utils is not installed (`apt-get install drbd-utils`).
"""
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from replica.config import load_config, parse_config
from replica.config_dump import dump_config
from tests.conftest import requires_commands

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
DRBDADM_84 = next((p for p in ("/lib/drbd/drbdadm-84", "/usr/lib/drbd/drbdadm-84") if os.path.exists(p)), None)

# fixture -> which drbdadm personalities must accept it ("9": drbdadm 9.x, "84": drbdadm-84)
ORACLES = {
    "replica-84.conf": ("84", "9"),
    "replica-83-syncer.conf": ("84",),   # drbdadm 9 rejects syncer {} ('a syncer option keyword' expected)
    "replica-include.conf": ("84", "9"),
    "replica-9.conf": ("9",),            # drbdadm-84 rejects fencing in net {} and node-id
}
CASES = [(name, oracle) for name, oracles in ORACLES.items() for oracle in oracles]


def drbdadm(oracle):
    if oracle == "84":
        requires_commands("drbdadm")
        if DRBDADM_84 is None:
            pytest.skip("needs /lib/drbd/drbdadm-84 (apt-get install drbd-utils)")
        return DRBDADM_84
    requires_commands("drbdadm")
    return shutil.which("drbdadm")


def run_dump(oracle, conf):
    proc = subprocess.run([drbdadm(oracle), "-c", str(conf), "dump", "all"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "__DRBD_NODE__": "replica-test-nohost"})
    return proc


def without_export(text):
    return re.sub(r"\bexport\s+[^;{}]*;", "", text)


def without_assigned_node_ids(theirs, ours):
    """drbdadm 9 numbers hosts that have no node-id (drbd-reference.md 2.2); forget those numbers."""
    out = {}
    for name, r in theirs.items():
        hosts = {h: dataclasses.replace(s, node_id=None) if name in ours and h in ours[name].hosts
                 and ours[name].hosts[h].node_id is None else s for h, s in r.hosts.items()}
        out[name] = dataclasses.replace(r, hosts=hosts)
    return out


def stage(tmp_path, name):
    """Copy the fixture (and the files it includes) into tmp_path without `export` statements."""
    for p in [*DATA.glob("inc-*.conf"), DATA / name]:
        (tmp_path / p.name).write_text(without_export(p.read_text()))
    return tmp_path / name


def test_every_fixture_has_an_oracle_or_says_why_not():
    for p in DATA.glob("replica-*.conf"):
        assert p.name in ORACLES or "drbdadm: no" in p.read_text().splitlines()[0], p.name


@pytest.mark.parametrize("name, oracle", CASES)
def test_drbdadm_accepts_fixture_and_reads_it_as_we_do(tmp_path, name, oracle):
    conf = stage(tmp_path, name)
    proc = run_dump(oracle, conf)
    assert proc.returncode == 0, proc.stderr
    ours = load_config(conf)
    theirs = parse_config(proc.stdout, str(tmp_path / "drbdadm-dump.conf"))
    assert without_assigned_node_ids(theirs.resources, ours.resources) == ours.resources
    assert list(ours.resources)  # not vacuous


@pytest.mark.parametrize("name, oracle", [c for c in CASES if c != ("replica-9.conf", "9")])
def test_drbdadm_accepts_our_dump(tmp_path, name, oracle):
    # replica-9 is left out: dump_config writes fencing in disk {} (8.4) and node-id (9.x), a mix
    # no single drbdadm personality accepts.
    cfg = load_config(stage(tmp_path, name))
    out = tmp_path / "ours.conf"
    out.write_text(dump_config(cfg))
    proc = run_dump(oracle, out)
    assert proc.returncode == 0, proc.stderr + out.read_text()
    assert without_assigned_node_ids(parse_config(proc.stdout).resources, cfg.resources) == cfg.resources


VALID_HOST = "  on a { device /dev/drbd0; disk /d; meta-disk internal; address 10.0.0.1:7000; }\n"
REJECTED = [  # (text, line drbdadm and we both report)
    ("resource r0 {\n  protocl C;\n" + VALID_HOST + "}\n", 2),
    ("resource r0 {\n  net { ping-int 10 }\n" + VALID_HOST + "}\n", 2),
    ("resource r0 {\n  disk { bogus-option 1; }\n" + VALID_HOST + "}\n", 2),
    ("resource r0 {\n" + VALID_HOST + "  on a { device /dev/drbd1; disk /d; meta-disk internal; }\n}\n", None),
    ("resource r0 {\n" + VALID_HOST, None),
    ("resource r0 {\n  net { protocol D; }\n" + VALID_HOST + "}\n", None),
]


@pytest.mark.parametrize("text, line", REJECTED)
def test_drbdadm_and_we_reject_the_same_configs(tmp_path, text, line):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    proc = run_dump("9", conf)   # drbdadm-84 accepts a file that ends inside a section
    assert proc.returncode != 0
    with pytest.raises(Exception) as exc:
        load_config(conf)
    assert type(exc.value).__name__ == "ConfigError"
    if line is not None:
        assert f"{conf}:{line}: " in str(exc.value)
        assert re.search(rf"(^|/)bad\.conf:{line}: ", proc.stderr, re.M), proc.stderr


def test_drbdadm_84_and_we_reject_one_address_for_both_hosts_at_the_same_lines(tmp_path):
    conf = tmp_path / "same.conf"
    conf.write_text("resource r0 {\n" + VALID_HOST +
                    "  on b {\n    device /dev/drbd0;\n    disk /d;\n    meta-disk internal;\n"
                    "    address 10.0.0.1:7000;\n  }\n}\n")
    proc = run_dump("84", conf)     # drbdadm 9.22 only says "BAD LUCK, equal hashes"
    assert proc.returncode != 0
    assert re.search(r"(^|/)same\.conf:7: conflicting use of IP '10\.0\.0\.1:7000'", proc.stderr, re.M), proc.stderr
    assert re.search(r"(^|/)same\.conf:2: IP '10\.0\.0\.1:7000' first used here", proc.stderr, re.M), proc.stderr
    with pytest.raises(Exception) as exc:
        load_config(conf)
    assert str(exc.value) == (f"{conf}:7: resource 'r0': on 'b': address: conflicting use of IP "
                              f"'10.0.0.1:7000' (first used at {conf}:2, on 'a')")
