# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad's command handling without sockets or disks: the configuration a command names is
the one used, an `address` not on this host is refused with file:line before anything opens,
and a daemon started by replicactl ends once a command leaves nothing in use."""
import pytest

from replica import locations, netif
from replica.daemon import Daemon

CONF = """resource {name} {{
  on alpha {{
    disk {dir}/{name}.img;
    address {ip}:7789;
  }}
  on beta {{
    disk {dir}/{name}.img;
    address 10.1.1.2:7789;
  }}
}}
"""


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    a.write_text(CONF.format(name="r0", dir=tmp_path, ip="10.1.1.1"))
    b.write_text(CONF.format(name="r1", dir=tmp_path, ip="10.1.1.31"))
    where = locations.resolve(str(a), "alpha", str(tmp_path / "run"))
    return a, b, where


def test_each_command_uses_the_config_it_names(files):
    a, b, where = files
    d = Daemon(where)
    reply = d.handle({"cmd": "status", "resource": "r1", "config": str(b), "node": "alpha"})
    assert reply["ok"] and reply["resources"][0]["name"] == "r1"
    assert d.handle({"cmd": "status", "config": str(b)})["resources"][0]["name"] == "r1"
    # without a config: the daemon's own file, read again (it may have changed on disk)
    assert d.handle({"cmd": "status"})["resources"][0]["name"] == "r0"
    a.write_text(b.read_text().replace("r1", "r9"))
    assert d.handle({"cmd": "status"})["resources"][0]["name"] == "r9"
    assert d.handle({"cmd": "status", "resource": "r1", "config": str(b), "node": "gamma"}) == {
        "ok": False, "error": f"{b}:1: resource 'r1' has no 'on gamma' section (hosts: alpha, beta)"}


def test_address_not_on_this_host_refuses_up_and_connect_and_ends_an_idle_daemon(files, monkeypatch):
    a, b, where = files
    asked = []
    monkeypatch.setattr(netif, "is_local_address", lambda ip: asked.append(ip) or False)
    d = Daemon(where, exit_when_idle=True)
    want = (f"{b}:4: resource 'r1': on 'alpha': address 10.1.1.31:7789: IP 10.1.1.31 not found "
            f"on this host (no interface of this network namespace has it)")
    reply = d.handle({"cmd": "connect", "resource": "r1", "config": str(b), "node": "alpha"})
    assert reply == {"ok": False, "error": want}
    reply = d.handle({"cmd": "up", "resource": "r1", "config": str(b), "node": "alpha"})
    assert reply == {"ok": False, "error": want}
    assert asked == ["10.1.1.31", "10.1.1.31"]
    assert d.stop_event.is_set()            # nothing in use after a failed up: the daemon ends


def test_a_daemon_run_by_hand_stays_after_a_failed_up(files, monkeypatch):
    a, b, where = files
    monkeypatch.setattr(netif, "is_local_address", lambda ip: False)
    d = Daemon(where)
    assert not d.handle({"cmd": "up", "resource": "r0"})["ok"]
    assert not d.stop_event.is_set()


def test_wildcards_are_local_without_asking_netlink():
    assert netif.is_local_address("0.0.0.0") and netif.is_local_address("::")


def test_a_refused_command_names_its_refusal_beside_the_sentence(files):
    a, b, where = files
    d = Daemon(where)
    assert d.handle({"cmd": "detach", "resource": "r0"}) == {
        "ok": False, "error": "r0: Device is diskless, the requested operation requires a disk",
        "refusal": "IS_DISKLESS", "context": "r0"}


def test_commands_are_dispatched_through_the_table_only(files):
    a, b, where = files
    reply = Daemon(where).handle({"cmd": "cmd_verb", "resource": "r0"})
    assert not reply["ok"] and reply["error"].startswith("unknown command 'cmd_verb'")


def test_disable_ip_verification_skips_the_local_address_check():
    from replica.config import parse_config
    from replica.daemon import check_address_is_local
    from replica.errors import ConfigError
    body = ("resource r0 {\n  on a { disk /tmp/a; address 192.0.2.77:7789; }\n"
            "  on b { disk /tmp/b; address 192.0.2.78:7789; }\n}\n")
    checked = parse_config(body, "/etc/replica.conf")
    with pytest.raises(ConfigError, match="IP 192.0.2.77 not found on this host"):
        check_address_is_local("r0", checked.resource("r0").host("a"), checked)
    trusting = parse_config("global { disable-ip-verification; }\n" + body, "/etc/replica.conf")
    check_address_is_local("r0", trusting.resource("r0").host("a"), trusting)


def test_cmd_timeouts_come_from_the_global_section(tmp_path):
    from replica.cli import Ctl
    conf = tmp_path / "replica.conf"
    conf.write_text("global { cmd-timeout-short 3; cmd-timeout-medium 200; }\n"
                    "resource r0 {\n  on a { disk /tmp/a; }\n}\n")
    ctl = Ctl(locations.resolve(str(conf), "a", str(tmp_path)), None)
    assert ctl.cmd_timeout("status") == 3 and ctl.cmd_timeout("primary") == 200
    conf.write_text("resource r0 {\n  on a { disk /tmp/a; }\n}\n")
    assert Ctl(locations.resolve(str(conf), "a", str(tmp_path)), None).cmd_timeout("up") == 60
