# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.conf parser: fixtures, DRBD defaults and units, inheritance, includes, exact errors."""
import os
import pathlib
import textwrap

import pytest

from replica.config import Config, DiskOptions, Endpoint, NetOptions, Resource, load_config, parse_config
from replica.config_dump import dump_config
from replica.errors import ConfigError

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
KIB, MIB, GIB = 1024, 1024 ** 2, 1024 ** 3

MINIMAL = "resource r0 {{ {res} on a {{ disk /d; {host} }} }}"


def one(res="", host="") -> Resource:
    return parse_config(MINIMAL.format(res=res, host=host), "r.conf").resource("r0")


def error_of(text, path="r.conf") -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(textwrap.dedent(text), path)
    return str(exc.value)


# -- defaults and units ----------------------------------------------------------------------

def test_defaults_are_drbds():
    r = one()
    assert r.net == NetOptions()
    assert r.disk == DiskOptions()
    # drbd_limits.h / drbd.conf(5) defaults, in our units
    assert (r.net.protocol, r.net.ping_int_s, r.net.ping_timeout_s, r.net.timeout_s,
            r.net.connect_int_s) == ("C", 10.0, 0.5, 6.0, 10.0)
    assert (r.net.max_buffers, r.net.ko_count, r.net.sndbuf_size, r.net.rcvbuf_size) == (2048, 7, 0, 0)
    assert (r.net.after_sb_0pri, r.net.after_sb_1pri, r.net.after_sb_2pri) == ("disconnect",) * 3
    assert (r.net.cram_hmac_alg, r.net.shared_secret) == (None, None)
    assert r.disk.resync_rate_bps == 250 * KIB
    assert (r.disk.al_extents, r.disk.on_io_error, r.disk.fencing) == (1237, "detach", "dont-care")
    assert (r.disk.c_plan_ahead_s, r.disk.c_max_rate_bps, r.disk.c_min_rate_bps) == (2.0, 100 * MIB, 250 * KIB)
    assert r.disk.c_fill_target_bytes == 100 * 512
    h = r.host("a")
    assert (h.device, h.minor, h.meta_disk, h.meta_index, h.address, h.export) == \
        (None, None, "internal", None, None, None)
    assert (r.handlers, r.startup, r.options) == ({}, {}, {})


@pytest.mark.parametrize("section, option, attr, expected", [
    ("disk", "resync-rate 250", "resync_rate_bps", 250 * KIB),   # bare number: KiB/s
    ("disk", "resync-rate 10M", "resync_rate_bps", 10 * MIB),
    ("disk", "resync-rate 20m", "resync_rate_bps", 20 * MIB),
    ("disk", "resync-rate 1G", "resync_rate_bps", GIB),
    ("disk", "resync-rate 512k", "resync_rate_bps", 512 * KIB),
    ("disk", "c-max-rate 0", "c_max_rate_bps", 0),                # 9.0.28+: unlimited
    ("disk", "c-fill-target 100", "c_fill_target_bytes", 51200),  # sectors
    ("disk", "c-fill-target 1M", "c_fill_target_bytes", MIB),
    ("disk", "c-plan-ahead 5", "c_plan_ahead_s", 0.5),            # tenths of a second
    ("disk", "c-delay-target 25", "c_delay_target_s", 2.5),
    ("disk", "disk-timeout 0", "disk_timeout_s", 0.0),
    ("disk", "al-extents 7", "al_extents", 7),
    ("disk", "al-extents 65534", "al_extents", 65534),
    ("disk", "on-io-error call-local-io-error", "on_io_error", "call-local-io-error"),
    ("disk", "disk-flushes", "disk_flushes", True),              # a bare flag means yes
    ("disk", "fencing resource-and-stonith", "fencing", "resource-and-stonith"),
    ("net", "fencing resource-only", "fencing", "resource-only"),  # DRBD 9 spelling
    ("net", "ping-timeout 5", "ping_timeout_s", 0.5),
    ("net", "timeout 60", "timeout_s", 6.0),
    ("net", "ping-int 120", "ping_int_s", 120.0),
    ("net", "connect-int 1; timeout 5", "connect_int_s", 1.0),
    ("net", "sndbuf-size 512K", "sndbuf_size", 512 * KIB),
    ("net", "rcvbuf-size 65536", "rcvbuf_size", 65536),           # bytes
    ("net", "max-buffers 32", "max_buffers", 32),
    ("net", "ko-count 0", "ko_count", 0),
    ("net", "protocol A", "protocol", "A"),
    ("net", "cram-hmac-alg sha512; shared-secret s3cret", "cram_hmac_alg", "sha512"),
    ("net", "after-sb-0pri discard-node-alice", "after_sb_0pri", "discard-node-alice"),
    ("net", "after-sb-1pri call-pri-lost-after-sb", "after_sb_1pri", "call-pri-lost-after-sb"),
    ("net", "allow-two-primaries yes", "allow_two_primaries", True),
    ("net", "tcp-cork yes", "tcp_cork", True),
    ("net", "congestion-fill 1G", "congestion_fill", GIB),
])
def test_option_units(section, option, attr, expected):
    r = one(res=f"{section} {{ {option}; }}")
    holder = r.disk if attr in DiskOptions.__dataclass_fields__ else r.net
    assert getattr(holder, attr) == expected


