# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.ipaddr without root: IPaddr/IPaddr2 argument parsing (with fuzzing), ARP frame layout;
hbd.journal round trip."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import ConfigError
from hbd.ipaddr import ARPOP_REPLY, ARPOP_REQUEST, IpSpec, build_garp, parse_ip_spec
from hbd.journal import Journal, format_record, read_journal


@pytest.mark.parametrize("text,spec", [
    ("10.0.17.26", IpSpec("10.0.17.26")),
    ("10.0.17.26/24", IpSpec("10.0.17.26", 24)),
    ("10.0.17.26/24/eth0", IpSpec("10.0.17.26", 24, "eth0")),
    ("10.0.17.26/24/10.0.17.255", IpSpec("10.0.17.26", 24, broadcast="10.0.17.255")),
    ("135.9.216.3/28/eth0/135.9.216.12", IpSpec("135.9.216.3", 28, "eth0", None, "135.9.216.12")),
    ("10.0.0.1/8/eth1:web/10.255.255.255", IpSpec("10.0.0.1", 8, "eth1", "eth1:web", "10.255.255.255")),
])
def test_parse_ip_spec(text, spec):
    assert parse_ip_spec(text) == spec


@pytest.mark.parametrize("text,msg", [
    ("10.0.17.300", "'10.0.17.300' is not an IPv4 address"),
    ("10.0.17.26/33", "prefix length '33' is not 0..32"),
    ("10.0.17.26/x", "prefix length 'x'"),
    ("10.0.17.26//eth0", "expected ip[/nbits"),
    ("10.0.17.26/24/eth0/eth1", "'eth1' is not a broadcast address"),
    ("10.0.17.26/24/averyveryverylongname0", "is not an interface name"),
    ("10.0.17.26/24/eth0/1.2.3.4/5", "expected ip[/nbits"),
])
def test_parse_ip_spec_errors(text, msg):
    with pytest.raises(ConfigError) as e:
        parse_ip_spec(text)
    assert str(e.value).startswith(f"ipaddr: bad address spec {text!r}") and msg in str(e.value)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789./:abethx-", max_size=40))
def test_parse_ip_spec_fuzz_only_config_errors(text):
    try:
        spec = parse_ip_spec(text)
    except ConfigError:
        return
    assert spec.prefixlen is None or 0 <= spec.prefixlen <= 32


def test_garp_frames_request_and_reply():
    mac = bytes.fromhex("02fc00000001")
    req = build_garp(mac, "10.0.17.26", ARPOP_REQUEST)
    rep = build_garp(mac, "10.0.17.26", ARPOP_REPLY)
    assert len(req) == len(rep) == 42
    assert req[:6] == b"\xff" * 6 and req[6:12] == mac and req[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", req[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert req[22:28] == mac and req[28:32] == bytes([10, 0, 17, 26])      # sender
    assert req[32:38] == b"\x00" * 6 and req[38:42] == bytes([10, 0, 17, 26])  # target ip = sender ip
    assert struct.unpack("!H", rep[20:22])[0] == 2 and rep[32:38] == b"\xff" * 6


def test_journal_round_trip_and_torn_line(tmp_path):
    path = str(tmp_path / "journal.jsonl")
    j = Journal(path, "ha1")
    j.record("node", peer="ha2", state="dead", graceful=False)
    j.record("group", group="10.0.17.26", old="stopped", new="starting", reason="takeover from ha2")
    j.close()
    with open(path, "a") as f:
        f.write('{"event": "node", "peer": "ha')          # torn by a crash
    recs = read_journal(path)
    assert [r["event"] for r in recs] == ["node", "group"]
    assert recs[0]["node"] == "ha1" and recs[0]["ts"].endswith("+00:00") and isinstance(recs[0]["mono"], float)
    assert read_journal(path, limit=1)[0]["event"] == "group"
    assert format_record(recs[1]).endswith("ha1: group 10.0.17.26: stopped -> starting (takeover from ha2)")
    assert read_journal(str(tmp_path / "missing")) == []


def test_journal_tail_reads_only_the_end(tmp_path):
    path = str(tmp_path / "j.jsonl")
    j = Journal(path, "ha2")
    for i in range(5000):
        j.record("node", peer="ha1", state="up", i=i)
    j.close()
    tail = read_journal(path, limit=3)
    assert [r["i"] for r in tail] == [4997, 4998, 4999]
    assert len(read_journal(path)) == 5000
