# SPDX-License-Identifier: GPL-2.0-or-later
"""ha.cf: every heartbeat directive, heartbeat's defaults and checks, exact file:line errors."""
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import ConfigError
from hbd.config import HaConfig, Mcast, Ucast, load_ha_config, parse_ha_config, parse_time_s

SEED = pathlib.Path(__file__).resolve().parents[2] / "examples" / "seed"
MIN = "bcast eth0\nnode ha1 ha2\n"


def test_seed_file_verbatim():
    c = load_ha_config(SEED)
    assert c.path == str(SEED / "ha.cf")
    assert c.logfacility == "local0" and c.logfile is None and c.debugfile is None
    assert (c.keepalive_s, c.deadtime_s) == (3.0, 30.0)
    assert c.warntime_s == 15.0          # heartbeat default: deadtime / 2
    assert c.initdead_s == 30.0          # deadtime > 10 s -> initdead = deadtime
    assert c.deadping_s == 30.0
    assert c.udpport == 694 and c.bcast == ("eth0",)
    assert c.ucast == () and c.mcast == () and c.serial == () and c.baud == 19200
    assert c.nodes == ("ha1", "ha2")
    assert c.auto_failback == "legacy"   # seed: "nice_failback off" behaviour = failback
    assert c.crm == "off"
    assert any("no auto_failback line" in w for w in c.warnings)


def test_every_directive():
    text = """
# all of heartbeat's ha.cf directives hbd knows
logfacility daemon
logfile /var/log/ha-log
debugfile /var/log/ha-debug
use_logd no
debug 1
keepalive 500ms
deadtime 5
warntime 2.5
initdead 20
deadping 4000ms
udpport 695
baud 38400
bcast eth0 eth1
mcast eth0 239.0.0.43 694 1 0
ucast eth1 192.168.1.2
serial /dev/ttyS0 /dev/ttyS1
node HA1
node ha2 ha3
auto_failback on
ping 10.0.0.254 10.0.0.253
ping_group routers 10.0.0.1 10.0.0.2
respawn hacluster /usr/lib/heartbeat/ipfail -v
failfast hacluster /usr/bin/important
stonith baytech /etc/ha.d/conf/stonith.baytech
stonith_host * external/ssh ha1 ha2
stonith_host ha1 null ha2
crm off
hopfudge 2
max_rexmit_delay 300
watchdog /dev/watchdog
autojoin none
cluster mycluster
realtime on
coredumps true
hbgenmethod file
uuidfrom nodename
msgfmt netstring
compression bz2
compression_threshold 2
traditional_compression no
apiauth ipfail uid=hacluster
gratuitous_arp_count 5
gratuitous_arp_interval 500ms
"""
    c = parse_ha_config(text, "/etc/ha.d/ha.cf")
    assert c == HaConfig(
        path="/etc/ha.d/ha.cf", keepalive_s=0.5, deadtime_s=5.0, warntime_s=2.5, initdead_s=20.0, udpport=695,
        bcast=("eth0", "eth1"), mcast=(Mcast("eth0", "239.0.0.43", 694, 1, 0),), ucast=(Ucast("eth1", "192.168.1.2"),),
        serial=("/dev/ttyS0", "/dev/ttyS1"), baud=38400, nodes=("ha1", "ha2", "ha3"), auto_failback="on",
        logfacility="daemon", logfile="/var/log/ha-log", debugfile="/var/log/ha-debug",
        ping=("10.0.0.254", "10.0.0.253"), ping_group=(("routers", ("10.0.0.1", "10.0.0.2")),), deadping_s=4.0,
        respawn=(("hacluster", "/usr/lib/heartbeat/ipfail -v"),), failfast=(("hacluster", "/usr/bin/important"),),
        stonith=("baytech", "/etc/ha.d/conf/stonith.baytech"),
        stonith_host=(("*", "external/ssh", ("ha1", "ha2")), ("ha1", "null", ("ha2",))), crm="off",
        gratuitous_arp_count=5, gratuitous_arp_interval_ms=500, use_logd=False, debug=1, hopfudge=2,
        max_rexmit_delay_ms=300, watchdog="/dev/watchdog", autojoin="none", cluster="mycluster",
        extra=(("realtime", "on"), ("coredumps", "true"), ("hbgenmethod", "file"), ("uuidfrom", "nodename"),
               ("msgfmt", "netstring"), ("compression", "bz2"), ("compression_threshold", "2"),
               ("traditional_compression", "no"), ("apiauth", "ipfail uid=hacluster")))
    assert c.media_count == 6


