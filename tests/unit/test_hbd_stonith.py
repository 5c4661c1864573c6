# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.stonith: ha.cf stonith/stonith_host selection, null and external plugins (real scripts)."""
import asyncio

import pytest

from hacommon.errors import ConfigError
from hbd.config import parse_ha_config
from hbd.stonith import device_status, fence, get_hosts, load_devices

PLUGIN = """#!/bin/sh
case "$1" in
  getconfignames) echo hostlist; echo logdir ;;
  gethosts) for h in $hostlist; do echo "$h"; done ;;
  reset) echo "reset $2 hostlist=$hostlist" >> "$logdir/calls"; [ -e "$logdir/fail" ] && exit 1; exit 0 ;;
  status) exit 0 ;;
  *) exit 1 ;;
esac
"""

BASE = "keepalive 1\ndeadtime 5\nbcast eth0\nnode ha1 ha2\nauto_failback on\n"


def cfg(extra):
    return parse_ha_config(BASE + extra, "ha.cf")


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "ha.d" / "stonith.d" / "external"
    d.mkdir(parents=True)
    p = d / "lab"
    p.write_text(PLUGIN)
    p.chmod(0o755)
    return tmp_path


def test_stonith_host_lines_apply_to_star_and_this_node_only(plugin_dir):
    c = cfg(f"stonith_host ha1 null ha2\nstonith_host ha2 null ha1\nstonith_host * external/lab ha1 {plugin_dir}\n")
    devs = load_devices(c, "ha2", str(plugin_dir / "ha.d"), environ={})
    assert [(d.type, d.params) for d in devs] == [("null", ("ha1",)), ("external/lab", ("ha1", str(plugin_dir)))]


def test_unknown_type_and_missing_plugin_are_config_errors(plugin_dir):
    with pytest.raises(ConfigError, match=r"^ha.cf: stonith_host \* apcmaster x: unsupported stonith type"):
        load_devices(cfg("stonith_host * apcmaster x\n"), "ha1", str(plugin_dir / "ha.d"), environ={})
    with pytest.raises(ConfigError, match="stonith plugin 'external/nope' not found"):
        load_devices(cfg("stonith_host * external/nope\n"), "ha1", str(plugin_dir / "ha.d"), environ={})


def test_stonith_line_reads_params_from_file(plugin_dir):
    (plugin_dir / "ha.d" / "stonith.cfg").write_text(f"ha2 {plugin_dir}\n")
    devs = load_devices(cfg("stonith external/lab stonith.cfg\n"), "ha1", str(plugin_dir / "ha.d"), environ={})
    assert devs[0].params == ("ha2", str(plugin_dir))
    ok, detail = asyncio.run(fence(devs, "ha2"))
    assert ok and "reset by external/lab" in detail
    assert (plugin_dir / "calls").read_text() == "reset ha2 hostlist=ha2\n"


def test_external_reset_success_failure_and_wrong_host(plugin_dir):
    devs = load_devices(cfg(f"stonith_host * external/lab ha2 {plugin_dir}\n"), "ha1", str(plugin_dir / "ha.d"),
                        environ={})
    assert asyncio.run(get_hosts(devs[0])) == ["ha2"]
    assert asyncio.run(device_status(devs[0]))[0] is True
    (plugin_dir / "fail").touch()
    ok, detail = asyncio.run(fence(devs, "ha2"))
    assert not ok and detail.startswith("stonith: ha2: not fenced: external/lab: reset failed:")
    ok, detail = asyncio.run(fence(devs, "ha3"))
    assert not ok and "does not control ha3 (hosts: ha2)" in detail


def test_param_count_must_match_getconfignames(plugin_dir):
    devs = load_devices(cfg("stonith_host * external/lab ha2\n"), "ha1", str(plugin_dir / "ha.d"), environ={})
    ok, detail = asyncio.run(fence(devs, "ha2"))
    assert not ok and "gethosts failed" in detail and "plugin wants 2 parameter(s) (hostlist logdir)" in detail


def test_null_device_and_no_device():
    devs = load_devices(cfg("stonith_host * null ha1 ha2\n"), "ha1", "/nonexistent", environ={})
    assert asyncio.run(fence(devs, "ha2")) == (True, "stonith: ha2: reset by null device (nothing done)")
    assert asyncio.run(fence((), "ha2")) == (False, "stonith: ha2: no STONITH device configured")
