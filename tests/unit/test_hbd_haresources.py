# SPDX-License-Identifier: GPL-2.0-or-later
"""haresources: heartbeat's resource-group lines."""
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import ConfigError
from hbd.haresources import ResourceGroup, ResourceSpec, load_haresources, parse_haresources, parse_resource

SEED = pathlib.Path(__file__).resolve().parents[2] / "examples" / "seed"


def test_seed_file_verbatim():
    groups = load_haresources(SEED, nodes=["ha1", "ha2"])
    assert groups == (ResourceGroup(node="ha1", line=3, resources=(
        ResourceSpec("IPaddr", ("10.0.17.26",)), ResourceSpec("datadisk"), ResourceSpec("httpd"),
        ResourceSpec("mysql"))),)
    assert groups[0].name == "10.0.17.26"   # heartbeat's group key: first resource as written
    assert [str(r) for r in groups[0].resources] == ["10.0.17.26", "datadisk", "httpd", "mysql"]


def test_heartbeat_doc_examples():
    text = ("node1 10.0.0.170 Filesystem::/dev/sda1::/data1::ext2\n"
            "just.linux-ha.org 135.9.216.3/28/eth0/135.9.216.12 httpd\n"
            "node1 IPaddr::123.45.67.89 httpd\n")
    g = parse_haresources(text)
    assert g[0].resources[1] == ResourceSpec("Filesystem", ("/dev/sda1", "/data1", "ext2"))
    assert g[1].node == "just.linux-ha.org"
    assert g[1].resources[0] == ResourceSpec("IPaddr", ("135.9.216.3/28/eth0/135.9.216.12",))
    assert g[2].resources[0] == ResourceSpec("IPaddr", ("123.45.67.89",))
    assert g[2].name == "IPaddr::123.45.67.89"
    assert [x.line for x in g] == [1, 2, 3]


def test_bare_ip_equals_ipaddr():
    assert parse_resource("10.0.0.1/24/eth0") == parse_resource("IPaddr::10.0.0.1/24/eth0")
    assert parse_resource("IPaddr2::10.0.0.1/24/eth0:0") == ResourceSpec("IPaddr2", ("10.0.0.1/24/eth0:0",))


def test_continuation_comments_whitespace_and_case():
    text = ("# header\n"
            "HA1   10.0.0.1 \\\n"
            "\tdatadisk::r0 \\\n"
            "   httpd   # the web server\n"
            "\n"
            "ha2 MailTo::root@example.com::Failover\n")
    g = parse_haresources(text, nodes=["ha1", "ha2"])
    assert len(g) == 2
    assert g[0].node == "ha1" and g[0].line == 2
    assert g[0].resources == (ResourceSpec("IPaddr", ("10.0.0.1",)), ResourceSpec("datadisk", ("r0",)),
                              ResourceSpec("httpd"))
    assert g[1].resources == (ResourceSpec("MailTo", ("root@example.com", "Failover")),)
    assert g[1].line == 6


def test_unknown_node_only_an_error_with_a_node_list():
    assert parse_haresources("ha3 httpd\n")[0].node == "ha3"
    with pytest.raises(ConfigError) as e:
        parse_haresources("ha3 httpd\n", "/etc/ha.d/haresources", nodes=["ha1", "ha2"])
    assert str(e.value) == "/etc/ha.d/haresources:1: node 'ha3' is not a node of ha.cf (node lines: ha1, ha2)"


@pytest.mark.parametrize("text, message", [
    ("ha1\n", "haresources:1: node 'ha1' has no resources: expected 'NODE RESOURCE [RESOURCE...]'"),
    ("ha1 httpd\nha2 httpd\n", "haresources:2: group 'httpd' already defined on line 1: "
                               "the first resource of each line must be unique"),
    ("ha1 10.0.0.300\n", "haresources:1: IP resource '10.0.0.300': expected ip[/nbits[/dev][/bcast]]: "
                         "'10.0.0.300' is not an IPv4 address"),
    ("ha1 10.0.0.1/33\n", "haresources:1: IP resource '10.0.0.1/33': expected ip[/nbits[/dev][/bcast]]: "
                          "prefix length '33' is not 0..32"),
    ("ha1 10.0.0.1/24/eth0/10.0.0.255/x\n", "haresources:1: IP resource '10.0.0.1/24/eth0/10.0.0.255/x': "
                                            "expected ip[/nbits[/dev][/bcast]]: too many '/' parts"),
    ("ha1 Filesystem::/dev/sda1::::ext3\n", "haresources:1: resource 'Filesystem::/dev/sda1::::ext3': "
                                            "empty argument between '::' separators"),
    ("ha1 ::x\n", "haresources:1: resource '::x': expected a script name (letters, digits, '_', '-', '.') "
                  "before '::'"),
    ("ha1 IPaddr::1.2.3.4::x\n", "haresources:1: resource 'IPaddr::1.2.3.4::x': IPaddr takes one argument "
                                 "'ip[/nbits[/dev[/bcast]]]', got 2"),
    ("\n\n10.0.0.1 httpd\n", "haresources:3: expected a node name first, got resource '10.0.0.1'"),
])
def test_errors(text, message):
    with pytest.raises(ConfigError) as e:
        parse_haresources(text)
    assert str(e.value) == message


def test_load_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"haresources: cannot read: No such file or directory$"):
        load_haresources(tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ha12 .:/\\#\n\tIPadr0Fils-")), max_size=120))
def test_fuzz_only_config_error(text):
    try:
        groups = parse_haresources(text, nodes=["ha1", "ha2"])
    except ConfigError as e:
        assert str(e).startswith("haresources")
    else:
        for g in groups:
            assert g.node in ("ha1", "ha2") and g.resources
            assert all(r.name for r in g.resources)