@pytest.mark.parametrize("word, seconds", [
    ("10", 10.0), ("1500ms", 1.5), ("1.5", 1.5), ("500msec", 0.5), ("250000us", 0.25), ("0", 0.0),
    (".5", 0.5), ("3MS", 0.003), ("0.001", 0.001), ("499us", 0.0), ("501us", 0.001), ("1.2345", 1.235),
])
def test_time_syntax(word, seconds):
    assert parse_time_s(word) == pytest.approx(seconds)


@pytest.mark.parametrize("word", ["x", "", "10 s", "-1", "1e3", "10m", "ms", "1.2.3", "2s", "2sec", "1min"])
def test_time_syntax_rejects(word):
    assert parse_time_s(word) is None


@pytest.mark.parametrize("deadtime, initdead", [(30, 30.0), (11, 11.0), (10, 20.0), (6, 12.0), (5, 12.0), (3, 12.0)])
def test_initdead_default_as_heartbeat(deadtime, initdead):
    c = parse_ha_config(f"keepalive 1\ndeadtime {deadtime}\n{MIN}")
    assert c.initdead_s == initdead
    assert c.warntime_s == deadtime / 2
    assert c.deadping_s == deadtime


def test_defaults():
    c = parse_ha_config(MIN)
    assert (c.keepalive_s, c.deadtime_s, c.warntime_s, c.initdead_s) == (2.0, 30.0, 15.0, 30.0)
    assert (c.udpport, c.auto_failback, c.crm, c.baud) == (694, "legacy", "off", 19200)
    assert (c.gratuitous_arp_count, c.gratuitous_arp_interval_ms, c.hopfudge, c.max_rexmit_delay_ms) == (10, 250, 1, 250)


def test_option_directives_take_every_word_and_last_wins():
    c = parse_ha_config("keepalive 1 2\n" + MIN)
    assert c.keepalive_s == 2.0


def test_comments_anywhere_and_blank_lines():
    c = parse_ha_config("   # x\n\nkeepalive 1 # one second\n\tdeadtime 10#ten\n" + MIN)
    assert (c.keepalive_s, c.deadtime_s) == (1.0, 10.0)


@pytest.mark.parametrize("line, value", [("nice_failback on", "off"), ("nice_failback off", "legacy"),
                                         ("auto_failback off", "off"), ("auto_failback legacy", "legacy"),
                                         ("auto_failback YES", "on"), ("auto_failback 0", "off")])
def test_failback(line, value):
    c = parse_ha_config(line + "\n" + MIN)
    assert c.auto_failback == value
    assert all("no auto_failback" not in w for w in c.warnings)


def test_crm_values():
    c = parse_ha_config("crm respawn\n" + MIN)
    assert c.crm == "respawn"
    assert "ha.cf:1: crm: hbd has no Pacemaker (CRM) mode: resources come from haresources " \
           "(heartbeat R1 mode)" in c.warnings
    assert not [w for w in parse_ha_config("crm off\n" + MIN).warnings if "crm" in w]
    assert parse_ha_config("crm yes\n" + MIN).crm == "on"
    assert parse_ha_config("pacemaker no\n" + MIN).crm == "off"


def test_udpport_after_media_warns():
    c = parse_ha_config("bcast eth0\nudpport 700\nnode ha1\n")
    assert c.udpport == 700
    assert c.warnings[0].startswith("ha.cf:2: udpport: heartbeat applies udpport only to media statements")


