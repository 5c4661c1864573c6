# SPDX-License-Identifier: GPL-2.0-or-later
"""net { tls yes; tls-keyfile F; tls-certfile F; tls-cafile F; }: parsing, the files `tls yes`
requires (located errors), inheritance from common, and `dump`."""
import textwrap

import pytest

from replica.config import parse_config
from replica.config_dump import dump_config
from replica.errors import ConfigError

FILES = 'tls-keyfile /etc/replica/a.key; tls-certfile "/etc/replica/a.crt"; tls-cafile /etc/replica/ca.crt;'


def conf(net: str, common: str = "") -> str:
    return textwrap.dedent(f"""\
        {common}
        resource r0 {{
          net {{
            {net}
          }}
          on a {{ disk /d; address 10.0.0.1:7000; }}
          on b {{ disk /d; address 10.0.0.2:7000; }}
        }}
        """)


def test_tls_is_off_by_default():
    net = parse_config(conf("protocol C;"), "r.conf").resource("r0").net
    assert (net.tls, net.tls_keyfile, net.tls_certfile, net.tls_cafile) == (False, None, None, None)


@pytest.mark.parametrize("word", ["tls;", "tls yes;"])
def test_tls_yes_with_its_files(word):
    net = parse_config(conf(f"{word} {FILES}"), "r.conf").resource("r0").net
    assert net.tls is True
    assert (net.tls_keyfile, net.tls_certfile, net.tls_cafile) == (
        "/etc/replica/a.key", "/etc/replica/a.crt", "/etc/replica/ca.crt")


def test_tls_inherited_from_common():
    net = parse_config(conf("protocol C;", common=f"common {{ net {{ tls yes; {FILES} }} }}"),
                       "r.conf").resource("r0").net
    assert net.tls and net.tls_cafile == "/etc/replica/ca.crt"


def test_tls_no_ignores_the_files():
    net = parse_config(conf(f"tls no; {FILES}"), "r.conf").resource("r0").net
    assert net.tls is False and net.tls_keyfile == "/etc/replica/a.key"


@pytest.mark.parametrize("net, message", [
    ("tls yes;", "r.conf:4: resource 'r0': net: tls yes needs tls-keyfile, tls-certfile and tls-cafile: "
                 "missing tls-keyfile, tls-certfile, tls-cafile"),
    ("tls yes; tls-keyfile /k; tls-certfile /c;",
     "r.conf:4: resource 'r0': net: tls yes needs tls-keyfile, tls-certfile and tls-cafile: missing tls-cafile"),
    ("tls maybe;", "r.conf:4: resource 'r0': net: tls: expected yes or no, got 'maybe'"),
    ("tls-cafile;", "r.conf:4: resource 'r0': net: tls-cafile: expected one value, got 0: ''"),
    ("tls yes; tls yes;", "r.conf:4: resource 'r0': net: tls: duplicate option (first at line 4)"),
])
def test_tls_errors_name_file_and_line(net, message):
    with pytest.raises(ConfigError) as e:
        parse_config(conf(net), "r.conf")
    assert str(e.value) == message


def test_tls_from_common_without_files_is_located_at_the_resource():
    with pytest.raises(ConfigError, match=r"^r.conf:2: resource 'r0': net: tls yes needs"):
        parse_config(conf("protocol C;", common="common { net { tls yes; } }"), "r.conf")


def test_dump_prints_the_tls_keywords_and_parses_back():
    cfg = parse_config(conf(f"tls yes; {FILES}"), "r.conf")
    text = dump_config(cfg)
    assert "        tls yes;\n" in text
    assert "        tls-keyfile /etc/replica/a.key;\n" in text
    assert "        tls-certfile /etc/replica/a.crt;\n" in text
    assert "        tls-cafile /etc/replica/ca.crt;\n" in text
    assert parse_config(text, "dumped.conf") == cfg


# -- `replicactl status` with TLS (replica.cli.format_status) ----------------------------------

STATUS = {"name": "r0", "up": True, "standalone": False, "peer": "beta", "role": "Primary",
          "peer_role": "Secondary", "disk_state": "UpToDate", "peer_disk_state": "UpToDate",
          "connection": "Connected", "replication": "Established", "cstate": "Connected",
          "out_of_sync_bytes": 0, "stats": {}}


def test_status_names_the_negotiated_tls_on_the_peer_line():
    from replica.cli import format_status
    st = {**STATUS, "tls": "TLSv1.3 TLS_AES_128_GCM_SHA256 peer /CN=beta"}
    assert format_status(st) == ("r0 role:Primary\n  disk:UpToDate\n"
                                 "  beta role:Secondary tls:TLSv1.3/TLS_AES_128_GCM_SHA256\n    peer-disk:UpToDate")
    assert format_status({**STATUS, "tls": None}).splitlines()[2] == "  beta role:Secondary"


def test_status_shows_why_the_tls_handshake_was_refused():
    from replica.cli import format_status
    st = {**STATUS, "connection": "Connecting", "cstate": "Connecting", "peer_role": "Unknown",
          "tls_error": "certificate verify failed: certificate has expired"}
    assert format_status(st) == ("r0 role:Primary\n  disk:UpToDate\n  beta connection:Connecting\n"
                                 "    tls-error:certificate verify failed: certificate has expired")