def test_resource_level_protocol_and_syncer_map_like_drbdadm_84():
    r = load_config(DATA / "replica-83-syncer.conf").resource("data")
    assert r.net.protocol == "B"
    assert (r.disk.resync_rate_bps, r.disk.al_extents) == (33 * MIB, 257)
    assert r.net.verify_alg == "sha1"
    assert r.net.allow_two_primaries is True
    assert r.host("node1").meta_disk == "internal"       # flexible-meta-disk
    assert (r.host("node1").device, r.host("node1").minor) == ("/dev/drbd0", 0)
    assert r.peer("node1").address == ("192.168.1.2", 7788)


# -- fixtures and inheritance ----------------------------------------------------------------

def test_fixture_84_inheritance_common_resource_on():
    cfg = load_config(DATA / "replica-84.conf")
    assert list(cfg.resources) == ["r0", "r1"]
    assert cfg.global_options == {"usage-count": "no"}
    r0, r1 = cfg.resource("r0"), cfg.resource("r1")
    # net: common values + resource values
    assert (r0.net.protocol, r0.net.after_sb_0pri, r0.net.after_sb_1pri) == \
        ("C", "discard-zero-changes", "discard-secondary")
    assert (r0.net.cram_hmac_alg, r0.net.shared_secret) == ("sha256", "FooFunFactory")
    assert (r0.net.ping_int_s, r0.net.ping_timeout_s, r0.net.timeout_s, r0.net.connect_int_s) == \
        (5.0, 1.0, 4.0, 7.0)
    assert (r0.net.max_buffers, r0.net.sndbuf_size, r0.net.ko_count) == (8000, 512 * KIB, 4)
    # disk: resource overrides common, common fills the rest
    assert (r0.disk.resync_rate_bps, r0.disk.al_extents, r0.disk.c_plan_ahead_s) == (40 * MIB, 1801, 0.0)
    assert (r1.disk.resync_rate_bps, r1.disk.c_plan_ahead_s) == (10 * MIB, 2.0)
    # handlers merge per name; startup inherited
    assert r0.handlers == {"split-brain": "/usr/local/sbin/replica-sb-alert r0",
                           "pri-lost-after-sb": "echo b > /proc/sysrq-trigger ; reboot -f"}
    assert r1.handlers["split-brain"] == "/usr/lib/drbd/notify-split-brain.sh root"
    assert r1.startup == {"wfc-timeout": "120", "degr-wfc-timeout": "60"}
    # hosts
    a = r0.host("alice")
    assert (a.device, a.minor, a.disk, a.meta_disk, a.address, a.address_family) == \
        ("/dev/drbd1", 1, "/dev/sda7", "internal", ("10.1.1.31", 7789), "ipv4")
    assert a.export == Endpoint("unix", path="/run/replica/r0.sock")
    assert r0.peer("alice").name == "bob" and r0.peer("bob").name == "alice"
    assert not r0.standalone
    assert (a.file, a.line) == (str(DATA / "replica-84.conf"), 48)
    assert (r0.file, r0.line) == (str(DATA / "replica-84.conf"), 29)
    # resource-level device/meta-disk inherited by each host; on-level values are the host's own
    for name, disk, export in (("alice", "/dev/vg0/r1", Endpoint("tcp", host="127.0.0.1", port=10810)),
                               ("bob", "/dev/vg0/r1 data", Endpoint("tcp", host="::1", port=10810))):
        h = r1.host(name)
        assert (h.device, h.minor, h.meta_disk, h.meta_index, h.disk, h.export) == \
            (None, 2, "/dev/vg0/meta", 1, disk, export)
    assert r1.host("bob").address == ("fd0c:39f4:f135:305::32", 7790)
    assert r1.host("bob").address_family == "ipv6"


def test_on_section_overrides_resource_and_common_host_values():
    r = parse_config("""
        common { disk /dev/common; meta-disk /m/common; export unix:/run/common.sock; }
        resource r0 {
            disk /dev/res; export unix:/run/res.sock;
            on a { disk /dev/a; address 127.0.0.1:7000; }
            on b { address 127.0.0.2:7000; meta-disk internal; }
        }""").resource("r0")
    assert (r.host("a").disk, r.host("a").meta_disk, r.host("a").export.path) == \
        ("/dev/a", "/m/common", "/run/res.sock")
    assert (r.host("b").disk, r.host("b").meta_disk) == ("/dev/res", "internal")


def test_fixture_9_volume_and_node_id():
    r = load_config(DATA / "replica-9.conf").resource("r0")
    for node_id, name in enumerate(("alice", "bob")):
        h = r.host(name)
        assert (h.node_id, h.volume, h.device, h.minor, h.disk, h.meta_disk) == \
            (node_id, 0, "/dev/drbd1", 1, "/dev/sda7", "internal")
    assert r.disk.fencing == "resource-only"
    assert r.disk.c_max_rate_bps == 100 * MIB
    assert r.net.verify_alg == "crc32c"
    assert r.options == {"on-no-data-accessible": "io-error"}