def test_warntime_not_below_deadtime_warns():
    c = parse_ha_config("keepalive 1\ndeadtime 10\nwarntime 10\n" + MIN)
    assert any(w.startswith("ha.cf:3: warntime: 10s is not below deadtime 10s") for w in c.warnings)


def test_small_initdead_warns():
    c = parse_ha_config("keepalive 1\ndeadtime 5\ninitdead 6\n" + MIN)
    assert any(w.startswith("ha.cf:3: initdead: 6s may be too small") for w in c.warnings)


LINES12 = "#\n" * 11


@pytest.mark.parametrize("text, message", [
    (LINES12 + "deadtime x\n" + MIN, "ha.cf:12: deadtime: expected a time like 10 or 500ms, got 'x'"),
    ("keepalive 0\n" + MIN, "ha.cf:1: keepalive: must be more than 0, got '0'"),
    ("warntime 0\n" + MIN, "ha.cf:1: warntime: must be more than 0, got '0'"),
    ("keepalvie 2\n" + MIN, "ha.cf:1: unknown directive 'keepalvie'"),
    ("Keepalive 2\n" + MIN, "ha.cf:1: unknown directive 'Keepalive'"),
    ("keepalive\n" + MIN, "ha.cf:1: keepalive: missing value"),
    ("keepalive 2\ndeadtime 4\n" + MIN, "ha.cf:2: deadtime: must be more than twice keepalive: deadtime_s=4 keepalive_s=2"),
    ("keepalive 2\n" + MIN + "deadtime 4\n", "ha.cf:4: deadtime: must be more than twice keepalive: deadtime_s=4 keepalive_s=2"),
    ("deadtime 30\ninitdead 10\n" + MIN, "ha.cf:2: initdead: must not be less than deadtime: initdead_s=10 deadtime_s=30"),
    ("deadping 3\n" + MIN, "ha.cf:1: deadping: must be more than twice keepalive: deadping_s=3 keepalive_s=2"),
    ("udpport 70000\n" + MIN, "ha.cf:1: udpport: expected an integer 1..65535, got '70000'"),
    ("udpport abc\n" + MIN, "ha.cf:1: udpport: expected an integer 1..65535, got 'abc'"),
    ("baud 12345\n" + MIN, "ha.cf:1: baud: expected one of 9600, 19200, 38400, 57600, 115200, 230400, 460800, got '12345'"),
    ("baud 9600\nbaud 19200\n" + MIN, "ha.cf:2: baud: baud rate given twice (first on line 1)"),
    ("mcast eth0 239.0.0.1 694 1\n" + MIN, "ha.cf:1: mcast: expected 'mcast DEV GROUP PORT TTL LOOP', got 'eth0 239.0.0.1 694 1'"),
    ("mcast eth0 10.0.0.1 694 1 0\n" + MIN, "ha.cf:1: mcast: expected a multicast group 224.0.0.0..239.255.255.255, got '10.0.0.1'"),
    ("mcast eth0 239.0.0.1 694 256 0\n" + MIN, "ha.cf:1: mcast: expected an integer 0..255, got '256'"),
    ("mcast eth0 239.0.0.1 694 1 2\n" + MIN, "ha.cf:1: mcast: expected an integer 0..1, got '2'"),
    ("ucast eth0\n" + MIN, "ha.cf:1: ucast: expected 'ucast DEV PEER-ADDRESS', got 'eth0'"),
    ("ucast eth0 host.example\n" + MIN, "ha.cf:1: ucast: expected an IPv4 address, got 'host.example'"),
    ("bcast averyveryverylongifname\nnode a\n", "ha.cf:1: bcast: expected a network interface name, got 'averyveryverylongifname'"),
    ("serial ttyS0\n" + MIN, "ha.cf:1: serial: expected a device path like /dev/ttyS0, got 'ttyS0'"),
    ("ping 10.0.0.999\n" + MIN, "ha.cf:1: ping: expected an IPv4 address, got '10.0.0.999'"),
    ("node ha1\nnode HA1\nbcast eth0\n", "ha.cf:2: node: node 'ha1' listed twice"),
    ("node ha/1\nbcast eth0\n", "ha.cf:1: node: expected a node name as printed by 'uname -n', got 'ha/1'"),
    ("auto_failback maybe\n" + MIN, "ha.cf:1: auto_failback: expected on, off or legacy, got 'maybe'"),
    ("nice_failback perhaps\n" + MIN, "ha.cf:1: nice_failback: expected on or off (true/yes/y/1, false/no/n/0), got 'perhaps'"),
    ("logfacility local9\n" + MIN, "ha.cf:1: logfacility: expected a syslog facility (auth, authpriv, cron, daemon, ftp, "
                                   "kern, lpr, mail, news, syslog, user, uucp, local0, local1, local2, local3, local4, "
                                   "local5, local6, local7, none), got 'local9'"),
    ("respawn hacluster\n" + MIN, "ha.cf:1: respawn: expected 'respawn USER COMMAND [ARGS]', got 'hacluster'"),
    ("stonith baytech\n" + MIN, "ha.cf:1: stonith: expected 'stonith TYPE CONFIGFILE', got 'baytech'"),
    ("stonith_host *\n" + MIN, "ha.cf:1: stonith_host: expected 'stonith_host HOSTFROM|* TYPE PARAMS...', got '*'"),
    ("msgfmt xml\n" + MIN, "ha.cf:1: msgfmt: expected one of classic, netstring, got 'xml'"),
    ("realtime sometimes\n" + MIN, "ha.cf:1: realtime: expected on or off (true/yes/y/1, false/no/n/0), got 'sometimes'"),
    ("autojoin all\n" + MIN, "ha.cf:1: autojoin: expected none, other or any, got 'all'"),
    ("gratuitous_arp_interval 2m\n" + MIN, "ha.cf:1: gratuitous_arp_interval: expected a time like 10 or 500ms, got '2m'"),
    ("gratuitous_arp_count -1\n" + MIN, "ha.cf:1: gratuitous_arp_count: expected an integer 0..1000, got '-1'"),
    ("bcast eth0\n", "ha.cf: no node defined: expected at least one 'node NAME' line"),
    ("node ha1\n", "ha.cf: no heartbeat medium defined: expected a bcast, mcast, ucast or serial line"),
])
def test_errors(text, message):
    with pytest.raises(ConfigError) as e:
        parse_ha_config(text)
    assert str(e.value) == message


