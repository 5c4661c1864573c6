# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.adjust: the plan adjust prints/runs, and net-options/disk-options option parsing.

Properties: a configuration diffed against itself plans nothing; running a plan (modelled by
apply_plan_to_settings) and diffing again plans nothing; any --KEY=VALUE text either parses or
raises ConfigError (never anything else). Golden plans pin the printed format, and option errors
carry the config's own words (same parser, same message as a config file error).
"""
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from replica.adjust import (
    Action,
    Running,
    apply_disk,
    apply_net,
    apply_plan_to_settings,
    parse_option_args,
    plan_adjust,
    settings_of,
)
from replica.config import DISK_KEYWORDS, NET_KEYWORDS, DiskOptions, NetOptions, parse_config
from replica.config_values import BoolValue, EnumValue, IntValue, SizeValue, StrValue
from replica.errors import ConfigError

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONF = """
resource r0 {
    net { %(net)s }
    disk { %(disk)s }
    handlers { %(handlers)s }
    on alice { disk /tmp/a.img; address 10.0.0.1:7000; }
    on bob { disk /tmp/b.img; address 10.0.0.2:7000; }
}
"""


def resource(net="", disk="", handlers=""):
    return parse_config(CONF % dict(net=net, disk=disk, handlers=handlers)).resource("r0")


def running(s, link=True, attached=True):
    return Running(up=True, attached=attached, link=link, settings=s)


def value_text(parser):
    """A strategy for valid value words of one option (its parser formats them)."""
    if isinstance(parser, BoolValue):
        return st.sampled_from(["yes", "no"])
    if isinstance(parser, IntValue):
        return st.integers(parser.lo, min(parser.hi, parser.lo + 50)).map(str)
    if isinstance(parser, SizeValue):
        return st.integers(max(parser.lo, 0), min(parser.hi, 1 << 32)).map(
            lambda n: f"{n // 1024 * 1024 // 1024}K" if n >= 1024 else "0") \
            .filter(lambda t: _parses(parser, t))
    if isinstance(parser, StrValue):
        return st.sampled_from(["sha1", "crc32c", "md5", "r1"]).filter(lambda t: _parses(parser, t))
    if isinstance(parser, EnumValue):
        return st.sampled_from(list(parser.values))
    raise AssertionError(parser)


def _parses(parser, text):
    try:
        parser.parse([text])
        return True
    except Exception:
        return False


def section_values(table, skip=()):
    keys = [k for k in table if k not in skip]
    return st.dictionaries(st.sampled_from(keys), st.just(None), max_size=6).flatmap(
        lambda d: st.fixed_dictionaries({k: value_text(table[k][1]) for k in d}))


HANDLER_VALUES = st.dictionaries(st.sampled_from(["split-brain", "fence-peer", "local-io-error"]),
                                 st.sampled_from(["/bin/true", "echo hi", "/usr/lib/x.sh"]),
                                 max_size=3)


@st.composite
def settings_strategy(draw):
    net_values = draw(section_values(NET_KEYWORDS, skip=("cram-hmac-alg", "shared-secret")))
    disk_values = draw(section_values(DISK_KEYWORDS, skip=("al-extents", "size",
                                                           "resync-after")))
    try:
        net = apply_net(NetOptions(), net_values)
    except ConfigError:
        assume(False)
    disk = apply_disk(DiskOptions(), disk_values)
    res = resource()
    from dataclasses import replace
    res = replace(res, net=net, disk=disk, handlers=draw(HANDLER_VALUES))
    return settings_of(res, "alice")


@PROPS
@given(settings_strategy(), st.booleans())
def test_config_against_itself_plans_nothing(s, link):
    plan = plan_adjust("r0", s, running(s, link=True))
    assert plan == []
    # without a link the only step is to connect
    if not link:
        assert [a.verb for a in plan_adjust("r0", s, running(s, link=False))] == ["connect"]


@PROPS
@given(settings_strategy(), settings_strategy())
def test_plan_then_diff_plans_nothing(have, want):
    plan = plan_adjust("r0", want, running(have))
    after = apply_plan_to_settings(have, plan, want)
    assert plan_adjust("r0", want, running(after)) == []
    if have == want:
        assert plan == []


def test_resource_not_up_is_brought_up():
    s = settings_of(resource(), "alice")
    assert [a.text() for a in plan_adjust("r0", s, Running(up=False))] == ["replicasetup up r0"]


def test_live_net_option_is_one_net_options_line():
    have = settings_of(resource(), "alice")
    want = settings_of(resource(net="ping-timeout 10;"), "alice")
    assert [a.text() for a in plan_adjust("r0", want, running(have))] == [
        "replicasetup net-options r0 --ping-timeout=10"]


def test_disk_and_handler_changes_golden():
    have = settings_of(resource(), "alice")
    want = settings_of(resource(disk="resync-rate 40M; on-io-error pass_on;",
                                handlers='split-brain "echo sb";'), "alice")
    assert [a.text() for a in plan_adjust("r0", want, running(have))] == [
        "replicasetup disk-options r0 --on-io-error=pass_on --resync-rate=40M",
        "replicasetup handlers r0 --split-brain='echo sb'"]


def test_protocol_change_disconnects_and_connects():
    have = settings_of(resource(), "alice")
    want = settings_of(resource(net="protocol A; ping-int 20;"), "alice")
    assert [a.text() for a in plan_adjust("r0", want, running(have))] == [
        "replicasetup disconnect r0", "replicasetup connect r0 --ping-int=20 --protocol=A"]


def test_address_change_reconnects():
    have = settings_of(resource(), "alice")
    want = dict(have, paths=dict(have["paths"], address="ipv4:10.0.0.9:7000"))
    assert [a.verb for a in plan_adjust("r0", want, running(have))] == ["disconnect", "connect"]


def test_disk_path_change_detaches_and_attaches():
    have = settings_of(resource(), "alice")
    want = dict(have, paths=dict(have["paths"], disk="/tmp/other.img"))
    assert [a.text() for a in plan_adjust("r0", want, running(have))] == [
        "replicasetup detach r0", "replicasetup attach r0", "replicasetup connect r0"]


def test_option_removed_from_the_file_uses_set_defaults():
    have = settings_of(resource(net="verify-alg sha1; ping-int 20;"), "alice")
    want = settings_of(resource(net="ping-int 20;"), "alice")
    (action,) = plan_adjust("r0", want, running(have))
    assert action.set_defaults and action.verb == "net-options"
    assert action.text().startswith("replicasetup net-options r0 --set-defaults ")
    assert "--ping-int=20" in action.text() and "verify-alg" not in action.text()


def test_al_extents_is_not_adjusted_but_noted():
    from replica.adjust import notes_for
    have = settings_of(resource(), "alice")
    want = settings_of(resource(disk="al-extents 3389;"), "alice")
    assert plan_adjust("r0", want, running(have)) == []
    (note,) = notes_for("r0", want, running(have))
    assert "al-extents: 1237 -> 3389" in note and "create-md" in note


# -- option parsing ------------------------------------------------------------------------

def config_error(text):
    with pytest.raises(ConfigError) as e:
        parse_config(CONF % dict(net=text, disk="", handlers=""))
    return str(e.value).split("net: ", 1)[1]


@pytest.mark.parametrize("args, conf", [
    (["--ping-timeout=0"], "ping-timeout 0;"),
    (["--protocol=D"], "protocol D;"),
    (["--max-buffers=12"], "max-buffers 12;"),
    (["--after-sb-0pri=bogus"], "after-sb-0pri bogus;"),
])
def test_option_errors_use_the_config_words(args, conf):
    with pytest.raises(ConfigError) as e:
        parse_option_args("net", args)
    assert str(e.value) == "net: " + config_error(conf)


def test_option_errors():
    for args, message in [
        (["--bogus=1"], "net: unknown keyword 'bogus' (known: protocol, "),
        (["ping-int=3"], "net: expected --KEYWORD=VALUE, got 'ping-int=3'"),
        (["--ping-int"], "net: ping-int: expected --ping-int=VALUE"),
        (["--ping-int=3", "--ping-int=4"], "net: ping-int: duplicate option"),
        (["--tcp-cork=no"], "net: tcp-cork: not supported (replicad batches frames"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_option_args("net", args)
        assert str(e.value).startswith(message), (args, str(e.value))
    with pytest.raises(ConfigError, match=r"^disk: resync-rate: expected a rate in bytes/s 1K\.\.4G"):
        parse_option_args("disk", ["--resync-rate=0"])


def test_options_parse_and_apply():
    values, set_defaults, warnings = parse_option_args(
        "net", ["--ping-timeout=10", "--allow-two-primaries", "--use-rle"])
    assert values == {"ping-timeout": "10", "allow-two-primaries": "yes", "use-rle": "yes"}
    assert not set_defaults and warnings == ["net: use-rle: ignored (the bitmap is exchanged "
                                             "uncompressed (a detail of the link between two "
                                             "replicad))"]
    net = apply_net(NetOptions(), values)
    assert net.ping_timeout_s == 1.0 and net.allow_two_primaries
    # whole-section checks, in the config's words
    with pytest.raises(ConfigError, match=r"^net: timeout \(6 s\) must be less than ping-int"):
        apply_net(NetOptions(), {"ping-int": "5"})
    disk = apply_disk(DiskOptions(), parse_option_args("disk", ["--resync-rate=40M"])[0])
    assert disk.resync_rate_bps == 40 << 20
    assert apply_disk(disk, {}, set_defaults=True) == DiskOptions()
    with pytest.raises(ConfigError, match="al-extents: the activity log's size is fixed"):
        apply_disk(DiskOptions(), {"al-extents": "3389"})


@PROPS
@given(st.lists(st.text(max_size=30) | st.sampled_from(
    ["--ping-int=", "--protocol=A", "--", "--=", "--ping-timeout=99999999999999999999",
     "--resync-rate=4G", "--set-defaults", "--tcp-cork", "--c-max-rate=1s"]), max_size=5),
    st.sampled_from(["net", "disk", "handlers"]))
def test_option_parsing_fuzz(args, section):
    try:
        values, _sd, _w = parse_option_args(section, args)
    except ConfigError as e:
        assert re.match(rf"{section}: ", str(e))
        return
    if section == "net":
        try:
            apply_net(NetOptions(), values)
        except ConfigError as e:
            assert str(e).startswith("net: ")
    elif section == "disk":
        try:
            apply_disk(DiskOptions(), values)
        except ConfigError as e:
            assert str(e).startswith("disk: al-extents")


def test_action_text_quotes_values():
    assert Action("handlers", "r0", (("fence-peer", "/x y.sh; echo"),)).text() == \
        "replicasetup handlers r0 --fence-peer='/x y.sh; echo'"