def test_fixture_standalone():
    cfg = load_config(DATA / "replica-standalone.conf")
    s, w = cfg.resource("scratch"), cfg.resource("web")
    assert s.standalone and w.standalone
    assert s.peer("vm") is None
    h = s.host("vm")
    assert (h.device, h.minor, h.disk, h.address) == ("/dev/nbd0", None, "/var/lib/replica/scratch.img", None)
    assert h.export.nbd_uri("scratch") == "nbd+unix:///scratch?socket=/run/replica/scratch.sock"
    assert w.host("vm").export.nbd_uri("web") == "nbd://127.0.0.1:10809/web"
    assert w.host("vm").meta_disk == "/var/lib/replica/web.md"
    assert w.disk.resync_rate_bps == 20 * MIB


def test_comments_strings_and_skip():
    r = parse_config(r'''
        # comment; with { braces }
        skip resource old { on x { disk /nope; } }
        resource r0 {   # trailing comment
            handlers { split-brain "/bin/echo \"a;b {c}\" \\ # not a comment"; }
            net { cram-hmac-alg sha1; shared-secret "with space\tand tab"; }
            skip disk { resync-rate nonsense; }
            on "node-1.example.com" { disk "/dev/disk/by-id/x y"; }
        }''').resource("r0")
    assert r.handlers["split-brain"] == '/bin/echo "a;b {c}" \\ # not a comment'
    assert r.net.shared_secret == "with space\tand tab"
    assert r.disk == DiskOptions()
    assert r.host("node-1.example.com").disk == "/dev/disk/by-id/x y"


def test_device_forms():
    assert (one(host="device /dev/drbd7;").host("a").minor) == 7
    assert (one(host="device drbd7;").host("a").device) == "/dev/drbd7"   # /dev/ is optional
    h = one(host="device /dev/nbd3 minor 9;").host("a")
    assert (h.device, h.minor) == ("/dev/nbd3", 9)
    h = one(host="device minor 4;").host("a")
    assert (h.device, h.minor) == (None, 4)


def test_meta_disk_forms():
    assert one(host="meta-disk /dev/md [3];").host("a").meta_index == 3
    assert one(host="meta-disk /dev/md[3];").host("a").meta_index == 3
    h = one(host="meta-disk /dev/md;").host("a")
    assert (h.meta_disk, h.meta_index) == ("/dev/md", None)


def test_address_and_export_forms():
    h = one(host="address ipv6 [::1]:7000; export [fe80::1]:10809;").host("a")
    assert (h.address, h.address_family) == (("::1", 7000), "ipv6")
    assert h.export.nbd_uri("r0") == "nbd://[fe80::1]:10809/r0"
    h = one(host="address [::1]:7000; export tcp:localhost:10809;").host("a")
    assert h.address_family == "ipv6"       # inferred from the brackets
    assert h.export == Endpoint("tcp", host="localhost", port=10809)


def test_nbd_uri():
    assert Endpoint("unix", path="/run/replica/r0.sock").nbd_uri("r0") == \
        "nbd+unix:///r0?socket=/run/replica/r0.sock"
    assert Endpoint("unix", path="/tmp/a b.sock").nbd_uri("r 0") == \
        "nbd+unix:///r%200?socket=/tmp/a%20b.sock"
    assert Endpoint("tcp", host="127.0.0.1", port=10809).nbd_uri("r0") == "nbd://127.0.0.1:10809/r0"
    assert Endpoint("tcp", host="::1", port=10809).nbd_uri("r0") == "nbd://[::1]:10809/r0"


def test_lookups_and_their_errors():
    cfg = load_config(DATA / "replica-84.conf")
    with pytest.raises(ConfigError) as exc:
        cfg.resource("nope")
    assert str(exc.value) == f"no resource 'nope' in {DATA / 'replica-84.conf'} (have: r0, r1)"
    with pytest.raises(ConfigError) as exc:
        cfg.resource("r0").host("carol")
    assert str(exc.value) == (f"{DATA / 'replica-84.conf'}:29: resource 'r0' has no 'on carol' "
                              f"section (hosts: alice, bob)")
    with pytest.raises(ConfigError):
        cfg.resource("r0").peer("carol")
    assert isinstance(cfg, Config) and cfg.path == str(DATA / "replica-84.conf")


# -- includes ----------------------------------------------------------------------------------

def test_include_fixture_debian_layout():
    cfg = load_config(DATA / "replica-include.conf")
    assert list(cfg.resources) == ["r0", "r1"]
    r0, r1 = cfg.resource("r0"), cfg.resource("r1")
    assert (r0.net.protocol, r1.net.protocol) == ("C", "A")       # common from another file
    assert r0.net.ping_int_s == r1.net.ping_int_s == 7.0
    assert r1.disk.resync_rate_bps == 100 * MIB
    assert (r0.file, r0.line) == (str(DATA / "inc-r0.conf"), 1)
    assert r1.host("bob").file == str(DATA / "inc-r1.conf")