def test_error_uses_given_path(tmp_path):
    (tmp_path / "ha.cf").write_text("node ha1\nbcast eth0\nkeepalive soon\n")
    with pytest.raises(ConfigError) as e:
        load_ha_config(tmp_path)
    assert str(e.value) == f"{tmp_path}/ha.cf:3: keepalive: expected a time like 10 or 500ms, got 'soon'"


def test_load_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"ha.cf: cannot read: No such file or directory$"):
        load_ha_config(tmp_path / "nowhere")


WORDS = ["keepalive", "deadtime", "warntime", "initdead", "udpport", "bcast", "mcast", "ucast", "node", "serial",
         "baud", "auto_failback", "nice_failback", "ping", "respawn", "stonith", "stonith_host", "logfacility",
         "crm", "deadping", "1", "2", "10", "500ms", "x", "eth0", "ha1", "239.0.0.1", "10.0.0.1", "on", "#", "*"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS), max_size=6), max_size=12), st.text(max_size=40))
def test_fuzz_only_config_error(lines, noise):
    text = "\n".join(" ".join(ws) for ws in lines) + "\n" + noise
    try:
        c = parse_ha_config(text)
    except ConfigError as e:
        assert str(e).startswith("ha.cf")
    else:
        assert c.nodes and c.media_count >= 1
        assert c.deadtime_s > 2 * c.keepalive_s and c.initdead_s >= c.deadtime_s