def test_include_is_relative_to_the_including_file(tmp_path, monkeypatch):
    (tmp_path / "etc" / "drbd.d").mkdir(parents=True)
    (tmp_path / "etc" / "drbd.conf").write_text(
        'include "drbd.d/global_common.conf";\ninclude "drbd.d/*.res";\n')
    (tmp_path / "etc" / "drbd.d" / "global_common.conf").write_text(
        "global { usage-count no; }\ncommon { net { protocol B; } }\n")
    (tmp_path / "etc" / "drbd.d" / "r9.res").write_text("resource r9 { on a { disk /d; } }\n")
    (tmp_path / "etc" / "drbd.d" / "r8.res").write_text("resource r8 { on a { disk /d8; } }\n")
    monkeypatch.chdir("/")
    cfg = load_config(tmp_path / "etc" / "drbd.conf")
    assert list(cfg.resources) == ["r8", "r9"]                    # glob matches in sorted order
    assert cfg.resource("r9").net.protocol == "B"
    # parse_config resolves includes relative to the directory of `path`
    text = 'include "drbd.d/*.res";'
    assert list(parse_config(text, str(tmp_path / "etc" / "x.conf")).resources) == ["r8", "r9"]
    # an unmatched glob is fine (an empty drbd.d/), a missing literal file is not
    assert parse_config('include "drbd.d/*.none";', str(tmp_path / "etc" / "x.conf")).resources == {}


def test_include_errors(tmp_path):
    (tmp_path / "loop.conf").write_text('include "loop2.conf";\n')
    (tmp_path / "loop2.conf").write_text('\ninclude "loop.conf";\n')
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "loop.conf")
    assert str(exc.value) == (f"{tmp_path}/loop2.conf:2: include: '{tmp_path}/loop.conf' includes "
                              f"itself (loop or depth over 16)")
    (tmp_path / "main.conf").write_text('include "missing.conf";\n')
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "main.conf")
    assert str(exc.value) == f"{tmp_path}/main.conf:1: include: no such file: '{tmp_path}/missing.conf'"
    (tmp_path / "bad.conf").write_text("resource r0 {\n  on a { disk /d; }\n  protocl C;\n}\n")
    (tmp_path / "top.conf").write_text('include "bad.conf";\n')
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "top.conf")
    assert str(exc.value) == f"{tmp_path}/bad.conf:3: resource 'r0': unknown keyword 'protocl'"
    (tmp_path / "dup.conf").write_text('include "bad2.conf";\nresource r0 { on a { disk /x; } }\n')
    (tmp_path / "bad2.conf").write_text("resource r0 { on a { disk /d; } }\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "dup.conf")
    assert str(exc.value) == (f"{tmp_path}/dup.conf:2: resource 'r0': duplicate resource (first "
                              f"defined at {tmp_path}/bad2.conf:1)")


def test_load_config_os_errors_become_config_errors(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "absent.conf")
    assert str(exc.value) == f"{tmp_path}/absent.conf: cannot read config: No such file or directory"
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert str(exc.value) == f"{tmp_path}: cannot read config: Is a directory"
    (tmp_path / "latin1.conf").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.conf: cannot read config: 'utf-8' codec"):
        load_config(tmp_path / "latin1.conf")


# -- exact error messages ------------------------------------------------------------------------

R0 = "resource r0 {\n"
HOST_A = "  on a { disk /d; address 127.0.0.1:7000; }\n"
HOST_B = "  on b { disk /d; address 127.0.0.2:7000; }\n"

ERRORS = [
    # unknown keywords, with the section they were found in
    (R0 + "  protocl C;\n" + HOST_A + "}\n", "r.conf:2: resource 'r0': unknown keyword 'protocl'"),
    (R0 + "  net { pingint 10; }\n}\n", "r.conf:2: resource 'r0': net: unknown keyword 'pingint'"),
    (R0 + "  on a { disk /d; adress 1.2.3.4:5; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': unknown keyword 'adress'"),
    ("common {\n disk { bogus-option 1; }\n}\n", "r.conf:2: common: disk: unknown keyword 'bogus-option'"),
    ("resorce r0 { }\n", "r.conf:1: unknown keyword 'resorce' (expected global, common, resource or include)"),
    ("global { usage-count no; frobnicate; }", "r.conf:1: global: unknown keyword 'frobnicate'"),
    (R0 + "  syncer { ratex 10M; }\n}\n", "r.conf:2: resource 'r0': syncer: unknown keyword 'ratex'"),
    (R0 + "  handlers { split-brian \"x\"; }\n}\n",
     "r.conf:2: resource 'r0': handlers: unknown handler 'split-brian' (known: pri-on-incon-degr, "
     "pri-lost-after-sb, pri-lost, fence-peer, unfence-peer, local-io-error, initial-split-brain, "
     "split-brain, before-resync-target, after-resync-target, before-resync-source, out-of-sync, "
     "quorum-lost, disconnected)"),
    (R0 + "  connection { host a; host b; }\n}\n",
     "r.conf:2: resource 'r0': 'connection' sections are not supported (use two 'on HOST' sections)"),
    (R0 + '  include "x";\n}\n',
     "r.conf:2: resource 'r0': 'include' is only allowed at the top level, outside sections"),
    (R0 + "  on a { disk /d; net { protocol A; } }\n}\n",
     "r.conf:2: resource 'r0': on 'a': unknown keyword 'net'"),
    # bad values name the keyword and what was expected
    (R0 + "  net { ping-int x; }\n}\n",
     "r.conf:2: resource 'r0': net: ping-int: expected an integer 1..120 seconds, got 'x'"),
    (R0 + "  net { ping-int 121; }\n}\n",
     "r.conf:2: resource 'r0': net: ping-int: expected an integer 1..120 seconds, got '121'"),
    (R0 + "  net { ping-timeout 0; }\n}\n",
     "r.conf:2: resource 'r0': net: ping-timeout: expected an integer 1..300 tenths of a second, got '0'"),
    (R0 + "  net { protocol D; }\n}\n", "r.conf:2: resource 'r0': net: protocol: expected one of A, B, C, got 'D'"),
    (R0 + "  protocol D;\n}\n", "r.conf:2: resource 'r0': protocol: expected one of A, B, C, got 'D'"),
    (R0 + "  net { cram-hmac-alg md5; }\n}\n",
     "r.conf:2: resource 'r0': net: cram-hmac-alg: expected one of sha1, sha256, sha512, got 'md5'"),
    (R0 + "  net { shared-secret " + "x" * 65 + "; }\n}\n",
     "r.conf:2: resource 'r0': net: shared-secret: expected a secret of 1..64 characters, got '" + "x" * 65 + "'"),
    (R0 + "  disk { resync-rate 10X; }\n}\n",
     "r.conf:2: resource 'r0': disk: resync-rate: expected a rate in bytes/s 1K..4G (K, M or G suffix; "
     "bare numbers in KiB), got '10X'"),
    (R0 + "  disk { resync-rate 5G; }\n}\n",
     "r.conf:2: resource 'r0': disk: resync-rate: expected a rate in bytes/s 1K..4G (K, M or G suffix; "
     "bare numbers in KiB), got '5G'"),
    (R0 + "  disk { al-extents 99999999999999999999999999; }\n}\n",
     "r.conf:2: resource 'r0': disk: al-extents: expected an integer 7..65534, got '99999999999999999999999999'"),
    (R0 + "  disk { on-io-error panic; }\n}\n",
     "r.conf:2: resource 'r0': disk: on-io-error: expected one of pass_on, call-local-io-error, detach, got 'panic'"),
    (R0 + "  disk { disk-flushes maybe; }\n}\n",
     "r.conf:2: resource 'r0': disk: disk-flushes: expected yes or no, got 'maybe'"),
    (R0 + "  net { after-sb-2pri discard-secondary; }\n}\n",
     "r.conf:2: resource 'r0': net: after-sb-2pri: expected one of disconnect, violently-as0p, "
     "call-pri-lost-after-sb, got 'discard-secondary'"),
    (R0 + "  startup { wfc-timeout soon; }\n}\n",
     "r.conf:2: resource 'r0': startup: wfc-timeout: expected an integer 0..1000000 seconds, got 'soon'"),
    (R0 + "  on a { disk /d; address 10.0.0.300:7000; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': address: expected [ipv4|ipv6] IP:PORT (IPv6 as ipv6 [ADDR]:PORT), "
     "got '10.0.0.300:7000'"),
    (R0 + "  on a { disk /d; address ipv6 10.0.0.1:7000; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': address: expected [ipv4|ipv6] IP:PORT (IPv6 as ipv6 [ADDR]:PORT), "
     "got 'ipv6 10.0.0.1:7000'"),
    (R0 + "  on a { disk /d; address sdp 10.0.0.1:7000; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': address: address family 'sdp' is not supported; expected "
     "[ipv4|ipv6] IP:PORT, got 'sdp 10.0.0.1:7000'"),
    (R0 + "  on a { disk /d; address 10.0.0.1:0; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': address: expected [ipv4|ipv6] IP:PORT (IPv6 as ipv6 [ADDR]:PORT), "
     "got '10.0.0.1:0'"),
    (R0 + "  on a { disk /d; export unix:run/r0.sock; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': export: expected unix:/ABSOLUTE/PATH, got 'unix:run/r0.sock'"),
    (R0 + "  on a { disk /d; export 10809; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': export: expected unix:/PATH, HOST:PORT or [IPV6]:PORT, got '10809'"),
    (R0 + "  on a { disk /d; meta-disk internal [0]; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': meta-disk: expected internal, PATH or PATH [INDEX], got 'internal [0]'"),
    (R0 + "  on a { disk /d; device /dev/drbd1 minor 2; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': device: device name '/dev/drbd1' does not match minor 2"),
    (R0 + "  on a { disk /d; device minor x; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': device: expected /dev/drbdN, /dev/nbdN, 'minor N' or 'PATH minor N' "
     "(N 0..1048575), got 'minor x'"),
    (R0 + "  on a { disk none; }\n}\n",
     "r.conf:2: resource 'r0': on 'a': disk: diskless nodes ('disk none') are not supported"),
    (R0 + "  address 127.0.0.1:7000;\n}\n", "r.conf:2: resource 'r0': 'address' belongs in an 'on HOST' section"),
    # syntax: missing ';', extra values, braces, EOF, strings
    (R0 + "  net { ping-int 10 }\n}\n",
     "r.conf:2: resource 'r0': net: ping-int: missing ';' after 'ping-int 10' (got '}')"),
    (R0 + "  net {\n    ping-int 10\n    timeout 60;\n  }\n}\n",
     "r.conf:3: resource 'r0': net: ping-int: expected one value, got 3: '10 timeout 60' (missing ';'?)"),
    (R0 + "  on a { disk /d }\n}\n",
     "r.conf:2: resource 'r0': on 'a': disk: missing ';' after 'disk /d' (got '}')"),
    (R0 + "  net { ping-int 10; } ;\n}\n", "r.conf:2: resource 'r0': expected a keyword, got ';'"),
    (R0 + HOST_A + "}\n}\n", "r.conf:4: unexpected '}' (no section is open)"),
    (R0 + "  net {\n    ping-int 10;\n",
     "r.conf:4: resource 'r0': net: unexpected end of file: section opened at line 2 is not closed (missing '}')"),
    ("resource r0 {\n  on a {\n    disk /d;",
     "r.conf:3: resource 'r0': on 'a': unexpected end of file: section opened at line 2 is not closed (missing '}')"),
    ("resource r0", "r.conf:1: resource: missing ';' after 'resource r0' (got end of file)"),
    (R0 + '  handlers { split-brain "/bin/x;\n}\n', "r.conf:2: unterminated string"),
    (R0 + "  net { ping-int 1\x000; }\n}\n", "r.conf:2: invalid control character in '1\\x000'"),
    (R0 + "  net { ping-int\u00a010; }\n}\n", "r.conf:2: invalid character '\\xa0'"),
    (R0 + '  on a { disk "/d\x00"; }\n}\n', "r.conf:2: NUL character in string '\"/d\\x00\"'"),
    ("resource r0 { a { b { c { d { e { f { } } } } } } }",
     "r.conf:1: resource 'r0': a: b: c: d: e: f: sections nested too deeply"),
    # section shapes
    ("resource { }", "r.conf:1: resource: expected a resource name"),
    ("resource r0 r1 { }", "r.conf:1: resource: unexpected 'r1'"),
    ("resource all { }", "r.conf:1: resource: invalid name 'all' (letters, digits, _ . + -; not 'all')"),
    ("resource r/0 { }", "r.conf:1: resource: invalid name 'r/0' (letters, digits, _ . + -; not 'all')"),
    (R0 + "  net;\n}\n", "r.conf:2: resource 'r0': net: expected '{ ... }', got ';'"),
    (R0 + "  on { disk /d; }\n}\n", "r.conf:2: resource 'r0': on: expected a host name"),
    (R0 + "  net { ping-int { } }\n}\n",
     "r.conf:2: resource 'r0': net: ping-int: unexpected '{' (this is an option, not a section)"),
    ("global { }\nglobal { }\n", "r.conf:2: duplicate 'global' section (first at r.conf:1)"),
    ("common { }\ncommon { }\n", "r.conf:2: duplicate 'common' section (first at r.conf:1)"),
    # duplicates and missing pieces
    (R0 + HOST_A + "}\nresource r0 {\n" + HOST_A + "}\n",
     "r.conf:4: resource 'r0': duplicate resource (first defined at r.conf:1)"),
    (R0 + HOST_A + HOST_A + "}\n", "r.conf:3: resource 'r0': duplicate 'on a' section (first at line 2)"),
    (R0 + "  net {\n    ping-int 5;\n    ping-int 6;\n  }\n}\n",
     "r.conf:4: resource 'r0': net: ping-int: duplicate option (first at line 3)"),
    (R0 + "  protocol A;\n  net { protocol C; }\n}\n",
     "r.conf:3: resource 'r0': net: protocol: duplicate option (first at line 2)"),
    (R0 + "  disk { resync-rate 1M; }\n  syncer { rate 2M; }\n}\n",
     "r.conf:3: resource 'r0': syncer: resync-rate: duplicate option (first at line 2)"),
    (R0 + "  on a { disk /d; disk /e; }\n}\n", "r.conf:2: resource 'r0': on 'a': disk: duplicate option (first at line 2)"),
    (R0 + "  on a { address 127.0.0.1:7000; }\n}\n", "r.conf:2: resource 'r0': on 'a': missing required keyword 'disk'"),
    (R0 + HOST_A + "  on b {\n    disk /d;\n  }\n}\n",
     "r.conf:3: resource 'r0': on 'b': missing 'address' (required when the resource has two hosts)"),
    (R0 + "  net { protocol C; }\n}\n",
     "r.conf:1: resource 'r0': no 'on HOST' section (one for a standalone resource, two for a replicated one)"),
    (R0 + HOST_A + HOST_B + "  on c { disk /d; address 127.0.0.3:7000; }\n}\n",
     "r.conf:1: resource 'r0': 3 'on' sections; at most two hosts are supported"),
    (R0 + "  net { ping-int 5; }\n" + HOST_A + "}\n",
     "r.conf:1: resource 'r0': net: timeout (6 s) must be less than ping-int (5 s) and connect-int (10 s)"),
    (R0 + "  net { cram-hmac-alg sha1; }\n" + HOST_A + "}\n",
     "r.conf:1: resource 'r0': net: cram-hmac-alg and shared-secret must be set together"),
    (R0 + "  disk { resync-after r9; }\n" + HOST_A + "}\n", "r.conf:1: resource 'r0': disk: resync-after: no resource 'r9'"),
    (R0 + "  volume 0 { device minor 1; }\n  on a { volume 1 { disk /e; } }\n}\n",
     "r.conf:3: resource 'r0': on 'a': volume 1 differs from the resource's volume 0"),
    (R0 + "  volume 0 { disk /d; }\n  volume 1 { disk /e; }\n  on a { }\n}\n",
     "r.conf:3: resource 'r0': volume 1: only one volume per resource is supported (already have volume 0)"),
    # two resources claiming the same device or NBD endpoint on one host
    ("resource r0 { on a { disk /d0; device minor 1; } }\nresource r1 {\n on a { disk /d1; device /dev/drbd1; } }\n",
     "r.conf:3: resource 'r1': on 'a': minor 1 is also used by resource 'r0' (r.conf:1)"),
    ("resource r0 { on a { disk /d0; export unix:/s; } }\nresource r1 {\n on a { disk /d1; export unix:/s; } }\n",
     "r.conf:3: resource 'r1': on 'a': export unix:/s is also used by resource 'r0' (r.conf:1)"),
    ("resource r0 { on a { disk /d0; address 10.0.0.1:7000; } }\nresource r1 {\n on a { disk /d1; address 10.0.0.1:7000; } }\n",
     "r.conf:3: resource 'r1': on 'a': address 10.0.0.1:7000 is also used by resource 'r0' (r.conf:1)"),    # one IP:PORT for two `on` sections (drbdadm-84: "conflicting use of IP '...' ... first used
    # here"), located at both `address` statements
    (R0 + "  on a {\n    disk /d;\n    address 10.1.1.31:7789;\n  }\n"
     "  on b {\n    disk /d;\n    address 10.1.1.31:7789;\n  }\n}\n",
     "r.conf:8: resource 'r0': on 'b': address: conflicting use of IP '10.1.1.31:7789' (first used "
     "at r.conf:4, on 'a')"),
    (R0 + "  on a { disk /d; address ipv6 [fd00::1]:7000; }\n"
     "  on b { disk /d; address ipv6 [fd00:0:0::1]:7000; }\n}\n",
     "r.conf:3: resource 'r0': on 'b': address: conflicting use of IP '[fd00:0:0::1]:7000' (first "
     "used at r.conf:2, on 'a')"),
    (R0 + HOST_A + HOST_B + "}\nresource r1 {\n  on c { disk /d; address 127.0.0.2:7000; }\n"
     "  on d { disk /d; address 127.0.0.4:7000; }\n}\n",
     "r.conf:6: resource 'r1': on 'c': address: conflicting use of IP '127.0.0.2:7000' (first used "
     "at r.conf:3, resource 'r0' on 'b')"),
]


@pytest.mark.parametrize("text, message", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_error_messages(text, message):
    assert error_of(text) == message


def test_same_ip_on_another_port_is_fine_and_conflicts_name_the_included_file(tmp_path):
    r = one(host="address 127.0.0.1:7000;")
    assert r.host("a").address_text == "127.0.0.1:7000"
    ok = parse_config(R0 + "  on a { disk /d; address 10.0.0.1:7000; }\n"
                      "  on b { disk /d; address 10.0.0.1:7001; }\n}\n", "r.conf")
    assert ok.resource("r0").host("b").address == ("10.0.0.1", 7001)
    (tmp_path / "main.conf").write_text('include "r*.res";\n')
    (tmp_path / "r0.res").write_text(R0 + HOST_A + HOST_B + "}\n")
    (tmp_path / "r1.res").write_text("resource r1 {\n  on c {\n    disk /d;\n"
                                     "    address 127.0.0.1:7000;\n  }\n  on d { disk /d; address 127.0.0.9:7000; }\n}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "main.conf")
    assert str(exc.value) == (f"{tmp_path}/r1.res:4: resource 'r1': on 'c': address: conflicting "
                              f"use of IP '127.0.0.1:7000' (first used at {tmp_path}/r0.res:2, "
                              f"resource 'r0' on 'a')")


def test_every_error_is_a_config_error_with_location():
    for text, _ in ERRORS:
        with pytest.raises(ConfigError) as exc:
            parse_config(text, "/etc/replica/replica.conf")
        assert str(exc.value).startswith("/etc/replica/replica.conf:")
        assert not str(exc.value).endswith(".")


# -- dump ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("replica-*.conf")))
def test_dump_round_trip_fixtures(name):
    cfg = load_config(DATA / name)
    text = dump_config(cfg)
    again = parse_config(text, "dumped.conf")
    assert again == cfg
    assert dump_config(again).splitlines()[1:] == text.splitlines()[1:]   # a fixed point


def test_dump_is_normalised_text():
    cfg = parse_config("""
        global { usage-count no; disable-ip-verification; }
        common { net { protocol A; } disk { resync-rate 10240; } }
        resource r0 {
            net { cram-hmac-alg sha1; shared-secret "a \\"b\\""; ping-timeout 5; }
            handlers { split-brain "/bin/sb r0"; }
            startup { wfc-timeout 10; wait-after-sb; }
            on a { device /dev/nbd0 minor 5; disk /d; meta-disk /m [2]; address ipv6 [::1]:7000;
                   export unix:/run/r0.sock; }
            on b { device minor 5; disk /d; address 10.0.0.2:7000; export 127.0.0.1:10809; }
        }""", "/etc/replica/replica.conf")
    assert dump_config(cfg) == textwrap.dedent("""\
        # /etc/replica/replica.conf: normalised by replica (common values folded into each resource)
        global {
            usage-count no;
            disable-ip-verification;
        }

        resource r0 {
            net {
                protocol A;
                cram-hmac-alg sha1;
                shared-secret "a \\"b\\"";
            }
            disk {
                resync-rate 10M;
            }
            handlers {
                split-brain "/bin/sb r0";
            }
            startup {
                wfc-timeout 10;
                wait-after-sb yes;
            }
            on a {
                device /dev/nbd0 minor 5;
                disk /d;
                meta-disk /m [2];
                address ipv6 [::1]:7000;
                export unix:/run/r0.sock;
            }
            on b {
                device minor 5;
                disk /d;
                meta-disk internal;
                address ipv4 10.0.0.2:7000;
                export 127.0.0.1:10809;
            }
        }
        """)


def test_equality_ignores_file_and_line():
    a = parse_config("resource r0 { on a { disk /d; } }", "one.conf")
    b = parse_config("\n\n\nresource r0 {\n on a {\n disk /d; } }", os.path.join("x", "two.conf"))
    assert a == b
    assert a.resource("r0").line != b.resource("r0").line


# -- on-io-error and the local-io-error handler (issue 9 item 2) ---------------------------------

def test_on_io_error_default_inheritance_and_engine_mode():
    from replica.resource import engine_io_error_mode
    text = """\
common { disk { on-io-error pass_on; } handlers { local-io-error "/sbin/notify io $DRBD_RESOURCE"; } }
resource r0 { on a { disk /d; } }
resource r1 { disk { on-io-error call-local-io-error; } on a { disk /d; } }
resource r2 { on a { disk /d; } }
"""
    cfg = parse_config(text, "r.conf")
    assert cfg.resource("r0").disk.on_io_error == "pass_on"
    assert cfg.resource("r1").disk.on_io_error == "call-local-io-error"
    assert cfg.resource("r1").handlers == {"local-io-error": "/sbin/notify io $DRBD_RESOURCE"}
    assert one().disk.on_io_error == "detach"                  # DRBD's default
    assert "on-io-error call-local-io-error;" in dump_config(cfg)
    modes = {p: engine_io_error_mode(p) for p in ("pass_on", "detach", "call-local-io-error")}
    assert modes == {"pass_on": "pass_on", "detach": "fail_over", "call-local-io-error": "fail_over"}
    with pytest.raises(ValueError, match="'panic': on-io-error: expected one of"):
        engine_io_error_mode("panic")


@pytest.mark.parametrize("text,message", [
    (R0 + "  disk { on-io-error; }\n}\n",
     "r.conf:2: resource 'r0': disk: on-io-error: expected one value, got 0: ''"),
    (R0 + "  disk {\n on-io-error detach pass_on; }\n}\n",
     "r.conf:3: resource 'r0': disk: on-io-error: expected one value, got 2: 'detach pass_on' "
     "(missing ';'?)"),
    (R0 + "  net { on-io-error detach; }\n}\n",
     "r.conf:2: resource 'r0': net: unknown keyword 'on-io-error'"),
    (R0 + "  disk { on-io-error detach; on-io-error pass_on; }\n}\n",
     "r.conf:2: resource 'r0': disk: on-io-error: duplicate option (first at line 2)"),
    (R0 + "  handlers { local-io-error; }\n}\n",
     "r.conf:2: resource 'r0': handlers: local-io-error: expected one value, got 0: ''"),
])
def test_on_io_error_errors_name_file_and_line(text, message):
    assert error_of(text) == message
